"""One place that builds every supported optimizer from a small, command-line friendly spec.

Agents expose an `OptimizerSpec` field in their tyro `Args`, so `--optim.name alphagrad --optim.alpha 98`
works everywhere, and call `make_optimizer(params, args.optim)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_optimizer
import torch
from torch.optim import Optimizer

from alphagrad import AGR, AlphaGrad, SaturationAlphaScheduler
from alphagrad._validation import check_choice, check_range
from alphagrad.agr import SCOPES
from alphagrad.optimizer import MOMENTUM_FORMS, NONFINITE_POLICIES, NORMALIZATIONS, TRANSFORMS

OptimizerName = Literal["adam", "adamw", "sgd", "alphagrad", "adamw-agr", "adan", "adan-agr", "lion", "signsgd",
                        "custom"]
OPTIMIZER_NAMES: tuple[str, ...] = OptimizerName.__args__


@dataclass
class OptimizerSpec:
    """Which optimizer to build and its hyperparameters. A field the chosen optimizer does not use must keep its
    default (make_optimizer raises otherwise), so no setting is silently ignored."""

    name: OptimizerName = "adam"
    """adam, adamw, sgd, alphagrad, adamw-agr (AdamW behind AGR), adan, adan-agr, lion, signsgd, or custom (your own
    optimizer: --optim.target)"""
    lr: float = 1e-3
    """learning rate"""
    betas: tuple[float, ...] | None = None
    """Adam/AdamW/Lion betas (2 values) or Adan's (3); None keeps each optimizer's default"""
    eps: float | None = None
    """numerical epsilon (Adam family, Adan, AlphaGrad's norm); None keeps each optimizer's default"""
    weight_decay: float = 0.0
    """weight decay (decoupled for adamw, alphagrad, lion, signsgd; L2 for adam, sgd)"""
    momentum: float = 0.0
    """momentum of sgd, alphagrad (gamma, eq. 5) and signsgd (0 is plain sign descent)"""
    alpha: float | Literal["auto"] = "auto"
    """AlphaGrad steepness (> 0), or auto for alpha = alpha_k * sqrt(d) per tensor (eq. 7)"""
    alpha_k: float = 1.0
    """k of the auto alpha rule"""
    momentum_form: Literal["paper", "sgd"] = "paper"
    """AlphaGrad momentum: paper (v = gamma v + lr g'; theta -= v) or sgd (v = gamma v + g'; theta -= lr v)"""
    normalization: Literal["tensor", "group", "none"] = "tensor"
    """AlphaGrad normalization unit: each tensor, the whole param group, or none (tanh only)"""
    transform: Literal["tanh", "scaled_tanh", "sin_tanh", "hybrid", "linear"] = "tanh"
    """AlphaGrad non-linearity (sections 7.1, 7.5; linear = normalization only)"""
    beta: float = 1.0
    """scale of scaled_tanh"""
    kappa: float = 1.0
    """frequency of sin_tanh"""
    hybrid_lambda: float = 0.5
    """lambda of the hybrid transform"""
    nonfinite: Literal["raise", "skip"] = "raise"
    """on a NaN/inf gradient: raise naming the tensor, or skip (AlphaGrad: the step; AGR: that tensor)"""
    agr: bool = False
    """put AGR in front of the optimizer (implied by the -agr names)"""
    agr_scope: Literal["all", "matrices"] = "all"
    """AGR on all tensors or only weights with dim > 1"""
    agr_active_steps: int | None = None
    """apply AGR only for this many steps (None: always)"""
    alpha_schedule: bool = False
    """AlphaGrad: adapt alpha to keep the saturation ratio in saturation_target (section 7.3)"""
    saturation_target: tuple[float, float] = (0.05, 0.25)
    """target range of the saturation ratio S(alpha)"""
    saturation_tau: float = 2.5
    """threshold on |alpha * g_hat| that counts as saturated"""
    foreach: bool | None = None
    """multi-tensor kernels (None: each optimizer's default)"""
    fused: bool | None = None
    """fused kernels (Adam, AdamW, AlphaGrad); None: off"""
    target: str | None = None
    """custom: what builds your optimizer, 'package.module:callable' or 'path/to/file.py:callable'; it is called
    as callable(params, lr=lr, **options) (weight_decay and foreach too when set) and returns a torch.optim.Optimizer"""
    options: str = "{}"
    """custom: its other keyword arguments, a JSON object, e.g. '{"momentum": 0.9}'"""


def make_optimizer(params, spec: OptimizerSpec | None = None, *, members: int | None = None,
                   **overrides) -> Optimizer:
    """Build the optimizer `spec` names over `params` (tensors, named tensors or param groups).

    Keyword overrides replace spec fields: `make_optimizer(model.parameters(), name="alphagrad", alpha=98)`.
    `members`: the parameters are stacked (dim 0 indexes independent models): AlphaGrad and AGR then treat each
    member apart; the other optimizers update each element on its own and need nothing.
    The spec is checked first (`check_spec`): a value of the wrong type or range, or a field the chosen
    optimizer does not use, raises ValueError naming it. AGR (`agr=True` or an "-agr" name) is attached to the
    optimizer (alphagrad.AGR), which is returned as itself. A custom optimizer (name "custom", `custom_callable`)
    cannot take stacked parameters: whether it treats each member apart is unknown.
    """
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(OptimizerSpec)})
    if unknown:
        raise ValueError(f"unknown optimizer option(s) {', '.join(unknown)} "
                         f"(allowed: {', '.join(f.name for f in dataclasses.fields(OptimizerSpec))})")
    spec = dataclasses.replace(spec or OptimizerSpec(), **overrides)
    check_spec(spec)
    base = spec.name.removesuffix("-agr")
    if members is not None and not capabilities(spec).stacked:
        raise ValueError(f"a custom optimizer ({spec.target}) cannot train stacked parameters (members={members}): "
                         "whether it treats each member apart is unknown; train one run per process")
    if members is not None and base == "alphagrad":
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        params = [{**group, "members": members} for group in groups]
    optimizer = _BUILDERS[base](params, spec)
    if uses_agr(spec):
        AGR(optimizer, scope=spec.agr_scope, active_steps=spec.agr_active_steps, nonfinite=spec.nonfinite,
            members=members)
    return optimizer


