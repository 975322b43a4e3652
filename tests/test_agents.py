"""Each agent on a tiny budget (CPU): complete run record, determinism, autoreset handling, optimizer choice."""

import functools
import hashlib
import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from alphagrad_rl.agents import dqn, ppo_continuous_action, td3_continuous_action

from alphagrad import AGR
from alphagrad_rl.analysis import frozen_update_fraction, load_runs
from alphagrad_rl.envs import finished_episodes, make_vector_env, true_next_obs
from alphagrad_rl.factory import OptimizerSpec
from alphagrad_rl.runs import NonFiniteTraining, read_run, read_summary


def dqn_args(tmp_path, **overrides):
    defaults = dict(total_timesteps=600, learning_starts=200, train_frequency=2, target_network_frequency=50,
                    batch_size=32, buffer_size=1000, results_dir=str(tmp_path), run_name="dqn", quiet=True,
                    cuda=False, diagnostics_interval=20)
    return dqn.Args(**{**defaults, **overrides})


def ppo_args(tmp_path, **overrides):
    defaults = dict(env_id="Hopper-v5", total_timesteps=256, num_steps=128, num_minibatches=4, update_epochs=2,
                    results_dir=str(tmp_path), run_name="ppo", quiet=True, cuda=False, diagnostics_interval=4)
    return ppo_continuous_action.Args(**{**defaults, **overrides})


def td3_args(tmp_path, **overrides):
    defaults = dict(env_id="Hopper-v5", total_timesteps=300, learning_starts=100, batch_size=32, buffer_size=1000,
                    results_dir=str(tmp_path), run_name="td3", quiet=True, cuda=False, diagnostics_interval=20)
    return td3_continuous_action.Args(**{**defaults, **overrides})


AGENTS = {
    "dqn": (dqn, dqn_args, ["losses/td_loss", "losses/q_values"]),
    "ppo": (ppo_continuous_action, ppo_args,
            ["losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/approx_kl", "losses/old_approx_kl",
             "losses/clipfrac", "losses/explained_variance", "charts/learning_rate"]),
    "td3": (td3_continuous_action, td3_args, ["losses/qf1_values", "losses/qf1_loss", "losses/actor_loss",
                                              "losses/actor_saturated"]),
}


def metric_rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time" and k != "charts/SPS"} for row in read_run(run_dir)["metrics"]]


@pytest.mark.parametrize("agent", AGENTS)
def test_agent_leaves_complete_run_record(agent, tmp_path):
    module, make_args, expected_metrics = AGENTS[agent]
    args = make_args(tmp_path, save_model=True, eval_episodes=1)
    summary = module.main(args)
    run_dir = tmp_path / args.run_name
    record = read_run(run_dir)
    assert summary["status"] == "finished" and record["summary"] == summary and summary["population_size"] == 1
    assert record["config"]["config"]["seed"] == args.seed
    assert summary["global_step"] == summary["total_timesteps"] and summary["episodes"] > 0
    assert summary["final_return"] is not None and summary["sps"] > 0
    names = {name for row in record["metrics"] for name in row}
    assert {"charts/episodic_return", "charts/episodic_length", *expected_metrics} <= names
    assert any(name.startswith("optimizer/") and "/update_norm/" in name for name in names)
    assert list(run_dir.glob("events.out.tfevents.*"))
    # the saved model loads safely and was evaluated
    model_file = run_dir / summary["evaluation"]["model"]
    assert torch.load(model_file, weights_only=True)
    assert summary["evaluation"]["episodes"] == 1


def test_td3_logs_an_actor_frozen_by_its_saturated_tanh(tmp_path):
    """Huge steps push every tanh output of the actor to exactly +-1, where its gradient is 0: the actor stops
    changing, which losses/actor_saturated (1: every output) and the analysis's frozen_updates both show."""
    huge = OptimizerSpec(name="alphagrad", lr=0.1, alpha=1000.0, momentum=0.0)  # no momentum: 0 gradient, 0 update
    runs = {"huge-steps": dict(actor_optim=huge, critic_optim=huge), "adam": {}}
    measured = {}
    for name, optimizers in runs.items():
        td3_continuous_action.main(td3_args(tmp_path, run_name=name, total_timesteps=500, diagnostics_interval=5,
                                            **optimizers))
        metrics = read_run(tmp_path / name)["metrics"]
        measured[name] = ([row["losses/actor_saturated"] for row in metrics if "losses/actor_saturated" in row],
                          frozen_update_fraction(metrics))
    saturated, frozen = measured["huge-steps"]
    assert len(saturated) >= 3 and all(value == 1.0 for value in saturated) and frozen > 0.9
    saturated, frozen = measured["adam"]
    assert all(0.0 <= value < 1.0 for value in saturated) and frozen == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("agent", AGENTS)
