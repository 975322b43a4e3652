"""Adaptive Gradient Regularization (Jiang et al., 2024, arXiv 2407.16944) as a gradient transform.

Per tensor:  g' = g - (|g| / sum|g|) * g,  the sum over the whole tensor. `agr_` applies it in place;
`with_agr(optimizer)` attaches it in front of any torch optimizer (AdamW(AGR), Adan(AGR), AlphaGrad(AGR),
SGD(AGR)) through the optimizer's own step pre-hook, so the optimizer stays itself: learning-rate
schedulers, gradient clipping and `isinstance` checks see the real optimizer, and there is nothing to
unwrap. `AGR.of(optimizer)` finds the attached transform; `AGR.remove()` detaches it.
Unlike the authors' code, a tensor whose gradient is all zero stays zero (their 0/0 gives NaN).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from ._validation import check_choice, check_range

SCOPES = ("all", "matrices")
NONFINITE_POLICIES = ("raise", "skip")
_ATTRIBUTE = "_alphagrad_agr"  # where an optimizer keeps its attached AGR


@torch.no_grad()
def agr_(grads: list[torch.Tensor], foreach: bool = True, members: int | None = None) -> None:
    """Apply AGR to each gradient in place (an all-zero gradient stays zero). With `members`, dim 0 of every
    gradient indexes stacked models: the sum runs over each member's slice, never across members."""
    if not grads:
        return
    if members is not None:
        for grad in grads:
            shape = (members,) + (1,) * (grad.dim() - 1)
            total = grad.abs().reshape(members, -1).sum(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)
            grad.sub_(grad.abs().div_(total.view(shape)).mul_(grad))
        return
    if not foreach:
        for grad in grads:
            total = grad.abs().sum().clamp_min(torch.finfo(grad.dtype).tiny)
            grad.sub_(grad.abs().div_(total).mul_(grad))
        return
    totals = torch._foreach_norm(grads, ord=1)
    torch._foreach_clamp_min_(totals, torch.finfo(grads[0].dtype).tiny)
    coefficients = torch._foreach_abs(grads)
    torch._foreach_div_(coefficients, totals)
    torch._foreach_addcmul_(grads, coefficients, grads, value=-1.0)


def with_agr(optimizer: Optimizer, **options: Any) -> Optimizer:
    """Attach AGR (see `AGR` for the options) in front of `optimizer` and return the same optimizer."""
    AGR(optimizer, **options)
    return optimizer


