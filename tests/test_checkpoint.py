"""Checkpoints and exact resume: every agent, damaged checkpoints, refused configs, signals, env state, buffer."""

import dataclasses
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from alphagrad_rl.agents import dqn, dqn_population, td3_continuous_action
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_agents import AGENTS, dqn_args, metric_rows
from test_population import SPECS, population_args

from alphagrad_rl import experiment
from alphagrad_rl import population as population_module
from alphagrad_rl.buffers import ReplayBuffer
from alphagrad_rl.checkpoint import Checkpointer, CheckpointMismatch, RunInterrupted, _decode, _encode
from alphagrad_rl.envs import env_state, restore_env_state
from alphagrad_rl.factory import OptimizerSpec
from alphagrad_rl.runs import config_differences, read_run, wait_past_event_files

ROOT = Path(__file__).resolve().parents[1]
# checkpoint every CHECKPOINT_EVERY[agent] steps; the simulated crash comes CRASH_AFTER steps after the second one
CHECKPOINT_EVERY = {"dqn": 200, "td3": 100, "ppo": 128}
CRASH_AFTER = 30


class SimulatedCrash(RuntimeError):
    pass


def crash_at_env_step(monkeypatch, crash_step):
    """Make the vector env (a SyncVectorEnv or a population's CartPoleBatch or NormalizedEnvBatch) raise on its
    `crash_step`-th step, as a killed process would stop there."""
    from alphagrad_rl.cartpole_batch import CartPoleBatch
    from alphagrad_rl.normalized_batch import NormalizedEnvBatch

    calls = [0]
    for vector_env in (gym.vector.SyncVectorEnv, CartPoleBatch, NormalizedEnvBatch):
        def step(self, actions, original=vector_env.step):
            calls[0] += 1
            if calls[0] == crash_step:
                raise SimulatedCrash(f"killed at env step {crash_step}")
            return original(self, actions)

        monkeypatch.setattr(vector_env, "step", step)


def checkpoint_args(agent, tmp_path, run_name, **overrides):
    _, make_args, _ = AGENTS[agent]
    defaults = dict(run_name=run_name, checkpoint_interval_steps=CHECKPOINT_EVERY[agent], checkpoint_interval_s=0,
                    save_model=True, eval_episodes=1)
    if agent == "ppo":
        defaults["total_timesteps"] = 512
    return make_args(tmp_path, **{**defaults, **overrides})


def crashed_run(agent, tmp_path, monkeypatch, crash_step, run_name="cut", **overrides):
    """Run `agent` into `tmp_path/run_name` until its vector env's `crash_step`-th step kills it."""
    with monkeypatch.context() as patch:
        crash_at_env_step(patch, crash_step)
        with pytest.raises(SimulatedCrash):
            AGENTS[agent][0].main(checkpoint_args(agent, tmp_path, run_name, **overrides))
    assert read_run(tmp_path / run_name)["summary"]["status"] == "crashed"


def interrupted_then_resumed(agent, tmp_path, monkeypatch, run_name="cut", **overrides):
    crashed_run(agent, tmp_path, monkeypatch, 2 * CHECKPOINT_EVERY[agent] + CRASH_AFTER, run_name, **overrides)
    return AGENTS[agent][0].main(checkpoint_args(agent, tmp_path, run_name, resume=True, **overrides))


def tensorboard_points(run_dir, tag):
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(point.step, point.value) for point in events.Scalars(tag)]


