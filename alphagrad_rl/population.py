"""What the population agents share (agents/*_population.py): their options, each member's single-file options,
stacked networks, the population optimizer, and per-member gradient clipping, stepping and crash detection.

A population trains N runs of a single-file agent in one process. Member i is exactly that agent's run with its
own seed (and, for AlphaGrad, its own alpha and lr): its parameters are slice i of stacked tensors (dim 0 indexes
members), its loss is computed on its own data, and the members' losses are summed, so member i's gradient is
exactly its own loss's. AlphaGrad and AGR normalize each member's slice apart (`members=`); Adam and the other
elementwise optimizers need nothing more.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import Checkpointer
from .experiment import check_intact, check_start_over, open_record
from .factory import capabilities, make_optimizer, used_fields
from .lifecycle import Runs
from .runs import (
    check_run_name,
    clear_record,
    hold_run_locks,
    read_summary,
    safe_name,
    trained_options,
)


@dataclass
class PopulationOptions:
    """The options a population agent adds to its single-file agent's."""

    population_size: int = 0
    """members trained at once (0: as many as --seeds, or 4)"""
    seeds: tuple[int, ...] = ()
    """each member's seed (default: seed, seed + 1, ...)"""
    alphas: tuple[float, ...] = ()
    """AlphaGrad: each member's alpha (default: --optim.alpha for every member)"""
    lrs: tuple[float, ...] = ()
    """each member's learning rate (default: --optim.lr for every member; any optimizer whose step is linear in
    its lr, such as Adam, AdamW, SGD, Lion and AlphaGrad)"""
    momentums: tuple[float, ...] = ()
    """AlphaGrad: each member's momentum (default: --optim.momentum for every member)"""
    run_names: tuple[str, ...] = ()
    """each member's run folder name (default: <run name>__m<i>, or the single-file agent's default name per member)"""
    exp_names: tuple[str, ...] = ()
    """each member's exp_name (default: --exp-name for every member; a sweep gives each member its arm)"""


def member_args(args: Any, single_type: type, algorithm: str, optim_fields: tuple[str, ...] = ("optim",)) -> list[Any]:
    """The single-file agent's options of each member (what its run record holds). `optim_fields` are the
    OptimizerSpec fields that --alphas / --lrs / --momentums set per member (TD3: its actor's and its critics')."""
    first = getattr(args, optim_fields[0])
    size = args.population_size or len(args.seeds) or len(args.run_names) or 4
    seeds = args.seeds or tuple(args.seed + i for i in range(size))
    per_member = {"alpha": args.alphas, "lr": args.lrs, "momentum": args.momentums}
    columns = {"seeds": seeds, **{f"{key}s": values for key, values in per_member.items() if values}}
    names = args.run_names or tuple(
        f"{args.run_name}__m{i}" if args.run_name else
        safe_name(f"{args.env_id}__{args.exp_name}__{first.name}__{seed}__population") for i, seed in enumerate(seeds))
    columns["run_names"] = names
    exp_names = args.exp_names or (args.exp_name,) * size
    columns["exp_names"] = exp_names
    wrong = {key: len(values) for key, values in columns.items() if len(values) != size}
    if wrong:
        raise ValueError(f"{algorithm} population of {size}: "
                         + ", ".join(f"{key} has {n} values" for key, n in wrong.items()))
    if (args.alphas or args.momentums) and any(getattr(args, name).name != "alphagrad" for name in optim_fields):
        optimizers = ", ".join(f"{name}: {getattr(args, name).name}" for name in optim_fields)
        raise ValueError(f"--alphas and --momentums set AlphaGrad's per-member values; the optimizers are {optimizers}")
    if len(set(names)) != size:
        raise ValueError(f"two members share a run name: {names}")
    single = {f.name: getattr(args, f.name) for f in dataclasses.fields(single_type)}
    members = [single_type(**{**single, "seed": seed, "run_name": name, "exp_name": exp_name, **{
        field: dataclasses.replace(getattr(args, field), **{key: values[i] for key, values in per_member.items()
                                                            if values})
        for field in optim_fields}}) for i, (seed, name, exp_name) in enumerate(zip(seeds, names, exp_names))]
    trained: dict[str, str] = {}  # what a member trains -> its run name
    for member in members:
        settings = json.dumps(trained_options(dataclasses.asdict(member)), sort_keys=True, default=str)
        other = trained.setdefault(settings, member.run_name)
        if other != member.run_name:
            raise ValueError(f"members {other} and {member.run_name} would train the same options (seed "
                             f"{member.seed}): two identical runs are not two seeds; give each member its own seed "
                             "or per-member values")
    return members


