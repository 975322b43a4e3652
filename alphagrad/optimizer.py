"""AlphaGrad (Sane, 2025, arXiv 2504.16020): L2-normalize each gradient tensor, squash it with tanh.

The whole algorithm, per parameter tensor p (eq. 1-6; `alphagrad()` below computes exactly this):

    g_hat = p.grad / (p.grad.norm() + eps)        # eq. 2 (normalization="tensor")
    direction = torch.tanh(alpha * g_hat)         # eq. 3, every component in (-1, 1)
    p *= 1 - lr * weight_decay                    # decoupled weight decay (off by default)
    buf = momentum * buf + lr * direction         # eq. 5 (momentum = 0: p -= lr * direction, eq. 4)
    p -= buf                                      # eq. 6

Momentum follows the paper (eq. 5-6). The author's experiment code uses torch SGD's convention instead
(buf = momentum * buf + direction;  p -= lr * buf). The two agree under a constant learning rate; under a
schedule (PPO anneals lr) the paper's buffer keeps the learning rates at which past directions were
taken, torch's rescales the whole history by today's lr. `momentum_form` picks one ("paper" by default,
"sgd" to match the author's code).

`alphagrad()` is the functional form (as torch.optim.adam.adam beside Adam) and the one place the math
is written, for one model or for `members` stacked models (dim 0 of every tensor); the C++ kernel
(csrc/fused_alphagrad.cpp) is its one separate accelerator. The `AlphaGrad` class keeps the param
groups and state and calls it once per group; `diagnostics()` reads the same quantities.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from ._fused import cpu_alphagrad_update, cpu_kernel_applies, cpu_kernel_available, rational_tanh
from ._validation import check_choice, check_range

TRANSFORMS = ("tanh", "scaled_tanh", "sin_tanh", "hybrid", "linear")
NORMALIZATIONS = ("tensor", "group", "none")
MOMENTUM_FORMS = ("paper", "sgd")
NONFINITE_POLICIES = ("raise", "skip")
_STEP_KEYS = ("lr", "alpha", "alpha_k", "momentum", "momentum_form", "weight_decay", "eps", "normalization",
              "transform", "beta", "kappa", "hybrid_lambda", "maximize", "members", "foreach", "fused")
_GROUP_KEYS = (*_STEP_KEYS, "nonfinite")

Hyperparameter = float | list[torch.Tensor]  # a number, or one tensor per parameter broadcastable to it


def auto_alpha(numel: int, k: float = 1.0) -> float:
    """The paper's scaling rule alpha = k * sqrt(d) (eq. 7), d = elements normalized together."""
    return k * math.sqrt(numel)


def momentum_on(momentum) -> bool:
    """Whether momentum (a number, or one value per member) is non-zero for any member: buffers are kept."""
    return momentum != 0.0 if isinstance(momentum, (int, float)) else bool(torch.as_tensor(momentum).any())


def per_member(value, members: int, like: torch.Tensor) -> torch.Tensor:
    """A hyperparameter as a (members,) tensor: a number is the same for every member."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return tensor.expand(members) if tensor.dim() == 0 else tensor


def _along_members(values: list[torch.Tensor], params: Sequence[torch.Tensor], members: int | None):
    """(members,) tensors viewed as (members, 1, ...) to broadcast against each parameter; unchanged without members."""
    if members is None:
        return values
    return [value.view((members,) + (1,) * (param.dim() - 1)) for value, param in zip(values, params)]


def gradient_norms(grads: list[torch.Tensor], normalization: str, members: int | None = None) -> list[torch.Tensor]:
    """||g||_2 of each normalized unit (eq. 2): per tensor, or one for the whole group with "group"; with `members`
    a (members,) tensor per tensor, each member's slice on its own."""
    if members is None:
        norms = list(torch._foreach_norm(grads))
    else:
        squares = [grad.reshape(members, -1).square().sum(dim=1) for grad in grads]
        if normalization == "group":
            return [torch.stack(squares).sum(dim=0).sqrt()] * len(grads)
        return [square.sqrt() for square in squares]
    if normalization == "group":
        return [torch.linalg.vector_norm(torch.stack(norms), dim=0)] * len(grads)
    return norms


