"""AlphaGrad (Sane, 2025, arXiv 2504.16020): L2-normalize each gradient tensor, squash it with tanh.

Per tensor (eq. 1-4):   g_hat = g / (||g||_2 + eps);   g' = tanh(alpha * g_hat);   theta -= lr * g'.

Momentum follows the paper (eq. 5-6):  v = gamma * v + lr * g';  theta -= v.  The author's experiment
code uses torch SGD's convention instead (v = gamma * v + g';  theta -= lr * v). The two agree under
a constant learning rate; under a schedule (PPO anneals lr) the paper's buffer keeps the learning
rates at which past directions were taken, torch's rescales the whole history by today's lr.
`momentum_form` picks one ("paper" by default, "sgd" to match the author's code).

`alphagrad()` is the functional form (as torch.optim.adam.adam beside Adam); the `AlphaGrad` class
keeps the param groups and state and calls it once per group.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from ._fused import compiled_alphagrad_update, cpu_alphagrad_update, cpu_kernel_applies, cpu_kernel_available
from ._validation import check_choice, check_range

TRANSFORMS = ("tanh", "scaled_tanh", "sin_tanh", "hybrid", "linear")
NORMALIZATIONS = ("tensor", "group", "none")
MOMENTUM_FORMS = ("paper", "sgd")
NONFINITE_POLICIES = ("raise", "skip")
_GROUP_KEYS = ("lr", "alpha", "alpha_k", "momentum", "momentum_form", "weight_decay", "eps", "normalization",
               "transform", "beta", "kappa", "hybrid_lambda", "nonfinite", "maximize", "foreach", "fused")
_MEMBER_KEYS = ("members", "lr", "alpha", "alpha_k", "momentum", "momentum_form", "weight_decay", "eps",
                "normalization", "transform", "beta", "kappa", "hybrid_lambda", "maximize")


def auto_alpha(numel: int, k: float = 1.0) -> float:
    """The paper's scaling rule alpha = k * sqrt(d) (eq. 7), d = elements normalized together."""
    return k * math.sqrt(numel)


def _direction(g_hat: torch.Tensor, alpha: float, transform: str, beta: float, kappa: float,
               hybrid_lambda: float) -> torch.Tensor:
    """The bounded update g' for one normalized gradient (eq. 3 and the section 7.1 / 7.5 variants)."""
    if transform == "linear":  # normalization only: tanh replaced by its small-input linearization
        return g_hat * alpha
    squashed = torch.tanh(g_hat * alpha)
    if transform == "tanh":
        return squashed
    if transform == "scaled_tanh":  # beta * tanh(alpha * g_hat), section 7.1
        return squashed.mul_(beta)
    if transform == "sin_tanh":  # sin(kappa * tanh(alpha * g_hat)), section 7.1
        return squashed.mul_(kappa).sin_()
    # lambda * tanh(alpha * g_hat) + (1 - lambda) * g_hat, section 7.5
    return squashed.mul_(hybrid_lambda).add_(g_hat, alpha=1.0 - hybrid_lambda)


def _foreach_direction(g_hats: list[torch.Tensor], alphas: list[float], transform: str, beta: float, kappa: float,
                       hybrid_lambda: float) -> list[torch.Tensor]:
    """`_direction` for a list of tensors with torch._foreach_* kernels."""
    squashed = torch._foreach_mul(g_hats, alphas)
    if transform == "linear":
        return squashed
    torch._foreach_tanh_(squashed)
    if transform == "scaled_tanh":
        torch._foreach_mul_(squashed, beta)
    elif transform == "sin_tanh":
        torch._foreach_mul_(squashed, kappa)
        torch._foreach_sin_(squashed)
    elif transform == "hybrid":
        torch._foreach_mul_(squashed, hybrid_lambda)
        torch._foreach_add_(squashed, g_hats, alpha=1.0 - hybrid_lambda)
    return squashed