def test_a_resume_under_an_edited_custom_optimizer_file_is_noted(tmp_path, monkeypatch):
    """The record keeps the hash of the file defining a custom optimizer; a resume under an edited file says so."""
    optimizer_file = tmp_path / "my_optimizer.py"
    optimizer_file.write_text("from torch.optim import SGD\n\n\nclass Mine(SGD):\n    pass\n")
    spec = OptimizerSpec(name="custom", lr=1e-2, target=f"{optimizer_file}:Mine", options='{"momentum": 0.9}')
    crashed_run("dqn", tmp_path, monkeypatch, 2 * CHECKPOINT_EVERY["dqn"] + CRASH_AFTER, optim=spec)
    started = read_run(tmp_path / "cut")["config"]["software"][f"custom optimizer {spec.target}"]
    assert started.startswith("my_optimizer.py sha256:")
    optimizer_file.write_text("from torch.optim import SGD\n\n\nclass Mine(SGD):\n    pass  # edited\n")
    summary = dqn.main(checkpoint_args("dqn", tmp_path, "cut", resume=True, optim=spec))
    edited = summary["resumes"][-1]["software"][f"custom optimizer {spec.target}"]
    assert summary["status"] == "finished" and edited.startswith("my_optimizer.py sha256:") and edited != started
    assert read_run(tmp_path / "cut")["config"]["software"][f"custom optimizer {spec.target}"] == started


@pytest.mark.slow
@pytest.mark.parametrize("agent", AGENTS)
def test_interrupted_run_resumes_to_the_uninterrupted_result(agent, tmp_path, monkeypatch):
    module = AGENTS[agent][0]
    full = module.main(checkpoint_args(agent, tmp_path, "full"))
    resumed = interrupted_then_resumed(agent, tmp_path, monkeypatch)

    # identical metrics, each logged once, and the same summary and final networks
    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "full")
    for key in ("status", "global_step", "episodes", "final_return", "best_return"):
        assert resumed[key] == full[key], key
    assert resumed["evaluation"]["returns"] == full["evaluation"]["returns"]
    model = full["evaluation"]["model"]
    for name, tensor in torch.load(tmp_path / "full" / model, weights_only=True).items():
        if isinstance(tensor, dict):
            saved = torch.load(tmp_path / "cut" / model, weights_only=True)[name]
            assert all(torch.equal(tensor[key], saved[key]) for key in tensor), name
    # the resume is recorded: from the second checkpoint, with the steps that were done twice
    (resume,) = resumed["resumes"]
    assert resume["step"] == 2 * CHECKPOINT_EVERY[agent] and resume["fresh_episodes"] == []
    assert 0 <= resume["discarded_steps"] < CRASH_AFTER and resume["lost_s"] >= 0
    # TensorBoard shows one complete curve: the points after the checkpoint written before the crash are purged
    tag = "charts/episodic_return"
    assert tensorboard_points(tmp_path / "cut", tag) == tensorboard_points(tmp_path / "full", tag)
    # a finished run deletes its checkpoints
    assert not (tmp_path / "cut" / "checkpoints").exists()


def test_a_resumed_writer_s_event_file_is_read_after_the_earlier_ones(tmp_path):
    # an earlier attempt's file from this very second, by another process (pid 99999999) with a later counter:
    # started now, a new writer's name would sort before it, and TensorBoard would read its purge first
    from torch.utils.tensorboard import SummaryWriter

    earlier = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.{platform.node()}.99999999.9"
    earlier.write_bytes(b"")
    wait_past_event_files(tmp_path)
    writer = SummaryWriter(str(tmp_path))
    writer.close()
    names = sorted(path.name for path in tmp_path.glob("events.out.tfevents.*"))
    assert len(names) == 2 and names[0] == earlier.name


@pytest.mark.parametrize("agent", ["dqn", "ppo"])
def test_next_step_autoreset_resumes_exactly(agent, tmp_path, monkeypatch):
    module = AGENTS[agent][0]
    module.main(checkpoint_args(agent, tmp_path, "full", autoreset_mode="next-step"))
    resumed = interrupted_then_resumed(agent, tmp_path, monkeypatch, autoreset_mode="next-step")
    assert resumed["status"] == "finished" and resumed["resumes"][0]["fresh_episodes"] == []
    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "full")


