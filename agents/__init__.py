"""The harness's agents. `sweep_registry()` is the registry the sweep launcher is given: each program path as
sweep configs name it, with its script, Args dataclass and argument checks."""

from pathlib import Path


def sweep_registry() -> dict:
    from alphagrad_rl.sweep import AgentEntry

    from . import dqn, ppo_continuous_action, td3_continuous_action

    return {f"agents/{Path(module.__file__).name}": AgentEntry(Path(module.__file__), module.Args, module.check_args)
            for module in (dqn, ppo_continuous_action, td3_continuous_action)}
