"""TD3 for a population: N runs of agents/td3_continuous_action.py trained at once in one process, in CleanRL's
single-file style.

Member i is the run of agents/td3_continuous_action.py with seed `seeds[i]` (and, for AlphaGrad, `alphas[i]` /
`lrs[i]` for its actor and its critics): its own environment(s), random actions before learning starts (its env's
action space, seeded as in its run), actor, twin critics and target networks initialized as that run's, its own
replay buffer and minibatches (its numpy Generator), exploration and target-policy noise (a torch Generator that
continues its run's global one), and its own run record in the standard format. What members share is the process:
their networks are stacked (one batched matmul per layer) and one optimizer per role (critics, actor) steps them
all, AlphaGrad and AGR normalizing each member apart. Losses are summed, so member i's gradient is exactly its own
loss's. A member whose loss turns non-finite is marked crashed in its own record while the others go on.
    python agents/td3_continuous_action_population.py --seeds 1 2 3 4 5 --actor-optim.name alphagrad \\
        --actor-optim.alpha 150 --critic-optim.name alphagrad --critic-optim.alpha 150
Checkpoints cover the whole population (in member 0's folder) and --resume continues it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from alphagrad_rl.agents import td3_continuous_action as td3

from alphagrad_rl import population
from alphagrad_rl.buffers import MemberReplayBuffers
from alphagrad_rl.envs import make_vector_env, true_next_obs
from alphagrad_rl.experiment import cli, seed_everything, select_device, update_diagnostics
from alphagrad_rl.population import (
    PopulationOptions,
    StackedSequential,
    check_population_args,
    crashed_members,
    make_population_optimizer,
    open_population,
    step_members,
)

OPTIMIZERS = ("actor_optim", "critic_optim")  # --alphas and --lrs set both (AlphaGrad)


@dataclass
class Args(td3.Args, PopulationOptions):
    pass


def member_args(args: Args) -> list[td3.Args]:
    """The agents/td3_continuous_action.py options of each member (what its run record holds)."""
    return population.member_args(args, td3.Args, "TD3", OPTIMIZERS)


def check_args(args: Args) -> None:
    check_population_args(args, td3.Args, td3.check_args, "TD3", OPTIMIZERS)


class PopulationQNetwork(nn.Module):
    """The members' td3.QNetwork stacked: (members, batch, obs) and (members, batch, action) -> (members, batch, 1)."""

    def __init__(self, networks: list[td3.QNetwork]):
        super().__init__()
        self.layers = StackedSequential([nn.Sequential(net.fc1, nn.ReLU(), net.fc2, nn.ReLU(), net.fc3)
                                         for net in networks], ["fc1", "fc2", "fc3"])

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([x, a], 2))

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member `member`'s weights as a td3.QNetwork state_dict."""
        return self.layers.member_state_dict(member)