def test_same_seed_gives_identical_metrics(agent, tmp_path):
    module, make_args, _ = AGENTS[agent]
    module.main(make_args(tmp_path / "a"))
    module.main(make_args(tmp_path / "b"))
    run = make_args(tmp_path).run_name
    first, second = metric_rows(tmp_path / "a" / run), metric_rows(tmp_path / "b" / run)
    assert first == second and len(first) > 3
    module.main(make_args(tmp_path / "c", seed=2))
    assert metric_rows(tmp_path / "c" / run) != first


def test_alphagrad_is_the_optimizer_stepping(tmp_path):
    """AlphaGrad's saturation diagnostics appear only when AlphaGrad steps; alpha changes the result."""
    spec = OptimizerSpec(name="alphagrad", lr=2.5e-4, alpha=93.0)
    dqn.main(dqn_args(tmp_path / "alpha", optim=spec))
    names = {n for row in read_run(tmp_path / "alpha" / "dqn")["metrics"] for n in row}
    assert any(n.startswith("optimizer/q/saturation/network.0.weight") for n in names)
    dqn.main(dqn_args(tmp_path / "adam"))
    names = {n for row in read_run(tmp_path / "adam" / "dqn")["metrics"] for n in row}
    assert not any("saturation" in n for n in names)
    dqn.main(dqn_args(tmp_path / "alpha2", optim=OptimizerSpec(name="alphagrad", lr=2.5e-4, alpha=279.0)))
    assert metric_rows(tmp_path / "alpha" / "dqn") != metric_rows(tmp_path / "alpha2" / "dqn")


def test_a_custom_optimizer_trains_as_the_built_in_it_names(tmp_path):
    """torch's SGD named as a custom optimizer trains DQN exactly as the factory's sgd does; the record keeps what
    was named, so the run can be repeated."""
    dqn.main(dqn_args(tmp_path / "builtin", optim=OptimizerSpec(name="sgd", lr=1e-2, momentum=0.9)))
    custom = OptimizerSpec(name="custom", lr=1e-2, target="torch.optim:SGD", options='{"momentum": 0.9}')
    dqn.main(dqn_args(tmp_path / "custom", optim=custom))
    assert metric_rows(tmp_path / "builtin" / "dqn") == metric_rows(tmp_path / "custom" / "dqn")
    config = read_run(tmp_path / "custom" / "dqn")["config"]
    optim = config["config"]["optim"]
    assert optim["name"] == "custom" and optim["target"] == "torch.optim:SGD" and optim["options"] == '{"momentum": 0.9}'
    source = Path(torch.optim.__file__).parent / "sgd.py"  # the code it trained with: the file defining the target
    assert config["software"]["custom optimizer torch.optim:SGD"] == (
        f"sgd.py sha256:{hashlib.sha256(source.read_bytes()).hexdigest()[:16]}")



@pytest.mark.slow
def test_td3_takes_separate_actor_and_critic_optimizers(tmp_path, monkeypatch):
    built = []
    original = td3_continuous_action.make_optimizer

    def recording(params, spec):
        optimizer = original(params, spec)
        built.append((spec.name, type(optimizer).__name__ + "+AGR" * (AGR.of(optimizer) is not None),
                      [n for g in optimizer.param_groups for n in g["param_names"]]))
        return optimizer

    monkeypatch.setattr(td3_continuous_action, "make_optimizer", recording)
    td3_continuous_action.main(td3_args(tmp_path, actor_optim=OptimizerSpec(name="alphagrad", alpha=150.0),
                                        critic_optim=OptimizerSpec(name="adamw-agr")))
    (critic_name, critic_type, critic_params), (actor_name, actor_type, actor_params) = built
    assert (critic_name, critic_type) == ("adamw-agr", "AdamW+AGR") and (actor_name, actor_type) == ("alphagrad", "AlphaGrad")
    assert all(n.startswith(("qf1.", "qf2.")) for n in critic_params) and len(critic_params) == 12
    assert actor_params == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc_mu.weight", "fc_mu.bias"]


def test_td3_logs_before_its_first_delayed_actor_update(tmp_path):
    summary = td3_continuous_action.main(td3_args(tmp_path, policy_frequency=250, total_timesteps=400))
    assert summary["status"] == "finished"
    rows = read_run(tmp_path / "td3")["metrics"]
    assert any("losses/qf1_loss" in row and "losses/actor_loss" not in row for row in rows)
    assert any("losses/actor_loss" in row for row in rows)