def normalized_gradients(grads: list[torch.Tensor], norms: list[torch.Tensor], eps: float, normalization: str,
                         members: int | None = None) -> list[torch.Tensor]:
    """g_hat = g / (||g|| + eps), eq. 2 (the raw gradient for normalization="none")."""
    if normalization == "none":
        return grads
    return torch._foreach_div(grads, _along_members(torch._foreach_add(norms, eps), grads, members))


def tensor_alphas(params: Sequence[torch.Tensor], alpha, alpha_k: float, normalization: str,
                  members: int | None = None) -> Hyperparameter:
    """alpha for each tensor: the given number, or for "auto" k * sqrt(d) of its normalization unit (eq. 7, d per
    member with `members`; a list of floats, or with members of (members, 1, ...) tensors)."""
    if alpha == "auto":
        units = [param[0].numel() if members else param.numel() for param in params]
        if normalization == "group":
            units = [sum(units)] * len(params)
        alphas = [auto_alpha(d, alpha_k) for d in units]
    else:
        alphas = [alpha] * len(params)
    if members is None:
        return [float(a) for a in alphas]
    return _along_members([per_member(a, members, params[0]) for a in alphas], params, members)


def _direction(g_hats: list[torch.Tensor], alphas: Hyperparameter, transform: str, beta: float, kappa: float,
               hybrid_lambda: float, tanh=None) -> list[torch.Tensor]:
    """The bounded update g' = tanh(alpha * g_hat) (eq. 3) or a section 7.1 / 7.5 variant; `tanh` replaces
    torch.tanh (the compiled path's rational approximation)."""
    scaled = torch._foreach_mul(g_hats, alphas)
    if transform == "linear":  # normalization only: tanh replaced by its small-input linearization
        return scaled
    if tanh is None:
        torch._foreach_tanh_(scaled)
    else:
        scaled = [tanh(x) for x in scaled]
    if transform == "scaled_tanh":  # beta * tanh(alpha * g_hat), section 7.1
        torch._foreach_mul_(scaled, beta)
    elif transform == "sin_tanh":  # sin(kappa * tanh(alpha * g_hat)), section 7.1
        torch._foreach_mul_(scaled, kappa)
        torch._foreach_sin_(scaled)
    elif transform == "hybrid":  # lambda * tanh(alpha * g_hat) + (1 - lambda) * g_hat, section 7.5
        torch._foreach_mul_(scaled, hybrid_lambda)
        torch._foreach_add_(scaled, g_hats, alpha=1.0 - hybrid_lambda)
    return scaled


def _add_scaled_(targets: list[torch.Tensor], tensors: list[torch.Tensor], scale: Hyperparameter,
                 sign: float) -> None:
    """targets += sign * scale * tensors."""
    if isinstance(scale, list):
        (torch._foreach_add_ if sign > 0 else torch._foreach_sub_)(targets, torch._foreach_mul(tensors, scale))
    else:
        torch._foreach_add_(targets, tensors, alpha=sign * scale)


def _update_tail(params: list[torch.Tensor], directions: list[torch.Tensor], buffers: list[torch.Tensor], *,
                 lr: Hyperparameter, momentum: Hyperparameter, momentum_form: str, weight_decay: float,
                 keep: list[torch.Tensor] | None = None) -> None:
    """Decoupled weight decay, momentum (eq. 5-6) and the step (eq. 4). `keep` (bool tensors broadcastable to each
    parameter; lr and momentum then lists of tensors) leaves parameters and buffers unchanged where it is False:
    there lr and the direction are 0 and momentum 1."""
    if keep is not None:
        lr = [torch.where(k, rate, 0.0) for k, rate in zip(keep, lr)]
        directions = [torch.where(k, direction, 0.0) for k, direction in zip(keep, directions)]
        if buffers:
            momentum = [torch.where(k, gamma, 1.0) for k, gamma in zip(keep, momentum)]
    if weight_decay != 0.0:
        torch._foreach_mul_(params, [1.0 - rate * weight_decay for rate in lr] if keep is not None
                            else 1.0 - lr * weight_decay)
    if not buffers:
        _add_scaled_(params, directions, lr, -1.0)  # eq. 4
    elif momentum_form == "paper":
        torch._foreach_mul_(buffers, momentum)
        _add_scaled_(buffers, directions, lr, 1.0)  # eq. 5
        torch._foreach_sub_(params, buffers if keep is None else  # eq. 6
                            [torch.where(k, buffer, 0.0) for k, buffer in zip(keep, buffers)])
    else:
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, directions)
        _add_scaled_(params, buffers, lr, -1.0)