class PopulationActor(nn.Module):
    """The members' td3.Actor stacked: (members, batch, obs) -> actions (members, batch, action)."""

    def __init__(self, actors: list[td3.Actor]):
        super().__init__()
        self.layers = StackedSequential([nn.Sequential(a.fc1, nn.ReLU(), a.fc2, nn.ReLU(), a.fc_mu, nn.Tanh())
                                         for a in actors], ["fc1", "fc2", "fc_mu"])
        self.register_buffer("action_scale", actors[0].action_scale.clone())
        self.register_buffer("action_bias", actors[0].action_bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.squashed(x) * self.action_scale + self.action_bias

    def squashed(self, x: torch.Tensor) -> torch.Tensor:
        """The members' tanh outputs in [-1, 1] (td3.Actor.squashed)."""
        return self.layers(x)

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member `member`'s weights as a td3.Actor state_dict."""
        return {**self.layers.member_state_dict(member), "action_scale": self.action_scale.clone(),
                "action_bias": self.action_bias.clone()}


@dataclass
class Networks:
    actor: PopulationActor
    qf1: PopulationQNetwork
    qf2: PopulationQNetwork
    target_actor: PopulationActor
    qf1_target: PopulationQNetwork
    qf2_target: PopulationQNetwork
    generators: list[torch.Generator]  # member i's noise, continuing its run's global torch generator


def member_networks(members: list[td3.Args], envs: gym.vector.VectorEnv, device: torch.device) -> Networks:
    """Each member's networks initialized as its run initializes them (the same six modules in the same order
    from its seed; the targets then copy the online networks), stacked."""
    actors, critics1, critics2, generators = [], [], [], []
    for member in members:
        seed_everything(member.seed, member.torch_deterministic)
        actor, qf1, qf2 = td3.Actor(envs), td3.QNetwork(envs), td3.QNetwork(envs)
        td3.QNetwork(envs), td3.QNetwork(envs), td3.Actor(envs)  # its run's target networks draw here too
        actors.append(actor)
        critics1.append(qf1)
        critics2.append(qf2)
        generator = torch.Generator(device=device)
        if device.type == "cpu":
            generator.set_state(torch.get_rng_state())
        else:  # the CPU initialization leaves the CUDA generator at its seed
            generator.manual_seed(member.seed)
        generators.append(generator)
    return Networks(PopulationActor(actors).to(device), PopulationQNetwork(critics1).to(device),
                    PopulationQNetwork(critics2).to(device), PopulationActor(actors).to(device),
                    PopulationQNetwork(critics1).to(device), PopulationQNetwork(critics2).to(device), generators)


def make_optimizers(nets: Networks, members: list[td3.Args]) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """The critics' optimizer (over both Q-networks, as the run's) and the actor's, each over stacked parameters."""
    q_optimizer = make_population_optimizer([(f"qf1.{n}", p) for n, p in nets.qf1.named_parameters()]
                                            + [(f"qf2.{n}", p) for n, p in nets.qf2.named_parameters()], members,
                                            "critic_optim")
    actor_optimizer = make_population_optimizer(nets.actor.named_parameters(), members, "actor_optim")
    return q_optimizer, actor_optimizer


def critic_losses(nets: Networks, args: Args, data, action_low: torch.Tensor, action_high: torch.Tensor):
    """agents/td3_continuous_action.py's critic loss for every member (data: (members, batch, ...) tensors; member
    i's target-policy noise from its own generator): (members,) losses, Q1 and Q2 values (members, batch)."""
    observations, actions, next_observations, rewards, terminations = data
    with torch.no_grad():
        noise = torch.stack([torch.randn(actions.shape[1:], generator=generator, device=actions.device)
                             for generator in nets.generators])
        clipped_noise = (noise * args.policy_noise).clamp(-args.noise_clip, args.noise_clip) \
            * nets.target_actor.action_scale
        next_state_actions = (nets.target_actor(next_observations) + clipped_noise).clamp(action_low, action_high)
        qf1_next_target = nets.qf1_target(next_observations, next_state_actions)
        qf2_next_target = nets.qf2_target(next_observations, next_state_actions)
        min_qf_next_target = torch.min(qf1_next_target, qf2_next_target).squeeze(2)
        next_q_value = rewards.squeeze(2) + (1 - terminations.squeeze(2)) * args.gamma * min_qf_next_target
    qf1_a_values = nets.qf1(observations, actions).squeeze(2)
    qf2_a_values = nets.qf2(observations, actions).squeeze(2)
    qf1_loss = ((qf1_a_values - next_q_value) ** 2).mean(1)
    qf2_loss = ((qf2_a_values - next_q_value) ** 2).mean(1)
    return qf1_loss, qf2_loss, qf1_a_values, qf2_a_values


def actor_losses(nets: Networks, observations: torch.Tensor) -> torch.Tensor:
    """Each member's actor loss, -Q1(s, actor(s)) averaged over its own batch: (members,)."""
    return -nets.qf1(observations, nets.actor(observations)).squeeze(2).mean(1)


def update_targets(nets: Networks, tau: float) -> None:
    with torch.no_grad():
        for net, target in ((nets.actor, nets.target_actor), (nets.qf1, nets.qf1_target), (nets.qf2, nets.qf2_target)):
            for param, target_param in zip(net.parameters(), target.parameters()):
                target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)


