"""Launch a sweep: expand a config (configs/*.yaml) into runs and execute them, resuming where it stopped.

    python scripts/sweep.py configs/paper_dqn_cartpole.yaml                 # every run, one per core
    python scripts/sweep.py configs/paper_dqn_cartpole.yaml --dry-run       # list the runs
    python scripts/sweep.py configs/paper_ppo_halfcheetah.yaml --arms adam alphagrad-98 --seeds 1 \\
        --total-timesteps 100000                                            # a quick, smaller version
    python scripts/sweep.py CONFIG --backend ray --ray-address auto         # on a Ray cluster
    python scripts/sweep.py CONFIG                                          # again: resumes unfinished runs
    python scripts/sweep.py CONFIG --export-wandb wandb_sweeps/             # W&B grid sweeps, one per arm

Exit status 0 when every run finished, 1 otherwise.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from alphagrad_rl.agents import sweep_registry
from alphagrad_rl.cli import sigterm_as_interrupt
from alphagrad_rl.planning import (
    RecordConflict,
    check_run_folders,
    describe_plan,
    plan_jobs,
    progress_summary,
    recorded_runs,
    sweep_progress,
)
from alphagrad_rl.progress import progress_mode
from alphagrad_rl.runs import check_results_dir
from alphagrad_rl.sweep import LaunchOptions, arm_table, launch
from alphagrad_rl.sweep_config import SweepConfigError, filter_runs, load_sweep, override_flag, settings_digest


@dataclass
class Args:
    config: tyro.conf.Positional[Path]
    """the sweep config (YAML)"""
    dry_run: bool = False
    """list the runs and where each stands (finished, training now, stopped at step N, ...) with the compute left,
    and the processes a launch with these options would start, without running anything (safe while the sweep
    runs)"""
    arms: tuple[str, ...] = ()
    """run only these arms"""
    seeds: tuple[int, ...] = ()
    """run only these seeds"""
    total_timesteps: int | None = None
    """override every run's budget (a quick version; runs are named the same, so use another --results-dir)"""
    checkpoint_interval_s: float | None = None
    """override how often each run writes a checkpoint (seconds of training; the agents' default is 300)"""
    results_dir: Path = Path("results/runs")
    """runs go to <results_dir>/<sweep name>/<run name>/"""
    workers: int = 0
    """parallel runs; 0: one per core, or one per GPU slot when GPUs are used"""
    backend: Literal["local", "ray"] = "local"
    """local process pool, or Ray (a local instance, or a cluster with --ray-address)"""
    ray_address: str | None = None
    """address of a running Ray cluster (<head>:6379, or auto: the one `ray start` made on this machine); none
    starts a new local instance (never joins a cluster it finds)"""
    gpus: bool = True
    """use the visible GPUs (CUDA_VISIBLE_DEVICES), packing --runs-per-gpu runs on each"""
    runs_per_gpu: int = 1
    """runs that share one GPU"""
    track: bool = False
    """log every run to Weights & Biases, grouped by the sweep's name"""
    population_size: int = 0
    """> 1: train up to this many runs per process as one population (agents/*_population.py: DQN, PPO, TD3); runs
    that differ only in seed and per-member values (AlphaGrad's alpha, lr, momentum; another optimizer's lr) share
    one. An interrupted attempt resumes as it ran, whatever this option says: a population as that population,
    a single run alone"""
    order: Literal["config", "seed"] = "config"
    """the order runs start in: config (arm by arm) or seed (every arm's first seed, then every arm's second, ...:
    a long sweep stopped part-way then has every arm at its first seeds; populations keep their members)"""
    wait_for_others: bool = False
    """when other launchers share the results folder (several nodes): runs one of them is training are waited for
    at the end, and any it leaves unfinished (it was stopped) are resumed here; without it they are skipped and
    named, and the exit status is 1"""
    records: Path | None = None
    """write each run's compact record (what scripts/analyze.py exports: results/<sweep>/records) into this folder
    as soon as the run ends, and those of runs that ended before: a long sweep's finished runs can be committed
    while it goes on. A run whose finished record is there counts as done where the results folder has no finished
    run (a fresh clone, another machine): relaunching trains only the rest"""
    progress: bool = True
    """show live progress while runs train: runs finished / running / queued, each running run's step, SPS and latest
    return, and the sweep's ETA (a table redrawn every second on a terminal, a timestamped line a minute otherwise)"""
    export_wandb: Path | None = None
    """write one W&B grid-sweep config per arm into this folder (for `wandb sweep`) and exit"""
    new_folder: bool = False
    """where run folders of the sweep hold records made with other options (an edited config, another
    --total-timesteps), write the sweep into <results_dir>/<name>@<digest of its settings> instead of refusing (the
    same settings find the same folder again, so a relaunch resumes it)"""


