"""AlphaGrad (Sane, 2025, arXiv 2504.16020): L2-normalize each gradient tensor, squash it with tanh.

Per tensor (eq. 1-4):   g_hat = g / (||g||_2 + eps);   g' = tanh(alpha * g_hat);   theta -= lr * g'.

Momentum follows the paper (eq. 5-6):  v = gamma * v + lr * g';  theta -= v.  The author's experiment
code uses torch SGD's convention instead (v = gamma * v + g';  theta -= lr * v). The two agree under
a constant learning rate; under a schedule (PPO anneals lr) the paper's buffer keeps the learning
rates at which past directions were taken, torch's rescales the whole history by today's lr.
`momentum_form` picks one ("paper" by default, "sgd" to match the author's code).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer

from ._fused import compiled_alphagrad_update, cpu_alphagrad_update, cpu_kernel_applies
from ._validation import check_choice, check_range

TRANSFORMS = ("tanh", "scaled_tanh", "sin_tanh", "hybrid", "linear")
NORMALIZATIONS = ("tensor", "group", "none")
MOMENTUM_FORMS = ("paper", "sgd")
NONFINITE_POLICIES = ("raise", "skip")


def auto_alpha(numel: int, k: float = 1.0) -> float:
    """The paper's scaling rule alpha = k * sqrt(d) (eq. 7), d = elements normalized together."""
    return k * math.sqrt(numel)


def _direction(g_hat: torch.Tensor, alpha: float, group: dict[str, Any]) -> torch.Tensor:
    """The bounded update g' for one normalized gradient (eq. 3 and the section 7.1 / 7.5 variants)."""
    transform = group["transform"]
    if transform == "linear":  # normalization only: tanh replaced by its small-input linearization
        return g_hat * alpha
    squashed = torch.tanh(g_hat * alpha)
    if transform == "tanh":
        return squashed
    if transform == "scaled_tanh":  # beta * tanh(alpha * g_hat), section 7.1
        return squashed.mul_(group["beta"])
    if transform == "sin_tanh":  # sin(kappa * tanh(alpha * g_hat)), section 7.1
        return squashed.mul_(group["kappa"]).sin_()
    lam = group["hybrid_lambda"]  # lambda * tanh(alpha * g_hat) + (1 - lambda) * g_hat, section 7.5
    return squashed.mul_(lam).add_(g_hat, alpha=1.0 - lam)


