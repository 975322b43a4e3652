"""alphagrad_rl: the harness that benchmarks the `alphagrad` optimizers on deep RL.

factory (every optimizer the harness compares, from command-line options), experiment (the agents'
shared options and set-up), envs and buffers (environment plumbing, replay buffer), runs (the run
record: the one contract between agents, sweeps and analysis), checkpoint (exact resume), population
(many runs in one process), sweep and tuning (grids of runs and searches, launched and resumed), analysis,
report and dashboard (statistics, figures, claims, W&B), agents (the single-file agents), cli (the commands).
"""

import importlib.metadata
import importlib.util

__version__ = importlib.metadata.version("alphagrad-rl")  # alphagrad.__version__, through the package's metadata

# the `rl` extra's packages, by import name (pyproject.toml): the harness needs every one
RL_EXTRA = ("numpy", "gymnasium", "mujoco", "tyro", "tensorboard", "wandb", "wandb_workspaces", "pytorch_optimizer",
            "yaml", "scipy", "matplotlib", "optuna", "rich")
if missing := [name for name in RL_EXTRA if importlib.util.find_spec(name) is None]:
    raise ImportError(f"alphagrad_rl (the RL harness) needs the `rl` extra: pip install \"alphagrad-rl[rl]\" (missing: "
                      f"{', '.join(missing)}); the optimizers alone, `import alphagrad`, need torch only")

__all__ = ["__version__"]