def main(args: Args) -> int:
    try:
        sweep = load_sweep(args.config, sweep_registry())
        filter_runs(sweep.runs, args.arms, args.seeds)  # an unknown arm or seed: refused before anything else
    except SweepConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.population_size < 0:
        print(f"error: invalid --population-size {args.population_size} (allowed: >= 0)", file=sys.stderr)
        return 2
    if args.workers < 0 or args.runs_per_gpu < 1:
        print(f"error: invalid --workers {args.workers} or --runs-per-gpu {args.runs_per_gpu} "
              "(allowed: workers >= 0, 0 = one per core or GPU slot; runs-per-gpu >= 1)", file=sys.stderr)
        return 2
    try:
        check_results_dir(args.results_dir / sweep.name)
        for folder, what in ((args.records, "--records folder"), (args.export_wandb, "--export-wandb folder")):
            if folder is not None:
                check_results_dir(folder, what)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    overrides = {"total-timesteps": args.total_timesteps, "checkpoint-interval-s": args.checkpoint_interval_s}
    try:  # each run checked again by the agent: e.g. a budget below its learning-starts is refused here
        for flag, value in overrides.items():
            if value is not None:
                sweep.runs = override_flag(sweep.runs, flag, value, sweep.agent)
    except SweepConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = filter_runs(sweep.runs, args.arms, args.seeds)
    folders = check_run_folders(args.results_dir / sweep.name, runs, sweep.agent)
    if folders.conflicts and args.new_folder:
        sweep.name = f"{sweep.name}@{settings_digest(sweep.runs, sweep.agent)}"
        print(f"run folders of {args.results_dir / sweep.name.split('@')[0]} hold other settings: this sweep's runs "
              f"go to {args.results_dir / sweep.name}")
        folders = check_run_folders(args.results_dir / sweep.name, runs, sweep.agent)
    if args.export_wandb is not None:
        import yaml

        from alphagrad_rl.sweep_config import wandb_sweep_configs

        try:
            configs = wandb_sweep_configs(sweep)
        except SweepConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        args.export_wandb.mkdir(parents=True, exist_ok=True)
        for name, config in configs.items():
            path = args.export_wandb / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            print(f"wandb sweep {path}")
        return 0
    options = LaunchOptions(results_dir=args.results_dir, workers=args.workers, backend=args.backend,
                            ray_address=args.ray_address, runs_per_gpu=args.runs_per_gpu, use_gpus=args.gpus,
                            track=args.track, population_size=args.population_size, order=args.order,
                            wait_for_others=args.wait_for_others, records_dir=args.records,
                            progress=progress_mode(args.progress))
    if args.dry_run:
        try:
            recorded = recorded_runs(args.records, runs, sweep.agent) if args.records is not None else {}
        except RecordConflict as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        progress = sweep_progress(args.results_dir / sweep.name, runs, sweep.agent, recorded, folders)
        width = max(len(p.describe()) for p in progress)
        for run, p in zip(runs, progress):
            print(f"{run.name:50s} {p.describe():{width}s} {' '.join(run.flag_args())}")
        print(progress_summary(progress, args.workers or os.cpu_count() or 1))
        if folders.conflicts:
            print(f"error: {folders.conflict_message(args.results_dir / sweep.name)}", file=sys.stderr)
            return 2
        pending = [run for run, p in zip(runs, progress) if p.state != "finished"]
        if pending:
            print(describe_plan(plan_jobs(sweep, pending, args.results_dir.resolve() / sweep.name, args.population_size,
                                         args.order, print)))
        return 0
    try:
        with sigterm_as_interrupt():
            results = launch(sweep, runs, options)
    except RecordConflict as error:  # before anything started
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the running runs saved a checkpoint; the same command resumes the sweep", file=sys.stderr)
        return 130
    print("\n" + arm_table(sweep, runs, results))
    failed = [name for name, summary in results.items() if summary.get("status") != "finished"]
    for name in failed:
        print(f"not finished: {name} ({results[name].get('status')}); see "
              f"{args.results_dir / sweep.name / name / 'output.log'}")
    print(f"\n{len(results) - len(failed)}/{len(runs)} runs finished")
    return 1 if failed else 0


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line (`alphagrad-rl sweep`, or `python scripts/sweep.py` in a clone): its exit status."""
    return main(tyro.cli(Args, args=argv, prog=prog))


if __name__ == "__main__":
    sys.exit(run())
