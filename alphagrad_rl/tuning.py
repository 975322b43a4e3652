"""Multi-seed hyperparameter search with Optuna, in the spirit of CleanRL's tuner, for choosing AlphaGrad's alpha and
lr (the paper's conclusion: alpha "necessitates careful empirical tuning").

A trial is one setting of the searched flags trained at every one of the config's seeds at once (one population
process when the agent has one, else one process per seed). Its score is the IQM over seeds of the normalized
return, (mean of the last N episodes - low) / (high - low). While the runs train, the score so far is reported
every `report_every` env steps, so a pruner (median or successive halving) can stop a poor trial early.

The study lives in an Optuna journal file (`<results_dir>/<name>/study.journal`): several tuner processes, on one
machine or on machines sharing the folder, work on one study, and a killed tuner is resumed by running it again. A
trial whose tuner died (its process is gone, or its heartbeat is older than the grace period) is marked failed and
enqueued again with the same settings and the same run folders, so its runs continue from their checkpoints (a
population from its own, written for the same members). When the study has all its trials, the best setting is
evaluated on fresh seeds, never used in the search (no winner's curse), as a normal sweep (`<name>-final`) with
its report, beside the config's baselines.

Config (YAML):

    name: tune-dqn-cartpole
    program: agents/dqn.py
    description: free text
    parameters:                       # flags common to every run (value only)
      env-id: {value: CartPole-v1}
      total-timesteps: {value: 30000}
    arm: {optim.name: alphagrad, optim.momentum: 0.9}   # the tuned optimizer's fixed flags
    search:                           # searched flags: float/int ranges (log or not) or choices
      optim.alpha: {low: 5, high: 500, log: true}
      optim.lr: {low: 1.0e-5, high: 1.0e-2, log: true}   # also: [flag, ...] ties flags to it (TD3: the critic's lr)
      # a custom optimizer's keyword argument: optim.options.<key> (alphagrad_rl.sweep.merged_options)
    seeds: [1, 2, 3]                  # every trial runs these seeds
    trials: 16                        # trials in the study (completed + pruned), over all tuner processes
    score: {range: [0, 500], last_episodes: 20}
    report_every: 5000                # env steps between intermediate scores
    pruner: {name: median, startup_trials: 4, warmup_steps: 10000}   # or successive-halving, or none
    sampler: {startup_trials: 6, seed: 0}                            # TPE (multivariate)
    final: {seeds: [101, 102, 103, 104, 105], baselines: {adam: {optim.name: adam}}}
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from .analysis import edge_of_search, export_records, iqm, load_runs
from .backends import JobContext, LocalBackend, launcher_env
from .planning import Job, trains_in_population
from .runs import (
    LOCK_DIR,
    atomic_write,
    check_results_dir,
    is_safe_name,
    read_summary,
    write_json_atomic,
)
from .sweep import LaunchOptions, launch
from .sweep_config import (
    RESERVED_FLAGS,
    AgentEntry,
    RunSpec,
    SweepConfigError,
    agent_flags,
    check_run_arguments,
    flag_problem,
    load_sweep,
    read_config,
)

TOP_LEVEL_KEYS = {"name", "program", "description", "parameters", "arm", "search", "seeds", "trials", "score",
                  "report_every", "pruner", "sampler", "final"}
REQUIRED_KEYS = {"name", "program", "parameters", "arm", "search", "seeds", "trials", "score", "final"}
PRUNERS = ("median", "successive-halving", "none")
RETURN_METRIC = "charts/episodic_return"
RETRY_WAIT_S = 120.0  # how long a retried trial waits for the runs of the attempt it retries to stop


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched flag: a float or int range (log-uniform when `log`), or a list of choices; `also`: flags that take
    the same value (TD3's critic lr with its actor lr: one searched value, not two)."""

    flag: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()
    also: tuple[str, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.flag, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.flag, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.flag, self.low, self.high, log=self.log)

    def middle(self) -> Any:
        """A value inside the range, or the first choice."""
        if self.choices:
            return self.choices[0]
        value = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return int(round(value)) if self.integer else value

    def probes(self) -> tuple[Any, ...]:
        """The values the agent is asked to accept before any trial runs: every choice, or both ends of the range."""
        if self.choices:
            return self.choices
        return (int(self.low), int(self.high)) if self.integer else (self.low, self.high)


