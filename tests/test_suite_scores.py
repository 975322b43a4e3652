"""Cross-task scores (alphagrad_rl.suite_scores) against rliable itself, and their intervals' stability."""

import numpy as np
import pytest
from scipy import stats

from alphagrad_rl.suite_scores import (
    AGGREGATES,
    aggregate,
    improvement_over,
    mean_improvement_probability,
    normalized,
    performance_profile,
)

TASKS, RUNS = 3, 10
REPS = 5000  # bootstrap resamples of each side in the comparison with rliable (its own loop is slow): the bounds agree
# to Monte-Carlo error, a few % of the interval's width


def suite(seed: int, shift: float = 0.0) -> np.ndarray:
    """Scores of RUNS runs on TASKS tasks (rliable's layout: runs x tasks), skewed and of different spread per task."""
    rng = np.random.default_rng(seed)
    return np.stack([shift + rng.gamma(2.0 + task, 0.3 * (task + 1), RUNS) - 0.5 for task in range(TASKS)], axis=1)


def strata(matrix: np.ndarray) -> list[np.ndarray]:
    return [matrix[:, task] for task in range(matrix.shape[1])]


def test_point_estimates_and_profiles_equal_rliables():
    metrics = pytest.importorskip("rliable.metrics")
    rly = pytest.importorskip("rliable.library")
    x, y = suite(0, shift=0.3), suite(1)
    ours = aggregate(strata(x))
    theirs = {"IQM": metrics.aggregate_iqm(x), "mean": metrics.aggregate_mean(x),
              "median": metrics.aggregate_median(x), "optimality gap": metrics.aggregate_optimality_gap(x)}
    for name in AGGREGATES:
        assert ours[name].value == pytest.approx(theirs[name], abs=1e-12), name
        assert ours[name].low < ours[name].value < ours[name].high, name
    assert improvement_over(strata(x), strata(y)).value == pytest.approx(
        metrics.probability_of_improvement(x, y), abs=1e-12)
    taus = np.linspace(-0.5, 3.0, 15)
    profile, _ = rly.create_performance_profile({"x": x}, taus, reps=10)
    np.testing.assert_allclose(performance_profile(strata(x), taus), profile["x"], atol=1e-12)


@pytest.mark.filterwarnings("ignore:random_state is deprecated:FutureWarning")  # arch, inside rliable
@pytest.mark.parametrize("name", ["IQM", "mean", "optimality gap", "improvement"])
def test_the_stratified_bootstrap_resamples_as_rliables(name):
    """The same bootstrap as rliable's (each task's runs resampled apart; two optimizers independently): percentile
    intervals of both agree to Monte-Carlo error."""
    rly = pytest.importorskip("rliable.library")
    metrics = pytest.importorskip("rliable.metrics")
    x, y = suite(2, shift=0.2), suite(3)
    if name == "improvement":
        samples, ours_statistic = [*strata(x), *strata(y)], mean_improvement_probability
        _, theirs = rly.get_interval_estimates({"xy": [x, y]}, metrics.probability_of_improvement, reps=REPS,
                                               random_state=np.random.RandomState(0))
    else:
        samples, ours_statistic = strata(x), AGGREGATES[name]
        rliable_statistic = {"IQM": metrics.aggregate_iqm, "mean": metrics.aggregate_mean,
                             "optimality gap": metrics.aggregate_optimality_gap}[name]
        _, theirs = rly.get_interval_estimates({"xy": x}, rliable_statistic, reps=REPS,
                                               random_state=np.random.RandomState(0))
    ours = stats.bootstrap(samples, ours_statistic, vectorized=True, paired=False, method="percentile",
                           n_resamples=REPS, rng=np.random.default_rng(0)).confidence_interval
    low, high = np.ravel(theirs["xy"])
    assert abs(ours.low - low) < 0.08 * (high - low) and abs(ours.high - high) < 0.08 * (high - low), \
        (name, ours, (low, high))


def test_intervals_are_stable_to_monte_carlo_error():
    """Each reported bound moves by at most 1% of its interval's width with the bootstrap's seed (the resamples
    grow until it does)."""
    from alphagrad_rl.analysis import bootstrap_ci

    x = strata(suite(4))
    first = aggregate(x)["IQM"]
    for seed in (5, 6):
        low, high = bootstrap_ci(x, AGGREGATES["IQM"], seed, 400_000, vectorized=True)
        width = first.high - first.low
        assert abs(low - first.low) <= 0.02 * width and abs(high - first.high) <= 0.02 * width


def test_normalization_anchors_and_bad_input():
    np.testing.assert_allclose(normalized([20.0, 500.0, 260.0], random_score=20.0, reference_score=500.0), [0, 1, 0.5])
    with pytest.raises(ValueError, match="the reference score equals the random policy's"):
        normalized([1.0], 3.0, 3.0)
    with pytest.raises(ValueError, match="every task needs at least one run"):
        aggregate([[0.5, 0.7], []])
    with pytest.raises(ValueError, match="2 tasks against 1"):
        improvement_over([[1.0], [2.0]], [[1.0]])
    identical = aggregate([[0.5, 0.5], [1.0, 1.0]])  # nothing to resample: the interval is the point
    assert (identical["mean"].low, identical["mean"].value, identical["mean"].high) == (0.75, 0.75, 0.75)
