"""DQN (Mnih et al., 2015) for discrete-action gymnasium environments, in CleanRL's single-file style.

Defaults are CleanRL's dqn.py (CartPole-v1). The optimizer comes from the shared factory:
    python agents/dqn.py --optim.name alphagrad --optim.alpha 93
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
    env_id: str = "CartPole-v1"
    """the id of the environment"""
    total_timesteps: int = 500_000
    """total timesteps of the experiment"""
    optim: OptimizerSpec = field(default_factory=lambda: OptimizerSpec(name="adam", lr=2.5e-4))
    """the Q-network's optimizer (--optim.name, --optim.lr, --optim.alpha, ...)"""
    num_envs: int = 1
    """the number of parallel game environments"""
    buffer_size: int = 10_000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 1.0
    """the target network update rate (1.0: hard copy)"""
    target_network_frequency: int = 500
    """the timesteps it takes to update the target network"""
    batch_size: int = 128
    """the batch size of samples from the replay memory"""
    start_e: float = 1.0
    """the starting epsilon for exploration"""
    end_e: float = 0.05
    """the ending epsilon for exploration"""
    exploration_fraction: float = 0.5
    """the fraction of total-timesteps it takes from start-e to go end-e"""
    learning_starts: int = 10_000
    """timestep to start learning"""
    train_frequency: int = 10
    """the frequency of training"""


RANGES = {"num_envs": (1, INF, "[)"), "buffer_size": (1, INF, "[)"), "gamma": (0, 1, "[]"), "tau": (0, 1, "(]"),
          "target_network_frequency": (1, INF, "[)"), "batch_size": (1, INF, "[)"), "start_e": (0, 1, "[]"),
          "end_e": (0, 1, "[]"), "exploration_fraction": (0, 1, "(]"), "learning_starts": (0, INF, "[)"),
          "train_frequency": (1, INF, "[)")}


def check_args(args: Args) -> None:
    check_common_args(args, args.env_id, gym.spaces.Discrete, "DQN", RANGES)
    check_learning_budget(args)
    if args.end_e > args.start_e:
        raise ValueError(f"invalid end_e: {args.end_e} (allowed: at most start_e, {args.start_e}: epsilon decays)")


def make_env(env_id: str, seed: int, idx: int):
    def thunk():
        env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed + idx)
        return env

    return thunk


class QNetwork(nn.Module):
    def __init__(self, envs: gym.vector.VectorEnv):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(int(np.prod(envs.single_observation_space.shape)), 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, envs.single_action_space.n),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def linear_schedule(start_e: float, end_e: float, duration: float, t: int) -> float:
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def evaluate(q_network: QNetwork, args: Args, device: torch.device, episodes: int, epsilon: float = 0.05):
    """Returns of `episodes` epsilon-greedy episodes (CleanRL's dqn_eval uses epsilon 0.05)."""
    envs = make_vector_env([make_env(args.env_id, args.seed + 10_000, 0)], gym.spaces.Discrete, "DQN")
    rng = np.random.default_rng(args.seed + 10_000)

    def act(obs: np.ndarray) -> np.ndarray:
        if rng.random() < epsilon:
            return np.array([envs.single_action_space.sample()])
        with torch.no_grad():
            return torch.argmax(q_network(torch.as_tensor(obs, device=device)), dim=1).cpu().numpy()

    return evaluate_policy(envs, act, episodes, args.seed + 10_000)


def main(args: Args) -> dict:
    check_args(args)
    seed_everything(args.seed, args.torch_deterministic)
    envs = make_vector_env([make_env(args.env_id, args.seed + i, i) for i in range(args.num_envs)],
                           gym.spaces.Discrete, "DQN",
                           args.autoreset_mode)
    runs = start_run(args, "dqn", args.env_id, args.optim.name, args.total_timesteps)
    record = runs.record
    device = select_device(args.cuda)
    with runs:
        q_network = QNetwork(envs).to(device)
        optimizer = make_optimizer(q_network.named_parameters(), args.optim)
        alpha_scheduler = make_alpha_scheduler(optimizer, args.optim)
        target_network = QNetwork(envs).to(device)
        target_network.load_state_dict(q_network.state_dict())
        rb = ReplayBuffer(args.buffer_size, envs.single_observation_space.shape, (), np.int64, device)
        rng = np.random.default_rng(args.seed)
        start_step = updates = 0

        obs, _ = envs.reset(seed=args.seed)
        runs.track(q_network=q_network, target_network=target_network, optimizer=optimizer,
                   alpha_scheduler=alpha_scheduler, replay_buffer=rb, envs=envs, rng=rng)
        if (resumed := runs.restore()) is not None:  # --resume: continue exactly where the checkpoint was
            start_step, updates, obs = resumed["global_step"], resumed["updates"], resumed["obs"]
            for env_index, first_obs in resumed["fresh_obs"].items():
                obs[env_index] = first_obs

        for global_step in range(start_step, args.total_timesteps):
            epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps,
                                      global_step)
            if rng.random() < epsilon:
                actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
            else:
                with torch.no_grad():
                    actions = torch.argmax(q_network(torch.as_tensor(obs, device=device)), dim=1).cpu().numpy()

            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            runs.log_episodes(global_step, infos)

            # the true last observation of finished episodes, never the next episode's first
            rb.add(obs, true_next_obs(next_obs, terminations, truncations, infos), actions, rewards, terminations)
            obs = next_obs

            if global_step > args.learning_starts:
                if global_step % args.train_frequency == 0:
                    data = rb.sample(args.batch_size, rng)
                    with torch.no_grad():
                        target_max, _ = target_network(data.next_observations).max(dim=1)
                        td_target = data.rewards.flatten() + args.gamma * target_max * (1 - data.terminations.flatten())
                    old_val = q_network(data.observations).gather(1, data.actions.view(-1, 1)).squeeze(1)
                    loss = F.mse_loss(td_target, old_val)
                    stop_if_nonfinite(loss, "TD loss", global_step)

                    optimizer.zero_grad()
                    loss.backward()
                    updates += 1
                    diagnose = args.diagnostics_interval > 0 and updates % args.diagnostics_interval == 0
                    with update_diagnostics(optimizer, "q", diagnose) as diagnostics:
                        optimizer.step()
                    if alpha_scheduler is not None:
                        alpha_scheduler.step()
                    if global_step % 100 == 0:
                        record.log(global_step, {"losses/td_loss": loss.item(), "losses/q_values": old_val.mean().item(),
                                                 "charts/SPS": record.sps(global_step), "charts/epsilon": epsilon,
                                                 **diagnostics})
                    elif diagnostics:
                        record.log(global_step, diagnostics)

                if global_step % args.target_network_frequency == 0:
                    for target_param, q_param in zip(target_network.parameters(), q_network.parameters()):
                        target_param.data.copy_(args.tau * q_param.data + (1.0 - args.tau) * target_param.data)

            runs.save_if_due(global_step + 1, global_step=global_step + 1, updates=updates, obs=obs)

        def save_model(_member, record):
            model_path = record.run_dir / "dqn.pt"
            torch.save({"q_network": q_network.state_dict()}, model_path)
            record.set_evaluation(model_path, evaluate(q_network, args, device, args.eval_episodes))

        runs.finish(args.total_timesteps, save_model if args.save_model else None)
    envs.close()
    return record.summary


if __name__ == "__main__":
    cli(main, Args)
