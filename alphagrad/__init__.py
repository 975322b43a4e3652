"""alphagrad: AlphaGrad and AGR optimizers in torch.optim conventions, and a factory for every optimizer
the harness compares."""

from .agr import AGR, agr_
from .alphagrad import AlphaGrad, auto_alpha
from .factory import OPTIMIZER_NAMES, OptimizerSpec, make_alpha_scheduler, make_optimizer
from .scheduler import SaturationAlphaScheduler

__all__ = [
    "AGR", "AlphaGrad", "OPTIMIZER_NAMES", "OptimizerSpec", "SaturationAlphaScheduler",
    "agr_", "auto_alpha", "make_alpha_scheduler", "make_optimizer",
]
__version__ = "0.1.0"