def _update(params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor], *,
            alphas: Hyperparameter, lr: Hyperparameter, momentum: Hyperparameter, momentum_form: str,
            weight_decay: float, eps: float, normalization: str, transform: str, beta: float, kappa: float,
            hybrid_lambda: float, maximize: bool, members: int | None, masked: bool, per_tensor: bool,
            tanh=None) -> torch.Tensor:
    """eq. 2-6 on one param group; returns whether the gradient norms are finite (a 0-d bool tensor, or (members,)).
    Unmasked, a non-finite norm returns before anything is written; masked (members, the compiled kernel: no
    data-dependent branch), the entries whose norms are not finite are left unchanged."""
    if maximize:
        grads = torch._foreach_neg(grads)
    norms = gradient_norms(grads, normalization, members)
    finite = torch.stack(norms).isfinite().all(dim=0)
    if not masked and not bool(finite):
        return finite
    g_hats = normalized_gradients(grads, norms, eps, normalization, members)
    keep = _along_members([finite] * len(params), params, members) if masked else None
    parts = [slice(i, i + 1) for i in range(len(params))] if per_tensor else [slice(None)]
    for part in parts:  # the reference path takes one tensor at a time, the others the whole group
        directions = _direction(g_hats[part], _part(alphas, part), transform, beta, kappa, hybrid_lambda, tanh)
        _update_tail(params[part], directions, buffers[part], lr=_part(lr, part), momentum=_part(momentum, part),
                     momentum_form=momentum_form, weight_decay=weight_decay, keep=_part(keep, part))
    return finite


def _part(value, part: slice):
    """A per-tensor list's slice; a number (or None) as it is."""
    return value[part] if isinstance(value, list) else value


_compiled_update = None


def compiled_update(*args, **kwargs) -> torch.Tensor:
    """`_update` compiled with torch.compile on first use (a few seconds; needs a C++ compiler on CPU, Triton on
    GPU). Each new set of shapes or options compiles again; past dynamo's recompile limit (8) the update runs
    eagerly (same result, unfused) instead of failing, hence no fullgraph."""
    global _compiled_update
    if _compiled_update is None:
        _compiled_update = torch.compile(_update, dynamic=False)
    return _compiled_update(*args, **kwargs)


def fused_supported(transform: str, normalization: str) -> bool:
    """Whether the fused kernels implement these options (tanh with tensor or group normalization)."""
    return transform == "tanh" and normalization != "none"


def update_path(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], momentum_buffers: Sequence[torch.Tensor],
                *, transform: str, normalization: str, members: int | None, foreach: bool | None,
                fused: bool | None) -> str:
    """Which implementation updates a group: "kernel" (the C++ kernel: the default where it supports the options and
    the tensors, dense contiguous float32/float64 CPU tensors, and is built; fused=True builds it where missing),
    "compiled" (fused=True elsewhere),
    "single" (foreach=False, the reference loop) or "foreach" (the default otherwise, and for members)."""
    if fused or (fused is None and foreach is None and members is None):
        if (fused_supported(transform, normalization) and cpu_kernel_applies([*params, *grads, *momentum_buffers])
                and cpu_kernel_available(build=bool(fused))):
            return "kernel"
        if fused:
            return "compiled"
    return "single" if foreach is False else "foreach"