def _apply_update(params: list[torch.Tensor], directions: list[torch.Tensor], buffers: list[torch.Tensor],
                  lr: float, momentum: float, momentum_form: str, weight_decay: float) -> None:
    """The update tail shared by both eager paths: decoupled weight decay, momentum (eq. 5-6), the step (eq. 4)."""
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    if momentum == 0.0:
        torch._foreach_add_(params, directions, alpha=-lr)
    elif momentum_form == "paper":
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, directions, alpha=lr)
        torch._foreach_sub_(params, buffers)
    else:
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, directions)
        torch._foreach_add_(params, buffers, alpha=-lr)


def tensor_alphas(params: Sequence[torch.Tensor], alpha: float | str, alpha_k: float, normalization: str) -> list[float]:
    """alpha for each tensor: the given number, or for "auto" k * sqrt(d) of its normalization unit (eq. 7)."""
    if alpha != "auto":
        return [float(alpha)] * len(params)
    if normalization == "group":
        return [auto_alpha(sum(p.numel() for p in params), alpha_k)] * len(params)
    return [auto_alpha(p.numel(), alpha_k) for p in params]


def gradient_norms(grads: list[torch.Tensor], normalization: str) -> list[torch.Tensor]:
    """||g||_2 per tensor; one shared norm per group for "group" (also the finiteness check)."""
    if not grads:
        return []
    norms = list(torch._foreach_norm(grads))
    if normalization == "group":
        return [torch.linalg.vector_norm(torch.stack(norms))] * len(grads)
    return norms


def normalized(grad: torch.Tensor, norm: torch.Tensor, eps: float, normalization: str) -> torch.Tensor:
    """g_hat of eq. 2 (the raw gradient for normalization="none")."""
    return grad / (norm + eps) if normalization != "none" else grad


def fused_supported(transform: str, normalization: str) -> bool:
    """Whether the fused kernels implement these options (tanh with tensor or group normalization)."""
    return transform == "tanh" and normalization != "none"


def default_to_fused(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                     momentum_buffers: Sequence[torch.Tensor], transform: str, normalization: str) -> bool:
    """The default path rule (fused=None, foreach=None): the fused C++ kernel when it supports the options and
    the tensors (dense, contiguous float32/float64 on the CPU) and is available (built once per machine; see
    alphagrad._fused), since it is the fastest there; otherwise foreach."""
    return (fused_supported(transform, normalization) and cpu_kernel_applies([*params, *grads, *momentum_buffers])
            and cpu_kernel_available())


def check_step_tensors(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                       momentum_buffers: Sequence[torch.Tensor], momentum_on: bool) -> None:
    """Raise ValueError, naming the tensor, unless there is one gradient per parameter (and one momentum buffer per
    parameter when momentum is on; none is also allowed without it), each a dense tensor of its parameter's shape,
    dtype and device: the update kernels index them together element by element."""
    if len(grads) != len(params):
        raise ValueError(f"AlphaGrad: {len(params)} parameters but {len(grads)} gradients (allowed: one gradient per "
                         "parameter)")
    if len(momentum_buffers) not in ((len(params),) if momentum_on else (0, len(params))):
        raise ValueError(f"AlphaGrad: {len(momentum_buffers)} momentum buffers for {len(params)} parameters (allowed: "
                         "one per parameter" + (")" if momentum_on else ", or none without momentum)"))
    for kind, tensors in (("gradient", grads), ("momentum buffer", momentum_buffers)):
        for index, (tensor, param) in enumerate(zip(tensors, params)):
            if problem := _mismatch(tensor, param):
                raise ValueError(f"AlphaGrad: the {kind} of parameter {index} {problem}")


def _mismatch(tensor: Any, param: torch.Tensor, converted: bool = False) -> str | None:
    """What keeps `tensor` from being updated beside `param` element by element (None: nothing); with `converted`,
    only what a conversion to the parameter's dtype and device cannot mend (torch's load_state_dict converts)."""
    if not isinstance(tensor, torch.Tensor):
        return f"is a {type(tensor).__name__}, not a tensor"
    if tensor.layout != torch.strided:
        return f"has layout {tensor.layout} (allowed: torch.strided, a dense tensor)"
    if tensor.shape != param.shape:
        return f"has shape {tuple(tensor.shape)}, but the parameter has {tuple(param.shape)}"
    if converted:
        return None if tensor.is_floating_point() else f"has dtype {tensor.dtype} (allowed: a floating-point dtype)"
    if tensor.dtype != param.dtype:
        return f"has dtype {tensor.dtype}, but the parameter has {param.dtype}"
    if tensor.device != param.device:
        return f"is on {tensor.device}, but the parameter is on {param.device}"
    return None


