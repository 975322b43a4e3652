"""CartPole-v1 for a population, stepped in one numpy batch: N members' environments, each bit-identical to
`gym.make("CartPole-v1")` + RecordEpisodeStatistics in a SyncVectorEnv with same-step autoreset (what
agents/dqn.py steps), at a fraction of the Python cost.

Member i keeps its own everything: its reset RNG (seeded like gymnasium's `reset(seed=...)`), its action space
RNG (seeded like agents/dqn.py's make_env), its step counter (TimeLimit, 500 steps) and its episode statistics.
Only the physics (gymnasium's CartPoleEnv.step, the same float64 operations in the same order) runs for all
members at once. Observations, rewards, terminations, truncations and infos (final_obs, final_info["episode"]) have
the SyncVectorEnv's layout, so the agents cannot tell the two apart (tests/test_cartpole_batch.py steps both side
by side). Checkpoints save and restore it exactly (state_dict / load_state_dict).
"""

from __future__ import annotations

import math
import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding

from .envs import episode_end_infos

ENV_ID = "CartPole-v1"
MAX_EPISODE_STEPS = 500  # CartPole-v1's registered TimeLimit
# gymnasium's CartPoleEnv constants (classic_control/cartpole.py), as its __init__ computes them
GRAVITY, MASSCART, MASSPOLE, LENGTH, FORCE_MAG, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
TOTAL_MASS = MASSPOLE + MASSCART
POLEMASS_LENGTH = MASSPOLE * LENGTH
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
THRESHOLDS = np.array([X_THRESHOLD, THETA_THRESHOLD])


class CartPoleBatch(gym.vector.VectorEnv):
    """`len(seeds)` CartPole-v1 environments (member i's action space seeded with seeds[i]); reset(seed=[...]) seeds
    each member's episodes as gymnasium does."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
    env_id = ENV_ID

    def __init__(self, seeds: list[int]):
        template = gym.make(ENV_ID)  # its spaces, exactly
        self.num_envs = len(seeds)
        self.single_observation_space = template.observation_space
        self.single_action_space = template.action_space
        template.close()
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.member_action_spaces = [gym.spaces.Discrete(2) for _ in seeds]
        for space, seed in zip(self.member_action_spaces, seeds):
            space.seed(seed)
        self.rngs = [seeding.np_random()[0] for _ in seeds]  # replaced by reset(seed=...)
        self.state = np.zeros((self.num_envs, 4))
        self.elapsed_steps = np.zeros(self.num_envs, dtype=np.int64)
        self.episode_returns = np.zeros(self.num_envs)
        self.episode_start_times = np.zeros(self.num_envs)

    def reset(self, *, seed: list[int] | None = None, options: dict | None = None):
        if seed is not None:
            if len(seed) != self.num_envs:
                raise ValueError(f"reset needs one seed per member ({self.num_envs}), got {len(seed)}")
            self.rngs = [seeding.np_random(s)[0] for s in seed]
        for member in range(self.num_envs):
            self._reset_member(member)
        return self.state.astype(np.float32), {}

    def _reset_member(self, member: int) -> None:
        self.state[member] = self.rngs[member].uniform(low=-0.05, high=0.05, size=(4,))
        self.elapsed_steps[member] = 0
        self.episode_returns[member] = 0.0
        self.episode_start_times[member] = time.perf_counter()

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions)
        push_right = actions == 1
        if actions.shape != (self.num_envs,) or not (push_right | (actions == 0)).all():
            raise ValueError(f"CartPole actions must be 0 or 1, one per member ({self.num_envs}), got {actions!r}")
        x_dot, theta, theta_dot = self.state[:, 1], self.state[:, 2], self.state[:, 3]
        force = np.where(push_right, FORCE_MAG, -FORCE_MAG)
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + POLEMASS_LENGTH * np.square(theta_dot) * sintheta) / TOTAL_MASS
        thetaacc = (GRAVITY * sintheta - costheta * temp) / (
            LENGTH * (4.0 / 3.0 - MASSPOLE * np.square(costheta) / TOTAL_MASS))
        xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS
        # Euler: x += tau x_dot, x_dot += tau xacc, theta += tau theta_dot, theta_dot += tau thetaacc (old values)
        self.state = self.state + TAU * np.stack((x_dot, xacc, theta_dot, thetaacc), axis=1)
        terminations = (np.abs(self.state[:, ::2]) > THRESHOLDS).any(axis=1)  # |x| > 2.4 or |theta| > 12 degrees
        self.elapsed_steps += 1
        truncations = self.elapsed_steps >= MAX_EPISODE_STEPS
        rewards = np.ones(self.num_envs)
        self.episode_returns += rewards
        obs = self.state.astype(np.float32)
        ended = np.flatnonzero(terminations | truncations)
        infos = episode_end_infos(self.num_envs, ended, self.episode_returns, self.elapsed_steps,
                                  self.episode_start_times, final_obs=obs)
        for member in ended:
            self._reset_member(member)
            obs[member] = self.state[member].astype(np.float32)
        return obs, rewards, terminations, truncations, infos

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the members' future: physics, counters, episode returns and every RNG."""
        return {"state": self.state.copy(), "elapsed_steps": self.elapsed_steps.copy(),
                "episode_returns": self.episode_returns.copy(),
                "episode_times": time.perf_counter() - self.episode_start_times,
                "rngs": [rng.bit_generator.state for rng in self.rngs],
                "action_space_rngs": [space.np_random.bit_generator.state for space in self.member_action_spaces]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["state"]) != self.num_envs:
            raise ValueError(f"the saved CartPole batch has {len(state['state'])} members, this one {self.num_envs}")
        self.state = np.array(state["state"], dtype=np.float64)
        self.elapsed_steps = np.array(state["elapsed_steps"], dtype=np.int64)
        self.episode_returns = np.array(state["episode_returns"], dtype=np.float64)
        self.episode_start_times = time.perf_counter() - np.asarray(state["episode_times"])
        for rng, saved in zip(self.rngs, state["rngs"]):
            rng.bit_generator.state = saved
        for space, saved in zip(self.member_action_spaces, state["action_space_rngs"]):
            space.np_random.bit_generator.state = saved


def member_action_spaces(envs: gym.vector.VectorEnv) -> list[gym.Space]:
    """Each member's own action space (its RNG draws the member's random actions): a CartPoleBatch's, or those of a
    SyncVectorEnv's sub-environments."""
    if isinstance(envs, CartPoleBatch):
        return envs.member_action_spaces
    return [env.action_space for env in envs.envs]
