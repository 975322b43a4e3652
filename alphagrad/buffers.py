"""A uniform replay buffer for off-policy agents (DQN, TD3), stored as preallocated numpy arrays."""

from __future__ import annotations

from typing import NamedTuple

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

    `next_obs` must be the true next observation (see alphagrad.envs.true_next_obs) and `terminated`
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

    def __len__(self) -> int:
        return self.capacity if self.full else self.position

    def add(self, obs: np.ndarray, next_obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
            terminations: np.ndarray) -> None:
        """Add one step of a vector env (leading axis = envs)."""
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