def alphagrad(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor],
    *,
    lr: float,
    alpha: float | str = "auto",
    alpha_k: float = 1.0,
    momentum: float = 0.0,
    momentum_form: str = "paper",
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    normalization: str = "tensor",
    transform: str = "tanh",
    beta: float = 1.0,
    kappa: float = 1.0,
    hybrid_lambda: float = 0.5,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> bool:
    """Functional AlphaGrad: update `params` in place from `grads` (the options are `AlphaGrad`'s).

    `momentum_buffers` holds one buffer per parameter when momentum > 0 (updated in place), else is empty.
    Returns False, having written nothing, when a gradient norm is not finite (NaN or inf). Raises ValueError when
    the lists do not match one to one (check_step_tensors).
    """
    check_step_tensors(params, grads, momentum_buffers, momentum != 0.0)
    if not params:
        return True
    if fused and not fused_supported(transform, normalization):
        raise ValueError(f"fused=True supports transform='tanh' with normalization 'tensor' or 'group' only "
                         f"(got transform={transform!r}, normalization={normalization!r})")
    alphas = tensor_alphas(params, alpha, alpha_k, normalization)
    options = (eps, momentum, momentum_form == "paper", weight_decay, maximize, normalization == "group")
    if fused or (fused is None and foreach is None):  # the C++ kernel where it applies: the default's rule
        if default_to_fused(params, grads, momentum_buffers, transform, normalization):
            return cpu_alphagrad_update(params, grads, momentum_buffers, alphas, lr, *options)
    if fused:
        device = params[0].device
        return bool(compiled_alphagrad_update(params, grads, momentum_buffers, torch.tensor(alphas, device=device),
                                              torch.tensor(lr, device=device), *options))
    if maximize:
        grads = torch._foreach_neg(grads)
    norms = gradient_norms(grads, normalization)
    if not bool(torch.stack(norms).isfinite().all()):
        return False
    transform_options = (transform, beta, kappa, hybrid_lambda)
    tail_options = (lr, momentum, momentum_form, weight_decay)
    if foreach is False:  # the reference path: one tensor at a time
        for i, (param, grad) in enumerate(zip(params, grads)):
            direction = _direction(normalized(grad, norms[i], eps, normalization), alphas[i], *transform_options)
            _apply_update([param], [direction], momentum_buffers[i:i + 1], *tail_options)
        return True
    if normalization != "none":
        inverse_norms = torch._foreach_add(norms, eps)
        torch._foreach_reciprocal_(inverse_norms)
        grads = torch._foreach_mul(grads, inverse_norms)
    _apply_update(params, _foreach_direction(grads, alphas, *transform_options), momentum_buffers, *tail_options)
    return True


