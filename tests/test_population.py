"""Population agents: each member is one run of the single-file agent, trained in one process."""

import copy
import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from alphagrad_rl.agents import dqn, dqn_population

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
        stacked = ReplayBatch(*(torch.stack(parts) for parts in zip(*step_batches)))
        losses, _ = dqn_population.td_losses(q_network, target_network, stacked, gamma)
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
    return q_network, losses


PER_MEMBER = {"adam": {"lrs": (2.5e-4, 1e-3, 1e-4)}, "adamw-agr": {},
              "alphagrad": {"alphas": (93.0, 186.0, 279.0), "lrs": (2.5e-4, 1e-3, 1e-4), "momentums": (0.9, 0.0, 0.5)}}


@pytest.mark.parametrize("optimizer", SPECS)
def test_one_population_update_is_each_members_single_file_update(optimizer, tmp_path):
    args = population_args(tmp_path, SPECS[optimizer], **PER_MEMBER[optimizer])
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


def test_population_options_are_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match="alphas has 2 values"):
        dqn_population.member_args(population_args(tmp_path, SPECS["alphagrad"], alphas=(93.0, 186.0)))
    with pytest.raises(ValueError, match="--alphas and --momentums set AlphaGrad's"):
        dqn_population.member_args(population_args(tmp_path, SPECS["adam"], alphas=(1.0, 2.0, 3.0)))
    adan = OptimizerSpec(name="adan", lr=1e-3, weight_decay=0.02)
    with pytest.raises(ValueError, match="not linear in its lr"):
        dqn_population.check_args(population_args(tmp_path, adan, lrs=(1e-3, 2e-3, 3e-3)))
    dqn_population.check_args(population_args(tmp_path, dataclasses.replace(adan, weight_decay=0.0),
                                              lrs=(1e-3, 2e-3, 3e-3)))
    members = dqn_population.member_args(population_args(tmp_path, SPECS["alphagrad"], momentums=(0.0, 0.5, 0.9)))
    assert [m.optim.momentum for m in members] == [0.0, 0.5, 0.9]
    resumed = dqn_population.main(population_args(tmp_path, SPECS["adam"], resume=True))  # nothing to resume from
    assert "no intact population checkpoint: the population starts from step 0" in capsys.readouterr().err
    assert [s["status"] for s in resumed] == ["finished"] * 3 and not any(s.get("resumes") for s in resumed)
    assert np.array_equal([m.seed for m in dqn_population.member_args(
        population_args(tmp_path, SPECS["adam"], seeds=(), seed=7, population_size=3))], [7, 8, 9])


# ---- PPO ----

PPO_SPECS = {"adam": OptimizerSpec(name="adam", lr=3e-4, eps=1e-5),
             "alphagrad": OptimizerSpec(name="alphagrad", alpha=98.0, lr=3e-4, momentum=0.9, momentum_form="sgd",
                                        eps=1e-5),
             "adamw-agr": OptimizerSpec(name="adamw-agr", lr=3e-4, eps=1e-5)}


def ppo_args(tmp_path, spec, **overrides):
    from alphagrad_rl.agents import ppo_continuous_action_population as ppo_population

    defaults = dict(seeds=SEEDS, optim=spec, env_id="HalfCheetah-v5", num_steps=64, num_minibatches=4,
                    update_epochs=2, total_timesteps=128, results_dir=str(tmp_path), run_name="pop", quiet=True,
                    cuda=False, diagnostics_interval=3)
    return ppo_population.Args(**{**defaults, **overrides})


def ppo_batches(seed=0, members=3, steps=64):
    """A random rollout per member, (members, steps, ...) like the population's flattened batch."""
    from alphagrad_rl.agents import ppo_continuous_action as ppo

    g = torch.Generator().manual_seed(seed)
    return ppo.Batch(torch.randn(members, steps, 17, generator=g), -torch.rand(members, steps, generator=g) * 8,
                     torch.randn(members, steps, 6, generator=g), torch.randn(members, steps, generator=g),
                     torch.randn(members, steps, generator=g), torch.randn(members, steps, generator=g))