@pytest.mark.slow
def test_optimizer_state_and_scheduled_alpha_survive_a_resume(tmp_path, monkeypatch):
    """AlphaGrad with momentum and the saturation scheduler (TD3: two optimizers, two schedulers)."""
    spec = OptimizerSpec(name="alphagrad", lr=1e-4, alpha=150.0, momentum=0.9, alpha_schedule=True)
    td3_continuous_action.main(checkpoint_args("td3", tmp_path, "full", actor_optim=spec, critic_optim=spec))
    interrupted_then_resumed("td3", tmp_path, monkeypatch, actor_optim=spec, critic_optim=spec)
    rows = metric_rows(tmp_path / "cut")
    assert rows == metric_rows(tmp_path / "full") and any("saturation" in name for row in rows for name in row)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "no manifest", "garbled manifest"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(damage, tmp_path, monkeypatch, capsys):
    dqn.main(checkpoint_args("dqn", tmp_path, "full"))
    crashed_run("dqn", tmp_path, monkeypatch, 2 * CHECKPOINT_EVERY["dqn"] + CRASH_AFTER)
    newest = tmp_path / "cut" / "checkpoints" / f"step-{2 * CHECKPOINT_EVERY['dqn']:012d}.pt"
    data = bytearray(newest.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0x01
        newest.write_bytes(bytes(data))
    elif damage == "truncated":
        newest.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "no manifest":  # killed between writing the data and its manifest
        newest.with_suffix(".json").unlink()
    else:
        newest.with_suffix(".json").write_text('{"format": 1, "algo')

    resumed = dqn.main(checkpoint_args("dqn", tmp_path, "cut", resume=True))
    assert resumed["resumes"][0]["step"] == CHECKPOINT_EVERY["dqn"]  # the previous, intact checkpoint
    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "full")
    if damage != "no manifest":
        assert "trying the previous one" in capsys.readouterr().err


def test_resume_without_an_intact_checkpoint_starts_over(tmp_path, monkeypatch):
    dqn.main(checkpoint_args("dqn", tmp_path, "full"))
    crashed_run("dqn", tmp_path, monkeypatch, CHECKPOINT_EVERY["dqn"] // 2)  # before the first checkpoint
    summary = dqn.main(checkpoint_args("dqn", tmp_path, "cut", resume=True))
    assert "resumes" not in summary and metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "full")


@pytest.mark.parametrize("keep_checkpoints", [False, True])
def test_resume_of_a_finished_run_is_refused_and_its_record_kept(keep_checkpoints, tmp_path):
    dqn.main(checkpoint_args("dqn", tmp_path, "done", total_timesteps=300, keep_checkpoints=keep_checkpoints))
    before = {path: path.read_bytes() for path in (tmp_path / "done").rglob("*") if path.is_file()}
    for total_timesteps in (300, 600):  # the same options, or others
        with pytest.raises(ValueError, match="holds a finished run: there is nothing to resume"):
            dqn.main(checkpoint_args("dqn", tmp_path, "done", total_timesteps=total_timesteps, resume=True,
                                     keep_checkpoints=keep_checkpoints))
    assert {path: path.read_bytes() for path in (tmp_path / "done").rglob("*") if path.is_file()} == before


@pytest.mark.parametrize("damaged", ["summary.json", "config.json"])
def test_resume_of_a_damaged_record_is_refused_and_the_record_kept(damaged, tmp_path):
    """A finished run whose summary.json was damaged was taken for one that never started: --resume warned once,
    deleted the record and trained again."""
    dqn.main(checkpoint_args("dqn", tmp_path, "done", total_timesteps=300))
    (tmp_path / "done" / damaged).write_text('{"status": "fini')
    before = {path: path.read_bytes() for path in (tmp_path / "done").rglob("*") if path.is_file()}
    with pytest.raises(ValueError, match=f"holds a damaged run record \\({damaged} is unreadable.*it is kept"):
        dqn.main(checkpoint_args("dqn", tmp_path, "done", total_timesteps=300, resume=True))
    assert {path: path.read_bytes() for path in (tmp_path / "done").rglob("*") if path.is_file()} == before


