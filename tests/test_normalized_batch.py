"""NormalizedEnvBatch steps like agents/ppo_continuous_action.py's make_env in a SyncVectorEnv, bit for bit, in both
autoreset modes; its checkpoint state continues it exactly; a PPO population trains identically on either."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from alphagrad_rl.agents import ppo_continuous_action as ppo

from alphagrad_rl.envs import ended_episodes, make_vector_env, true_next_obs
from alphagrad_rl.normalized_batch import NormalizedEnvBatch, supports

SEEDS = [1, 2, 7, 12]
GAMMAS = [0.99, 0.99, 0.9, 0.995]


def actions(step: int, shape: tuple[int, ...]) -> np.ndarray:
    """Random actions, a third of them outside [-1, 1] (ClipAction clips them)."""
    return (np.random.default_rng(step).normal(size=shape) * 1.5).astype(np.float32)


def step_both(batch, reference, steps: int, start: int = 0) -> dict[str, int]:
    """Step both `steps` times with the same actions; assert every output agrees; count episode ends."""
    seen = {"terminated": 0, "truncated": 0}
    for step in range(start, start + steps):
        action = actions(step, (len(SEEDS), *reference.single_action_space.shape))
        obs, rewards, terminations, truncations, infos = reference.step(action)
        batch_obs, batch_rewards, batch_terminations, batch_truncations, batch_infos = batch.step(action)
        assert batch_obs.dtype == np.float32 and np.array_equal(batch_obs, obs), step
        assert batch_rewards.dtype == rewards.dtype and np.array_equal(batch_rewards, rewards), step
        assert np.array_equal(batch_terminations, terminations) and np.array_equal(batch_truncations, truncations)
        assert list(ended_episodes(batch_infos)) == list(ended_episodes(infos)), step
        assert np.array_equal(true_next_obs(batch_obs, batch_terminations, batch_truncations, batch_infos),
                              true_next_obs(obs, terminations, truncations, infos)), step
        seen["terminated"] += int(terminations.sum())
        seen["truncated"] += int(truncations.sum())
    return seen


def reference_envs(env_id: str, mode: str) -> gym.vector.SyncVectorEnv:
    return make_vector_env([ppo.make_env(env_id, gamma) for gamma in GAMMAS], gym.spaces.Box, "PPO", mode)


@pytest.mark.parametrize(("env_id", "mode", "steps"), [("Hopper-v4", "next-step", 400),
                                                       ("Hopper-v4", "same-step", 400),
                                                       ("HalfCheetah-v5", "next-step", 1100)])
def test_normalized_batch_steps_bit_for_bit_like_cleanrl_wrappers(env_id, mode, steps):
    reference, batch = reference_envs(env_id, mode), NormalizedEnvBatch(env_id, GAMMAS, mode)
    obs, _ = reference.reset(seed=SEEDS)
    batch_obs, _ = batch.reset(seed=SEEDS)
    assert np.array_equal(batch_obs, obs)
    assert batch.single_observation_space == reference.single_observation_space
    assert batch.single_action_space == reference.single_action_space
    seen = step_both(batch, reference, steps)
    assert seen["terminated" if env_id == "Hopper-v4" else "truncated"] >= 4  # episode ends were exercised
    for i in range(len(SEEDS)):  # each sub-environment's observation statistics, as the model saves them
        saved, batch_saved = ppo.observation_statistics(reference, i), ppo.observation_statistics(batch, i)
        for key in ("mean", "var", "count"):
            assert batch_saved[key].dtype == saved[key].dtype and np.array_equal(saved[key], batch_saved[key])
    batch.close()
    reference.close()


def test_normalized_batch_state_continues_exactly():
    batch, reference = NormalizedEnvBatch("Hopper-v4", GAMMAS, "next-step"), reference_envs("Hopper-v4", "next-step")
    batch.reset(seed=SEEDS)
    reference.reset(seed=SEEDS)
    step = 0
    while not batch.autoreset.any():  # save with a reset pending
        step_both(batch, reference, 1, start=step)
        step += 1
    state = batch.state_dict()
    restored = NormalizedEnvBatch("Hopper-v4", GAMMAS, "next-step")
    restored.reset(seed=[100, 101, 102, 103])
    restored.load_state_dict(state)
    step_both(restored, reference, 200, start=step)
    with pytest.raises(ValueError, match="4 Hopper-v4 environments, this one 2 Hopper-v4"):
        NormalizedEnvBatch("Hopper-v4", GAMMAS[:2]).load_state_dict(state)


def test_normalized_batch_refuses_what_it_cannot_run():
    assert supports("HalfCheetah-v5") and not supports("Pendulum-v1")
    with pytest.raises(ValueError, match="MuJoCo environment with a flat Box observation, not 'Pendulum-v1'"):
        NormalizedEnvBatch("Pendulum-v1", GAMMAS)
    batch = NormalizedEnvBatch("Hopper-v4", GAMMAS)
    with pytest.raises(ValueError, match="one seed per sub-environment"):
        batch.reset(seed=[1, 2])
    batch.reset(seed=1)
    with pytest.raises(ValueError, match=r"actions of shape \(4, 2\), expected \(4, 3\)"):
        batch.step(np.zeros((4, 2), dtype=np.float32))


@pytest.mark.parametrize(("mode", "bootstrap"), [("next-step", False), ("same-step", True)])
def test_ppo_population_trains_identically_on_the_batch(mode, bootstrap, tmp_path):
    from alphagrad_rl.agents import ppo_continuous_action_population as ppo_population
    from test_agents import metric_rows
    from test_population import PPO_SPECS, ppo_args

    args = ppo_args(tmp_path / "batch", PPO_SPECS["alphagrad"], alphas=(98.0, 196.0, 294.0), env_id="Hopper-v4",
                    autoreset_mode=mode, bootstrap_truncation=bootstrap, total_timesteps=256, save_model=True,
                    eval_episodes=1)
    gymnasium_envs = dataclasses.replace(args, results_dir=str(tmp_path / "gymnasium"), env_batch=False)
    summaries = ppo_population.main(args)
    reference = ppo_population.main(gymnasium_envs)
    for i, (summary, expected) in enumerate(zip(summaries, reference)):
        rows = metric_rows(tmp_path / "batch" / f"pop__m{i}")
        assert rows == metric_rows(tmp_path / "gymnasium" / f"pop__m{i}")
        assert sum("charts/episodic_return" in row for row in rows) >= 3  # Hopper episodes ended and were recorded
        assert summary["evaluation"] == expected["evaluation"]
