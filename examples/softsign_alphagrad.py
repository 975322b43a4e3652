"""An optimizer of your own, trained by this harness's agents, sweeps and tuner without editing it: AlphaGrad with
tanh replaced by softsign, x / (1 + |x|), a bounded squashing that saturates polynomially instead of exponentially
(a variant in the spirit of the paper's section 7.1).

    python agents/dqn.py --optim.name custom --optim.target examples/softsign_alphagrad.py:SoftsignAlphaGrad \\
        --optim.lr 2.5e-4 --optim.options '{"alpha": 30, "momentum": 0.9}'

The factory calls SoftsignAlphaGrad(params, lr=..., **options) (and weight_decay=... when --optim.weight-decay is
set); the run record's config.json keeps the target and options, so the run can be repeated.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class SoftsignAlphaGrad(Optimizer):
    """theta -= lr * v, v = momentum * v + softsign(alpha * g / (||g||_2 + eps)), per tensor (eq. 2-6 with softsign
    for tanh, momentum in torch-SGD form)."""

    def __init__(self, params, lr: float = 1e-3, alpha: float = 1.0, momentum: float = 0.0, eps: float = 1e-8):
        for name, value, low in (("lr", lr, 0.0), ("alpha", alpha, 0.0), ("eps", eps, 0.0)):
            if not value > low:
                raise ValueError(f"invalid {name}: {value!r} (allowed: > {low})")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"invalid momentum: {momentum!r} (allowed: [0, 1))")
        super().__init__(params, dict(lr=lr, alpha=alpha, momentum=momentum, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                scaled = param.grad * (group["alpha"] / (param.grad.norm() + group["eps"]))
                direction = scaled / (1.0 + scaled.abs())
                if group["momentum"] > 0.0:
                    state = self.state[param]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(param)
                    direction = state["momentum_buffer"].mul_(group["momentum"]).add_(direction)
                param.add_(direction, alpha=-group["lr"])
        return loss
