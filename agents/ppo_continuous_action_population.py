"""PPO for a population: N runs of agents/ppo_continuous_action.py trained at once in one process, in CleanRL's
single-file style.

Member i is the run of agents/ppo_continuous_action.py with seed `seeds[i]` (and, for AlphaGrad, `alphas[i]` /
`lrs[i]`): its own environments with the same wrappers (its own observation and reward normalization), its agent
initialized as that run's, its own action noise (a torch Generator that continues that run's global one), its own
minibatch order (a numpy RandomState like that run's global one), advantage normalization over its own minibatch,
gradient clipping by the norm of its own gradients, its own target-KL early stop and annealed learning rate, and
its own run record in the standard format. What members share is the process: their networks are stacked (one
batched matmul per layer) and one optimizer steps them all, AlphaGrad and AGR normalizing each member apart. The
losses are summed, so member i's gradient is exactly its own loss's. A member whose loss turns non-finite is marked
crashed in its own record (its single-file run would have stopped there) while the others go on.
    python agents/ppo_continuous_action_population.py --population-size 10 --optim.name alphagrad --optim.alpha 98
    python agents/ppo_continuous_action_population.py --seeds 1 2 3 --optim.name alphagrad --alphas 98 196 294
Checkpoints cover the whole population (in member 0's folder) and --resume continues it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from alphagrad_rl.agents import ppo_continuous_action as ppo
from torch.distributions.normal import Normal

from alphagrad_rl import population
from alphagrad_rl.envs import make_vector_env
from alphagrad_rl.experiment import cli, seed_everything, select_device, update_diagnostics
from alphagrad_rl.normalized_batch import NormalizedEnvBatch, supports
from alphagrad_rl.population import (
    PopulationOptions,
    StackedSequential,
    check_population_args,
    clip_grad_norm_per_member,
    crashed_members,
    make_population_optimizer,
    member_state_tensors,
    open_population,
    step_members,
)


@dataclass
class Args(ppo.Args, PopulationOptions):
    env_batch: bool = True
    """step MuJoCo members' environments and their normalization wrappers in numpy batches
    (alphagrad_rl/normalized_batch.py: bit-identical to agents/ppo_continuous_action.py's make_env in a SyncVectorEnv)"""


def member_args(args: Args) -> list[ppo.Args]:
    """The agents/ppo_continuous_action.py options of each member (what its run record holds)."""
    return population.member_args(args, ppo.Args, "PPO")


def check_args(args: Args) -> None:
    members = check_population_args(args, ppo.Args, ppo.check_args, "PPO")
    if args.target_kl is not None:  # an early-stopped member skips steps: its optimizer state must be its own
        stand_in = nn.Parameter(torch.zeros(len(members), 2))
        optimizer = make_population_optimizer([("stand_in", stand_in)], members)
        stand_in.grad = torch.ones_like(stand_in)
        optimizer.step()
        try:
            member_state_tensors(optimizer, len(members))
        except ValueError as error:
            raise ValueError(f"--target-kl in a population: {error} (optimizers with per-member state only, "
                             "such as AlphaGrad or SGD)") from None


class PopulationAgent(nn.Module):
    """The members' ppo.Agent networks stacked: critic and actor mean (members, batch, .) and actor_logstd
    (members, 1, action_dim)."""

    def __init__(self, agents: list[ppo.Agent]):
        super().__init__()
        self.critic = StackedSequential([agent.critic for agent in agents])
        self.actor_mean = StackedSequential([agent.actor_mean for agent in agents])
        self.actor_logstd = nn.Parameter(torch.stack([agent.actor_logstd.detach() for agent in agents]))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None,
                             generators: list[torch.Generator] | None = None):
        """ppo.Agent.get_action_and_value for every member: x (members, batch, obs); member i's action noise is
        drawn from generators[i] as its run draws it from torch's global generator (Normal.sample)."""
        action_mean = self.actor_mean(x)
        action_std = torch.exp(self.actor_logstd.expand_as(action_mean))
        probs = Normal(action_mean, action_std, validate_args=False)  # a crashed member's NaN must not stop the rest
        if action is None:
            with torch.no_grad():
                action = torch.stack([torch.normal(action_mean[i], action_std[i], generator=generator)
                                      for i, generator in enumerate(generators)])
        return action, probs.log_prob(action).sum(2), probs.entropy().sum(2), self.critic(x)

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member `member`'s weights as a ppo.Agent state_dict."""
        return {**self.critic.member_state_dict(member, "critic."),
                **self.actor_mean.member_state_dict(member, "actor_mean."),
                "actor_logstd": self.actor_logstd[member].detach().clone()}