def check_population_args(args: Any, single_type: type, check_single, algorithm: str,
                          optim_fields: tuple[str, ...] = ("optim",)) -> list[Any]:
    """Refuse what a population cannot do, then check each member as its single-file run would; the members."""
    if args.population_size < 0:
        raise ValueError(f"invalid population_size: {args.population_size} (allowed: >= 0, 0 = from --seeds)")
    if not all(capabilities(getattr(args, name)).stacked for name in optim_fields):
        raise ValueError("a custom optimizer (name custom) is not available in a population (one optimizer "
                         "steps every member's stacked parameters, exact only for one that treats each member apart, "
                         "which cannot be checked): run it with the single-file agent")
    if args.lrs and not all(capabilities(getattr(args, name)).member_lrs for name in optim_fields):
        raise ValueError(f"--lrs: the step of {getattr(args, optim_fields[0]).name} (with these options) is not linear "
                         "in its lr, so members cannot have their own lr (allowed: Adam, AdamW, SGD, Lion, AlphaGrad, "
                         "...; Adan only without weight decay)")
    if any(getattr(args, name).alpha_schedule for name in optim_fields):
        raise ValueError("--optim.alpha-schedule is not available in a population (the saturation scheduler adapts "
                         "one alpha per param group, not per member): run it with the single-file agent")
    members = member_args(args, single_type, algorithm, optim_fields)
    for member in members:
        check_single(member)
        check_run_name(member.run_name)
    return members


def open_population(args: Any, members: list[Any], algorithm: str, total_timesteps: int, envs_per_member: int) -> Runs:
    """The population's lifecycle (lifecycle.Runs): each member's run record and one Checkpointer (its checkpoints
    live in member 0's folder, their config is every member's options). With --resume: the newest intact
    checkpoint, from which every member that was still training continues its record (a member whose run had ended
    keeps its record as it is, and its entry is None); without one the population starts over, where each member's
    earlier attempt ran with its options today (as a single run's --resume). A population with a finished member has
    ended and refuses --resume (its records are kept). Member i's environments are sub-envs i * envs_per_member
    onwards."""
    run_dirs = [Path(m.results_dir) / m.run_name for m in members]
    checkpoints = Checkpointer(run_dirs[0], f"{algorithm}_population",
                               {f"member{i}": dataclasses.asdict(m) for i, m in enumerate(members)},
                               interval_steps=args.checkpoint_interval_steps, interval_s=args.checkpoint_interval_s,
                               keep_after_finish=args.keep_checkpoints)
    hold_run_locks(members[0].results_dir, [m.run_name for m in members])
    loaded = None
    if args.resume:
        for run_dir in run_dirs:
            check_intact(run_dir)
        finished = [d for d in run_dirs if (read_summary(d) or {}).get("status") == "finished"]
        if len(finished) == len(run_dirs):
            raise ValueError(f"every member of this population has finished (e.g. {run_dirs[0]}): there is nothing "
                             "to resume, and their records are kept")
        # members finish together, so one finished member means the population ended (the others crashed): a
        # resume would retrain the finished members over their records
        if finished:
            raise ValueError(f"this population has ended: {len(finished)} of its {len(run_dirs)} members finished "
                             f"(e.g. {finished[0]}), so it cannot resume, and their records are kept (train the "
                             "others under new --run-names, or let scripts/sweep.py retry them)")
        loaded = checkpoints.load_latest()
        if loaded is None:
            for member, run_dir in zip(members, run_dirs):
                check_start_over(run_dir, dataclasses.asdict(member))
            print(f"warning: {run_dirs[0]} has no intact population checkpoint: the population starts from step 0",
                  file=sys.stderr)
            for run_dir in run_dirs:
                clear_record(run_dir)
    states = loaded["record"] if loaded is not None else [None] * len(members)
    checkpoints.catch_stop_signals()
    records = [None if loaded is not None and state is None
               else open_record(m, algorithm, d, total_timesteps, state, population_size=len(members), member=i)
               for i, (m, d, state) in enumerate(zip(members, run_dirs, states))]
    return Runs(records, checkpoints, run_dirs, envs_per_member)