def test_ppo_lr_annealing_reaches_the_optimizer(tmp_path):
    args = ppo_args(tmp_path, total_timesteps=512, optim=OptimizerSpec(name="adamw-agr", lr=1e-3, eps=1e-5))
    ppo_continuous_action.main(args)
    rates = [row["charts/learning_rate"] for row in read_run(tmp_path / "ppo")["metrics"] if "charts/learning_rate" in row]
    np.testing.assert_allclose(rates, [1e-3, 0.75e-3, 0.5e-3, 0.25e-3])


# ---- gymnasium 1.x autoreset handling ----

def short_cartpole():
    return gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1", max_episode_steps=5))


def test_true_next_obs_and_episode_counting_on_truncation():
    envs = make_vector_env([short_cartpole, short_cartpole], gym.spaces.Discrete, "test")
    envs.reset(seed=0)
    episodes = []
    for _ in range(12):
        next_obs, _, terminations, truncations, infos = envs.step(np.zeros(2, dtype=np.int64))
        real = true_next_obs(next_obs, terminations, truncations, infos)
        episodes += list(finished_episodes(infos))
        for i in range(2):
            if terminations[i] or truncations[i]:
                # the stored next observation is the finished episode's last one, while next_obs already
                # starts the next episode
                assert np.array_equal(real[i], infos["final_obs"][i])
                assert not np.array_equal(real[i], next_obs[i])
            else:
                assert np.array_equal(real[i], next_obs[i])
    envs.close()
    # pushing left always: every episode ends by termination or the 5-step limit; each counted exactly once
    assert all(length <= 5 for _, length in episodes)
    assert sum(length for _, length in episodes) <= 24 and len(episodes) >= 4


def test_replay_transitions_never_span_an_episode_boundary(tmp_path):
    """Consecutive CartPole states differ by one physics step; a reset observation would break that."""
    from alphagrad_rl.buffers import ReplayBuffer

    envs = make_vector_env([short_cartpole], gym.spaces.Discrete, "test")
    rb = ReplayBuffer(100, (4,), (), np.int64, torch.device("cpu"))
    obs, _ = envs.reset(seed=1)
    for _ in range(40):
        actions = np.array([envs.single_action_space.sample()])
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        rb.add(obs, true_next_obs(next_obs, terminations, truncations, infos), actions, rewards, terminations)
        obs = next_obs
    envs.close()
    # CartPole's position changes by tau * velocity (0.02 * v) per step
    positions, velocities, next_positions = rb.observations[:40, 0], rb.observations[:40, 1], rb.next_observations[:40, 0]
    np.testing.assert_allclose(next_positions, positions + 0.02 * velocities, atol=1e-5)
    # 40 steps of 5-step episodes: 8 truncations, none stored as terminal (they bootstrap)
    assert rb.terminations[:40].sum() == 0


def test_ppo_truncation_bootstrap_value(tmp_path, monkeypatch):
    """With a 64-step time limit, each rollout of 128 steps bootstraps twice from the final observation."""
    calls = []
    original = ppo_continuous_action.Agent.get_value

    def recording(self, x):
        calls.append(x.detach().clone())
        return original(self, x)

    monkeypatch.setattr(ppo_continuous_action.Agent, "get_value", recording)
    make_env = ppo_continuous_action.make_env
    monkeypatch.setattr(ppo_continuous_action, "make_env", lambda env_id, gamma: (
        lambda: gym.wrappers.TimeLimit(make_env(env_id, gamma)(), max_episode_steps=64)))
    ppo_continuous_action.main(ppo_args(tmp_path, env_id="InvertedPendulum-v5", total_timesteps=128,
                                        num_steps=128))
    # one bootstrap per truncation (single observations) plus the GAE's next_value
    truncation_calls = [c for c in calls if c.shape[0] == 1]
    record = read_run(tmp_path / "ppo")
    lengths = [row["charts/episodic_length"] for row in record["metrics"] if "charts/episodic_length" in row]
    assert len(truncation_calls) - 1 == sum(1 for length in lengths if length == 64)


