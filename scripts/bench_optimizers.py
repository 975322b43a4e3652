"""optimizer.step() time and optimizer-state bytes: AlphaGrad (each path) vs Adam (default, foreach, fused) vs SGD.

Two models: CleanRL's PPO networks for HalfCheetah (separate 64-64 actor and critic, 13 tensors,
~11k parameters; also as 8 stacked members, the population path) and a ~50M-parameter MLP. Timings are
medians over repeats, the optimizers' repeats interleaved so that they share the machine's drift, reported
with their ratio to torch's default Adam (on the CPU its single-tensor loop) and to Adam(fused). Also
checks the fused AlphaGrad update against the exact formula. `--against REV` times the AlphaGrad of a git
revision beside this checkout's, path by path (for a change to the optimizer). Run:
`python scripts/bench_optimizers.py` (1 torch thread unless --threads).
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
    members: int = 8
    """stacked members for the population path (PPO networks only)"""
    against: str | None = None
    """a git revision whose AlphaGrad is timed beside this checkout's (its `alphagrad/` folder)"""


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
    "AlphaGrad (foreach, momentum)": dict(name="alphagrad", foreach=True, momentum=0.9),
    "AlphaGrad (fused)": dict(name="alphagrad", fused=True),
    "AlphaGrad (fused, momentum)": dict(name="alphagrad", fused=True, momentum=0.9),
}
MEMBER_CONFIGS = {
    "AlphaGrad (members)": dict(name="alphagrad"),
    "AlphaGrad (members, momentum)": dict(name="alphagrad", momentum=0.9),
}


def alphagrad_at(revision: str):
    """The `alphagrad` package of a git revision, imported under another name."""
    folder = Path(tempfile.mkdtemp(prefix="alphagrad-"))
    archive = subprocess.run(["git", "archive", revision, "alphagrad"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    name = f"alphagrad_at_{revision.replace('-', '_').replace('.', '_').replace('~', '_').replace('^', '_')}"
    spec = importlib.util.spec_from_file_location(name, folder / "alphagrad" / "__init__.py",
                                                  submodule_search_locations=[str(folder / "alphagrad")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build(params: list[torch.Tensor], settings: dict, alpha: float, baseline=None, members: int | None = None):
    """The optimizer of `settings` (lr 1e-4); with `baseline`, that module's AlphaGrad."""
    options = {key: value for key, value in settings.items() if key != "name"}
    if settings["name"] == "alphagrad":
        options.update(alpha=alpha, members=members)
    if baseline is not None:
        return baseline.AlphaGrad(params, lr=1e-4, **options)
    return make_optimizer(params, name=settings["name"], lr=1e-4, **options)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def time_interleaved(optimizers: dict[str, torch.optim.Optimizer], steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of each optimizer, one repeat of each in turn."""
    for optimizer in optimizers.values():
        for _ in range(3):  # warm-up (compiles the fused kernel, allocates state)
            optimizer.step()
    times = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            for _ in range(steps):
                optimizer.step()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def fused_max_error(params: list[torch.Tensor], alpha: float, eps: float = 1e-8) -> float:
    """Max |update component - exact formula| of fused AlphaGrad (lr = 1), the formula evaluated in float64."""
    before = [p.detach().clone() for p in params]
    make_optimizer(params, name="alphagrad", lr=1.0, alpha=alpha, eps=eps, fused=True).step()
    error = 0.0
    with torch.no_grad():
        for p, b in zip(params, before):
            g = p.grad.double()
            exact = torch.tanh(alpha * g / (g.norm() + eps))
            error = max(error, ((b.double() - p.double()) - exact).abs().max().item())
            p.copy_(b)
    return error


def with_gradients(params: list[torch.Tensor]) -> list[torch.Tensor]:
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    baseline = alphagrad_at(args.against) if args.against else None
    print(f"torch {torch.__version__}, {args.threads} thread(s), alpha={args.alpha}"
          + (f", AlphaGrad beside revision {args.against}" if baseline else ""))
    ppo = ppo_networks()
    stacked = [torch.nn.Parameter(p.detach().expand(args.members, *p.shape).clone()) for p in ppo.parameters()]
    for label, params, configs, members, steps in (
            ("PPO networks", list(ppo.parameters()), CONFIGS, None, args.small_steps),
            (f"PPO networks x {args.members} members", stacked, MEMBER_CONFIGS, args.members, args.small_steps),
            ("50M MLP", list(large_mlp().parameters()), CONFIGS, None, args.large_steps)):
        with_gradients(params)
        print(f"\n{label}: {len(params)} tensors, {sum(p.numel() for p in params):,} parameters")
        optimizers = {name: build(params, settings, args.alpha, members=members) for name, settings in configs.items()}
        if baseline is not None:
            optimizers.update({f"{name} @ {args.against}": build(params, settings, args.alpha, baseline, members)
                               for name, settings in configs.items() if settings["name"] == "alphagrad"})
        results = time_interleaved(optimizers, steps, args.repeats)
        default = results.get("Adam (default)")
        fused = results.get("Adam (fused)")
        print(f"{'optimizer':40s} {'step':>12s} {'vs Adam(default)':>17s} {'vs Adam(fused)':>15s} {'state bytes':>14s}"
              + (f" {'vs ' + args.against:>14s}" if baseline else ""))
        for name, seconds in results.items():
            if name.endswith(f" @ {args.against}"):
                continue
            ratios = [f"{seconds / default:16.2f}x" if default else f"{'':17s}",
                      f"{seconds / fused:14.2f}x" if fused else f"{'':15s}"]
            against = results.get(f"{name} @ {args.against}")
            print(f"{name:40s} {seconds * 1e3:9.3f} ms {ratios[0]} {ratios[1]} {state_bytes(optimizers[name]):14,d}"
                  + (f" {seconds / against:13.3f}x" if against else ""))
        if members is None:
            print(f"fused AlphaGrad vs the exact formula in float64, max |update component| difference: "
                  f"{fused_max_error(params, args.alpha):.2e}")


if __name__ == "__main__":
    main(tyro.cli(Args))