def ppo_single_file_updates(members, batch):
    """Each member's agent after agents/ppo_continuous_action.py's update (its code) on its own rollout, with its
    run's initialization and np.random; and what the run logs."""
    from alphagrad_rl.agents import ppo_continuous_action as ppo

    envs = make_vector_env([ppo.make_env("HalfCheetah-v5", 0.99)], gym.spaces.Box, "PPO")
    states, logs = [], []
    for i, member in enumerate(members):
        seed_everything(member.seed, True)
        agent = ppo.Agent(envs)
        optimizer = make_optimizer(agent.named_parameters(), member.optim)
        _, logged = ppo.update(agent, optimizer, None, member, ppo.Batch(*(part[i] for part in batch)), 0, 0)
        states.append(agent.state_dict())
        logs.append(logged)
    return states, logs


def ppo_population_update(members, args, batch):
    from alphagrad_rl.agents import ppo_continuous_action_population as ppo_population

    from alphagrad_rl.population import make_population_optimizer

    agents, _ = ppo_population.member_generators(members, torch.device("cpu"))
    agent = ppo_population.PopulationAgent(agents)
    optimizer = make_population_optimizer(agent.named_parameters(), members)
    rngs = [np.random.RandomState(m.seed) for m in members]
    _, logged, crashed = ppo_population.update(agent, optimizer, args, batch, rngs, [True] * len(members), 0)
    return agent, logged, crashed


@pytest.mark.parametrize(("optimizer", "options"), [
    ("adam", {"lrs": (3e-4, 1e-3, 1e-4)}), ("adamw-agr", {"max_grad_norm": None, "lrs": (3e-4, 3e-4, 1e-3)}),
    ("alphagrad", {"alphas": (98.0, 196.0, 294.0), "lrs": (3e-4, 1e-3, 1e-4)}),
    ("alphagrad", {"alphas": (98.0, 196.0, 294.0), "target_kl": 0.002, "norm_adv": False}),
])
def test_one_ppo_population_update_is_each_members_single_file_update(optimizer, options, tmp_path):
    from alphagrad_rl.agents import ppo_continuous_action_population as ppo_population

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
    from alphagrad_rl.agents import ppo_continuous_action_population as ppo_population

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
    from alphagrad_rl.agents import ppo_continuous_action_population as ppo_population

    with pytest.raises(ValueError, match="--target-kl in a population"):
        ppo_population.check_args(ppo_args(tmp_path, PPO_SPECS["adam"], target_kl=0.01))
    ppo_population.check_args(ppo_args(tmp_path, PPO_SPECS["alphagrad"], target_kl=0.01))
    schedule = dataclasses.replace(PPO_SPECS["alphagrad"], alpha_schedule=True)
    with pytest.raises(ValueError, match="alpha-schedule is not available in a population"):
        ppo_population.check_args(ppo_args(tmp_path, schedule))
    custom = OptimizerSpec(name="custom", target="torch.optim:SGD", lr=1e-3)  # stepping members apart is unknown
    with pytest.raises(ValueError, match="custom optimizer .* is not available in a population"):
        ppo_population.check_args(ppo_args(tmp_path, custom))


def test_ppo_population_writes_one_standard_record_per_member(tmp_path):
    from alphagrad_rl.agents import ppo_continuous_action_population as ppo_population

    args = ppo_args(tmp_path, PPO_SPECS["alphagrad"], alphas=(98.0, 196.0, 294.0), save_model=True, eval_episodes=1,
                    total_timesteps=1100, num_steps=550, num_minibatches=5, update_epochs=1)
    summaries = ppo_population.main(args)
    assert [s["status"] for s in summaries] == ["finished"] * 3
    assert [s["population_size"] for s in summaries] == [3] * 3  # their wall_clock_s is the one process's
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


# ---- TD3 ----

# Adam with eps 1e-5 (the author's setting, configs/paper_td3_hopper.yaml): with torch's 1e-8 a weight whose gradient
# is ~1e-8 moves by anything in [-lr, lr] depending on the last bits of its gradient, which bmm (population) and
# addmm (single file) round differently.
TD3_SPECS = {"adam": OptimizerSpec(name="adam", lr=3e-4, eps=1e-5),
             "alphagrad": OptimizerSpec(name="alphagrad", alpha=150.0, lr=3e-5, momentum=0.9, momentum_form="sgd",
                                        eps=1e-5)}


def td3_args(tmp_path, spec, **overrides):
    from alphagrad_rl.agents import td3_continuous_action_population as td3_population

    defaults = dict(seeds=SEEDS, actor_optim=spec, critic_optim=spec, env_id="Hopper-v4", total_timesteps=300,
                    learning_starts=100, batch_size=32, buffer_size=1000, results_dir=str(tmp_path), run_name="pop",
                    quiet=True, cuda=False, diagnostics_interval=20)
    return td3_population.Args(**{**defaults, **overrides})


