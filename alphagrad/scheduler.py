"""Saturation-aware alpha scheduling (AlphaGrad paper, section 7.3).

S(alpha) = (1/d) * sum_i 1[|alpha * g_hat_i| > tau]. After each optimizer step the scheduler measures
S per param group (all tensors of the group pooled) and multiplies alpha by `factor` when S is below
the target range, divides it when S is above, so that S stays within [low, high].
"""

from __future__ import annotations

from typing import Any

import torch

from ._validation import check_range
from .optimizer import AlphaGrad, abs_preactivations


class SaturationAlphaScheduler:
    """Keep AlphaGrad's saturation ratio in `target`, in the style of torch.optim.lr_scheduler.

    Call `step()` after `optimizer.step()` and before `zero_grad()` (it reads the gradients).
    Groups with alpha="auto" have their `alpha_k` scaled, so per-tensor ratios of eq. 7 are kept.

    Args:
        optimizer: an AlphaGrad optimizer.
        target: (low, high) range for S, 0 <= low < high <= 1.
        tau: saturation threshold on |alpha * g_hat|.
        factor: multiplicative change per adjustment, > 1.
        min_alpha, max_alpha: bounds on alpha (on alpha_k for "auto" groups).
        interval: measure every `interval` steps (each measurement reads every gradient once).
    """

    def __init__(self, optimizer: AlphaGrad, target: tuple[float, float] = (0.05, 0.25), *, tau: float = 2.5,
                 factor: float = 1.05, min_alpha: float = 1e-3, max_alpha: float = 1e6, interval: int = 1) -> None:
        if not isinstance(optimizer, AlphaGrad):
            raise TypeError(f"SaturationAlphaScheduler needs an AlphaGrad optimizer, got {type(optimizer).__name__}")
        if any(group.get("members") is not None for group in optimizer.param_groups):
            raise ValueError("SaturationAlphaScheduler does not support stacked parameters (param groups with members)")
        _check_options(target, tau, factor, min_alpha, max_alpha, interval)
        low, high = target
        self.optimizer = optimizer
        self.target = (low, high)
        self.tau = tau
        self.factor = factor
        self.min_alpha = min_alpha
        self.max_alpha = max_alpha
        self.interval = interval
        self.steps = 0
        self.last_saturation: list[float | None] = [None] * len(optimizer.param_groups)

    @torch.no_grad()
    def saturation(self, group: dict[str, Any]) -> float | None:
        """S for one param group from its current gradients (None if it has no gradients)."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return None
        saturated = total = 0
        for _, _, preactivation in abs_preactivations(group, params, [p.grad for p in params]):
            saturated += int((preactivation > self.tau).sum())
            total += preactivation.numel()
        return saturated / total

    def step(self) -> None:
        self.steps += 1
        if self.steps % self.interval:
            return
        low, high = self.target
        for index, group in enumerate(self.optimizer.param_groups):
            s = self.saturation(group)
            self.last_saturation[index] = s
            if s is None or low <= s <= high:
                continue
            key = "alpha_k" if group["alpha"] == "auto" else "alpha"
            scaled = group[key] * self.factor if s < low else group[key] / self.factor
            group[key] = min(max(scaled, self.min_alpha), self.max_alpha)

    def get_last_alpha(self) -> list[float | str]:
        return [group["alpha"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict saved by this scheduler; one with other keys, invalid options (those __init__ refuses),
        a negative step count or another number of param groups raises ValueError and loads nothing."""
        expected = set(self.state_dict())
        if set(state_dict) != expected:
            raise ValueError(f"not a SaturationAlphaScheduler state_dict: its keys are {sorted(state_dict)} (allowed: "
                             f"{sorted(expected)})")
        _check_options(tuple(state_dict["target"]), state_dict["tau"], state_dict["factor"], state_dict["min_alpha"],
                       state_dict["max_alpha"], state_dict["interval"])
        if not isinstance(state_dict["steps"], int) or state_dict["steps"] < 0:
            raise ValueError(f"invalid steps: {state_dict['steps']!r} (allowed: an integer >= 0)")
        if len(state_dict["last_saturation"]) != len(self.optimizer.param_groups):
            raise ValueError(f"this state_dict holds {len(state_dict['last_saturation'])} param groups, the optimizer "
                             f"{len(self.optimizer.param_groups)}")
        self.__dict__.update({**state_dict, "target": tuple(state_dict["target"])})


def _check_options(target: tuple[float, float], tau: float, factor: float, min_alpha: float, max_alpha: float,
                   interval: int) -> None:
    """ValueError naming the first option outside its range: every alpha the scheduler can set stays one AlphaGrad
    accepts (a finite number > 0)."""
    if not (isinstance(target, (tuple, list)) and len(target) == 2):
        raise ValueError(f"invalid target: {target!r} (allowed: two numbers, low <= high, in [0, 1])")
    low, high = target
    check_range("target low", low, low=0.0, high=high)
    check_range("target high", high, low=low, high=1.0, low_inclusive=False, high_inclusive=True)
    check_range("tau", tau, low=0.0, low_inclusive=False)
    check_range("factor", factor, low=1.0, low_inclusive=False)
    check_range("max_alpha", max_alpha, low=0.0, low_inclusive=False)
    check_range("min_alpha", min_alpha, low=0.0, high=max_alpha, low_inclusive=False)
    if not isinstance(interval, int) or isinstance(interval, bool):
        raise ValueError(f"invalid interval: {interval!r} (allowed: an integer >= 1)")
    check_range("interval", interval, low=1)