def per_member(value, members: int, like: torch.Tensor) -> torch.Tensor:
    """A hyperparameter as a (members,) tensor: a number is the same for every member."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return tensor.expand(members) if tensor.dim() == 0 else tensor


def member_inputs(params, grads, *, members: int, alpha, alpha_k: float, eps: float, normalization: str):
    """For stacked parameters (dim 0 indexes `members`): each tensor's g_hat (eq. 2, every member's slice
    normalized on its own, or over the member's slices of the whole group for "group") and its alpha as a
    broadcastable (members, 1, ...) tensor, and the (members,) mask of members whose gradient norms are finite."""
    like = params[0]
    squares = [grad.reshape(members, -1).square().sum(dim=1) for grad in grads]  # (members,) each
    if normalization == "group":
        squares = [torch.stack(squares).sum(dim=0)] * len(grads)
    norms = [square.sqrt() for square in squares]
    finite = torch.stack(norms).isfinite().all(dim=0)
    if alpha == "auto":  # eq. 7 with d = one member's elements in the normalized unit
        units = [sum(p[0].numel() for p in params) if normalization == "group" else p[0].numel() for p in params]
        alphas = [per_member(auto_alpha(d, alpha_k), members, like) for d in units]
    else:
        alphas = [per_member(alpha, members, like)] * len(params)
    shapes = [(members,) + (1,) * (param.dim() - 1) for param in params]
    g_hats = [normalized(grad, norm.view(shape), eps, normalization) for grad, norm, shape in zip(grads, norms, shapes)]
    return g_hats, [a.view(shape) for a, shape in zip(alphas, shapes)], finite


def _member_alphagrad(params, grads, momentum_buffers, *, members: int, lr, alpha, alpha_k, momentum, momentum_form,
                      weight_decay, eps, normalization, transform, beta, kappa, hybrid_lambda, maximize) -> torch.Tensor:
    """AlphaGrad on stacked parameters (member_inputs); lr and momentum may be (members,) tensors. A member whose
    gradient norm is not finite is left unchanged (parameters and momentum), the others step. Returns the
    (members,) bool mask of members that stepped."""
    lr, momentum = per_member(lr, members, params[0]), per_member(momentum, members, params[0])
    check_step_tensors(params, grads, momentum_buffers, bool(momentum.any()))
    if maximize:
        grads = [grad.neg() for grad in grads]
    g_hats, alphas, stepped = member_inputs(params, grads, members=members, alpha=alpha, alpha_k=alpha_k, eps=eps,
                                            normalization=normalization)
    for i, (param, g_hat) in enumerate(zip(params, g_hats)):
        keep = stepped.view(alphas[i].shape)
        step = torch.where(keep, lr.view(keep.shape), 0.0)
        direction = torch.where(keep, _direction(g_hat, alphas[i], transform, beta, kappa, hybrid_lambda), 0.0)
        if weight_decay != 0.0:
            param.mul_(1.0 - step * weight_decay)
        if not momentum_buffers:
            param.sub_(step * direction)  # eq. 4
            continue
        buffer, gamma = momentum_buffers[i], momentum.view(keep.shape)
        if momentum_form == "paper":  # eq. 5-6
            buffer.copy_(torch.where(keep, gamma * buffer + step * direction, buffer))
            param.sub_(torch.where(keep, buffer, 0.0))
        else:
            buffer.copy_(torch.where(keep, gamma * buffer + direction, buffer))
            param.sub_(step * buffer)
    return stepped


class AlphaGrad(Optimizer):
    """AlphaGrad in torch.optim conventions.

    Args:
        params: parameters, named parameters or param groups (groups may set any option below).
        lr: learning rate (eq. 4).
        alpha: tanh steepness (eq. 3), > 0; or "auto" for alpha = alpha_k * sqrt(d) per normalized
            unit (eq. 7, d its number of elements).
        momentum: gamma of eq. 5, in [0, 1).
        weight_decay: decoupled, theta *= 1 - lr * weight_decay.
        eps: added to the norm (eq. 2), > 0.
        alpha_k: k of the "auto" rule.
        momentum_form: "paper" (eq. 5-6) or "sgd" (torch SGD's convention; see module docstring).
        normalization: "tensor" (each tensor its own unit, the default), "group" (the whole param
            group as one vector, the paper's section 5.3), or "none" (tanh only, no normalization).
        transform: "tanh" (eq. 3), "scaled_tanh" (beta * tanh), "sin_tanh" (sin(kappa * tanh)),
            "hybrid" (lambda * tanh + (1 - lambda) * g_hat), or "linear" (alpha * g_hat: no tanh).
        beta, kappa, hybrid_lambda: the variants' constants.
        nonfinite: what a NaN or inf gradient does: "raise" (ValueError naming the tensor) or "skip"
            (the step skipped and counted in the group's "skipped_steps", as AMP's GradScaler does).
            Either way the param group holding it is left unchanged (each group is checked before
            it is updated; groups before it in `param_groups` have taken their step).
        maximize: ascend instead of descend.
        foreach, fused: the path. Default (both None): the fused CPU kernel where it applies (the
            "tanh" transform with "tensor" or "group" normalization, dense contiguous float32/float64
            CPU tensors) and is available, else foreach; see `default_to_fused`. fused=True: one
            pass per param group with tanh evaluated by a rational approximation within 4.4e-7 of it,
            a C++ kernel on the CPU (built once per machine, ~30-60 s), torch.compile elsewhere (a
            few seconds per process). foreach=True: torch._foreach_* kernels; foreach=False: the
            reference single-tensor loop.
        members: stacked parameters (see `_member_alphagrad`): dim 0 of every tensor of the group indexes this
            many independent models (a model ensemble, a population of RL runs); each member's slice is
            normalized on its own, and lr, alpha and momentum may then be sequences or tensors of one value per
            member. A member with a non-finite gradient is left unchanged while the others step; "skip" counts
            it in the group's per-member "skipped_steps", "raise" raises naming it (after the others stepped).
            torch's LR schedulers need a number for lr.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        alpha: float | str = "auto",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        *,
        alpha_k: float = 1.0,
        momentum_form: str = "paper",
        normalization: str = "tensor",
        transform: str = "tanh",
        beta: float = 1.0,
        kappa: float = 1.0,
        hybrid_lambda: float = 0.5,
        nonfinite: str = "raise",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        members: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, alpha=alpha, alpha_k=alpha_k, momentum=momentum, momentum_form=momentum_form,
            weight_decay=weight_decay, eps=eps, normalization=normalization, transform=transform,
            beta=beta, kappa=kappa, hybrid_lambda=hybrid_lambda, nonfinite=nonfinite,
            maximize=maximize, foreach=foreach, fused=fused, members=members, skipped_steps=0,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _validate_group(group)
        if group["members"] is not None:
            wrong = [tuple(p.shape) for p in group["params"] if p.dim() == 0 or p.shape[0] != group["members"]]
            if wrong:
                raise ValueError(f"members={group['members']}: every tensor's dim 0 must index the members, got shape "
                                 f"{wrong[0]}")
            group["skipped_steps"] = [0] * group["members"] if group["skipped_steps"] == 0 else group["skipped_steps"]
        complex_params = [p for p in group["params"] if p.is_complex()]
        if complex_params:
            raise ValueError(f"AlphaGrad does not support complex parameters (got {complex_params[0].dtype}): tanh "
                             "of a complex number is unbounded; view them as real with torch.view_as_real")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict saved by AlphaGrad; another optimizer's, or invalid values, raise ValueError here."""
        for index, group in enumerate(state_dict.get("param_groups", [])):
            missing = [key for key in (*_GROUP_KEYS, "members") if key not in group]
            if missing:
                raise ValueError(f"not an AlphaGrad state_dict: its param group {index} lacks {', '.join(missing)}")
            _validate_group(group)
        for state in state_dict.get("state", {}).values():
            unknown = set(state) - {"momentum_buffer"}
            if unknown:
                raise ValueError(f"not an AlphaGrad state_dict: its parameter state holds {', '.join(sorted(unknown))}")
        self._check_loaded_buffers(state_dict)
        super().load_state_dict(state_dict)
        for param, state in self.state.items():  # a buffer saved with other strides takes its parameter's layout
            buffer = state.get("momentum_buffer")
            if buffer is not None and buffer.stride() != param.stride():
                state["momentum_buffer"] = torch.empty_like(param).copy_(buffer)

    def _check_loaded_buffers(self, state_dict: dict[str, Any]) -> None:
        """Raise ValueError naming the parameter whose saved momentum buffer is not a dense floating-point tensor of
        its shape (torch's load casts dtype and device, but not shape: the update would read past it)."""
        saved_groups = state_dict.get("param_groups", [])
        if [len(group["params"]) for group in saved_groups] != [len(group["params"]) for group in self.param_groups]:
            return  # torch's load refuses it, naming the groups
        for saved, group, index in zip(saved_groups, self.param_groups, itertools.count()):
            names = _param_names(index, group, group["params"])
            for key, param, name in zip(saved["params"], group["params"], names):
                buffer = state_dict.get("state", {}).get(key, {}).get("momentum_buffer")
                if buffer is None:
                    continue
                if problem := _mismatch(buffer, param, converted=True):
                    raise ValueError(f"AlphaGrad.load_state_dict: the momentum buffer of {name} {problem}; was the "
                                     "state saved for another model?")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("skipped_steps", 0)

    @torch.no_grad()
    def step(self, closure=None):
        """One AlphaGrad step for every param group; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params, grads = self._gather(group)
            if group["members"] is not None:
                if params:
                    stepped = _member_alphagrad(params, grads, self._momentum_buffers(group, params),
                                                **{key: group[key] for key in _MEMBER_KEYS})
                    self._handle_nonfinite_members(index, group, stepped.tolist())
                continue
            applied = alphagrad(
                params, grads, self._momentum_buffers(group, params),
                **{key: group[key] for key in _GROUP_KEYS if key != "nonfinite"},
            )
            if not applied:
                self._handle_nonfinite(index, group, params)
        return loss

    def _handle_nonfinite_members(self, index: int, group: dict[str, Any], stepped: list[bool]) -> None:
        skipped = [member for member, ok in enumerate(stepped) if not ok]
        if not skipped:
            return
        for member in skipped:
            group["skipped_steps"][member] += 1
        if group["nonfinite"] == "raise":
            raise ValueError(f"AlphaGrad: non-finite gradient (NaN or inf) in member(s) {skipped} of param group "
                             f"{index}; those members were left unchanged, the others stepped. Pass "
                             "nonfinite='skip' to count such steps instead.")

    @torch.no_grad()
    def diagnostics(self, tau: float = 2.5) -> dict[str, dict[str, float]]:
        """Per-tensor diagnostics from the current gradients (call after backward, before zero_grad).

        saturation: S(alpha) = fraction of |alpha * g_hat_i| > tau (section 7.3);
        mean_abs_preactivation: mean |alpha * g_hat_i| (section 7.6);
        update_norm: ||lr * g'||_2, the step before momentum;
        elements: the tensor's number of elements (per member), to weigh tensors into a network-wide S.
        Keyed by parameter name when the optimizer was given named parameters.
        """
        stats = {}
        for index, group in enumerate(self.param_groups):
            params, grads = self._gather(group)
            names = _param_names(index, group, params)
            members = group["members"]
            lr = per_member(group["lr"], members, params[0]) if members and params else group["lr"]
            for name, (g_hat, alpha, preactivation) in zip(names, abs_preactivations(group, params, grads)):
                direction = _direction(g_hat, alpha, group["transform"], group["beta"], group["kappa"],
                                       group["hybrid_lambda"])
                if members is None:
                    stats[name] = {"saturation": (preactivation > tau).float().mean().item(),
                                   "mean_abs_preactivation": preactivation.mean().item(),
                                   "update_norm": group["lr"] * direction.norm().item(),
                                   "elements": preactivation.numel()}
                else:  # one value per member
                    stats[name] = {"saturation": (preactivation > tau).flatten(1).float().mean(1).tolist(),
                                   "mean_abs_preactivation": preactivation.flatten(1).mean(1).tolist(),
                                   "update_norm": (lr * direction.flatten(1).norm(dim=1)).tolist(),
                                   "elements": preactivation[0].numel()}
        return stats

    def _gather(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("AlphaGrad does not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
        return params, grads

    def _momentum_buffers(self, group: dict[str, Any], params: list[torch.Tensor]) -> list[torch.Tensor]:
        if not bool(torch.as_tensor(group["momentum"]).any()):
            return []
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        return buffers

    def _handle_nonfinite(self, index: int, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """Raise naming the tensors, or count the skipped step in the group (which was left unchanged)."""
        if group["nonfinite"] == "skip":
            group["skipped_steps"] += 1
            return
        bad = [f"{name} (shape {tuple(param.shape)})" for name, param in zip(_param_names(index, group, params), params)
               if not bool(torch.isfinite(param.grad).all())]
        where = ", ".join(bad) if bad else "a gradient norm (finite values overflowed to inf)"
        raise ValueError(f"AlphaGrad: non-finite gradient (NaN or inf) in {where}; the step was not applied to its "
                         "param group. Pass nonfinite='skip' to skip such steps instead.")


def _member_values(group: dict[str, Any], key: str) -> list:
    """The value of `key`, or for a member group given one value per member, each member's."""
    value = group[key]
    if group.get("members") is None or isinstance(value, (int, float, str)):
        return [value]
    values = value.tolist() if isinstance(value, torch.Tensor) else list(value)
    if len(values) != group["members"]:
        raise ValueError(f"invalid {key}: {len(values)} values for {group['members']} members (allowed: a number, or "
                         "one value per member)")
    return values


def _validate_group(group: dict[str, Any]) -> None:
    if group.get("members") is not None:
        check_range("members", group["members"], low=1)
        if group["fused"] or group["foreach"] is not None:
            raise ValueError("members (stacked parameters) has its own path: leave fused and foreach at None")
    for lr in _member_values(group, "lr"):
        check_range("lr", lr, low=0.0)
    for alpha in _member_values(group, "alpha"):
        if alpha != "auto":
            check_range("alpha (a number > 0 or 'auto')", alpha, low=0.0, low_inclusive=False)
    check_range("alpha_k", group["alpha_k"], low=0.0, low_inclusive=False)
    for momentum in _member_values(group, "momentum"):
        check_range("momentum", momentum, low=0.0, high=1.0)
    check_range("weight_decay", group["weight_decay"], low=0.0)
    check_range("eps", group["eps"], low=0.0, low_inclusive=False)
    check_range("beta", group["beta"], low=0.0, low_inclusive=False)
    check_range("kappa", group["kappa"], low=0.0, low_inclusive=False)
    check_range("hybrid_lambda", group["hybrid_lambda"], low=0.0, high=1.0, high_inclusive=True)
    check_choice("transform", group["transform"], TRANSFORMS)
    check_choice("normalization", group["normalization"], NORMALIZATIONS)
    check_choice("momentum_form", group["momentum_form"], MOMENTUM_FORMS)
    check_choice("nonfinite", group["nonfinite"], NONFINITE_POLICIES)
    for flag in ("maximize", "foreach", "fused"):
        if not (group[flag] is None or isinstance(group[flag], bool)) or (flag == "maximize" and group[flag] is None):
            raise ValueError(f"invalid {flag}: {group[flag]!r} (allowed: True, False"
                             + (")" if flag == "maximize" else ", None)"))
    if group["fused"]:
        if not fused_supported(group["transform"], group["normalization"]):
            raise ValueError(
                "fused=True supports transform='tanh' with normalization 'tensor' or 'group' only "
                f"(got transform={group['transform']!r}, normalization={group['normalization']!r})"
            )
        if group["foreach"]:
            raise ValueError("fused and foreach cannot both be True")


def abs_preactivations(group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]):
    """Yield (g_hat, alpha, |alpha * g_hat|) per tensor of a group: the input of tanh in eq. 3 (for stacked
    parameters, alpha is a broadcastable per-member tensor)."""
    if group["members"] is not None and params:
        g_hats, alphas, _ = member_inputs(params, grads, members=group["members"], alpha=group["alpha"],
                                          alpha_k=group["alpha_k"], eps=group["eps"],
                                          normalization=group["normalization"])
        for g_hat, alpha in zip(g_hats, alphas):
            yield g_hat, alpha, (g_hat * alpha).abs_()
        return
    norms = gradient_norms(grads, group["normalization"])
    alphas = tensor_alphas(params, group["alpha"], group["alpha_k"], group["normalization"])
    for grad, norm, alpha in zip(grads, norms, alphas):
        g_hat = normalized(grad, norm, group["eps"], group["normalization"])
        yield g_hat, alpha, (g_hat * alpha).abs_()


def _param_names(index: int, group: dict[str, Any], params: list[torch.Tensor]) -> list[str]:
    names = group.get("param_names")
    if names is None:
        return [f"group{index}.param{i}" for i, _ in enumerate(params)]
    name_of = {id(p): n for p, n in zip(group["params"], names)}
    return [name_of[id(p)] for p in params]
