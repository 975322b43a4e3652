"""PPO (Schulman et al., 2017) for continuous actions, in CleanRL's single-file style (ppo_continuous_action.py).

Defaults are CleanRL's, on HalfCheetah-v5 (the AlphaGrad paper's). Departures, each a flag: time-limit truncations
bootstrap from the value of the true last observation (CleanRL treats them as terminal:
--no-bootstrap-truncation), same-step autoreset (CleanRL on gymnasium 1.x runs next-step:
--autoreset-mode next-step), and --save-model stores the observation-normalization statistics with the networks so an
evaluation reproduces training conditions. The optimizer comes from the shared factory:
    python agents/ppo_continuous_action.py --optim.name alphagrad --optim.alpha 98
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions.normal import Normal

from alphagrad_rl.envs import evaluate_policy, make_vector_env
from alphagrad_rl.experiment import (
    INF,
    CommonArgs,
    check_common_args,
    cli,
    seed_everything,
    select_device,
    start_run,
    stop_if_nonfinite,
    stop_if_nonfinite_parameters,
    update_diagnostics,
)
from alphagrad_rl.factory import OptimizerSpec, make_alpha_scheduler, make_optimizer


@dataclass
class Args(CommonArgs):
    env_id: str = "HalfCheetah-v5"
    """the id of the environment"""
    total_timesteps: int = 1_000_000
    """total timesteps of the experiments"""
    optim: OptimizerSpec = field(default_factory=lambda: OptimizerSpec(name="adam", lr=3e-4, eps=1e-5))
    """the optimizer (--optim.name, --optim.lr, --optim.alpha, ...); CleanRL's Adam(eps=1e-5) by default"""
    num_envs: int = 1
    """the number of parallel game environments"""
    num_steps: int = 2048
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0 (works with every optimizer)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 32
    """the number of mini-batches"""
    update_epochs: int = 10
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """use a clipped loss for the value function, as per the paper"""
    ent_coef: float = 0.0
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float | None = 0.5
    """the maximum norm for the gradient clipping (None: no clipping; the AlphaGrad author clips only for Adam)"""
    bootstrap_truncation: bool = True
    """a time-limit truncation adds gamma * V(true last observation) to the last reward (CleanRL and the AlphaGrad
    author treat truncations as terminal: --no-bootstrap-truncation)"""
    target_kl: float | None = None
    """the target KL divergence threshold"""


RANGES = {"num_envs": (1, INF, "[)"), "num_steps": (1, INF, "[)"), "gamma": (0, 1, "[]"), "gae_lambda": (0, 1, "[]"),
          "num_minibatches": (1, INF, "[)"), "update_epochs": (1, INF, "[)"), "clip_coef": (0, INF, "()"),
          "ent_coef": (0, INF, "[)"), "vf_coef": (0, INF, "()"), "max_grad_norm": (0, INF, "()"),
          "target_kl": (0, INF, "()")}


def check_args(args: Args) -> None:
    check_common_args(args, args.env_id, gym.spaces.Box, "PPO", RANGES)
    if (args.num_envs * args.num_steps) % args.num_minibatches:
        raise ValueError(f"num_envs * num_steps ({args.num_envs * args.num_steps}) must be divisible by "
                         f"num_minibatches ({args.num_minibatches})")
    if args.total_timesteps < args.num_envs * args.num_steps:
        raise ValueError(f"invalid total_timesteps: {args.total_timesteps} (allowed: at least one rollout, num_envs * "
                         f"num_steps = {args.num_envs * args.num_steps}: the run would never update)")


def make_env(env_id: str, gamma: float):
    def thunk():
        env = gym.make(env_id)
        env = gym.wrappers.FlattenObservation(env)  # deal with dm_control's Dict observation space
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), env.observation_space)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))
        return env

    return thunk


def observation_normalizers(envs: gym.vector.SyncVectorEnv) -> list[gym.wrappers.NormalizeObservation]:
    """The NormalizeObservation wrapper of each sub-environment."""
    normalizers = []
    for env in envs.envs:
        while not isinstance(env, gym.wrappers.NormalizeObservation):
            env = env.env
        normalizers.append(env)
    return normalizers


def observation_statistics(envs: gym.vector.VectorEnv, index: int = 0) -> dict[str, torch.Tensor]:
    """Sub-environment `index`'s observation normalization statistics, saved with the model (evaluate() loads them):
    its NormalizeObservation's, or those a population's NormalizedEnvBatch keeps for it."""
    rms = envs.obs_rms.row(index) if hasattr(envs, "obs_rms") else observation_normalizers(envs)[index].obs_rms
    return {"mean": torch.as_tensor(rms.mean), "var": torch.as_tensor(rms.var), "count": torch.tensor(float(rms.count))}


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, envs: gym.vector.VectorEnv):
        super().__init__()
        obs_dim = int(np.array(envs.single_observation_space.shape).prod())
        action_dim = int(np.prod(envs.single_action_space.shape))
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, action_dim), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, action_dim))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        action_mean = self.actor_mean(x)
        action_std = torch.exp(self.actor_logstd.expand_as(action_mean))
        probs = Normal(action_mean, action_std)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor,
        next_done: torch.Tensor, gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over a rollout (steps first; dones cut it at episode boundaries):
    (advantages, returns)."""
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    lastgaelam = 0
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


class Batch(NamedTuple):
    """One iteration's rollout, flattened over steps and envs."""

    obs: torch.Tensor
    logprobs: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor


def update(agent: Agent, optimizer: torch.optim.Optimizer, alpha_scheduler, args: Args, batch: Batch,
           updates: int, global_step: int) -> tuple[int, dict]:
    """PPO's update epochs on the rollout that ends at env step `global_step` (minibatch order from np.random, as
    CleanRL's): the optimizer step count so far, and the values logged (the last minibatch's losses, the iteration's
    clip fraction, diagnostics)."""
    batch_size = len(batch.logprobs)
    minibatch_size = batch_size // args.num_minibatches
    b_inds = np.arange(batch_size)
    clipfracs = []
    diagnostics = {}
    for _epoch in range(args.update_epochs):
        np.random.shuffle(b_inds)
        for start in range(0, batch_size, minibatch_size):
            mb_inds = b_inds[start:start + minibatch_size]
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(batch.obs[mb_inds], batch.actions[mb_inds])
            logratio = newlogprob - batch.logprobs[mb_inds]
            ratio = logratio.exp()

            with torch.no_grad():
                # calculate approx_kl http://joschu.net/blog/kl-approx.html
                old_approx_kl = (-logratio).mean()
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]

            mb_advantages = batch.advantages[mb_inds]
            if args.norm_adv:
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

            # policy loss
            pg_loss1 = -mb_advantages * ratio
            pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
            pg_loss = torch.max(pg_loss1, pg_loss2).mean()

            # value loss
            newvalue = newvalue.view(-1)
            mb_returns, mb_values = batch.returns[mb_inds], batch.values[mb_inds]
            if args.clip_vloss:
                v_loss_unclipped = (newvalue - mb_returns) ** 2
                v_clipped = mb_values + torch.clamp(newvalue - mb_values, -args.clip_coef, args.clip_coef)
                v_loss_clipped = (v_clipped - mb_returns) ** 2
                v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
            else:
                v_loss = 0.5 * ((newvalue - mb_returns) ** 2).mean()

            entropy_loss = entropy.mean()
            loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
            stop_if_nonfinite(loss, "PPO loss", global_step)

            optimizer.zero_grad()
            loss.backward()
            if args.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            updates += 1
            diagnose = args.diagnostics_interval > 0 and updates % args.diagnostics_interval == 0
            with update_diagnostics(optimizer, "agent", diagnose) as step_diagnostics:
                optimizer.step()
            stop_if_nonfinite_parameters(agent, "PPO agent", global_step)
            diagnostics.update(step_diagnostics)
            if alpha_scheduler is not None:
                alpha_scheduler.step()

        if args.target_kl is not None and approx_kl > args.target_kl:
            break
    return updates, {"losses/value_loss": v_loss.item(), "losses/policy_loss": pg_loss.item(),
                     "losses/entropy": entropy_loss.item(), "losses/old_approx_kl": old_approx_kl.item(),
                     "losses/approx_kl": approx_kl.item(), "losses/clipfrac": float(np.mean(clipfracs)),
                     **diagnostics}