def _foreach_direction(g_hats: list[torch.Tensor], alphas: list[float], group: dict[str, Any]) -> list[torch.Tensor]:
    """`_direction` for a list of tensors with torch._foreach_* kernels."""
    transform = group["transform"]
    if transform == "linear":
        return torch._foreach_mul(g_hats, alphas)
    squashed = torch._foreach_mul(g_hats, alphas)
    torch._foreach_tanh_(squashed)
    if transform == "scaled_tanh":
        torch._foreach_mul_(squashed, group["beta"])
    elif transform == "sin_tanh":
        torch._foreach_mul_(squashed, group["kappa"])
        torch._foreach_sin_(squashed)
    elif transform == "hybrid":
        lam = group["hybrid_lambda"]
        torch._foreach_mul_(squashed, lam)
        torch._foreach_add_(squashed, g_hats, alpha=1.0 - lam)
    return squashed


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
        nonfinite: what a NaN or inf gradient does: "raise" (ValueError naming the tensor, nothing
            updated) or "skip" (the whole step skipped and counted in each group's "skipped_steps",
            as AMP's GradScaler does).
        maximize: ascend instead of descend.
        foreach: use torch._foreach_* kernels (default on every device; False for the reference
            single-tensor path).
        fused: one pass per param group ("tanh" transform with "tensor" or "group" normalization
            only), tanh evaluated by a rational approximation within 4.4e-7 of it: a C++ kernel on
            the CPU (built on first use, ~30-60 s once per machine), torch.compile elsewhere (a
            few seconds per process). The non-finite check is made per param group (a group with
            a NaN/inf gradient is left unchanged).
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
    ) -> None:
        defaults = dict(
            lr=lr, alpha=alpha, alpha_k=alpha_k, momentum=momentum, momentum_form=momentum_form,
            weight_decay=weight_decay, eps=eps, normalization=normalization, transform=transform,
            beta=beta, kappa=kappa, hybrid_lambda=hybrid_lambda, nonfinite=nonfinite,
            maximize=maximize, foreach=foreach, fused=fused, skipped_steps=0,
        )
        self._fused_cache: dict[int, dict[str, Any]] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _validate_group(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._fused_cache = {}
        for group in self.param_groups:
            group.setdefault("skipped_steps", 0)

    @torch.no_grad()
    def step(self, closure=None):
        """One AlphaGrad step for every param group; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        work = [(i, group, *self._gather(group)) for i, group in enumerate(self.param_groups)]
        eager = [item for item in work if item[2] and not item[1]["fused"]]
        norms_per_group = [_norms(grads, group["normalization"]) for _, group, _, grads in eager]
        all_norms = [n for norms in norms_per_group for n in norms]
        if all_norms and not bool(torch.stack(all_norms).isfinite().all()):
            self._handle_nonfinite(eager, skipped=self.param_groups)
            return loss
        for (_, group, params, grads), norms in zip(eager, norms_per_group):
            buffers = self._momentum_buffers(group, params)
            alphas = _alphas(group, params)
            if group["foreach"] is False:
                _single_tensor_alphagrad(params, grads, buffers, norms, alphas, group)
            else:
                _multi_tensor_alphagrad(params, grads, buffers, norms, alphas, group)

        fused = [item for item in work if item[2] and item[1]["fused"]]
        not_applied = [item for item in fused if not self._fused_step(*item)]
        if not_applied:
            self._handle_nonfinite(not_applied, skipped=[group for _, group, _, _ in not_applied])
        return loss

    def _fused_step(self, index, group, params, grads) -> bool:
        """Update one group in a single pass; False (nothing written) when a gradient norm is not finite."""
        options = (group["eps"], group["momentum"], group["momentum_form"] == "paper", group["weight_decay"],
                   group["maximize"], group["normalization"] == "group")
        buffers = self._momentum_buffers(group, params)
        if cpu_kernel_applies(params, grads):
            return cpu_alphagrad_update(params, grads, buffers, _alphas(group, params), group["lr"], *options)
        lr, alphas = self._fused_scalars(index, group, params)
        return bool(compiled_alphagrad_update(params, grads, buffers, alphas, lr, *options))

    def _fused_scalars(self, index, group, params) -> tuple[torch.Tensor, torch.Tensor]:
        """lr and per-tensor alphas as tensors, so schedules change them without recompiling the kernel.

        Cached per group and refilled only when a value changes.
        """
        alphas = tuple(_alphas(group, params))
        cached = self._fused_cache.get(index)
        if cached is None or cached["alpha_values"] != alphas or cached["alphas"].device != params[0].device:
            cached = {"alpha_values": alphas, "alphas": torch.tensor(alphas, device=params[0].device),
                      "lr_value": None, "lr": torch.zeros((), device=params[0].device)}
            self._fused_cache[index] = cached
        if cached["lr_value"] != group["lr"]:
            cached["lr"].fill_(group["lr"])
            cached["lr_value"] = group["lr"]
        return cached["lr"], cached["alphas"]

    @torch.no_grad()
    def diagnostics(self, tau: float = 2.5) -> dict[str, dict[str, float]]:
        """Per-tensor diagnostics from the current gradients (call after backward, before zero_grad).

        saturation: S(alpha) = fraction of |alpha * g_hat_i| > tau (section 7.3);
        mean_abs_preactivation: mean |alpha * g_hat_i| (section 7.6);
        update_norm: ||lr * g'||_2, the step before momentum.
        Keyed by parameter name when the optimizer was given named parameters.
        """
        stats = {}
        for index, group in enumerate(self.param_groups):
            params, grads = self._gather(group)
            names = _param_names(index, group, params)
            for name, (g_hat, alpha, preactivation) in zip(names, abs_preactivations(group, params, grads)):
                stats[name] = {
                    "saturation": (preactivation > tau).float().mean().item(),
                    "mean_abs_preactivation": preactivation.mean().item(),
                    "update_norm": group["lr"] * _direction(g_hat, alpha, group).norm().item(),
                }
        return stats

    def _gather(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("AlphaGrad does not support sparse gradients")
            params.append(p)
            grads.append(p.grad.neg() if group["maximize"] and not group["fused"] else p.grad)
        return params, grads

    def _momentum_buffers(self, group: dict[str, Any], params: list[torch.Tensor]) -> list[torch.Tensor]:
        if group["momentum"] == 0.0:
            return []
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        return buffers

    def _handle_nonfinite(self, work, skipped) -> None:
        """Raise naming the tensors, or count the skipped step in each group that was not updated."""
        bad = [
            f"{name} (shape {tuple(param.shape)})"
            for index, group, params, _ in work
            for name, param in zip(_param_names(index, group, params), params)
            if not bool(torch.isfinite(param.grad).all())
        ]
        if any(group["nonfinite"] == "raise" for _, group, _, _ in work):
            where = ", ".join(bad) if bad else "a gradient norm (finite values overflowed to inf)"
            raise ValueError(
                f"AlphaGrad: non-finite gradient (NaN or inf) in {where}; the step was not applied "
                "(with fused=True, to that tensor's param group). Pass nonfinite='skip' to skip such steps instead."
            )
        for group in skipped:
            group["skipped_steps"] += 1


def _validate_group(group: dict[str, Any]) -> None:
    check_range("lr", group["lr"], low=0.0)
    alpha = group["alpha"]
    if alpha != "auto":
        check_range("alpha (a number > 0 or 'auto')", alpha, low=0.0, low_inclusive=False)
    check_range("alpha_k", group["alpha_k"], low=0.0, low_inclusive=False)
    check_range("momentum", group["momentum"], low=0.0, high=1.0)
    check_range("weight_decay", group["weight_decay"], low=0.0)
    check_range("eps", group["eps"], low=0.0, low_inclusive=False)
    check_range("beta", group["beta"], low=0.0, low_inclusive=False)
    check_range("kappa", group["kappa"], low=0.0, low_inclusive=False)
    check_range("hybrid_lambda", group["hybrid_lambda"], low=0.0, high=1.0, high_inclusive=True)
    check_choice("transform", group["transform"], TRANSFORMS)
    check_choice("normalization", group["normalization"], NORMALIZATIONS)
    check_choice("momentum_form", group["momentum_form"], MOMENTUM_FORMS)
    check_choice("nonfinite", group["nonfinite"], NONFINITE_POLICIES)
    if group["fused"]:
        if group["transform"] != "tanh" or group["normalization"] == "none":
            raise ValueError(
                "fused=True supports transform='tanh' with normalization 'tensor' or 'group' only "
                f"(got transform={group['transform']!r}, normalization={group['normalization']!r})"
            )
        if group["foreach"]:
            raise ValueError("fused and foreach cannot both be True")


def _norms(grads: list[torch.Tensor], normalization: str) -> list[torch.Tensor]:
    """||g||_2 per tensor; one shared norm per group for "group" (also used for the finiteness check)."""
    if not grads:
        return []
    norms = list(torch._foreach_norm(grads))
    if normalization == "group":
        return [torch.linalg.vector_norm(torch.stack(norms))] * len(grads)
    return norms


def _alphas(group: dict[str, Any], params: list[torch.Tensor]) -> list[float]:
    if group["alpha"] != "auto":
        return [float(group["alpha"])] * len(params)
    if group["normalization"] == "group":
        return [auto_alpha(sum(p.numel() for p in params), group["alpha_k"])] * len(params)
    return [auto_alpha(p.numel(), group["alpha_k"]) for p in params]


def _normalized(grad: torch.Tensor, norm: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
    """g_hat of eq. 2 (the raw gradient for normalization="none")."""
    return grad / (norm + group["eps"]) if group["normalization"] != "none" else grad


def abs_preactivations(group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]):
    """Yield (g_hat, alpha, |alpha * g_hat|) per tensor of a group: the input of tanh in eq. 3."""
    for grad, norm, alpha in zip(grads, _norms(grads, group["normalization"]), _alphas(group, params)):
        g_hat = _normalized(grad, norm, group)
        yield g_hat, alpha, (g_hat * alpha).abs_()


def _param_names(index: int, group: dict[str, Any], params: list[torch.Tensor]) -> list[str]:
    names = group.get("param_names")
    if names is None:
        return [f"group{index}.param{i}" for i, _ in enumerate(params)]
    name_of = {id(p): n for p, n in zip(group["params"], names)}
    return [name_of[id(p)] for p in params]


def _single_tensor_alphagrad(params, grads, buffers, norms, alphas, group) -> None:
    lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
    for i, (param, grad) in enumerate(zip(params, grads)):
        g_hat = _normalized(grad, norms[i], group)
        direction = _direction(g_hat, alphas[i], group)
        if weight_decay != 0.0:
            param.mul_(1.0 - lr * weight_decay)
        if momentum == 0.0:
            param.add_(direction, alpha=-lr)
        elif group["momentum_form"] == "paper":
            buffers[i].mul_(momentum).add_(direction, alpha=lr)
            param.sub_(buffers[i])
        else:
            buffers[i].mul_(momentum).add_(direction)
            param.add_(buffers[i], alpha=-lr)


def _multi_tensor_alphagrad(params, grads, buffers, norms, alphas, group) -> None:
    lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
    if group["normalization"] != "none":
        inverse_norms = torch._foreach_add(norms, group["eps"])
        torch._foreach_reciprocal_(inverse_norms)
        g_hats = torch._foreach_mul(grads, inverse_norms)
    else:
        g_hats = grads
    directions = _foreach_direction(g_hats, alphas, group)
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    if momentum == 0.0:
        torch._foreach_add_(params, directions, alpha=-lr)
    elif group["momentum_form"] == "paper":
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, directions, alpha=lr)
        torch._foreach_sub_(params, buffers)
    else:
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, directions)
        torch._foreach_add_(params, buffers, alpha=-lr)