@dataclass(frozen=True)
class Capabilities:
    """What a population may do with an optimizer, declared here for each one (not probed; tests/test_factory.py
    checks every declaration against the optimizer's real steps)."""

    stacked: bool  # make_optimizer(..., members=N) updates each member's slice as that member's own optimizer would:
    #               elementwise (Adam, SGD, Lion, ...), or normalizing per member (AlphaGrad, AGR); unknown: custom
    member_lrs: bool  # its step moves the parameters by lr times what does not depend on lr, so each member may have
    #                   its own lr (population.member_lrs); AlphaGrad takes per-member lr (and alpha, momentum) itself
    member_alpha_momentum: bool  # per-member alpha and momentum (AlphaGrad's --alphas, --momentums)


def capabilities(spec: OptimizerSpec) -> Capabilities:
    """What `spec`'s optimizer supports in a population (Capabilities). Adan with weight decay divides by 1 + lr wd,
    so its step is not linear in lr; a custom optimizer's behaviour is unknown."""
    base = spec.name.removesuffix("-agr")
    if base == "custom":
        return Capabilities(stacked=False, member_lrs=False, member_alpha_momentum=False)
    return Capabilities(stacked=True, member_lrs=not (base == "adan" and spec.weight_decay != 0),
                        member_alpha_momentum=base == "alphagrad")


def optimizer_specs(args: Any) -> list[OptimizerSpec]:
    """The OptimizerSpec fields of an agent's Args (DQN and PPO: optim; TD3: actor_optim and critic_optim)."""
    return [value for value in vars(args).values() if isinstance(value, OptimizerSpec)]


def uses_agr(spec: OptimizerSpec) -> bool:
    return spec.agr or spec.name.endswith("-agr")


