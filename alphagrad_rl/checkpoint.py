"""Checkpoints of a training run, and exact resume from them.

A checkpoint is written every `interval_steps` env steps and/or `interval_s` seconds of training, and
when SIGTERM or SIGINT asks the run to stop (the run finishes its current step, saves, and stops with
status "interrupted"; a second SIGINT stops at once). It holds everything the run needs to continue as
if it had never stopped: the agent's tracked objects (networks, target networks, optimizers with their
state and scheduled alpha, schedulers, replay buffer, environments, RNG generators), the agent's own
counters and current observation, every global RNG (python, numpy, torch, CUDA) and the run record's
position (alphagrad_rl.runs).

Files, in `<run_dir>/checkpoints/`: `step-<012d>.pt` (torch.save; loaded with weights_only=True, so a
checkpoint cannot run code; numpy arrays are stored as tensors) and its manifest `step-<012d>.json`
(algorithm, config, byte size and SHA-256 of the .pt), each written to a temporary file, fsynced and
renamed, the manifest last. A checkpoint counts only when its manifest is there and the file's size and
hash match it, so a killed write or a damaged file is detected and the previous checkpoint is used.
The newest `keep` checkpoints are kept; a finished run deletes them (unless told to keep them).

A checkpoint from another configuration (another algorithm, environment, network or any option that
changes training, see alphagrad_rl.runs.RESUME_MAY_CHANGE) is refused with the differences named, never loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .envs import restore_vector_env_state, vector_env_state
from .runs import (
    CHECKPOINT_DIR,
    RunRecord,
    atomic_write,
    checkpoint_manifests,
    config_differences,
    write_json_atomic,
)

FORMAT_VERSION = 2  # 2: AGR state inside the optimizer's state_dict; AlphaGrad's default path is the fused kernel
class CheckpointMismatch(ValueError):
    """The checkpoint was written by another configuration; it is never loaded."""


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped the run after a checkpoint was saved."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint saved, continue with --resume")
        self.signum = signum


def _encode(value: Any) -> Any:
    """Make `value` loadable with weights_only=True: numpy arrays become tagged tensors."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, (list, deque)):
        return [_encode(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_encode(item) for item in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_decode(item) for item in value)
    return value


def global_rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(legacy=False), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}


