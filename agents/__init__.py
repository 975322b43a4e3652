"""The harness's agents. `sweep_registry()` is the registry the sweep launcher is given: each program path as
sweep configs name it, with its script, Args dataclass and argument checks."""

from pathlib import Path


def sweep_registry() -> dict:
    from alphagrad_rl.sweep_config import AgentEntry

    from . import (
        dqn,
        dqn_population,
        ppo_continuous_action,
        ppo_continuous_action_population,
        td3_continuous_action,
        td3_continuous_action_population,
    )

    member_flags = tuple(((f"optim.{field}",), f"{field}s") for field in ("alpha", "lr", "momentum"))
    td3_flags = tuple(((f"actor-optim.{field}", f"critic-optim.{field}"), f"{field}s")  # one value sets both roles
                      for field in ("alpha", "lr", "momentum"))
    populations = {dqn: (Path(dqn_population.__file__), member_flags),
                   ppo_continuous_action: (Path(ppo_continuous_action_population.__file__), member_flags),
                   td3_continuous_action: (Path(td3_continuous_action_population.__file__), td3_flags)}
    return {f"agents/{Path(module.__file__).name}": AgentEntry(Path(module.__file__), module.Args, module.check_args,
                                                               *populations.get(module, ()))
            for module in (dqn, ppo_continuous_action, td3_continuous_action)}
