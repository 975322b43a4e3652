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
                 action_dtype: np.dtype, device: torch.device, obs_dtype: np.dtype = np.float32,
                 storage: dict[str, np.ndarray] | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"invalid buffer size: {capacity} (allowed: > 0)")
        self.capacity = capacity
        self.device = device
        # storage: arrays to use instead of new ones (a member's slices of MemberReplayBuffers' stacked arrays)
        storage = storage or _allocate((), capacity, obs_shape, action_shape, action_dtype, obs_dtype)
        self.observations, self.next_observations = storage["observations"], storage["next_observations"]
        self.actions, self.rewards, self.terminations = storage["actions"], storage["rewards"], storage["terminations"]
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


class MemberReplayBuffers:
    """One ReplayBuffer per population member, stored stacked (members, capacity, ...): each step adds every
    member's rows with one write per array, and a minibatch draws each member's indices with its own Generator
    (as its ReplayBuffer.sample would) and gathers them all at once. `members[i]` is member i's ReplayBuffer (a
    view of the stacked arrays), which checkpoints save and restore."""

    def __init__(self, members: int, capacity: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...],
                 action_dtype: np.dtype, device: torch.device, obs_dtype: np.dtype = np.float32) -> None:
        if capacity <= 0:
            raise ValueError(f"invalid buffer size: {capacity} (allowed: > 0)")
        self.storage = _allocate((members,), capacity, obs_shape, action_shape, action_dtype, obs_dtype)
        self.members = [ReplayBuffer(capacity, obs_shape, action_shape, action_dtype, device, obs_dtype,
                                     storage={name: array[i] for name, array in self.storage.items()})
                        for i in range(members)]
        self.capacity, self.device = capacity, device

    def add(self, obs: np.ndarray, next_obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
            terminations: np.ndarray) -> None:
        """Add one step of a vector env whose envs are the members' in order (leading axis = members x envs per
        member): member i's rows are what its own ReplayBuffer.add would store."""
        first = self.members[0]
        count = len(self.members)
        rows = len(obs) // count
        start = first.position
        # a plain slice when the rows do not wrap around (the usual case: much cheaper than an index array)
        positions = slice(start, start + rows) if start + rows <= self.capacity else \
            (start + np.arange(rows)) % self.capacity
        for name, values in (("observations", obs), ("next_observations", next_obs), ("actions", actions),
                             ("rewards", rewards), ("terminations", terminations)):
            array = self.storage[name]
            array[:, positions] = np.asarray(values).reshape(count, rows, *array.shape[2:])
        position = (start + rows) % self.capacity
        full = first.full or start + rows >= self.capacity
        for member in self.members:
            member.position, member.full, member.rows_per_add = position, full, rows

    def sample(self, batch_size: int, rngs: list[np.random.Generator]) -> ReplayBatch:
        """Each member's minibatch (member i's indices drawn by rngs[i]), stacked: tensors (members, batch, ...)."""
        size = len(self.members[0])
        indices = np.stack([rng.integers(0, size, size=batch_size) for rng in rngs])
        members = np.arange(len(self.members))[:, None]

        def tensor(name: str) -> torch.Tensor:
            return torch.as_tensor(self.storage[name][members, indices], device=self.device)

        return ReplayBatch(tensor("observations").float(), tensor("actions"), tensor("next_observations").float(),
                           tensor("rewards"), tensor("terminations"))

    def state_dict(self) -> dict[str, Any]:
        return {"members": [member.state_dict() for member in self.members]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["members"]) != len(self.members):
            raise ValueError(f"the saved replay buffers are {len(state['members'])} members', these "
                             f"{len(self.members)}")
        for member, saved in zip(self.members, state["members"]):
            member.load_state_dict(saved)


def _allocate(members: tuple[int, ...], capacity: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...],
              action_dtype: np.dtype, obs_dtype: np.dtype) -> dict[str, np.ndarray]:
    return {"observations": np.zeros((*members, capacity, *obs_shape), dtype=obs_dtype),
            "next_observations": np.zeros((*members, capacity, *obs_shape), dtype=obs_dtype),
            "actions": np.zeros((*members, capacity, *action_shape), dtype=action_dtype),
            "rewards": np.zeros((*members, capacity, 1), dtype=np.float32),
            "terminations": np.zeros((*members, capacity, 1), dtype=np.float32)}


def _row_bytes(array: np.ndarray) -> np.ndarray:
    """Each row as raw bytes, so that equality is bit equality (NaN and -0.0 included)."""
    return np.ascontiguousarray(array).reshape(len(array), int(np.prod(array.shape[1:]))).view(np.uint8)