def member_generators(members: list[ppo.Args], device: torch.device) -> tuple[list[ppo.Agent], list[torch.Generator]]:
    """Each member's agent, initialized as its run initializes it, and the torch Generator its run would sample
    actions from next (CPU: the global generator's state after the initialization; CUDA: the CUDA generator,
    which the CPU initialization leaves at its seed)."""
    agents, generators = [], []
    envs = make_vector_env([ppo.make_env(members[0].env_id, members[0].gamma)], gym.spaces.Box, "PPO")
    for member in members:
        seed_everything(member.seed, member.torch_deterministic)
        agents.append(ppo.Agent(envs))
        generator = torch.Generator(device=device)
        if device.type == "cpu":
            generator.set_state(torch.get_rng_state())
        else:
            generator.manual_seed(member.seed)
        generators.append(generator)
    envs.close()
    return agents, generators


def ppo_losses(agent: PopulationAgent, args: Args, mb_obs, mb_logprobs, mb_actions, mb_advantages, mb_returns,
               mb_values):
    """agents/ppo_continuous_action.py's minibatch loss for every member at once (each tensor (members, minibatch,
    ...)): (members,) losses and the per-member statistics it logs."""
    _, newlogprob, entropy, newvalue = agent.get_action_and_value(mb_obs, mb_actions)
    logratio = newlogprob - mb_logprobs
    ratio = logratio.exp()
    with torch.no_grad():
        old_approx_kl = (-logratio).mean(1)
        approx_kl = ((ratio - 1) - logratio).mean(1)
        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean(1)
    if args.norm_adv:
        mb_advantages = (mb_advantages - mb_advantages.mean(1, keepdim=True)) / (mb_advantages.std(1, keepdim=True)
                                                                                 + 1e-8)
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean(1)
    newvalue = newvalue.squeeze(2)
    if args.clip_vloss:
        v_loss_unclipped = (newvalue - mb_returns) ** 2
        v_clipped = mb_values + torch.clamp(newvalue - mb_values, -args.clip_coef, args.clip_coef)
        v_loss_clipped = (v_clipped - mb_returns) ** 2
        v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean(1)
    else:
        v_loss = 0.5 * ((newvalue - mb_returns) ** 2).mean(1)
    entropy_loss = entropy.mean(1)
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
    stats = {"losses/value_loss": v_loss, "losses/policy_loss": pg_loss, "losses/entropy": entropy_loss,
             "losses/old_approx_kl": old_approx_kl, "losses/approx_kl": approx_kl}
    return loss, {key: value.detach() for key, value in stats.items()}, clipfrac


