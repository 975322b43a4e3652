"""Try bad inputs as a new user would, at every entry point, and check that each has the outcome it must have.

Each case runs in a fresh process (a fork of this one, which imported torch and the harness once): the library
through `python -c` code, the agents, the sweep launcher, the analysis and the tuner through their command lines.
What happened is one of:
- clear error: the command failed with a message (a ValueError/TypeError from the library), no traceback;
- handled: the command did what it must with such input (checked case by case: e.g. a sweep edited after its runs
  finished is trained into a folder of its own with --new-folder, a diverged run is recorded "crashed");
- silently accepted: it succeeded although the input is wrong;
- traceback: it failed with a Python traceback (CLIs) or an exception type other than ValueError/TypeError;
- data loss: a case that must keep an existing record byte for byte changed it;
- interpreter crash: the process died from a signal (a segmentation fault).
Every case states its expected outcome (a clear error unless said otherwise); an input that is accepted on purpose
says why beside it. The script exits 1 when any case has another outcome than expected.

    python scripts/try_bad_inputs.py            # every case, 2 at a time (a few minutes)
    python scripts/try_bad_inputs.py --fast     # the cases that train nothing (under a minute; run by the tests)
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]
TINY_DQN = "--total-timesteps 300 --learning-starts 100 --batch-size 16 --buffer-size 300 --quiet --no-cuda"
TINY_TD3 = "--env-id Hopper-v5 --total-timesteps 150 --learning-starts 50 --batch-size 16 --buffer-size 300 --quiet"
TINY_PPO = "--env-id Hopper-v5 --total-timesteps 128 --num-steps 64 --num-minibatches 2 --update-epochs 1 --quiet"

LIBRARY = {  # python statements that must raise ValueError/TypeError with a clear message
    "AlphaGrad lr=-1": "AlphaGrad([p], lr=-1.0)",
    "AlphaGrad alpha=0": "AlphaGrad([p], alpha=0.0)",
    "AlphaGrad alpha='big'": "AlphaGrad([p], alpha='big')",
    "AlphaGrad alpha=nan": "AlphaGrad([p], alpha=float('nan'))",
    "AlphaGrad momentum=1": "AlphaGrad([p], momentum=1.0)",
    "AlphaGrad eps=0": "AlphaGrad([p], eps=0.0)",
    "AlphaGrad transform='relu'": "AlphaGrad([p], transform='relu')",
    "AlphaGrad fused with sin_tanh": "AlphaGrad([p], fused=True, transform='sin_tanh')",
    "AlphaGrad maximize='yes'": "AlphaGrad([p], maximize='yes')",
    "AlphaGrad complex parameter": "AlphaGrad([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))])",
    "AlphaGrad group alpha=-1": "AlphaGrad([{'params': [p], 'alpha': -1.0}], alpha=2.0)",
    "AlphaGrad NaN gradient": "p.grad = torch.tensor([float('nan'), 1.0]); AlphaGrad([p], alpha=2.0).step()",
    "AlphaGrad sparse gradient": "p.grad = torch.zeros(2).to_sparse(); AlphaGrad([p], alpha=2.0).step()",
    "AlphaGrad loads an Adam state": "AlphaGrad([p]).load_state_dict(torch.optim.Adam([p]).state_dict())",
    "AlphaGrad loads alpha=-5": "s = AlphaGrad([p]).state_dict(); s['param_groups'][0]['alpha'] = -5.0; "
                                "AlphaGrad([p]).load_state_dict(s)",
    "AGR scope='weights'": "AGR(torch.optim.SGD([p], lr=0.1), scope='weights')",
    "AGR on a string": "AGR('adam')",
    "AGR attached twice": "o = with_agr(torch.optim.SGD([p], lr=0.1)); AGR(o)",
    "AGR NaN gradient": "o = with_agr(torch.optim.SGD([p], lr=0.1)); p.grad = torch.tensor([float('nan'), 1.0]); "
                        "o.step()",
    "AGR loads a plain AdamW state": "with_agr(torch.optim.AdamW([p])).load_state_dict("
                                     "torch.optim.AdamW([p]).state_dict())",
    "AGR step with a closure": "o = with_agr(torch.optim.SGD([p], lr=0.1)); p.grad = torch.ones(2); "
                               "o.step(lambda: 0.0)",
    "scheduler on Adam": "SaturationAlphaScheduler(torch.optim.Adam([p]))",
    "scheduler target (0.5, 0.1)": "SaturationAlphaScheduler(AlphaGrad([p]), target=(0.5, 0.1))",
    "make_optimizer unknown name": "make_optimizer([p], name='adamax')",
    "make_optimizer lr='0.1'": "make_optimizer([p], lr='0.1')",
    "make_optimizer agr='yes'": "make_optimizer([p], name='sgd', agr='yes')",
    "make_optimizer sgd momentum=1.5": "make_optimizer([p], name='sgd', momentum=1.5)",
    "make_optimizer adam alpha=98": "make_optimizer([p], name='adam', alpha=98.0)",
    "make_optimizer adam 3 betas": "make_optimizer([p], name='adam', betas=(0.9, 0.9, 0.9))",
    "make_optimizer unknown option": "make_optimizer([p], name='adam', alhpa=3.0)",
    "make_optimizer agr_scope without AGR": "make_optimizer([p], name='adamw', agr_scope='matrices')",
    "make_optimizer custom without target": "make_optimizer([p], name='custom')",
    "make_optimizer custom options not JSON": "make_optimizer([p], name='custom', target='torch.optim:SGD', "
    "options='{momentum: 0.9}')",
    "make_optimizer custom with stacked members": "make_optimizer([p], name='custom', target='torch.optim:SGD', "
    "members=2)",
    # tensors that do not match their parameters: the fused kernel crashed the interpreter or wrote garbage
    "alphagrad() with fewer gradients than parameters": "alphagrad([q, q], [torch.ones(64, 32)], [], lr=0.1, alpha=2.0)",
    "alphagrad() with momentum but no buffers": "alphagrad([q], [torch.ones(64, 32)], [], lr=0.1, alpha=2.0, "
    "momentum=0.9)",
    "alphagrad() with a gradient of another size": "alphagrad([q], [torch.ones(3)], [], lr=0.1, alpha=2.0)",
    "alphagrad() with a float64 gradient": "alphagrad([q], [torch.ones(64, 32, dtype=torch.float64)], [], lr=0.1, "
    "alpha=2.0)",
    "alphagrad() with a sparse gradient": "alphagrad([q], [torch.ones(64, 32).to_sparse()], [], lr=0.1, alpha=2.0)",
    "alphagrad() with a buffer of another shape": "alphagrad([q], [torch.ones(64, 32)], [torch.zeros(2)], lr=0.1, "
    "alpha=2.0, momentum=0.9)",
    "alphagrad() with a float64 buffer": "alphagrad([q], [torch.ones(64, 32)], [torch.zeros(64, 32, "
    "dtype=torch.float64)], lr=0.1, alpha=2.0, momentum=0.9)",
    "alphagrad() foreach with a buffer of another shape": "alphagrad([q], [torch.ones(64, 32)], [torch.zeros(3)], "
    "lr=0.1, alpha=2.0, momentum=0.9, foreach=True)",
    "alphagrad() with a non-tensor gradient": "alphagrad([q], [[1.0] * 32], [], lr=0.1, alpha=2.0)",
    "AlphaGrad loads a buffer of another layer width": "o = AlphaGrad([q], alpha=2.0, momentum=0.9); "
    "s = o.state_dict(); s['state'] = {0: {'momentum_buffer': torch.zeros(80, 32)}}; o.load_state_dict(s)",
    "AlphaGrad loads a sparse buffer": "o = AlphaGrad([q], alpha=2.0, momentum=0.9); s = o.state_dict(); "
    "s['state'] = {0: {'momentum_buffer': torch.zeros(64, 32).to_sparse()}}; o.load_state_dict(s)",
    "AlphaGrad loads an integer buffer": "o = AlphaGrad([q], alpha=2.0, momentum=0.9); s = o.state_dict(); "
    "s['state'] = {0: {'momentum_buffer': torch.zeros(64, 32, dtype=torch.int64)}}; o.load_state_dict(s)",
    "AlphaGrad loads a buffer that is a list": "o = AlphaGrad([q], alpha=2.0, momentum=0.9); s = o.state_dict(); "
    "s['state'] = {0: {'momentum_buffer': [0.0] * 4}}; o.load_state_dict(s)",
    "AlphaGrad members with a tensor of another member count": "AlphaGrad([torch.nn.Parameter(torch.zeros(3, 2))], "
    "alpha=2.0, members=4)",
    "AlphaGrad members with 2 lrs for 3 members": "AlphaGrad([torch.nn.Parameter(torch.zeros(3, 2))], alpha=2.0, "
    "members=3, lr=[0.1, 0.2])",
    "scheduler max_alpha=inf": "SaturationAlphaScheduler(AlphaGrad([p], alpha=2.0), max_alpha=float('inf'))",
    "scheduler min_alpha=-1": "SaturationAlphaScheduler(AlphaGrad([p], alpha=2.0), min_alpha=-1.0)",
    "scheduler interval=1.5": "SaturationAlphaScheduler(AlphaGrad([p], alpha=2.0), interval=1.5)",
    "scheduler loads min_alpha=0": "c = SaturationAlphaScheduler(AlphaGrad([p], alpha=2.0)); "
    "c.load_state_dict({**c.state_dict(), 'min_alpha': 0.0})",
    "scheduler loads an unknown state": "c = SaturationAlphaScheduler(AlphaGrad([p], alpha=2.0)); "
    "c.load_state_dict({'alpha': 3})",
    "AGR foreach='yes'": "with_agr(torch.optim.SGD([p], lr=0.1), foreach='yes')",
    "AGR active_steps=2.5": "with_agr(torch.optim.SGD([p], lr=0.1), active_steps=2.5)",
    "AGR loads steps_taken=1.5": "o = with_agr(torch.optim.SGD([p], lr=0.1)); s = o.state_dict(); "
    "s['agr']['steps_taken'] = 1.5; with_agr(torch.optim.SGD([p], lr=0.1)).load_state_dict(s)",
}
KERNEL_CALLS = {  # the C++ kernel called past alphagrad()'s checks: it must refuse (RuntimeError), never crash
    "C++ kernel with fewer gradients": "cpu_alphagrad_update([q, q], [g], [], [1.0, 1.0], 0.1, 1e-8, 0.0, True, 0.0, "
    "False, False)",
    "C++ kernel with momentum and no buffers": "cpu_alphagrad_update([q], [g], [], [1.0], 0.1, 1e-8, 0.9, True, 0.0, "
    "False, False)",
    "C++ kernel with a gradient of another size": "cpu_alphagrad_update([q], [torch.ones(3)], [], [1.0], 0.1, 1e-8, 0.0, "
    "True, 0.0, False, False)",
    "C++ kernel with a strided gradient": "cpu_alphagrad_update([q], [torch.ones(32, 64).t()], [], [1.0], 0.1, 1e-8, 0.0, "
    "True, 0.0, False, False)",
}
LIBRARY_PRELUDE = ("import torch; from alphagrad import AGR, AlphaGrad, SaturationAlphaScheduler, with_agr; "
                   "from alphagrad.optimizer import alphagrad; from alphagrad._fused import cpu_alphagrad_update; "
                   "from alphagrad_rl.factory import make_optimizer; p = torch.nn.Parameter(torch.zeros(2)); "
                   "q = torch.zeros(64, 32); g = torch.ones(64, 32)\n")

AGENT_CASES = {  # agent script: {case: flags}
    "dqn.py": {
        "unknown env id": "--env-id CartPol-v1", "continuous env": "--env-id Hopper-v5",
        "total-timesteps 0": "--total-timesteps 0", "total-timesteps -5": "--total-timesteps -5",
        "seed abc": "--seed abc", "optimizer adamax": "--optim.name adamax", "lr fast": "--optim.lr fast",
        "alpha -1": "--optim.name alphagrad --optim.alpha -1", "alpha with adam": "--optim.alpha 98",
        "alpha_k without auto": "--optim.name alphagrad --optim.alpha 98 --optim.alpha-k 2",
        "momentum 1.5": "--optim.name sgd --optim.momentum 1.5", "nan lr": "--optim.lr nan",
        "run-name ../x": "--run-name ../x", "run-name absolute": "--run-name /tmp/x", "run-name .": "--run-name .",
        "run-name a/b": "--run-name a/b", "resume without run-name": "--resume",
        "buffer-size 0": "--buffer-size 0", "batch-size 0": "--batch-size 0", "gamma 2": "--gamma 2",
        "tau 0": "--tau 0", "exploration-fraction 0": "--exploration-fraction 0", "num-envs 0": "--num-envs 0",
        "checkpoint interval -1": "--checkpoint-interval-s -1", "eval-episodes -1": "--eval-episodes -1",
        "diagnostics-interval -1": "--diagnostics-interval -1", "train-frequency 0": "--train-frequency 0",
        "results-dir is a file": "--results-dir {file}",
        "custom optimizer not importable": "--optim.name custom --optim.target my_optimizers:Mine",
        "custom optimizer with a syntax error": "--optim.name custom --optim.target {syntax_error}:Mine",
        "custom optimizer that raises when built": "--optim.name custom --optim.target {raises}:Mine",
        "custom optimizer whose module raises": "--optim.name custom --optim.target {module_raises}:Mine",
        "learning-starts -1": "--learning-starts -1", "learning-starts at the budget": "--learning-starts 300",
        "buffer below the batch": "--buffer-size 8", "start-e 2": "--start-e 2", "end-e -0.1": "--end-e -0.1",
        "epsilon that grows": "--start-e 0.1 --end-e 0.5", "exploration-fraction nan": "--exploration-fraction nan",
        "gamma nan": "--gamma nan", "tau nan": "--tau nan", "seed -1": "--seed -1",
        "target-network-frequency 0": "--target-network-frequency 0",
        "checkpoint-interval-steps -1": "--checkpoint-interval-steps -1", "eval-episodes nan": "--eval-episodes nan",
        "exp-name of 300 characters": "--exp-name " + "x" * 300,
        "observations the MLP cannot take": "--env-id FrozenLake-v1",
        "custom optimizer bad keyword": "--optim.name custom --optim.target torch.optim:SGD --optim.options "
        "{{\"momentom\":0.9}}",  # braces doubled: the flags go through str.format
    },
    "td3_continuous_action.py": {
        "discrete env": "--env-id CartPole-v1", "policy-noise -1": "--policy-noise -1",
        "policy-frequency 0": "--policy-frequency 0", "actor alpha 0": "--actor-optim.name alphagrad "
        "--actor-optim.alpha 0", "critic fused with adam on cpu flag": "--critic-optim.fused yes",
        "tau nan": "--tau nan", "gamma -0.1": "--gamma -0.1", "noise-clip -1": "--noise-clip -1",
        "exploration-noise nan": "--exploration-noise nan", "policy-noise nan": "--policy-noise nan",
        "learning-starts -5": "--learning-starts -5", "learning-starts at the budget": "--learning-starts 150",
        "batch above the buffer": "--batch-size 400", "buffer-size 0": "--buffer-size 0", "num-envs 0": "--num-envs 0",
    },
    "td3_continuous_action_population.py": {
        "one seed twice": "--seeds 3 3 --run-names a b", "member noise-clip nan": "--seeds 1 2 --noise-clip nan",
    },
    "ppo_continuous_action_population.py": {
        "member vf-coef 0": "--seeds 1 2 --vf-coef 0", "one seed twice": "--seeds 2 2 --run-names a b",
    },
    "dqn_population.py": {
        "alphas for 2 of 3 members": "--seeds 1 2 3 --optim.name alphagrad --alphas 93 186",
        "alphas with adam": "--seeds 1 2 --alphas 93 186", "one seed twice": "--seeds 1 1 --run-names a b",
        "member gamma nan": "--seeds 1 2 --gamma nan", "member learning-starts -1": "--seeds 1 2 --learning-starts -1",
        "population-size -1": "--population-size -1", "duplicate run names": "--seeds 1 2 --run-names a a",
        "unsafe run name": "--seeds 1 2 --run-names ../a b", "bad member alpha": "--seeds 1 2 --optim.name alphagrad "
        "--alphas 93 -1", "custom optimizer": "--seeds 1 2 --optim.name custom --optim.target torch.optim:SGD",
    },
    "ppo_continuous_action.py": {
        "discrete env": "--env-id CartPole-v1", "num-minibatches 3": "--num-minibatches 3",
        "num-steps 0": "--num-steps 0", "update-epochs 0": "--update-epochs 0", "clip-coef 0": "--clip-coef 0",
        "gae-lambda 2": "--gae-lambda 2", "alpha schedule with adam": "--optim.alpha-schedule",
        "max-grad-norm 0": "--max-grad-norm 0", "autoreset mode": "--autoreset-mode later",
        "max-grad-norm nan": "--max-grad-norm nan", "ent-coef -1": "--ent-coef -1", "vf-coef 0": "--vf-coef 0",
        "target-kl 0": "--target-kl 0", "budget below one rollout": "--total-timesteps 32",
        "gae-lambda nan": "--gae-lambda nan", "gamma 1.5": "--gamma 1.5", "num-envs 0": "--num-envs 0",
    },
}
TINY = {"dqn.py": TINY_DQN, "dqn_population.py": TINY_DQN, "td3_continuous_action.py": TINY_TD3,
        "td3_continuous_action_population.py": TINY_TD3, "ppo_continuous_action.py": TINY_PPO,
        "ppo_continuous_action_population.py": TINY_PPO}
CUSTOM_OPTIMIZERS = {  # a user's optimizer file: the flags' {name} placeholders
    "syntax_error": "import torch\ndef Mine(params, lr):\n    return torch.optim.SGD(params, lr=lr\n",
    "raises": "import torch\ndef Mine(params, lr):\n    raise RuntimeError('my optimizer is broken')\n",
    "module_raises": "raise KeyError('a setting this module expects')\n",
    "step_raises": "import torch\nclass Mine(torch.optim.SGD):\n    def step(self, closure=None):\n"
                   "        raise RuntimeError('my step is broken')\n",
}

GOOD_SWEEP = """name: tiny
program: agents/dqn.py
parameters:
  total-timesteps: {value: 300}
  learning-starts: {value: 100}
  buffer-size: {value: 300}
  batch-size: {value: 16}
  seed: {values: [1, 2]}
