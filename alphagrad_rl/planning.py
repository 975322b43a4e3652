"""Sweep planning: where each run of a sweep stands (its folder, its compact record, its lock), and how the runs left
are packed into processes (single runs, populations, GPU slots) in the order they start. Reads run folders only;
starts nothing (execution: alphagrad_rl.backends)."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .analysis import compact_record_path
from .factory import capabilities, optimizer_specs
from .runs import (
    checkpoint_manifests,
    config_differences,
    latest_progress,
    process_seconds,
    read_run,
    read_summary,
    record_damage,
    run_locked,
)
from .sweep_config import AgentEntry, RunSpec, Sweep, _flag_args, parsed_args, run_settings


class RecordConflict(ValueError):
    """A record in the --records folder that a launch would overwrite (recorded_runs); the message names each."""


@dataclasses.dataclass(frozen=True)
class RunProgress:
    """Where one run of a sweep stands (sweep_progress)."""

    name: str
    state: str  # finished, crashed, training, stopped, not started
    step: int  # env steps it would resume from: its newest checkpoint's, else its summary's
    total: int  # its budget in env steps
    resumable: bool  # it has a checkpoint, or its population's (member 0's) checkpoint holds it
    process_s: float  # the training time its summary records (runs.process_seconds)
    now: int | None = None  # a training run's current step (its metrics' last row; None: nothing logged yet)

    def describe(self) -> str:
        where = f"step {self.step:,}/{self.total:,} ({100 * self.step / max(self.total, 1):.0f}%)"
        if self.state == "training":
            current = (f"training now, at step {self.now:,}/{self.total:,} ({100 * self.now / max(self.total, 1):.0f}%)"
                       if self.now is not None else "training now")
            return current + (f"; its last checkpoint is at step {self.step:,}" if self.resumable else "")
        if self.state == "stopped":
            return f"stopped: resumes at {where}" if self.resumable else "stopped before a checkpoint: starts over"
        if self.state == "crashed":
            return "crashed: the next launch retries it (see its output.log)"
        if self.state == "other settings":
            return "holds a record of other settings (below)"
        if self.state == "damaged":
            return "damaged record: kept, not retrained"
        return self.state

    @property
    def steps_left(self) -> int:
        return 0 if self.state in ("finished", "damaged") else self.total - (self.step if self.resumable else 0)


def recorded_runs(records_dir: Path, runs: list[RunSpec], agent: AgentEntry) -> dict[str, dict[str, Any]]:
    """{name: summary} of the runs whose compact record in `records_dir` (export_records) says they finished: they
    count as done where their folders are not (a fresh clone, another machine), so that a relaunch does not train
    them again. Raises RecordConflict naming each record that is unreadable or was made with other options than the
    run's today (a rerun would overwrite it). A crashed run's record does not count: the run is retried."""
    found, conflicts = {}, []
    for run in runs:
        path = compact_record_path(records_dir, run.name)
        if not path.exists():
            continue
        try:
            record = read_run(path)
        except (OSError, ValueError, KeyError) as error:
            conflicts.append(f"{path}: unreadable ({type(error).__name__}: {error})")
            continue
        if (record["summary"] or {}).get("status") != "finished":
            continue
        if differences := config_differences(record["config"]["config"], dataclasses.asdict(parsed_args(run, agent)),
                                             "record"):
            conflicts.append(f"{path}: " + "; ".join(differences))
        else:
            found[run.name] = record["summary"]
    if conflicts:
        raise RecordConflict("records in the --records folder are unreadable or were made with other options than the "
                         "sweep gives the runs now, and a rerun would overwrite them; give another --records folder, "
                         "or move them away:\n" + "\n".join(conflicts))
    return found


def sweep_progress(sweep_dir: Path, runs: list[RunSpec], agent: AgentEntry,
                   recorded: Mapping[str, dict[str, Any]] | None = None,
                   folders: FolderCheck | None = None) -> list[RunProgress]:
    """Each run's state as its records and lock show it; readable while launchers (here or elsewhere on the
    shared folder) train the sweep. A population member's checkpoint is its first member's, which names it.
    `recorded` (recorded_runs) are finished wherever their folders say nothing else; `folders` (check_run_folders)
    marks the folders that hold other settings or a damaged record."""
    checkpoint_step: dict[str, int] = {}  # run name: the step of its newest checkpoint, its own or its population's
    for run in runs:
        if manifests := checkpoint_manifests(sweep_dir / run.name):
            step = int(manifests[0].stem.split("-")[1])
            for name in checkpoint_members(manifests[0]) or [run.name]:
                checkpoint_step[name] = step
    progress = []
    for run in runs:
        run_dir = sweep_dir / run.name
        summary = read_summary(run_dir) or {}
        if summary.get("status") != "finished" and recorded and run.name in recorded:
            summary = recorded[run.name]
        resumable = run.name in checkpoint_step
        step = checkpoint_step.get(run.name, int(summary.get("global_step") or 0))
        status = summary.get("status")
        if folders is not None and run.name in folders.conflicts:
            state = "other settings"
        elif folders is not None and run.name in folders.damaged:
            state = "damaged"
        elif status == "finished":
            state = "finished"
        elif run_locked(sweep_dir, run.name):
            state = "training"
        elif status == "crashed":
            state = "crashed"
        else:
            state = "stopped" if summary else "not started"
        live = latest_progress(run_dir) if state == "training" else None
        progress.append(RunProgress(run.name, state, step, int(parsed_args(run, agent).total_timesteps), resumable,
                                    process_seconds(summary), None if live is None else live.step))
    return progress


def progress_summary(progress: list[RunProgress], workers: int) -> str:
    """How many runs are in each state and, from the finished runs' speed, the compute that what is left needs."""
    counts = collections.Counter(p.state for p in progress)
    states = ("finished", "training", "stopped", "crashed", "not started", "other settings", "damaged")
    lines = [f"{len(progress)} runs: " + ", ".join(f"{counts[state]} {state}" for state in states if counts[state])]
    done = [p for p in progress if p.state == "finished" and p.process_s > 0]
    left = sum(p.steps_left for p in progress)
    if done and left:
        spent = sum(p.process_s for p in done)
        hours = left * spent / sum(p.total for p in done) / 3600
        lines.append(f"finished runs took {spent / len(done) / 3600:.2f} process-hours each "
                     f"(mean of {len(done)}); the {left:,} env steps left need about {hours:.1f} process-hours, "
                     f"{hours / workers:.1f} h on {workers} worker(s)")
    return "\n".join(lines)