def make_alpha_scheduler(optimizer: Optimizer, spec: OptimizerSpec) -> SaturationAlphaScheduler | None:
    """The saturation-aware alpha scheduler the spec asks for, or None."""
    if not spec.alpha_schedule:
        return None
    if not isinstance(optimizer, AlphaGrad):
        raise ValueError(f"alpha_schedule needs the alphagrad optimizer, got {spec.name!r}")
    return SaturationAlphaScheduler(optimizer, spec.saturation_target, tau=spec.saturation_tau)


# ---- checking a spec ----

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value: Any, count: int | None = None) -> bool:
    return isinstance(value, (tuple, list)) and all(map(_number, value)) and (count is None or len(value) == count)


_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {  # field: (accepts, what is allowed)
    "lr": (_number, "a number"),
    "betas": (lambda v: v is None or _numbers(v), "numbers, or None"),
    "eps": (lambda v: v is None or _number(v), "a number, or None"),
    "weight_decay": (_number, "a number"),
    "momentum": (_number, "a number"),
    "alpha": (lambda v: v == "auto" or _number(v), "a number > 0, or 'auto'"),
    "alpha_k": (_number, "a number"),
    "beta": (_number, "a number"),
    "kappa": (_number, "a number"),
    "hybrid_lambda": (_number, "a number"),
    "agr": (lambda v: isinstance(v, bool), "True or False"),
    "agr_active_steps": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer, or None"),
    "alpha_schedule": (lambda v: isinstance(v, bool), "True or False"),
    "saturation_target": (lambda v: _numbers(v, 2), "two numbers"),
    "saturation_tau": (_number, "a number"),
    "foreach": (lambda v: v is None or isinstance(v, bool), "True, False or None"),
    "fused": (lambda v: v is None or isinstance(v, bool), "True, False or None"),
    "target": (lambda v: v is None or isinstance(v, str), "'package.module:callable' or 'path/to/file.py:callable'"),
    "options": (lambda v: isinstance(v, str), "a JSON object"),
}
_CHOICES = {"name": OPTIMIZER_NAMES, "momentum_form": MOMENTUM_FORMS, "normalization": NORMALIZATIONS,
            "transform": TRANSFORMS, "nonfinite": NONFINITE_POLICIES, "agr_scope": SCOPES}  # the library's own lists
_ALWAYS_USED = {"name", "lr", "weight_decay", "foreach", "agr"}
_USED_BY = {  # the spec fields each optimizer reads, besides _ALWAYS_USED and the conditional ones in used_fields
    "adam": {"betas", "eps", "fused"}, "adamw": {"betas", "eps", "fused"}, "sgd": {"momentum"},
    "alphagrad": {"eps", "momentum", "alpha", "momentum_form", "normalization", "transform", "nonfinite",
                  "alpha_schedule", "fused"},
    "adan": {"betas", "eps"}, "lion": {"betas"}, "signsgd": {"momentum"}, "custom": {"target", "options"},
}


def used_fields(spec: OptimizerSpec) -> set[str]:
    """The spec fields that the optimizer `spec` names reads, given its other settings."""
    base = spec.name.removesuffix("-agr")
    used = _ALWAYS_USED | _USED_BY[base]
    if base == "alphagrad":
        used |= {"alpha_k"} if spec.alpha == "auto" else set()
        used |= {"saturation_target", "saturation_tau"} if spec.alpha_schedule else set()
        used |= {constant for constant, transform in (("beta", "scaled_tanh"), ("kappa", "sin_tanh"),
                                                        ("hybrid_lambda", "hybrid")) if spec.transform == transform}
    if uses_agr(spec):
        used |= {"agr_scope", "agr_active_steps", "nonfinite"}
    return used


