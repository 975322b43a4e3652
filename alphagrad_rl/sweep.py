"""Sweeps: launch a sweep's runs (configuration: alphagrad_rl.sweep_config; what stands and how runs are packed:
alphagrad_rl.planning; where they train: alphagrad_rl.backends; live progress: alphagrad_rl.progress).

A run whose summary.json says "finished" (or whose compact record in the --records folder does) is skipped when
the sweep is run again; an unfinished run continues from its newest checkpoint (`--resume`, see
alphagrad_rl.checkpoint), or is started afresh (its folder cleared) when it has none, so a stopped or killed sweep
loses at most the work since each run's last checkpoint and duplicates nothing; an interrupted population resumes as
that population and a checkpointed single run alone, whatever the next launch's packing (planning.resumed_jobs).
Stopping the launcher (SIGINT, SIGTERM) stops its runs: each saves a checkpoint. Every run is locked while it trains
(<results_dir>/<name>/.locks/), locally and on Ray alike, so two launchers sharing a results folder split a sweep
between them and never train one run twice (LaunchOptions.wait_for_others: each then also waits for the other's
runs at the end, resuming any it left stopped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .analysis import compact_record_path, export_records
from .backends import JobContext, LocalBackend, RayBackend, launcher_env
from .planning import (
    Job,
    RecordConflict,
    assign_gpus,
    check_run_folders,
    plan_jobs,
    recorded_runs,
    visible_gpus,
)
from .progress import SweepProgress
from .runs import LOCK_WAIT_S, read_summary
from .sweep_config import RunSpec, Sweep, parsed_args


@dataclasses.dataclass
class LaunchOptions:
    results_dir: Path = Path("results/runs")
    workers: int = 0  # 0: one per core (local) or per GPU slot
    backend: str = "local"  # local | ray
    ray_address: str | None = None
    runs_per_gpu: int = 1
    use_gpus: bool = True
    track: bool = False
    extra_args: tuple[str, ...] = ()
    population_size: int = 0  # > 1: pack runs into population processes of this many (agents with a population)
    order: str = "config"  # config | seed: see planning.start_order
    wait_for_others: bool = False  # runs another launcher is training: wait for them (and take over any it leaves)
    records_dir: Path | None = None  # write each run's compact record here as soon as it ends (export_records)
    progress: tuple[float, bool] | None = None  # live progress every N seconds, as a table (True) or lines: progress_mode


def launch(sweep: Sweep, runs: list[RunSpec], options: LaunchOptions,
           report: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run every unfinished run of `runs`; returns {run name: summary} for all of them (skipped ones included).
    RecordConflict before anything starts when a run folder or compact record holds other settings; KeyboardInterrupt
    (SIGINT, or SIGTERM turned into it by the command) after every running run has saved a checkpoint and stopped."""
    sweep_dir = options.results_dir.resolve() / sweep.name
    folders = check_run_folders(sweep_dir, runs, sweep.agent)
    if folders.conflicts:
        raise RecordConflict(folders.conflict_message(sweep_dir))
    for name, problem in folders.damaged.items():
        report(f"{name}: skipped, its record is damaged ({problem}); it is kept as it is: move the folder away to "
               "train the run again")
    summaries = {run.name: read_summary(sweep_dir / run.name) for run in runs if run.name not in folders.damaged}
    done = {name: summary for name, summary in summaries.items() if summary and summary.get("status") == "finished"}
    if options.records_dir is not None:
        recorded = recorded_runs(options.records_dir, [run for run in runs if run.name not in done], sweep.agent)
        if recorded:
            report(f"{len(recorded)} run(s) counted as finished from their records in {options.records_dir} "
                   "(their folders here hold no finished run)")
        done.update(recorded)
    pending = [run for run in runs if run.name not in done and run.name not in folders.damaged]

    if options.backend == "ray":
        backend: LocalBackend | RayBackend = RayBackend(options.ray_address, options.workers, options.runs_per_gpu,
                                                        options.use_gpus, report)
    else:
        gpus = visible_gpus() if options.use_gpus else []
        slots = assign_gpus(len(gpus), options.runs_per_gpu) if gpus else []
        backend = LocalBackend(options.workers or len(slots) or os.cpu_count() or 1, slots)
    report(f"sweep {sweep.name}: {len(runs)} runs, {len(done)} already finished, {len(pending)} to run "
           f"on {backend.describe()}")
    extra = options.extra_args + (("--track", "--wandb-group", sweep.name) if options.track else ())
    context = JobContext(sweep.agent, sweep_dir, extra, launcher_env(), os.getcwd())
    results = {**done, **{name: {"status": "damaged", "error": problem} for name, problem in folders.damaged.items()}}
    counter = itertools.count(len(done) + 1)

    def export_record(names: set[str]) -> None:
        """The runs' compact records into options.records_dir, so that they can be committed while the sweep goes on."""
        try:
            export_records(sweep_dir, options.records_dir, only=names)
        except (OSError, ValueError) as error:  # the sweep goes on; scripts/analyze.py writes them later
            report(f"{', '.join(sorted(names))}: no compact record written ({type(error).__name__}: {error})")

    if options.records_dir is not None:  # runs that ended before records were asked for: one pass over the folder
        missing = {name for name in done if not compact_record_path(options.records_dir, name).exists()}
        if missing:
            export_record(missing)

    def finished(run: RunSpec, summary: dict[str, Any]) -> None:
        results[run.name] = summary
        final = summary.get("final_return")
        report(f"[{next(counter)}/{len(runs)}] {run.name}: {summary.get('status')}"
               + (f", final return {final:.1f}" if isinstance(final, (int, float)) else "")
               + (f", {summary.get('wall_clock_s', 0):.0f}s" if summary.get("wall_clock_s") else "")
               + "".join(f", resumed at step {r['step']:,} (lost {r['lost_s']:.0f}s)" for r in summary.get("resumes", [])))
        if options.records_dir is not None:
            export_record({run.name})

    def train(jobs: list[Job], wait_s: float) -> list[Job]:
        """Train `jobs` on the backend, reporting each run as it ends; returns the jobs another launcher holds."""
        taken = []
        for job, job_summaries in backend.execute(jobs, context, wait_s):
            if job_summaries is None:
                taken.append(job)
                for run in job.runs:
                    results[run.name] = read_summary(sweep_dir / run.name) or {}
                    report(f"{run.name}: skipped, another launcher is running it"
                           + (" (waited for at the end)" if options.wait_for_others else ""))
            else:
                for run, summary in zip(job.runs, job_summaries):
                    finished(run, summary)
        return taken

    progress = (SweepProgress(sweep_dir, {run.name: int(parsed_args(run, sweep.agent).total_timesteps) for run in pending},
                              lambda: list(results), *options.progress, write=report)
                if options.progress else contextlib.nullcontext())  # (the budgets are parsed only when shown)
    try:
        with progress:
            taken = train(plan_jobs(sweep, pending, sweep_dir, options.population_size, options.order, report),
                          LOCK_WAIT_S)
            if options.wait_for_others and taken:  # each ends finished there, or is resumed here if it stopped
                report(f"waiting for {sum(len(job.runs) for job in taken)} run(s) that another launcher is training")
                train(taken, math.inf)
    except KeyboardInterrupt:  # the running runs save a checkpoint and stop; no queued run starts
        backend.stop()
        raise
    finally:
        backend.close()
    return results


def arm_table(sweep: Sweep, runs: list[RunSpec], results: dict[str, dict[str, Any]]) -> str:
    """Per arm: finished/total runs and the mean +- std over seeds of the final return."""
    lines = [f"{'arm':28s} {'finished':>9s} {'final return (mean +- std)':>28s}"]
    for arm in dict.fromkeys(run.arm for run in runs):
        summaries = [results.get(run.name, {}) for run in runs if run.arm == arm]
        finals = [s["final_return"] for s in summaries if s.get("status") == "finished"
                  and isinstance(s.get("final_return"), (int, float))]
        spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
        shown = f"{statistics.mean(finals):.1f} +- {spread:.1f}" if finals else "-"
        lines.append(f"{arm:28s} {len(finals):>4d}/{len(summaries):<4d} {shown:>28s}")
    return "\n".join(lines)
