"""Sweeps: a config of environments x optimizer arms x hyperparameter grids x seeds, expanded into runs and
executed in parallel (local process pool, GPU packing, or Ray), resumable.

Config (YAML), in the layout of a Weights & Biases grid sweep plus one harness extension, `arms`:

    name: paper-dqn-cartpole              # runs go to <results_dir>/<name>/<run name>/
    program: agents/dqn.py                # one of the agents
    method: grid
    description: free text
    metric: {name: charts/episodic_return, goal: maximize}
    parameters:                           # the agent's flags: `value` (fixed) or `values` (a grid axis)
      env-id: {value: CartPole-v1}
      total-timesteps: {value: 500000}
      seed: {values: [1, 2, 3]}
    arms:                                 # named optimizer settings, each crossed with the grid
      adam: {}
      alphagrad-93: {optim.name: alphagrad, optim.alpha: 93}

Each run is `python <program> --<flag> <value> ... --run-name <run> --results-dir <results_dir>/<name>`.
A run whose summary.json says "finished" is skipped when the sweep is run again; an unfinished run
continues from its newest checkpoint (`--resume`, see alphagrad_rl.checkpoint), or is started afresh (its
folder cleared) when it has none, so a killed sweep loses at most the work since each run's last
checkpoint and duplicates nothing; an interrupted population resumes as that population and a checkpointed single
run alone, whatever the next launch's packing (resumed_jobs). Killing the launcher sends its runs SIGTERM: each
saves a checkpoint.
With the local backend each run is locked while it trains (<results_dir>/<name>/.locks/), so two launchers
sharing a results folder split a sweep between them and never train one run twice (LaunchOptions.wait_for_others:
each then also waits for the other's runs at the end, resuming any it left stopped).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import math
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import tyro
import yaml

from .analysis import compact_record_path, export_records
from .factory import capabilities, optimizer_specs, takes_stacked_parameters
from .progress import SweepProgress
from .runs import (
    LOCK_WAIT_S,
    checkpoint_manifests,
    config_differences,
    is_safe_name,
    latest_progress,
    lock_runs,
    locked_env,
    process_seconds,
    read_run,
    read_summary,
    record_damage,
    release_runs,
    run_locked,
    safe_name,
    trained_options,
    write_json_atomic,
)

TOP_LEVEL_KEYS = {"name", "program", "method", "description", "metric", "parameters", "arms"}
REQUIRED_KEYS = {"name", "program", "parameters", "arms"}
RESERVED_FLAGS = {"run-name", "results-dir"}
OPTION_KEY = ".options."  # "<optimizer>.options.<key>": one keyword argument of a custom optimizer (--optim.options)


class SweepConfigError(ValueError):
    """A malformed sweep config; the message names the file, the key and what is allowed."""


class RecordConflict(ValueError):
    """A record in the --records folder that a launch would overwrite (recorded_runs); the message names each."""


@dataclasses.dataclass(frozen=True)
class AgentEntry:
    """An agent that sweeps can run: its script, its tyro Args dataclass and its argument checks (raise ValueError).
    The launcher is given a registry {program as configs name it (e.g. "agents/dqn.py"): AgentEntry}."""

    path: Path
    args_type: type
    check: Callable[[Any], None]
    population: Path | None = None  # its population variant's script, which takes --seeds and --run-names
    # what its population takes per member: ((the flags one value sets, e.g. TD3's actor and critic alpha), the
    # population's list option), e.g. ((("optim.alpha",), "alphas"), (("optim.lr",), "lrs"))
    member_flags: tuple[tuple[tuple[str, ...], str], ...] = ()


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    arm: str
    seed: int
    flags: tuple[tuple[str, Any], ...]  # (flag without dashes, value), in order

    def flag_args(self) -> list[str]:
        """The agent's command-line flags for this run, without the launcher's own (run name, results folder)."""
        return [arg for flag, value in merged_options(self.flags) for arg in _flag_args(flag, value)]

    def argv(self, program: Path, results_dir: Path, extra: tuple[str, ...] = ()) -> list[str]:
        return [sys.executable, str(program), *self.flag_args(), *self.exp_name_args(), "--run-name", self.name,
                "--results-dir", str(results_dir), *extra]

    def exp_name_args(self) -> list[str]:
        """`--exp-name <arm>` (CleanRL's experiment name: W&B's job type and openrlbenchmark's selector), unless the
        config sets exp-name itself."""
        return [] if any(flag == "exp-name" for flag, _ in self.flags) else ["--exp-name", self.arm]


@dataclasses.dataclass
class Sweep:
    name: str
    program: str
    agent: AgentEntry
    runs: list[RunSpec]
    parameters: dict[str, dict[str, Any]]
    arms: dict[str, dict[str, Any]]
    metric: dict[str, Any] | None = None
    description: str = ""


def _flag_args(flag: str, value: Any) -> list[str]:
    if isinstance(value, bool):  # tyro booleans: --flag / --no-flag (nested: --optim.no-agr)
        prefix, dot, leaf = flag.rpartition(".")
        return [f"--{flag}" if value else f"--{prefix}{dot}no-{leaf}"]
    if isinstance(value, (list, tuple)):
        return [f"--{flag}", *map(str, value)]
    if isinstance(value, dict):  # a custom optimizer's options: JSON text
        return [f"--{flag}", json.dumps(value)]
    return [f"--{flag}", "None" if value is None else str(value)]


def merged_options(flags: tuple[tuple[str, Any], ...]) -> list[tuple[str, Any]]:
    """`flags` with each "<optimizer>.options.<key>" folded into that optimizer's options mapping (given as a mapping
    or as JSON text, or not at all), which goes to the agent as one JSON flag; the other flags as they are."""
    merged: dict[str, Any] = {}
    for flag, value in flags:
        spec, found, key = flag.partition(OPTION_KEY)
        if found:
            flag, value = f"{spec}.options", {key: value}
        if flag.endswith(".options") and flag in merged:
            value = {**_options(merged[flag]), **_options(value)}
        merged[flag] = value
    return list(merged.items())


def _options(value: Any) -> dict[str, Any]:
    """A custom optimizer's options as a mapping, from a mapping or JSON text (ValueError for anything else)."""
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(f"invalid optimizer options: {value!r} (allowed: a mapping, or a JSON object)")
    return parsed