def td3_batches(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[ReplayBatch(torch.randn(32, 11, generator=g), torch.rand(32, 3, generator=g) * 2 - 1,
                         torch.randn(32, 11, generator=g), torch.randn(32, 1, generator=g),
                         (torch.rand(32, 1, generator=g) < 0.1).float()) for _ in SEEDS] for _ in range(steps)]


def td3_single_file_updates(members, batches, args):
    """Each member's networks after agents/td3_continuous_action.py's updates (its code, member by member: critic
    step every update, actor and targets every policy_frequency-th) on its own batches."""
    from alphagrad_rl.agents import td3_continuous_action as td3

    envs = make_vector_env([td3.make_env("Hopper-v4", 1, 0)], gym.spaces.Box, "TD3")
    low, high = (torch.as_tensor(x) for x in (envs.single_action_space.low, envs.single_action_space.high))
    results = []
    for i, member in enumerate(members):
        seed_everything(member.seed, True)
        actor, qf1, qf2 = td3.Actor(envs), td3.QNetwork(envs), td3.QNetwork(envs)
        qf1_target, qf2_target, target_actor = td3.QNetwork(envs), td3.QNetwork(envs), td3.Actor(envs)
        target_actor.load_state_dict(actor.state_dict())
        qf1_target.load_state_dict(qf1.state_dict())
        qf2_target.load_state_dict(qf2.state_dict())
        q_optimizer = make_optimizer([(f"qf1.{n}", p) for n, p in qf1.named_parameters()]
                                     + [(f"qf2.{n}", p) for n, p in qf2.named_parameters()], member.critic_optim)
        actor_optimizer = make_optimizer(actor.named_parameters(), member.actor_optim)
        for step, step_batches in enumerate(batches):
            data = step_batches[i]
            with torch.no_grad():
                clipped_noise = (torch.randn_like(data.actions) * args.policy_noise).clamp(
                    -args.noise_clip, args.noise_clip) * target_actor.action_scale
                next_state_actions = (target_actor(data.next_observations) + clipped_noise).clamp(low, high)
                min_qf_next_target = torch.min(qf1_target(data.next_observations, next_state_actions),
                                               qf2_target(data.next_observations, next_state_actions))
                next_q_value = data.rewards.flatten() + (1 - data.terminations.flatten()) * args.gamma * (
                    min_qf_next_target).view(-1)
            qf_loss = (F.mse_loss(qf1(data.observations, data.actions).view(-1), next_q_value)
                       + F.mse_loss(qf2(data.observations, data.actions).view(-1), next_q_value))
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()
            if step % args.policy_frequency == 0:
                actor_loss = -qf1(data.observations, actor(data.observations)).mean()
                actor_optimizer.zero_grad()
                actor_loss.backward()
                actor_optimizer.step()
                with torch.no_grad():
                    for net, target in ((actor, target_actor), (qf1, qf1_target), (qf2, qf2_target)):
                        for param, target_param in zip(net.parameters(), target.parameters()):
                            target_param.data.copy_(args.tau * param.data + (1 - args.tau) * target_param.data)
        results.append({"actor": actor.state_dict(), "qf1": qf1.state_dict(), "qf2": qf2.state_dict(),
                        "qf1_target": qf1_target.state_dict()})
    return results


def td3_population_updates(members, batches, args):
    from alphagrad_rl.agents import td3_continuous_action as td3
    from alphagrad_rl.agents import td3_continuous_action_population as td3_population

    envs = make_vector_env([td3.make_env("Hopper-v4", 1, 0)], gym.spaces.Box, "TD3")
    low, high = (torch.as_tensor(x) for x in (envs.single_action_space.low, envs.single_action_space.high))
    nets = td3_population.member_networks(members, envs, torch.device("cpu"))
    q_optimizer, actor_optimizer = td3_population.make_optimizers(nets, members)
    for step, step_batches in enumerate(batches):
        data = [torch.stack(parts) for parts in zip(*step_batches)]
        qf1_loss, qf2_loss, _, _ = td3_population.critic_losses(nets, args, data, low, high)
        q_optimizer.zero_grad()
        (qf1_loss + qf2_loss).sum().backward()
        q_optimizer.step()
        if step % args.policy_frequency == 0:
            actor_optimizer.zero_grad()
            td3_population.actor_losses(nets, data[0]).sum().backward()
            actor_optimizer.step()
            td3_population.update_targets(nets, args.tau)
    return nets, qf1_loss + qf2_loss


