"""Tune an optimizer's hyperparameters (AlphaGrad's alpha and lr, say) with Optuna over several seeds per trial,
then evaluate the best settings on fresh seeds (see alphagrad_rl.tuning for the config and the method).

    python scripts/tune.py configs/tune_dqn_cartpole.yaml                   # one tuner process
    python scripts/tune.py CONFIG --worker-id 1 &                           # more processes share the study
    python scripts/tune.py CONFIG                                           # again after a kill: resumes
    python scripts/tune.py CONFIG --no-final                                # search only

The study is <results_dir>/<name>/study.journal; trial runs go to <results_dir>/<name>/trials/. When the study
has its trials, one process runs the final evaluation (sweep <name>-final: the tuned arm and the config's
baselines on fresh seeds) and writes <output>/: TUNING.md, tuning.png, trials.csv, best.json, final-sweep.yaml,
the final sweep's compact records and REPORT.md. Exit status 0 when the study and its final evaluation are done.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import tyro

from alphagrad_rl.agents import sweep_registry
from alphagrad_rl.cli import sigterm_as_interrupt
from alphagrad_rl.runs import check_results_dir
from alphagrad_rl.sweep import LaunchOptions
from alphagrad_rl.sweep_config import SweepConfigError
from alphagrad_rl.tuning import evaluate_best, load_tune_config, study_finished, trial_counts, tune


@dataclass
class Args:
    config: tyro.conf.Positional[Path]
    """the tuning config (YAML)"""
    results_dir: Path = Path("results/runs")
    """the study and its runs go to <results_dir>/<name>/, the final evaluation's runs to <results_dir>/<name>-final/"""
    output: Path | None = None
    """where the tuning report goes; default results/<name>"""
    worker_id: int = 0
    """this tuner process's number among those sharing the study (seeds its sampler apart from the others')"""
    max_trials: int | None = None
    """run at most this many trials in this process (default: until the study has its trials)"""
    grace_s: float = 600.0
    """a running trial whose tuner has not sent a heartbeat for this long is retried (same host: at once when
    that tuner's process is gone)"""
    final: bool = True
    """run the final evaluation on fresh seeds once the study has its trials"""
    final_workers: int = 0
    """parallel processes of the final evaluation; 0: one per core"""
    population_size: int = 10
    """the final evaluation packs runs into populations of this many (agents with a population variant)"""
    track: bool = False
    """log every trial's runs to Weights & Biases (group: the study; job type: the trial), and the final
    evaluation's (group: its sweep; job type: the arm)"""


def final_evaluation(args: Args, config, study: optuna.Study, output: Path) -> int:
    """Run the best settings and the baselines on fresh seeds (exit status 1 when a run did not finish)."""
    done = evaluate_best(config, study, args.results_dir, output, sweep_registry(),
                         LaunchOptions(workers=args.final_workers, population_size=args.population_size,
                                       track=args.track))
    if done is None:
        return 0
    unfinished = [name for name, summary in done["summaries"].items() if (summary or {}).get("status") != "finished"]
    if unfinished:
        print(f"{len(unfinished)} final run(s) did not finish: {', '.join(unfinished)}", file=sys.stderr)
        return 1
    return 0


def main(args: Args) -> int:
    if args.worker_id < 0 or (args.max_trials is not None and args.max_trials < 1) or not args.grace_s > 0:
        print(f"error: invalid --worker-id {args.worker_id}, --max-trials {args.max_trials} or --grace-s "
              f"{args.grace_s} (allowed: >= 0, >= 1, > 0)", file=sys.stderr)
        return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        config = load_tune_config(args.config, sweep_registry())
        output = args.output or Path("results") / config.name
        check_results_dir(output, "--output folder")  # before the study, not after hours of trials
        with sigterm_as_interrupt():
            study = tune(config, args.results_dir, args.worker_id, args.grace_s, max_trials=args.max_trials,
                         track=args.track)
            if not study_finished(config, study):
                counts = trial_counts(study)
                print(f"study {config.name}: {counts['complete'] + counts['pruned']}/{config.trials} trials finished, "
                      f"{counts['running']} running elsewhere; run again to go on")
                return 1 if args.max_trials is None else 0
            if not args.final:
                return 0
            return final_evaluation(args, config, study, output)
    except (SweepConfigError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the running runs saved a checkpoint; the same command resumes the study", file=sys.stderr)
        return 130


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line (`alphagrad-rl tune`, or `python scripts/tune.py` in a clone): its exit status."""
    return main(tyro.cli(Args, args=argv, prog=prog))


if __name__ == "__main__":
    sys.exit(run())