@dataclasses.dataclass
class FolderCheck:
    """What the run folders of a sweep hold against the runs it asks for (check_run_folders)."""

    conflicts: dict[str, str]  # run name: the options its record was made with that differ from the run's now
    damaged: dict[str, str]  # run name: what of its record cannot be read (the record is kept)

    def conflict_message(self, sweep_dir: Path) -> str:
        return (f"{len(self.conflicts)} run folder(s) in {sweep_dir} hold records made with other options than the "
                "sweep gives those runs now (an edited config, --total-timesteps, or another config of the same "
                "name), and would be reported under today's settings; relaunch with --new-folder to write this "
                "sweep into a folder of its own, or give another --results-dir:\n"
                + "\n".join(f"{name}: {differences}" for name, differences in self.conflicts.items()))


def check_run_folders(sweep_dir: Path, runs: list[RunSpec], agent: AgentEntry) -> FolderCheck:
    """Compare each run's folder with what the run trains now: a record (finished or not) made with other options is
    a conflict (never reused, resumed or deleted), one whose config.json or summary.json cannot be read is damaged
    (kept and reported, never retrained over)."""
    conflicts, damaged = {}, {}
    for run in runs:
        run_dir = sweep_dir / run.name
        if problem := record_damage(run_dir):
            damaged[run.name] = problem
            continue
        if (run_dir / "config.json").exists():
            recorded = json.loads((run_dir / "config.json").read_text())["config"]
            if differences := config_differences(recorded, run_settings(run, agent), "record"):
                conflicts[run.name] = "; ".join(differences)
    return FolderCheck(conflicts, damaged)


