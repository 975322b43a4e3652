"""The harness's agents. `sweep_registry()` is the registry the sweep launcher is given: each program path as
sweep configs name it, with its script, Args dataclass and argument checks."""

from pathlib import Path


def sweep_registry() -> dict:
    from alphagrad_rl.sweep import AgentEntry

    from . import (
        dqn,
        dqn_population,
        ppo_continuous_action,
        ppo_continuous_action_population,
        td3_continuous_action,
        td3_continuous_action_population,
    )

    member_flags = (("optim.alpha", "alphas"), ("optim.lr", "lrs"), ("optim.momentum", "momentums"))
    populations = {dqn: (Path(dqn_population.__file__), member_flags),
                   ppo_continuous_action: (Path(ppo_continuous_action_population.__file__), member_flags),
                   td3_continuous_action: (Path(td3_continuous_action_population.__file__), ())}
    return {f"agents/{Path(module.__file__).name}": AgentEntry(Path(module.__file__), module.Args, module.check_args,
                                                               *populations.get(module, ()))
            for module in (dqn, ppo_continuous_action, td3_continuous_action)}
