"""The RL optimizer benchmark's ruleset (configs/benchmark.yaml): its tasks, each profile's budgets and protocol, and
the optimizers it names. Read and checked here without torch, so the leaderboard (analysis layer) can compare a
row's suite digest with the current one.

A profile's tasks are what every optimizer is measured on: the agent program, its fixed flags (the task's and the
profile's), the optimizer flag prefixes (TD3: actor-optim and critic-optim take one spec), the score's window, the
number of tuning trials, the tuning seeds, the evaluation seeds, the pruner. The digest covers all of it and the
rules and sampler, not the optimizer catalog: two rows of one digest were tuned and evaluated alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from .runs import is_safe_name
from .sweep_config import SweepConfigError, read_yaml

TOP_LEVEL_KEYS = {"version", "rules", "sampler", "tasks", "profiles", "optimizers"}
TASK_KEYS = {"program", "optimizer_flags", "last_episodes", "parameters"}
PROTOCOL_KEYS = {"parameters", "trials", "tuning_seeds", "eval_seeds", "report_every", "pruner"}
OPTIMIZER_KEYS = {"description", "flags", "lr", "search"}
DEFAULT_SUITE = Path("configs/benchmark.yaml")


class SuiteError(SweepConfigError):
    """A malformed ruleset or optimizer entry; the message names the file, the key and what is allowed."""


@dataclasses.dataclass(frozen=True)
class TaskProtocol:
    """One task of one profile: what every optimizer is trained on and how it is tuned and evaluated."""

    name: str
    program: str
    optimizer_flags: tuple[str, ...]
    last_episodes: int
    parameters: dict[str, Any]
    trials: int
    tuning_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    report_every: int
    pruner: dict[str, Any]

    @property
    def total_timesteps(self) -> int:
        return int(self.parameters["total-timesteps"])


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
    """An optimizer as the benchmark tunes it: its spec's fixed flags (no task prefix), its lr range (log-uniform),
    and its other searched flags ({flag: {low, high, log}} or {flag: {choices}})."""

    name: str
    description: str
    flags: dict[str, Any]
    lr: tuple[float, float]
    search: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def definition(self) -> dict[str, Any]:
        return {"description": self.description, "flags": self.flags, "lr": list(self.lr), "search": self.search}


def searched_ranges(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The flags an optimizer definition (OptimizerEntry.definition, as a row records it) searches, without task
    prefix: its lr, log-uniform over its range, then its own searched flags."""
    low, high = definition["lr"]
    return {"lr": {"low": low, "high": high, "log": True}, **definition.get("search", {})}


@dataclasses.dataclass(frozen=True)
class Suite:
    path: Path
    version: int
    profile: str
    description: str
    rules: dict[str, Any]
    sampler: dict[str, int]
    tasks: dict[str, TaskProtocol]
    optimizers: dict[str, OptimizerEntry]

    def digest(self) -> str:
        """What makes two leaderboard rows comparable (the optimizer catalog excluded)."""
        what = {"version": self.version, "profile": self.profile, "rules": self.rules, "sampler": self.sampler,
                "tasks": {name: dataclasses.asdict(task) for name, task in self.tasks.items()}}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=list).encode()).hexdigest()[:16]


def anchors_path(suite: Suite, leaderboard: Path) -> Path:
    """Where the random policy's returns under this suite digest are (one file per digest: none is overwritten)."""
    return leaderboard / suite.profile / "anchors" / f"{suite.digest()}.json"


def _fail(path: Path, key: str, problem: str) -> SuiteError:
    return SuiteError(f"{path}: key {key!r}: {problem}")


def _int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _seeds(value: Any) -> bool:
    return isinstance(value, list) and value and len(set(value)) == len(value) and all(_int(s) for s in value)