def test_ppo_without_truncation_bootstrap_and_without_clipping(tmp_path, monkeypatch):
    """--no-bootstrap-truncation (the author's and CleanRL's semantics) never evaluates V(last observation), and
    --max-grad-norm None never clips."""
    calls, clipped = [], []
    original = ppo_continuous_action.Agent.get_value
    monkeypatch.setattr(ppo_continuous_action.Agent, "get_value",
                        lambda self, x: calls.append(x.shape[0]) or original(self, x))
    monkeypatch.setattr(ppo_continuous_action.nn.utils, "clip_grad_norm_", lambda *args: clipped.append(args))
    make_env = ppo_continuous_action.make_env
    monkeypatch.setattr(ppo_continuous_action, "make_env", lambda env_id, gamma: (
        lambda: gym.wrappers.TimeLimit(make_env(env_id, gamma)(), max_episode_steps=64)))
    ppo_continuous_action.main(ppo_args(tmp_path, env_id="InvertedPendulum-v5", total_timesteps=128, num_steps=128,
                                        bootstrap_truncation=False, max_grad_norm=None))
    assert calls == [1] and not clipped  # only the GAE's next_value
    with pytest.raises(ValueError, match="max_grad_norm: 0"):
        ppo_continuous_action.main(ppo_args(tmp_path, max_grad_norm=0.0))


def test_next_step_autoreset_learns_from_the_reset_step_as_the_author_code_does():
    """gymnasium's default (next-step) autoreset: the step that ends an episode returns its last observation,
    the next one resets: reward 0, the next episode's first observation, not terminal. Stored as is."""
    envs = make_vector_env([short_cartpole], gym.spaces.Discrete, "test", autoreset_mode="next-step")
    obs, _ = envs.reset(seed=0)
    transitions, episodes = [], []
    for _ in range(12):
        next_obs, rewards, terminations, truncations, infos = envs.step(np.zeros(1, dtype=np.int64))
        episodes += list(finished_episodes(infos))
        transitions.append((obs[0], true_next_obs(next_obs, terminations, truncations, infos)[0], rewards[0],
                            terminations[0] or truncations[0]))
        obs = next_obs
    envs.close()
    ends = [i for i, (_, _, _, done) in enumerate(transitions) if done]
    assert ends and len(episodes) == len(ends)
    for end in ends[:-1]:
        last_obs, first_obs, reward, done = transitions[end + 1]  # the reset step
        assert np.array_equal(last_obs, transitions[end][1]) and reward == 0.0 and not done
        assert np.abs(first_obs).max() <= 0.05  # CartPole's reset draws every state in [-0.05, 0.05]


def test_a_pending_next_step_reset_survives_a_checkpoint():
    from alphagrad_rl.envs import restore_vector_env_state, vector_env_state

    envs = make_vector_env([short_cartpole], gym.spaces.Discrete, "test", autoreset_mode="next-step")
    envs.reset(seed=0)
    while not any(envs.step(np.zeros(1, dtype=np.int64))[2:4]):
        pass
    state = vector_env_state(envs)  # the episode ended: the next step resets
    expected = envs.step(np.zeros(1, dtype=np.int64))
    other = make_vector_env([short_cartpole], gym.spaces.Discrete, "test", autoreset_mode="next-step")
    other.reset(seed=5)
    assert restore_vector_env_state(other, state) == {}
    resumed = other.step(np.zeros(1, dtype=np.int64))
    assert np.array_equal(resumed[0], expected[0]) and resumed[1][0] == 0.0


# ---- failures ----

def test_bad_input_is_rejected_before_a_run_starts(tmp_path):
    with pytest.raises(ValueError, match="DQN needs a Discrete action space"):
        dqn.main(dqn_args(tmp_path, env_id="Hopper-v5"))
    with pytest.raises(ValueError, match="TD3 needs a Box action space"):
        td3_continuous_action.main(td3_args(tmp_path, env_id="CartPole-v1"))
    with pytest.raises(ValueError, match="unknown environment id 'CartPol-v1'.*CartPole-v1"):
        dqn.main(dqn_args(tmp_path, env_id="CartPol-v1"))
    with pytest.raises(ValueError, match="must be divisible"):
        ppo_continuous_action.main(ppo_args(tmp_path, num_minibatches=3))
    with pytest.raises(ValueError, match="total_timesteps: 0"):
        td3_continuous_action.main(td3_args(tmp_path, total_timesteps=0))
    with pytest.raises(ValueError, match="--optim: invalid alpha .*: nan"):  # the optimizer, before the run folder
        dqn.main(dqn_args(tmp_path, optim=OptimizerSpec(name="alphagrad", alpha=float("nan"))))
    assert not list(tmp_path.iterdir())


