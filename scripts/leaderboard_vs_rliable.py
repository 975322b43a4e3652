"""The committed leaderboard's aggregate statistics recomputed with rliable (Agarwal et al., 2021) itself: for each
optimizer, the point estimates (IQM, mean, median, optimality gap, P(improvement over Adam)) and the 95% stratified
percentile-bootstrap intervals of both implementations, and their largest differences. Needs the optional extra
`rliable` (pip install -e ".[rliable]"; make install adds it).

    python scripts/leaderboard_vs_rliable.py                  # the cpu profile of configs/benchmark.yaml
    python scripts/leaderboard_vs_rliable.py --profile full --reps 20000
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

from alphagrad_rl.leaderboard import build
from alphagrad_rl.suite import DEFAULT_SUITE, load_suite
from alphagrad_rl.suite_scores import AGGREGATES, mean_improvement_probability


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--leaderboard", type=Path, default=Path("results/leaderboard"))
    parser.add_argument("--reps", type=int, default=20_000, help="bootstrap resamples of each implementation")
    args = parser.parse_args()
    try:
        from rliable import library, metrics
    except ImportError as error:
        print(f"error: rliable is not installed ({error}); pip install -e \".[rliable]\"", file=sys.stderr)
        return 2
    suite = load_suite(args.suite, args.profile)
    board = build(suite, args.leaderboard)
    if board is None:
        print(f"error: no leaderboard yet under {args.leaderboard / suite.profile} (it needs the anchors and the "
              f"{suite.rules['reference']} row)", file=sys.stderr)
        return 1
    theirs_of = {"IQM": metrics.aggregate_iqm, "mean": metrics.aggregate_mean, "median": metrics.aggregate_median,
                 "optimality gap": metrics.aggregate_optimality_gap}
    reference = next(row for row in board.rows if row.name == suite.rules["reference"])
    matrix = {row.name: np.stack(row.scores, axis=1) for row in board.rows}  # rliable's layout: runs x tasks
    largest_point, largest_bound = 0.0, 0.0
    print(f"{len(board.rows)} optimizer(s), {len(suite.tasks)} tasks, {args.reps:,} resamples a side")
    print(f"{'optimizer':14s} {'statistic':16s} {'ours':>9s} {'rliable':>9s} {'ours 95% (percentile)':>24s} "
          f"{'rliable 95%':>22s}")
    for row in board.rows:
        checks = [(name, board.aggregates[row.name][name].value, theirs_of[name](matrix[row.name]), row.scores,
                   AGGREGATES[name], {row.name: matrix[row.name]}, theirs_of[name]) for name in AGGREGATES]
        checks.append(("P(improvement)", board.improvement[row.name].value,
                       metrics.probability_of_improvement(matrix[row.name], matrix[reference.name]),
                       [*row.scores, *reference.scores], mean_improvement_probability,
                       {"pair": [matrix[row.name], matrix[reference.name]]}, metrics.probability_of_improvement))
        for name, ours, theirs, samples, statistic, scores, rliable_statistic in checks:
            ours_interval = stats.bootstrap(samples, statistic, vectorized=True, paired=False, method="percentile",
                                            n_resamples=args.reps, rng=np.random.default_rng(0)).confidence_interval
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # arch's random_state deprecation, inside rliable
                _, interval = library.get_interval_estimates(scores, rliable_statistic, reps=args.reps,
                                                             random_state=np.random.RandomState(0))
            low, high = np.ravel(next(iter(interval.values())))
            width = max(high - low, 1e-12)
            largest_point = max(largest_point, abs(ours - theirs))
            largest_bound = max(largest_bound, abs(ours_interval.low - low) / width,
                                abs(ours_interval.high - high) / width)
            print(f"{row.name:14s} {name:16s} {ours:9.4f} {theirs:9.4f} "
                  f"[{ours_interval.low:9.4f}, {ours_interval.high:9.4f}] [{low:9.4f}, {high:9.4f}]")
    print(f"largest difference of a point estimate: {largest_point:.2e}; of an interval bound: "
          f"{100 * largest_bound:.1f}% of rliable's interval width (Monte-Carlo error at {args.reps:,} resamples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