def check_step_tensors(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                       momentum_buffers: Sequence[torch.Tensor], with_momentum: bool) -> None:
    """Raise ValueError, naming the tensor, unless there is one gradient per parameter (and one momentum buffer per
    parameter when momentum is on; none is also allowed without it), each a dense tensor of its parameter's shape,
    dtype and device: the update kernels index them together element by element."""
    if len(grads) != len(params):
        raise ValueError(f"AlphaGrad: {len(params)} parameters but {len(grads)} gradients (allowed: one gradient per "
                         "parameter)")
    if len(momentum_buffers) not in ((len(params),) if with_momentum else (0, len(params))):
        raise ValueError(f"AlphaGrad: {len(momentum_buffers)} momentum buffers for {len(params)} parameters (allowed: "
                         "one per parameter" + (")" if with_momentum else ", or none without momentum)"))
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
    lr,
    alpha="auto",
    alpha_k: float = 1.0,
    momentum=0.0,
    momentum_form: str = "paper",
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    normalization: str = "tensor",
    transform: str = "tanh",
    beta: float = 1.0,
    kappa: float = 1.0,
    hybrid_lambda: float = 0.5,
    maximize: bool = False,
    members: int | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> bool | torch.Tensor:
    """Functional AlphaGrad: update `params` in place from `grads` (the options are `AlphaGrad`'s).

    `momentum_buffers` holds one buffer per parameter when momentum > 0 (updated in place), else is empty. Returns
    False, having written nothing, when a gradient norm is not finite (NaN or inf). With `members` (dim 0 of every
    tensor indexes that many models; lr, alpha and momentum may hold one value per member) returns the (members,)
    bool tensor of members that stepped: a member whose norm is not finite is left unchanged, the others step.
    Raises ValueError when the tensors do not match one to one (check_step_tensors).
    """
    check_step_tensors(params, grads, momentum_buffers, momentum_on(momentum))
    if members is not None and (wrong := [tuple(p.shape) for p in params if p.dim() == 0 or p.shape[0] != members]):
        raise ValueError(f"members={members}: every tensor's dim 0 must index the members, got shape {wrong[0]}")
    if not params:
        return True if members is None else torch.ones(members, dtype=torch.bool)
    if fused and (members is not None or not fused_supported(transform, normalization)):
        raise ValueError(f"fused=True supports transform='tanh' with normalization 'tensor' or 'group', without "
                         f"members, only (got transform={transform!r}, normalization={normalization!r}, "
                         f"members={members!r})")
    path = update_path(params, grads, momentum_buffers, transform=transform, normalization=normalization,
                       members=members, foreach=foreach, fused=fused)
    alphas = tensor_alphas(params, alpha, alpha_k, normalization, members)
    if path == "kernel":
        return cpu_alphagrad_update(params, grads, momentum_buffers, alphas, lr, eps, momentum,
                                    momentum_form == "paper", weight_decay, maximize, normalization == "group")
    options = dict(momentum_form=momentum_form, weight_decay=weight_decay, eps=eps, normalization=normalization,
                   transform=transform, beta=beta, kappa=kappa, hybrid_lambda=hybrid_lambda, maximize=maximize,
                   members=members)
    if path == "compiled":  # hyperparameters as tensors, so that new values do not compile again
        lr, momentum, *alphas = torch.tensor([lr, momentum, *alphas], dtype=params[0].dtype,
                                             device=params[0].device).unbind()
        return bool(compiled_update(params, grads, momentum_buffers, alphas=alphas, lr=[lr] * len(params),
                                    momentum=[momentum] * len(params), masked=True, per_tensor=False,
                                    tanh=rational_tanh, **options))
    if members is not None:  # one value per member, broadcast against each tensor
        lr, momentum = (_along_members([per_member(value, members, params[0])] * len(params), params, members)
                        for value in (lr, momentum))
    stepped = _update(params, grads, momentum_buffers, alphas=alphas, lr=lr, momentum=momentum,
                      masked=members is not None, per_tensor=path == "single", **options)
    return bool(stepped) if members is None else stepped

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
            CPU tensors) and is available, else foreach; see `update_path`. fused=True: one
            pass per param group with tanh evaluated by a rational approximation within 4.4e-7 of it,
            a C++ kernel on the CPU (built once per machine, ~30-60 s), torch.compile elsewhere (a
            few seconds per process). foreach=True: torch._foreach_* kernels; foreach=False: the
            reference single-tensor loop.
        members: stacked parameters: dim 0 of every tensor of the group indexes this many independent models
            (a model ensemble, a population of RL runs); each member's slice is normalized on its own, and lr,
            alpha and momentum may then be sequences or tensors of one value per member. A member with a
            non-finite gradient is left unchanged while the others step; "skip" counts it in the group's
            per-member "skipped_steps", "raise" raises naming it (after the others stepped). torch's LR
            schedulers need a number for lr. The path is foreach (foreach=False: the reference loop).
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
            missing = [key for key in _GROUP_KEYS if key not in group]
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
            stepped = alphagrad(params, grads, self._momentum_buffers(group, params),
                                **{key: group[key] for key in _STEP_KEYS})
            self._handle_nonfinite(index, group, params, stepped)
        return loss

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
        if not momentum_on(group["momentum"]):
            return []
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        return buffers

    def _handle_nonfinite(self, index: int, group: dict[str, Any], params: list[torch.Tensor], stepped) -> None:
        """After a group's step: raise naming the tensors (or members) whose gradient is not finite, or count the
        skipped step in the group ("skipped_steps", per member with members). Those were left unchanged."""
        if group["members"] is None:
            if stepped:
                return
            if group["nonfinite"] == "skip":
                group["skipped_steps"] += 1
                return
            bad = [f"{name} (shape {tuple(param.shape)})" for name, param in
                   zip(_param_names(index, group, params), params) if not bool(torch.isfinite(param.grad).all())]
            where = ", ".join(bad) if bad else "a gradient norm (finite values overflowed to inf)"
            raise ValueError(f"AlphaGrad: non-finite gradient (NaN or inf) in {where}; the step was not applied to "
                             "its param group. Pass nonfinite='skip' to skip such steps instead.")
        skipped = [member for member, ok in enumerate(stepped.tolist()) if not ok]
        for member in skipped:
            group["skipped_steps"][member] += 1
        if skipped and group["nonfinite"] == "raise":
            raise ValueError(f"AlphaGrad: non-finite gradient (NaN or inf) in member(s) {skipped} of param group "
                             f"{index}; those members were left unchanged, the others stepped. Pass "
                             "nonfinite='skip' to count such steps instead.")


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
        if group["fused"]:
            raise ValueError("members (stacked parameters) has its own path: fused=True does not support it (allowed: "
                             "fused None or False)")
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
    members = group["members"]
    norms = gradient_norms(grads, group["normalization"], members)
    g_hats = normalized_gradients(grads, norms, group["eps"], group["normalization"], members)
    alphas = tensor_alphas(params, group["alpha"], group["alpha_k"], group["normalization"], members)
    for g_hat, alpha in zip(g_hats, alphas):
        yield g_hat, alpha, (g_hat * alpha).abs_()


