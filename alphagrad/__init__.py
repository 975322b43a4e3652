"""alphagrad: the AlphaGrad and AGR optimizers in torch.optim conventions. Needs torch only.

The RL harness that benchmarks them (optimizer factory, agents' plumbing, sweeps, analysis) is the
separate package `alphagrad_rl`, installed with the `rl` extra.
"""

from .agr import AGR, agr_, with_agr
from .optimizer import AlphaGrad, alphagrad, auto_alpha, diagnostics
from .scheduler import SaturationAlphaScheduler

__all__ = ["AGR", "AlphaGrad", "SaturationAlphaScheduler", "agr_", "alphagrad", "auto_alpha", "diagnostics", "with_agr"]
__version__ = "0.2.0"