@dataclasses.dataclass
class TuneConfig:
    path: Path
    name: str
    program: str
    agent: AgentEntry
    common: dict[str, Any]
    arm: dict[str, Any]
    search: list[Dimension]
    seeds: tuple[int, ...]
    trials: int
    score_range: tuple[float, float]
    last_episodes: int
    report_every: int
    total_timesteps: int
    pruner: dict[str, Any]
    sampler: dict[str, Any]
    final_seeds: tuple[int, ...]
    baselines: dict[str, dict[str, Any]]
    description: str = ""

    def searched_flags(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's settings as flags: each searched flag's value, also on the flags its dimension ties to it."""
        tied = {flag: params[d.flag] for d in self.search if d.flag in params for flag in d.also}
        return {**params, **tied}

    def runs(self, trial_dir_name: str, params: Mapping[str, Any], seeds: tuple[int, ...] | None = None) -> list[RunSpec]:
        """The runs of one trial: the common flags, the tuned arm's, the trial's settings, one run per seed."""
        flags = {**self.common, **self.arm, **self.searched_flags(params)}
        return [RunSpec(f"{trial_dir_name}__s{seed}", trial_dir_name, seed, tuple({**flags, "seed": seed}.items()))
                for seed in (seeds or self.seeds)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _seed_list(value: Any) -> bool:
    return (isinstance(value, list) and len(value) > 0 and len(set(value)) == len(value)
            and all(isinstance(seed, int) and not isinstance(seed, bool) for seed in value))


def load_tune_config(path: str | Path, agents: Mapping[str, AgentEntry]) -> TuneConfig:
    """Read and validate a tuning config (SweepConfigError naming the file, the key and what is allowed)."""
    path = Path(path)
    config, fail, agent = read_config(path, "tuning", TOP_LEVEL_KEYS, REQUIRED_KEYS, agents)
    name, program = config["name"], config["program"]
    known = agent_flags(agent.args_type)

    def flag_map(key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise fail(key, "must map flags to values")
        for flag in value:
            if flag in RESERVED_FLAGS or flag == "seed":
                raise fail(f"{key}.{flag}", f"{flag!r} is set by the tuner")
            if problem := flag_problem(flag, known, program):
                raise fail(f"{key}.{flag}", problem)
        return dict(value)

    parameters = config["parameters"]
    if not isinstance(parameters, dict):
        raise fail("parameters", "must map flags to {value: x}")
    for flag, spec in parameters.items():
        if not (isinstance(spec, dict) and set(spec) == {"value"}):
            raise fail(f"parameters.{flag}", "must be {value: x} (the tuner searches only the flags under search)")
    common = flag_map("parameters", {flag: spec["value"] for flag, spec in parameters.items()})
    arm = flag_map("arm", config["arm"])
    search = flag_map("search", config["search"])
    if not search:
        raise fail("search", "names no flag to search")
    dimensions = []
    tied_flags: list[str] = []
    for flag, spec in search.items():
        key = f"search.{flag}"
        if flag in common or flag in arm:
            raise fail(key, "is also set under parameters or arm")
        if not isinstance(spec, dict):
            raise fail(key, "must be {low: a, high: b, log: true|false, int: true|false} or {choices: [...]}")
        spec = dict(spec)
        also = spec.pop("also", [])
        if not (isinstance(also, list) and all(isinstance(other, str) for other in also)):
            raise fail(f"{key}.also", f"{also!r} must be a list of flags that take the searched value")
        for other in also:
            if problem := flag_problem(other, known, program):
                raise fail(f"{key}.also", problem)
            if other == flag or other in common or other in arm or other in search or other in tied_flags:
                raise fail(f"{key}.also", f"{other!r} is set elsewhere (searched, tied to another flag, or under "
                           "parameters or arm)")
            tied_flags.append(other)
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise fail(key, "choices must be the only key, a non-empty list")
            values = [_as_number(choice) for choice in spec["choices"]]
            if repeated := sorted({str(v) for v in values if values.count(v) > 1}):
                raise fail(key, f"lists a value more than once ({', '.join(repeated)}): the sampler would favour it")
            dimensions.append(Dimension(flag, choices=tuple(spec["choices"]), also=tuple(also)))
            continue
        if not set(spec) <= {"low", "high", "log", "int"} or not {"low", "high"} <= set(spec):
            raise fail(key, f"keys {sorted(spec)} (allowed: low, high, log, int; or choices; and also)")
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        if not (_number(low) and _number(high) and low < high):
            raise fail(key, f"low {low!r} and high {high!r} must be numbers with low < high")
        if not isinstance(log, bool) or not isinstance(spec.get("int", False), bool):
            raise fail(key, "log and int must be true or false")
        if log and low <= 0:
            raise fail(key, f"a log range needs low > 0 (got {low})")
        dimensions.append(Dimension(flag, float(low), float(high), log, spec.get("int", False), also=tuple(also)))

    seeds = config["seeds"]
    if not _seed_list(seeds):
        raise fail("seeds", f"{seeds!r} must be a non-empty list of distinct integers")
    trials = config["trials"]
    if not (isinstance(trials, int) and not isinstance(trials, bool) and trials > 0):
        raise fail("trials", f"{trials!r} must be an integer > 0")
    score = config["score"]
    if not (isinstance(score, dict) and set(score) <= {"range", "last_episodes"} and "range" in score):
        raise fail("score", "must be {range: [low, high], last_episodes: N}")
    score_range = score["range"]
    if not (isinstance(score_range, list) and len(score_range) == 2 and all(map(_number, score_range))
            and score_range[0] < score_range[1]):
        raise fail("score.range", f"{score_range!r} must be [low, high], the returns that score 0 and 1, low < high")
    last_episodes = score.get("last_episodes", 100)
    if not (isinstance(last_episodes, int) and not isinstance(last_episodes, bool) and last_episodes > 0):
        raise fail("score.last_episodes", f"{last_episodes!r} must be an integer > 0")

    total = {**common, **arm}.get("total-timesteps")
    if total is None:
        total = agent.args_type().total_timesteps
    report_every = config.get("report_every", max(1, total // 10))
    if not (isinstance(report_every, int) and not isinstance(report_every, bool) and 0 < report_every <= total):
        raise fail("report_every", f"{report_every!r} must be an integer in [1, total timesteps = {total}]")
    pruner = config.get("pruner", {"name": "median"})
    if not isinstance(pruner, dict) or pruner.get("name") not in PRUNERS:
        raise fail("pruner", f"{pruner!r}: name must be one of {', '.join(PRUNERS)}")
    allowed = {"median": {"name", "startup_trials", "warmup_steps"},
               "successive-halving": {"name", "min_steps", "reduction_factor"}, "none": {"name"}}[pruner["name"]]
    if unknown := set(pruner) - allowed:
        raise fail("pruner", f"unknown option(s) {sorted(unknown)} for {pruner['name']} (allowed: {sorted(allowed)})")
    for option in set(pruner) - {"name"}:
        if not (isinstance(pruner[option], int) and not isinstance(pruner[option], bool) and pruner[option] >= 0):
            raise fail(f"pruner.{option}", f"{pruner[option]!r} must be an integer >= 0")
    sampler = config.get("sampler", {})
    if not (isinstance(sampler, dict) and set(sampler) <= {"startup_trials", "seed"}
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sampler.values())):
        raise fail("sampler", f"{sampler!r} must be {{startup_trials: N >= 0, seed: N >= 0}}")

    final = config["final"]
    if not (isinstance(final, dict) and set(final) <= {"seeds", "baselines"} and "seeds" in final):
        raise fail("final", "must be {seeds: [...], baselines: {arm name: {flag: value}}}")
    if not _seed_list(final["seeds"]):
        raise fail("final.seeds", f"{final['seeds']!r} must be a non-empty list of distinct integers")
    if reused := sorted(set(final["seeds"]) & set(seeds)):
        raise fail("final.seeds", f"{reused} are also search seeds: the final evaluation needs fresh seeds")
    baselines = final.get("baselines") or {}
    if not isinstance(baselines, dict):
        raise fail("final.baselines", "must map arm names to flag settings")
    for arm_name, flags in baselines.items():
        if not (isinstance(arm_name, str) and is_safe_name(arm_name)) or arm_name == "tuned":
            raise fail(f"final.baselines.{arm_name}", "arm names use letters, digits, '-', '_', '.', and not 'tuned'")
        flag_map(f"final.baselines.{arm_name}", flags)
        if overlap := sorted(set(flags) & set(common)):
            raise fail(f"final.baselines.{arm_name}", f"{overlap} are also under parameters (common to every arm)")

    tune = TuneConfig(path, name, program, agent, common, arm, dimensions, tuple(seeds), trials,
                      (float(score_range[0]), float(score_range[1])), last_episodes, report_every, int(total), pruner,
                      sampler, tuple(final["seeds"]), {arm_name: dict(flags) for arm_name, flags in baselines.items()},
                      str(config.get("description", "")))
    middle = {d.flag: d.middle() for d in dimensions}
    for dimension in dimensions:  # each searched value the sampler may pick, the other flags at their middle
        for value in dimension.probes():
            for run in tune.runs("check", {**middle, dimension.flag: value}, seeds[:1]):
                try:
                    check_run_arguments(agent, run)
                except ValueError as error:
                    raise fail(f"search.{dimension.flag}", f"a trial's flags {' '.join(run.flag_args())}: "
                               f"{error}") from None
    return tune


def _as_number(value: Any) -> Any:
    """A choice as the agent reads it: 93, 93.0 and "93" are one number; anything else as it is."""
    if isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


# ---- scoring ----

def normalized_score(returns: list[float], score_range: tuple[float, float], last_episodes: int) -> float:
    """(mean of the last `last_episodes` returns - low) / (high - low); 0 (the range's low end) without episodes
    or with a non-finite mean."""
    low, high = score_range
    recent = returns[-last_episodes:]
    mean = float(np.mean(recent)) if recent else math.nan
    return (mean - low) / (high - low) if math.isfinite(mean) else 0.0


def score_label(score_range: tuple[float, float]) -> str:
    """What a score measures, in words: the return above the range's low end when the range is one return wide (the
    benchmark scores a trial by its return above the random policy's), else the return normalized to the range."""
    low, high = score_range
    if high - low == 1:
        return f"IQM return above {low:g}"
    return f"IQM normalized return (0 at {low:g}, 1 at {high:g})"


def trial_score(returns_per_seed: list[list[float]], score_range: tuple[float, float], last_episodes: int) -> float:
    """A trial's score: the IQM over seeds of each seed's normalized score."""
    return iqm([normalized_score(returns, score_range, last_episodes) for returns in returns_per_seed])


class EpisodeTail:
    """Follows a run's metrics.jsonl while it is written: the episodes' (step, return) and the last step logged.
    A resumed run cuts its file back to its checkpoint's step and writes on from there: a file found shorter than
    what was read is read again from its start."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self._forget()

    def _forget(self) -> None:
        self.offset = 0
        self.episodes: list[tuple[int, float]] = []
        self.last_step = 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        if self.path.stat().st_size < self.offset:
            self._forget()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.last_step = max(self.last_step, int(row.get("step", 0)))
            value = row.get(RETURN_METRIC)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.episodes.append((int(row["step"]), float(value)))

    def returns_until(self, step: int) -> list[float]:
        return [value for episode_step, value in self.episodes if episode_step <= step]


# ---- the study ----

def storage_path(results_dir: Path, name: str) -> Path:
    return results_dir / name / "study.journal"


def open_study(config: TuneConfig, results_dir: Path, sampler_seed: int | None = None) -> optuna.Study:
    """The config's study in its journal file (created on first use; shared by every tuner process)."""
    path = storage_path(results_dir, config.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    sampler = optuna.samplers.TPESampler(n_startup_trials=config.sampler.get("startup_trials", 10), seed=sampler_seed,
                                         multivariate=True, constant_liar=True)
    name = config.pruner["name"]
    if name == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=config.pruner.get("startup_trials", 5),
                                             n_warmup_steps=config.pruner.get("warmup_steps", 0))
    elif name == "successive-halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=config.pruner.get("min_steps", config.report_every),
                                                        reduction_factor=config.pruner.get("reduction_factor", 3))
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=config.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    fingerprint = config_fingerprint(config)
    earlier = study.user_attrs.get("config")
    if earlier is None:
        study.set_user_attr("config", fingerprint)
    elif earlier != fingerprint:
        raise SweepConfigError(f"{config.path}: the study in {path} was started with another search (parameters, "
                               "arm, search, seeds, score or budget differ); give the config another name, or "
                               "delete that folder to start over")
    return study


def config_fingerprint(config: TuneConfig) -> str:
    """What makes trials comparable: changing any of it (not the trial count or the final evaluation) is refused."""
    what = [config.program, config.common, config.arm, [dataclasses.astuple(d) for d in config.search],
            config.seeds, config.score_range, config.last_episodes, config.report_every]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale_trials(study: optuna.Study, grace_s: float, report: Callable[[str], None] = print) -> int:
    """Mark failed each running trial whose tuner is gone (its process on this host has exited, or its heartbeat
    is older than `grace_s`) and enqueue its settings again, keeping its run folders. Returns how many."""
    host, recovered = socket.gethostname(), 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        heartbeat = trial.user_attrs.get("heartbeat", 0.0)
        gone = worker.get("host") == host and not _alive(int(worker.get("pid", 0)))
        if not gone and time.time() - heartbeat <= grace_s:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # another tuner recovered it first
            continue
        folder = trial.user_attrs.get("folder", f"trial{trial.number:04d}")
        study.enqueue_trial(trial.params, user_attrs={"folder": folder, "retry_of": trial.number})
        recovered += 1
        report(f"trial {trial.number}: its tuner is gone; enqueued again with the same settings (folder {folder})")
    return recovered


def trial_counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {state: sum(t.state == getattr(TrialState, state.upper()) for t in trials)
            for state in ("complete", "pruned", "running", "waiting", "fail")}


class TrialPruned(Exception):
    pass


def run_trial(config: TuneConfig, trial: optuna.Trial, params: dict[str, Any], trials_dir: Path,
              report: Callable[[str], None] = print, poll_s: float = 2.0, heartbeat_s: float = 30.0,
              extra: tuple[str, ...] = ()) -> tuple[float, list[str]]:
    """Train one trial's runs, reporting the score at every `report_every` steps (TrialPruned when the pruner
    stops it: its runs get SIGTERM and save a checkpoint). An interrupted earlier attempt at the same trial (a
    retry) continues from its checkpoints: each single-file run from its own, a population from its first
    member's when it was written for these same members. Returns (score, crashed run notes); a run that crashed
    scores 0, the range's low end. RuntimeError when a run ended without a record."""
    folder = trial.user_attrs["folder"]
    runs = config.runs(folder, params)
    run_dirs = [trials_dir / run.name for run in runs]
    pending = [run for run, run_dir in zip(runs, run_dirs) if (read_summary(run_dir) or {}).get("status") != "finished"]
    jobs = ([Job(pending, True)] if len(pending) > 1 and trains_in_population(pending[0], config.agent)
            else [Job([run], False) for run in pending])
    context = JobContext(config.agent, trials_dir, extra, launcher_env(), os.getcwd(), launcher="tuner")
    backend = LocalBackend(max(len(jobs), 1), [])
    try:
        # each job locks its runs; a retry waits until the runs of the attempt it retries (which get SIGTERM when
        # their tuner dies) have saved their checkpoint and exited
        futures = backend.start(jobs, context, RETRY_WAIT_S)
        tails = [EpisodeTail(run_dir) for run_dir in run_dirs]
        rung, last_beat = config.report_every, 0.0
        while True:
            running = not all(future.done() for future in futures)
            for tail in tails:
                tail.poll()
            if time.time() - last_beat >= heartbeat_s:
                trial.set_user_attr("heartbeat", time.time())
                last_beat = time.time()
            progress = min(tail.last_step for tail in tails)
            while rung < config.total_timesteps and (progress >= rung or not running):
                if progress < rung:  # the runs ended before this step (a crash): no score for it
                    break
                value = trial_score([tail.returns_until(rung) for tail in tails], config.score_range,
                                    config.last_episodes)
                trial.report(value, rung)
                report(f"  trial {trial.number} at {rung:,} steps: score {value:.3f}")
                if trial.should_prune():
                    raise TrialPruned
                rung += config.report_every
            if not running:
                break
            time.sleep(poll_s)
    except BaseException:
        backend.stop()  # the runs save a checkpoint and stop
        raise
    backend.close()
    if any(future.result() is None for future in futures):
        raise RuntimeError(f"trial {trial.number}'s runs in {trials_dir} are still being trained by another process "
                           f"after {RETRY_WAIT_S:.0f} s (their lock files are in {trials_dir / LOCK_DIR})")
    crashed, returns = [], []
    for run, run_dir in zip(runs, run_dirs):
        summary = read_summary(run_dir) or {}
        status = summary.get("status")
        if status == "crashed":
            crashed.append(f"{run.name}: {str(summary.get('error', ''))[:200]}")
            returns.append([])
        elif status == "finished":
            complete = EpisodeTail(run_dir)  # read afresh: the tail may hold episodes a resume discarded
            complete.poll()
            returns.append([value for _, value in complete.episodes])
        else:
            log = (run_dir / "output.log") if (run_dir / "output.log").exists() else run_dirs[0] / "output.log"
            tail_text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"run {run_dir} ended with status {status!r}:\n{tail_text}")
    return trial_score(returns, config.score_range, config.last_episodes), crashed