def test_resume_without_a_checkpoint_refuses_changed_options_and_keeps_the_record(tmp_path, monkeypatch):
    crashed_run("dqn", tmp_path, monkeypatch, CHECKPOINT_EVERY["dqn"] // 2)  # before the first checkpoint
    before = {path: path.read_bytes() for path in (tmp_path / "cut").rglob("*") if path.is_file()}
    with pytest.raises(CheckpointMismatch, match="no intact checkpoint.*total_timesteps: 600 \\(earlier attempt\\) != 700"):
        dqn.main(checkpoint_args("dqn", tmp_path, "cut", resume=True, total_timesteps=700))
    assert {path: path.read_bytes() for path in (tmp_path / "cut").rglob("*") if path.is_file()} == before


def test_a_new_run_never_appends_to_an_existing_record(tmp_path):
    dqn.main(checkpoint_args("dqn", tmp_path, "run", total_timesteps=300))
    with pytest.raises(ValueError, match="already holds a run record.*--resume"):
        dqn.main(checkpoint_args("dqn", tmp_path, "run", total_timesteps=300))


@pytest.mark.parametrize("change, named", [
    (dict(env_id="Acrobot-v1"), 'env_id: "CartPole-v1" (checkpoint) != "Acrobot-v1" (now)'),
    (dict(optim=OptimizerSpec(name="alphagrad", lr=2.5e-4, alpha=93.0)), 'optim.name: "adam" (checkpoint) != "alphagrad" (now)'),
    (dict(total_timesteps=700), "total_timesteps: 600 (checkpoint) != 700 (now)"),
])
def test_checkpoint_of_another_config_is_refused_and_nothing_is_touched(change, named, tmp_path, monkeypatch):
    crashed_run("dqn", tmp_path, monkeypatch, 2 * CHECKPOINT_EVERY["dqn"] + CRASH_AFTER)
    run_dir = tmp_path / "cut"
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    with pytest.raises(CheckpointMismatch, match="refusing to resume") as refused:
        dqn.main(checkpoint_args("dqn", tmp_path, "cut", resume=True, **change))
    assert named in str(refused.value)
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before
    # options that do not change the computation may differ
    assert dqn.main(checkpoint_args("dqn", tmp_path, "cut", resume=True, quiet=False, exp_name="renamed"))


def test_a_config_saved_before_an_option_was_added_matches_only_the_value_that_does_what_it_did():
    """Checkpoints and records written before --optim.target/--optim.options existed (every TD3 record of the
    reproduction, for one) match today's config where those hold their defaults (no custom optimizer), in every
    optimizer group and population member; any other value, or any other option they lack, is a difference."""
    optim = {"name": "alphagrad", "alpha": 150.0, "lr": 3e-5}
    saved = {"env_id": "Hopper-v4", "actor_optim": optim, "critic_optim": optim}
    today = {"target": None, "options": "{}"}
    current = {"env_id": "Hopper-v4", "actor_optim": {**optim, **today}, "critic_optim": {**optim, **today}}
    assert config_differences(saved, current, "record") == []
    assert config_differences({"member0": saved}, {"member0": current}) == []
    custom = {**current, "critic_optim": {**optim, "target": "mine.py:make", "options": "{}"}}
    assert config_differences(saved, custom, "record") == ['critic_optim.target: unset (record) != "mine.py:make" (now)']
    newer = {**current, "actor_optim": {**optim, **today, "weight_decay": 0.0}}
    assert config_differences(saved, newer) == ["actor_optim.weight_decay: unset (checkpoint) != 0.0 (now)"]
    assert config_differences(current, saved) == [f"{group}.{key}: {value} (checkpoint) != unset (now)"
                                                  for group in ("actor_optim", "critic_optim")
                                                  for key, value in (("target", "null"), ("options", '"{}"'))]


def test_resume_refuses_a_run_record_cut_shorter_than_its_checkpoint(tmp_path, monkeypatch):
    crashed_run("dqn", tmp_path, monkeypatch, CHECKPOINT_EVERY["dqn"] + CRASH_AFTER)
    (tmp_path / "cut" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="metrics.jsonl is missing or shorter"):
        dqn.main(checkpoint_args("dqn", tmp_path, "cut", resume=True))


def test_checkpoint_of_another_algorithm_is_refused(tmp_path, monkeypatch):
    crashed_run("dqn", tmp_path, monkeypatch, CHECKPOINT_EVERY["dqn"] + CRASH_AFTER)
    with pytest.raises(CheckpointMismatch, match="algorithm: 'dqn' \\(checkpoint\\) != 'td3_continuous_action'"):
        td3_continuous_action.main(checkpoint_args("td3", tmp_path, "cut", resume=True))


def test_network_of_another_shape_is_refused(tmp_path):
    saver = Checkpointer(tmp_path, "toy", {"seed": 1}, interval_steps=1)
    saver.track(net=torch.nn.Linear(4, 8))
    saver.save(1)
    loader = Checkpointer(tmp_path, "toy", {"seed": 1})
    loader.track(net=torch.nn.Linear(4, 16))
    loader.load_latest()
    with pytest.raises(CheckpointMismatch, match=r"net.weight is \(8, 4\) in the checkpoint and \(16, 4\) in this run"):
        loader.restore()


def test_checkpoints_are_safe_to_load_and_only_the_newest_two_are_kept(tmp_path):
    saver = Checkpointer(tmp_path, "toy", {"seed": 1}, interval_steps=10)
    net = torch.nn.Linear(2, 2)
    saver.track(net=net, rng=np.random.default_rng(0))
    assert not saver.due(9) and saver.due(10)
    for step in (10, 20, 30):
        saver.save(step, obs=np.arange(3.0), note="x")
        assert not saver.due(step + 9)
    names = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000000000020.json", "step-000000000020.pt", "step-000000000030.json", "step-000000000030.pt"]
    payload = torch.load(tmp_path / "checkpoints" / "step-000000000030.pt", weights_only=True)
    assert payload["step"] == 30 and torch.equal(payload["tracked"]["net"]["weight"], net.weight.detach())
    loaded = Checkpointer(tmp_path, "toy", {"seed": 1})
    loaded.track(net=torch.nn.Linear(2, 2), rng=np.random.default_rng(5))
    loaded.load_latest()
    values = loaded.restore()
    np.testing.assert_array_equal(values["obs"], np.arange(3.0))
    assert values["note"] == "x" and values["fresh_obs"] == {}


def test_damaged_and_orphaned_files_never_shadow_later_checkpoints(tmp_path):
    saver = Checkpointer(tmp_path, "toy", {}, interval_steps=1)
    saver.track(net=torch.nn.Linear(2, 2))
    saver.save(10)
    saver.save(20)
    folder = tmp_path / "checkpoints"
    (folder / "step-000000000020.pt").write_bytes(b"damaged")
    (folder / "step-000000000099.pt").write_bytes(b"a save killed before its manifest")
    resumed = Checkpointer(tmp_path, "toy", {}, interval_steps=1)
    resumed.track(net=torch.nn.Linear(2, 2))
    assert resumed.load_latest()["step"] == 10
    resumed.save(15)  # e.g. after a change of interval: 15 must be the newest now
    assert sorted(p.name for p in folder.iterdir()) == [
        "step-000000000010.json", "step-000000000010.pt", "step-000000000015.json", "step-000000000015.pt"]
    assert Checkpointer(tmp_path, "toy", {}).load_latest()["step"] == 15
    resumed.delete_all()
    assert not folder.exists()


def test_time_based_checkpoints(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    saver = Checkpointer(tmp_path, "toy", {}, interval_s=300)
    assert not saver.due(10**6)
    clock[0] += 300
    assert saver.due(1)


def test_encoding_round_trips_what_agents_save():
    rng = np.random.default_rng(3)
    value = {"array": np.arange(6, dtype=np.float32).reshape(2, 3), "flags": np.array([True, False]),
             "scalar": np.float64(0.5), "generator": rng.bit_generator.state, "legacy": np.random.get_state(legacy=False),
             "nested": [(1, None, "a")], "tensor": torch.ones(2)}
    buffer = io.BytesIO()
    torch.save(_encode(value), buffer)
    buffer.seek(0)
    back = _decode(torch.load(buffer, weights_only=True))
    assert back["array"].dtype == np.float32 and np.array_equal(back["array"], value["array"])
    assert back["flags"].dtype == bool and back["scalar"] == 0.5 and back["generator"] == value["generator"]
    assert np.array_equal(back["legacy"]["state"]["key"], value["legacy"]["state"]["key"])
    assert back["nested"] == [(1, None, "a")] and torch.equal(back["tensor"], value["tensor"])


# ---- environment state ----

@pytest.mark.parametrize("make", [
    lambda: gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1")),
    lambda: gym.wrappers.RecordEpisodeStatistics(gym.make("Hopper-v5")),
    lambda: gym.wrappers.NormalizeReward(gym.wrappers.NormalizeObservation(gym.make("HalfCheetah-v5"))),
    lambda: gym.make("Pendulum-v1"),
], ids=["cartpole", "hopper", "halfcheetah-normalized", "pendulum"])
def test_restored_env_continues_exactly(make):
    env = make()
    env.reset(seed=3)
    env.action_space.seed(4)
    for _ in range(7):
        env.step(env.action_space.sample())
    saved = env_state(env)
    assert saved["restorable"]
    copy = make()
    copy.reset(seed=99)  # a different episode, overwritten by the restore
    assert restore_env_state(copy, saved) is None

    def trajectory(env, actions):
        rows = []
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(action)
            rows.append((obs.tobytes(), float(reward), terminated, truncated, info.get("episode", {}).get("r")))
            if terminated or truncated:
                rows.append(env.reset()[0].tobytes())  # continues the restored RNG
        return rows + [env.action_space.sample().tobytes()]

    actions = [env.action_space.sample() for _ in range(200)]
    copy.action_space.np_random.bit_generator.state = env.action_space.np_random.bit_generator.state
    assert trajectory(copy, actions) == trajectory(env, actions)


class UnknownCoreCartPole(CartPoleEnv):
    """A core environment whose simulation state alphagrad_rl.envs does not know how to save."""


class UnknownCorePendulum(PendulumEnv):
    """The same, with continuous actions (PPO)."""


gym.register("tests/UnknownCore-v0", entry_point=UnknownCoreCartPole, max_episode_steps=500)
gym.register("tests/UnknownCoreContinuous-v0", entry_point=UnknownCorePendulum, max_episode_steps=200)


@pytest.mark.parametrize("agent, env_id", [("dqn", "tests/UnknownCore-v0"), ("ppo", "tests/UnknownCoreContinuous-v0")])
def test_unrestorable_env_starts_a_fresh_episode_and_records_it(agent, env_id, tmp_path, monkeypatch):
    env = gym.make(env_id)
    env.reset(seed=0)
    assert not env_state(env)["restorable"]

    full_summary = AGENTS[agent][0].main(checkpoint_args(agent, tmp_path, "full", env_id=env_id))
    resumed = interrupted_then_resumed(agent, tmp_path, monkeypatch, env_id=env_id)
    assert resumed["status"] == "finished" and resumed["resumes"][0]["fresh_episodes"] == [0]
    # guaranteed: everything up to the checkpoint is the uninterrupted run's; after it the run differs
    step = resumed["resumes"][0]["step"]
    full, cut = metric_rows(tmp_path / "full"), metric_rows(tmp_path / "cut")
    assert [r for r in cut if r["step"] < step] == [r for r in full if r["step"] < step] and cut != full
    assert resumed["global_step"] == full_summary["global_step"] and [r["step"] for r in cut] == sorted(
        r["step"] for r in cut)


# ---- replay buffer ----

def test_replay_buffer_state_is_exact_and_compact():
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(1000, (11,), (3,), np.float32, torch.device("cpu"))
    obs = rng.standard_normal((2, 11)).astype(np.float32)
    for step in range(1300):  # two envs, wraps around; episodes end every 50 steps
        next_obs = rng.standard_normal((2, 11)).astype(np.float32)
        real_next = next_obs.copy()
        if step % 50 == 49:
            real_next[0] = rng.standard_normal(11)  # the true last observation, not the next episode's first
        buffer.add(obs, real_next, rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(2),
                   np.zeros(2))
        obs = next_obs
    state = buffer.state_dict()
    copy = ReplayBuffer(1000, (11,), (3,), np.float32, torch.device("cpu"))
    copy.load_state_dict(_decode(_encode(state)))
    for name in ("observations", "next_observations", "actions", "rewards", "terminations"):
        assert np.array_equal(getattr(copy, name), getattr(buffer, name)), name
    assert (copy.position, copy.full) == (buffer.position, buffer.full)
    in_memory = sum(getattr(buffer, n).nbytes for n in ("observations", "next_observations", "actions", "rewards",
                                                        "terminations"))
    saved = sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray))
    assert saved < 0.65 * in_memory  # the next observations are mostly the successors' observations
    small = ReplayBuffer(1000, (11,), (3,), np.float32, torch.device("cpu"))
    small.add(obs, obs, np.zeros((2, 3), np.float32), np.zeros(2), np.zeros(2))
    assert len(small.state_dict()["observations"]) == 2  # only the filled rows


