"""A uniform replay buffer for off-policy agents (DQN, TD3), stored as preallocated numpy arrays."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch


class ReplayBatch(NamedTuple):
    observations: torch.Tensor
    actions: torch.Tensor
    next_observations: torch.Tensor
    rewards: torch.Tensor  # shape (batch, 1)
    terminations: torch.Tensor  # shape (batch, 1); 1.0 only for true terminal states (no bootstrap)


class ReplayBuffer:
    """Ring buffer of (obs, action, next_obs, reward, terminated), one row per env per step.

    `next_obs` must be the true next observation (see alphagrad_rl.envs.true_next_obs) and `terminated`
    must exclude time-limit truncations, which bootstrap.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...],
                 action_dtype: np.dtype, device: torch.device, obs_dtype: np.dtype = np.float32) -> None:
        if capacity <= 0:
            raise ValueError(f"invalid buffer size: {capacity} (allowed: > 0)")
        self.capacity = capacity
        self.device = device
        self.observations = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.next_observations = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.actions = np.zeros((capacity, *action_shape), dtype=action_dtype)
        self.rewards = np.zeros((capacity, 1), dtype=np.float32)
        self.terminations = np.zeros((capacity, 1), dtype=np.float32)
        self.position = 0
        self.full = False
        self.rows_per_add = 1  # the number of envs: a row's successor in its own env is rows_per_add rows later

    def __len__(self) -> int:
        return self.capacity if self.full else self.position

    def add(self, obs: np.ndarray, next_obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
            terminations: np.ndarray) -> None:
        """Add one step of a vector env (leading axis = envs)."""
        self.rows_per_add = len(obs)
        for i in range(len(obs)):
            self.observations[self.position] = obs[i]
            self.next_observations[self.position] = next_obs[i]
            self.actions[self.position] = actions[i]
            self.rewards[self.position] = rewards[i]
            self.terminations[self.position] = terminations[i]
            self.position = (self.position + 1) % self.capacity
            self.full = self.full or self.position == 0

    def sample(self, batch_size: int, rng: np.random.Generator) -> ReplayBatch:
        indices = rng.integers(0, len(self), size=batch_size)

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array[indices], device=self.device)

        return ReplayBatch(tensor(self.observations).float(), tensor(self.actions), tensor(self.next_observations).float(),
                           tensor(self.rewards), tensor(self.terminations))

    def state_dict(self) -> dict[str, Any]:
        """The filled rows, compactly: a next observation that equals the observation of the row's successor
        (the same env's next row, which is nearly always the case within an episode) is not stored again."""
        n = len(self)
        observations, next_observations = self.observations[:n], self.next_observations[:n]
        successor = (np.arange(n) + self.rows_per_add) % self.capacity
        has_successor = np.flatnonzero(successor < n)
        shared = np.zeros(n, dtype=bool)
        shared[has_successor] = (_row_bytes(next_observations[has_successor])
                                 == _row_bytes(observations[successor[has_successor]])).all(axis=1)
        return {"capacity": self.capacity, "position": self.position, "full": self.full,
                "rows_per_add": self.rows_per_add, "observations": observations, "actions": self.actions[:n],
                "rewards": self.rewards[:n], "terminations": self.terminations[:n],
                "next_obs_is_successor_obs": shared, "other_next_observations": next_observations[~shared]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        observations = state["observations"]
        if state["capacity"] != self.capacity or observations.shape[1:] != self.observations.shape[1:]:
            raise ValueError(f"the saved replay buffer holds {state['capacity']} x {tuple(observations.shape[1:])} "
                             f"observations, this one {self.capacity} x {tuple(self.observations.shape[1:])}")
        n = len(observations)
        self.position, self.full, self.rows_per_add = int(state["position"]), bool(state["full"]), state["rows_per_add"]
        self.observations[:n] = observations
        self.actions[:n] = state["actions"]
        self.rewards[:n] = state["rewards"]
        self.terminations[:n] = state["terminations"]
        shared = state["next_obs_is_successor_obs"]
        rows = np.flatnonzero(shared)
        self.next_observations[rows] = observations[(rows + self.rows_per_add) % self.capacity]
        self.next_observations[np.flatnonzero(~shared)] = state["other_next_observations"]


def _row_bytes(array: np.ndarray) -> np.ndarray:
    """Each row as raw bytes, so that equality is bit equality (NaN and -0.0 included)."""
    return np.ascontiguousarray(array).reshape(len(array), int(np.prod(array.shape[1:]))).view(np.uint8)