def checkpoint_members(manifest: Path) -> list[str] | None:
    """The run names of the members a population checkpoint (its manifest) holds, in order; None for another
    checkpoint (a single-file run's) or an unreadable one."""
    try:
        config = json.loads(manifest.read_text())["config"]
        return [config[f"member{i}"]["run_name"] for i in range(len(config))]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def per_member_options(run: RunSpec, agent: AgentEntry) -> dict[str, tuple[str, ...]]:
    """The population's list options (e.g. "alphas") that can carry `run`'s values, with the flags each one sets:
    what the optimizer declares (factory.capabilities: AlphaGrad's alpha, lr and momentum; another optimizer's lr
    when its step is linear in the lr); for several optimizers (TD3's actor and critics) only when they agree."""
    args, options = parsed_args(run, agent), {}
    for flags, option in agent.member_flags:
        specs = [getattr(args, flag.split(".")[0].replace("-", "_")) for flag in flags]
        field = flags[0].split(".", 1)[1]
        values = {json.dumps(getattr(spec, field)) for spec in specs}
        if len(values) != 1 or not isinstance(getattr(specs[0], field), (int, float)):
            continue  # the roles differ (one list cannot carry both), or not a number (alpha "auto")
        declared = [capabilities(spec) for spec in specs]
        if all(c.member_alpha_momentum for c in declared) or (field == "lr" and all(c.member_lrs for c in declared)):
            options[option] = flags
    return options


def trains_in_population(run: RunSpec, agent: AgentEntry) -> bool:
    """Whether `run` may be a member of a population: its agent has one and no optimizer of it is a custom one
    (alphagrad_rl.factory: whether it treats each member of stacked parameters apart is unknown)."""
    return agent.population is not None and all(capabilities(spec).stacked
                                                 for spec in optimizer_specs(parsed_args(run, agent)))


def population_jobs(runs: list[RunSpec], agent: AgentEntry, size: int) -> list[list[RunSpec]]:
    """Runs packed into populations of at most `size`: runs whose flags differ only in their seed and in what the
    population takes per member (per_member_options) share a population, in config order."""
    groups: dict[str, list[RunSpec]] = {}
    for run in runs:
        options = per_member_options(run, agent)
        per_member = {flag for flags in options.values() for flag in flags} | {"seed"}
        key = json.dumps([sorted(options), sorted((flag, value) for flag, value in run.flags if flag not in per_member)],
                         default=str)
        groups.setdefault(key, []).append(run)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def population_argv(runs: list[RunSpec], agent: AgentEntry, results_dir: Path, extra: tuple[str, ...]) -> list[str]:
    """One population process that trains `runs` (see population_jobs), each writing its own run record. Every
    per-member value is spelled out, read with the agent's parser (so a run that leaves one at its default gets
    the default)."""
    options = per_member_options(runs[0], agent)
    per_member = {flag for flags in options.values() for flag in flags}
    common = [arg for flag, value in runs[0].flags if flag != "seed" and flag not in per_member
              for arg in _flag_args(flag, value)]
    argv = [sys.executable, str(agent.population), *common, "--seeds", *(str(run.seed) for run in runs)]
    for option, flags in options.items():
        role, field = flags[0].split(".", 1)
        argv += [f"--{option}", *(str(getattr(getattr(parsed_args(run, agent), role.replace("-", "_")), field))
                                  for run in runs)]
    if runs[0].exp_name_args():
        argv += ["--exp-names", *(run.arm for run in runs)]
    return argv + ["--run-names", *(run.name for run in runs), "--results-dir", str(results_dir), *extra]


@dataclasses.dataclass
class Job:
    """What one worker runs: one run in its single-file agent, or runs in one population process."""

    runs: list[RunSpec]
    population: bool


