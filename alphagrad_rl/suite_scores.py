"""Scores across a suite of tasks (Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice"; the
statistics of rliable): each run's return normalized per task, then aggregated over every task's runs.

- Normalized score: (return - random policy's) / (reference's - random policy's): 0 is the random policy, 1 the
  reference (the suite's tuned Adam).
- Aggregates over the runs of all tasks (each task a stratum of runs): IQM (the 25% trimmed mean of all scores
  pooled), mean and median of the per-task mean scores, optimality gap (the mean shortfall below 1: 1 - mean of
  min(score, 1)), and the average over tasks of the probability of improvement P(X > Y) (Mann-Whitney U / n m, ties
  one half) of one optimizer's runs over another's.
- 95% intervals: stratified bootstrap (each task's runs resampled apart; for an improvement probability, each
  optimizer's too), BCa, with resamples added until two seeds agree to 1% of the interval's width
  (analysis.stable_monte_carlo_bca). rliable's are percentile intervals of the same bootstrap;
  tests/test_suite_scores.py checks the point estimates and percentile intervals against rliable itself.
- Performance profile: the fraction of all runs whose score exceeds tau, for each tau of a grid.
Analysis layer: numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .analysis import probability_of_improvement, stable_monte_carlo_bca, stratified_iqm

Strata = Sequence[Sequence[float]]  # one optimizer's normalized scores: per task, its runs' scores


def normalized(returns: Sequence[float], random_score: float, reference_score: float) -> np.ndarray:
    """Returns on one task as normalized scores (0: the random policy, 1: the reference). ValueError when the two
    anchors are equal (no scale)."""
    if reference_score == random_score:
        raise ValueError(f"invalid anchors: the reference score equals the random policy's ({random_score}); allowed: "
                         "two different scores")
    return (np.asarray(returns, dtype=float) - random_score) / (reference_score - random_score)


def mean_of_task_means(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean([np.mean(s, axis=axis) for s in strata], axis=0)


def median_of_task_means(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median([np.mean(s, axis=axis) for s in strata], axis=0)


def optimality_gap(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    return 1.0 - np.mean(np.minimum(np.concatenate(strata, axis=axis), 1.0), axis=axis)


AGGREGATES: dict[str, Callable[..., np.ndarray]] = {
    "IQM": stratified_iqm, "mean": mean_of_task_means, "median": median_of_task_means,
    "optimality gap": optimality_gap}


def mean_improvement_probability(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    """The average over tasks of P(X > Y); `strata` are X's tasks then Y's, in the same task order."""
    tasks = len(strata) // 2
    return np.mean([probability_of_improvement(strata[t], strata[tasks + t], axis=axis) for t in range(tasks)], axis=0)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _estimate(samples: list[np.ndarray], statistic: Callable[..., np.ndarray]) -> Estimate:
    value = float(statistic(*samples))
    if any(len(s) < 2 for s in samples) or all(np.ptp(s) == 0 for s in samples):
        return Estimate(value, value, value)  # nothing to resample
    (low, high), _ = stable_monte_carlo_bca(samples, statistic)
    return Estimate(value, low, high)


def aggregate(scores: Strata) -> dict[str, Estimate]:
    """Every aggregate of AGGREGATES over one optimizer's scores (per task, its runs), with its 95% interval."""
    samples = [np.asarray(task, dtype=float) for task in scores]
    if not samples or any(len(task) == 0 for task in samples):
        raise ValueError("invalid scores: every task needs at least one run's score")
    return {name: _estimate(samples, statistic) for name, statistic in AGGREGATES.items()}


def improvement_over(scores: Strata, baseline: Strata) -> Estimate:
    """The average over tasks of P(a run of `scores` beats one of `baseline` on that task), with its 95% interval."""
    if len(scores) != len(baseline):
        raise ValueError(f"invalid comparison: {len(scores)} tasks against {len(baseline)} (allowed: the same tasks)")
    return _estimate([np.asarray(task, dtype=float) for task in (*scores, *baseline)], mean_improvement_probability)


def performance_profile(scores: Strata, taus: Sequence[float]) -> np.ndarray:
    """The fraction of all runs (every task's, each task weighed by its runs) whose score exceeds each tau."""
    pooled = np.concatenate([np.asarray(task, dtype=float) for task in scores])
    return np.array([float(np.mean(pooled > tau)) for tau in taus])