@torch.no_grad()
def diagnostics(optimizer: AlphaGrad, tau: float = 2.5) -> dict[str, dict[str, float]]:
    """Per-tensor diagnostics of an AlphaGrad optimizer from the current gradients (after backward, before zero_grad).

    saturation: S(alpha) = fraction of |alpha * g_hat_i| > tau (section 7.3);
    mean_abs_preactivation: mean |alpha * g_hat_i| (section 7.6);
    update_norm: ||lr * g'||_2, the step before momentum;
    elements: the tensor's number of elements (per member), to weigh tensors into a network-wide S.
    Keyed by parameter name when the optimizer was given named parameters; with members, one value per member.
    """
    stats = {}
    for index, group in enumerate(optimizer.param_groups):
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if not params:
            continue
        members = group["members"]
        lr = group["lr"] if members is None else per_member(group["lr"], members, params[0])
        for name, (g_hat, alpha, preactivation) in zip(_param_names(index, group, params),
                                                       abs_preactivations(group, params, grads)):
            [direction] = _direction([g_hat], [alpha], group["transform"], group["beta"], group["kappa"],
                                     group["hybrid_lambda"])
            if members is None:
                stats[name] = {"saturation": (preactivation > tau).float().mean().item(),
                               "mean_abs_preactivation": preactivation.mean().item(),
                               "update_norm": group["lr"] * direction.norm().item(),
                               "elements": preactivation.numel()}
            else:
                stats[name] = {"saturation": (preactivation > tau).flatten(1).float().mean(1).tolist(),
                               "mean_abs_preactivation": preactivation.flatten(1).mean(1).tolist(),
                               "update_norm": (lr * direction.flatten(1).norm(dim=1)).tolist(),
                               "elements": preactivation[0].numel()}
    return stats


def _param_names(index: int, group: dict[str, Any], params: list[torch.Tensor]) -> list[str]:
    names = group.get("param_names")
    if names is None:
        return [f"group{index}.param{i}" for i, _ in enumerate(params)]
    name_of = {id(p): n for p, n in zip(group["params"], names)}
    return [name_of[id(p)] for p in params]