def update(agent: PopulationAgent, optimizer: torch.optim.Optimizer, args: Args, batch: ppo.Batch,
           rngs: list[np.random.RandomState], alive: list[bool], updates: int) -> tuple[int, list[dict], list]:
    """ppo.update for every live member at once (batch tensors (members, batch, ...); member i's minibatch order
    from rngs[i], as its run's from np.random): the optimizer step count so far, each member's logged values, and
    the (member, reason) of members whose loss or gradient turned non-finite."""
    size, batch_size = len(alive), batch.logprobs.shape[1]
    minibatch_size = batch_size // args.num_minibatches
    members_index = torch.arange(size, device=batch.obs.device).unsqueeze(1)
    b_inds = [np.arange(batch_size) for _ in range(size)]
    clipfracs = [[] for _ in range(size)]
    diagnostics: list[dict] = [{} for _ in range(size)]
    stepping = list(alive)  # members still in their update epochs (a target-KL stop ends a member's)
    crashed = []
    last: dict[str, torch.Tensor] = {}
    for _epoch in range(args.update_epochs):
        for i in (i for i in range(size) if stepping[i]):
            rngs[i].shuffle(b_inds[i])
        for start in range(0, batch_size, minibatch_size):
            mb = torch.as_tensor(np.stack([inds[start:start + minibatch_size] for inds in b_inds]),
                                 device=batch.obs.device)
            loss, stats, clipfrac = ppo_losses(agent, args, *(part[members_index, mb] for part in batch))
            optimizer.zero_grad()
            loss.sum().backward()  # member i's gradient is its own loss's
            if args.max_grad_norm is not None:
                clip_grad_norm_per_member(list(agent.parameters()), args.max_grad_norm, size)
            for i in crashed_members(loss, optimizer, [], "skip"):
                if stepping[i]:
                    stepping[i] = False
                    crashed.append((i, "non-finite PPO loss"))
            updates += 1
            diagnose = args.diagnostics_interval > 0 and updates % args.diagnostics_interval == 0
            skipped_before = list(optimizer.param_groups[0].get("skipped_steps") or [])
            with update_diagnostics(optimizer, "agent", diagnose, members=size) as step_diagnostics:
                step_members(optimizer, stepping, shared_ok=args.target_kl is None)
            for i in crashed_members(loss, optimizer, skipped_before, args.optim.nonfinite):
                if stepping[i]:
                    stepping[i] = False
                    crashed.append((i, "non-finite gradient"))
            active = torch.tensor(stepping, device=loss.device)
            for key, value in stats.items():  # each member's values of the last minibatch it stepped on
                last[key] = torch.where(active, value, last[key]) if key in last else value
            for i in (i for i in range(size) if stepping[i]):
                clipfracs[i].append(clipfrac[i].item())
                diagnostics[i].update({key: value[i] for key, value in step_diagnostics.items()})
        if args.target_kl is not None:
            for i in range(size):
                if stepping[i] and last["losses/approx_kl"][i] > args.target_kl:
                    stepping[i] = False
        if not any(stepping):
            break
    logged = [{**{key: value[i].item() for key, value in last.items()},
               "losses/clipfrac": float(np.mean(clipfracs[i])) if clipfracs[i] else float("nan"), **diagnostics[i]}
              for i in range(size)]
    return updates, logged, crashed