arms:
  adam: {}
  alphagrad-93: {optim.name: alphagrad, optim.alpha: 93}
"""
SWEEP_CONFIGS = {  # case: (text replaced, replacement) in GOOD_SWEEP, or None for the launcher flags below
    "invalid YAML": ("name: tiny", "name: [tiny"),
    "duplicate arm key": ("  adam: {}\n", "  adam: {}\n  adam: {optim.name: adamw}\n"),
    "duplicate seed values": ("[1, 2]", "[1, 1]"),
    "duplicate int and str values": ("total-timesteps: {value: 300}", "total-timesteps: {values: [300, '300']}"),
    "seed null": ("[1, 2]", "[null]"), "seed 1.7": ("[1, 2]", "[1.7]"),
    "alpha -1": ("optim.alpha: 93", "optim.alpha: -1"), "lr fast": ("optim.alpha: 93", "optim.alpha: 93, optim.lr: fast"),
    "alpha with adam": ("adam: {}", "adam: {optim.alpha: 98}"), "unknown flag": ("seed:", "seeds:"),
    "unknown program": ("agents/dqn.py", "agents/sac.py"), "method bayes": ("name: tiny", "name: tiny\nmethod: bayes"),
    "arm name with slash": ("adam: {}", "a/b: {}"), "sweep name ..": ("name: tiny", "name: '..'"),
    "env id with a slash in a grid": ("seed: {values: [1, 2]}", "seed: {values: [1]}\n  exp-name: {values: [a/b, a-b]}"),
    "unknown env id": ("seed: {values", "env-id: {value: CartPol-v1}\n  seed: {values"),
    "missing arms": ("arms:\n  adam: {}\n  alphagrad-93: {optim.name: alphagrad, optim.alpha: 93}\n", ""),
    "custom optimizer options key misspelt": ("adam: {}", "adam: {optim.name: custom, optim.target: 'torch.optim:SGD', "
                                              "optim.opts.momentum: 0.9}"),
    "custom optimizer refuses an options key": ("adam: {}", "adam: {optim.name: custom, optim.target: "
                                                "'torch.optim:SGD', optim.options.momentom: 0.9}"),
    "1e-3 as YAML text beside 0.001": ("seed: {values: [1, 2]}", "seed: {values: [1, 2]}\n  optim.lr: {values: "
                                       "['1e-3', 0.001]}"),
    "a grid over a label only": ("seed: {values: [1, 2]}", "seed: {values: [1, 2]}\n  exp-name: {values: [a, b]}"),
    "learning starts after the budget": ("learning-starts: {value: 100}", "learning-starts: {value: 300}"),
}
CUSTOM_GRID = ("seed: {values: [1, 2]}", "seed: {values: [1, 2]}\n  optim.options.momentum: {values: [0.0, 0.9]}")
CUSTOM_ARMS = ("  adam: {}\n  alphagrad-93: {optim.name: alphagrad, optim.alpha: 93}\n",
               "  sgd: {optim.name: custom, optim.target: 'torch.optim:SGD'}\n")
SWEEP_FLAGS = {"population-size -1": "--population-size -1", "budget below learning-starts": "--total-timesteps 50",
               "workers -1": "--workers -1", "runs-per-gpu 0": "--runs-per-gpu 0", "unknown arm": "--arms nope",
               "total-timesteps 0": "--total-timesteps 0", "results-dir is a file": "--results-dir {file}",
               "checkpoint interval -1": "--checkpoint-interval-s -1", "missing config": "MISSING",
               "seeds that select no run": "--seeds 9", "dry run of seeds that select no run": "--seeds 9 --dry-run",
               "arm and seed that select no run": "--arms adam --seeds 3", "records folder is a file":
               "--records {file}", "export-wandb folder is a file": "--export-wandb {file}/x"}
TUNE_CONFIG = """name: tiny-tune
program: agents/dqn.py
parameters:
  total-timesteps: {value: 1200}
  learning-starts: {value: 200}
  buffer-size: {value: 500}
  batch-size: {value: 16}