def resumed_jobs(pending: list[RunSpec], all_runs: list[RunSpec], sweep_dir: Path, agent: AgentEntry,
                 report: Callable[[str], None]) -> tuple[list[Job], list[RunSpec]]:
    """Interrupted attempts continue as they ran, whatever packing this launch asks for (packing them anew would
    empty their folders, checkpoints and all): a population checkpoint's members as that population, a run with
    its own checkpoint as a single run. Returns those jobs and the other pending runs, to be packed afresh; runs
    whose population has members this launch did not select are held back (said), keeping the checkpoint."""
    selected, names = {run.name: run for run in pending}, {run.name for run in all_runs}
    jobs, claimed = [], set()
    for run in pending:
        manifests = [] if run.name in claimed else checkpoint_manifests(sweep_dir / run.name)
        if not manifests:
            continue
        members = checkpoint_members(manifests[0])
        if members is None:
            jobs.append(Job([run], False))
            claimed.add(run.name)
        elif agent.population is not None and all(name in selected and name not in claimed for name in members):
            jobs.append(Job([selected[name] for name in members], True))
            claimed.update(members)
        elif agent.population is not None and not any(name in claimed for name in members):
            unselected = [name for name in members if name not in selected and name in names
                          and (read_summary(sweep_dir / name) or {}).get("status") != "finished"]
            if unselected:
                held = [name for name in members if name in selected]
                claimed.update(held)
                report(f"{', '.join(held)}: not started; an interrupted population holds them with "
                       f"{', '.join(unselected)}, not selected: select them too to resume it from its checkpoint")
    return jobs, [run for run in pending if run.name not in claimed]


def population_checkpoint_matches(run_dirs: list[Path]) -> bool:
    """Whether the first member's folder holds a population checkpoint written for exactly these members (their
    run names, in order): then the population process resumes from it."""
    manifests = checkpoint_manifests(run_dirs[0])
    return bool(manifests) and checkpoint_members(manifests[0]) == [run_dir.name for run_dir in run_dirs]


ORDERS = ("config", "seed")


def start_order(jobs: list[Job], order: str) -> list[Job]:
    """The jobs (a run, or a population's runs) in the order they start: "config" as the config lists them (arm by
    arm), "seed" every arm's first seed before any arm's second, and so on (a job goes by its lowest seed), so that
    a long sweep stopped part-way has every arm at its first seeds. Populations are packed before this (and an
    interrupted one keeps its members: resumed_jobs), so the order never changes which runs share one."""
    if order not in ORDERS:
        raise ValueError(f"unknown run order {order!r} (allowed: {', '.join(ORDERS)})")
    return sorted(jobs, key=lambda job: min(run.seed for run in job.runs)) if order == "seed" else list(jobs)


def plan_jobs(sweep: Sweep, pending: list[RunSpec], sweep_dir: Path, population_size: int, order: str,
              report: Callable[[str], None]) -> list[Job]:
    """The jobs that train `pending`, in start order: interrupted attempts as they ran (resumed_jobs, said), the
    rest packed into populations of `population_size` where the agent has one (any backend) and the run may
    join one (trains_in_population), else alone."""
    resumed, fresh = resumed_jobs(pending, sweep.runs, sweep_dir, sweep.agent, report)
    if resumed:
        resumed_sizes = [len(job.runs) for job in resumed if job.population]
        singles = len(resumed) - len(resumed_sizes)
        report("resuming from their checkpoints: " + ", ".join(
            ([f"{len(resumed_sizes)} population(s) of {sum(resumed_sizes)} runs"] if resumed_sizes else [])
            + ([f"{singles} single run(s)"] if singles else [])))
    may_pack = population_size > 1
    packed, alone = [], []
    for run in fresh:
        (packed if may_pack and trains_in_population(run, sweep.agent) else alone).append(run)
    new_populations = [Job(runs, True) for runs in population_jobs(packed, sweep.agent, population_size)]
    return start_order(resumed + new_populations + [Job([run], False) for run in alone], order)


def describe_plan(jobs: list[Job]) -> str:
    """What a launch would start: each population process's members (first and last; in start order), then the
    single runs' count."""
    lines = [f"population of {len(job.runs)}: {job.runs[0].name}" + (f" ... {job.runs[-1].name}" if len(job.runs) > 1
                                                                      else "") for job in jobs if job.population]
    singles = sum(not job.population for job in jobs)
    return "\n".join(lines + ([f"{singles} single run(s)"] if singles else [])
                     + [f"{len(jobs)} process(es) to start"])


def assign_gpus(num_gpus: int, runs_per_gpu: int) -> list[str]:
    """Slots for GPU packing: each visible GPU id repeated `runs_per_gpu` times, interleaved across GPUs."""
    if num_gpus < 0 or runs_per_gpu < 1:
        raise ValueError(f"invalid GPU packing: {num_gpus} GPUs x {runs_per_gpu} runs per GPU")
    return [str(gpu) for _ in range(runs_per_gpu) for gpu in range(num_gpus)]


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else every device torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]