@pytest.mark.parametrize("optimizer", TD3_SPECS)
def test_td3_population_updates_are_each_members_single_file_updates(optimizer, tmp_path):
    from alphagrad_rl.agents import td3_continuous_action_population as td3_population

    options = {"alphas": (100.0, 150.0, 457.0), "lrs": (3e-5, 3e-4, 1e-4)} if optimizer == "alphagrad" else {}
    args = td3_args(tmp_path, TD3_SPECS[optimizer], **options)
    members = td3_population.member_args(args)
    assert [m.critic_optim.alpha for m in members] == [m.actor_optim.alpha for m in members]
    batches = td3_batches(3)
    nets, _ = td3_population_updates(members, batches, args)
    for i, single in enumerate(td3_single_file_updates(members, batches, args)):
        for role, net in (("actor", nets.actor), ("qf1", nets.qf1), ("qf2", nets.qf2), ("qf1_target", nets.qf1_target)):
            for name, value in net.member_state_dict(i).items():
                torch.testing.assert_close(value, single[role][name], rtol=1e-5, atol=1e-6, msg=f"{role}.{name}")


@pytest.mark.parametrize("optimizer", TD3_SPECS)
def test_a_bad_td3_member_changes_no_other_member(optimizer, tmp_path):
    from alphagrad_rl.agents import td3_continuous_action_population as td3_population

    members = td3_population.member_args(td3_args(tmp_path, TD3_SPECS[optimizer]))
    args = td3_args(tmp_path, TD3_SPECS[optimizer])
    clean, poisoned = td3_batches(2), td3_batches(2)
    poisoned[1][1] = poisoned[1][1]._replace(rewards=poisoned[1][1].rewards * 0 + float("nan"))
    reference, _ = td3_population_updates(members, clean, args)
    nets, losses = td3_population_updates(members, poisoned, args)
    for i in (0, 2):
        for role in ("actor", "qf1", "qf2"):
            for name, value in getattr(nets, role).member_state_dict(i).items():
                assert torch.equal(value, getattr(reference, role).member_state_dict(i)[name]), (i, role, name)
    assert torch.isfinite(losses[[0, 2]]).all() and not torch.isfinite(losses[1])


def test_td3_population_writes_standard_records_and_acts_as_its_runs_before_learning(tmp_path):
    from alphagrad_rl.agents import td3_continuous_action as td3
    from alphagrad_rl.agents import td3_continuous_action_population as td3_population

    args = td3_args(tmp_path, TD3_SPECS["alphagrad"], total_timesteps=420, learning_starts=300, save_model=True,
                    eval_episodes=1)
    summaries = td3_population.main(args)
    assert [s["status"] for s in summaries] == ["finished"] * 3
    runs = {run.name: run for run in load_runs(tmp_path)}
    assert [runs[f"pop__m{i}"].seed for i in range(3)] == list(SEEDS)
    record = read_run(tmp_path / "pop__m1")
    assert record["config"]["algorithm"] == "td3_continuous_action"
    assert any("losses/qf1_values" in row for row in record["metrics"])
    assert any("optimizer/critic/saturation" in row for row in record["metrics"])
    saturated = [row["losses/actor_saturated"] for row in record["metrics"] if "losses/actor_saturated" in row]
    assert saturated and all(0.0 <= value <= 1.0 for value in saturated)
    assert (tmp_path / "pop__m1" / "td3_continuous_action.pt").exists()
    shared = {key: getattr(args, key) for key in ("env_id", "total_timesteps", "learning_starts", "batch_size",
                                                  "buffer_size", "quiet", "cuda", "actor_optim", "critic_optim")}
    single = td3.main(td3.Args(**shared, seed=2, results_dir=str(tmp_path / "single"), run_name="s2"))
    assert single["status"] == "finished"

    def early(path):
        return [(row["step"], row["charts/episodic_return"]) for row in read_run(path)["metrics"]
                if "charts/episodic_return" in row and row["step"] < args.learning_starts]

    assert early(tmp_path / "pop__m1") == early(tmp_path / "single" / "s2") and early(tmp_path / "pop__m1")


