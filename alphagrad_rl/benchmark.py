"""The RL optimizer benchmark: one optimizer through the suite's protocol (alphagrad_rl.suite), task by task.

For each task of the profile: a tuning config (alphagrad_rl.tuning) whose search is the optimizer's lr range
(log-uniform) and its own searched flags, each tied across the task's optimizer specs (TD3: one value for actor and
critic), with the suite's trials, tuning seeds, pruner and sampler seed; the study runs (resumable: run the command
again), then the best setting trains on the evaluation seeds. The committed entry, under
`<leaderboard>/<profile>/entries/<optimizer>/`:

- entry.json: the optimizer's definition and the suite (version, digest, file) it runs under; a later call with
  another definition under the same name is refused.
- <task>/: tune.yaml (the study's config), trials.csv, best.json, final-sweep.yaml, records/ (the evaluation runs'
  compact records), TUNING.md, REPORT.md and figures, result.json (the task's outcome and compute).
- row.json once every task has its result: what the leaderboard reads with the records.

A random policy's returns on each task and evaluation seed (anchors/<suite digest>.json, once per suite digest) are
the score's 0; tuned Adam's entry is its 1 (alphagrad_rl.leaderboard).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from .analysis import iqm
from .factory import OptimizerSpec, used_fields
from .runs import (
    COMPACT_SUFFIX,
    atomic_write,
    is_safe_name,
    process_seconds,
    read_run,
    read_summary,
    software_versions,
    write_json_atomic,
)
from .suite import OptimizerEntry, Suite, SuiteError, TaskProtocol, anchors_path, optimizer_entry, searched_ranges
from .sweep import LaunchOptions
from .sweep_config import AgentEntry, read_yaml
from .tuning import evaluate_best, load_tune_config, study_finished, trial_counts, tune

CUSTOM_LR_RANGE = (1.0e-5, 1.0e-2)  # a custom optimizer's lr range unless --lr-range says otherwise (Adam's)
SEARCH_SPEC = re.compile(r"^(?P<flag>[A-Za-z0-9_.-]+)=(?P<low>[^:]+):(?P<high>[^:]+)(?P<log>:log)?$")


def entry_dir(leaderboard: Path, suite: Suite, name: str) -> Path:
    return leaderboard / suite.profile / "entries" / name


def resolve_optimizer(suite: Suite, spec: str, name: str | None = None, lr_range: Sequence[float] | None = None,
                      search: Sequence[str] = ()) -> OptimizerEntry:
    """What `--optimizer` names: an optimizer of the suite's catalog, an entry file (YAML: name, description, flags,
    lr, search), or a custom optimizer's factory ('package.module:callable' or 'path/file.py:callable', named by
    `name`, its lr range `lr_range`, its searched options `search`: 'options.KEY=LOW:HIGH[:log]'). SuiteError
    naming what is wrong and what is allowed."""
    where = Path("--optimizer")
    if spec in suite.optimizers and not (lr_range or search):
        entry = suite.optimizers[spec]
        return dataclasses.replace(entry, name=name) if name else entry
    if spec.endswith((".yaml", ".yml")):
        path = Path(spec)
        data = read_yaml(path, "optimizer entry file", SuiteError)
        if not isinstance(data, dict) or "name" not in data:
            raise SuiteError(f"{path}: must be a mapping with name, description, flags, lr and (optionally) search")
        entry_name = name or data.pop("name")
        data.pop("name", None)
        return optimizer_entry(path, "(entry)", entry_name, data, suite.rules)
    if ":" not in spec:
        raise SuiteError(f"--optimizer {spec!r}: not an optimizer of {suite.path} (allowed: "
                         f"{', '.join(suite.optimizers)}), an entry file (.yaml) or a factory "
                         "('package.module:callable' or 'path/file.py:callable')")
    entry_name = name or spec.rpartition(":")[2]
    dimensions = {}
    for text in search:
        match = SEARCH_SPEC.match(text)
        if not match:
            raise SuiteError(f"--search {text!r}: allowed: FLAG=LOW:HIGH or FLAG=LOW:HIGH:log, e.g. "
                             "options.momentum=0.5:0.99")
        try:
            low, high = float(match["low"]), float(match["high"])
        except ValueError:
            raise SuiteError(f"--search {text!r}: LOW and HIGH must be numbers") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high and (low > 0 or not match["log"])):
            raise SuiteError(f"--search {text!r}: needs LOW < HIGH, finite (and LOW > 0 on a log scale)")
        dimensions[match["flag"]] = {"low": low, "high": high, "log": bool(match["log"])}
    return optimizer_entry(where, "(custom)", entry_name,
                           {"description": f"custom optimizer {spec}", "flags": {"name": "custom", "target": spec},
                            "lr": list(lr_range or CUSTOM_LR_RANGE), "search": dimensions}, suite.rules)


def study_name(suite: Suite, entry: OptimizerEntry, task: TaskProtocol) -> str:
    return f"bench-{suite.profile}-{entry.name}-{task.name}"


def agent_presets(agent: AgentEntry, prefix: str, optimizer: str) -> dict[str, Any]:
    """The optimizer settings the agent presets for the spec `prefix` (PPO: CleanRL's eps 1e-5), as flags: kept
    where `optimizer` reads the field, set back to the factory's default where it does not (Lion has no eps)."""
    preset = getattr(agent.args_type(), prefix.replace("-", "_"))
    default = OptimizerSpec()
    read = used_fields(OptimizerSpec(name=optimizer))
    return {f"{prefix}.{field.name.replace('_', '-')}": getattr(preset if field.name in read else default, field.name)
            for field in dataclasses.fields(OptimizerSpec)
            if field.name not in ("name", "lr") and getattr(preset, field.name) != getattr(default, field.name)}


def tune_config(suite: Suite, task: TaskProtocol, entry: OptimizerEntry, random_return: float,
                agents: Mapping[str, AgentEntry]) -> dict[str, Any]:
    """The tuning config of `entry` on `task`: the task's fixed flags, the agent's optimizer presets (agent_presets)
    and the optimizer's fixed flags on every optimizer spec of the task, its lr and searched flags on the first spec
    and tied to the others (`also`), the suite's budget. The trial score is the mean return above the random
    policy's (a crashed run scores as the random policy), the IQM over tuning seeds."""
    first, *others = task.optimizer_flags
    arm = {}
    for prefix in task.optimizer_flags:
        arm.update(agent_presets(agents[task.program], prefix, entry.flags["name"]))
        arm.update({f"{prefix}.{flag}": value for flag, value in entry.flags.items()})
    searched = searched_ranges(entry.definition())
    search = {f"{first}.{flag}": {**spec, **({"also": [f"{p}.{flag}" for p in others]} if others else {})}
              for flag, spec in searched.items()}
    return {"name": study_name(suite, entry, task), "program": task.program,
            "description": f"{entry.name} on {task.name} ({suite.profile} profile of {suite.path} v{suite.version}, "
                           f"digest {suite.digest()})",
            "parameters": {flag: {"value": value} for flag, value in task.parameters.items()},
            "arm": arm, "search": search, "seeds": list(task.tuning_seeds), "trials": task.trials,
            "score": {"range": [random_return, random_return + 1.0], "last_episodes": task.last_episodes},
            "report_every": task.report_every, "pruner": task.pruner, "sampler": suite.sampler,
            "final": {"seeds": list(task.eval_seeds)}}


# ---- the random policy: each task's score 0 ----

def random_policy_returns(env_id: str, seed: int, episodes: int) -> list[float]:
    """`episodes` episodic returns of uniformly random actions in `env_id`, seeded by `seed`."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(seed)
    returns = []
    env.reset(seed=seed)
    total = 0.0
    while len(returns) < episodes:
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        total += float(reward)
        if terminated or truncated:
            returns.append(total)
            total = 0.0
            env.reset()
    env.close()
    return returns


def random_anchors(suite: Suite, leaderboard: Path, report: Callable[[str], None] = print) -> dict[str, Any]:
    """The profile's anchors under the current suite digest, measured when missing: per task, the random policy's
    final return (mean of its last `last_episodes` episodes) on each evaluation seed, and their IQM."""
    path = anchors_path(suite, leaderboard)
    if path.exists():
        return json.loads(path.read_text())
    tasks = {}
    for task in suite.tasks.values():
        env_id = task.parameters["env-id"]
        finals = [float(np.mean(random_policy_returns(env_id, seed, task.last_episodes))) for seed in task.eval_seeds]
        tasks[task.name] = {"env_id": env_id, "seeds": list(task.eval_seeds), "final_returns": finals,
                            "iqm": iqm(finals)}
        report(f"random policy on {task.name} ({env_id}): IQM final return {iqm(finals):.2f} over "
               f"{len(finals)} seeds")
    anchors = {"suite": suite_stamp(suite), "software": software_versions(), "random": tasks}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, anchors)
    return anchors


def suite_stamp(suite: Suite) -> dict[str, Any]:
    return {"file": str(suite.path), "version": suite.version, "profile": suite.profile, "digest": suite.digest()}


# ---- one optimizer's entry ----

def _claim_entry(folder: Path, suite: Suite, entry: OptimizerEntry) -> None:
    """Write entry.json, or check that the one there has the same definition and suite (else SuiteError)."""
    stamp = {"name": entry.name, "definition": entry.definition(), "suite": suite_stamp(suite)}
    path = folder / "entry.json"
    if path.exists():
        earlier = json.loads(path.read_text())
        if earlier.get("definition") != json.loads(json.dumps(stamp["definition"])):
            raise SuiteError(f"{path}: entry {entry.name!r} was defined otherwise ({earlier.get('definition')}); give "
                             "this definition another --name")
        if earlier.get("suite", {}).get("digest") != suite.digest():
            raise SuiteError(f"{path}: entry {entry.name!r} ran under suite digest {earlier['suite'].get('digest')}, "
                             f"not the current {suite.digest()}; give it another --name, or move the old entry away")
        return
    write_json_atomic(path, stamp)


def _write_tune_yaml(path: Path, config: dict[str, Any]) -> None:
    """The study's config, written once: the same study is never continued under other settings."""
    text = ("# written by alphagrad-rl benchmark from the suite; the tuning config of one optimizer on one task\n"
            + yaml.safe_dump(config, sort_keys=False))
    if path.exists():
        if yaml.safe_load(path.read_text()) != yaml.safe_load(text):
            raise SuiteError(f"{path}: this task's study was started with another config; give the entry another "
                             "--name")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(text)


def _study_seconds(study_dir: Path) -> float:
    """The process-seconds every trial run of a study trained (pruned ones up to where they stopped)."""
    return sum(process_seconds(read_summary(run_dir) or {}) for run_dir in sorted((study_dir / "trials").glob("*"))
               if run_dir.is_dir())


def run_task(suite: Suite, task: TaskProtocol, entry: OptimizerEntry, anchors: Mapping[str, Any], folder: Path,
             results_dir: Path, agents: Mapping[str, AgentEntry], options: LaunchOptions, worker_id: int = 0,
             report: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Tune and evaluate `entry` on `task`; result.json when done, None while the study is unfinished (or another
    process evaluates it). Several processes (`worker_id` 0, 1, ...) may share the study."""
    task_dir = folder / task.name
    result_path = task_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    config_path = task_dir / "tune.yaml"
    _write_tune_yaml(config_path, tune_config(suite, task, entry, anchors["random"][task.name]["iqm"], agents))
    config = load_tune_config(config_path, agents)
    report(f"== {entry.name} on {task.name}: {task.trials} trials x seeds {list(task.tuning_seeds)}, then seeds "
           f"{list(task.eval_seeds)}")
    study = tune(config, results_dir, worker_id, report=report, track=options.track)
    if not study_finished(config, study):
        return None
    done = evaluate_best(config, study, results_dir, task_dir, agents, options, report)
    if done is None:
        return None
    unfinished = sorted(name for name, summary in done["summaries"].items()
                        if (summary or {}).get("status") not in ("finished", "crashed"))  # a crash is an outcome
    if unfinished:
        raise RuntimeError(f"{len(unfinished)} evaluation run(s) of {entry.name} on {task.name} did not finish "
                           f"(run the command again to resume them): {', '.join(unfinished)}")
    counts = trial_counts(study)
    result = {"task": task.name, "study": config.name, "best": done["best"],
              "trials": {"finished": counts["complete"] + counts["pruned"], **counts},
              "tuning_seeds": list(task.tuning_seeds), "eval_seeds": list(task.eval_seeds),
              "process_hours": {"tuning": _study_seconds(results_dir / config.name) / 3600,
                                "evaluation": sum(process_seconds(s) for s in done["summaries"].values()) / 3600}}
    write_json_atomic(result_path, result)
    return result


def run_entry(suite: Suite, entry: OptimizerEntry, leaderboard: Path, results_dir: Path,
              agents: Mapping[str, AgentEntry], options: LaunchOptions | None = None, tasks: Sequence[str] = (),
              worker_id: int = 0, report: Callable[[str], None] = print) -> Path | None:
    """Run `entry` through the suite's tasks (or those named), resuming what an earlier call left. Returns row.json
    once every task of the profile has its result, else None."""
    if not is_safe_name(entry.name):
        raise SuiteError(f"optimizer name {entry.name!r}: allowed: letters, digits, '-', '_', '.'")
    if unknown := sorted(set(tasks) - set(suite.tasks)):
        raise SuiteError(f"--tasks {', '.join(unknown)}: no such task (allowed: {', '.join(suite.tasks)})")
    folder = entry_dir(leaderboard, suite, entry.name)
    if (folder / "row.json").exists():
        raise SuiteError(f"{folder / 'row.json'}: {entry.name!r} is on the leaderboard already; a row is never "
                         "overwritten (give the new one another --name)")
    folder.mkdir(parents=True, exist_ok=True)
    _claim_entry(folder, suite, entry)
    anchors = random_anchors(suite, leaderboard, report)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    options = options or LaunchOptions()
    for task in suite.tasks.values():
        if not tasks or task.name in tasks:
            run_task(suite, task, entry, anchors, folder, results_dir, agents, options, worker_id, report)
    done = {name: json.loads((folder / name / "result.json").read_text()) for name in suite.tasks
            if (folder / name / "result.json").exists()}
    if len(done) < len(suite.tasks):
        report(f"{entry.name}: {len(done)}/{len(suite.tasks)} tasks done; run the command again to go on")
        return None
    row = {"name": entry.name, "definition": entry.definition(), "suite": suite_stamp(suite),
           "software": _records_software(folder, suite), "tasks": done,
           "process_hours": sum(sum(r["process_hours"].values()) for r in done.values())}
    write_json_atomic(folder / "row.json", row)
    report(f"{entry.name}: row written to {folder / 'row.json'} ({row['process_hours']:.2f} process-hours)")
    return folder / "row.json"


def _records_software(folder: Path, suite: Suite) -> dict[str, list[str]]:
    """Each package's versions among the entry's evaluation runs (one value when every run had the same)."""
    versions: dict[str, set[str]] = {}
    for task in suite.tasks:
        for path in sorted((folder / task / "records").glob(f"*{COMPACT_SUFFIX}")):
            software = read_run(path)["config"].get("software") or {}
            for package, version in software.items():
                versions.setdefault(package, set()).add(str(version))
    return {package: sorted(values) for package, values in sorted(versions.items())}