def test_replay_buffer_refuses_another_shape():
    state = ReplayBuffer(10, (4,), (), np.int64, torch.device("cpu")).state_dict()
    with pytest.raises(ValueError, match="saved replay buffer holds 10 x \\(4,\\) observations, this one 10 x \\(5,\\)"):
        ReplayBuffer(10, (5,), (), np.int64, torch.device("cpu")).load_state_dict(state)


# ---- signals and W&B ----

@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_stops_and_the_run_resumes_exactly(tmp_path):
    flags = ["--total-timesteps", "6000", "--learning-starts", "500", "--buffer-size", "2000", "--batch-size", "32",
             "--diagnostics-interval", "0", "--results-dir", str(tmp_path), "--quiet", "--no-cuda",
             "--checkpoint-interval-s", "0"]
    reference = subprocess.run([sys.executable, "agents/dqn.py", *flags, "--run-name", "full"], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    process = subprocess.Popen([sys.executable, "agents/dqn.py", *flags, "--run-name", "cut"], cwd=ROOT,
                               stderr=subprocess.PIPE, text=True)
    metrics, deadline = tmp_path / "cut" / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 2000):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    summary = read_run(tmp_path / "cut")["summary"]
    if summary["status"] == "finished":
        pytest.skip("the run finished before SIGTERM arrived")
    assert process.returncode == 128 + signal.SIGTERM and summary["status"] == "interrupted"
    assert "SIGTERM at step" in summary["error"] and "checkpoint saved" in stderr
    assert len(list((tmp_path / "cut" / "checkpoints").glob("step-*.pt"))) == 1  # written on SIGTERM

    resumed = subprocess.run([sys.executable, "agents/dqn.py", *flags, "--run-name", "cut", "--resume"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "full")
    assert read_run(tmp_path / "cut")["summary"]["resumes"][0]["discarded_steps"] == 0  # nothing lost


@pytest.mark.parametrize("population", [False, True], ids=["single-file", "population"])
def test_sigterm_while_a_run_opens_its_record_interrupts_it_and_it_resumes_exactly(population, tmp_path, monkeypatch):
    """A stop that comes while the run starts (its record already says "running", its loop not begun) is caught:
    the run saves a checkpoint at its first step and ends "interrupted", never a "running" record left behind."""
    module = dqn_population if population else dqn
    make = (lambda d: population_args(d, SPECS["adam"], seeds=(1, 2))) if population else dqn_args
    names = ["pop__m0", "pop__m1"] if population else ["dqn"]
    module.main(make(tmp_path / "full"))
    opener = population_module if population else experiment
    original = opener.open_record

    def open_record_then_sigterm(*args, **kwargs):
        record = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once, in this (the main) thread
        return record

    def uncaught(signum, frame):
        raise AssertionError("SIGTERM reached the process before the run caught it")

    with monkeypatch.context() as patch:
        patch.setattr(opener, "open_record", open_record_then_sigterm)
        previous = signal.signal(signal.SIGTERM, uncaught)
        try:
            with pytest.raises(RunInterrupted, match="SIGTERM at step 1"):
                module.main(make(tmp_path / "cut"))
            assert signal.getsignal(signal.SIGTERM) is uncaught  # the run gave the handler back
        finally:
            signal.signal(signal.SIGTERM, previous)
    for name in names:
        assert read_run(tmp_path / "cut" / name)["summary"]["status"] == "interrupted"
    module.main(dataclasses.replace(make(tmp_path / "cut"), resume=True))
    for name in names:
        assert metric_rows(tmp_path / "cut" / name) == metric_rows(tmp_path / "full" / name)


@pytest.mark.slow
def test_wandb_run_resumes_under_the_same_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    interrupted_then_resumed("dqn", tmp_path, monkeypatch, track=True, save_model=False)
    attempts = list((tmp_path / "cut" / "wandb").glob("offline-run-*/run-*.wandb"))  # run-<id>.wandb per attempt
    assert len(attempts) == 2 and len({path.name for path in attempts}) == 1


def test_a_run_record_keeps_the_software_it_started_with_and_each_resume_notes_other_versions(tmp_path, monkeypatch):
    from alphagrad_rl import runs

    versions = runs.software_versions()
    assert versions["python"] == platform.python_version() and versions["torch"] == torch.__version__
    assert versions["gymnasium"] == gym.__version__
    if (ROOT / ".git").exists():  # run from a checkout: its commit, marked when tracked files differ from it
        assert re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", versions["alphagrad-rl"]), versions
    from alphagrad._fused import cpu_kernel_built  # which tanh AlphaGrad's default CPU path evaluates

    assert versions["alphagrad fused CPU kernel"] == ("built" if cpu_kernel_built() else "not built")

    def attempt(software, resume_state=None):
        monkeypatch.setattr(runs, "software_versions", lambda: software)
        record = runs.RunRecord(run_dir=tmp_path / "run", algorithm="dqn", config={"seed": 1}, total_timesteps=10,
                                quiet=True, resume_state=resume_state)
        record.log_episode(len(record.episode_returns) + 1, 1.0, 1)
        state = record.state_dict(len(record.episode_returns))
        record.finish("interrupted")
        return state

    first = {"python": "3.11.7", "torch": "2.13.0+cpu", "alphagrad-rl": "aaaaaaaaaaaa"}
    state = attempt(first)
    state = attempt(first, state)  # same versions: nothing noted
    attempt({**first, "alphagrad-rl": "bbbbbbbbbbbb", "mujoco": "4.0.0"}, state)
    record = read_run(tmp_path / "run")
    assert record["config"]["software"] == first
    assert [resume.get("software") for resume in record["summary"]["resumes"]] == [
        None, {"alphagrad-rl": "bbbbbbbbbbbb", "mujoco": "4.0.0"}]
    # a record older than the field: config.json stays without it, and the resume lists every version it ran with
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    del config["software"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    attempt(first, state)
    record = read_run(tmp_path / "run")
    assert "software" not in record["config"] and record["summary"]["resumes"][-1]["software"] == first