def tune(config: TuneConfig, results_dir: Path, worker_id: int = 0, grace_s: float = 600.0, poll_s: float = 2.0,
         max_trials: int | None = None, report: Callable[[str], None] = print, track: bool = False) -> optuna.Study:
    """Work on the config's study until it has `config.trials` finished (complete or pruned) trials, or this
    process has run `max_trials`. Other tuner processes may work on the same study at the same time. `track` logs
    every trial's runs to W&B: group = the study, job type = the trial (its runs' exp_name), config = its options."""
    check_results_dir(results_dir)
    study_dir = results_dir / config.name
    probe = open_study(config, results_dir)
    seed = config.sampler.get("seed", 0)
    sampler_seed = int(hashlib.sha256(f"{seed}/{worker_id}/{len(probe.trials)}".encode()).hexdigest()[:8], 16)
    study = open_study(config, results_dir, sampler_seed)
    recover_stale_trials(study, grace_s, report)
    done_here = 0
    while max_trials is None or done_here < max_trials:
        counts = trial_counts(study)
        if counts["complete"] + counts["pruned"] + counts["running"] >= config.trials and not counts["waiting"]:
            break
        trial = study.ask()
        params = {d.flag: d.suggest(trial) for d in config.search}
        if "folder" not in trial.user_attrs:
            trial.set_user_attr("folder", f"trial{trial.number:04d}")
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr("heartbeat", time.time())
        report(f"trial {trial.number} ({_shown(params)}) started")
        try:
            score, crashed = run_trial(config, trial, params, study_dir / "trials", report, poll_s,
                                       extra=("--track", "--wandb-group", config.name) if track else ())
        except TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            report(f"trial {trial.number} pruned")
        except RuntimeError as error:
            study.tell(trial, state=TrialState.FAIL)
            report(f"trial {trial.number} failed: {error}")
        else:
            if crashed:
                trial.set_user_attr("crashed_runs", crashed)
            study.tell(trial, score)
            report(f"trial {trial.number} complete: score {score:.3f}" + (f" ({len(crashed)} run(s) crashed)"
                                                                           if crashed else ""))
        done_here += 1
        counts = trial_counts(study)
        best = _best(study)
        report(f"[{counts['complete'] + counts['pruned']}/{config.trials} trials: {counts['complete']} complete, "
               f"{counts['pruned']} pruned, {counts['fail']} failed]"
               + (f" best so far: {best.value:.3f} (trial {best.number}: {_shown(best.params)})" if best else ""))
    write_trials_table(study, study_dir / "trials.csv")
    return study


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