def _mapping(path: Path, key: str, value: Any, allowed: set[str] | None = None, required: set[str] = frozenset()):
    if not isinstance(value, dict):
        raise _fail(path, key, "must be a mapping")
    if allowed is not None and (unknown := sorted(set(value) - allowed)):
        raise _fail(path, f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    if missing := sorted(required - set(value)):
        raise _fail(path, f"{key}.{missing[0]}", f"missing (required: {', '.join(sorted(required))})")
    return value


def load_suite(path: str | Path = DEFAULT_SUITE, profile: str = "cpu") -> Suite:
    """The ruleset in `path` for `profile`; SuiteError naming the file, the key and what is allowed."""
    path = Path(path)
    data = _mapping(path, "(top level)", read_yaml(path, "benchmark suite", SuiteError), TOP_LEVEL_KEYS,
                    TOP_LEVEL_KEYS - {"sampler"})
    if not _int(data["version"], 1):
        raise _fail(path, "version", f"{data['version']!r} must be an integer >= 1")
    rules = _mapping(path, "rules", data["rules"], {"min_lr_decades", "min_eval_seeds", "reference"},
                     {"min_lr_decades", "min_eval_seeds", "reference"})
    if not (isinstance(rules["min_lr_decades"], (int, float)) and rules["min_lr_decades"] > 0):
        raise _fail(path, "rules.min_lr_decades", f"{rules['min_lr_decades']!r} must be a number > 0")
    if not _int(rules["min_eval_seeds"], 1):
        raise _fail(path, "rules.min_eval_seeds", f"{rules['min_eval_seeds']!r} must be an integer >= 1")
    sampler = _mapping(path, "sampler", data.get("sampler", {}), {"startup_trials", "seed"})
    if not all(_int(v) for v in sampler.values()):
        raise _fail(path, "sampler", f"{sampler!r}: startup_trials and seed must be integers >= 0")
    profiles = _mapping(path, "profiles", data["profiles"])
    if profile not in profiles:
        raise _fail(path, "profiles", f"no profile {profile!r} (allowed: {', '.join(profiles)})")
    chosen = _mapping(path, f"profiles.{profile}", profiles[profile], {"description", "tasks"}, {"tasks"})
    task_defaults = _mapping(path, "tasks", data["tasks"])
    chosen_tasks = _mapping(path, f"profiles.{profile}.tasks", chosen["tasks"])
    if missing := sorted(set(task_defaults) - set(chosen_tasks)):
        raise _fail(path, f"profiles.{profile}.tasks", f"has no budget for task(s) {', '.join(missing)}")
    tasks = {}
    for name, protocol in chosen_tasks.items():
        key = f"profiles.{profile}.tasks.{name}"
        if name not in task_defaults:
            raise _fail(path, key, f"no such task (allowed: {', '.join(task_defaults)})")
        task = _mapping(path, f"tasks.{name}", task_defaults[name], TASK_KEYS, TASK_KEYS)
        protocol = _mapping(path, key, protocol, PROTOCOL_KEYS, PROTOCOL_KEYS)
        tasks[name] = _task(path, key, name, task, protocol, rules)
    optimizers = {name: optimizer_entry(path, f"optimizers.{name}", name, entry, rules)
                  for name, entry in _mapping(path, "optimizers", data["optimizers"]).items()}
    if rules["reference"] not in optimizers:
        raise _fail(path, "rules.reference", f"{rules['reference']!r} is not under optimizers (allowed: "
                    f"{', '.join(optimizers)})")
    return Suite(path, data["version"], profile, str(chosen.get("description", "")), dict(rules), dict(sampler),
                 tasks, optimizers)


def _task(path: Path, key: str, name: str, task: dict, protocol: dict, rules: dict) -> TaskProtocol:
    if not is_safe_name(name):
        raise _fail(path, key, "task names use letters, digits, '-', '_', '.'")
    prefixes = task["optimizer_flags"]
    if not (isinstance(prefixes, list) and prefixes and all(isinstance(p, str) and p for p in prefixes)):
        raise _fail(path, f"tasks.{name}.optimizer_flags", "must list the agent's optimizer specs, e.g. [optim]")
    if not _int(task["last_episodes"], 1):
        raise _fail(path, f"tasks.{name}.last_episodes", f"{task['last_episodes']!r} must be an integer >= 1")
    parameters = {**_mapping(path, f"tasks.{name}.parameters", task["parameters"]),
                  **_mapping(path, f"{key}.parameters", protocol["parameters"])}
    if not _int(parameters.get("total-timesteps"), 1):
        raise _fail(path, f"{key}.parameters", "must set total-timesteps, an integer >= 1")
    if any(flag == "seed" or flag.split(".")[0] in prefixes for flag in parameters):
        raise _fail(path, f"{key}.parameters", "sets a seed or optimizer flag (the benchmark sets those)")
    if not _int(protocol["trials"], 1):
        raise _fail(path, f"{key}.trials", f"{protocol['trials']!r} must be an integer >= 1")
    for seeds in ("tuning_seeds", "eval_seeds"):
        if not _seeds(protocol[seeds]):
            raise _fail(path, f"{key}.{seeds}", f"{protocol[seeds]!r} must be a non-empty list of distinct integers")
    if len(protocol["eval_seeds"]) < rules["min_eval_seeds"]:
        raise _fail(path, f"{key}.eval_seeds", f"{len(protocol['eval_seeds'])} seeds (the rules ask for at least "
                    f"{rules['min_eval_seeds']})")
    if reused := sorted(set(protocol["tuning_seeds"]) & set(protocol["eval_seeds"])):
        raise _fail(path, f"{key}.eval_seeds", f"{reused} are also tuning seeds (evaluation needs fresh seeds)")
    if not (_int(protocol["report_every"], 1) and protocol["report_every"] <= parameters["total-timesteps"]):
        raise _fail(path, f"{key}.report_every", f"{protocol['report_every']!r} must be an integer in [1, "
                    f"total-timesteps]")
    pruner = _mapping(path, f"{key}.pruner", protocol["pruner"])
    return TaskProtocol(name, task["program"], tuple(prefixes), task["last_episodes"], parameters, protocol["trials"],
                        tuple(protocol["tuning_seeds"]), tuple(protocol["eval_seeds"]), protocol["report_every"],
                        dict(pruner))


def _range(path: Path, key: str, value: Any) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                for v in value) and 0 < value[0] < value[1]):
        raise _fail(path, key, f"{value!r} must be [low, high] with 0 < low < high")
    return float(value[0]), float(value[1])


