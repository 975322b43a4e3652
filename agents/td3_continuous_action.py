"""TD3 (Fujimoto et al., 2018) for continuous actions, in CleanRL's single-file style (td3_continuous_action.py).

Defaults are CleanRL's, on Hopper-v4 (the AlphaGrad paper's; any MuJoCo id works). The actor's and the
critics' optimizers each come from the shared factory and can differ:
    python agents/td3_continuous_action.py --actor-optim.name alphagrad --actor-optim.alpha 150 \\
        --critic-optim.name alphagrad --critic-optim.alpha 150
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from alphagrad_rl.buffers import ReplayBuffer
from alphagrad_rl.envs import evaluate_policy, make_vector_env, true_next_obs
from alphagrad_rl.experiment import (
    INF,
    CommonArgs,
    check_common_args,
    check_learning_budget,
    cli,
    seed_everything,
    select_device,
    start_run,
    stop_if_nonfinite,
    update_diagnostics,
)
from alphagrad_rl.factory import OptimizerSpec, make_alpha_scheduler, make_optimizer


@dataclass
class Args(CommonArgs):
    env_id: str = "Hopper-v4"
    """the id of the environment"""
    total_timesteps: int = 1_000_000
    """total timesteps of the experiments"""
    actor_optim: OptimizerSpec = field(default_factory=lambda: OptimizerSpec(name="adam", lr=3e-4))
    """the actor's optimizer (--actor-optim.name, --actor-optim.lr, --actor-optim.alpha, ...)"""
    critic_optim: OptimizerSpec = field(default_factory=lambda: OptimizerSpec(name="adam", lr=3e-4))
    """the twin critics' optimizer (--critic-optim.name, ...)"""
    num_envs: int = 1
    """the number of parallel game environments"""
    buffer_size: int = 1_000_000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient"""
    batch_size: int = 256
    """the batch size of sample from the replay memory"""
    policy_noise: float = 0.2
    """the scale of policy noise (times the action scale)"""
    exploration_noise: float = 0.1
    """the scale of exploration noise (times the action scale)"""
    learning_starts: int = 25_000
    """timestep to start learning"""
    policy_frequency: int = 2
    """the frequency of training policy (delayed)"""
    noise_clip: float = 0.5
    """noise clip parameter of the Target Policy Smoothing Regularization (times the action scale)"""


RANGES = {"num_envs": (1, INF, "[)"), "buffer_size": (1, INF, "[)"), "gamma": (0, 1, "[]"), "tau": (0, 1, "(]"),
          "batch_size": (1, INF, "[)"), "policy_noise": (0, INF, "[)"), "exploration_noise": (0, INF, "[)"),
          "learning_starts": (0, INF, "[)"), "policy_frequency": (1, INF, "[)"), "noise_clip": (0, INF, "[)")}


def check_args(args: Args) -> None:
    check_common_args(args, args.env_id, gym.spaces.Box, "TD3", RANGES)
    check_learning_budget(args)


def make_env(env_id: str, seed: int, idx: int):
    def thunk():
        env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed + idx)
        return env

    return thunk


class QNetwork(nn.Module):
    def __init__(self, env: gym.vector.VectorEnv):
        super().__init__()
        obs_dim = int(np.array(env.single_observation_space.shape).prod())
        action_dim = int(np.prod(env.single_action_space.shape))
        self.fc1 = nn.Linear(obs_dim + action_dim, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 1)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, a], 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Actor(nn.Module):
    def __init__(self, env: gym.vector.VectorEnv):
        super().__init__()
        obs_dim = int(np.array(env.single_observation_space.shape).prod())
        action_dim = int(np.prod(env.single_action_space.shape))
        self.fc1 = nn.Linear(obs_dim, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc_mu = nn.Linear(256, action_dim)
        # action rescaling
        high, low = env.single_action_space.high, env.single_action_space.low
        self.register_buffer("action_scale", torch.tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.squashed(x) * self.action_scale + self.action_bias

    def squashed(self, x: torch.Tensor) -> torch.Tensor:
        """The tanh output in [-1, 1], before it is rescaled to the action bounds."""
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return torch.tanh(self.fc_mu(x))


def evaluate(actor: Actor, args: Args, device: torch.device, episodes: int) -> list[float]:
    """Returns of `episodes` episodes with the deterministic policy (no exploration noise)."""
    envs = make_vector_env([make_env(args.env_id, args.seed + 10_000, 0)], gym.spaces.Box, "TD3")

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return actor(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    return evaluate_policy(envs, act, episodes, args.seed + 10_000)


def resume_point(resumed: dict) -> tuple[int, np.ndarray, int, int, torch.Tensor | None]:
    """Where a checkpoint left the loop: the step, the observations (an env that could not be restored starts a
    fresh episode: its first observation), the critic and actor update counts and the last actor loss."""
    obs = resumed["obs"]
    for env_index, first_obs in resumed["fresh_obs"].items():
        obs[env_index] = first_obs
    actor_loss = None if resumed["actor_loss"] is None else torch.tensor(resumed["actor_loss"])
    return resumed["global_step"], obs, resumed["critic_updates"], resumed["actor_updates"], actor_loss


def main(args: Args) -> dict:
    check_args(args)
    seed_everything(args.seed, args.torch_deterministic)
    envs = make_vector_env([make_env(args.env_id, args.seed + i, i) for i in range(args.num_envs)],
                           gym.spaces.Box, "TD3",
                           args.autoreset_mode)
    optimizer_name = (args.actor_optim.name if args.actor_optim.name == args.critic_optim.name
                      else f"{args.actor_optim.name}+{args.critic_optim.name}")
    runs = start_run(args, "td3_continuous_action", args.env_id, optimizer_name, args.total_timesteps)
    record = runs.record
    device = select_device(args.cuda)
    with runs:
        actor = Actor(envs).to(device)
        qf1 = QNetwork(envs).to(device)
        qf2 = QNetwork(envs).to(device)
        qf1_target = QNetwork(envs).to(device)
        qf2_target = QNetwork(envs).to(device)
        target_actor = Actor(envs).to(device)
        target_actor.load_state_dict(actor.state_dict())
        qf1_target.load_state_dict(qf1.state_dict())
        qf2_target.load_state_dict(qf2.state_dict())
        q_optimizer = make_optimizer([(f"qf1.{n}", p) for n, p in qf1.named_parameters()]
                                     + [(f"qf2.{n}", p) for n, p in qf2.named_parameters()], args.critic_optim)
        actor_optimizer = make_optimizer(actor.named_parameters(), args.actor_optim)
        alpha_schedulers = [s for s in (make_alpha_scheduler(q_optimizer, args.critic_optim),
                                        make_alpha_scheduler(actor_optimizer, args.actor_optim)) if s is not None]

        action_low = torch.as_tensor(envs.single_action_space.low, device=device)
        action_high = torch.as_tensor(envs.single_action_space.high, device=device)
        rb = ReplayBuffer(args.buffer_size, envs.single_observation_space.shape, envs.single_action_space.shape,
                          np.float32, device)
        rng = np.random.default_rng(args.seed)
        start_step = critic_updates = actor_updates = 0
        actor_loss = None

        obs, _ = envs.reset(seed=args.seed)
        runs.track(actor=actor, qf1=qf1, qf2=qf2, target_actor=target_actor, qf1_target=qf1_target,
                   qf2_target=qf2_target, q_optimizer=q_optimizer, actor_optimizer=actor_optimizer,
                   **{f"alpha_scheduler{i}": s for i, s in enumerate(alpha_schedulers)},
                   replay_buffer=rb, envs=envs, rng=rng)
        if (resumed := runs.restore()) is not None:  # --resume: continue exactly where the checkpoint was
            start_step, obs, critic_updates, actor_updates, actor_loss = resume_point(resumed)

        for global_step in range(start_step, args.total_timesteps):
            if global_step < args.learning_starts:
                actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
            else:
                with torch.no_grad():
                    actions = actor(torch.as_tensor(obs, dtype=torch.float32, device=device))
                    actions += torch.normal(0, actor.action_scale * args.exploration_noise)
                    actions = actions.cpu().numpy().clip(envs.single_action_space.low, envs.single_action_space.high)

            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            runs.log_episodes(global_step, infos)

            # the true last observation of finished episodes, never the next episode's first
            rb.add(obs, true_next_obs(next_obs, terminations, truncations, infos), actions, rewards, terminations)
            obs = next_obs

            if global_step > args.learning_starts:
                data = rb.sample(args.batch_size, rng)
                with torch.no_grad():
                    clipped_noise = (torch.randn_like(data.actions) * args.policy_noise).clamp(
                        -args.noise_clip, args.noise_clip) * target_actor.action_scale
                    next_state_actions = (target_actor(data.next_observations) + clipped_noise).clamp(
                        action_low, action_high)
                    qf1_next_target = qf1_target(data.next_observations, next_state_actions)
                    qf2_next_target = qf2_target(data.next_observations, next_state_actions)
                    min_qf_next_target = torch.min(qf1_next_target, qf2_next_target)
                    next_q_value = data.rewards.flatten() + (1 - data.terminations.flatten()) * args.gamma * (
                        min_qf_next_target).view(-1)

                qf1_a_values = qf1(data.observations, data.actions).view(-1)
                qf2_a_values = qf2(data.observations, data.actions).view(-1)
                qf1_loss = F.mse_loss(qf1_a_values, next_q_value)
                qf2_loss = F.mse_loss(qf2_a_values, next_q_value)
                qf_loss = qf1_loss + qf2_loss
                stop_if_nonfinite(qf_loss, "critic loss", global_step)

                # optimize the model
                q_optimizer.zero_grad()
                qf_loss.backward()
                critic_updates += 1
                with update_diagnostics(q_optimizer, "critic", args.diagnostics_interval > 0
                                        and critic_updates % args.diagnostics_interval == 0) as diagnostics:
                    q_optimizer.step()

                if global_step % args.policy_frequency == 0:
                    actor_loss = -qf1(data.observations, actor(data.observations)).mean()
                    stop_if_nonfinite(actor_loss, "actor loss", global_step)
                    actor_optimizer.zero_grad()
                    actor_loss.backward()
                    actor_updates += 1
                    with update_diagnostics(actor_optimizer, "actor", args.diagnostics_interval > 0
                                            and actor_updates % args.diagnostics_interval == 0) as actor_diagnostics:
                        actor_optimizer.step()
                    diagnostics.update(actor_diagnostics)

                    # update the target network
                    with torch.no_grad():
                        for net, target in ((actor, target_actor), (qf1, qf1_target), (qf2, qf2_target)):
                            for param, target_param in zip(net.parameters(), target.parameters()):
                                target_param.data.copy_(args.tau * param.data + (1 - args.tau) * target_param.data)
                for scheduler in alpha_schedulers:
                    scheduler.step()

                if global_step % 100 == 0:
                    actor_logged = {"losses/actor_loss": actor_loss.item()} if actor_loss is not None else {}
                    with torch.no_grad():  # where tanh is exactly +-1 (float32) its gradient is 0; at 1 the actor is stuck
                        saturated = (actor.squashed(data.observations).abs() == 1).float().mean().item()
                    record.log(global_step, {
                        "losses/qf1_values": qf1_a_values.mean().item(), "losses/qf2_values": qf2_a_values.mean().item(),
                        "losses/qf1_loss": qf1_loss.item(), "losses/qf2_loss": qf2_loss.item(),
                        "losses/qf_loss": qf_loss.item() / 2.0, **actor_logged, "losses/actor_saturated": saturated,
                        "charts/SPS": record.sps(global_step), **diagnostics,
                    })
                elif diagnostics:
                    record.log(global_step, diagnostics)

            runs.save_if_due(global_step + 1, global_step=global_step + 1, obs=obs, critic_updates=critic_updates,
                             actor_updates=actor_updates, actor_loss=None if actor_loss is None else actor_loss.item())

        def save_model(_member, record):
            model_path = record.run_dir / "td3_continuous_action.pt"
            torch.save({"actor": actor.state_dict(), "qf1": qf1.state_dict(), "qf2": qf2.state_dict()}, model_path)
            record.set_evaluation(model_path, evaluate(actor, args, device, args.eval_episodes))

        runs.finish(args.total_timesteps, save_model if args.save_model else None)
    envs.close()
    return record.summary


if __name__ == "__main__":
    cli(main, Args)
