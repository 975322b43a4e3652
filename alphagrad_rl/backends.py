"""Sweep execution: a job (one run, or a population's runs in one process) trained where a backend puts it, with the
same guarantees everywhere. `run_locked_job` is what every backend runs per job, in a launcher thread (`LocalBackend`)
or in a Ray task on any node of a cluster (`RayBackend`):

- the job's runs are locked (<sweep>/.locks/, flock) for as long as their process lives, so no two launchers or
  retried tasks ever train one run at once;
- an unfinished earlier attempt resumes from its checkpoint (`--resume`), or starts afresh without one;
- a stop (the launcher's SIGINT/SIGTERM, a cancelled Ray task) sends the agent SIGTERM and waits: it saves a
  checkpoint and stops; the agent also gets SIGTERM when the process that started it dies (a killed launcher, a Ray
  worker lost with its node), so at most the work since its last periodic checkpoint is lost;
- a lost Ray worker or node: Ray retries the task (`RAY_RETRIES`), which resumes the run from its checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any

from .planning import Job, checkpoint_members, population_argv, population_checkpoint_matches
from .runs import (
    LOCK_WAIT_S,
    checkpoint_manifests,
    lock_runs,
    locked_env,
    read_summary,
    release_runs,
    write_json_atomic,
)
from .sweep_config import AgentEntry

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one core per run: many runs share a machine
FORWARDED_ENV_PREFIXES = ("WANDB_",)  # the launcher's settings every run gets, on whatever node it trains
RAY_RETRIES = 3  # how often Ray runs a task again whose worker or node was lost (it resumes from its checkpoint)
STOP_WAIT_S = 300.0  # how long a stopping launcher waits for its runs to save their checkpoints


@dataclasses.dataclass(frozen=True)
class JobContext:
    """What training a job needs, wherever it runs (picklable: it travels to Ray workers)."""

    agent: AgentEntry
    sweep_dir: Path
    extra: tuple[str, ...]  # the launcher's flags for every run (W&B tracking)
    env: dict[str, str]  # added to the environment of the process that trains the job (THREAD_ENV, the launcher's W&B)
    cwd: str
    launcher: str = "sweep launcher"  # what resumed a run, as its output.log says


def launcher_env() -> dict[str, str]:
    """The variables a launcher adds to every run's environment: one thread per run and its W&B settings."""
    return {**THREAD_ENV, **{key: value for key, value in os.environ.items() if key.startswith(FORWARDED_ENV_PREFIXES)}}


def stop_with_parent() -> None:
    """In the child: get SIGTERM when the process (thread) that started it dies, so a killed launcher or a lost Ray
    worker leaves no orphan run behind; the run saves a checkpoint and stops, and the next attempt resumes it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_agents: set[subprocess.Popen] = set()  # agent processes this process started that still run
_agents_lock = threading.Lock()


def run_agent(argv: list[str], log: IO[str], env: dict[str, str], cwd: str, pass_fds: tuple[int, ...]) -> int:
    """One agent process (inheriting `pass_fds`: its locks), its output into `log`; its exit status. When the waiting
    thread is interrupted (KeyboardInterrupt: Ctrl-C, a cancelled Ray task) the agent is sent SIGTERM and waited for:
    it saves a checkpoint and stops."""
    process = subprocess.Popen(argv, cwd=cwd, env=locked_env(env, pass_fds), stdout=log, stderr=subprocess.STDOUT,
                               preexec_fn=stop_with_parent, pass_fds=pass_fds)
    with _agents_lock:
        _agents.add(process)
    try:
        while True:  # in short waits: an exception Ray raises in the thread (a cancelled task) lands between them
            with contextlib.suppress(subprocess.TimeoutExpired):
                return process.wait(timeout=0.5)
    except BaseException:
        process.terminate()
        process.wait()
        raise
    finally:
        with _agents_lock:
            _agents.discard(process)


def stop_agents() -> None:
    """SIGTERM to every agent process this process started that still runs: each saves a checkpoint and stops."""
    with _agents_lock:
        for process in _agents:
            process.terminate()


def prepare_run_folders(run_dirs: list[Path], population: bool) -> bool:
    """Whether an earlier attempt continues from its checkpoint: the run's own, or a population's in its first
    member's folder when written for exactly these members. If not, the folders are emptied for a fresh start (a
    population checkpoint reaches a single run only when its population cannot resume: planning.resumed_jobs)."""
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


def execute_job(job: Job, context: JobContext, locks: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Train a job whose runs this process has locked (`locks`, passed down to the agent) in one agent process: a
    single-file run, or a population whose output goes to the first member's output.log (the others point to it).
    Returns its runs' summaries, in order; a process that failed leaves each run it did not end recorded "crashed"
    with the tail of its output."""
    run_dirs = [context.sweep_dir / run.name for run in job.runs]
    resume = prepare_run_folders(run_dirs, population=job.population)
    if job.population:
        argv = population_argv(job.runs, context.agent, context.sweep_dir, context.extra)
        for run_dir in run_dirs[1:]:
            (run_dir / "output.log").write_text(f"trained in one population process; its output: "
                                                f"{run_dirs[0] / 'output.log'}\n")
    else:
        argv = job.runs[0].argv(context.agent.path, context.sweep_dir, context.extra)
    marker = f"{'population ' * job.population}resumed by the {context.launcher}"
    start = time.time()
    with open_run_log(run_dirs[0] / "output.log", resume, marker) as log:
        returncode = run_agent(argv + ["--resume"] * resume, log, {**os.environ, **context.env}, context.cwd, locks)
    unfinished = (None, "running") if job.population else (None, "running", "finished")  # a member ends on its own
    summaries = []
    for run_dir in run_dirs:
        summary = read_summary(run_dir) or {}
        if returncode != 0 and summary.get("status") in unfinished:
            tail = (run_dirs[0] / "output.log").read_text(errors="replace")[-4000:]
            summary = {**summary, "status": "crashed",
                       "error": f"{'population ' * job.population}exit code {returncode}\n{tail}",
                       "wall_clock_s": round(time.time() - start, 3)}
            write_json_atomic(run_dir / "summary.json", summary)
        summaries.append(summary)
    return summaries