def optimizer_entry(path: Path, key: str, name: str, entry: Any, rules: dict[str, Any]) -> OptimizerEntry:
    """An optimizer entry ({description, flags, lr: [low, high], search}) checked against the rules: its name is
    one folder name, its lr range spans at least rules.min_lr_decades decades, its searched flags are ranges or
    choices and none is also fixed."""
    if not (isinstance(name, str) and is_safe_name(name)):
        raise _fail(path, key, f"{name!r}: optimizer names use letters, digits, '-', '_', '.'")
    entry = _mapping(path, key, entry, OPTIMIZER_KEYS, {"flags", "lr"})
    flags = _mapping(path, f"{key}.flags", entry["flags"])
    if "name" not in flags:
        raise _fail(path, f"{key}.flags", "must set name (the factory's optimizer name, or custom with target)")
    low, high = _range(path, f"{key}.lr", entry["lr"])
    if (decades := math.log10(high / low)) < rules["min_lr_decades"] - 1e-9:
        raise _fail(path, f"{key}.lr", f"[{low:g}, {high:g}] spans {decades:.2f} decades (the rules ask for at least "
                    f"{rules['min_lr_decades']})")
    search = _mapping(path, f"{key}.search", entry.get("search") or {})
    for flag, spec in search.items():
        if flag in flags or flag == "lr":
            raise _fail(path, f"{key}.search.{flag}", "is also fixed under flags (or is lr, searched by the rules)")
        spec = _mapping(path, f"{key}.search.{flag}", spec, {"low", "high", "log", "int", "choices"})
        if "choices" not in spec and not {"low", "high"} <= set(spec):
            raise _fail(path, f"{key}.search.{flag}", "must be {low, high, log} or {choices: [...]}")
    return OptimizerEntry(name, str(entry.get("description", "")), dict(flags), (low, high),
                          {flag: dict(spec) for flag, spec in search.items()})
