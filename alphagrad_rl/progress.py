"""Live progress of a sweep while it trains, read from its run folders (so it also sees runs another launcher on the
shared folder trains): how many runs have finished, which are training (their lock is held) and where each stands
(step of its total, SPS, latest return), how many are queued, and the sweep's ETA from the throughput measured since
the launch. On a terminal a rich table redrawn every second; otherwise a timestamped plain line every minute.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from .runs import duration, latest_progress, run_locked


@dataclass(frozen=True)
class RunningRun:
    name: str
    step: int
    total: int
    sps: float
    recent_return: float | None


@dataclass(frozen=True)
class Snapshot:
    finished: int
    running: list[RunningRun]
    queued: int
    elapsed_s: float
    eta_s: float | None  # None until some steps were measured

    def line(self) -> str:
        """The plain-text form: counts, elapsed time, ETA, then each training run."""
        runs = "; ".join(f"{run.name} {run.step:,}/{run.total:,} ({100 * run.step / max(run.total, 1):.0f}%), "
                         f"{run.sps:.0f} SPS, return {_shown(run.recent_return)}" for run in self.running)
        return (f"{self.finished} finished, {len(self.running)} running, {self.queued} queued | "
                f"{duration(self.elapsed_s)} elapsed, ETA {'-' if self.eta_s is None else duration(self.eta_s)}"
                + (f" | {runs}" if runs else ""))


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


class SweepProgress:
    """Watches the runs `totals` names ({run name: its budget in env steps}) in `sweep_dir`; `finished()` gives the
    names the launcher has seen end. Use as a context manager around the launch: it shows progress every
    `interval_s` seconds in a background thread (live: a rich table, else plain lines via `write`)."""

    def __init__(self, sweep_dir: Path, totals: dict[str, int], finished: Callable[[], Collection[str]],
                 interval_s: float, live: bool, write: Callable[[str], None] = print) -> None:
        self.sweep_dir = sweep_dir
        self.totals = totals
        self.finished = finished
        self.interval_s = interval_s
        self.live = live
        self.write = write
        self.start = time.monotonic()
        self.first_step: dict[str, int] = {}  # each run's step when first seen: the throughput counts steps since
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self, now: float | None = None) -> Snapshot:
        now = time.monotonic() if now is None else now
        done = set(self.finished()) & set(self.totals)
        running, steps_now = [], {}
        for name, total in self.totals.items():
            if name in done:
                steps_now[name] = total
                continue
            live = latest_progress(self.sweep_dir / name)
            steps_now[name] = live.step if live is not None else 0
            if run_locked(self.sweep_dir, name):
                running.append(RunningRun(name, steps_now[name], total,
                                          live.step / live.time_s if live is not None and live.time_s > 0 else 0.0,
                                          None if live is None else live.recent_return))
        for name, step in steps_now.items():
            self.first_step.setdefault(name, 0 if name in done else step)
        gained = sum(step - self.first_step[name] for name, step in steps_now.items())
        left = sum(self.totals[name] - step for name, step in steps_now.items() if name not in done)
        elapsed = now - self.start
        eta = left * elapsed / gained if gained > 0 else None
        return Snapshot(len(done), running, len(self.totals) - len(done) - len(running), elapsed, eta)

    def table(self, snapshot: Snapshot):
        """The rich form: a title line with the counts and the ETA, a row per training run."""
        from rich.table import Table

        table = Table(title=snapshot.line().split(" | ")[0] + f" | {duration(snapshot.elapsed_s)} elapsed, ETA "
                      + ("-" if snapshot.eta_s is None else duration(snapshot.eta_s)), title_justify="left")
        for column in ("run", "step", "of total", "SPS", "latest return"):
            table.add_column(column, justify="left" if column == "run" else "right")
        for run in snapshot.running:
            table.add_row(run.name, f"{run.step:,}", f"{100 * run.step / max(run.total, 1):.0f}% of {run.total:,}",
                          f"{run.sps:.0f}", _shown(run.recent_return))
        return table

    def _show(self) -> None:
        if self.live:
            from rich.live import Live

            with Live(self.table(self.snapshot()), refresh_per_second=1, transient=True) as live:
                while not self._stop.wait(self.interval_s):
                    live.update(self.table(self.snapshot()))
            return
        while not self._stop.wait(self.interval_s):
            self.write(f"[{time.strftime('%H:%M:%S')}] {self.snapshot().line()}")

    def __enter__(self) -> SweepProgress:
        self._thread = threading.Thread(target=self._show, name="sweep-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False


def progress_mode(enabled: bool) -> tuple[float, bool] | None:
    """(interval, live) for the launcher's progress: a table every second on a terminal, a line a minute otherwise;
    None when not `enabled`."""
    if not enabled:
        return None
    return (1.0, True) if sys.stdout.isatty() else (60.0, False)
