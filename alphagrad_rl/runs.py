"""The run record: the one contract between agents, sweeps and analysis.

Layout of `<results_dir>/<run_name>/` (schema version `SCHEMA_VERSION`):
- `config.json`: {"schema_version", "algorithm", "run_name", "config": the agent's full Args, "software": the
  versions that trained it (software_versions(): Python, torch, numpy, gymnasium, MuJoCo, and this project's git
  commit or package version; a custom optimizer's defining file with its SHA-256)}. A record written before
  "software" existed has none.
- `metrics.jsonl`: one JSON object per line, {"step": env steps, "time": seconds since start,
  "<metric>": value, ...}, CleanRL's names (charts/episodic_return, losses/..., optimizer/...).
- `summary.json`: written last and atomically: status ("running", "finished", "crashed",
  "interrupted"), global_step, total_timesteps, episodes, final_return (mean of the last
  `final_window` episodic returns), best_return, wall_clock_s, sps, evaluation (if any), error,
  population_size (the runs trained together in its process, 1 for a single-file run; wall_clock_s is the
  process's time).
- `events.out.tfevents.*`: the same scalars for TensorBoard; W&B gets them too with `--track` (step =
  env steps).
- `checkpoints/`: while a run is unfinished, its newest checkpoints (see alphagrad_rl.checkpoint).
A resumed run continues its record from a checkpoint: metrics.jsonl is cut back to the checkpoint,
TensorBoard purges later points, W&B continues the same run id, and the summary lists the resumes
("resumes": [{"step", "discarded_steps", "lost_s", "fresh_episodes"}]: the checkpoint's step, the steps and
training seconds the stopped attempt had logged after it, the envs that started a fresh episode; and "software":
the versions that differ from config.json's where the resume ran under others); config.json keeps the versions
the run started with; "time"
and wall_clock_s count training time only, without the time the run was down.
Sweeps skip runs whose summary says "finished"; analysis reads config, metrics and summary only.
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

SCHEMA_VERSION = 1
COMPACT_FORMAT = 1
COMPACT_SUFFIX = ".record.json.gz"  # a compact run record (write_compact_record)
STATUSES = ("running", "finished", "crashed", "interrupted")
CHECKPOINT_DIR = "checkpoints"
LOCK_DIR = ".locks"  # in a results folder: one lock file per run (lock_runs)
LOCK_WAIT_S = 30.0  # a run found locked for this long is another launcher's (lock_runs)
HELD_LOCKS_ENV = "ALPHAGRAD_RL_HELD_LOCKS"  # run locks a process inherited from its launcher (locked_env)


RESUME_MAY_CHANGE = frozenset({  # options that do not change what a run computes
    "exp_name", "track", "wandb_project_name", "wandb_entity", "wandb_group", "wandb_tags", "results_dir", "run_name",
    "quiet", "resume", "checkpoint_interval_s", "checkpoint_interval_steps", "keep_checkpoints", "save_model",
    "eval_episodes", "cuda",
})
# Options added after runs were saved, each with the value under which a run computes what it did before the option
# existed: a saved config (checkpoint, run record, earlier attempt) that lacks one matches today's that holds it.
# Keys are an optimizer group's (optim, actor_optim, critic_optim, ...), also in a population's members.
ADDED_LATER = {"optim.target": None, "optim.options": "{}"}  # custom optimizers (13450ca)


def is_added_later_default(key: str, value: Any) -> bool:
    """Whether the dotted option `key` (in any optimizer group, also a population member's) was ADDED_LATER and
    holds the value under which a run computes what it did before the option existed."""
    added = re.fullmatch(r"(?:member\d+\.)?(?:\w+_)?(optim\.\w+)", key)
    return added is not None and added[1] in ADDED_LATER and value == ADDED_LATER[added[1]]


def trained_options(config: dict[str, Any]) -> dict[str, Any]:
    """What a run trains: its options less those that do not change what it computes (RESUME_MAY_CHANGE)."""
    return {key: value for key, value in config.items() if key not in RESUME_MAY_CHANGE}


def config_differences(saved: dict[str, Any], current: dict[str, Any], saved_in: str = "checkpoint") -> list[str]:
    """'key: saved (`saved_in`) != current (now)' for each option that differs, ignoring RESUME_MAY_CHANGE (also in
    a population's config, {"member<i>": options}) and options ADDED_LATER that `saved` predates."""
    saved_flat, current_flat = flatten_config(saved), flatten_config(current)

    def shown(flat: dict[str, Any], key: str) -> str:
        return json.dumps(flat[key], default=str) if key in flat else "unset"  # tuples and lists alike

    def differs(key: str) -> bool:
        option = re.sub(r"^member\d+\.", "", key)
        saved_before_added = key not in saved_flat and is_added_later_default(key, current_flat.get(key))
        return (option not in RESUME_MAY_CHANGE and shown(saved_flat, key) != shown(current_flat, key)
                and not saved_before_added)

    return [f"{key}: {shown(saved_flat, key)} ({saved_in}) != {shown(current_flat, key)} (now)"
            for key in dict.fromkeys([*saved_flat, *current_flat]) if differs(key)]


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once, at import: the files written here get the mode open() would give them
RUN_NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_.=+,@")


SOFTWARE_PACKAGES = ("torch", "numpy", "gymnasium", "mujoco")  # besides Python and this project


def software_versions() -> dict[str, str]:
    """The versions a run trains with: Python, each of SOFTWARE_PACKAGES that is installed, and this project's
    git commit (short hash, "+dirty" when tracked files differ from it) where it runs from a checkout, else its
    installed package version. Looked up once per process; each call returns a fresh dict."""
    return dict(_software_versions())


@functools.cache
def _software_versions() -> dict[str, str]:
    installed = {package: _installed_version(package) for package in SOFTWARE_PACKAGES}
    return {"python": platform.python_version(),
            **{package: version for package, version in installed.items() if version is not None},
            "alphagrad-rl": _project_commit() or _installed_version("alphagrad-rl") or "unknown",
            "alphagrad fused CPU kernel": _kernel_state()}


def _kernel_state() -> str:
    """Whether AlphaGrad's fused CPU kernel is built here: AlphaGrad's default path on the CPU takes it (tanh by a
    rational approximation within 4.4e-7) where it is, else foreach (tanh exactly)."""
    from alphagrad._fused import cpu_kernel_built  # (torch: only a process that trains asks)

    return "built" if cpu_kernel_built() else "not built"


def _project_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # an installed copy (in site-packages, maybe inside some other checkout)
        return None
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or git failed
        return None
    return f"{commit}+dirty" if changed else commit


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def duration(seconds: float) -> str:
    """Seconds as H:MM:SS (with days beyond 24 hours): 3725 -> "1:02:05"."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours}:{minutes:02d}:{secs:02d}"


def safe_name(text: str) -> str:
    """`text` as a run-name component: each character outside RUN_NAME_CHARACTERS becomes '-'
    (an env id such as "phys2d/CartPole-v1" -> "phys2d-CartPole-v1")."""
    return "".join(c if c in RUN_NAME_CHARACTERS else "-" for c in str(text))


def is_safe_name(name: str) -> bool:
    """Whether `name` is one safe folder name: it never leaves, or names, the folder it is put in."""
    return bool(name) and name not in (".", "..") and len(name) <= 200 and not set(name) - RUN_NAME_CHARACTERS


def check_run_name(name: str) -> None:
    """Raise ValueError unless `name` is one safe folder name (see is_safe_name)."""
    if not is_safe_name(name):
        raise ValueError(f"invalid run name {name!r} (allowed: one folder name of up to 200 letters, digits and "
                         f"'-_.=+,@', not '.' or '..')")


def check_results_dir(path: Path, what: str = "results folder") -> None:
    """Raise ValueError unless files can be written under `path` (it, or its nearest existing parent, is a writable
    folder); `what` names the folder in the message. Creates nothing."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"invalid {what} {str(path)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"invalid {what} {str(path)!r}: {str(existing)!r} is not writable")


def lock_runs(results_dir: Path, names: list[str], wait_s: float = LOCK_WAIT_S) -> list[int] | None:
    """Exclusive locks (flock) on these runs of `results_dir`, so that two processes (launchers, agents, a second
    terminal, another node on the same filesystem) never train one run twice. Returns the lock files' descriptors, for the
    run's process to inherit (pass_fds: the locks then last until it exits, even if the launcher is killed
    first), or None when another process still holds one after `wait_s` (long enough for a run of a killed
    launcher to save its checkpoint and exit). Release with release_runs."""
    lock_dir = results_dir / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    fds: list[int] = []
    deadline = time.monotonic() + wait_s
    for name in names:
        fds.append(os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644))
        while True:
            try:
                fcntl.flock(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    release_runs(fds)
                    return None
                time.sleep(0.2)
    return fds


def release_runs(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def run_locked(results_dir: Path, name: str) -> bool:
    """Whether a process holds the run's lock (lock_runs) now, i.e. is training it."""
    try:
        fd = os.open(results_dir / LOCK_DIR / f"{name}.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: taken for an instant, released by the close
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)

def locked_env(env: dict[str, str], fds: tuple[int, ...] | list[int]) -> dict[str, str]:
    """`env` for a run process that inherits the run locks `fds` (lock_runs, passed with pass_fds): the agent then
    takes them as its own (hold_run_locks) instead of waiting on them."""
    return {**env, HELD_LOCKS_ENV: ",".join(map(str, fds))}


class RunLocked(ValueError):
    """Another process holds a run's lock: it is training that run."""


_held_locks: dict[tuple[int, int], int] = {}  # this process's run locks, by lock file identity: held until it exits


def hold_run_locks(results_dir: str | Path, names: list[str]) -> None:
    """Lock the runs this process is about to write (an agent: its run, or its population's members) for as long as
    it lives; a lock it holds already (an earlier run in this process), or that its launcher passed down to it
    (locked_env), counts as its own. Raises RunLocked naming a run another process is training; takes none of the
    locks then."""
    results_dir = Path(results_dir)
    held = dict(_held_locks)
    for fd in filter(None, os.environ.get(HELD_LOCKS_ENV, "").split(",")):
        try:
            info = os.fstat(int(fd))
            held[(info.st_dev, info.st_ino)] = int(fd)
        except (OSError, ValueError):
            continue
    taken: dict[tuple[int, int], int] = {}
    for name in names:
        path = results_dir / LOCK_DIR / f"{name}.lock"
        if path.exists() and _identity(path) in held:
            continue
        fds = lock_runs(results_dir, [name], wait_s=0)
        if fds is None:
            release_runs(list(taken.values()))
            raise RunLocked(f"another process is training {results_dir / name} (it holds {path}): wait for it to "
                            "end, or stop it (SIGTERM saves a checkpoint) and resume the run then")
        taken[_identity(path)] = fds[0]
    _held_locks.update(taken)


def _identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


@contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file to write `path` through: a temporary file in the same folder, fsynced and renamed onto `path`
    when the block ends, deleted if it fails, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes it 0600
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (see atomic_write)."""
    with atomic_write(path) as f:
        json.dump(data, f, indent=2, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    return str(value)


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's summary.json, or None when it has none (never started, or its folder was cleared)."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def record_damage(run_dir: str | Path) -> str | None:
    """What of a run record cannot be read (its config.json or summary.json is there but not a record's JSON), or
    None. A damaged record is reported and kept: never taken as "not started", resumed over or deleted."""
    run_dir = Path(run_dir)
    for name, required in (("config.json", "config"), ("summary.json", "status")):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"{name} is unreadable: {type(error).__name__}: {error}"
        if not isinstance(data, dict) or required not in data or (name == "summary.json"
                                                                  and data["status"] not in STATUSES):
            return f"{name} is not a run record's (no valid {required!r})"
    return None


def checkpoint_manifests(run_dir: str | Path) -> list[Path]:
    """Manifests of a run's checkpoints (alphagrad_rl.checkpoint), newest first; empty when it has none."""
    return sorted((Path(run_dir) / CHECKPOINT_DIR).glob("step-*.json"), reverse=True)


@dataclass(frozen=True)
class LiveProgress:
    """Where a run's metrics.jsonl says it is now (latest_progress)."""

    step: int  # the env step of its last logged row
    time_s: float  # its training time at that row
    recent_return: float | None  # its last logged episodic return (None: no episode ended in the tail read)


def latest_progress(run_dir: str | Path, tail_bytes: int = 65536) -> LiveProgress | None:
    """The step, training time and latest episodic return of a run from the end of its metrics.jsonl (read while
    the run writes it; a line cut short is skipped); None when it has logged nothing."""
    try:
        with open(Path(run_dir) / "metrics.jsonl", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - tail_bytes))
            rows = _parse_metrics(f.read().decode(errors="replace"))
    except FileNotFoundError:
        return None
    rows = [row for row in rows if isinstance(row, dict) and "step" in row]
    if not rows:
        return None
    returns = [row["charts/episodic_return"] for row in rows if "charts/episodic_return" in row]
    return LiveProgress(int(rows[-1]["step"]), float(rows[-1].get("time", 0.0)), returns[-1] if returns else None)


def process_seconds(summary: dict[str, Any]) -> float:
    """The training time a run took, in process-seconds (wall-clock, restarts excluded): a run trained in a
    population of N counts 1/N of its process's time."""
    return float(summary.get("wall_clock_s") or 0) / (summary.get("population_size") or 1)


def write_compact_record(path: Path, record: dict[str, Any], metrics: list[dict[str, Any]],
                         derived: dict[str, Any]) -> None:
    """Write a compact run record (atomically): one gzipped JSON file with the record's config and summary,
    `metrics` (the rows of its metrics.jsonl that were kept, thinned by the caller) and `derived` (values the
    caller computed from the full record). Small enough to commit; read_run reads it like a run folder."""
    data = {"compact_record": COMPACT_FORMAT, **record["config"], "summary": record["summary"], "metrics": metrics,
            "derived": derived}
    with atomic_write(path, "wb") as f:
        f.write(gzip.compress(json.dumps(data, separators=(",", ":"), default=_jsonable).encode(), mtime=0))


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """Load a run record, from its folder or a compact record file (COMPACT_SUFFIX):
    {"config": ..., "summary": ... or None, "metrics": [rows], "derived": {...} (compact records only)}."""
    run_dir = Path(run_dir)
    if run_dir.name.endswith(COMPACT_SUFFIX):
        data = json.loads(gzip.decompress(run_dir.read_bytes()))
        if data.get("compact_record") != COMPACT_FORMAT or data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{run_dir}: compact record format {data.get('compact_record')!r}, schema "
                             f"{data.get('schema_version')!r} (expected {COMPACT_FORMAT}, {SCHEMA_VERSION})")
        config = {key: data[key] for key in ("schema_version", "algorithm", "run_name", "config", "software")
                  if key in data}
        return {"config": config, "summary": data["summary"], "metrics": data["metrics"], "derived": data["derived"]}
    config = json.loads((run_dir / "config.json").read_text())
    if config.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{run_dir}: run record schema {config.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    summary = read_summary(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    metrics = _parse_metrics(metrics_path.read_text()) if metrics_path.exists() else []
    return {"config": config, "summary": summary, "metrics": metrics}


def _parse_metrics(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: the rest is intact
            continue
    return rows


def clear_record(run_dir: str | Path) -> None:
    """Delete a run record's files (config, metrics, summary, TensorBoard events, checkpoints, W&B files)."""
    run_dir = Path(run_dir)
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        (run_dir / name).unlink(missing_ok=True)
    for events in run_dir.glob("events.out.tfevents.*"):
        events.unlink()
    for folder in (CHECKPOINT_DIR, "wandb"):
        shutil.rmtree(run_dir / folder, ignore_errors=True)


def wait_past_event_files(run_dir: Path) -> None:
    """Wait until a new TensorBoard event file's name sorts after the run's earlier ones. TensorBoard reads a run's
    files in name order (events.out.tfevents.<start second>.<host>.<pid>.<writer counter>); a writer started in the
    same second as an earlier one is ordered by pid and an unpadded counter (10 before 9), so a resumed attempt's
    purge could be read before the points it purges."""
    seconds = [int(parts[3]) for parts in (path.name.split(".") for path in run_dir.glob("events.out.tfevents.*"))
               if len(parts) > 3 and parts[3].isdigit()]
    if seconds:
        time.sleep(max(0.0, max(seconds) + 1 - time.time()))


RECORDED_IN = "traceback recorded in "  # the note a crashed run's exception carries (RunRecord.__exit__)


class NonFiniteTraining(RuntimeError):
    """A loss turned NaN or inf: the run stops, recorded "crashed" with this message (the step and the loss) as its
    error, the rule a population applies to each member (alphagrad_rl.population.crashed_members)."""


FLUSH_INTERVAL_S = 1.0  # metrics.jsonl is flushed at most this often while training (and at every checkpoint and
# at the end); a flush per row cost a population of 10 DQN runs ~4% of its time


class RunRecord:
    """Writes one run's record, TensorBoard events, optional W&B, and a progress line.

    Use as a context manager around training: an exception marks the run "crashed" (with its
    traceback) or "interrupted" (KeyboardInterrupt) before propagating. `resume_state` (from
    `state_dict()` saved in a checkpoint) continues an existing record instead of starting one.
    """

    def __init__(self, *, run_dir: str | Path, algorithm: str, config: dict[str, Any], total_timesteps: int,
                 track: bool = False, wandb_project: str = "alphagrad-rl", wandb_entity: str | None = None,
                 wandb_group: str | None = None, wandb_tags: tuple[str, ...] = (), final_window: int = 100,
                 quiet: bool = False, progress_interval_s: float = 10.0, resume_state: dict[str, Any] | None = None,
                 population_size: int = 1, member: int | None = None, code: dict[str, str] | None = None) -> None:
        """`code`: what trains besides software_versions() (e.g. a custom optimizer's file and hash), recorded with
        the versions; `member`: the run's index in its population."""
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_name = self.run_dir.name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_timesteps = total_timesteps
        self.population_size = population_size
        self.quiet = quiet
        self.progress_interval_s = progress_interval_s
        self.start = time.time()
        self._last_progress = self.start
        self.global_step = 0
        self.last_logged_step = -1
        self.episode_returns: list[float] = []
        self.recent_returns: deque[float] = deque(maxlen=final_window)
        self.evaluation: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None
        self.resumes: list[dict[str, Any]] = []
        metrics_path = self.run_dir / "metrics.jsonl"
        software = {**software_versions(), **(code or {})}
        if resume_state is not None:
            self._continue(resume_state, metrics_path)
            software = self._started_with(software)
        elif metrics_path.exists() or (self.run_dir / "summary.json").exists():
            raise ValueError(f"{self.run_dir} already holds a run record: resume it with --resume, "
                             "or pick another --run-name")
        write_json_atomic(self.run_dir / "config.json", {"schema_version": SCHEMA_VERSION, "algorithm": algorithm,
                                                         "run_name": self.run_name, "config": config,
                                                         **({"software": software} if software else {})})
        self._metrics = open(metrics_path, "a")
        self._last_flush = time.monotonic()
        # a resumed writer purges the points after the checkpoint that an earlier attempt wrote
        if self.resumes:
            wait_past_event_files(self.run_dir)
        self.writer = SummaryWriter(str(self.run_dir), purge_step=self.last_logged_step + 1 if self.resumes else None)
        if not self.resumes:
            self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
                f"|{key}|{value}|" for key, value in flatten_config(config).items()))
        self.wandb_run = None
        if track:
            import wandb

            wandb_id = resume_state.get("wandb_run_id") if resume_state else None
            arm, commit = config.get("exp_name", "run"), software.get("alphagrad-rl", "unknown")
            self.wandb_run = wandb.init(  # grouped as CleanRL's benchmark groups: by sweep, then by arm
                project=wandb_project, entity=wandb_entity, group=wandb_group, job_type=arm, name=self.run_name,
                tags=list(dict.fromkeys([*wandb_tags, arm, commit])),
                config={**config, "arm": arm, "sweep": wandb_group, "member": member,
                        "population_size": population_size, "git_commit": commit, "software": software},
                dir=str(self.run_dir), reinit="create_new",  # a population: one W&B run per member
                id=wandb_id, resume="allow" if wandb_id else None)
            self.wandb_run.define_metric("global_step")  # every series plotted against env steps, as CleanRL's
            self.wandb_run.define_metric("*", step_metric="global_step")
        self._write_summary("running")

    def _continue(self, state: dict[str, Any], metrics_path: Path) -> None:
        """Cut metrics.jsonl back to the checkpoint, measuring what the cut-off tail held (work lost)."""
        kept = int(state["metrics_bytes"])
        if not metrics_path.exists() or metrics_path.stat().st_size < kept:
            raise ValueError(f"{metrics_path} is missing or shorter than when the checkpoint was written: the run "
                             "record was changed, so the run cannot continue it (start a new run)")
        with open(metrics_path, "rb+") as f:
            f.seek(kept)
            tail_rows = _parse_metrics(f.read().decode(errors="replace"))
            f.truncate(kept)
        elapsed = float(state["elapsed_s"])
        self.start = time.time() - elapsed
        self._last_progress = time.time()
        self.global_step = int(state["global_step"])
        self.last_logged_step = int(state["last_logged_step"])
        self.episode_returns = list(state["episode_returns"])
        self.recent_returns.extend(self.episode_returns[-self.recent_returns.maxlen:])
        self.resumes = list(state["resumes"]) + [{
            "step": int(state["global_step"]),
            "discarded_steps": max([row["step"] for row in tail_rows] + [state["global_step"]]) - state["global_step"],
            "lost_s": round(max([row["time"] for row in tail_rows] + [elapsed]) - elapsed, 3),
            "fresh_episodes": [],
        }]

    def _started_with(self, current: dict[str, str]) -> dict[str, str] | None:
        """The versions config.json says the run started with (None: a record older than the field); where the
        resume runs under others, its entry in "resumes" lists them."""
        try:
            started = json.loads((self.run_dir / "config.json").read_text()).get("software")
        except (FileNotFoundError, json.JSONDecodeError):
            started = None
        changed = {name: version for name, version in current.items() if (started or {}).get(name) != version}
        if changed:
            self.resumes[-1]["software"] = changed
        return started

    def state_dict(self, global_step: int) -> dict[str, Any]:
        """What a checkpoint at env step `global_step` needs to continue this record."""
        self._metrics.flush()
        return {"metrics_bytes": self._metrics.tell(), "elapsed_s": time.time() - self.start,
                "global_step": global_step, "last_logged_step": self.last_logged_step,
                "episode_returns": list(self.episode_returns), "resumes": self.resumes,
                "wandb_run_id": self.wandb_run.id if self.wandb_run is not None else None}

    def note_fresh_episodes(self, env_indices: list[int]) -> None:
        """Record that the resume started a fresh episode in these envs (their state could not be restored)."""
        self.resumes[-1]["fresh_episodes"] = sorted(env_indices)
        self._write_summary("running")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Record scalars at env step `step` (metrics.jsonl and TensorBoard)."""
        self.global_step = step
        self.last_logged_step = max(self.last_logged_step, int(step))
        row = {"step": int(step), "time": round(time.time() - self.start, 3)}
        for name, value in scalars.items():
            value = float(value)
            row[name] = value if math.isfinite(value) else str(value)
            self.writer.add_scalar(name, value, step)
        self._metrics.write(json.dumps(row) + "\n")
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_INTERVAL_S:  # a killed process loses at most this much of the tail
            self._metrics.flush()
            self._last_flush = now
        if self.wandb_run is not None:
            self.wandb_run.log({**scalars, "global_step": int(step)}, step=int(step))

    def log_episode(self, step: int, episodic_return: float, episodic_length: int) -> None:
        self.episode_returns.append(float(episodic_return))
        self.recent_returns.append(float(episodic_return))
        self.log(step, {"charts/episodic_return": episodic_return, "charts/episodic_length": episodic_length})
        self.progress(step)

    def training_done(self, step: int) -> None:
        """Mark the training loop as complete at env step `step` (the summary's global_step)."""
        self.global_step = int(step)

    def set_evaluation(self, model_file: Path, returns: list[float]) -> None:
        """Record the saved model and the returns of its evaluation episodes (reported in the summary)."""
        self.evaluation = {"model": model_file.name, "episodes": len(returns),
                           "mean_return": sum(returns) / len(returns) if returns else None, "returns": returns}

    def sps(self, step: int | None = None) -> float:
        elapsed = time.time() - self.start
        return (self.global_step if step is None else step) / elapsed if elapsed > 0 else 0.0

    def progress(self, step: int, force: bool = False) -> None:
        """Print a progress line (every progress_interval_s): step, training time so far (resumes included), the
        time left at the run's mean speed, SPS and the recent return."""
        now = time.time()
        if self.quiet or (not force and now - self._last_progress < self.progress_interval_s):
            return
        self._last_progress = now
        sps = self.sps(step)
        left = duration((self.total_timesteps - step) / sps) if sps > 0 and step < self.total_timesteps else "-"
        print(f"[{self.run_name}] step {step:,}/{self.total_timesteps:,} ({100 * step / self.total_timesteps:.0f}%) "
              f"| {duration(now - self.start)} elapsed, ETA {left} | SPS {sps:.0f} | return (last "
              f"{len(self.recent_returns)}) {self._recent_return()}", file=sys.stderr, flush=True)

    def _recent_return(self) -> str:
        return f"{sum(self.recent_returns) / len(self.recent_returns):.1f}" if self.recent_returns else "-"

    def finish(self, status: str = "finished", error: str | None = None) -> dict[str, Any]:
        """Close the writers and write the summary (last, atomically); a last line names the status, the final
        return and the record's folder. Returns the summary."""
        self.progress(self.global_step, force=status == "finished")
        self._metrics.close()
        self.writer.close()
        summary = self.summary = self._write_summary(status, error)
        if not self.quiet:
            print(f"[{self.run_name}] {status} at step {self.global_step:,} after {duration(summary['wall_clock_s'])} "
                  f"| final return (last {len(self.recent_returns)}) {self._recent_return()} | record: {self.run_dir}",
                  file=sys.stderr, flush=True)
        if self.wandb_run is not None:
            self.wandb_run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self.wandb_run.finish(exit_code=0 if status == "finished" else 1)
        return summary

    def _write_summary(self, status: str, error: str | None = None) -> dict[str, Any]:
        recent = list(self.recent_returns)
        summary = {
            "schema_version": SCHEMA_VERSION,
            "status": status,
            "global_step": self.global_step,
            "total_timesteps": self.total_timesteps,
            "episodes": len(self.episode_returns),
            "final_return": sum(recent) / len(recent) if recent else None,
            "final_window": len(recent),
            "best_return": max(self.episode_returns) if self.episode_returns else None,
            "wall_clock_s": round(time.time() - self.start, 3),
            "sps": round(self.sps(), 2),
            "evaluation": self.evaluation,
            "error": error,
            "population_size": self.population_size,
            **({"resumes": self.resumes} if self.resumes else {}),
        }
        write_json_atomic(self.run_dir / "summary.json", summary)
        return summary

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted", error=str(exc) or "KeyboardInterrupt")
        elif issubclass(exc_type, NonFiniteTraining):
            self.finish("crashed", error=str(exc))
        else:
            self.finish("crashed", error="".join(traceback.format_exception(exc_type, exc, tb)))
            if exc is not None:
                exc.add_note(f"{RECORDED_IN}{self.run_dir / 'summary.json'}")
        return False


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested options as one level of dotted keys ({"optim": {"lr": x}} -> {"optim.lr": x})."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