class AGR:
    """AGR attached to an optimizer: before each `optimizer.step()` it regularizes the gradients in place.

    Args:
        optimizer: any torch.optim.Optimizer (it must not have AGR attached already).
        scope: "all" tensors, or only "matrices" (weights with dim > 1; the AGR paper applies it to
            fully connected and convolution weights).
        active_steps: apply AGR only for this many steps (the AGR paper suspends it after early
            training); None applies it always.
        nonfinite: a gradient tensor holding a NaN or inf: "raise" (ValueError naming it, before any
            gradient is changed) or "skip" (leave that tensor as it is, so one NaN does not spread over
            the whole tensor through the sum, and let the optimizer's own policy decide; counted in
            `skipped_tensors`).
        foreach: torch._foreach_* kernels (default) or the per-tensor loop.
        members: stacked parameters (dim 0 of every tensor indexes independent models): each member's slice is
            regularized on its own, and a non-finite gradient concerns only its member (raised, or that member's
            slice left as it is).

    The optimizer's `state_dict()` gains an "agr" entry (steps taken, options); loading a state_dict
    without one, or with other options, raises ValueError. Closures are not supported: compute the
    gradients before `step()`, since AGR reads them in the step pre-hook.
    """

    def __init__(self, optimizer: Optimizer, *, scope: str = "all", active_steps: int | None = None,
                 nonfinite: str = "raise", foreach: bool = True, members: int | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"AGR attaches to a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if AGR.of(optimizer) is not None:
            raise ValueError(f"{type(optimizer).__name__} already has AGR attached")
        check_choice("scope", scope, SCOPES)
        check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        for name, value, low in (("active_steps", active_steps, 0), ("members", members, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"invalid {name}: {value!r} (allowed: an integer >= {low}, or None)")
            if value is not None:
                check_range(name, value, low=low)
        if not isinstance(foreach, bool):
            raise ValueError(f"invalid foreach: {foreach!r} (allowed: True, False)")
        self.optimizer = optimizer
        self.members = members
        self.scope = scope
        self.active_steps = active_steps
        self.nonfinite = nonfinite
        self.foreach = foreach
        self.steps_taken = 0
        self.skipped_tensors = 0
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
            optimizer.register_state_dict_post_hook(self._save),
            optimizer.register_load_state_dict_pre_hook(self._load),
        ]
        setattr(optimizer, _ATTRIBUTE, self)

    @staticmethod
    def of(optimizer: Optimizer) -> AGR | None:
        """The AGR attached to `optimizer`, or None."""
        return getattr(optimizer, _ATTRIBUTE, None)

    def remove(self) -> None:
        """Detach from the optimizer: its next steps take the raw gradients."""
        for handle in self._handles:
            handle.remove()
        delattr(self.optimizer, _ATTRIBUTE)

    def __repr__(self) -> str:
        return (f"AGR(scope={self.scope!r}, active_steps={self.active_steps}, nonfinite={self.nonfinite!r}) "
                f"-> {type(self.optimizer).__name__}")

    @property
    def active(self) -> bool:
        return self.active_steps is None or self.steps_taken < self.active_steps

    def _before_step(self, _optimizer, args, kwargs) -> None:
        if (len(args) > 1 and args[1] is not None) or kwargs.get("closure") is not None:  # args[0]: the optimizer
            raise ValueError("AGR regularizes the gradients before step(): call loss.backward() first instead of "
                             "passing a closure")
        if not self.active:
            return
        named = [(f"group{i}.param{j}" if not group.get("param_names") else group["param_names"][j], p.grad)
                 for i, group in enumerate(self.optimizer.param_groups) for j, p in enumerate(group["params"])
                 if p.grad is not None and (self.scope == "all" or p.dim() > 1)]
        if not named:
            return
        if self.members is not None:
            self._regularize_members(named)
            return
        with torch.no_grad():
            finite = torch.stack(torch._foreach_norm([grad for _, grad in named], ord=1)).isfinite().tolist()
        if not all(finite):
            bad = [name for (name, _), ok in zip(named, finite) if not ok]
            if self.nonfinite == "raise":
                raise ValueError(f"AGR: non-finite gradient (NaN or inf) in {', '.join(bad)}; no gradient was "
                                 "changed. Pass nonfinite='skip' to leave such tensors to the optimizer's own policy.")
            self.skipped_tensors += len(bad)
            named = [item for item, ok in zip(named, finite) if ok]
        agr_([grad for _, grad in named], foreach=self.foreach)

    @torch.no_grad()
    def _regularize_members(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """AGR per member; a member with a non-finite gradient anywhere is raised or left as it is."""
        finite = torch.stack([grad.reshape(self.members, -1).abs().sum(dim=1) for _, grad in named]).isfinite()
        ok = finite.all(dim=0)
        if not bool(ok.all()):
            bad = [member for member, finite_member in enumerate(ok.tolist()) if not finite_member]
            if self.nonfinite == "raise":
                raise ValueError(f"AGR: non-finite gradient (NaN or inf) in member(s) {bad}; no gradient was changed. "
                                 "Pass nonfinite='skip' to leave those members to the optimizer's own policy.")
            self.skipped_tensors += len(bad)
        for _, grad in named:
            keep = ok.view((self.members,) + (1,) * (grad.dim() - 1))
            regularized = grad.clone()
            agr_([regularized], members=self.members)
            grad.copy_(torch.where(keep, regularized, grad))

    def _after_step(self, _optimizer, _args, _kwargs) -> None:
        self.steps_taken += 1

    def _options(self) -> dict[str, Any]:
        return {"scope": self.scope, "active_steps": self.active_steps, "nonfinite": self.nonfinite,
                "members": self.members}

    def _save(self, _optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        return {**state_dict, "agr": {"steps_taken": self.steps_taken, "skipped_tensors": self.skipped_tensors,
                                      **self._options()}}

    def _load(self, _optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        saved = state_dict.get("agr")
        if not isinstance(saved, dict):
            raise ValueError(f"this state_dict was saved by a {type(self.optimizer).__name__} without AGR "
                             "(it has no 'agr' entry): it cannot continue an optimizer with AGR")
        differing = {key: (saved.get(key), value) for key, value in self._options().items() if saved.get(key) != value}
        if differing:
            raise ValueError("this state_dict was saved with other AGR options: " + ", ".join(
                f"{key} {old!r} (saved) != {new!r} (now)" for key, (old, new) in differing.items()))
        steps, skipped = saved.get("steps_taken"), saved.get("skipped_tensors", 0)
        for name, value in (("agr steps_taken", steps), ("agr skipped_tensors", skipped)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"invalid {name}: {value!r} (allowed: an integer >= 0)")
        self.steps_taken, self.skipped_tensors = steps, skipped
        return {key: value for key, value in state_dict.items() if key != "agr"}