def test_crash_is_recorded_with_traceback(tmp_path, monkeypatch):
    def broken_step(self, closure=None):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(torch.optim.Adam, "step", broken_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        dqn.main(dqn_args(tmp_path))
    summary = json.loads((tmp_path / "dqn" / "summary.json").read_text())
    assert summary["status"] == "crashed" and "Traceback" in summary["error"] and "out of memory" in summary["error"]


@pytest.mark.slow
def test_wandb_offline_tracking_writes_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    dqn.main(dqn_args(tmp_path, track=True, wandb_group="g", wandb_tags=("t",), total_timesteps=300))
    run_dir = tmp_path / "dqn"
    assert list(run_dir.glob("wandb/offline-run-*"))
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".yaml", ".jsonl", ".log", ".txt"}:
            assert "api_key" not in path.read_text(errors="ignore").lower()


def test_halfcheetah_v4_and_v5_are_the_same_environment_step_for_step():
    """Why configs/paper_ppo_halfcheetah.yaml runs no v4 arms: with this gymnasium and MuJoCo, HalfCheetah-v4 (the
    author's code's default) and -v5 (the paper's text) give identical observations, rewards and episode ends for
    the same seed and actions, across resets (only info key names differ), so a v4 arm repeats its v5 arm exactly."""
    for seed in (1, 2):
        v4, v5 = gym.make("HalfCheetah-v4"), gym.make("HalfCheetah-v5")
        obs4, _ = v4.reset(seed=seed)
        obs5, _ = v5.reset(seed=seed)
        assert np.array_equal(obs4, obs5)
        rng, resets = np.random.default_rng(seed), 0
        for _ in range(2100):  # two 1000-step time limits
            action = rng.uniform(-1, 1, 6).astype(np.float32)
            (obs4, reward4, *ends4, _), (obs5, reward5, *ends5, _) = v4.step(action), v5.step(action)
            assert np.array_equal(obs4, obs5) and reward4 == reward5 and ends4 == ends5
            if any(ends4):
                (obs4, _), (obs5, _) = v4.reset(), v5.reset()
                assert np.array_equal(obs4, obs5)
                resets += 1
        assert resets == 2


@pytest.mark.parametrize("name", ["dqn", "td3", "ppo"])
def test_a_diverged_run_is_crashed_with_its_step_and_cause_as_a_population_records_it(name, tmp_path):
    """Adam at lr 1e30 turns the loss inf/NaN: the single-file agents recorded such a run "finished" with a final
    return, the population agents "crashed"; now both stop it with the step and the loss named."""
    module, make_args, _ = AGENTS[name]
    spec = OptimizerSpec(name="adam", lr=1e30)
    specs = {"optim": spec} if name != "td3" else {"actor_optim": spec, "critic_optim": spec}
    cause = r"non-finite (TD loss|critic loss|actor loss|PPO loss|PPO agent parameters) \([^)]*\) at step \d+"
    with pytest.raises(NonFiniteTraining, match=cause):
        module.main(make_args(tmp_path, **specs))
    summary = read_summary(next(path for path in tmp_path.iterdir() if path.name != ".locks"))
    assert summary["status"] == "crashed" and re.fullmatch(cause, summary["error"]), summary["error"]
    run = load_runs(tmp_path)[0]
    assert not run.included and run.reason_left_out.startswith("crashed: non-finite")


def test_progress_lines_give_elapsed_time_and_eta_and_the_last_names_the_record(tmp_path, capsys, monkeypatch):
    from alphagrad_rl import runs

    monkeypatch.setattr(runs.RunRecord, "__init__", functools.partialmethod(runs.RunRecord.__init__,
                                                                            progress_interval_s=0.0))
    dqn.main(dqn_args(tmp_path, quiet=False))
    lines = capsys.readouterr().err.strip().splitlines()
    progress = [line for line in lines if line.startswith("[dqn] step ")]
    assert progress and all(re.search(r"\| \d+:\d\d:\d\d elapsed, ETA (\d+:\d\d:\d\d|-) \| SPS", line)
                            for line in progress), progress[:3]
    assert re.search(r"ETA \d+:\d\d:\d\d", progress[0])  # a run under way knows how long it has left
    summary = read_summary(tmp_path / "dqn")
    assert lines[-1] == (f"[dqn] finished at step 600 after {runs.duration(summary['wall_clock_s'])} | final return "
                         f"(last {summary['final_window']}) {summary['final_return']:.1f} | record: {tmp_path / 'dqn'}")


@pytest.mark.parametrize("seconds, shown", [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05"),
                                            (90061, "1d 1:01:01")])
def test_durations_read_as_hours_minutes_seconds(seconds, shown):
    from alphagrad_rl.runs import duration

    assert duration(seconds) == shown
