"""Runs per hour: a population (agents/*_population.py) vs the single-file agent, same budgets.

Both sides use the machine's cores the same way: the single-file runs go two at a time (one per core, one torch
thread each); the population side runs two population processes at once, each with half of the seeds.
    python scripts/bench_population.py                                   # DQN CartPole, 10 runs of 50k steps
    python scripts/bench_population.py --runs 10 --total-timesteps 500000
    python scripts/bench_population.py --agent ppo --total-timesteps 100000   # PPO HalfCheetah-v5
    python scripts/bench_population.py --agent td3 --runs 4 --total-timesteps 50000   # TD3 Hopper-v4
It ends with the statistical-equivalence check: the difference of the sides' mean final returns with its 95% CI.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from alphagrad_rl.claims import LEVEL, minimal_detectable_effect, welch
from alphagrad_rl.runs import read_summary

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    runs: int = 10
    """runs (seeds 1..runs) on each side"""
    total_timesteps: int = 50_000
    """each run's budget"""
    processes: int = 2
    """processes at a time on each side (one per core)"""
    optimizer: str = "alphagrad"
    """adam or alphagrad (the paper's k = 1: alpha 93 for DQN, 98 for PPO)"""
    agent: Literal["dqn", "ppo", "td3"] = "dqn"
    """DQN on CartPole-v1, PPO on HalfCheetah-v5 or TD3 on Hopper-v4"""
    cuda: bool = False
    """run both sides on the GPU (e.g. --agent td3 --cuda --runs 20 --processes 1 --single-runs 1: a population of
    20 against one single-file run on the same GPU, compared by aggregate env steps per second)"""
    single_runs: int | None = None
    """runs on the single-file side (default: --runs); fewer when only its speed is wanted"""
    agent_args: str = ""



AGENTS = {"dqn": ("agents/dqn.py", "agents/dqn_population.py", "CartPole-v1", "93"),
          "ppo": ("agents/ppo_continuous_action.py", "agents/ppo_continuous_action_population.py", "HalfCheetah-v5",
                  "98"),
          "td3": ("agents/td3_continuous_action.py", "agents/td3_continuous_action_population.py", "Hopper-v4", "150")}


def run_all(commands: list[list[str]], processes: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    with ThreadPoolExecutor(processes) as pool:
        results = list(pool.map(lambda command: subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                                                               text=True), commands))
    for result in results:
        if result.returncode != 0:
            sys.exit(f"a benchmark run failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main(args: Args) -> None:
    single_agent, population_agent, env_id, alpha = AGENTS[args.agent]
    roles = ("actor-optim", "critic-optim") if args.agent == "td3" else ("optim",)
    optimizer = [arg for role in roles for arg in [f"--{role}.name", args.optimizer]
                 + ([f"--{role}.alpha", alpha] if args.optimizer == "alphagrad" else [])]
    common = ["--total-timesteps", str(args.total_timesteps), "--quiet", "--cuda" if args.cuda else "--no-cuda",
              "--checkpoint-interval-s", "0", *optimizer, *shlex.split(args.agent_args)]
    seeds = list(range(1, args.runs + 1))
    single_seeds = seeds[:args.single_runs or args.runs]
    with tempfile.TemporaryDirectory() as folder:
        single = [[sys.executable, single_agent, *common, "--seed", str(seed), "--results-dir", f"{folder}/single",
                   "--run-name", f"s{seed}"] for seed in single_seeds]
        shares = [seeds[i::args.processes] for i in range(args.processes)]
        population = [[sys.executable, population_agent, *common, "--seeds", *map(str, share),
                       "--results-dir", f"{folder}/population", "--run-name", f"p{i}"]
                      for i, share in enumerate(shares) if share]
        single_s = run_all(single, args.processes)
        population_s = run_all(population, args.processes)
        finals = {side: [read_summary(path)["final_return"] for path in sorted(Path(folder, side).iterdir())]
                  for side in ("single", "population")}
    print(f"{args.agent.upper()} {env_id}, {args.optimizer}, {args.total_timesteps:,} steps per run, "
          f"{args.processes} processes at a time, 1 torch thread each, {'GPU' if args.cuda else 'CPU'}"
          + (f", {args.agent_args}" if args.agent_args else ""))
    rates = {}
    for side, runs, seconds in (("single-file", len(single_seeds), single_s), ("population", args.runs, population_s)):
        rates[side] = runs / seconds
        print(f"{side:12s} {runs:3d} runs {seconds:8.1f} s   {3600 * rates[side]:8.1f} runs/hour   "
              f"{rates[side] * args.total_timesteps:10.0f} env steps/s in all")
    print(f"speed-up: {rates['population'] / rates['single-file']:.2f}x")
    for side, values in finals.items():
        print(f"final returns ({side}): " + ", ".join(f"{value:.1f}" for value in values))
    # statistical equivalence: the same experiment on both sides, so the difference should be ~0
    if min(len(values) for values in finals.values()) >= 2:
        test = welch(finals["population"], finals["single"])
        detectable = minimal_detectable_effect(test, LEVEL)
        print(f"mean final return, population - single-file: {test.estimate:+.1f}, 95% CI [{test.low:.1f}, "
              f"{test.high:.1f}] (Welch, p = {test.p:.2f}; {'contains' if test.low <= 0 <= test.high else 'excludes'}"
              f" 0; smallest difference these seeds could detect: {detectable:.1f})")


if __name__ == "__main__":
    main(tyro.cli(Args))
