"""optimizer.step() time and optimizer-state bytes: AlphaGrad (each path) vs Adam (default, foreach, fused) vs SGD.

Two models: CleanRL's PPO networks for HalfCheetah (separate 64-64 actor and critic, 13 tensors,
~11k parameters) and a ~50M-parameter MLP. Timings are medians over repeats, measured in one run,
reported with their ratio to torch's default Adam (on the CPU its single-tensor loop) and to Adam(fused).
Also checks the fused AlphaGrad update against the exact formula. Run: `python scripts/bench_optimizers.py`
(1 torch thread unless --threads).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import tyro

from alphagrad_rl.factory import make_optimizer


@dataclass
class Args:
    threads: int = 1
    """torch threads"""
    repeats: int = 7
    """timed repeats per optimizer (median reported)"""
    small_steps: int = 300
    """steps per repeat on the PPO-size networks"""
    large_steps: int = 5
    """steps per repeat on the 50M MLP"""
    alpha: float = 98.0
    """AlphaGrad alpha"""


def ppo_networks() -> torch.nn.Module:
    def mlp(outputs: int) -> torch.nn.Sequential:
        return torch.nn.Sequential(torch.nn.Linear(17, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                   torch.nn.Linear(64, outputs))

    model = torch.nn.Module()
    model.critic, model.actor_mean = mlp(1), mlp(6)
    model.actor_logstd = torch.nn.Parameter(torch.zeros(1, 6))
    return model


def large_mlp() -> torch.nn.Module:
    widths = [2048, 4096, 4096, 4096, 2048]  # 50.3M parameters
    layers = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


CONFIGS = {
    "SGD (foreach)": dict(name="sgd", foreach=True),
    "Adam (default)": dict(name="adam"),
    "Adam (foreach)": dict(name="adam", foreach=True),
    "Adam (fused)": dict(name="adam", fused=True),
    "AlphaGrad (default)": dict(name="alphagrad"),
    "AlphaGrad (single)": dict(name="alphagrad", foreach=False),
    "AlphaGrad (foreach)": dict(name="alphagrad", foreach=True),
    "AlphaGrad (fused)": dict(name="alphagrad", fused=True),
    "AlphaGrad (fused, momentum)": dict(name="alphagrad", fused=True, momentum=0.9),
}


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def time_steps(model: torch.nn.Module, settings: dict, alpha: float, steps: int, repeats: int) -> tuple[float, int]:
    alpha_setting = {"alpha": alpha} if settings["name"] == "alphagrad" else {}
    optimizer = make_optimizer(model.parameters(), lr=1e-4, **alpha_setting, **settings)
    for _ in range(3):  # warm-up (compiles the fused kernel, allocates state)
        optimizer.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times), state_bytes(optimizer)


def fused_max_error(model: torch.nn.Module, alpha: float, eps: float = 1e-8) -> float:
    """Max |update component - exact formula| of fused AlphaGrad (lr = 1), the formula evaluated in float64."""
    before = [p.detach().clone() for p in model.parameters()]
    make_optimizer(model.parameters(), name="alphagrad", lr=1.0, alpha=alpha, eps=eps, fused=True).step()
    error = 0.0
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            g = p.grad.double()
            exact = torch.tanh(alpha * g / (g.norm() + eps))
            error = max(error, ((b.double() - p.double()) - exact).abs().max().item())
            p.copy_(b)
    return error


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), alpha={args.alpha}")
    for label, model, steps in (("PPO networks", ppo_networks(), args.small_steps),
                                ("50M MLP", large_mlp(), args.large_steps)):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        count = sum(p.numel() for p in model.parameters())
        print(f"\n{label}: {len(list(model.parameters()))} tensors, {count:,} parameters")
        results = {name: time_steps(model, settings, args.alpha, steps, args.repeats)
                   for name, settings in CONFIGS.items()}
        default, fused = results["Adam (default)"][0], results["Adam (fused)"][0]
        print(f"{'optimizer':30s} {'step':>12s} {'vs Adam(default)':>17s} {'vs Adam(fused)':>15s} {'state bytes':>14s}")
        for name, (seconds, state) in results.items():
            print(f"{name:30s} {seconds * 1e3:9.3f} ms {seconds / default:16.2f}x {seconds / fused:14.2f}x {state:14,d}")
        print(f"fused AlphaGrad vs the exact formula in float64, max |update component| difference: "
              f"{fused_max_error(model, args.alpha):.2e}")


if __name__ == "__main__":
    main(tyro.cli(Args))
