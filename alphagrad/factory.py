"""One place that builds every supported optimizer from a small, command-line friendly spec.

Agents expose an `OptimizerSpec` field in their tyro `Args`, so `--optim.name alphagrad --optim.alpha 98`
works everywhere, and call `make_optimizer(params, args.optim)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytorch_optimizer
import torch
from torch.optim import Optimizer

from ._validation import check_choice
from .agr import AGR
from .alphagrad import AlphaGrad
from .scheduler import SaturationAlphaScheduler

OptimizerName = Literal["adam", "adamw", "sgd", "alphagrad", "adamw-agr", "adan", "adan-agr", "lion", "signsgd"]
OPTIMIZER_NAMES: tuple[str, ...] = OptimizerName.__args__


@dataclass
class OptimizerSpec:
    """Which optimizer to build and its hyperparameters; fields the chosen optimizer has no use for are ignored."""

    name: OptimizerName = "adam"
    """adam, adamw, sgd, alphagrad, adamw-agr (AdamW behind AGR), adan, adan-agr, lion, signsgd"""
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
    """AlphaGrad on a NaN/inf gradient: raise naming the tensor, or skip the step and count it"""
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


def make_optimizer(params, spec: OptimizerSpec | None = None, **overrides) -> Optimizer:
    """Build the optimizer `spec` names over `params` (tensors, named tensors or param groups).

    Keyword overrides replace spec fields: `make_optimizer(model.parameters(), name="alphagrad", alpha=98)`.
    """
    spec = dataclasses.replace(spec or OptimizerSpec(), **overrides)
    check_choice("optimizer name", spec.name, OPTIMIZER_NAMES)
    base_name = spec.name.removesuffix("-agr")
    optimizer = _BUILDERS[base_name](params, spec)
    if spec.agr or spec.name.endswith("-agr"):
        optimizer = AGR(optimizer, scope=spec.agr_scope, active_steps=spec.agr_active_steps)
    return optimizer


def make_alpha_scheduler(optimizer: Optimizer, spec: OptimizerSpec) -> SaturationAlphaScheduler | None:
    """The saturation-aware alpha scheduler the spec asks for, or None."""
    if not spec.alpha_schedule:
        return None
    inner = optimizer.optimizer if isinstance(optimizer, AGR) else optimizer
    if not isinstance(inner, AlphaGrad):
        raise ValueError(f"alpha_schedule needs the alphagrad optimizer, got {spec.name!r}")
    return SaturationAlphaScheduler(inner, spec.saturation_target, tau=spec.saturation_tau)


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


_BUILDERS = {"adam": _adam, "adamw": _adamw, "sgd": _sgd, "alphagrad": _alphagrad,
             "adan": _adan, "lion": _lion, "signsgd": _signsgd}
