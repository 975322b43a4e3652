"""Adaptive Gradient Regularization (Jiang et al., 2024, arXiv 2407.16944) as a gradient transform.

Per tensor:  g' = g - (|g| / sum|g|) * g,  the sum over the whole tensor. `agr_` applies it in place;
`AGR` puts it in front of any torch optimizer (AdamW(AGR), Adan(AGR), AlphaGrad(AGR), SGD(AGR)).
Unlike the authors' code, a tensor whose gradient is all zero stays zero (their 0/0 gives NaN).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from ._validation import check_choice, check_range

SCOPES = ("all", "matrices")


@torch.no_grad()
def agr_(grads: list[torch.Tensor], foreach: bool = True) -> None:
    """Apply AGR to each gradient in place."""
    if not grads:
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


class AGR(Optimizer):
    """Wrap an optimizer so every step first regularizes the gradients with AGR (in place).

    Args:
        optimizer: any torch.optim.Optimizer; the wrapper shares its param groups and state, so
            learning-rate schedulers and gradient clipping work on either.
        scope: "all" tensors, or only "matrices" (weights with dim > 1; the AGR paper applies it to
            fully connected and convolution weights).
        active_steps: apply AGR only for this many steps (the AGR paper suspends it after early
            training); None applies it always.
        foreach: torch._foreach_* kernels (default) or the per-tensor loop.
    """

    def __init__(self, optimizer: Optimizer, *, scope: str = "all", active_steps: int | None = None,
                 foreach: bool = True) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"AGR wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        check_choice("scope", scope, SCOPES)
        if active_steps is not None:
            check_range("active_steps", active_steps, low=0)
        # Optimizer.__init__ sets up the hook registries; the groups and state are the inner optimizer's.
        super().__init__([{"params": []}], {})
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups
        self.state = optimizer.state
        self.defaults = optimizer.defaults
        self.scope = scope
        self.active_steps = active_steps
        self.foreach = foreach
        self.steps_taken = 0

    def __repr__(self) -> str:
        return f"AGR(scope={self.scope!r}, active_steps={self.active_steps}) -> {self.optimizer!r}"

    @property
    def active(self) -> bool:
        return self.active_steps is None or self.steps_taken < self.active_steps

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.active:
            agr_(
                [p.grad for group in self.param_groups for p in group["params"]
                 if p.grad is not None and (self.scope == "all" or p.dim() > 1)],
                foreach=self.foreach,
            )
        self.optimizer.step()
        self.steps_taken += 1
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "optimizer" not in self.__dict__:  # the placeholder group of Optimizer.__init__
            return super().add_param_group(param_group)
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "agr_steps_taken": self.steps_taken}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        self.steps_taken = int(state_dict["agr_steps_taken"])