def flag_problem(flag: str, flags: set[str], program: str) -> str | None:
    """Why the agent `program` does not take `flag`, or None when it does: one of its `flags`, or
    "<optimizer>.options.<key>", one keyword argument of a custom optimizer (merged_options)."""
    spec, found, key = flag.partition(OPTION_KEY)
    if flag in flags or (found and f"{spec}.options" in flags and key.isidentifier()):
        return None
    return (f"{flag!r} is not a flag of {program} (allowed: {', '.join(sorted(flags))}; and <optimizer>.options.<key> "
            "for one keyword argument of a custom optimizer)")


def agent_flags(args_type: type) -> set[str]:
    """Every flag the agent accepts (tyro style: dashes, nested dataclasses joined by dots)."""

    def walk(cls: type, prefix: str) -> set[str]:
        flags = set()
        for f in dataclasses.fields(cls):
            name = prefix + f.name.replace("_", "-")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                flags |= walk(type(default), name + ".")
            else:
                flags.add(name)
        return flags

    return walk(args_type, "")


def check_run_arguments(agent: AgentEntry, run: RunSpec) -> None:
    """Parse a run's flags with the agent's own parser and run the agent's own checks; ValueError if they fail."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            args = tyro.cli(agent.args_type, args=[*run.flag_args(), "--run-name", run.name])
    except SystemExit:
        lines = [line.strip(" │|-─") for line in captured.getvalue().splitlines()]
        message = next((line for line in lines if line.startswith("Error")), None) or next(
            (line for line in lines if line and "rror" in line), "the agent's parser refused its arguments")
        raise ValueError(message) from None
    agent.check(args)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with a key given twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


ConfigErrorMaker = Callable[[str, str], SweepConfigError]


def read_config(path: Path, kind: str, top_level_keys: set[str], required_keys: set[str],
                agents: Mapping[str, AgentEntry]) -> tuple[dict[str, Any], ConfigErrorMaker, AgentEntry]:
    """A YAML config file (a sweep's or a tuner's) as a mapping whose top-level keys, `name` and `program` are
    checked, with its error maker fail(key, problem) and its agent. SweepConfigError names the file and the key
    (a missing or malformed file, a key given twice, an unknown or missing key, an unsafe name, an unknown program)."""
    if not path.is_file():
        raise SweepConfigError(f"{path}: no such {kind} config")
    try:
        config = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise SweepConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise SweepConfigError(f"{path}: the top level must be a mapping of {sorted(top_level_keys)}")

    def fail(key: str, problem: str) -> SweepConfigError:
        return SweepConfigError(f"{path}: key {key!r}: {problem}")

    for key in config:
        if key not in top_level_keys:
            raise fail(key, f"unknown key (allowed: {', '.join(sorted(top_level_keys))})")
    for key in sorted(required_keys - set(config)):
        raise fail(key, "missing (required: " + ", ".join(sorted(required_keys)) + ")")
    name = config["name"]
    if not (isinstance(name, str) and is_safe_name(name)):
        raise fail("name", f"{name!r} must be one folder name of letters, digits and '-_.=+,@'")
    if config["program"] not in agents:
        raise fail("program", f"{config['program']!r} (allowed: {', '.join(agents)})")
    return config, fail, agents[config["program"]]


def load_sweep(path: str | Path, agents: Mapping[str, AgentEntry]) -> Sweep:
    """Read, validate and expand a sweep config whose program is one of `agents` (SweepConfigError on any
    problem). Every run's arguments are checked with the agent's own parser and checks."""
    path = Path(path)
    config, fail, agent = read_config(path, "sweep", TOP_LEVEL_KEYS, REQUIRED_KEYS, agents)
    name, program = config["name"], config["program"]
    if config.get("method", "grid") != "grid":
        raise fail("method", f"{config['method']!r} is not supported (allowed: grid)")
    flags = agent_flags(agent.args_type)

    def check_flag(key: str, flag: Any) -> None:
        if flag in RESERVED_FLAGS:
            raise fail(key, f"{flag!r} is set by the launcher")
        if problem := flag_problem(flag, flags, program):
            raise fail(key, problem)

    parameters = config["parameters"]
    if not isinstance(parameters, dict):
        raise fail("parameters", "must map flags to {value: x} or {values: [x, ...]}")
    axes: list[tuple[str, list[Any]]] = []
    for flag, spec in parameters.items():
        check_flag(f"parameters.{flag}", flag)
        if not isinstance(spec, dict) or len(spec) != 1 or not ({"value", "values"} & set(spec)):
            raise fail(f"parameters.{flag}", "must be {value: x} or {values: [x, ...]}")
        values = [spec["value"]] if "value" in spec else spec["values"]
        if not isinstance(values, list) or not values:
            raise fail(f"parameters.{flag}.values", "must be a non-empty list")
        as_flags = [" ".join(_flag_args(flag, value)) for value in values]  # 5000 and "5000" are the same run
        if repeated := sorted({shown for shown in as_flags if as_flags.count(shown) > 1}):
            raise fail(f"parameters.{flag}.values", f"lists a value more than once ({', '.join(repeated)}): "
                       "two runs would share one folder")
        axes.append((flag, values))
    if "seed" not in parameters:
        axes.append(("seed", [1]))

    arms = config["arms"]
    if not isinstance(arms, dict) or not arms:
        raise fail("arms", "must map arm names to flag settings (an empty {} keeps the agent's defaults)")
    for arm, settings in arms.items():
        if not isinstance(arm, str) or not arm.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise fail(f"arms.{arm}", "arm names use letters, digits, '-', '_' and '.'")
        if not isinstance(settings, dict):
            raise fail(f"arms.{arm}", "must map flags to values")
        for flag in settings:
            check_flag(f"arms.{arm}.{flag}", flag)
            if flag in parameters:
                raise fail(f"arms.{arm}.{flag}", "is also set under parameters")

    varying = [flag for flag, values in axes if len(values) > 1 and flag != "seed"]
    runs = []
    for arm, settings in arms.items():
        for combination in itertools.product(*(values for _, values in axes)):
            chosen = dict(zip((flag for flag, _ in axes), combination))
            label = "__".join([arm] + [safe_name(f"{flag}={chosen[flag]}") for flag in varying] + [f"s{chosen['seed']}"])
            seed = chosen["seed"]
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise fail("parameters.seed", f"seed {seed!r} is not an integer")
            runs.append(RunSpec(label, arm, seed, tuple({**chosen, **settings}.items())))
    names = [run.name for run in runs]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise fail("arms", f"two runs would share the folder {repeated[0]!r}: arm names and grid values must tell "
                   "every run apart")
    for run in runs:
        try:
            check_run_arguments(agent, run)
        except ValueError as error:
            raise fail(f"run {run.name}", f"{' '.join(run.flag_args())}: {error}") from None
    trains: dict[str, str] = {}  # what a run trains (its options as the agent parses them) -> its name
    for run in runs:
        other = trains.setdefault(json.dumps(run_settings(run, agent), sort_keys=True, default=str), run.name)
        if other != run.name:
            raise fail("parameters", f"runs {other} and {run.name} train the same options as the agent reads them "
                       "(e.g. YAML reads 1e-3 as text and 0.001 as a number): they would count as two runs; list "
                       "each setting once")
    return Sweep(name=name, program=program, agent=agent, runs=runs, parameters=parameters, arms=arms,
                 metric=config.get("metric"), description=str(config.get("description", "")))


def wandb_sweep_configs(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """One plain W&B grid-sweep config per arm (W&B has no arms: the arm's settings become fixed
    parameters). Each run logs to W&B in the group named after the sweep, with the arm as its exp_name (its
    job type); `wandb sweep FILE` then `wandb agent ID` runs it on the W&B service."""
    varied = [flag for flag, spec in sweep.parameters.items() if OPTION_KEY in flag and len(spec.get("values", [0])) > 1]
    if varied:
        raise SweepConfigError(f"{sweep.name}: a W&B sweep cannot vary one key of a custom optimizer's options "
                               f"({', '.join(varied)}): give each value its own arm")
    booleans = [flag for flag, spec in sweep.parameters.items() if len(spec.get("values", [0])) > 1
                and any(isinstance(value, bool) for value in spec["values"])]
    if booleans:
        raise SweepConfigError(f"{sweep.name}: a W&B sweep cannot vary a boolean flag ({', '.join(booleans)}): W&B "
                               "passes a false one by leaving it out, so the agent's default would train; give each "
                               "value its own arm")
    fixed = {flag: spec["value"] if "value" in spec else spec["values"][0] for flag, spec in sweep.parameters.items()
             if len(spec.get("values", [0])) == 1}
    configs = {}
    for arm, settings in sweep.arms.items():
        parameters = {**{flag: spec for flag, spec in sweep.parameters.items() if flag not in fixed},
                      **dict(_wandb_parameter(flag, value)
                             for flag, value in merged_options(tuple({**fixed, **settings}.items())))}
        configs[f"{sweep.name}-{arm}"] = {
            "name": f"{sweep.name}-{arm}",
            "description": f"{sweep.description} (arm {arm})".strip(),
            "program": sweep.program,
            "method": "grid",
            **({"metric": sweep.metric} if sweep.metric else {}),
            "parameters": parameters,
            "command": ["${env}", "${interpreter}", "${program}", "--track", "--wandb-group", sweep.name,
                        *([] if "exp-name" in {**fixed, **settings} or "exp-name" in parameters else
                          ["--exp-name", arm]),
                        "${args_no_boolean_flags}"],  # --flag=value, and true booleans as bare --flag (tyro)
        }
    return configs


def _wandb_parameter(flag: str, value: Any) -> tuple[str, dict[str, Any]]:
    """One fixed flag as a W&B sweep parameter. W&B's ${args_no_boolean_flags} passes a true boolean as a bare
    --flag and drops a false one, so a false boolean is given as its tyro negation set true (--no-flag, nested
    --optim.no-agr); a custom optimizer's options mapping as its JSON text."""
    if isinstance(value, bool):
        prefix, dot, leaf = flag.rpartition(".")
        return (flag if value else f"{prefix}{dot}no-{leaf}"), {"value": True}
    return flag, {"value": json.dumps(value) if isinstance(value, dict) else value}