def set_global_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class _HashingWriter(io.RawIOBase):
    """A file that hashes what it writes (torch.save writes the checkpoint sequentially)."""

    def __init__(self, file) -> None:
        self.file, self.sha256, self.size = file, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Saves and restores one run's checkpoints (see the module docstring).

    The agent `track()`s its stateful objects once they exist, calls `restore()` (which returns its own
    saved values, or None on a fresh start), and, after each step, `save(step, **values)` whenever
    `due(step)` says so. Use it as a context manager around the run record: it turns SIGTERM/SIGINT into
    a checkpoint and a stop, and deletes the checkpoints of a run that finished.
    """

    def __init__(self, run_dir: str | Path, algorithm: str, config: dict[str, Any], *, interval_steps: int = 0,
                 interval_s: float = 300.0, keep: int = 2, keep_after_finish: bool = False) -> None:
        if interval_steps < 0 or interval_s < 0:
            raise ValueError(f"invalid checkpoint interval: {interval_steps} steps, {interval_s} s (allowed: >= 0)")
        if keep < 1:
            raise ValueError(f"invalid number of checkpoints to keep: {keep} (allowed: >= 1)")
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / CHECKPOINT_DIR
        self.algorithm = algorithm
        self.config = config
        self.interval_steps = interval_steps
        self.interval_s = interval_s
        self.keep = keep
        self.keep_after_finish = keep_after_finish
        self.record: RunRecord | list[RunRecord | None] | None = None  # a population: its members' records
        self.loaded: dict[str, Any] | None = None
        self.loaded_path: Path | None = None
        self._tracked: dict[str, Any] = {}
        self._last_step = 0
        self._last_time = time.monotonic()
        self._signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}

    # --- finding and loading -----------------------------------------------------------------------------
    def load_latest(self) -> dict[str, Any] | None:
        """The newest intact checkpoint (verified against its manifest; damaged ones are reported and skipped),
        or None when there is none. Raises CheckpointMismatch when it comes from another configuration."""
        damaged = []
        for manifest_path in checkpoint_manifests(self.run_dir):
            data_path = manifest_path.with_suffix(".pt")
            try:
                manifest = json.loads(manifest_path.read_text())
                data = data_path.read_bytes()
                intact = len(data) == manifest.get("bytes") and hashlib.sha256(data).hexdigest() == manifest.get("sha256")
            except (OSError, json.JSONDecodeError, AttributeError) as error:
                print(f"warning: checkpoint {manifest_path.name} unreadable ({error}); trying the previous one",
                      file=sys.stderr)
                damaged.append(manifest_path)
                continue
            if not intact:
                print(f"warning: checkpoint {data_path} is damaged (size or SHA-256 differs from its manifest); "
                      "trying the previous one", file=sys.stderr)
                damaged.append(manifest_path)
                continue
            self._check_compatible(manifest, data_path)
            payload = _decode(torch.load(io.BytesIO(data), weights_only=True, map_location="cpu"))
            self.loaded, self.loaded_path = payload, data_path
            self._last_step = payload["step"]
            for path in damaged:  # so that they never shadow the checkpoints this run writes next
                _remove_checkpoint(path)
            return payload
        return None

    def _check_compatible(self, manifest: dict[str, Any], path: Path) -> None:
        if manifest.get("format") != FORMAT_VERSION:
            raise CheckpointMismatch(f"checkpoint {path} has format {manifest.get('format')!r}, "
                                     f"this version reads {FORMAT_VERSION}")
        problems = []
        if manifest.get("algorithm") != self.algorithm:
            problems.append(f"algorithm: {manifest.get('algorithm')!r} (checkpoint) != {self.algorithm!r} (now)")
        problems += config_differences(manifest.get("config", {}), self.config)
        if problems:
            raise CheckpointMismatch(
                f"refusing to resume from {path}: it was written by another configuration ("
                + "; ".join(problems) + "). Resume with the options the run started with, or start a new run "
                "with another --run-name.")

    # --- the agent's objects ------------------------------------------------------------------------------
    def track(self, **objects: Any) -> None:
        """Objects whose state goes into every checkpoint: anything with state_dict/load_state_dict
        (modules, optimizers, schedulers, the replay buffer), numpy Generators and RandomStates, torch Generators
        and SyncVectorEnvs. None is skipped."""
        self._tracked.update({name: obj for name, obj in objects.items() if obj is not None})

    def restore(self) -> dict[str, Any] | None:
        """Load the tracked objects and every RNG from the loaded checkpoint and return the values the agent
        saved with it (plus "fresh_obs": {env index: first observation} for environments that could not be
        restored and started a fresh episode). None when there is no checkpoint to resume from."""
        if self.loaded is None:
            return None
        state = self.loaded["tracked"]
        if set(state) != set(self._tracked):
            raise CheckpointMismatch(f"checkpoint {self.loaded_path} holds {sorted(state)}, this run tracks "
                                     f"{sorted(self._tracked)}")
        fresh_obs: dict[int, np.ndarray] = {}
        for name, obj in self._tracked.items():
            if isinstance(obj, np.random.Generator):
                obj.bit_generator.state = state[name]
            elif isinstance(obj, (np.random.RandomState, torch.Generator)):
                obj.set_state(state[name])
            elif isinstance(obj, gym.vector.SyncVectorEnv):
                fresh_obs = restore_vector_env_state(obj, state[name])
            elif isinstance(obj, torch.nn.Module):
                _check_shapes(name, obj.state_dict(), state[name], self.loaded_path)
                obj.load_state_dict(state[name])
            else:
                obj.load_state_dict(state[name])
        set_global_rng_state(self.loaded["global_rng"])
        return {**self.loaded["values"], "fresh_obs": fresh_obs}

    # --- saving -------------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether a checkpoint should be written after `step` env steps (interval reached, or a stop asked)."""
        return (self._signal is not None
                or (self.interval_steps > 0 and step - self._last_step >= self.interval_steps)
                or (self.interval_s > 0 and time.monotonic() - self._last_time >= self.interval_s))

    def save(self, step: int, **values: Any) -> Path:
        """Write a checkpoint after `step` env steps with the tracked objects, the global RNGs, the run record's
        position and the agent's `values`; then, if SIGTERM/SIGINT asked the run to stop, raise RunInterrupted."""
        state = {}
        for name, obj in self._tracked.items():
            if isinstance(obj, np.random.Generator):
                state[name] = obj.bit_generator.state
            elif isinstance(obj, np.random.RandomState):
                state[name] = obj.get_state(legacy=False)
            elif isinstance(obj, torch.Generator):
                state[name] = obj.get_state()
            elif isinstance(obj, gym.vector.SyncVectorEnv):
                state[name] = vector_env_state(obj)
            else:
                state[name] = obj.state_dict()
        payload = _encode({"format": FORMAT_VERSION, "algorithm": self.algorithm, "step": step, "tracked": state,
                           "values": values, "global_rng": global_rng_state(),
                           "record": _record_state(self.record, step)})
        path = self._write(step, payload)
        self._last_step, self._last_time = step, time.monotonic()
        if self._signal is not None:
            raise RunInterrupted(self._signal, step)
        return path

    def _write(self, step: int, payload: dict[str, Any]) -> Path:
        path = self.directory / f"step-{step:012d}.pt"
        with atomic_write(path, "wb") as f:
            writer = _HashingWriter(f)
            torch.save(payload, writer)
        write_json_atomic(path.with_suffix(".json"), {
            "format": FORMAT_VERSION, "algorithm": self.algorithm, "step": step, "bytes": writer.size,
            "sha256": writer.sha256.hexdigest(), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": self.config})
        _fsync_dir(self.directory)
        manifests = checkpoint_manifests(self.run_dir)
        for old in manifests[self.keep:]:
            _remove_checkpoint(old)
        kept = {manifest.stem for manifest in manifests[:self.keep]}
        for orphan in self.directory.glob("step-*.pt"):  # data whose manifest was never written (a killed save)
            if orphan.stem not in kept:
                orphan.unlink(missing_ok=True)
        return path

    def delete_all(self) -> None:
        for path in [*self.directory.glob("step-*"), *self.directory.glob(".step-*.tmp")]:
            path.unlink(missing_ok=True)
        if self.directory.exists() and not any(self.directory.iterdir()):
            self.directory.rmdir()

    # --- signals ------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, keeping the last checkpoint
        self._signal = signum
        print(f"{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping"
              + (" (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""), file=sys.stderr, flush=True)

    def catch_stop_signals(self) -> None:
        """From now until the `with` block ends, SIGTERM/SIGINT ask the run to stop at its next checkpoint
        instead of killing it. The agents' setup calls it before it opens the run records, so that a stop which
        comes while the run starts ends it "interrupted", never with a record that says "running" and no process."""
        if threading.current_thread() is threading.main_thread() and not self._previous_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. SIGINT in a background job stays ignored
                    self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def __enter__(self) -> Checkpointer:
        self.catch_stop_signals()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()
        if exc_type is None and not self.keep_after_finish:
            self.delete_all()
        return False


def _record_state(record: RunRecord | list[RunRecord | None] | None, step: int) -> Any:
    """The run record's position, or a population's: one per member (None for a member whose run has ended)."""
    if isinstance(record, list):
        return [None if member is None else member.state_dict(step) for member in record]
    return None if record is None else record.state_dict(step)


def _remove_checkpoint(manifest: Path) -> None:
    manifest.unlink(missing_ok=True)  # the manifest first: a half-deleted checkpoint is never trusted
    manifest.with_suffix(".pt").unlink(missing_ok=True)


def _check_shapes(name: str, expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a network whose parameter names or shapes differ from the checkpoint's, naming the first difference."""
    for key in dict.fromkeys([*expected, *saved]):
        if key not in expected or key not in saved or tuple(expected[key].shape) != tuple(saved[key].shape):
            shapes = [tuple(d[key].shape) if key in d else "missing" for d in (saved, expected)]
            raise CheckpointMismatch(f"refusing to resume from {path}: {name}.{key} is {shapes[0]} in the checkpoint "
                                     f"and {shapes[1]} in this run (another network shape)")
