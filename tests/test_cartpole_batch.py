"""The population's fast paths equal what they replace: CartPoleBatch steps like agents/dqn.py's gymnasium envs in a
SyncVectorEnv (bit for bit), MemberReplayBuffers stores and samples like one ReplayBuffer per member."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from alphagrad_rl.agents import dqn, dqn_population

from alphagrad_rl.buffers import MemberReplayBuffers, ReplayBuffer
from alphagrad_rl.cartpole_batch import CartPoleBatch, member_action_spaces
from alphagrad_rl.envs import ended_episodes, make_vector_env, true_next_obs
from alphagrad_rl.runs import read_run

SEEDS = [1, 2, 7, 12]


def policy(obs: np.ndarray, spaces: list[gym.Space], step: int) -> np.ndarray:
    """Members 0-1 balance the pole (episodes reach the 500-step limit), 2-3 mostly act at random (they fall)."""
    balance = (obs[:, 2] + 0.3 * obs[:, 3] > 0).astype(np.int64)
    random = np.array([space.sample() for space in spaces])
    use_random = np.array([False, step % 50 == 0, True, True])
    return np.where(use_random, random, balance)


def step_both(batch: CartPoleBatch, reference: gym.vector.SyncVectorEnv, obs: np.ndarray, steps: int,
              start: int = 0) -> tuple[dict, np.ndarray]:
    """Step both `steps` times from observation `obs`; assert they agree; count episode ends; the last observation."""
    seen = {"terminated": 0, "truncated": 0}
    batch_obs = obs
    for step in range(start, start + steps):
        actions = policy(obs, member_action_spaces(reference), step)
        assert np.array_equal(policy(batch_obs, member_action_spaces(batch), step), actions)
        obs, rewards, terminations, truncations, infos = reference.step(actions)
        batch_obs, batch_rewards, batch_terminations, batch_truncations, batch_infos = batch.step(actions)
        assert batch_obs.dtype == np.float32 and np.array_equal(batch_obs, obs), step
        assert np.array_equal(batch.state, np.stack([env.unwrapped.state for env in reference.envs])), step  # float64
        assert np.array_equal(batch_rewards, rewards) and batch_rewards.dtype == rewards.dtype
        assert np.array_equal(batch_terminations, terminations) and np.array_equal(batch_truncations, truncations)
        assert list(ended_episodes(batch_infos)) == list(ended_episodes(infos))
        assert np.array_equal(true_next_obs(batch_obs, batch_terminations, batch_truncations, batch_infos),
                              true_next_obs(obs, terminations, truncations, infos))
        assert set(batch_infos) == set(infos)
        seen["terminated"] += int(terminations.sum())
        seen["truncated"] += int(truncations.sum())
    return seen, obs


def test_cartpole_batch_steps_bit_for_bit_like_gymnasium():
    reference = make_vector_env([dqn.make_env("CartPole-v1", seed, 0) for seed in SEEDS], gym.spaces.Discrete, "DQN")
    batch = CartPoleBatch(SEEDS)
    obs, _ = reference.reset(seed=SEEDS)
    batch_obs, _ = batch.reset(seed=SEEDS)
    assert np.array_equal(batch_obs, obs)
    assert batch.single_observation_space == reference.single_observation_space
    assert batch.single_action_space == reference.single_action_space
    seen, _ = step_both(batch, reference, obs, 3000)
    assert seen["terminated"] > 20 and seen["truncated"] >= 2  # both kinds of episode end were compared


def test_cartpole_batch_resumes_exactly_from_its_state_dict():
    reference = make_vector_env([dqn.make_env("CartPole-v1", seed, 0) for seed in SEEDS], gym.spaces.Discrete, "DQN")
    batch = CartPoleBatch(SEEDS)
    obs, _ = reference.reset(seed=SEEDS)
    batch.reset(seed=SEEDS)
    _, obs = step_both(batch, reference, obs, 777)
    restored = CartPoleBatch([0, 0, 0, 0])
    restored.reset(seed=[5, 6, 7, 8])
    restored.load_state_dict(batch.state_dict())
    del batch
    step_both(restored, reference, obs, 1500, start=777)
    with pytest.raises(ValueError, match="has 4 members, this one 2"):
        CartPoleBatch([1, 2]).load_state_dict(restored.state_dict())


def test_cartpole_batch_refuses_bad_actions():
    batch = CartPoleBatch([1, 2])
    batch.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="must be 0 or 1"):
        batch.step(np.array([0, 2]))
    with pytest.raises(ValueError, match="one per member"):
        batch.step(np.array([0]))


@pytest.mark.parametrize("envs_per_member", [1, 2])
def test_member_replay_buffers_store_and_sample_like_one_buffer_per_member(envs_per_member):
    members, capacity = 3, 50
    stacked = MemberReplayBuffers(members, capacity, (4,), (2,), np.float32, torch.device("cpu"))
    singles = [ReplayBuffer(capacity, (4,), (2,), np.float32, torch.device("cpu")) for _ in range(members)]
    rng = np.random.default_rng(0)
    rows = members * envs_per_member
    for _ in range(37):  # wraps around the capacity
        step = (rng.normal(size=(rows, 4)).astype(np.float32), rng.normal(size=(rows, 4)).astype(np.float32),
                rng.normal(size=(rows, 2)).astype(np.float32), rng.normal(size=rows), rng.random(rows) < 0.1)
        stacked.add(*step)
        for i, single in enumerate(singles):
            part = slice(i * envs_per_member, (i + 1) * envs_per_member)
            single.add(*(array[part] for array in step))
    for member, single in zip(stacked.members, singles):
        assert (member.position, member.full, len(member)) == (single.position, single.full, len(single))
        assert all(np.array_equal(getattr(member, name), getattr(single, name))
                   for name in ("observations", "next_observations", "actions", "rewards", "terminations"))
    batch = stacked.sample(16, [np.random.default_rng(seed) for seed in range(members)])
    for i, single in enumerate(singles):
        expected = single.sample(16, np.random.default_rng(i))
        assert all(torch.equal(part[i], want) for part, want in zip(batch, expected))
    copy = MemberReplayBuffers(members, capacity, (4,), (2,), np.float32, torch.device("cpu"))
    copy.load_state_dict(stacked.state_dict())
    again = copy.sample(16, [np.random.default_rng(seed) for seed in range(members)])
    assert all(torch.equal(a, b) for a, b in zip(again, batch))
    with pytest.raises(ValueError, match="3 members', these 2"):
        MemberReplayBuffers(2, capacity, (4,), (2,), np.float32, torch.device("cpu")).load_state_dict(copy.state_dict())


def test_dqn_population_on_the_cartpole_batch_trains_exactly_as_on_gymnasium_envs(tmp_path):
    args = dqn_population.Args(seeds=(1, 2, 3), total_timesteps=3000, learning_starts=1000, train_frequency=10,
                               target_network_frequency=200, batch_size=32, buffer_size=2000, quiet=True, cuda=False,
                               results_dir=str(tmp_path / "batch"), run_name="pop", checkpoint_interval_s=0)
    dqn_population.main(args)
    dqn_population.main(dataclasses.replace(args, cartpole_batch=False, results_dir=str(tmp_path / "gymnasium")))

    def rows(folder):
        return [{k: v for k, v in row.items() if k not in ("time", "charts/SPS")} for row in read_run(folder)["metrics"]]

    for i in range(3):
        batch_rows, gymnasium_rows = rows(tmp_path / "batch" / f"pop__m{i}"), rows(tmp_path / "gymnasium" / f"pop__m{i}")
        assert any("losses/td_loss" in row for row in batch_rows) and batch_rows == gymnasium_rows
