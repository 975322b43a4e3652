"""DQN for a population: N runs of agents/dqn.py trained at once in one process, in CleanRL's single-file style.

Member i is the run of agents/dqn.py with seed `seeds[i]` (and, for AlphaGrad, `alphas[i]` / `lrs[i]`): its own
environment (same wrappers and autoreset), its own Q-network initialized as that run's, its own target network,
replay buffer, epsilon draws and minibatches (its own numpy Generator), and its own run record in the standard
format (config = that run's agents/dqn.py options). What members share is the process: their networks are
stacked (weights (N, out, in), one batched matmul per layer) and one optimizer steps them all, with AlphaGrad
and AGR normalizing each member apart (alphagrad members=). The losses are summed, so member i's gradient is
exactly its own loss's. A member whose loss turns non-finite is marked crashed in its own record while the
others go on.
    python agents/dqn_population.py --population-size 10 --optim.name alphagrad --optim.alpha 93
    python agents/dqn_population.py --seeds 1 2 3 --optim.name alphagrad --alphas 93 186 279
Checkpoints cover the whole population (in member 0's folder) and --resume continues it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from alphagrad_rl.agents import dqn

from alphagrad_rl import population
from alphagrad_rl.buffers import MemberReplayBuffers, ReplayBatch
from alphagrad_rl.cartpole_batch import CartPoleBatch, member_action_spaces
from alphagrad_rl.envs import make_vector_env, true_next_obs
from alphagrad_rl.experiment import cli, seed_everything, select_device, update_diagnostics
from alphagrad_rl.population import (
    PopulationOptions,
    StackedSequential,
    check_population_args,
    crashed_members,
    make_population_optimizer,
    open_population,
)


@dataclass
class Args(dqn.Args, PopulationOptions):
    cartpole_batch: bool = True
    """step CartPole-v1 members in one numpy batch (alphagrad_rl/cartpole_batch.py: bit-identical to agents/dqn.py's
    environments, much cheaper); --no-cartpole-batch steps gymnasium's own envs. Other environments always do."""


def member_args(args: Args) -> list[dqn.Args]:
    """The agents/dqn.py options of each member (what its run record holds)."""
    return population.member_args(args, dqn.Args, "DQN")


def check_args(args: Args) -> None:
    check_population_args(args, dqn.Args, dqn.check_args, "DQN")


class PopulationQNetwork(StackedSequential):
    """The members' dqn.QNetwork layers stacked: layer k holds weight (members, out, in) and bias (members, out)."""

    def __init__(self, networks: list[dqn.QNetwork]):
        super().__init__([net.network for net in networks])

    def member_state_dict(self, member: int, prefix: str = "network.") -> dict[str, torch.Tensor]:
        """Member `member`'s weights as a dqn.QNetwork state_dict (network.0.weight, ...)."""
        return super().member_state_dict(member, prefix)


def td_losses(q_network: PopulationQNetwork, target_network: PopulationQNetwork, batch: ReplayBatch, gamma: float):
    """Each member's DQN loss on its own minibatch (`batch`: the members' minibatches stacked, (members, batch, ...);
    agents/dqn.py's loss, member by member): (members,) losses and the Q-values of the taken actions (members,
    batch)."""
    observations, actions, next_observations, rewards, terminations = batch
    with torch.no_grad():
        target_max, _ = target_network(next_observations).max(dim=2)
        td_target = rewards.squeeze(2) + gamma * target_max * (1 - terminations.squeeze(2))
    old_val = q_network(observations).gather(2, actions.unsqueeze(2)).squeeze(2)
    return ((td_target - old_val) ** 2).mean(dim=1), old_val


