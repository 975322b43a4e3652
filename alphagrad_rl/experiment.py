"""Command-line options and set-up every agent shares: seeding, device, run record, optimizer diagnostics."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from torch.optim import Optimizer

from alphagrad import AlphaGrad, diagnostics
from alphagrad._validation import check_range

from .checkpoint import Checkpointer, CheckpointMismatch, RunInterrupted
from .envs import check_env
from .factory import OptimizerSpec, custom_sources, make_alpha_scheduler, make_optimizer, optimizer_specs
from .lifecycle import Runs
from .runs import (
    RECORDED_IN,
    NonFiniteTraining,
    RunRecord,
    check_results_dir,
    check_run_name,
    clear_record,
    config_differences,
    hold_run_locks,
    is_safe_name,
    read_summary,
    record_damage,
    safe_name,
)


@dataclass
class CommonArgs:
    """Options of every agent (CleanRL's names)."""

    exp_name: str = "run"
    """name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """set torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when it is available (CPU otherwise)"""
    autoreset_mode: Literal["same-step", "next-step"] = "same-step"
    """gymnasium 1.x autoreset of the training envs: same-step (no stored transition spans two episodes) or
    next-step (gymnasium's default, which CleanRL-style code written for 1.x, the AlphaGrad author's included,
    runs: the step after an episode ends resets the env, and the agent learns from that step's transition, from
    the last observation to the next episode's first with reward 0)"""
    track: bool = False
    """log to Weights & Biases (works offline with WANDB_MODE=offline)"""
    wandb_project_name: str = "alphagrad-rl"
    """W&B project"""
    wandb_entity: str | None = None
    """W&B entity (team)"""
    wandb_group: str | None = None
    """W&B group (sweeps set one per sweep)"""
    wandb_tags: tuple[str, ...] = ()
    """W&B tags"""
    results_dir: str = "results/runs"
    """the run record goes to <results_dir>/<run_name>/"""
    run_name: str | None = None
    """run folder name; default <env_id>__<exp_name>__<optimizer>__<seed>__<unix time>"""
    quiet: bool = False
    """no progress line on the terminal"""
    save_model: bool = False
    """save the networks (and PPO's normalization statistics) and evaluate them"""
    eval_episodes: int = 10
    """episodes of the evaluation after --save-model"""
    diagnostics_interval: int = 100
    """log the optimizer's diagnostics (update norms, AlphaGrad saturation) every N optimizer steps; 0: never"""
    checkpoint_interval_s: float = 300.0
    """write a checkpoint every this many seconds of training (0: not by time); SIGTERM/SIGINT always write one"""
    checkpoint_interval_steps: int = 0
    """also write a checkpoint every this many env steps (0: not by steps)"""
    resume: bool = False
    """continue <results-dir>/<run-name> from its newest intact checkpoint (from step 0 when it has none)"""
    keep_checkpoints: bool = False
    """keep the checkpoints of a finished run (by default only unfinished runs keep theirs)"""


INF = math.inf
# Each numeric option's allowed interval: name -> (low, high, brackets), "[" / "]" closed, "(" / ")" open; checked by
# check_ranges (NaN and non-numbers never pass). Each agent's RANGES adds its own; a test checks that every numeric
# option of every agent is listed.
COMMON_RANGES = {
    "seed": (0, 2**32 - 1, "[]"),  # numpy's seeds
    "total_timesteps": (1, INF, "[)"),
    "eval_episodes": (0, INF, "[)"),
    "diagnostics_interval": (0, INF, "[)"),
    "checkpoint_interval_s": (0, INF, "[)"),
    "checkpoint_interval_steps": (0, INF, "[)"),
}


def check_ranges(args: object, ranges: dict[str, tuple[float, float, str]]) -> None:
    """Raise ValueError for the first option of `ranges` whose value in `args` lies outside its interval (an option
    that is None, where None is allowed, is not checked)."""
    for name, (low, high, brackets) in ranges.items():
        value = getattr(args, name)
        if value is not None:
            check_range(name, value, low=low, high=high, low_inclusive=brackets[0] == "[",
                        high_inclusive=brackets[1] == "]")


def check_common_args(args: CommonArgs, env_id: str, action_space_type: type, algorithm: str,
                      ranges: dict[str, tuple[float, float, str]]) -> None:
    """Reject bad input with a clear message before anything is built: every numeric option against COMMON_RANGES
    and the agent's `ranges`, then the environment, the run name, the results folder and the optimizers
    (`algorithm` names the agent in messages)."""
    check_ranges(args, {**COMMON_RANGES, **ranges})
    check_env(env_id, action_space_type, algorithm)
    if args.resume and not args.run_name:
        raise ValueError("--resume needs --run-name: the name of the run folder to continue")
    if args.run_name is not None:
        check_run_name(args.run_name)
    check_results_dir(Path(args.results_dir))
    for f in dataclasses.fields(args):
        spec = getattr(args, f.name)
        if isinstance(spec, OptimizerSpec):
            try:  # on a stand-in parameter: every check of the factory and of the optimizer itself, nothing kept
                make_alpha_scheduler(make_optimizer([torch.zeros(1, requires_grad=True)], spec), spec)
            except ValueError as error:
                raise ValueError(f"--{f.name.replace('_', '-')}: {error}") from None


def check_learning_budget(args: object) -> None:
    """The replay agents' consistency checks: a batch fits in the buffer, and learning starts within the budget."""
    if args.batch_size > args.buffer_size:
        raise ValueError(f"invalid batch_size: {args.batch_size} (allowed: at most buffer_size, {args.buffer_size})")
    if args.learning_starts >= args.total_timesteps:
        raise ValueError(f"invalid learning_starts: {args.learning_starts} (allowed: below total_timesteps, "
                         f"{args.total_timesteps}: the run would never learn)")


def stop_if_nonfinite(loss: torch.Tensor, name: str, step: int) -> None:
    """Stop the run at env step `step` when `loss` is NaN or inf (NonFiniteTraining: recorded "crashed", the step and
    the loss named), before the optimizer writes it into the parameters."""
    if not bool(torch.isfinite(loss).all()):
        raise NonFiniteTraining(f"non-finite {name} ({loss.detach().flatten()[0].item()}) at step {step}")


def stop_if_nonfinite_parameters(module: torch.nn.Module, name: str, step: int) -> None:
    """As stop_if_nonfinite, for a network whose step overflowed its parameters to NaN or inf (a policy whose next
    forward pass would fail inside torch.distributions)."""
    norms = torch._foreach_norm([p.detach() for p in module.parameters()])
    if not bool(torch.stack(norms).isfinite().all()):
        raise NonFiniteTraining(f"non-finite {name} parameters (nan or inf) at step {step}")


def seed_everything(seed: int, torch_deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def select_device(cuda: bool) -> torch.device:
    return torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")


def start_run(args: CommonArgs, algorithm: str, env_id: str, optimizer_name: str, total_timesteps: int) -> Runs:
    """Name the run and open its record, or with --resume load its newest checkpoint and continue the record from
    there: the run's lifecycle (lifecycle.Runs), whose restore() then restores the agent's objects."""
    run_name = args.run_name or safe_name(f"{env_id}__{args.exp_name}__{optimizer_name}__{args.seed}__{int(time.time())}")
    if not is_safe_name(run_name):  # a long --exp-name
        raise ValueError(f"the default run name {run_name[:40]}... is {len(run_name)} characters long (allowed: up to "
                         "200): shorten --exp-name, or give --run-name")
    run_dir = Path(args.results_dir) / run_name
    config = dataclasses.asdict(args)
    checkpoints = Checkpointer(run_dir, algorithm, config, interval_steps=args.checkpoint_interval_steps,
                               interval_s=args.checkpoint_interval_s, keep_after_finish=args.keep_checkpoints)
    hold_run_locks(args.results_dir, [run_name])  # another process training this run: refused, nothing touched
    resume_state = None
    if args.resume:
        loaded = _checkpoint_to_resume(run_dir, checkpoints, config)  # refusals come before anything is touched
        if loaded is None:
            print(f"warning: {run_dir} has no intact checkpoint: the run starts from step 0", file=sys.stderr)
            clear_record(run_dir)
        else:
            resume_state = loaded["record"]
            print(f"resuming {run_dir} from {checkpoints.loaded_path.name}", file=sys.stderr)
    checkpoints.catch_stop_signals()
    return Runs([open_record(args, algorithm, run_dir, total_timesteps, resume_state)], checkpoints, [run_dir])


def open_record(args: CommonArgs, algorithm: str, run_dir: Path, total_timesteps: int,
                resume_state: dict | None = None, population_size: int = 1, member: int | None = None) -> RunRecord:
    """The run record of `args` (its full options as the config) in `run_dir`, with its W&B and progress options
    (`member`: its index in a population)."""
    return RunRecord(
        run_dir=run_dir, algorithm=algorithm, config=dataclasses.asdict(args), total_timesteps=total_timesteps,
        track=args.track, wandb_project=args.wandb_project_name, wandb_entity=args.wandb_entity,
        wandb_group=args.wandb_group, wandb_tags=args.wandb_tags, quiet=args.quiet, resume_state=resume_state,
        population_size=population_size, member=member,
        code=custom_sources(optimizer_specs(args)),
    )


def _checkpoint_to_resume(run_dir: Path, checkpoints: Checkpointer, config: dict) -> dict | None:
    """The newest intact checkpoint of `run_dir`, or None when the run may start over (nothing finished there,
    and the earlier attempt's options are today's). Raises ValueError for a finished run, and
    CheckpointMismatch when the checkpoint or the earlier attempt's record has other options."""
    check_intact(run_dir)
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") == "finished":
        raise ValueError(f"{run_dir} holds a finished run: there is nothing to resume, and its record is kept "
                         "(pick another --run-name for a new run)")
    if summary is not None and (summary.get("population_size") or 1) > 1:
        raise ValueError(f"{run_dir} was trained as one of a population of {summary['population_size']} runs: resume "
                         "it with its population (relaunch its sweep, or agents/<agent>_population.py --resume with "
                         "the same --run-names), which holds its checkpoint; its record is kept")
    loaded = checkpoints.load_latest()
    if loaded is None:
        check_start_over(run_dir, config)
    return loaded


def check_intact(run_dir: Path) -> None:
    """Raise ValueError when the run record in `run_dir` is damaged (runs.record_damage): it is kept as it is, never
    taken for a run that has not started."""
    if problem := record_damage(run_dir):
        raise ValueError(f"{run_dir} holds a damaged run record ({problem}): it is kept as it is; move the folder "
                         "away to train the run again")


def check_start_over(run_dir: Path, config: dict) -> None:
    """Let --resume start an unfinished run without an intact checkpoint over only when its earlier attempt (if
    any) ran with today's options `config`: raises CheckpointMismatch naming the differences, ValueError when the
    earlier options are unreadable."""
    if not (run_dir / "config.json").exists():
        return
    try:
        earlier = json.loads((run_dir / "config.json").read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{run_dir}/config.json is unreadable ({error}), so the earlier attempt's options cannot "
                         "be compared with today's: delete the folder to start over") from None
    if differences := config_differences(earlier, config, "earlier attempt"):
        raise CheckpointMismatch(f"refusing to resume {run_dir}: it has no intact checkpoint, and its earlier attempt "
                                 "ran with other options (" + "; ".join(differences) + "). Resume with the options "
                                 "the run started with, or start a new run with another --run-name.")


@contextmanager
def update_diagnostics(optimizer: Optimizer, prefix: str, enabled: bool,
                       members: int | None = None) -> Iterator[dict[str, float]]:
    """Around `optimizer.step()`: when `enabled`, fill the yielded dict with each tensor's update norm and, for
    AlphaGrad, its saturation ratio and the network's (`optimizer/<prefix>/saturation`, all elements; read from
    the gradients before the step). For stacked parameters (dim 0
    indexes `members` models) each value is a list, one per member."""
    stats: dict[str, float] = {}
    if not enabled:
        yield stats
        return
    if isinstance(optimizer, AlphaGrad):
        per_tensor = diagnostics(optimizer)
        for name, values in per_tensor.items():
            stats[f"optimizer/{prefix}/saturation/{name}"] = values["saturation"]
        if per_tensor:  # S over every element of the network (section 7.3), each tensor weighed by its size
            total = sum(values["elements"] for values in per_tensor.values())
            weighted = [torch.as_tensor(values["saturation"], dtype=torch.float64) * values["elements"]
                        for values in per_tensor.values()]
            network = (torch.stack(weighted).sum(0) / total).tolist()
            stats[f"optimizer/{prefix}/saturation"] = network
    named = [(name, p) for i, group in enumerate(optimizer.param_groups)
             for name, p in zip(group.get("param_names") or [f"group{i}.param{j}" for j in range(len(group["params"]))],
                                group["params"])]
    before = [p.detach().clone() for _, p in named]
    yield stats
    for (name, p), old in zip(named, before):
        change = p.detach() - old
        stats[f"optimizer/{prefix}/update_norm/{name}"] = (
            change.norm().item() if members is None else change.flatten(1).norm(dim=1).tolist())


def cli(main: Callable, args_type: type, argv: list[str] | None = None) -> None:
    """Parse `args_type` from the command line (or `argv`) and run `main`; bad input exits with a one-line error."""
    args = tyro.cli(args_type, args=argv)
    try:
        main(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    except RunInterrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except NonFiniteTraining as error:
        sys.exit(f"error: {error}: the run stopped and is recorded as crashed")
    except Exception as error:  # raised while training (e.g. by a custom optimizer's code): the record keeps it
        recorded = [note for note in getattr(error, "__notes__", []) if note.startswith(RECORDED_IN)]
        if not recorded:
            raise
        message = (str(error).strip().splitlines() or [""])[0]
        sys.exit(f"error: {type(error).__name__}: {message} (the run stopped and is recorded as crashed; "
                 f"{recorded[0]})")