def test_td3_population_actor_gives_each_members_own_tanh_outputs():
    """The stacked actor's tanh outputs (what losses/actor_saturated counts at exactly +-1) are each member's
    td3.Actor.squashed: a member driven into saturation is the only one saturated."""
    from alphagrad_rl.agents import td3_continuous_action as td3
    from alphagrad_rl.agents import td3_continuous_action_population as td3_population

    envs = make_vector_env([td3.make_env("Hopper-v4", 1, 0)], gym.spaces.Box, "TD3")
    torch.manual_seed(0)
    actors = [td3.Actor(envs) for _ in range(3)]
    with torch.no_grad():
        actors[1].fc_mu.bias.fill_(100.0)
    observations = torch.randn(3, 16, envs.single_observation_space.shape[0])
    squashed = td3_population.PopulationActor(actors).squashed(observations)
    for member, actor in enumerate(actors):
        torch.testing.assert_close(squashed[member], actor.squashed(observations[member]))
    assert (squashed.abs() == 1).float().mean((1, 2)).tolist() == [0.0, 1.0, 0.0]


# ---- checkpoints and exact resume of a whole population ----

def population_crashed_then_resumed(module, args, monkeypatch, crash_step):
    from test_checkpoint import SimulatedCrash, crash_at_env_step

    with monkeypatch.context() as patch:
        crash_at_env_step(patch, crash_step)
        with pytest.raises(SimulatedCrash):
            module.main(args)
    return module.main(dataclasses.replace(args, resume=True))


def assert_same_member_records(tmp_path, names, total):
    from test_agents import metric_rows

    for name in names:
        full, cut = tmp_path / "full" / name, tmp_path / "cut" / name
        assert metric_rows(cut) == metric_rows(full), name
        summary = read_run(cut)["summary"]
        assert summary["status"] == "finished" and summary["global_step"] == total
        assert summary["final_return"] == read_run(full)["summary"]["final_return"]
        assert len(summary["resumes"]) == 1
    assert not (tmp_path / "cut" / names[0] / "checkpoints").exists()  # a finished population deletes them


def test_dqn_population_resumes_exactly(tmp_path, monkeypatch):
    options = dict(checkpoint_interval_steps=250, checkpoint_interval_s=0, total_timesteps=700)
    full = population_args(tmp_path / "full", SPECS["alphagrad"], alphas=(93.0, 186.0, 279.0), **options)
    dqn_population.main(full)
    cut = dataclasses.replace(full, results_dir=str(tmp_path / "cut"))
    summaries = population_crashed_then_resumed(dqn_population, cut, monkeypatch, crash_step=560)
    assert [s["resumes"][0]["step"] for s in summaries] == [500] * 3
    assert_same_member_records(tmp_path, ["pop__m0", "pop__m1", "pop__m2"], 700)


def test_a_population_whose_members_would_train_the_same_options_is_refused(tmp_path):
    args = population_args(tmp_path, SPECS["adam"], total_timesteps=300)
    with pytest.raises(ValueError, match="members pop__m0 and pop__m1 would train the same options \\(seed 1\\)"):
        dqn_population.main(dataclasses.replace(args, seeds=(1, 1, 2)))
    assert not list(tmp_path.iterdir())
    alphas = dataclasses.replace(args, seeds=(1, 1, 2), optim=SPECS["alphagrad"], alphas=(93.0, 186.0, 93.0),
                                 run_name="alphas")
    assert [s["status"] for s in dqn_population.main(alphas)] == ["finished"] * 3  # one seed, two alphas: two runs