class StackedSequential(nn.Module):
    """The members' copies of one nn.Sequential of Linear layers and activations, stacked: Linear k becomes weight
    (members, out, in) and bias (members, out), applied with one batched matmul (torch.baddbmm) for all members."""

    def __init__(self, networks: list[nn.Sequential], layer_names: list[str] | None = None):
        super().__init__()
        template = networks[0]
        self.linear_indices = [i for i, layer in enumerate(template) if isinstance(layer, nn.Linear)]
        if any(not isinstance(layer, nn.Linear) and any(True for _ in layer.parameters()) for layer in template):
            raise ValueError("StackedSequential stacks Linear layers and parameter-free activations only")
        self.activations = nn.ModuleList(template[i] for i in range(len(template))
                                         if not isinstance(template[i], nn.Linear))
        self.order = [("linear", self.linear_indices.index(i)) if isinstance(layer, nn.Linear) else
                      ("activation", sum(not isinstance(template[j], nn.Linear) for j in range(i)))
                      for i, layer in enumerate(template)]
        self.weights = nn.ParameterList(torch.stack([net[i].weight.detach() for net in networks])
                                        for i in self.linear_indices)
        self.biases = nn.ParameterList(torch.stack([net[i].bias.detach() for net in networks])
                                       for i in self.linear_indices)
        self.layer_names = layer_names or [str(i) for i in self.linear_indices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (members, batch, in) -> (members, batch, out)."""
        for kind, k in self.order:
            if kind == "linear":
                x = torch.baddbmm(self.biases[k].unsqueeze(1), x, self.weights[k].transpose(1, 2))
            else:
                x = self.activations[k](x)
        return x

    def member_state_dict(self, member: int, prefix: str = "") -> dict[str, torch.Tensor]:
        """Member `member`'s weights as the template's state_dict (keys `<prefix><layer name>.weight`; the layer
        names are the nn.Sequential's indices unless given)."""
        state = {}
        for k, name in enumerate(self.layer_names):
            state[f"{prefix}{name}.weight"] = self.weights[k][member].detach().clone()
            state[f"{prefix}{name}.bias"] = self.biases[k][member].detach().clone()
        return state


def make_population_optimizer(named_params, members: list[Any], optim_field: str = "optim") -> torch.optim.Optimizer:
    """One optimizer (each member's `optim_field` spec) over the stacked parameters: AlphaGrad with each member's
    alpha, lr and momentum; another optimizer with each member's lr (member_lrs). Non-finite gradients are skipped
    per member (nonfinite="skip"), so one member's NaN never stops the others; `crashed_members` then tells which
    members their single-file runs would have stopped."""
    specs = [getattr(m, optim_field) for m in members]
    spec = specs[0]
    if "nonfinite" in used_fields(spec):
        spec = dataclasses.replace(spec, nonfinite="skip")
    if spec.name == "alphagrad":
        per_member = {"alpha": [s.alpha for s in specs], "lr": [s.lr for s in specs],
                      "momentum": [s.momentum for s in specs]}
        return make_optimizer([{"params": list(named_params), **per_member}], spec, members=len(members))
    optimizer = make_optimizer(list(named_params), spec, members=len(members))
    if len({s.lr for s in specs}) > 1:
        member_lrs(optimizer, [s.lr for s in specs])
    return optimizer


def member_lrs(optimizer: torch.optim.Optimizer, lrs: list[float]) -> None:
    """Give each member its own lr in an optimizer whose step is linear in its lr (factory.capabilities): the optimizer
    steps with the param groups' lr (member 0's), and a step post-hook scales member i's move by lrs[i] / lrs[0]."""
    ratios = torch.tensor([lr / lrs[0] for lr in lrs], dtype=torch.float64)
    saved: list[torch.Tensor] = []

    def before_step(_optimizer, _args, _kwargs) -> None:
        saved[:] = [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]

    def after_step(_optimizer, _args, _kwargs) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        with torch.no_grad():
            for param, old in zip(params, saved):
                ratio = ratios.to(param.device, param.dtype).view(-1, *([1] * (param.dim() - 1)))
                scaled = old + (param - old) * ratio
                param.copy_(torch.where(ratio == 1, param, scaled))

    optimizer.register_step_pre_hook(before_step)
    optimizer.register_step_post_hook(after_step)


def crashed_members(losses: torch.Tensor, optimizer: torch.optim.Optimizer, skipped_before: list[int],
                    nonfinite: str) -> list[int]:
    """Members whose loss is not finite, or whose AlphaGrad step was skipped for a non-finite gradient while
    their options say nonfinite="raise" (where their single-file run would have stopped)."""
    bad = set(np.flatnonzero(~torch.isfinite(losses).detach().cpu().numpy()).tolist())
    skipped = optimizer.param_groups[0].get("skipped_steps")
    if nonfinite == "raise" and isinstance(skipped, list):
        bad |= {i for i, (now, before) in enumerate(zip(skipped, skipped_before)) if now > before}
    return sorted(bad)


def clip_grad_norm_per_member(params: list[torch.Tensor], max_norm: float, members: int) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ for each member on its own: member i's gradients (slice i of every
    parameter) are scaled by min(1, max_norm / (||its gradients||_2 + 1e-6)). Returns the (members,) norms."""
    grads = [p.grad for p in params if p.grad is not None]
    per_tensor = torch.stack([g.reshape(members, -1).norm(dim=1) for g in grads])  # (tensors, members)
    total = torch.linalg.vector_norm(per_tensor, dim=0)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.view(members, *([1] * (g.dim() - 1))))
    return total


def member_state_tensors(optimizer: torch.optim.Optimizer, members: int, shared_ok: bool = False) -> list[torch.Tensor]:
    """The stacked parameters and every per-member state tensor of the optimizer (those with dim 0 = members).
    ValueError if the optimizer keeps state shared by all members (such as Adam's step count), since a member
    cannot then skip a step on its own, unless `shared_ok` (skipping members whose runs have crashed)."""
    tensors = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            tensors.append(p)
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == members:
                    tensors.append(value)
                elif not shared_ok and value is not None:
                    raise ValueError(f"{type(optimizer).__name__} keeps state shared by all members ({key!r}): its "
                                     "members cannot skip steps on their own")
    return tensors


def step_members(optimizer: torch.optim.Optimizer, active: list[bool], shared_ok: bool = False) -> None:
    """optimizer.step() for the active members only: the others' parameters and per-member optimizer state are left
    as they were, as if their runs had not stepped (PPO's target-KL early stop; `shared_ok` when the skipped members
    are crashed runs, whose state shared with the others, like Adam's step count, no longer matters)."""
    frozen = [i for i, on in enumerate(active) if not on]
    if not frozen:
        optimizer.step()
        return
    saved = []
    for tensor in member_state_tensors(optimizer, len(active), shared_ok):
        index = torch.tensor(frozen, device=tensor.device)
        saved.append((tensor, index, tensor.detach()[index].clone()))
    optimizer.step()
    with torch.no_grad():
        for tensor, index, before in saved:
            tensor[index] = before
