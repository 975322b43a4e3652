"""What the sweep launcher costs beside training: its start-up on a config (load, validate every run with the agent's
parser and checks, plan), each run's overhead (process start, imports, environment and W&B set-up, record writing:
a run's wall time minus the training time its summary records), and one sweep's wall clock on the local backend vs
a local Ray cluster of two nodes with the same cores, populations on both. Run on an otherwise idle machine:
`python scripts/bench_launcher.py` (see --help for the sizes).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro
from alphagrad_rl.agents import sweep_registry

from alphagrad_rl.planning import plan_jobs
from alphagrad_rl.runs import read_summary
from alphagrad_rl.sweep import LaunchOptions, launch
from alphagrad_rl.sweep_config import filter_runs, load_sweep, override_flag

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    startup_config: Path = ROOT / "configs" / "paper_ppo_halfcheetah.yaml"
    """the config whose launcher start-up is timed"""
    overhead_repeats: int = 3
    """single-run processes timed for the per-run overhead (each with and without W&B, offline)"""
    sweep_config: Path = ROOT / "configs" / "paper_dqn_cartpole.yaml"
    """the sweep timed locally and on Ray"""
    sweep_arms: tuple[str, ...] = ("alphagrad-93", "alphagrad-186")
    sweep_timesteps: int = 50_000
    population_size: int = 10
    cores: int = 2
    """the cores both backends get: local workers, and Ray nodes of one CPU each"""
    skip_ray: bool = False


def startup(config: Path) -> None:
    registry = sweep_registry()
    start = time.perf_counter()
    sweep = load_sweep(config, registry)
    loaded = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        jobs = plan_jobs(sweep, sweep.runs, Path(folder) / sweep.name, 10, "config", lambda _: None)
    planned = time.perf_counter()
    print(f"launcher start-up, {config.name} ({len(sweep.runs)} runs): load and validate {loaded - start:.2f} s, "
          f"plan into {len(jobs)} populations of up to 10 {planned - loaded:.2f} s")
    command = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(config), "--dry-run", "--results-dir",
               tempfile.mkdtemp()]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    print(f"  `scripts/sweep.py {config.name} --dry-run` end to end (interpreter, imports, listing): "
          f"{time.perf_counter() - start:.2f} s")


def per_run_overhead(repeats: int) -> None:
    for track in (False, True):
        overheads, walls = [], []
        for repeat in range(repeats):
            folder = Path(tempfile.mkdtemp())
            command = [sys.executable, str(ROOT / "agents" / "dqn.py"), "--total-timesteps", "2000",
                       "--learning-starts", "1000", "--run-name", f"r{repeat}", "--results-dir", str(folder),
                       "--seed", str(repeat + 1), "--quiet", *(["--track"] if track else [])]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(folder)}
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=env, cwd=folder)
            wall = time.perf_counter() - start
            trained = read_summary(folder / f"r{repeat}")["wall_clock_s"]
            overheads.append(wall - trained)
            walls.append(wall)
            shutil.rmtree(folder)
        label = "with W&B (offline)" if track else "without W&B"
        print(f"per-run overhead {label}: median {statistics.median(overheads):.2f} s (process wall "
              f"{statistics.median(walls):.2f} s minus its recorded training time; {repeats} runs)")


def sweep_wall_clock(args: Args) -> None:
    registry = sweep_registry()
    sweep = load_sweep(args.sweep_config, registry)
    sweep.runs = override_flag(sweep.runs, "total-timesteps", args.sweep_timesteps, sweep.agent)
    runs = filter_runs(sweep.runs, args.sweep_arms)
    backends = ["local"] + ([] if args.skip_ray else ["ray"])
    for backend in backends:
        folder = Path(tempfile.mkdtemp())
        cluster = None
        options = LaunchOptions(results_dir=folder, workers=args.cores, use_gpus=False,
                                population_size=args.population_size, backend=backend)
        if backend == "ray":
            from ray.cluster_utils import Cluster

            os.environ["RAY_worker_niceness"] = "0"  # as the local runs: normal priority
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
            for _ in range(args.cores):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            options.ray_address = cluster.address
        start = time.perf_counter()
        results = launch(sweep, runs, options, report=lambda _: None)
        wall = time.perf_counter() - start
        if cluster is not None:
            cluster.shutdown()
        finished = sum(summary.get("status") == "finished" for summary in results.values())
        trained = [summary["wall_clock_s"] for summary in results.values()]
        print(f"{len(runs)}-run DQN sweep ({', '.join(args.sweep_arms)}; {args.sweep_timesteps:,} steps; populations of "
              f"{args.population_size}) on {backend} with {args.cores} cores"
              + (" (2 nodes of 1 CPU; cluster start not counted)" if backend == "ray" else "")
              + f": {wall:.1f} s wall, {finished}/{len(runs)} finished, population training {max(trained):.1f} s")
        shutil.rmtree(folder)


def main(args: Args) -> None:
    startup(args.startup_config)
    per_run_overhead(args.overhead_repeats)
    sweep_wall_clock(args)


if __name__ == "__main__":
    main(tyro.cli(Args))