def main(args: Args) -> list[dict]:
    check_args(args)
    members = member_args(args)
    size, k = len(members), args.num_envs
    # one vector env: sub-envs i * k ... i * k + k - 1 are member i's (its run's make_env and seeds)
    envs = make_vector_env([td3.make_env(m.env_id, m.seed + j, j) for m in members for j in range(k)],
                           gym.spaces.Box, "TD3", args.autoreset_mode)
    device = select_device(args.cuda)
    nets = member_networks(members, envs, device)
    q_optimizer, actor_optimizer = make_optimizers(nets, members)
    runs = open_population(args, members, "td3_continuous_action", args.total_timesteps, envs_per_member=k)
    action_low = torch.as_tensor(envs.single_action_space.low, device=device)
    action_high = torch.as_tensor(envs.single_action_space.high, device=device)
    rb = MemberReplayBuffers(size, args.buffer_size, envs.single_observation_space.shape,
                             envs.single_action_space.shape, np.float32, device)
    rngs = [np.random.default_rng(m.seed) for m in members]
    start_step = critic_updates = actor_updates = 0
    actor_loss = None
    obs, _ = envs.reset(seed=[m.seed + j for m in members for j in range(k)])
    obs_shape = envs.single_observation_space.shape
    with runs:
        runs.track(actor=nets.actor, qf1=nets.qf1, qf2=nets.qf2, target_actor=nets.target_actor,
                   qf1_target=nets.qf1_target, qf2_target=nets.qf2_target, q_optimizer=q_optimizer,
                   actor_optimizer=actor_optimizer, envs=envs, replay_buffers=rb,
                   **{f"rng{i}": rng for i, rng in enumerate(rngs)},
                   **{f"generator{i}": generator for i, generator in enumerate(nets.generators)})
        if (resumed := runs.restore()) is not None:  # --resume: continue exactly where it was
            start_step, obs, critic_updates, actor_updates, actor_loss = td3.resume_point(resumed)
        for global_step in range(start_step, args.total_timesteps):
            if global_step < args.learning_starts:  # its run samples from its first env's action space
                actions = np.array([envs.envs[i * k].action_space.sample() for i in range(size) for _ in range(k)])
            else:
                with torch.no_grad():
                    member_actions = nets.actor(torch.as_tensor(obs, dtype=torch.float32, device=device).view(
                        (size, k) + obs_shape))
                    noise = torch.stack([torch.normal(0, nets.actor.action_scale * args.exploration_noise,
                                                      generator=generator) for generator in nets.generators])
                    member_actions += noise.unsqueeze(1)  # one draw per member for all its envs, as in its run
                    actions = member_actions.reshape(size * k, -1).cpu().numpy().clip(envs.single_action_space.low,
                                                                                       envs.single_action_space.high)
                for i in (i for i in range(size) if not runs.alive[i]):  # a crashed member's envs: zero actions
                    actions[i * k:(i + 1) * k] = 0.0

            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            runs.log_episodes(global_step, infos)
            real_next_obs = true_next_obs(next_obs, terminations, truncations, infos)
            rb.add(obs, real_next_obs, actions, rewards, terminations)  # member i's rows: its k envs'
            obs = next_obs

            if global_step > args.learning_starts:
                data = rb.sample(args.batch_size, rngs)
                qf1_loss, qf2_loss, qf1_a_values, qf2_a_values = critic_losses(nets, args, data, action_low,
                                                                               action_high)
                qf_loss = qf1_loss + qf2_loss
                q_optimizer.zero_grad()
                qf_loss.sum().backward()  # member i's gradient is its own loss's
                critic_updates += 1
                newly_crashed = [i for i in crashed_members(qf_loss, q_optimizer, [], "skip") if runs.alive[i]]
                skipped_before = list(q_optimizer.param_groups[0].get("skipped_steps") or [])
                stepping = [a and i not in newly_crashed for i, a in enumerate(runs.alive)]
                with update_diagnostics(q_optimizer, "critic", args.diagnostics_interval > 0 and
                                        critic_updates % args.diagnostics_interval == 0, members=size) as diagnostics:
                    step_members(q_optimizer, stepping, shared_ok=True)
                newly_crashed += [i for i in crashed_members(qf_loss, q_optimizer, skipped_before,
                                                             args.critic_optim.nonfinite) if stepping[i]]
                if global_step % args.policy_frequency == 0:
                    observations = data[0]
                    actor_loss = actor_losses(nets, observations)
                    actor_optimizer.zero_grad()
                    actor_loss.sum().backward()
                    actor_updates += 1
                    stepping = [a and i not in newly_crashed for i, a in enumerate(runs.alive)]
                    skipped_before = list(actor_optimizer.param_groups[0].get("skipped_steps") or [])
                    with update_diagnostics(actor_optimizer, "actor", args.diagnostics_interval > 0 and
                                            actor_updates % args.diagnostics_interval == 0,
                                            members=size) as actor_diagnostics:
                        step_members(actor_optimizer, stepping, shared_ok=True)
                    diagnostics.update(actor_diagnostics)
                    newly_crashed += [i for i in crashed_members(actor_loss, actor_optimizer, skipped_before,
                                                                 args.actor_optim.nonfinite) if stepping[i]]
                    update_targets(nets, args.tau)
                for i in sorted(set(newly_crashed)):  # its run would have stopped here; the others go on
                    runs.crash(i, f"non-finite TD3 loss or gradient at step {global_step}")

                if global_step % 100 == 0:
                    with torch.no_grad():  # per member, as td3 logs it
                        saturated = (nets.actor.squashed(data[0]).abs() == 1).float().mean((1, 2)).tolist()
                for i, record in runs.live():
                    member_diagnostics = {key: value[i] for key, value in diagnostics.items()}
                    if global_step % 100 == 0:
                        actor_logged = {"losses/actor_loss": actor_loss[i].item()} if actor_loss is not None else {}
                        record.log(global_step, {
                            "losses/qf1_values": qf1_a_values[i].mean().item(),
                            "losses/qf2_values": qf2_a_values[i].mean().item(),
                            "losses/qf1_loss": qf1_loss[i].item(), "losses/qf2_loss": qf2_loss[i].item(),
                            "losses/qf_loss": qf_loss[i].item() / 2.0, **actor_logged,
                            "losses/actor_saturated": saturated[i], "charts/SPS": record.sps(global_step),
                            **member_diagnostics})
                    elif member_diagnostics:
                        record.log(global_step, member_diagnostics)
            if not any(runs.alive):
                break
            runs.save_if_due(global_step + 1, global_step=global_step + 1, obs=obs, critic_updates=critic_updates,
                             actor_updates=actor_updates, actor_loss=None if actor_loss is None else actor_loss.tolist())

        def save_model(i, record):
            model_path = record.run_dir / "td3_continuous_action.pt"
            torch.save({"actor": nets.actor.member_state_dict(i), "qf1": nets.qf1.member_state_dict(i),
                        "qf2": nets.qf2.member_state_dict(i)}, model_path)
            actor = td3.Actor(envs).to(device)
            actor.load_state_dict(nets.actor.member_state_dict(i))
            record.set_evaluation(model_path, td3.evaluate(actor, members[i], device, args.eval_episodes))

        runs.finish(args.total_timesteps, save_model if args.save_model else None)
    envs.close()
    return runs.summaries()


if __name__ == "__main__":
    cli(main, Args)
