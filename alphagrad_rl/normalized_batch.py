"""Continuous-control environments for a population, with CleanRL PPO's wrapper stack applied to all of them in numpy
batches: N sub-environments, each bit-identical to agents/ppo_continuous_action.py's make_env (FlattenObservation,
RecordEpisodeStatistics, ClipAction, NormalizeObservation, observations clipped to [-10, 10], NormalizeReward, rewards
clipped to [-10, 10]) in a SyncVectorEnv, in either autoreset mode, at a fraction of the Python cost.

Each sub-environment keeps its own everything: its MuJoCo core (`gym.make(env_id).unwrapped`, stepped as gymnasium
steps it), its step counter (the registered TimeLimit), its episode statistics, its observation and return
statistics. Only the wrappers' arithmetic runs for all of them at once: gymnasium's RunningMeanStd updates with one
sample at a time, done row by row in one array, the same float64 operations in the same order. Observations,
rewards, terminations, truncations and the episode statistics in infos ("episode", and "final_obs"/"final_info" in
same-step mode) have the SyncVectorEnv's layout (the cores' own info keys are not passed on: the agents do not read
them); tests/test_normalized_batch.py steps both side by side. Checkpoints save and restore it exactly
(state_dict / load_state_dict).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers.utils import RunningMeanStd

from .envs import AUTORESET_MODES, episode_end_infos, is_mujoco, layer_state, restore_layer

CLIP = 10.0  # the observation and reward clip of CleanRL's make_env
EPSILON = 1e-8  # NormalizeObservation's and NormalizeReward's default epsilon
START_COUNT = 1e-4  # RunningMeanStd's initial count


class RowRunningMeanStd:
    """gymnasium's RunningMeanStd, one per row, each updated with one sample at a time as the normalization wrappers
    update theirs: the same float64 operations in the same order (wrappers/utils.py), so every row's statistics are
    bit-identical to its wrapper's. `dtype` is the wrapper's (float32 for observations): as in gymnasium, only the
    first update computes var * count in it."""

    def __init__(self, rows: int, shape: tuple[int, ...], dtype: type = np.float64):
        self.mean = np.zeros((rows, *shape))
        self.var = np.ones((rows, *shape))
        self.count = np.full(rows, START_COUNT)
        self.dtype, self.updated = dtype, np.zeros(rows, dtype=bool)

    def update(self, rows: np.ndarray, x: np.ndarray) -> None:
        """Update rows `rows` with one sample each (x[j] for row rows[j]): update_mean_var_count_from_moments with
        batch_mean = x, batch_var = 0, batch_count = 1, written as gymnasium writes it."""
        mean, var, count = self.mean[rows], self.var[rows], self.count[rows]
        count_ = count.reshape((-1,) + (1,) * (mean.ndim - 1))
        delta = x - mean
        tot_count = count_ + 1
        m_a = var * count_
        fresh = ~self.updated[rows]
        m_a[fresh] = m_a[fresh].astype(self.dtype)
        self.mean[rows] = mean + delta * 1 / tot_count
        m2 = m_a + 0.0 + np.square(delta) * count_ * 1 / tot_count  # m_b = batch_var * batch_count = 0.0
        self.var[rows] = m2 / tot_count
        self.count[rows] = count + 1
        self.updated[rows] = True

    def row(self, index: int) -> RunningMeanStd:
        """Row `index`'s statistics as the gymnasium RunningMeanStd its wrapper would hold (a copy)."""
        rms = RunningMeanStd(shape=self.mean.shape[1:])
        rms.mean, rms.var, rms.count = self.mean[index].copy(), self.var[index].copy(), float(self.count[index])
        return rms

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count.copy(),
                "updated": self.updated.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if np.shape(state["mean"]) != self.mean.shape:
            raise ValueError(f"saved running statistics of shape {np.shape(state['mean'])}, these {self.mean.shape}")
        for name in ("mean", "var", "count", "updated"):
            setattr(self, name, np.array(state[name], dtype=getattr(self, name).dtype))