def check_spec(spec: OptimizerSpec) -> None:
    """Raise ValueError naming the first field of `spec` with a value of the wrong type or range, or set (away
    from OptimizerSpec's default) although the chosen optimizer does not use it."""
    for name, allowed in _CHOICES.items():
        check_choice(f"optimizer {name}", getattr(spec, name), allowed)
    for name, (accepts, allowed) in _TYPES.items():
        value = getattr(spec, name)
        if not accepts(value):
            raise ValueError(f"invalid optimizer {name}: {value!r} (allowed: {allowed})")
    check_range("optimizer lr", spec.lr, low=0.0)
    check_range("optimizer weight_decay", spec.weight_decay, low=0.0)
    check_range("optimizer momentum", spec.momentum, low=0.0, high=1.0)
    if spec.eps is not None:
        check_range("optimizer eps", spec.eps, low=0.0, low_inclusive=False)
    if spec.betas is not None:
        for beta in spec.betas:
            check_range("optimizer betas (each)", beta, low=0.0, high=1.0)
    default = OptimizerSpec()
    unused = [f.name for f in dataclasses.fields(OptimizerSpec)
              if f.name not in used_fields(spec) and getattr(spec, f.name) != getattr(default, f.name)]
    if unused:
        shown = ", ".join(f"{name}={getattr(spec, name)!r}" for name in unused)
        hint = "; a custom optimizer's own arguments go in options" if spec.name == "custom" else ""
        raise ValueError(f"optimizer {spec.name!r} does not use {shown}: remove it, or set it back to its default "
                         f"({', '.join(f'{name}={getattr(default, name)!r}' for name in unused)}){hint}")
    if spec.name == "custom":
        custom_callable(spec.target)
        custom_options(spec.options)


# ---- a custom optimizer: the user's own, named by --optim.target ----

def custom_callable(target: str | None) -> Callable[..., Any]:
    """What `target` names: 'package.module:callable' (importable: installed, or on PYTHONPATH) or
    'path/to/file.py:callable' (a path from the working directory); the callable may be dotted (module:Class.make)."""
    allowed = "'package.module:callable' or 'path/to/file.py:callable'"
    if target is None:
        raise ValueError(f"optimizer 'custom' needs a target: --optim.target {allowed}")
    module_name, _, attribute = target.rpartition(":")
    if not module_name or not attribute:
        raise ValueError(f"invalid optimizer target: {target!r} (allowed: {allowed})")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            if not path.is_file():
                raise ValueError(f"invalid optimizer target: {target!r}: no file {path}")
            name = f"_custom_optimizer_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
            if name not in sys.modules:  # loaded once per process, so a class keeps one identity
                loader_spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = module
                try:
                    loader_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            module = sys.modules[name]
        else:
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"invalid optimizer target: {target!r}: cannot import {module_name} ({error}); install its "
                         "package or add its folder to PYTHONPATH, or give a file: path/to/file.py:callable") from None
    except ValueError:
        raise
    except Exception as error:  # the user's module failed while it loaded (a syntax error, an exception it raised)
        raise ValueError(f"invalid optimizer target: {target!r}: loading {module_name} failed: "
                         f"{user_code_error(error)}") from None
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"invalid optimizer target: {target!r}: {module_name} has no {attribute}")
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"invalid optimizer target: {target!r}: {attribute} is not callable")
    return found


def user_code_error(error: BaseException) -> str:
    """An exception from the user's own code in one line: its type, message and the line that raised it."""
    where = ""
    if isinstance(error, SyntaxError):
        where = f" ({error.filename}, line {error.lineno})"
        message = error.msg
    else:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        frames = traceback.extract_tb(error.__traceback__)
        if frames:
            where = f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return f"{type(error).__name__}: {message}{where}"


def custom_sources(specs) -> dict[str, str]:
    """For each custom optimizer among `specs`, the file defining what its target names and that file's SHA-256, so
    a run record says which code it trained with (a resume under an edited file is noted in the record)."""
    sources = {}
    for spec in specs:
        if spec.name == "custom":
            found = custom_callable(spec.target)
            try:
                path = Path(inspect.getsourcefile(found) or inspect.getfile(found))
            except TypeError:  # no file to hash: built in, or neither a function nor a class (a partial, ...)
                sources[f"custom optimizer {spec.target}"] = "no source file"
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            sources[f"custom optimizer {spec.target}"] = f"{path.name} sha256:{digest}"
    return sources


