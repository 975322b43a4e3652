"""Environment plumbing shared by the agents: checked construction and gymnasium 1.x autoreset handling.

The agents use `AutoresetMode.SAME_STEP`: when an episode ends, `step()` returns the first observation
of the next episode, and the true last observation in `infos["final_obs"]`, with the episode's
statistics in `infos["final_info"]["episode"]`. Transitions must use the true last observation, so no
stored transition spans an episode boundary, and truncated episodes bootstrap from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gymnasium as gym
import numpy as np


def check_env_id(env_id: str) -> None:
    """Raise ValueError with close matches when `env_id` is not registered."""
    if env_id in gym.registry:
        return
    import difflib

    close = difflib.get_close_matches(env_id, list(gym.registry), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown environment id {env_id!r}.{hint} (see gymnasium.registry for all ids)")


def make_vector_env(env_fns: list[Callable[[], gym.Env]], action_space_type: type[gym.Space],
                    algorithm: str) -> gym.vector.SyncVectorEnv:
    """A SyncVectorEnv in SAME_STEP autoreset mode whose action space must be `action_space_type`."""
    envs = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    if not isinstance(envs.single_action_space, action_space_type):
        space = envs.single_action_space
        envs.close()
        raise ValueError(f"{algorithm} needs a {action_space_type.__name__} action space, "
                         f"but the environment has {space}")
    return envs


def true_next_obs(next_obs: np.ndarray, terminations: np.ndarray, truncations: np.ndarray,
                  infos: dict) -> np.ndarray:
    """next_obs with the reset observation of finished episodes replaced by their true last observation."""
    real = next_obs.copy()
    for i in np.flatnonzero(np.logical_or(terminations, truncations)):
        real[i] = infos["final_obs"][i]
    return real


def finished_episodes(infos: dict) -> Iterator[tuple[float, int]]:
    """(return, length) of each episode that ended in this step, each counted once."""
    final_info = infos.get("final_info")
    if not final_info or "episode" not in final_info:
        return
    episode, mask = final_info["episode"], final_info["_episode"]
    for i in np.flatnonzero(mask):
        yield float(episode["r"][i]), int(episode["l"][i])


def evaluate_policy(envs: gym.vector.VectorEnv, act: Callable[[np.ndarray], np.ndarray], episodes: int,
                    seed: int) -> list[float]:
    """Returns of the first `episodes` episodes of `act` (observations -> actions); closes `envs`."""
    obs, _ = envs.reset(seed=seed)
    returns: list[float] = []
    while len(returns) < episodes:
        obs, _, _, _, infos = envs.step(act(obs))
        returns += [episodic_return for episodic_return, _ in finished_episodes(infos)]
    envs.close()
    return returns[:episodes]