def run_locked_job(job: Job, context: JobContext, wait_s: float = LOCK_WAIT_S) -> list[dict[str, Any]] | None:
    """Lock the job's runs (waiting up to `wait_s` for another holder), then train those not finished meanwhile (by
    another launcher while this one waited). Returns every run's summary, in order; None when another launcher or
    task holds them (nothing is touched)."""
    names = [run.name for run in job.runs]
    fds = lock_runs(context.sweep_dir, names, wait_s)
    if fds is None:
        return None
    try:
        summaries = {name: read_summary(context.sweep_dir / name) or {} for name in names}
        left = [run for run in job.runs if summaries[run.name].get("status") != "finished"]
        if left:
            trained = execute_job(Job(left, job.population), context, tuple(fds))
            summaries.update(zip((run.name for run in left), trained))
        return [summaries[name] for name in names]
    finally:
        release_runs(fds)


JobResult = tuple[Job, "list[dict[str, Any]] | None"]  # a job and its runs' summaries (None: another launcher has it)


class LocalBackend:
    """Jobs on this machine: `workers` at a time, each in a thread that starts its agent process; with GPU `slots`
    (planning.assign_gpus), a job takes a free slot and gets CUDA_VISIBLE_DEVICES set to it."""

    def __init__(self, workers: int, slots: list[str]) -> None:
        self.workers, self.slots = workers, slots
        self.free_slots: queue.Queue[str] = queue.Queue()
        for slot in slots:
            self.free_slots.put(slot)
        self.pool = ThreadPoolExecutor(workers)

    def describe(self) -> str:
        return f"{self.workers} worker(s) (local, " + (f"GPUs {','.join(sorted(set(self.slots)))})" if self.slots
                                                          else "CPU)")

    def start(self, jobs: list[Job], context: JobContext, wait_s: float = LOCK_WAIT_S) -> dict[Future, Job]:
        """Queue `jobs`; each future gives its job's summaries (run_locked_job)."""
        return {self.pool.submit(self._one, job, context, wait_s): job for job in jobs}

    def execute(self, jobs: list[Job], context: JobContext, wait_s: float = LOCK_WAIT_S) -> Iterator[JobResult]:
        """Train `jobs`; yields each with its summaries as it ends."""
        futures = self.start(jobs, context, wait_s)
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                yield futures.pop(future), future.result()

    def _one(self, job: Job, context: JobContext, wait_s: float) -> list[dict[str, Any]] | None:
        gpu = self.free_slots.get() if self.slots else None
        try:
            env = context.env if gpu is None else {**context.env, "CUDA_VISIBLE_DEVICES": gpu}
            return run_locked_job(job, dataclasses.replace(context, env=env), wait_s)
        finally:
            if gpu is not None:
                self.free_slots.put(gpu)

    def stop(self) -> None:
        """No queued job starts; every running run saves a checkpoint and stops (waited for)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        stop_agents()
        self.pool.shutdown(wait=True)

    def close(self) -> None:
        self.pool.shutdown()


class SharedStorageError(RuntimeError):
    """A Ray node does not see the launcher's results folder (results need a filesystem every node mounts)."""