def evaluate(agent: Agent, obs_stats: dict, args: Args, device: torch.device, episodes: int) -> list[float]:
    """Returns of `episodes` episodes with the mean action and the training run's frozen normalization."""
    envs = make_vector_env([make_env(args.env_id, args.gamma)], gym.spaces.Box, "PPO")
    normalizer = observation_normalizers(envs)[0]
    normalizer.update_running_mean = False
    normalizer.obs_rms.mean = obs_stats["mean"].numpy().astype(np.float64)
    normalizer.obs_rms.var = obs_stats["var"].numpy().astype(np.float64)
    normalizer.obs_rms.count = float(obs_stats["count"])

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return agent.actor_mean(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    return evaluate_policy(envs, act, episodes, args.seed + 10_000)


def main(args: Args) -> dict:
    check_args(args)
    seed_everything(args.seed, args.torch_deterministic)
    batch_size = args.num_envs * args.num_steps
    num_iterations = max(1, args.total_timesteps // batch_size)
    if num_iterations * batch_size != args.total_timesteps:
        print(f"note: PPO runs whole iterations of num_envs * num_steps = {batch_size} env steps, so "
              f"--total-timesteps {args.total_timesteps} runs {num_iterations * batch_size} (CleanRL rounds down, "
              "to one iteration at least)", file=sys.stderr)
    envs = make_vector_env([make_env(args.env_id, args.gamma) for _ in range(args.num_envs)], gym.spaces.Box, "PPO",
                           args.autoreset_mode)
    runs = start_run(args, "ppo_continuous_action", args.env_id, args.optim.name, num_iterations * batch_size)
    record = runs.record
    device = select_device(args.cuda)
    with runs:
        agent = Agent(envs).to(device)
        optimizer = make_optimizer(agent.named_parameters(), args.optim)
        alpha_scheduler = make_alpha_scheduler(optimizer, args.optim)

        obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, device=device)
        actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape, device=device)
        logprobs = torch.zeros((args.num_steps, args.num_envs), device=device)
        rewards = torch.zeros((args.num_steps, args.num_envs), device=device)
        dones = torch.zeros((args.num_steps, args.num_envs), device=device)
        values = torch.zeros((args.num_steps, args.num_envs), device=device)

        global_step = 0
        updates = 0
        start_iteration = 1
        next_obs, _ = envs.reset(seed=args.seed)
        next_obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
        next_done = torch.zeros(args.num_envs, device=device)
        # checkpoints fall between iterations: the rollout buffers are refilled, and the lr follows the iteration
        runs.track(agent=agent, optimizer=optimizer, alpha_scheduler=alpha_scheduler, envs=envs)
        if (resumed := runs.restore()) is not None:  # --resume: continue exactly where the checkpoint was
            global_step, updates, start_iteration = resumed["global_step"], resumed["updates"], resumed["iteration"]
            next_obs, next_done = resumed["next_obs"].to(device), resumed["next_done"].to(device)
            for env_index, first_obs in resumed["fresh_obs"].items():  # episodes that could not be continued
                next_obs[env_index] = torch.as_tensor(first_obs, dtype=torch.float32, device=device)
                next_done[env_index] = 1.0

        for iteration in range(start_iteration, num_iterations + 1):
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / num_iterations
                for group in optimizer.param_groups:
                    group["lr"] = frac * args.optim.lr

            for step in range(args.num_steps):
                global_step += args.num_envs
                obs[step] = next_obs
                dones[step] = next_done
                with torch.no_grad():
                    action, logprob, _, value = agent.get_action_and_value(next_obs)
                    values[step] = value.flatten()
                actions[step] = action
                logprobs[step] = logprob

                next_obs_np, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
                reward = torch.as_tensor(reward, dtype=torch.float32, device=device)
                # a time-limit truncation is not a terminal state: bootstrap from the true last observation
                truncated_only = np.flatnonzero(np.logical_and(truncations, np.logical_not(terminations)))
                if args.bootstrap_truncation and truncated_only.size:
                    last_obs = infos["final_obs"] if "final_obs" in infos else next_obs_np  # next-step: next_obs
                    final_obs = torch.as_tensor(np.stack([last_obs[i] for i in truncated_only]),
                                                dtype=torch.float32, device=device)
                    with torch.no_grad():
                        reward[truncated_only] += args.gamma * agent.get_value(final_obs).flatten()
                rewards[step] = reward
                next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32, device=device)
                next_done = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32, device=device)
                runs.log_episodes(global_step, infos)

            with torch.no_grad():
                next_value = agent.get_value(next_obs).reshape(1, -1)
                advantages, returns = gae(rewards, values, dones, next_value, next_done, args.gamma, args.gae_lambda)

            batch = Batch(obs.reshape((-1,) + envs.single_observation_space.shape), logprobs.reshape(-1),
                          actions.reshape((-1,) + envs.single_action_space.shape), advantages.reshape(-1),
                          returns.reshape(-1), values.reshape(-1))
            updates, losses = update(agent, optimizer, alpha_scheduler, args, batch, updates, global_step)

            y_pred, y_true = batch.values.cpu().numpy(), batch.returns.cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
            record.log(global_step, {"charts/learning_rate": optimizer.param_groups[0]["lr"], **losses,
                                     "losses/explained_variance": explained_var, "charts/SPS": record.sps(global_step)})
            record.progress(global_step)
            runs.save_if_due(global_step, global_step=global_step, updates=updates, iteration=iteration + 1,
                             next_obs=next_obs, next_done=next_done)

        def save_model(_member, record):
            obs_stats = observation_statistics(envs)
            model_path = record.run_dir / "ppo_continuous_action.pt"
            torch.save({"agent": agent.state_dict(), "obs_rms": obs_stats}, model_path)
            record.set_evaluation(model_path, evaluate(agent, obs_stats, args, device, args.eval_episodes))

        runs.finish(num_iterations * batch_size, save_model if args.save_model else None)
    envs.close()
    return record.summary


if __name__ == "__main__":
    cli(main, Args)