class NormalizedEnvBatch(gym.vector.VectorEnv):
    """`len(gammas)` sub-environments of `env_id` (a MuJoCo environment with a flat Box observation), sub-environment
    i's return normalized with discount gammas[i]; `autoreset_mode` as in alphagrad_rl.envs.make_vector_env."""

    def __init__(self, env_id: str, gammas: Sequence[float], autoreset_mode: str = "same-step"):
        made = [gym.make(env_id) for _ in gammas]
        if not _batchable(made[0].unwrapped):
            for env in made:
                env.close()
            raise ValueError(f"NormalizedEnvBatch needs a MuJoCo environment with a flat Box observation, not {env_id!r}")
        self.cores = [env.unwrapped for env in made]
        self.max_episode_steps = made[0].spec.max_episode_steps  # None: no TimeLimit
        self.autoreset_mode = AUTORESET_MODES[autoreset_mode]
        self.metadata = {"autoreset_mode": self.autoreset_mode}
        self.num_envs = n = len(gammas)
        core = self.cores[0]
        obs_shape, self.action_shape = core.observation_space.shape, core.action_space.shape
        self.action_low, self.action_high = core.action_space.low, core.action_space.high
        # the spaces NormalizeObservation and ClipAction give the SyncVectorEnv
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, obs_shape, np.float32)
        self.single_action_space = gym.spaces.Box(-np.inf, np.inf, self.action_shape, core.action_space.dtype)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, n)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, n)
        self.gammas = np.asarray(gammas, dtype=np.float64)
        self.obs_rms = RowRunningMeanStd(n, obs_shape, self.single_observation_space.dtype)
        self.return_rms = RowRunningMeanStd(n, ())
        self.discounted_rewards = np.zeros(n)
        self.elapsed_steps = np.zeros(n, dtype=np.int64)
        self.episode_returns = np.zeros(n)
        self.episode_start_times = np.zeros(n)
        self.autoreset = np.zeros(n, dtype=bool)

    def _normalized(self, rows: np.ndarray, raw_obs: np.ndarray) -> np.ndarray:
        """NormalizeObservation (updating the rows' statistics) then the clip, for raw observations of `rows`."""
        self.obs_rms.update(rows, raw_obs)
        obs = np.float32((raw_obs - self.obs_rms.mean[rows]) / np.sqrt(self.obs_rms.var[rows] + EPSILON))
        return np.clip(obs, -CLIP, CLIP)

    def _reset_rows(self, rows: np.ndarray, seeds: Sequence[int | None]) -> np.ndarray:
        raw = np.stack([self.cores[i].reset(seed=seed)[0] for i, seed in zip(rows, seeds)]).astype(np.float64, copy=False)
        self.elapsed_steps[rows] = 0
        self.episode_returns[rows] = 0.0
        self.episode_start_times[rows] = time.perf_counter()
        return self._normalized(rows, raw)

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        if options:
            raise ValueError(f"NormalizedEnvBatch.reset takes no options, got {options!r}")
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        elif len(seed) != self.num_envs:
            raise ValueError(f"reset needs one seed per sub-environment ({self.num_envs}), got {len(seed)}")
        else:
            seeds = list(seed)
        self.autoreset[:] = False
        return self._reset_rows(np.arange(self.num_envs), seeds), {}

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, *self.action_shape):
            raise ValueError(f"actions of shape {actions.shape}, expected {(self.num_envs, *self.action_shape)}")
        actions = np.clip(actions, self.action_low, self.action_high)  # ClipAction
        n = self.num_envs
        resetting = np.flatnonzero(self.autoreset)  # next-step mode: these reset now, ignoring their action
        stepping = np.flatnonzero(~self.autoreset)
        obs = np.empty((n, *self.single_observation_space.shape), dtype=np.float32)
        rewards, terminations, truncations = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        raw_obs, raw_rewards = [], np.zeros(len(stepping))
        for j, i in enumerate(stepping):
            observation, raw_rewards[j], terminations[i], truncations[i], _ = self.cores[i].step(actions[i])
            raw_obs.append(observation)
        self.elapsed_steps[stepping] += 1
        if self.max_episode_steps is not None:  # TimeLimit
            truncations[stepping] |= self.elapsed_steps[stepping] >= self.max_episode_steps
        if len(stepping):
            self.episode_returns[stepping] += raw_rewards  # RecordEpisodeStatistics: the raw reward
            obs[stepping] = self._normalized(stepping, np.stack(raw_obs).astype(np.float64, copy=False))
            # NormalizeReward (its discounted return decays to 0 only at terminations), then the clip
            not_terminated = 1 - terminations[stepping].astype(np.int64)
            self.discounted_rewards[stepping] = (self.discounted_rewards[stepping] * self.gammas[stepping]
                                                 * not_terminated + raw_rewards)
            self.return_rms.update(stepping, self.discounted_rewards[stepping])
            rewards[stepping] = np.clip(raw_rewards / np.sqrt(self.return_rms.var[stepping] + EPSILON), -CLIP, CLIP)
        if len(resetting):
            obs[resetting] = self._reset_rows(resetting, [None] * len(resetting))

        ended = stepping[terminations[stepping] | truncations[stepping]]
        same_step = self.autoreset_mode == gym.vector.AutoresetMode.SAME_STEP
        infos = episode_end_infos(n, ended, self.episode_returns, self.elapsed_steps, self.episode_start_times,
                                  final_obs=obs if same_step else None)
        if same_step and len(ended):
            obs[ended] = self._reset_rows(ended, [None] * len(ended))
        if self.autoreset_mode == gym.vector.AutoresetMode.NEXT_STEP:
            self.autoreset = terminations | truncations
        return obs, rewards, terminations, truncations, infos

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the sub-environments' future: physics and RNG of every core, counters, episode
        returns, normalization statistics, pending next-step resets."""
        return {"env_id": self.cores[0].spec.id, "cores": [layer_state(core) for core in self.cores],
                "obs_rms": self.obs_rms.state_dict(), "return_rms": self.return_rms.state_dict(),
                "discounted_rewards": self.discounted_rewards.copy(), "elapsed_steps": self.elapsed_steps.copy(),
                "episode_returns": self.episode_returns.copy(),
                "episode_times": time.perf_counter() - self.episode_start_times, "autoreset": self.autoreset.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["cores"]) != self.num_envs or state["env_id"] != self.cores[0].spec.id:
            raise ValueError(f"the saved batch has {len(state['cores'])} {state['env_id']} environments, this one "
                             f"{self.num_envs} {self.cores[0].spec.id}")
        for core, saved in zip(self.cores, state["cores"]):
            restore_layer(core, saved)
        self.obs_rms.load_state_dict(state["obs_rms"])
        self.return_rms.load_state_dict(state["return_rms"])
        self.discounted_rewards = np.array(state["discounted_rewards"], dtype=np.float64)
        self.elapsed_steps = np.array(state["elapsed_steps"], dtype=np.int64)
        self.episode_returns = np.array(state["episode_returns"], dtype=np.float64)
        self.episode_start_times = time.perf_counter() - np.asarray(state["episode_times"])
        self.autoreset = np.array(state["autoreset"], dtype=bool)

    def close(self, **kwargs: Any) -> None:
        for core in self.cores:
            core.close()


def _batchable(core: gym.Env) -> bool:
    space = core.observation_space
    return is_mujoco(core) and isinstance(space, gym.spaces.Box) and len(space.shape) == 1


def supports(env_id: str) -> bool:
    """Whether NormalizedEnvBatch can run `env_id`: a MuJoCo core with a flat Box observation."""
    env = gym.make(env_id)
    try:
        return _batchable(env.unwrapped)
    finally:
        env.close()
