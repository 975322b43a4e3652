"""Benchmark an optimizer on RL under the suite's ruleset (configs/benchmark.yaml; docs/benchmark.md): tuned on
each task with the same trial budget as every other optimizer, evaluated on fresh seeds, scored against a random
policy (0) and tuned Adam (1), and appended to the leaderboard as one row.

    alphagrad-rl benchmark --optimizer adam                         # an optimizer the suite names (adam first)
    alphagrad-rl benchmark --optimizer mypkg.optim:build --name my-opt --search options.beta=0.5:0.99
    alphagrad-rl benchmark --optimizer my_entry.yaml                # name, description, flags, lr, search
    alphagrad-rl benchmark --report-only                            # rebuild the leaderboard from the records

Running the command again resumes an unfinished entry (its studies and evaluation runs); a finished row is never
overwritten. Exit status 0 when the entry has its row (or the report was rebuilt), 1 while tasks remain, 2 on bad
input.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from alphagrad_rl.cli import sigterm_as_interrupt
from alphagrad_rl.suite import DEFAULT_SUITE, load_suite
from alphagrad_rl.sweep_config import SweepConfigError


@dataclass
class Args:
    optimizer: str | None = None
    """what to benchmark: a name in the suite's optimizers, an entry file (.yaml), or a factory
    'package.module:callable' / 'path/file.py:callable' called as callable(params, lr=lr, **options)"""
    name: str | None = None
    """the entry's name on the leaderboard (default: the suite's name, or the factory's callable name)"""
    lr_range: tuple[float, float] | None = None
    """a factory's lr range, log-uniform (default 1e-5 1e-2; at least the rules' decades)"""
    search: tuple[str, ...] = ()
    """a factory's other searched keyword arguments: options.KEY=LOW:HIGH[:log] (each may be given)"""
    profile: str = "cpu"
    """the suite's profile: cpu (budgets for a 2-core machine) or full (the paper's budgets)"""
    suite: Path = DEFAULT_SUITE
    """the ruleset"""
    tasks: tuple[str, ...] = ()
    """work on these tasks only now (the row is written once every task is done)"""
    leaderboard: Path = Path("results/leaderboard")
    """where entries, anchors and the leaderboard are committed (<leaderboard>/<profile>/)"""
    results_dir: Path = Path("results/runs")
    """where the studies' and evaluation runs' folders go (not committed)"""
    workers: int = 0
    """parallel processes of each evaluation; 0: one per core (or GPU slot)"""
    worker_id: int = 0
    """this process's number among benchmark processes sharing the studies (machines sharing --results-dir and
    --leaderboard): each seeds its sampler apart"""
    backend: Literal["local", "ray"] = "local"
    """where the evaluation runs train: local processes, or a Ray cluster (--ray-address)"""
    ray_address: str | None = None
    """the Ray cluster's address (ray.init); None starts a local Ray"""
    population_size: int = 10
    """evaluation runs train in populations of this many where the agent and optimizer allow"""
    track: bool = False
    """log every run to Weights & Biases"""
    report_only: bool = False
    """only rebuild the leaderboard (LEADERBOARD.md, leaderboard.csv, figures) from the committed entries"""


def main(args: Args) -> int:
    if args.worker_id < 0 or args.workers < 0 or args.population_size < 0:
        print(f"error: invalid --worker-id {args.worker_id}, --workers {args.workers} or --population-size "
              f"{args.population_size} (allowed: >= 0)", file=sys.stderr)
        return 2
    try:
        suite = load_suite(args.suite, args.profile)
        if not args.report_only:
            if args.optimizer is None:
                print("error: --optimizer is required (or --report-only); allowed: "
                      f"{', '.join(suite.optimizers)}, an entry file or 'package.module:callable'", file=sys.stderr)
                return 2
            from alphagrad_rl.agents import sweep_registry
            from alphagrad_rl.benchmark import resolve_optimizer, run_entry
            from alphagrad_rl.sweep import LaunchOptions

            entry = resolve_optimizer(suite, args.optimizer, args.name, args.lr_range, args.search)
            options = LaunchOptions(workers=args.workers, population_size=args.population_size, track=args.track,
                                    backend=args.backend, ray_address=args.ray_address)
            with sigterm_as_interrupt():
                row = run_entry(suite, entry, args.leaderboard, args.results_dir, sweep_registry(), options,
                                args.tasks, args.worker_id)
            if row is None:
                return 1
        from alphagrad_rl.leaderboard import write_leaderboard

        path = write_leaderboard(suite, args.leaderboard)
        print(f"leaderboard: {path}")
        return 0
    except (SweepConfigError, ValueError, RuntimeError) as error:  # SuiteError is a SweepConfigError
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the running runs saved a checkpoint; the same command resumes the entry",
              file=sys.stderr)
        return 130


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line (`alphagrad-rl benchmark`): its exit status."""
    return main(tyro.cli(Args, args=argv, prog=prog))


if __name__ == "__main__":
    sys.exit(run())
