"""Run the agents for real and report SPS and returns (the issue-3 benchmark; not part of the tests).

Default: DQN CartPole-v1 with Adam for CleanRL's 500k steps (CleanRL published 488.69 +- 16.11; the
target is a last-100-episode mean >= 450), and PPO HalfCheetah-v5 with Adam and with AlphaGrad
alpha=98 for 200k steps. Runs go in parallel, one process per core, one torch thread each:
    python scripts/bench_agents.py --workers 2
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import tyro

from alphagrad_rl.runs import read_run

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = {
    "dqn-adam": ["agents/dqn.py", "--total-timesteps", "500000"],
    "ppo-adam": ["agents/ppo_continuous_action.py", "--total-timesteps", "200704"],
    "ppo-alphagrad98": ["agents/ppo_continuous_action.py", "--total-timesteps", "200704",
                        "--optim.name", "alphagrad", "--optim.alpha", "98"],
}


@dataclass
class Args:
    only: tuple[str, ...] = tuple(BENCHMARKS)
    """which benchmarks to run"""
    workers: int = 2
    """parallel runs (one torch thread each)"""
    results_dir: str = "results/runs/bench_agents"
    """where the run records go"""
    seed: int = 1
    """seed of every run"""


def run(name: str, args: Args) -> dict:
    command = [sys.executable, *BENCHMARKS[name], "--seed", str(args.seed), "--results-dir", args.results_dir,
               "--run-name", f"{name}__{args.seed}", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    shutil.rmtree(ROOT / args.results_dir / f"{name}__{args.seed}", ignore_errors=True)  # a benchmark starts afresh
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if completed.returncode:
        return {"status": "crashed", "error": completed.stderr[-2000:]}
    return read_run(ROOT / args.results_dir / f"{name}__{args.seed}")["summary"]


def main(args: Args) -> None:
    unknown = set(args.only) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"error: unknown benchmark(s) {sorted(unknown)} (allowed: {', '.join(BENCHMARKS)})")
    with ThreadPoolExecutor(args.workers) as pool:
        summaries = dict(zip(args.only, pool.map(lambda name: run(name, args), args.only)))
    print(f"{'benchmark':18s} {'status':9s} {'steps':>8s} {'SPS':>7s} {'wall (s)':>9s} "
          f"{'last-100 return':>16s} {'best':>8s}")
    for name, s in summaries.items():
        if s["status"] != "finished":
            print(f"{name:18s} {s['status']:9s} {s.get('error', '')}")
            continue
        print(f"{name:18s} {s['status']:9s} {s['global_step']:8d} {s['sps']:7.0f} {s['wall_clock_s']:9.0f} "
              f"{s['final_return']:16.1f} {s['best_return']:8.1f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