def main(args: Args) -> list[dict]:
    check_args(args)
    members = member_args(args)
    size, k = len(members), args.num_envs
    batch_size = args.num_envs * args.num_steps
    num_iterations = max(1, args.total_timesteps // batch_size)
    # one vector env: sub-envs i * k ... i * k + k - 1 are member i's (its run's make_env, reset with its seeds)
    if args.env_batch and supports(args.env_id):
        envs = NormalizedEnvBatch(args.env_id, [m.gamma for m in members for _ in range(k)], args.autoreset_mode)
    else:
        envs = make_vector_env([ppo.make_env(m.env_id, m.gamma) for m in members for _ in range(k)], gym.spaces.Box,
                               "PPO", args.autoreset_mode)
    device = select_device(args.cuda)
    agents, generators = member_generators(members, device)
    agent = PopulationAgent(agents).to(device)
    optimizer = make_population_optimizer(agent.named_parameters(), members)
    runs = open_population(args, members, "ppo_continuous_action", num_iterations * batch_size, envs_per_member=k)
    rngs = [np.random.RandomState(m.seed) for m in members]  # each run's np.random (minibatch order)
    obs_shape, action_shape = envs.single_observation_space.shape, envs.single_action_space.shape

    obs = torch.zeros((args.num_steps, size, k) + obs_shape, device=device)
    actions = torch.zeros((args.num_steps, size, k) + action_shape, device=device)
    logprobs = torch.zeros((args.num_steps, size, k), device=device)
    rewards = torch.zeros((args.num_steps, size, k), device=device)
    dones = torch.zeros((args.num_steps, size, k), device=device)
    values = torch.zeros((args.num_steps, size, k), device=device)

    global_step, updates, start_iteration = 0, 0, 1
    next_obs, _ = envs.reset(seed=[m.seed + j for m in members for j in range(k)])
    next_obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device).view((size, k) + obs_shape)
    next_done = torch.zeros((size, k), device=device)
    with runs:  # checkpoints fall between iterations, as in the single-file agent
        runs.track(agent=agent, optimizer=optimizer, envs=envs, **{f"rng{i}": rng for i, rng in enumerate(rngs)},
                   **{f"generator{i}": generator for i, generator in enumerate(generators)})
        if (resumed := runs.restore()) is not None:  # --resume: continue exactly where it was
            global_step, updates, start_iteration = resumed["global_step"], resumed["updates"], resumed["iteration"]
            next_obs, next_done = resumed["next_obs"].to(device), resumed["next_done"].to(device)
            for env_index, first_obs in resumed["fresh_obs"].items():  # episodes that could not be continued
                next_obs[env_index // k, env_index % k] = torch.as_tensor(first_obs, device=device)
                next_done[env_index // k, env_index % k] = 1.0
        for iteration in range(start_iteration, num_iterations + 1):
            frac = 1.0 - (iteration - 1.0) / num_iterations if args.anneal_lr else 1.0
            lrs = [frac * m.optim.lr for m in members]  # the same for every member unless AlphaGrad's differ
            if args.anneal_lr:
                for group in optimizer.param_groups:
                    group["lr"] = lrs if args.optim.name == "alphagrad" else lrs[0]

            for step in range(args.num_steps):
                global_step += args.num_envs
                obs[step] = next_obs
                dones[step] = next_done
                with torch.no_grad():
                    action, logprob, _, value = agent.get_action_and_value(next_obs, generators=generators)
                    values[step] = value.squeeze(2)
                actions[step] = action
                logprobs[step] = logprob

                if not all(runs.alive):  # a crashed member's envs go on with zero actions, unrecorded
                    action[torch.as_tensor([not a for a in runs.alive], device=device)] = 0.0
                next_obs_np, reward, terminations, truncations, infos = envs.step(
                    action.reshape((size * k,) + action_shape).cpu().numpy())
                reward = torch.as_tensor(reward, dtype=torch.float32, device=device)
                truncated_only = np.flatnonzero(np.logical_and(truncations, np.logical_not(terminations)))
                if args.bootstrap_truncation and truncated_only.size:
                    last_obs = infos["final_obs"] if "final_obs" in infos else next_obs_np
                    final_obs = np.array(next_obs_np, dtype=np.float32)
                    for i in truncated_only:
                        final_obs[i] = last_obs[i]
                    with torch.no_grad():
                        final_values = agent.get_value(torch.as_tensor(final_obs, device=device).view(
                            (size, k) + obs_shape)).flatten()
                    reward[truncated_only] += args.gamma * final_values[truncated_only]
                rewards[step] = reward.view(size, k)
                next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32, device=device).view((size, k) + obs_shape)
                next_done = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32,
                                            device=device).view(size, k)
                runs.log_episodes(global_step, infos)

            with torch.no_grad():  # generalized advantage estimation, every member's at once (elementwise)
                next_value = agent.get_value(next_obs).squeeze(2)
                advantages, returns = ppo.gae(rewards, values, dones, next_value, next_done, args.gamma,
                                              args.gae_lambda)

            def flat(x: torch.Tensor) -> torch.Tensor:  # (steps, members, envs, ...) -> (members, steps * envs, ...)
                return x.transpose(0, 1).reshape((size, batch_size) + x.shape[3:])

            batch = ppo.Batch(flat(obs), flat(logprobs), flat(actions), flat(advantages), flat(returns), flat(values))
            updates, logged, crashed = update(agent, optimizer, args, batch, rngs, runs.alive, updates)
            for i, reason in crashed:  # its run would have stopped here; the others go on
                runs.crash(i, f"{reason} at step {global_step}")

            y_pred, y_true = batch.values.cpu().numpy(), batch.returns.cpu().numpy()
            for i, record in runs.live():
                var_y = np.var(y_true[i])
                explained_var = np.nan if var_y == 0 else 1 - np.var(y_true[i] - y_pred[i]) / var_y
                record.log(global_step, {"charts/learning_rate": lrs[i], **logged[i],
                                         "losses/explained_variance": explained_var, "charts/SPS": record.sps(global_step)})
                record.progress(global_step)
            if not any(runs.alive):
                break
            runs.save_if_due(global_step, global_step=global_step, updates=updates, iteration=iteration + 1,
                             next_obs=next_obs, next_done=next_done)

        def save_model(i, record):
            obs_stats = ppo.observation_statistics(envs, i * k)
            model_path = record.run_dir / "ppo_continuous_action.pt"
            torch.save({"agent": agent.member_state_dict(i), "obs_rms": obs_stats}, model_path)
            single = agents[i].to(device)
            single.load_state_dict(agent.member_state_dict(i))
            record.set_evaluation(model_path, ppo.evaluate(single, obs_stats, members[i], device, args.eval_episodes))

        runs.finish(num_iterations * batch_size, save_model if args.save_model else None)
    envs.close()
    return runs.summaries()


if __name__ == "__main__":
    cli(main, Args)