def _shown(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{flag}={value:.4g}" if isinstance(value, float) else f"{flag}={value}"
                     for flag, value in params.items())


def study_finished(config: TuneConfig, study: optuna.Study) -> bool:
    counts = trial_counts(study)
    return counts["complete"] + counts["pruned"] >= config.trials and not counts["running"] and not counts["waiting"]


def write_trials_table(study: optuna.Study, path: Path) -> None:
    """Every trial: number, state, score, its intermediate scores' last step, settings."""
    trials = study.get_trials(deepcopy=False)
    flags = sorted({flag for t in trials for flag in t.params})
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", "state", "score", "last_reported_step", *flags, "retry_of"])
    for t in trials:
        writer.writerow([t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.6g}",
                         max(t.intermediate_values, default=""), *(t.params.get(flag, "") for flag in flags),
                         t.user_attrs.get("retry_of", "")])
    with atomic_write(path) as f:
        f.write(out.getvalue())


def final_sweep_config(config: TuneConfig, best_params: Mapping[str, Any]) -> dict[str, Any]:
    """The final evaluation as a sweep config: the best settings (arm `tuned`) and the baselines, on fresh seeds."""
    parameters = {flag: {"value": value} for flag, value in config.common.items()}
    parameters["seed"] = {"values": list(config.final_seeds)}
    tuned = {**config.arm, **{flag: _plain(value) for flag, value in config.searched_flags(best_params).items()}}
    return {"name": f"{config.name}-final", "program": config.program, "method": "grid",
            "description": f"final evaluation of {config.name}'s best settings ({_shown(best_params)}) on fresh seeds "
                           f"{list(config.final_seeds)}, never used in the search",
            "metric": {"name": RETURN_METRIC, "goal": "maximize"}, "parameters": parameters,
            "arms": {"tuned": tuned, **config.baselines}}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def write_final_sweep_config(config: TuneConfig, study: optuna.Study, path: Path) -> dict[str, Any]:
    best = _best(study)
    if best is None:
        raise RuntimeError(f"study {config.name} has no completed trial to evaluate")
    sweep_config = final_sweep_config(config, best.params)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(f"# written by scripts/tune.py from {config.path}: best trial {best.number}, score {best.value:.4f} "
                f"({score_label(config.score_range)} over seeds {list(config.seeds)})\n")
        yaml.safe_dump(sweep_config, f, sort_keys=False)
    return {"trial": best.number, "score": best.value, "params": dict(best.params)}


