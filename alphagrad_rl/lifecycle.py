"""One run lifecycle for the runs a process trains: a single-file run, or a population's members (member i's run is
records[i]). experiment.start_run and population.open_population open one (or resume it: --resume); the agent then

    with runs:                                   # a stop (SIGTERM, Ctrl-C) or an error records every live run
        runs.track(network=..., optimizer=...)   # what each checkpoint holds
        if (resumed := runs.restore()) is not None: ...   # --resume: the values saved, "fresh_obs" to put back
        ... runs.log_episodes(step, infos) ... runs.crash(i, cause) ... runs.save_if_due(step, obs=...) ...
        runs.finish(total_timesteps, save_model)  # each live run saves and evaluates its model, then finishes

so that an agent's main shows its algorithm, and which runs still train, which crashed and why, and what a checkpoint
holds of each live in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .checkpoint import Checkpointer
from .envs import ended_episodes
from .runs import RunRecord, read_summary


class Runs:
    """The records of the runs one process trains and the Checkpointer that holds them all. `records[i]` is None for
    a population member whose run had ended before a resume; `alive[i]` says whether member i still trains.
    `envs_per_member`: a population member's number of sub-environments (None: a single-file run, whose every
    environment is its own)."""

    def __init__(self, records: list[RunRecord | None], checkpoints: Checkpointer, run_dirs: list[Path],
                 envs_per_member: int | None = None) -> None:
        self.records = records
        self.checkpoints = checkpoints
        self.run_dirs = run_dirs
        self.envs_per_member = envs_per_member
        self.alive = [record is not None for record in records]
        checkpoints.record = records if self.population else records[0]

    @property
    def population(self) -> bool:
        return self.envs_per_member is not None

    @property
    def record(self) -> RunRecord:
        """A single-file run's record."""
        return self.records[0]

    def live(self) -> Iterator[tuple[int, RunRecord]]:
        """(member, record) of each run that still trains."""
        return ((i, record) for i, (record, alive) in enumerate(zip(self.records, self.alive)) if alive)

    def track(self, **objects: Any) -> None:
        """Objects whose state every checkpoint holds (Checkpointer.track)."""
        self.checkpoints.track(**objects)

    def restore(self) -> dict[str, Any] | None:
        """With --resume: the tracked objects and every RNG as the checkpoint left them, and the values saved with it
        (None: training starts afresh). Runs that had stopped stay stopped; each run notes the environments that
        start a fresh episode, whose first observations are in "fresh_obs" ({env index: observation})."""
        resumed = self.checkpoints.restore()
        if resumed is None:
            return None
        self.alive = [bool(alive) for alive in resumed.get("alive", self.alive)]
        fresh: dict[int, list[int]] = {}
        for index in resumed["fresh_obs"]:
            member, env = divmod(index, self.envs_per_member) if self.population else (0, index)
            fresh.setdefault(member, []).append(env)
        for member, envs in fresh.items():
            if self.records[member] is not None:
                self.records[member].note_fresh_episodes(envs)
        return resumed

    def log_episodes(self, step: int, infos: dict) -> None:
        """Record every episode that ended in this env step in its run (not in a crashed member's)."""
        for index, episodic_return, episodic_length in ended_episodes(infos):
            member = index // self.envs_per_member if self.population else 0
            if self.alive[member]:
                self.records[member].log_episode(step, episodic_return, episodic_length)

    def crash(self, member: int, cause: str) -> None:
        """Member `member`'s run stops here, recorded "crashed" with `cause`, as its single-file run would have; the
        others go on."""
        if self.alive[member]:
            self.alive[member] = False
            self.records[member].finish("crashed", error=cause)

    def save_if_due(self, step: int, **values: Any) -> None:
        """A checkpoint at env step `step` when one is due (its interval, or a stop signal: then, saved, the stop is
        raised), holding the tracked objects, `values`, which runs still train and each one's record position."""
        if self.checkpoints.due(step):
            if self.population:
                self.checkpoints.record = [record if alive else None for record, alive in zip(self.records, self.alive)]
            self.checkpoints.save(step, alive=self.alive, **values)

    def finish(self, total_timesteps: int, save_model: Callable[[int, RunRecord], None] | None = None) -> None:
        """Training is over: each run that still trains records its last step, saves and evaluates its model
        (`save_model(member, record)`, with --save-model) and is recorded "finished"."""
        for member, record in self.live():
            record.training_done(total_timesteps)
            if save_model is not None:
                save_model(member, record)
            record.finish("finished")

    def summaries(self) -> list[dict[str, Any]]:
        """Each run's summary: from its record, or from its folder for a member whose run had ended before a resume."""
        return [record.summary if record is not None else read_summary(run_dir)
                for record, run_dir in zip(self.records, self.run_dirs)]

    def __enter__(self) -> Runs:
        self.checkpoints.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """A stop or an error ends every run that still trains: "interrupted" (SIGTERM, Ctrl-C; a checkpoint was
        saved) or "crashed", with the cause (RunRecord.__exit__)."""
        if exc_type is not None:
            for _, record in self.live():
                record.__exit__(exc_type, exc, tb)
        return self.checkpoints.__exit__(exc_type, exc, tb)