def custom_options(options: str) -> dict[str, Any]:
    """The custom optimizer's keyword arguments from their JSON text; ValueError naming what is wrong."""
    try:
        parsed = json.loads(options)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid optimizer options: {options!r} (allowed: a JSON object; {error})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"invalid optimizer options: {options!r} (allowed: a JSON object, e.g. '{{\"momentum\": 0.9}}')")
    reserved = sorted(set(parsed) & {"params", "lr", "weight_decay", "foreach"})
    if reserved:
        raise ValueError(f"invalid optimizer options: {', '.join(reserved)} (set them as --optim.<name>, which the "
                         "factory passes on, not in options)")
    return parsed


def _optional(**kwargs) -> dict:
    """Keyword arguments whose value is not None, so each optimizer keeps its own defaults for the rest."""
    return {key: value for key, value in kwargs.items() if value is not None}


def _two_betas(spec: OptimizerSpec) -> tuple[float, float] | None:
    if spec.betas is not None and len(spec.betas) != 2:
        raise ValueError(f"invalid betas for {spec.name}: {spec.betas!r} (allowed: two values)")
    return spec.betas


def _adam(params, spec: OptimizerSpec) -> Optimizer:
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay,
                            **_optional(betas=_two_betas(spec), eps=spec.eps, foreach=spec.foreach, fused=spec.fused))


def _adamw(params, spec: OptimizerSpec) -> Optimizer:
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay,
                             **_optional(betas=_two_betas(spec), eps=spec.eps, foreach=spec.foreach, fused=spec.fused))


def _sgd(params, spec: OptimizerSpec) -> Optimizer:
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                           **_optional(foreach=spec.foreach))


def _alphagrad(params, spec: OptimizerSpec) -> Optimizer:
    return AlphaGrad(
        params, lr=spec.lr, alpha=spec.alpha, alpha_k=spec.alpha_k, momentum=spec.momentum,
        momentum_form=spec.momentum_form, weight_decay=spec.weight_decay, normalization=spec.normalization,
        transform=spec.transform, beta=spec.beta, kappa=spec.kappa, hybrid_lambda=spec.hybrid_lambda,
        nonfinite=spec.nonfinite, foreach=spec.foreach, fused=spec.fused, **_optional(eps=spec.eps),
    )


def _adan(params, spec: OptimizerSpec) -> Optimizer:
    if spec.betas is not None and len(spec.betas) != 3:
        raise ValueError(f"invalid betas for adan: {spec.betas!r} (allowed: three values)")
    return pytorch_optimizer.Adan(params, lr=spec.lr, weight_decay=spec.weight_decay,
                                  **_optional(betas=spec.betas, eps=spec.eps, foreach=spec.foreach))


def _lion(params, spec: OptimizerSpec) -> Optimizer:
    return pytorch_optimizer.Lion(params, lr=spec.lr, weight_decay=spec.weight_decay,
                                  **_optional(betas=_two_betas(spec), foreach=spec.foreach))


def _signsgd(params, spec: OptimizerSpec) -> Optimizer:
    return pytorch_optimizer.SignSGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                                     **_optional(foreach=spec.foreach))


def _custom(params, spec: OptimizerSpec) -> Optimizer:
    build = custom_callable(spec.target)
    passed = _optional(weight_decay=spec.weight_decay or None, foreach=spec.foreach)
    try:
        optimizer = build(params, lr=spec.lr, **passed, **custom_options(spec.options))
    except (TypeError, ValueError) as error:
        raise ValueError(f"custom optimizer {spec.target} refused its arguments (lr={spec.lr}, "
                         + "".join(f"{key}={value!r}, " for key, value in passed.items())
                         + f"options {spec.options}): {user_code_error(error)}") from error
    except Exception as error:
        raise ValueError(f"custom optimizer {spec.target} failed while it was built: {user_code_error(error)}") from error
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"custom optimizer {spec.target} returned {type(optimizer).__name__}, not a "
                         "torch.optim.Optimizer")
    return optimizer


_BUILDERS = {"adam": _adam, "adamw": _adamw, "sgd": _sgd, "alphagrad": _alphagrad,
             "adan": _adan, "lion": _lion, "signsgd": _signsgd, "custom": _custom}