arm: {optim.name: alphagrad}
search:
  optim.alpha: {low: 5, high: 500, log: true}
seeds: [1, 2]
trials: 2
score: {range: [0, 500]}
final: {seeds: [11]}
"""
TUNE_CONFIGS = {
    "a choice the agent refuses after good ones": ("optim.alpha: {low: 5, high: 500, log: true}",
                                                   "optim.alpha: {choices: [93, 186, -1]}"),
    "a range whose upper end the agent refuses": ("optim.alpha: {low: 5, high: 500, log: true}",
                                                  "optim.alpha: {low: 5, high: 500, log: true}\n  optim.momentum: "
                                                  "{low: 0.0, high: 1.0}"),
    "choices of one value given twice": ("optim.alpha: {low: 5, high: 500, log: true}",
                                         "optim.alpha: {choices: [93, 93.0]}"),
    "seeds given twice": ("seeds: [1, 2]", "seeds: [1, 1]"),
}


OUTCOMES = ("clear error", "handled", "silently accepted", "traceback", "data loss", "interpreter crash")
GROUPS = ("stale or mixed results", "records lost or corrupted", "duplicates counted as seeds",
          "library crashes or garbage", "bad options")


@dataclass
class Case:
    group: str  # one of GROUPS
    entry: str
    name: str
    argv: list[str]
    expect: str = "clear error"  # or "handled" (with `check`), or "silently accepted" (with `why`)
    library: bool = False
    keep: Path | None = None  # a record (folder) that must come out byte for byte unchanged
    check: Callable[[subprocess.CompletedProcess], str | None] | None = None  # "handled": None, else what is wrong
    why: str = ""  # why accepting this input is right (expect "silently accepted")
    fast: bool = True  # trains nothing before or during the case
    outcome: str = ""
    detail: str = ""


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def classify(case: Case, completed: subprocess.CompletedProcess, before: dict | None) -> None:
    output = (completed.stdout + completed.stderr).strip()
    last = output.splitlines()[-1] if output else ""
    case.detail = last[:200]
    problem = case.check(completed) if case.check is not None else "no check"
    if completed.returncode < 0:
        case.outcome = "interpreter crash"
    elif before is not None and fingerprint(case.keep) != before:
        case.outcome = "data loss"
    elif problem is None:
        case.outcome = "handled"
    elif "Traceback" in output:
        case.outcome = "traceback"
    elif case.library:
        case.outcome = {"ACCEPTED": "silently accepted", "CLEAR": "clear error"}.get(last.split(":")[0], "traceback")
    else:
        case.outcome = "silently accepted" if completed.returncode == 0 else "clear error"
    if case.check is not None and case.outcome != "handled":
        case.detail = f"{problem} | {case.detail}"


def preload() -> None:
    """Import what every case imports (torch, gymnasium, MuJoCo, the harness, the C++ kernel) once, in this process:
    each case then runs in a fork of it (run_cases), a fresh process that starts in milliseconds instead of the
    seconds an interpreter takes to import torch, and whose crash by a signal kills only itself."""
    os.chdir(ROOT)
    os.environ.update(WANDB_MODE="offline", OMP_NUM_THREADS="1")
    sys.path.insert(0, str(ROOT))
    import alphagrad_rl.agents  # noqa: F401  (and through it the harness, torch, gymnasium)

    import alphagrad_rl.sweep  # noqa: F401
    import alphagrad_rl.tuning  # noqa: F401
    from alphagrad._fused import cpu_kernel_available

    cpu_kernel_available()


def _run_in_child(argv: list[str], out: Path, err: Path) -> None:
    """In the fork: what `python <argv[1:]>` would do, its output into `out` and `err`; never returns."""
    code = 1
    try:
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        if argv[1] == "-c":
            sys.argv = ["-c"]
            exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = argv[1:]
            runpy.run_path(argv[1], run_name="__main__")
        code = 0
    except SystemExit as stop:  # as the interpreter reads it: a number, None (0), or a message (printed, 1)
        if isinstance(stop.code, int) or stop.code is None:
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_cases(cases: list[Case], workers: int, scratch: Path) -> None:
    """Run every case in its own fork of this process (preload), `workers` at a time, and classify each."""
    sys.stdout.flush()
    sys.stderr.flush()
    pending, running = list(enumerate(cases)), {}
    while pending or running:
        while pending and len(running) < workers:
            index, case = pending.pop(0)
            before = fingerprint(case.keep) if case.keep else None
            out, err = scratch / f"{index}.out", scratch / f"{index}.err"
            pid = os.fork()
            if pid == 0:
                _run_in_child(case.argv, out, err)
            running[pid] = (case, before, out, err)
        pid, status = os.wait()
        case, before, out, err = running.pop(pid)
        returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        completed = subprocess.CompletedProcess(case.argv, returncode, out.read_text(errors="replace"),
                                                err.read_text(errors="replace"))
        classify(case, completed, before)


def python_case(group: str, name: str, statement: str, expect_error: str = "ValueError, TypeError") -> Case:
    """A library statement that must raise one of `expect_error` (printed CLEAR), never run through (ACCEPTED)."""
    code = (LIBRARY_PRELUDE + "try:\n    " + statement.replace("; ", "\n    ") + "\n    print('ACCEPTED')\n"
            f"except ({expect_error}) as error:\n"
            "    print('CLEAR:', type(error).__name__, (str(error).splitlines() or [''])[0])\n")
    return Case(group, "library", name, [sys.executable, "-c", code], library=True)


def summary_of(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def tiny_sweep(work: Path, name: str, text: str = GOOD_SWEEP) -> tuple[Path, Path]:
    """A finished tiny sweep in its own folder: (its config, its results folder)."""
    folder = work / name
    folder.mkdir()
    config = folder / "sweep.yaml"
    config.write_text(text)
    completed = subprocess.run([sys.executable, "scripts/sweep.py", str(config), "--results-dir", str(folder / "runs"),
                                "--workers", "2", "--no-gpus"], cwd=ROOT, capture_output=True, text=True)
    if completed.returncode != 0:
        logs = "".join(path.read_text()[-1500:] for path in (folder / "runs").rglob("output.log"))
        raise RuntimeError(f"the tiny sweep in {folder} did not finish:\n{completed.stdout}{completed.stderr}{logs}")
    return config, folder / "runs"


def integrity_cases(work: Path) -> list[Case]:
    """The data-integrity cases: each trains a tiny run or sweep first, then tries what lost or mixed records."""
    python = sys.executable
    sweep = [python, "scripts/sweep.py"]
    cases = []

    def case(group: str, entry: str, name: str, argv: list[str], **options) -> None:
        cases.append(Case(group, entry, name, argv, fast=False, **options))

    # stale or mixed results: a relaunch under other settings must never count the old runs as finished
    for label, edit, flags in (("an arm's alpha edited", ("optim.alpha: 93", "optim.alpha: 50"), []),
                               ("the budget edited", ("total-timesteps: {value: 300}", "total-timesteps: {value: 400}"), []),
                               ("--total-timesteps on the command line", None, ["--total-timesteps", "400"]),
                               ("another config of the same name", ("batch-size: {value: 16}", "batch-size: {value: 16}\n"
                                                                    "  gamma: {value: 0.9}"), [])):
        for dry in ([], ["--dry-run"]):
            config, runs = tiny_sweep(work, f"stale-{len(cases)}")
            if edit:
                config.write_text(GOOD_SWEEP.replace(*edit))
            case(GROUPS[0], "scripts/sweep.py", f"relaunch after {label}" + (" (dry run)" if dry else ""),
                 [*sweep, str(config), "--results-dir", str(runs), "--no-gpus", *flags, *dry], keep=runs / "tiny")
    config, runs = tiny_sweep(work, "new-folder")
    config.write_text(GOOD_SWEEP.replace("optim.alpha: 93", "optim.alpha: 50"))

    def trained_apart(_completed, runs=runs) -> str | None:
        moved = [folder for folder in runs.iterdir() if folder.name.startswith("tiny@")]
        finished = moved and all(summary_of(run).get("status") == "finished" for run in moved[0].iterdir()
                                 if run.name != ".locks")
        return None if finished else "no folder of its own with finished runs"

    case(GROUPS[0], "scripts/sweep.py", "relaunch after an edit with --new-folder",
         [*sweep, str(config), "--results-dir", str(runs), "--no-gpus", "--new-folder"], expect="handled",
         keep=runs / "tiny", check=trained_apart)
    config, runs = tiny_sweep(work, "records-conflict")
    records = work / "records-conflict" / "records"
    subprocess.run([python, "scripts/analyze.py", str(runs / "tiny"), "--output", str(records.parent)], cwd=ROOT,
                   capture_output=True, check=True)
    case(GROUPS[0], "scripts/sweep.py", "--records of other options on a fresh machine",
         [*sweep, str(config), "--results-dir", str(work / "records-conflict" / "fresh"), "--no-gpus", "--records",
          str(records), "--total-timesteps", "400"], keep=records)
    case(GROUPS[0], "scripts/analyze.py", "a quick sweep analyzed into a committed report's folder",
         [python, "scripts/analyze.py", str(tiny_sweep(work, "quick", GOOD_SWEEP.replace(
             "total-timesteps: {value: 300}", "total-timesteps: {value: 200}"))[1] / "tiny"), "--output",
          str(records.parent)], keep=records)
    mixed = work / "mixed-records"
    shutil.copytree(records, mixed)
    _, longer = tiny_sweep(work, "longer", GOOD_SWEEP.replace("total-timesteps: {value: 300}",
                                                              "total-timesteps: {value: 400}").replace("adam:", "adam2:"))
    subprocess.run([python, "scripts/analyze.py", str(longer / "tiny"), "--output", str(work / "longer-report")],
                   cwd=ROOT, capture_output=True, check=True)
    for path in (work / "longer-report" / "records").iterdir():
        shutil.copy(path, mixed / path.name)
    case(GROUPS[0], "scripts/analyze.py", "records of two budgets in one report",
         [python, "scripts/analyze.py", str(mixed), "--output", str(work / "mixed-report")])

    def recorded_crashed(completed, run_dir=work / "diverged" / "run") -> str | None:
        summary = summary_of(run_dir)
        ok = (completed.returncode == 1 and summary.get("status") == "crashed"
              and "non-finite TD loss" in (summary.get("error") or "") and "Traceback" not in completed.stderr)
        return None if ok else f"status {summary.get('status')!r}, exit {completed.returncode}"

    case(GROUPS[0], "agents/dqn.py", "a run whose loss turns NaN (Adam at lr 1e30)",
         [python, "agents/dqn.py", *TINY_DQN.split(), "--optim.lr", "1e30", "--results-dir", str(work / "diverged"),
          "--run-name", "run"], expect="handled", check=recorded_crashed)

    # records lost or corrupted
    _, runs = tiny_sweep(work, "damaged")
    for name in ("adam__s1", "adam__s2"):
        (runs / "tiny" / name / "summary.json").write_text('{"status": "finis')
    (runs / "tiny" / "alphagrad-93__s1" / "config.json").write_text("{")

    def damaged_kept(completed) -> str | None:
        return None if completed.returncode == 1 and "is damaged" in completed.stdout else "not reported as damaged"

    case(GROUPS[1], "scripts/sweep.py", "relaunch with damaged finished records", [
        *sweep, str(work / "damaged" / "sweep.yaml"), "--results-dir", str(runs), "--no-gpus"], expect="handled",
         keep=runs / "tiny", check=damaged_kept)
    for name, run in (("--resume of a run whose summary.json is damaged", "adam__s1"),
                      ("--resume of a run whose config.json is damaged", "alphagrad-93__s1")):
        case(GROUPS[1], "agents/dqn.py", name, [python, "agents/dqn.py", *TINY_DQN.split(), "--results-dir",
                                                str(runs / "tiny"), "--run-name", run, "--resume"],
             keep=runs / "tiny" / run)
    subprocess.run([python, "agents/dqn.py", *TINY_DQN.split(), "--results-dir", str(work / "runs"), "--run-name",
                    "finished"], cwd=ROOT, capture_output=True, check=True)
    for index, (name, extra) in enumerate((("--resume a finished run", "--resume"),
                                           ("--resume a finished run, other options", "--resume --gamma 0.9"),
                                           ("new run onto a finished record", ""))):
        results = work / f"finished-{index}"  # each case its own copy: cases run side by side
        shutil.copytree(work / "runs" / "finished", results / "finished")
        case(GROUPS[1], "agents/dqn.py", name, [python, "agents/dqn.py", *TINY_DQN.split(), "--results-dir",
                                                str(results), "--run-name", "finished", *extra.split()],
             keep=results / "finished")
    population = [python, "agents/dqn_population.py", *TINY_DQN.split(), "--seeds", "1", "2", "--run-names", "ended",
                  "crashed"]
    subprocess.run([*population, "--results-dir", str(work / "population")], cwd=ROOT, capture_output=True, check=True)
    crashed = work / "population" / "crashed" / "summary.json"
    crashed.write_text(json.dumps({**json.loads(crashed.read_text()), "status": "crashed"}))
    shutil.copytree(work / "population", work / "population-copy", ignore=shutil.ignore_patterns(".locks"))
    case(GROUPS[1], "agents/dqn_population.py", "--resume a population with a finished member",
         [*population, "--results-dir", str(work / "population"), "--resume"], keep=work / "population" / "ended")
    case(GROUPS[1], "agents/dqn.py", "--resume one population member with the single-file agent",
         [python, "agents/dqn.py", *TINY_DQN.split(), "--results-dir", str(work / "population-copy"), "--run-name",
          "crashed", "--seed", "2", "--resume"], keep=work / "population-copy" / "crashed")
    step_raises = work / "step_raises.py"
    step_raises.write_text(CUSTOM_OPTIMIZERS["step_raises"])
    case(GROUPS[4], "agents/dqn.py", "custom optimizer whose step raises while training",
         [python, "agents/dqn.py", *TINY_DQN.split(), "--results-dir", str(work / "runs"), "--optim.name", "custom",
          "--optim.target", f"{step_raises}:Mine"])
    busy = work / "busy"
    driver = (f"import subprocess, sys, time, pathlib\n"
              f"argv = [sys.executable, 'agents/dqn.py', '--total-timesteps', '5000000', '--results-dir', {str(busy)!r}, "
              f"'--run-name', 'run', '--quiet', '--no-cuda']\n"
              f"first = subprocess.Popen(argv)\n"
              f"while not pathlib.Path({str(busy / 'run' / 'summary.json')!r}).exists(): time.sleep(0.1)\n"
              f"try:\n"
              f"    second = subprocess.run(argv + ['--resume'], capture_output=True, text=True, timeout=60)\n"
              f"except subprocess.TimeoutExpired:\n"
              f"    first.terminate(); first.wait()\n"
              f"    sys.exit(0)  # the second trained into the same folder beside the first: accepted\n"
              f"first.terminate(); first.wait()\n"
              f"sys.stderr.write(second.stderr); sys.exit(second.returncode)\n")
    case(GROUPS[1], "agents/dqn.py", "--resume of a run another process is training", [python, "-c", driver])
    return cases


def build_cases(work: Path, fast: bool) -> list[Case]:
    python = sys.executable
    a_file = work / "a-file"
    a_file.write_text("not a folder")
    sources = {}
    for name, source in CUSTOM_OPTIMIZERS.items():
        sources[name] = work / f"{name}.py"
        sources[name].write_text(source)
    cases = [python_case(GROUPS[3] if name.startswith(("alphagrad()", "AlphaGrad loads", "AlphaGrad members"))
                         else GROUPS[4], name, statement) for name, statement in LIBRARY.items()]
    cases += [python_case(GROUPS[3], name, statement, "RuntimeError") for name, statement in KERNEL_CALLS.items()]
    for script, flag_cases in AGENT_CASES.items():
        for name, flags in flag_cases.items():
            argv = [python, f"agents/{script}", *TINY[script].split(), "--results-dir", str(work / "runs"),
                    *flags.format(file=a_file, **sources).split()]
            group = GROUPS[2] if "twice" in name else GROUPS[4]
            cases.append(Case(group, f"agents/{script}", name, argv))
    for name, replacement in SWEEP_CONFIGS.items():
        path = work / f"sweep-{len(cases)}.yaml"
        path.write_text(GOOD_SWEEP.replace(*replacement))
        group = GROUPS[2] if name.startswith(("duplicate", "1e-3", "a grid over a label")) else GROUPS[4]
        cases.append(Case(group, "scripts/sweep.py", name, [python, "scripts/sweep.py", str(path), "--dry-run",
                                                            "--results-dir", str(work / "sweeps")]))
    varied = work / "custom-grid.yaml"  # valid, but W&B cannot vary one key of --optim.options
    varied.write_text(GOOD_SWEEP.replace(*CUSTOM_GRID).replace(*CUSTOM_ARMS))
    cases.append(Case(GROUPS[4], "scripts/sweep.py", "W&B export varying one options key",
                      [python, "scripts/sweep.py", str(varied), "--export-wandb", str(work / "wandb")]))
    good = work / "good-sweep.yaml"
    good.write_text(GOOD_SWEEP)
    for name, flags in SWEEP_FLAGS.items():
        config = str(work / "missing.yaml") if flags == "MISSING" else str(good)
        argv = [python, "scripts/sweep.py", config, "--results-dir", str(work / "sweeps"),
                *([] if flags == "MISSING" else flags.format(file=a_file).split())]
        cases.append(Case(GROUPS[4], "scripts/sweep.py", name, argv))
    for name, replacement in TUNE_CONFIGS.items():
        path = work / f"tune-{len(cases)}.yaml"
        path.write_text(TUNE_CONFIG.replace(*replacement))
        group = GROUPS[2] if "twice" in name else GROUPS[4]
        cases.append(Case(group, "scripts/tune.py", name, [python, "scripts/tune.py", str(path), "--results-dir",
                                                            str(work / "tune")]))
    tune_config = work / "tune.yaml"
    tune_config.write_text(TUNE_CONFIG)
    for name, flags in (("tuner output folder is a file", ["--output", str(a_file / "report")]),
                        ("tuner grace-s nan", ["--grace-s", "nan"])):
        cases.append(Case(GROUPS[4], "scripts/tune.py", name, [python, "scripts/tune.py", str(tune_config),
                                                                "--results-dir", str(work / "tune"), *flags]))
    bench = [python, "scripts/benchmark.py", "--leaderboard", str(work / "leaderboard"), "--results-dir",
             str(work / "bench")]
    for name, flags in (("benchmark unknown optimizer", ["--optimizer", "adma"]),
                        ("benchmark unknown profile", ["--optimizer", "adam", "--profile", "gpu"]),
                        ("benchmark missing suite", ["--optimizer", "adam", "--suite", str(work / "nope.yaml")]),
                        ("benchmark missing entry file", ["--optimizer", str(work / "mine.yaml")]),
                        ("benchmark factory lr range of 1 decade",
                         ["--optimizer", "examples/softsign_alphagrad.py:SoftsignAlphaGrad", "--lr-range", "1e-3",
                          "1e-2"]),
                        ("benchmark malformed --search",
                         ["--optimizer", "examples/softsign_alphagrad.py:SoftsignAlphaGrad", "--search", "alpha=1"]),
                        ("benchmark unknown task", ["--optimizer", "adam", "--tasks", "atari"]),
                        ("benchmark worker-id -1", ["--optimizer", "adam", "--worker-id", "-1"]),
                        ("benchmark without an optimizer", [])):
        cases.append(Case(GROUPS[4], "scripts/benchmark.py", name, [*bench, *flags]))
    broken = work / "analysis"
    (broken / "adam__s1").mkdir(parents=True)
    (broken / "adam__s1" / "config.json").write_text('{"schema_version": 1, "algo')
    for name, argv in (("missing folder", [str(work / "nope")]), ("final-window 0", [str(broken), "--final-window", "0"]),
                       ("a file instead of a folder", [str(a_file)]), ("no records yet", [str(work / "x" / "records")]),
                       ("max-points 0", [str(broken), "--max-points", "0"]),
                       ("output folder is a file", [str(broken), "--output", str(a_file / "report")])):
        output = [] if "--output" in argv else ["--output", str(work / "report")]
        cases.append(Case(GROUPS[4], "scripts/analyze.py", name, [python, "scripts/analyze.py", *argv, *output]))
    if not fast:
        cases += integrity_cases(work)
    return cases


@dataclass
class Args:
    workers: int = 2
    """cases run at a time"""
    fast: bool = False
    """only the cases that train nothing"""
    output: Path | None = None
    """also write every case and its outcome as JSON here"""


def main(args: Args) -> int:
    preload()
    with tempfile.TemporaryDirectory() as folder:
        cases = build_cases(Path(folder), args.fast)
        (Path(folder) / "output").mkdir()
        run_cases(cases, args.workers, Path(folder) / "output")
    tally = {outcome: sum(case.outcome == outcome for case in cases) for outcome in OUTCOMES}
    wrong = [case for case in cases if case.outcome != case.expect]
    for case in cases:
        if case.outcome != "clear error":
            mark = "  " if case in wrong else "ok"
            print(f"{mark} {case.outcome.upper():18s} {case.entry}: {case.name}: {case.why or case.detail}")
    print(f"\n{len(cases)} bad inputs: " + ", ".join(f"{n} {outcome}" for outcome, n in tally.items()))
    for group in GROUPS:
        members = [case for case in cases if case.group == group]
        print(f"  {group}: {len(members)} cases, " + ", ".join(
            f"{sum(case.outcome == outcome for case in members)} {outcome}" for outcome in OUTCOMES
            if any(case.outcome == outcome for case in members)))
    print(f"{len(wrong)} case(s) with another outcome than expected" + "".join(
        f"\n  {case.entry}: {case.name}: expected {case.expect}, got {case.outcome} ({case.detail})" for case in wrong))
    if args.output:
        args.output.write_text(json.dumps([{key: str(value) if isinstance(value, Path) else value
                                             for key, value in case.__dict__.items() if key != "check"}
                                            for case in cases], indent=1))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
