"""Population agents: each member is one run of the single-file agent, trained in one process."""

import copy
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agents import dqn, dqn_population
from alphagrad_rl.analysis import load_runs
from alphagrad_rl.buffers import ReplayBatch
from alphagrad_rl.envs import make_vector_env
from alphagrad_rl.experiment import seed_everything
from alphagrad_rl.factory import OptimizerSpec, make_optimizer
from alphagrad_rl.runs import read_run

SEEDS = (1, 2, 3)
SPECS = {"adam": OptimizerSpec(name="adam", lr=2.5e-4, eps=1e-5),
         "alphagrad": OptimizerSpec(name="alphagrad", alpha=93.0, lr=2.5e-4, momentum=0.9, momentum_form="sgd"),
         "adamw-agr": OptimizerSpec(name="adamw-agr", lr=1e-3)}


def population_args(tmp_path, spec, **overrides):
    defaults = dict(seeds=SEEDS, optim=spec, total_timesteps=600, learning_starts=200, train_frequency=2,
                    target_network_frequency=50, batch_size=32, buffer_size=1000, results_dir=str(tmp_path),
                    run_name="pop", quiet=True, cuda=False, diagnostics_interval=20)
    return dqn_population.Args(**{**defaults, **overrides})


def random_batches(steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [[ReplayBatch(torch.randn(32, 4, generator=generator), torch.randint(0, 2, (32,), generator=generator),
                         torch.randn(32, 4, generator=generator), torch.rand(32, 1, generator=generator),
                         (torch.rand(32, 1, generator=generator) < 0.1).float()) for _ in SEEDS] for _ in range(steps)]


def single_file_updates(members, batches, gamma=0.99):
    """Each member's Q-network after agents/dqn.py's update (its code, member by member) on its own batches."""
    envs = make_vector_env([dqn.make_env("CartPole-v1", 1, 0)], gym.spaces.Discrete, "DQN")
    results = []
    for i, member in enumerate(members):
        seed_everything(member.seed, True)
        q_network = dqn.QNetwork(envs)
        target_network = copy.deepcopy(q_network)
        optimizer = make_optimizer(q_network.named_parameters(), member.optim)
        for step_batches in batches:
            data = step_batches[i]
            with torch.no_grad():
                target_max, _ = target_network(data.next_observations).max(dim=1)
                td_target = data.rewards.flatten() + gamma * target_max * (1 - data.terminations.flatten())
            old_val = q_network(data.observations).gather(1, data.actions.view(-1, 1)).squeeze(1)
            loss = F.mse_loss(td_target, old_val)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append(q_network.state_dict())
    return results


def population_updates(members, batches, gamma=0.99):
    envs = make_vector_env([dqn.make_env("CartPole-v1", 1, 0)], gym.spaces.Discrete, "DQN")
    networks = []
    for member in members:
        seed_everything(member.seed, True)
        networks.append(dqn.QNetwork(envs))
    q_network = dqn_population.PopulationQNetwork(networks)
    target_network = dqn_population.PopulationQNetwork(networks)
    optimizer = dqn_population.make_population_optimizer(q_network.named_parameters(), members)
    for step_batches in batches:
        losses, _ = dqn_population.td_losses(q_network, target_network, step_batches, gamma)
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
    return q_network, losses


@pytest.mark.parametrize("optimizer", SPECS)
def test_one_population_update_is_each_members_single_file_update(optimizer, tmp_path):
    args = population_args(tmp_path, SPECS[optimizer],
                           **({"alphas": (93.0, 186.0, 279.0), "lrs": (2.5e-4, 1e-3, 1e-4)} if optimizer == "alphagrad"
                              else {}))
    members = dqn_population.member_args(args)
    batches = random_batches(3)
    population, _ = population_updates(members, batches)
    for i, single in enumerate(single_file_updates(members, batches)):
        for name, value in population.member_state_dict(i).items():
            torch.testing.assert_close(value, single[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["adam", "alphagrad"])
@pytest.mark.parametrize("bad", [float("nan"), 1e30])
def test_a_bad_member_changes_no_other_member(optimizer, bad, tmp_path):
    members = dqn_population.member_args(population_args(tmp_path, SPECS[optimizer]))
    clean = random_batches(2)
    poisoned = random_batches(2)
    poisoned[1][1] = poisoned[1][1]._replace(rewards=poisoned[1][1].rewards * 0 + bad)  # member 1, second update
    reference, _ = population_updates(members, clean)
    population, losses = population_updates(members, poisoned)
    for i in (0, 2):
        for name, value in population.member_state_dict(i).items():
            assert torch.equal(value, reference.member_state_dict(i)[name]), (i, name)
    assert torch.isfinite(losses[[0, 2]]).all()
    if bad != bad:  # NaN: member 1 is reported crashed, as its agents/dqn.py run would have stopped
        assert dqn_population.crashed_members(losses, torch.optim.SGD([torch.zeros(1, requires_grad=True)]), [],
                                              "raise") == [1]


def test_population_of_adam_runs_logs_each_members_diagnostics(tmp_path):
    summaries = dqn_population.main(population_args(tmp_path, SPECS["adamw-agr"]))
    assert [s["status"] for s in summaries] == ["finished"] * 3
    norms = [[row["optimizer/q/update_norm/weights.0"] for row in read_run(tmp_path / f"pop__m{i}")["metrics"]
              if "optimizer/q/update_norm/weights.0" in row] for i in range(3)]
    assert all(norms) and norms[0] != norms[1]  # each member's own update norms


def test_population_run_writes_one_standard_record_per_member(tmp_path):
    args = population_args(tmp_path, SPECS["alphagrad"], alphas=(93.0, 186.0, 279.0), save_model=True,
                           eval_episodes=1)
    summaries = dqn_population.main(args)
    assert [s["status"] for s in summaries] == ["finished"] * 3
    runs = {run.name: run for run in load_runs(tmp_path)}
    assert set(runs) == {"pop__m0", "pop__m1", "pop__m2"}
    assert [runs[f"pop__m{i}"].seed for i in range(3)] == list(SEEDS)
    assert [runs[f"pop__m{i}"].alpha for i in range(3)] == [93.0, 186.0, 279.0]
    record = read_run(tmp_path / "pop__m1")
    assert record["config"]["algorithm"] == "dqn" and "population_size" not in record["config"]["config"]
    assert any("optimizer/q/saturation/weights.0" in row for row in record["metrics"])
    assert (tmp_path / "pop__m1" / "dqn.pt").exists() and summaries[1]["evaluation"]["episodes"] == 1
    # before learning starts a member acts as its single-file run does (same seed: same epsilon draws and env)
    shared = {key: getattr(args, key) for key in ("total_timesteps", "learning_starts", "train_frequency",
                                                  "target_network_frequency", "batch_size", "buffer_size", "quiet",
                                                  "cuda")}
    single = dqn.main(dqn.Args(**shared, optim=dataclasses.replace(SPECS["alphagrad"], alpha=186.0), seed=2,
                               results_dir=str(tmp_path / "single"), run_name="s2"))
    assert single["status"] == "finished"
    early = [row for row in read_run(tmp_path / "single" / "s2")["metrics"]
             if "charts/episodic_return" in row and row["step"] <= args.learning_starts]
    population_early = [row for row in record["metrics"]
                        if "charts/episodic_return" in row and row["step"] <= args.learning_starts]
    assert early and [(r["step"], r["charts/episodic_return"]) for r in early] == [
        (r["step"], r["charts/episodic_return"]) for r in population_early]


def test_population_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="alphas has 2 values"):
        dqn_population.member_args(population_args(tmp_path, SPECS["alphagrad"], alphas=(93.0, 186.0)))
    with pytest.raises(ValueError, match="--alphas and --lrs set AlphaGrad's"):
        dqn_population.member_args(population_args(tmp_path, SPECS["adam"], alphas=(1.0, 2.0, 3.0)))
    with pytest.raises(ValueError, match="cannot be resumed yet"):
        dqn_population.main(population_args(tmp_path, SPECS["adam"], resume=True))
    assert np.array_equal([m.seed for m in dqn_population.member_args(
        population_args(tmp_path, SPECS["adam"], seeds=(), seed=7, population_size=3))], [7, 8, 9])


# ---- PPO ----

PPO_SPECS = {"adam": OptimizerSpec(name="adam", lr=3e-4, eps=1e-5),
             "alphagrad": OptimizerSpec(name="alphagrad", alpha=98.0, lr=3e-4, momentum=0.9, momentum_form="sgd",
                                        eps=1e-5),
             "adamw-agr": OptimizerSpec(name="adamw-agr", lr=3e-4, eps=1e-5)}


def ppo_args(tmp_path, spec, **overrides):
    from agents import ppo_continuous_action_population as ppo_population

    defaults = dict(seeds=SEEDS, optim=spec, env_id="HalfCheetah-v5", num_steps=64, num_minibatches=4,
                    update_epochs=2, total_timesteps=128, results_dir=str(tmp_path), run_name="pop", quiet=True,
                    cuda=False, diagnostics_interval=3)
    return ppo_population.Args(**{**defaults, **overrides})


def ppo_batches(seed=0, members=3, steps=64):
    """A random rollout per member, (members, steps, ...) like the population's flattened batch."""
    from agents import ppo_continuous_action as ppo

    g = torch.Generator().manual_seed(seed)
    return ppo.Batch(torch.randn(members, steps, 17, generator=g), -torch.rand(members, steps, generator=g) * 8,
                     torch.randn(members, steps, 6, generator=g), torch.randn(members, steps, generator=g),
                     torch.randn(members, steps, generator=g), torch.randn(members, steps, generator=g))


def ppo_single_file_updates(members, batch):
    """Each member's agent after agents/ppo_continuous_action.py's update (its code) on its own rollout, with its
    run's initialization and np.random; and what the run logs."""
    from agents import ppo_continuous_action as ppo

    envs = make_vector_env([ppo.make_env("HalfCheetah-v5", 0.99)], gym.spaces.Box, "PPO")
    states, logs = [], []
    for i, member in enumerate(members):
        seed_everything(member.seed, True)
        agent = ppo.Agent(envs)
        optimizer = make_optimizer(agent.named_parameters(), member.optim)
        _, logged = ppo.update(agent, optimizer, None, member, ppo.Batch(*(part[i] for part in batch)), 0)
        states.append(agent.state_dict())
        logs.append(logged)
    return states, logs


def ppo_population_update(members, args, batch):
    from agents import ppo_continuous_action_population as ppo_population
    from alphagrad_rl.population import make_population_optimizer

    agents, _ = ppo_population.member_generators(members, torch.device("cpu"))
    agent = ppo_population.PopulationAgent(agents)
    optimizer = make_population_optimizer(agent.named_parameters(), members)
    rngs = [np.random.RandomState(m.seed) for m in members]
    _, logged, crashed = ppo_population.update(agent, optimizer, args, batch, rngs, [True] * len(members), 0)
    return agent, logged, crashed


@pytest.mark.parametrize(("optimizer", "options"), [
    ("adam", {}), ("adamw-agr", {"max_grad_norm": None}),
    ("alphagrad", {"alphas": (98.0, 196.0, 294.0), "lrs": (3e-4, 1e-3, 1e-4)}),
    ("alphagrad", {"alphas": (98.0, 196.0, 294.0), "target_kl": 0.002, "norm_adv": False}),
])
def test_one_ppo_population_update_is_each_members_single_file_update(optimizer, options, tmp_path):
    from agents import ppo_continuous_action_population as ppo_population

    args = ppo_args(tmp_path, PPO_SPECS[optimizer], **options)
    members = ppo_population.member_args(args)
    batch = ppo_batches()
    population, logged, crashed = ppo_population_update(members, args, batch)
    assert not crashed
    singles, single_logs = ppo_single_file_updates(members, batch)
    for i, single in enumerate(singles):
        member = population.member_state_dict(i)
        assert set(member) == set(single)
        for name, value in member.items():
            torch.testing.assert_close(value, single[name], rtol=1e-5, atol=1e-6)
        for key in ("losses/value_loss", "losses/policy_loss", "losses/approx_kl", "losses/clipfrac"):
            assert logged[i][key] == pytest.approx(single_logs[i][key], rel=1e-4, abs=1e-6), key
    if "target_kl" in options:  # the early stop is each member's own (the same number of diagnostics rows)
        assert [len(log) for log in logged] == [len(log) for log in single_logs]


@pytest.mark.parametrize("optimizer", ["adam", "alphagrad"])
@pytest.mark.parametrize("bad", [float("nan"), 1e15])  # 1e15: a huge, still finite, loss
def test_a_bad_ppo_member_changes_no_other_member(optimizer, bad, tmp_path):
    from agents import ppo_continuous_action_population as ppo_population

    args = ppo_args(tmp_path, PPO_SPECS[optimizer])
    members = ppo_population.member_args(args)
    clean = ppo_batches()
    poisoned = ppo_batches()
    poisoned.returns[1, 5] = bad  # member 1's value target
    reference, _, _ = ppo_population_update(members, args, clean)
    population, logged, crashed = ppo_population_update(members, args, poisoned)
    for i in (0, 2):
        for name, value in population.member_state_dict(i).items():
            assert torch.equal(value, reference.member_state_dict(i)[name]), (i, name)
    if bad != bad:
        assert crashed == [(1, "non-finite PPO loss")]
        assert all(torch.isfinite(v).all() for v in population.member_state_dict(1).values())  # frozen, not NaN
    else:
        assert crashed == []


def test_step_members_leaves_a_stopped_member_as_it_was():
    from alphagrad import AlphaGrad
    from alphagrad_rl.population import step_members

    stacked = torch.nn.Parameter(torch.randn(2, 3, 4))
    optimizer = AlphaGrad([stacked], lr=0.1, alpha=3.0, momentum=0.9, members=2)
    for _ in range(2):
        stacked.grad = torch.randn(2, 3, 4)
        optimizer.step()
    before = stacked.detach().clone(), optimizer.state[stacked]["momentum_buffer"].clone()
    stacked.grad = torch.randn(2, 3, 4)
    step_members(optimizer, [True, False])
    assert torch.equal(stacked[1], before[0][1]) and torch.equal(optimizer.state[stacked]["momentum_buffer"][1],
                                                                 before[1][1])
    assert not torch.equal(stacked[0], before[0][0])
    adam = torch.optim.Adam([stacked])
    stacked.grad = torch.randn(2, 3, 4)
    adam.step()
    with pytest.raises(ValueError, match="shared by all members"):
        step_members(adam, [True, False])


def test_target_kl_with_adam_is_refused_in_a_population(tmp_path):
    from agents import ppo_continuous_action_population as ppo_population

    with pytest.raises(ValueError, match="--target-kl in a population"):
        ppo_population.check_args(ppo_args(tmp_path, PPO_SPECS["adam"], target_kl=0.01))
    ppo_population.check_args(ppo_args(tmp_path, PPO_SPECS["alphagrad"], target_kl=0.01))
    schedule = dataclasses.replace(PPO_SPECS["alphagrad"], alpha_schedule=True)
    with pytest.raises(ValueError, match="alpha-schedule is not available in a population"):
        ppo_population.check_args(ppo_args(tmp_path, schedule))


def test_ppo_population_writes_one_standard_record_per_member(tmp_path):
    from agents import ppo_continuous_action_population as ppo_population

    args = ppo_args(tmp_path, PPO_SPECS["alphagrad"], alphas=(98.0, 196.0, 294.0), save_model=True, eval_episodes=1,
                    total_timesteps=1100, num_steps=550, num_minibatches=5, update_epochs=1)
    summaries = ppo_population.main(args)
    assert [s["status"] for s in summaries] == ["finished"] * 3
    runs = {run.name: run for run in load_runs(tmp_path)}
    assert [runs[f"pop__m{i}"].alpha for i in range(3)] == [98.0, 196.0, 294.0]
    assert [runs[f"pop__m{i}"].seed for i in range(3)] == list(SEEDS)
    record = read_run(tmp_path / "pop__m2")
    assert record["config"]["algorithm"] == "ppo_continuous_action"
    assert "population_size" not in record["config"]["config"]
    rows = record["metrics"]
    assert [row["step"] for row in rows if "charts/episodic_return" in row] == [1000]  # one HalfCheetah episode
    assert [row["step"] for row in rows if "losses/value_loss" in row] == [550, 1100]
    assert any("optimizer/agent/saturation" in row for row in rows)
    lrs = [row["charts/learning_rate"] for row in rows if "charts/learning_rate" in row]
    assert lrs == pytest.approx([3e-4, 1.5e-4])  # annealed, from its own lr
    assert (tmp_path / "pop__m2" / "ppo_continuous_action.pt").exists() and summaries[2]["evaluation"]["episodes"] == 1