def main(args: Args) -> list[dict]:
    check_args(args)
    members = member_args(args)
    size = len(members)
    # one vector env, sub-env i = member i's env (agents/dqn.py's make_env with its seed; reset with its seed)
    if args.cartpole_batch and args.env_id == CartPoleBatch.env_id and args.autoreset_mode == "same-step":
        envs = CartPoleBatch([m.seed for m in members])
    else:
        envs = make_vector_env([dqn.make_env(m.env_id, m.seed, 0) for m in members], gym.spaces.Discrete, "DQN",
                               args.autoreset_mode)
    action_spaces = member_action_spaces(envs)
    device = select_device(args.cuda)
    networks = []
    for member in members:  # each member's initialization is its agents/dqn.py run's
        seed_everything(member.seed, member.torch_deterministic)
        networks.append(dqn.QNetwork(envs))
    q_network = PopulationQNetwork(networks).to(device)
    target_network = PopulationQNetwork(networks).to(device)
    optimizer = make_population_optimizer(q_network.named_parameters(), members)
    runs = open_population(args, members, "dqn", args.total_timesteps, envs_per_member=1)
    rb = MemberReplayBuffers(size, args.buffer_size, envs.single_observation_space.shape, (), np.int64, device)
    rngs = [np.random.default_rng(m.seed) for m in members]
    obs, _ = envs.reset(seed=[m.seed for m in members])
    start_step = updates = 0
    with runs:
        runs.track(q_network=q_network, target_network=target_network, optimizer=optimizer, envs=envs,
                   replay_buffers=rb, **{f"rng{i}": rng for i, rng in enumerate(rngs)})
        if (resumed := runs.restore()) is not None:  # --resume: continue exactly where it was
            start_step, updates, obs = resumed["global_step"], resumed["updates"], resumed["obs"]
            for env_index, first_obs in resumed["fresh_obs"].items():
                obs[env_index] = first_obs
        for global_step in range(start_step, args.total_timesteps):
            epsilon = dqn.linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps,
                                          global_step)
            explore = [rng.random() < epsilon for rng in rngs]
            if all(explore):
                actions = np.zeros(size, dtype=np.int64)
            else:
                with torch.no_grad():
                    q_values = q_network(torch.as_tensor(obs, device=device).unsqueeze(1))
                actions = q_values.argmax(dim=2)[:, 0].cpu().numpy()
            for i in (i for i in range(size) if explore[i]):
                actions[i] = action_spaces[i].sample()
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            runs.log_episodes(global_step, infos)
            real_next_obs = true_next_obs(next_obs, terminations, truncations, infos)
            rb.add(obs, real_next_obs, actions, rewards, terminations)
            obs = next_obs

            if global_step > args.learning_starts:
                if global_step % args.train_frequency == 0:
                    losses, old_val = td_losses(q_network, target_network, rb.sample(args.batch_size, rngs), args.gamma)
                    optimizer.zero_grad()
                    losses.sum().backward()  # member i's gradient is its own loss's
                    updates += 1
                    diagnose = args.diagnostics_interval > 0 and updates % args.diagnostics_interval == 0
                    skipped_before = list(optimizer.param_groups[0].get("skipped_steps") or [])
                    with update_diagnostics(optimizer, "q", diagnose, members=size) as diagnostics:
                        optimizer.step()
                    for i in crashed_members(losses, optimizer, skipped_before, args.optim.nonfinite):
                        runs.crash(i, f"non-finite TD loss or gradient at step {global_step}")
                    for i, record in runs.live():
                        member_diagnostics = {key: value[i] for key, value in diagnostics.items()}
                        if global_step % 100 == 0:
                            record.log(global_step, {
                                "losses/td_loss": losses[i].item(), "losses/q_values": old_val[i].mean().item(),
                                "charts/SPS": record.sps(global_step), "charts/epsilon": epsilon,
                                **member_diagnostics})
                        elif member_diagnostics:
                            record.log(global_step, member_diagnostics)

                if global_step % args.target_network_frequency == 0:
                    with torch.no_grad():
                        for target, source in zip(target_network.parameters(), q_network.parameters()):
                            target.copy_(args.tau * source + (1.0 - args.tau) * target)
            runs.save_if_due(global_step + 1, global_step=global_step + 1, obs=obs, updates=updates)

        def save_model(i, record):
            model_path = record.run_dir / "dqn.pt"
            torch.save({"q_network": q_network.member_state_dict(i)}, model_path)
            network = dqn.QNetwork(envs).to(device)
            network.load_state_dict(q_network.member_state_dict(i))
            record.set_evaluation(model_path, dqn.evaluate(network, members[i], device, args.eval_episodes))

        runs.finish(args.total_timesteps, save_model if args.save_model else None)
    envs.close()
    return runs.summaries()


if __name__ == "__main__":
    cli(main, Args)