def test_population_resume_refuses_other_members_and_finished_populations(tmp_path, monkeypatch):
    from test_checkpoint import SimulatedCrash, crash_at_env_step

    from alphagrad_rl.checkpoint import CheckpointMismatch

    args = population_args(tmp_path, SPECS["adam"], checkpoint_interval_steps=250, checkpoint_interval_s=0,
                           total_timesteps=700)
    with monkeypatch.context() as patch:
        crash_at_env_step(patch, 560)
        with pytest.raises(SimulatedCrash):
            dqn_population.main(args)
    with pytest.raises(CheckpointMismatch, match="member2.seed: 3 \\(checkpoint\\) != 4"):
        dqn_population.main(dataclasses.replace(args, resume=True, seeds=(1, 2, 4)))
    assert [s["status"] for s in dqn_population.main(dataclasses.replace(args, resume=True))] == ["finished"] * 3
    with pytest.raises(ValueError, match="every member of this population has finished"):
        dqn_population.main(dataclasses.replace(args, resume=True))
    # one member crashed, the others finished: the population ended, and a resume would retrain them over their
    # records (their checkpoints are gone, so it would start from step 0)
    crashed = tmp_path / "pop__m1" / "summary.json"
    crashed.write_text(json.dumps({**json.loads(crashed.read_text()), "status": "crashed"}))
    kept = {d: (tmp_path / d / "metrics.jsonl").read_bytes() for d in ("pop__m0", "pop__m2")}
    with pytest.raises(ValueError, match="population has ended: 2 of its 3 members finished .*pop__m0.*records are kept"):
        dqn_population.main(dataclasses.replace(args, resume=True))
    assert {d: (tmp_path / d / "metrics.jsonl").read_bytes() for d in kept} == kept


def test_population_without_a_checkpoint_starts_over_only_with_its_earlier_options(tmp_path, monkeypatch):
    """As a single run's --resume: killed before its first checkpoint, a population starts over when resumed with
    the options it ran with, and is refused, its records untouched, when a member's options differ."""
    from test_checkpoint import SimulatedCrash, crash_at_env_step

    from alphagrad_rl.checkpoint import CheckpointMismatch

    args = population_args(tmp_path, SPECS["alphagrad"], alphas=(93.0, 186.0, 279.0), checkpoint_interval_steps=0,
                           checkpoint_interval_s=0)
    with monkeypatch.context() as patch:
        crash_at_env_step(patch, 150)
        with pytest.raises(SimulatedCrash):
            dqn_population.main(args)
    records = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    with pytest.raises(CheckpointMismatch, match="pop__m2: it has no intact checkpoint.*optim.alpha: 279.0"):
        dqn_population.main(dataclasses.replace(args, resume=True, alphas=(93.0, 186.0, 300.0)))
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == records
    summaries = dqn_population.main(dataclasses.replace(args, resume=True))
    assert [s["status"] for s in summaries] == ["finished"] * 3 and not any(s.get("resumes") for s in summaries)


def test_ppo_population_resumes_exactly(tmp_path, monkeypatch):
    from alphagrad_rl.agents import ppo_continuous_action_population as ppo_population

    full = ppo_args(tmp_path / "full", PPO_SPECS["alphagrad"], alphas=(98.0, 196.0, 294.0), total_timesteps=384,
                    checkpoint_interval_steps=128, checkpoint_interval_s=0)
    ppo_population.main(full)
    cut = dataclasses.replace(full, results_dir=str(tmp_path / "cut"))
    summaries = population_crashed_then_resumed(ppo_population, cut, monkeypatch, crash_step=2 * 64 + 30)
    assert [s["resumes"][0]["step"] for s in summaries] == [128] * 3
    assert_same_member_records(tmp_path, ["pop__m0", "pop__m1", "pop__m2"], 384)


def test_td3_population_resumes_exactly(tmp_path, monkeypatch):
    from alphagrad_rl.agents import td3_continuous_action_population as td3_population

    full = td3_args(tmp_path / "full", TD3_SPECS["alphagrad"], total_timesteps=330, learning_starts=120,
                    checkpoint_interval_steps=100, checkpoint_interval_s=0)
    td3_population.main(full)
    cut = dataclasses.replace(full, results_dir=str(tmp_path / "cut"))
    summaries = population_crashed_then_resumed(td3_population, cut, monkeypatch, crash_step=230)
    assert [s["resumes"][0]["step"] for s in summaries] == [200] * 3
    assert_same_member_records(tmp_path, ["pop__m0", "pop__m1", "pop__m2"], 330)


@pytest.mark.slow
def test_each_population_member_is_its_own_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summaries = dqn_population.main(population_args(tmp_path, SPECS["adam"], seeds=(1, 2), track=True))
    assert [s["status"] for s in summaries] == ["finished"] * 2
    ids = []
    for i in range(2):
        (offline,) = (tmp_path / f"pop__m{i}" / "wandb").glob("offline-run-*")
        ids.append(offline.name.rsplit("-", 1)[-1])
        assert list(offline.glob("*.wandb")) and (offline / "files").exists()
    assert ids[0] != ids[1]
