"""Size and speed of a full TD3 Hopper checkpoint (the issue-6 measurement; not part of the tests).

Fills TD3's replay buffer with `--transitions` real Hopper-v4 transitions under random actions (short
episodes, so many episode ends: the compact storage's worst case), builds TD3's networks and Adam
optimizers (with state, after a few updates), then writes one checkpoint with alphagrad_rl.checkpoint and
reads it back. Reports the buffer's size in memory, the checkpoint's size on disk, and the save and
load times; checks the restored buffer equals the original.
    python scripts/bench_checkpoint.py                      # 1M transitions, ~6 min to fill on one core
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro
from alphagrad_rl.agents.td3_continuous_action import Actor, QNetwork, make_env

from alphagrad_rl.buffers import ReplayBuffer
from alphagrad_rl.checkpoint import Checkpointer
from alphagrad_rl.envs import make_vector_env, true_next_obs
from alphagrad_rl.factory import OptimizerSpec, make_optimizer

BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "terminations")


@dataclass
class Args:
    env_id: str = "Hopper-v4"
    """the environment whose transitions fill the buffer"""
    transitions: int = 1_000_000
    """transitions in the buffer (its capacity)"""
    seed: int = 1
    """seed of the environment and the random actions"""


def main(args: Args) -> None:
    torch.set_num_threads(1)
    envs = make_vector_env([make_env(args.env_id, args.seed, 0)], gym.spaces.Box, "TD3")
    buffer = ReplayBuffer(args.transitions, envs.single_observation_space.shape, envs.single_action_space.shape,
                          np.float32, torch.device("cpu"))
    obs, _ = envs.reset(seed=args.seed)
    start, episodes = time.perf_counter(), 0
    for _ in range(args.transitions):
        actions = envs.action_space.sample()
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        buffer.add(obs, true_next_obs(next_obs, terminations, truncations, infos), actions, rewards, terminations)
        episodes += int(np.logical_or(terminations, truncations).sum())
        obs = next_obs
    print(f"filled {len(buffer):,} transitions ({episodes:,} episodes) in {time.perf_counter() - start:.0f} s")

    actor, qf1, qf2 = Actor(envs), QNetwork(envs), QNetwork(envs)
    actor_optimizer = make_optimizer(actor.named_parameters(), OptimizerSpec(name="adam", lr=3e-4))
    q_optimizer = make_optimizer(list(qf1.named_parameters()) + [(f"qf2.{n}", p) for n, p in qf2.named_parameters()],
                                 OptimizerSpec(name="adam", lr=3e-4))
    rng = np.random.default_rng(args.seed)
    for _ in range(3):  # give the optimizers their state
        data = buffer.sample(256, rng)
        loss = qf1(data.observations, data.actions).pow(2).mean() + qf2(data.observations, data.actions).pow(2).mean()
        q_optimizer.zero_grad()
        loss.backward()
        q_optimizer.step()
        actor_loss = -qf1(data.observations, actor(data.observations)).mean()
        actor_optimizer.zero_grad()
        actor_loss.backward()
        actor_optimizer.step()

    in_memory = sum(getattr(buffer, name).nbytes for name in BUFFER_ARRAYS)
    with tempfile.TemporaryDirectory() as run_dir:
        saver = Checkpointer(run_dir, "td3_continuous_action", {"env_id": args.env_id})
        tracked = dict(actor=actor, qf1=qf1, qf2=qf2, q_optimizer=q_optimizer, actor_optimizer=actor_optimizer,
                       replay_buffer=buffer, envs=envs, rng=rng)
        saver.track(**tracked)
        start = time.perf_counter()
        path = saver.save(args.transitions, obs=obs)
        save_s = time.perf_counter() - start
        on_disk = path.stat().st_size + path.with_suffix(".json").stat().st_size

        loader = Checkpointer(run_dir, "td3_continuous_action", {"env_id": args.env_id})
        restored = ReplayBuffer(args.transitions, envs.single_observation_space.shape, envs.single_action_space.shape,
                                np.float32, torch.device("cpu"))
        loader.track(**{**tracked, "replay_buffer": restored})
        start = time.perf_counter()
        loader.load_latest()
        loader.restore()
        load_s = time.perf_counter() - start
    exact = all(np.array_equal(getattr(buffer, name), getattr(restored, name)) for name in BUFFER_ARRAYS)
    print(f"replay buffer in memory: {in_memory / 2**20:.1f} MiB")
    print(f"checkpoint on disk (networks, optimizers, buffer, env, RNGs): {on_disk / 2**20:.1f} MiB "
          f"= {on_disk / in_memory:.2f}x the buffer in memory; the two kept: {2 * on_disk / in_memory:.2f}x")
    print(f"save {save_s:.2f} s (SHA-256 and fsync included), load + verify + restore {load_s:.2f} s; "
          f"restored buffer identical: {exact}")


if __name__ == "__main__":
    main(tyro.cli(Args))