def write_best(path: Path, config: TuneConfig, study: optuna.Study, best: dict[str, Any]) -> None:
    counts = trial_counts(study)
    write_json_atomic(path, {"study": config.name, "config": str(config.path), "best_trial": best["trial"],
                             "search_score": best["score"], "params": best["params"], "search_seeds": list(config.seeds),
                             "final_seeds": list(config.final_seeds), "trials": counts})


def evaluate_best(config: TuneConfig, study: optuna.Study, results_dir: Path, output: Path,
                  agents: Mapping[str, AgentEntry], options: LaunchOptions | None = None,
                  report: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The final evaluation: the best trial's settings and the config's baselines trained on fresh seeds (sweep
    `<name>-final` under `results_dir`), then written to `output`: final-sweep.yaml, best.json, the runs' compact
    records (records/), REPORT.md, TUNING.md, tuning.png, trials.csv. One tuner process does it (a lock file); None
    when another is doing it, else {"best": best trial, "summaries": each final run's summary}."""
    from .report import report_runs

    with open(results_dir / config.name / "final.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report("the final evaluation is being run by another tuner process")
            return None
        output.mkdir(parents=True, exist_ok=True)
        sweep_path = output / "final-sweep.yaml"
        best = write_final_sweep_config(config, study, sweep_path)
        write_best(output / "best.json", config, study, best)
        sweep = load_sweep(sweep_path, agents)
        report(f"final evaluation of trial {best['trial']} on fresh seeds {list(config.final_seeds)}: sweep "
               f"{sweep.name}")
        options = dataclasses.replace(options or LaunchOptions(), results_dir=results_dir)
        summaries = launch(sweep, sweep.runs, options)
        records = output / "records"
        export_records(results_dir / sweep.name, records, config.last_episodes)
        runs = load_runs(records, config.last_episodes)
        sweep_report = report_runs(runs, [records], output, config.last_episodes,
                                   baseline=next(iter(config.baselines), "tuned"))
        figures = plot_study(config, study, output)
        write_trials_table(study, output / "trials.csv")
        tuning = write_tuning_report(config, study, best, runs, output, figures)
        text = tuning.read_text()
        report(text[: text.index("## Trials")] + f"tuning report: {tuning}\nsweep report: {sweep_report}")
    return {"best": best, "summaries": summaries}


# ---- the tuning report ----

def plot_study(config: TuneConfig, study: optuna.Study, out_dir: Path) -> list[Path]:
    """Left: the settings tried (two searched flags: one against the other, colored by score; one: score against
    it), pruned trials as crosses, the best as a star. Right: each trial's score and the best so far."""
    from .report import plt, save_figure

    trials = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    best = _best(study)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    label = score_label(config.score_range)
    x_dim = config.search[0]
    y_dim = config.search[1] if len(config.search) > 1 and not config.search[1].choices else None

    def ys(group):
        return [t.params.get(y_dim.flag) for t in group] if y_dim else [t.value for t in group]

    xs = lambda group: [t.params.get(x_dim.flag) for t in group]  # noqa: E731
    if y_dim:
        points = left.scatter(xs(complete), ys(complete), c=[t.value for t in complete], cmap="viridis", s=36,
                              edgecolors="k", linewidths=0.4)
        if complete:
            figure.colorbar(points, ax=left, label=f"score ({label})")
        left.set_ylabel(y_dim.flag)
        if y_dim.log:
            left.set_yscale("log")
    else:
        left.scatter(xs(complete), ys(complete), color="tab:blue", s=30, label="complete")
        left.set_ylabel(f"score ({label})")
    if pruned:
        left.scatter(xs(pruned), [t.params.get(y_dim.flag) for t in pruned] if y_dim else
                     [t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else 0 for t in pruned],
                     marker="x", color="grey", label="pruned")
    if best:
        left.scatter([best.params.get(x_dim.flag)], [best.params.get(y_dim.flag) if y_dim else best.value],
                     marker="*", s=260, color="tab:red", edgecolors="k", label=f"best (trial {best.number})")
    if x_dim.log:
        left.set_xscale("log")
    left.set_xlabel(x_dim.flag)
    left.legend(loc="best", fontsize=8)
    left.set_title(f"{config.name}: settings tried")
    numbers = sorted(complete, key=lambda t: t.number)
    right.plot([t.number for t in numbers], [t.value for t in numbers], "o", color="tab:blue", label="trial score")
    running = np.maximum.accumulate([t.value for t in numbers]) if numbers else []
    right.step([t.number for t in numbers], running, where="post", color="tab:red", label="best so far")
    for t in pruned:
        if t.intermediate_values:
            right.plot([t.number], [t.intermediate_values[max(t.intermediate_values)]], "x", color="grey")
    right.set_xlabel("trial")
    right.set_ylabel(f"score ({label} over seeds)")
    right.legend(loc="best", fontsize=8)
    right.set_title(f"{len(complete)} complete, {len(pruned)} pruned")
    figure.tight_layout()
    return save_figure(figure, out_dir / "tuning")


def _best_at_edges(config: TuneConfig, params: Mapping[str, Any]) -> list[tuple[Dimension, str]]:
    """The searched ranges whose best value lies at one end (analysis.edge_of_search), each with that end."""
    edges = [(d, edge_of_search(params[d.flag], d.low, d.high, d.log)) for d in config.search
             if not d.choices and d.flag in params]
    return [(d, side) for d, side in edges if side]


def write_tuning_report(config: TuneConfig, study: optuna.Study, best: dict[str, Any], final_runs: list,
                        out_dir: Path, figures: list[Path]) -> Path:
    """TUNING.md: the search, the best settings and their score on the search seeds, and the final evaluation on
    fresh seeds beside the baselines (the IQM score with its 95% BCa CI)."""
    from .analysis import iqm_ci

    counts = trial_counts(study)
    low, high = config.score_range
    lines = [f"# Tuning: {config.name}", "", config.description, "",
             f"Program `{config.program}`; searched: " + ", ".join(
                 f"`{d.flag}` in {list(d.choices)}" if d.choices else
                 f"`{d.flag}` in [{d.low:g}, {d.high:g}]{' (log)' if d.log else ''}" for d in config.search)
             + f"; each trial = seeds {list(config.seeds)} trained together; score = IQM over seeds of (mean of the "
             f"last {config.last_episodes} episodic returns - {low:g}) / ({high:g} - {low:g}), the "
             f"{score_label(config.score_range)}; pruner "
             f"{config.pruner['name']} on the score every {config.report_every:,} of {config.total_timesteps:,} steps.",
             "", f"Trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed "
             f"(config asks for {config.trials}).", "",
             f"**Best settings** (trial {best['trial']}, score {best['score']:.3f} on the search seeds): "
             + ", ".join(f"`--{flag} {_plain(value):.6g}`" if isinstance(value, float) else f"`--{flag} {value}`"
                         for flag, value in best["params"].items()), "",
             *[line for d, side in _best_at_edges(config, best["params"]) for line in (
                 f"The best `{d.flag}` lies in the {side}est tenth of its searched range [{d.low:g}, {d.high:g}]"
                 f"{' (log)' if d.log else ''}: its optimum may lie outside the range, which a wider search would "
                 "tell.", "")],
             "## Final evaluation on fresh seeds", "",
             f"Seeds {list(config.final_seeds)}, none used in the search, so the tuned score below carries no "
             "winner's curse; the search score above is optimistic by selection. Sweep config: `final-sweep.yaml`; "
             "full report: [REPORT.md](REPORT.md).", "",
             f"| arm | runs | score: {score_label(config.score_range)} [95% CI] | mean final return |", "|---|---|---|---|"]
    arms = dict.fromkeys(run.arm for run in final_runs)
    for arm in arms:
        values = [run.row["final_return"] for run in final_runs if run.arm == arm and run.included]
        scores = [(value - low) / (high - low) for value in values]
        if not scores:
            lines.append(f"| {arm} | 0 | - | - |")
            continue
        ci_low, ci_high = iqm_ci([scores])
        lines.append(f"| {arm} | {len(scores)} | {iqm(scores):.3f} [{ci_low:.3f}, {ci_high:.3f}] | "
                     f"{np.mean(values):.1f} |")
    lines += ["", "## Trials (best first)", "", "| trial | state | score | settings |", "|---|---|---|---|"]
    ranked = sorted(study.get_trials(deepcopy=False), key=lambda t: (t.value is None, -(t.value or 0), t.number))
    for t in ranked:
        shown = t.value if t.value is not None else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        at = (f" (at {max(t.intermediate_values):,} steps)" if t.state == TrialState.PRUNED and t.intermediate_values
              else "")
        lines.append(f"| {t.number} | {t.state.name.lower()} | {'-' if shown is None else f'{shown:.3f}'}{at} | "
                     f"{_shown(t.params)} |")
    lines += ["", "## Figures", ""] + [f"![{path.stem}]({path.name})" for path in figures if path.suffix == ".png"]
    path = out_dir / "TUNING.md"
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    return path
