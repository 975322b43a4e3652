"""Try bad inputs as a new user would, at every entry point, and tally what happened (issue 10).

Each case runs in a fresh process: the library through `python -c`, the agents, the sweep launcher and the
analysis through their command lines. Outcomes:
- clear error: the command failed with a one-line message (a ValueError/TypeError from the library), no traceback;
- silently accepted: it succeeded although the input is wrong;
- deep traceback: it failed with a Python traceback (CLIs) or an exception type other than ValueError/TypeError;
- data loss: a case that must keep an existing run record byte-for-byte changed it.

    python scripts/try_bad_inputs.py              # ~100 cases, 2 at a time (a few minutes)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
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
}
LIBRARY_PRELUDE = ("import torch; from alphagrad import AGR, AlphaGrad, SaturationAlphaScheduler, with_agr; "
                   "from alphagrad_rl.factory import make_optimizer; p = torch.nn.Parameter(torch.zeros(2))\n")

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
        "custom optimizer bad keyword": "--optim.name custom --optim.target torch.optim:SGD --optim.options "
        "{{\"momentom\":0.9}}",  # braces doubled: the flags go through str.format
    },
    "td3_continuous_action.py": {
        "discrete env": "--env-id CartPole-v1", "policy-noise -1": "--policy-noise -1",
        "policy-frequency 0": "--policy-frequency 0", "actor alpha 0": "--actor-optim.name alphagrad "
        "--actor-optim.alpha 0", "critic fused with adam on cpu flag": "--critic-optim.fused yes",
    },
    "dqn_population.py": {
        "alphas for 2 of 3 members": "--seeds 1 2 3 --optim.name alphagrad --alphas 93 186",
        "alphas with adam": "--seeds 1 2 --alphas 93 186",
        "population-size -1": "--population-size -1", "duplicate run names": "--seeds 1 2 --run-names a a",
        "unsafe run name": "--seeds 1 2 --run-names ../a b", "bad member alpha": "--seeds 1 2 --optim.name alphagrad "
        "--alphas 93 -1", "custom optimizer": "--seeds 1 2 --optim.name custom --optim.target torch.optim:SGD",
    },
    "ppo_continuous_action.py": {
        "discrete env": "--env-id CartPole-v1", "num-minibatches 3": "--num-minibatches 3",
        "num-steps 0": "--num-steps 0", "update-epochs 0": "--update-epochs 0", "clip-coef 0": "--clip-coef 0",
        "gae-lambda 2": "--gae-lambda 2", "alpha schedule with adam": "--optim.alpha-schedule",
        "max-grad-norm 0": "--max-grad-norm 0", "autoreset mode": "--autoreset-mode later",
    },
}
TINY = {"dqn.py": TINY_DQN, "dqn_population.py": TINY_DQN, "td3_continuous_action.py": TINY_TD3,
        "ppo_continuous_action.py": TINY_PPO}

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
}
CUSTOM_GRID = ("seed: {values: [1, 2]}", "seed: {values: [1, 2]}\n  optim.options.momentum: {values: [0.0, 0.9]}")
CUSTOM_ARMS = ("  adam: {}\n  alphagrad-93: {optim.name: alphagrad, optim.alpha: 93}\n",
               "  sgd: {optim.name: custom, optim.target: 'torch.optim:SGD'}\n")
SWEEP_FLAGS = {"population-size -1": "--population-size -1", "population with ray": "--population-size 4 --backend ray",
               "workers -1": "--workers -1", "runs-per-gpu 0": "--runs-per-gpu 0", "unknown arm": "--arms nope",
               "total-timesteps 0": "--total-timesteps 0", "results-dir is a file": "--results-dir {file}",
               "checkpoint interval -1": "--checkpoint-interval-s -1", "missing config": "MISSING"}


@dataclass
class Case:
    entry: str
    name: str
    argv: list[str]
    library: bool = False
    keep: Path | None = None  # a run record that must come out byte-for-byte unchanged
    outcome: str = ""
    detail: str = ""


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def classify(case: Case, completed: subprocess.CompletedProcess, before: dict | None) -> None:
    output = (completed.stdout + completed.stderr).strip()
    last = output.splitlines()[-1] if output else ""
    if before is not None and fingerprint(case.keep) != before:
        case.outcome = "data loss"
    elif case.library:
        case.outcome = {"ACCEPTED": "silently accepted", "CLEAR": "clear error"}.get(last.split(":")[0], "deep traceback")
    elif completed.returncode == 0:
        case.outcome = "silently accepted"
    elif "Traceback" in output:
        case.outcome = "deep traceback"
    else:
        case.outcome = "clear error"
    case.detail = last[:200]


def run_case(case: Case) -> Case:
    before = fingerprint(case.keep) if case.keep else None
    completed = subprocess.run(case.argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                               env={**__import__("os").environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    classify(case, completed, before)
    return case


def build_cases(work: Path) -> list[Case]:
    python = sys.executable
    a_file = work / "a-file"
    a_file.write_text("not a folder")
    cases = []
    for name, statement in LIBRARY.items():
        code = (LIBRARY_PRELUDE + "try:\n    " + statement.replace("; ", "\n    ") + "\n    print('ACCEPTED')\n"
                "except (ValueError, TypeError) as error:\n    print('CLEAR:', type(error).__name__, error)\n")
        cases.append(Case("library", name, [python, "-c", code], library=True))
    for script, flag_cases in AGENT_CASES.items():
        for name, flags in flag_cases.items():
            argv = [python, f"agents/{script}", *TINY[script].split(), "--results-dir", str(work / "runs"),
                    *flags.format(file=a_file).split()]
            cases.append(Case(f"agents/{script}", name, argv))
    # data loss: a finished record, then --resume (same or other options) and a new run with the same name
    finished = work / "runs" / "finished"
    subprocess.run([python, "agents/dqn.py", *TINY_DQN.split(), "--results-dir", str(work / "runs"), "--run-name",
                    "finished"], cwd=ROOT, capture_output=True, check=True)
    for name, extra in (("--resume a finished run", "--resume"),
                        ("--resume a finished run, other options", "--resume --gamma 0.9"),
                        ("new run onto a finished record", "")):
        argv = [python, "agents/dqn.py", *TINY_DQN.split(), "--results-dir", str(work / "runs"), "--run-name",
                "finished", *extra.split()]
        cases.append(Case("agents/dqn.py", name, argv, keep=finished))
    # a population that ended with one member crashed and one finished, then --resume
    population = [python, "agents/dqn_population.py", *TINY_DQN.split(), "--results-dir", str(work / "runs"),
                  "--seeds", "1", "2", "--run-names", "ended", "crashed"]
    subprocess.run(population, cwd=ROOT, capture_output=True, check=True)
    crashed = work / "runs" / "crashed" / "summary.json"
    crashed.write_text(json.dumps({**json.loads(crashed.read_text()), "status": "crashed"}))
    cases.append(Case("agents/dqn_population.py", "--resume a population with a finished member",
                      [*population, "--resume"], keep=work / "runs" / "ended"))
    for name, replacement in SWEEP_CONFIGS.items():
        path = work / f"sweep-{len(cases)}.yaml"
        path.write_text(GOOD_SWEEP.replace(*replacement))
        cases.append(Case("scripts/sweep.py", name, [python, "scripts/sweep.py", str(path), "--dry-run",
                                                     "--results-dir", str(work / "sweeps")]))
    varied = work / "custom-grid.yaml"  # valid, but W&B cannot vary one key of --optim.options
    varied.write_text(GOOD_SWEEP.replace(*CUSTOM_GRID).replace(*CUSTOM_ARMS))
    cases.append(Case("scripts/sweep.py", "W&B export varying one options key",
                      [python, "scripts/sweep.py", str(varied), "--export-wandb", str(work / "wandb")]))
    good = work / "good-sweep.yaml"
    good.write_text(GOOD_SWEEP)
    for name, flags in SWEEP_FLAGS.items():
        config = str(work / "missing.yaml") if flags == "MISSING" else str(good)
        argv = [python, "scripts/sweep.py", config, "--results-dir", str(work / "sweeps"),
                *([] if flags == "MISSING" else flags.format(file=a_file).split())]
        cases.append(Case("scripts/sweep.py", name, argv))
    broken = work / "analysis"
    shutil.copytree(finished, broken / "adam__s1")
    (broken / "adam__s1" / "config.json").write_text('{"schema_version": 1, "algo')
    for name, argv in (("missing folder", [str(work / "nope")]), ("final-window 0", [str(broken), "--final-window", "0"]),
                       ("a file instead of a folder", [str(a_file)]), ("no records yet", [str(work / "x" / "records")]),
                       ("max-points 0", [str(broken), "--max-points", "0"])):
        cases.append(Case("scripts/analyze.py", name, [python, "scripts/analyze.py", *argv, "--output",
                                                       str(work / "report")]))
    return cases


@dataclass
class Args:
    workers: int = 2
    """cases run at a time"""
    output: Path | None = None
    """also write every case and its outcome as JSON here"""


def main(args: Args) -> int:
    with tempfile.TemporaryDirectory() as folder:
        cases = build_cases(Path(folder))
        with ThreadPoolExecutor(args.workers) as pool:
            cases = list(pool.map(run_case, cases))
    tally: dict[str, int] = {}
    for case in cases:
        tally[case.outcome] = tally.get(case.outcome, 0) + 1
        if case.outcome != "clear error":
            print(f"{case.outcome.upper():18s} {case.entry}: {case.name}: {case.detail}")
    print(f"\n{len(cases)} bad inputs: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally.items())))
    if args.output:
        args.output.write_text(json.dumps([case.__dict__ | {"keep": str(case.keep)} for case in cases], indent=1))
    return 0 if set(tally) == {"clear error"} else 1


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