def _ray_job(job: Job, context: JobContext, wait_s: float, launch_token: Path) -> list[dict[str, Any]] | None:
    """A Ray task: one job on whichever node Ray chose, under the guarantees of run_locked_job."""
    import ray

    if not launch_token.exists():
        raise SharedStorageError(
            f"node {ray.util.get_node_ip_address()} does not see the results folder {context.sweep_dir.parent} (no "
            f"{launch_token.name} there): a Ray sweep writes its runs into a folder every node mounts at the same "
            "path (docs/sweeps.md, On a Ray cluster)")
    gpus = ray.get_gpu_ids()
    env = {**context.env, **({"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if gpus else {})}
    return run_locked_job(job, dataclasses.replace(context, env=env), wait_s)


class RayBackend:
    """Jobs as Ray tasks on a cluster: the one `address` names ("auto": the one `ray start` made on this machine), else
    a new local instance of `workers` CPUs (never a cluster Ray would otherwise find and join). A task takes one CPU
    and, where the cluster has GPUs and `use_gpus`, 1/runs_per_gpu of a GPU (fractional packing). Runs are written by
    the workers into the launcher's results folder, which every node must see at the same path (checked by each task).
    A task whose worker or node is lost is retried by Ray (RAY_RETRIES); a stop cancels every task, whose runs save a
    checkpoint and stop."""

    def __init__(self, address: str | None, workers: int, runs_per_gpu: int, use_gpus: bool, report) -> None:
        import ray

        handler = signal.getsignal(signal.SIGTERM)
        context = ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                           ignore_reinit_error=True, num_cpus=None if address else (workers or None))
        signal.signal(signal.SIGTERM, handler)  # Ray's own would end the launcher at once: its runs stop as on Ctrl-C
        resources = ray.cluster_resources()
        joined = f"the cluster at {context.address_info['gcs_address']}" if address else "a new local instance"
        report(f"Ray: {joined} ({len(ray.nodes())} node(s), {resources.get('CPU', 0):.0f} CPUs, "
               f"{resources.get('GPU', 0):.0f} GPUs)")
        self.gpu_share = 1.0 / runs_per_gpu if use_gpus and resources.get("GPU", 0) > 0 else 0.0
        self.task = ray.remote(num_cpus=1, num_gpus=self.gpu_share, max_retries=RAY_RETRIES)(_ray_job)
        self.running: dict[Any, Job] = {}
        self.tokens: list[Path] = []

    def describe(self) -> str:
        return "Ray tasks (" + (f"{self.gpu_share:g} GPU each)" if self.gpu_share else "CPU)")

    def execute(self, jobs: list[Job], context: JobContext, wait_s: float = LOCK_WAIT_S) -> Iterator[JobResult]:
        import ray

        token = context.sweep_dir / ".launches" / uuid.uuid4().hex  # each task checks that its node sees it
        token.parent.mkdir(parents=True, exist_ok=True)
        token.touch()
        self.tokens.append(token)
        self.running.update({self.task.remote(job, context, wait_s, token): job for job in jobs})
        pending = set(self.running)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            pending -= set(ready)
            yield self.running.pop(ready[0]), ray.get(ready[0])

    def stop(self) -> None:
        """Cancel every task: a queued one never starts; a running one gets KeyboardInterrupt, so its agent is sent
        SIGTERM, saves a checkpoint and stops (run_agent); waited for up to STOP_WAIT_S."""
        import ray

        for ref in self.running:
            ray.cancel(ref)
        ray.wait(list(self.running), num_returns=len(self.running), timeout=STOP_WAIT_S)

    def close(self) -> None:
        import ray

        for token in self.tokens:
            token.unlink(missing_ok=True)
        ray.shutdown()