def filter_runs(runs: list[RunSpec], arms: tuple[str, ...] = (), seeds: tuple[int, ...] = ()) -> list[RunSpec]:
    known_arms = {run.arm for run in runs}
    unknown = set(arms) - known_arms
    if unknown:
        raise SweepConfigError(f"unknown arm(s) {sorted(unknown)} (allowed: {', '.join(sorted(known_arms))})")
    unknown_seeds = set(seeds) - {run.seed for run in runs}
    if unknown_seeds:
        raise SweepConfigError(f"unknown seed(s) {sorted(unknown_seeds)} (allowed: "
                               f"{', '.join(map(str, sorted({run.seed for run in runs})))})")
    selected = [run for run in runs if (not arms or run.arm in arms) and (not seeds or run.seed in seeds)]
    if not selected:
        raise SweepConfigError(f"no run of arm(s) {', '.join(arms)} has seed(s) {', '.join(map(str, seeds))}")
    return selected


def override_flag(runs: list[RunSpec], flag: str, value: Any) -> list[RunSpec]:
    """Set `flag` to `value` in every run (e.g. a smaller total-timesteps for a quick version)."""
    return [dataclasses.replace(run, flags=tuple({**dict(run.flags), flag: value}.items())) for run in runs]


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


def stop_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, so a killed sweep leaves no orphan run behind;
    the run saves a checkpoint and stops, and the next launch resumes it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
        if differences := config_differences(record["config"]["config"], dataclasses.asdict(_parsed(run, agent)),
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
        progress.append(RunProgress(run.name, state, step, int(_parsed(run, agent).total_timesteps), resumable,
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


def prepare_run_folders(run_dirs: list[Path], population: bool) -> bool:
    """Whether an earlier attempt continues from its checkpoint: the run's own, or a population's in its first
    member's folder when written for exactly these members. If not, the folders are emptied for a fresh start (a
    population checkpoint reaches a single run only when its population cannot resume: resumed_jobs)."""
    if population:
        resume = population_checkpoint_matches(run_dirs)
    else:
        manifests = checkpoint_manifests(run_dirs[0])
        resume = bool(manifests) and checkpoint_members(manifests[0]) is None
    for run_dir in run_dirs:
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    return resume


def open_run_log(path: Path, resume: bool, marker: str) -> IO[str]:
    """A run's output.log: appended to, under a line saying `marker` and when, for a resumed run; else new."""
    log = open(path, "a" if resume else "w")
    if resume:
        log.write(f"\n--- {marker} at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        log.flush()
    return log


def execute_run(argv: list[str], run_dir: str, env: dict[str, str], cwd: str,
                pass_fds: tuple[int, ...] = ()) -> dict[str, Any]:
    """Run one agent process (inheriting `pass_fds`: its locks); its output goes to <run_dir>/output.log. Returns
    the run's summary. An unfinished earlier attempt is resumed from its checkpoint (--resume), or started afresh
    without one."""
    run_dir = Path(run_dir)
    resume = prepare_run_folders([run_dir], population=False)
    start = time.time()
    with open_run_log(run_dir / "output.log", resume, "resumed by the sweep launcher") as log:
        returncode = subprocess.run(argv + ["--resume"] * resume, cwd=cwd, env=locked_env(env, pass_fds),
                                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=stop_with_parent,
                                    pass_fds=pass_fds).returncode
    summary = read_summary(run_dir) or {}
    if returncode != 0 and summary.get("status") in (None, "running", "finished"):
        tail = (run_dir / "output.log").read_text(errors="replace")[-4000:]
        summary = {**summary, "status": "crashed", "error": f"exit code {returncode}\n{tail}",
                   "wall_clock_s": round(time.time() - start, 3)}
        write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _parsed(run: RunSpec, agent: AgentEntry) -> Any:
    """The agent's options for `run`, as its own parser reads them (defaults filled in)."""
    return _parse(agent.args_type, tuple(run.flag_args()), run.name)


@functools.lru_cache(maxsize=4096)
def _parse(args_type: type, flag_args: tuple[str, ...], run_name: str) -> Any:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return tyro.cli(args_type, args=[*flag_args, "--run-name", run_name])


def run_settings(run: RunSpec, agent: AgentEntry) -> dict[str, Any]:
    """What `run` trains: its options as the agent parses them, without those that do not change a run
    (runs.RESUME_MAY_CHANGE: run name, results folder, logging, ...)."""
    return trained_options(dataclasses.asdict(_parsed(run, agent)))


def settings_digest(runs: list[RunSpec], agent: AgentEntry) -> str:
    """8 hex digits that change with what any of `runs` trains (a sweep's folder for its edited settings)."""
    text = json.dumps([[run.name, run_settings(run, agent)] for run in runs], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


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


def per_member_options(run: RunSpec, agent: AgentEntry) -> dict[str, tuple[str, ...]]:
    """The population's list options (e.g. "alphas") that can carry `run`'s values, with the flags each one sets:
    what the optimizer declares (factory.capabilities: AlphaGrad's alpha, lr and momentum; another optimizer's lr
    when its step is linear in the lr); for several optimizers (TD3's actor and critics) only when they agree."""
    args, options = _parsed(run, agent), {}
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
    return agent.population is not None and all(map(takes_stacked_parameters, optimizer_specs(_parsed(run, agent))))


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
        argv += [f"--{option}", *(str(getattr(getattr(_parsed(run, agent), role.replace("-", "_")), field))
                                  for run in runs)]
    if runs[0].exp_name_args():
        argv += ["--exp-names", *(run.arm for run in runs)]
    return argv + ["--run-names", *(run.name for run in runs), "--results-dir", str(results_dir), *extra]


def checkpoint_members(manifest: Path) -> list[str] | None:
    """The run names of the members a population checkpoint (its manifest) holds, in order; None for another
    checkpoint (a single-file run's) or an unreadable one."""
    try:
        config = json.loads(manifest.read_text())["config"]
        return [config[f"member{i}"]["run_name"] for i in range(len(config))]
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


def execute_population(argv: list[str], run_dirs: list[str], env: dict[str, str], cwd: str,
                       pass_fds: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Run one population process (inheriting `pass_fds`: its locks); its output goes to the first member's
    output.log (the others point to it).
    A population interrupted earlier with these same members continues from its checkpoint (--resume, in the
    first member's folder); otherwise the members start afresh. Returns each member's summary."""
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    resume = prepare_run_folders(run_dirs, population=True)
    for run_dir in run_dirs[1:]:
        (run_dir / "output.log").write_text(f"trained in one population process; its output: "
                                            f"{run_dirs[0] / 'output.log'}\n")
    start = time.time()
    with open_run_log(run_dirs[0] / "output.log", resume, "population resumed by the sweep launcher") as log:
        returncode = subprocess.run(argv + ["--resume"] * resume, cwd=cwd, env=locked_env(env, pass_fds),
                                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=stop_with_parent,
                                    pass_fds=pass_fds).returncode
    summaries = []
    for run_dir in run_dirs:
        summary = read_summary(run_dir) or {}
        if returncode != 0 and summary.get("status") in (None, "running"):
            tail = (run_dirs[0] / "output.log").read_text(errors="replace")[-4000:]
            summary = {**summary, "status": "crashed", "error": f"population exit code {returncode}\n{tail}",
                       "wall_clock_s": round(time.time() - start, 3)}
            write_json_atomic(run_dir / "summary.json", summary)
        summaries.append(summary)
    return summaries


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
    order: str = "config"  # config | seed: see start_order
    wait_for_others: bool = False  # runs another launcher is training: wait for them (and take over any it leaves)
    records_dir: Path | None = None  # write each run's compact record here as soon as it ends (export_records)
    progress: tuple[float, bool] | None = None  # live progress every N seconds, as a table (True) or lines: progress_mode


ORDERS = ("config", "seed")


def start_order(jobs: list[Job], order: str) -> list[Job]:
    """The jobs (a run, or a population's runs) in the order they start: "config" as the config lists them (arm by
    arm), "seed" every arm's first seed before any arm's second, and so on (a job goes by its lowest seed), so that
    a long sweep stopped part-way has every arm at its first seeds. Populations are packed before this (and an
    interrupted one keeps its members: resumed_jobs), so the order never changes which runs share one."""
    if order not in ORDERS:
        raise ValueError(f"unknown run order {order!r} (allowed: {', '.join(ORDERS)})")
    return sorted(jobs, key=lambda job: min(run.seed for run in job.runs)) if order == "seed" else list(jobs)


def plan_jobs(sweep: Sweep, pending: list[RunSpec], sweep_dir: Path, options: LaunchOptions,
              report: Callable[[str], None]) -> list[Job]:
    """The jobs that train `pending`, in start order: interrupted attempts as they ran (resumed_jobs, said), the
    rest packed into populations of options.population_size where the agent has one (local backend) and the run may
    join one (trains_in_population), else alone."""
    resumed, fresh = resumed_jobs(pending, sweep.runs, sweep_dir, sweep.agent, report)
    if resumed:
        resumed_sizes = [len(job.runs) for job in resumed if job.population]
        singles = len(resumed) - len(resumed_sizes)
        report("resuming from their checkpoints: " + ", ".join(
            ([f"{len(resumed_sizes)} population(s) of {sum(resumed_sizes)} runs"] if resumed_sizes else [])
            + ([f"{singles} single run(s)"] if singles else [])))
    may_pack = options.population_size > 1 and options.backend == "local"
    packed, alone = [], []
    for run in fresh:
        (packed if may_pack and trains_in_population(run, sweep.agent) else alone).append(run)
    new_populations = [Job(runs, True) for runs in population_jobs(packed, sweep.agent, options.population_size)]
    return start_order(resumed + new_populations + [Job([run], False) for run in alone], options.order)


def describe_plan(jobs: list[Job]) -> str:
    """What a launch would start: each population process's members (first and last; in start order), then the
    single runs' count."""
    lines = [f"population of {len(job.runs)}: {job.runs[0].name}" + (f" ... {job.runs[-1].name}" if len(job.runs) > 1
                                                                      else "") for job in jobs if job.population]
    singles = sum(not job.population for job in jobs)
    return "\n".join(lines + ([f"{singles} single run(s)"] if singles else [])
                     + [f"{len(jobs)} process(es) to start"])


def launch(sweep: Sweep, runs: list[RunSpec], options: LaunchOptions,
           report: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run every unfinished run of `runs`; returns {run name: summary} for all of them (skipped ones included)."""
    sweep_dir = options.results_dir.resolve() / sweep.name
    extra = options.extra_args + (("--track", "--wandb-group", sweep.name) if options.track else ())
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
    gpus = visible_gpus() if options.use_gpus else []
    slots = assign_gpus(len(gpus), options.runs_per_gpu) if gpus else []
    workers = options.workers or len(slots) or os.cpu_count() or 1
    report(f"sweep {sweep.name}: {len(runs)} runs, {len(done)} already finished, {len(pending)} to run "
           f"on {workers} worker(s) ({options.backend}{', GPUs ' + ','.join(gpus) if gpus else ', CPU'})")

    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
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

    progress = (SweepProgress(sweep_dir, {run.name: int(_parsed(run, sweep.agent).total_timesteps) for run in pending},
                              lambda: list(results), *options.progress, write=report)
                if options.progress else contextlib.nullcontext())  # (the budgets are parsed only when shown)
    with progress:
        jobs = plan_jobs(sweep, pending, sweep_dir, options, report)
        if options.backend == "ray":
            _launch_ray(sweep, jobs, options, sweep_dir, extra, base_env, gpus, finished, report)
        else:
            free_slots: queue.Queue[str] = queue.Queue()
            for slot in slots:
                free_slots.put(slot)

            taken: list[Job] = []  # jobs another launcher was training

            def one(job: Job, wait_s: float = LOCK_WAIT_S) -> None:
                fds = lock_runs(sweep_dir, [run.name for run in job.runs], wait_s)
                if fds is None:
                    taken.append(job)
                    for run in job.runs:
                        results[run.name] = read_summary(sweep_dir / run.name) or {}
                        report(f"{run.name}: skipped, another launcher is running it"
                               + (" (waited for at the end)" if options.wait_for_others else ""))
                    return
                try:
                    now = {run.name: read_summary(sweep_dir / run.name) or {} for run in job.runs}
                    for run in job.runs:
                        if now[run.name].get("status") == "finished":  # by another launcher while this one waited
                            finished(run, now[run.name])
                    left = [run for run in job.runs if now[run.name].get("status") != "finished"]
                    if left:
                        run_job(Job(left, job.population), tuple(fds))
                finally:
                    release_runs(fds)

            def run_job(job: Job, locks: tuple[int, ...]) -> None:
                gpu = free_slots.get() if slots else ""
                try:
                    summaries = execute_job(job, sweep, sweep_dir, extra, {**base_env, "CUDA_VISIBLE_DEVICES": gpu},
                                            os.getcwd(), locks)
                finally:
                    if slots:
                        free_slots.put(gpu)
                for run, summary in zip(job.runs, summaries):
                    finished(run, summary)

            pool = ThreadPoolExecutor(workers)
            try:
                list(pool.map(one, jobs))
                if options.wait_for_others and taken:  # each ends finished there, or is resumed here if it stopped
                    report(f"waiting for {sum(len(job.runs) for job in taken)} run(s) that another launcher is training")
                    list(pool.map(functools.partial(one, wait_s=math.inf), taken))
            except KeyboardInterrupt:  # Ctrl-C reached the running runs too: they save a checkpoint and stop
                pool.shutdown(wait=True, cancel_futures=True)  # and no queued run starts
                raise
            pool.shutdown()
    return results


def execute_job(job: Job, sweep: Sweep, sweep_dir: Path, extra: tuple[str, ...], env: dict[str, str], cwd: str,
                locks: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Run a job; its runs' summaries, in order."""
    if not job.population:
        run = job.runs[0]
        return [execute_run(run.argv(sweep.agent.path, sweep_dir, extra), str(sweep_dir / run.name), env, cwd, locks)]
    return execute_population(population_argv(job.runs, sweep.agent, sweep_dir, extra),
                              [str(sweep_dir / run.name) for run in job.runs], env, cwd, locks)


def _launch_ray(sweep, jobs, options, sweep_dir, extra, base_env, gpus, finished, report) -> None:
    """Each job as one Ray task (populations only where one resumes: Ray runs single-file agents otherwise). The
    cluster is the one --ray-address names ("auto": the one `ray start` made on this machine); without it a new
    local instance, never a cluster Ray would otherwise find and join. Which one it joined is reported."""
    import ray

    context = ray.init(address=options.ray_address or "local", include_dashboard=False, log_to_driver=False,
                       ignore_reinit_error=True, num_cpus=None if options.ray_address else (options.workers or None))
    resources = ray.cluster_resources()
    joined = f"the cluster at {context.address_info['gcs_address']}" if options.ray_address else "a new local instance"
    report(f"Ray: {joined} ({len(ray.nodes())} node(s), {resources.get('CPU', 0):.0f} CPUs, "
           f"{resources.get('GPU', 0):.0f} GPUs)")
    gpu_share = 1.0 / options.runs_per_gpu if gpus else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpu_share)(
        lambda job, cwd: execute_job(job, sweep, sweep_dir, extra, {**base_env, **_ray_gpu_env()}, cwd))
    futures = {remote.remote(job, os.getcwd()): job for job in jobs}
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        job = futures.pop(ready[0])
        for run, summary in zip(job.runs, ray.get(ready[0])):
            finished(run, summary)


def _ray_gpu_env() -> dict[str, str]:
    import ray

    return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in ray.get_gpu_ids())}


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
