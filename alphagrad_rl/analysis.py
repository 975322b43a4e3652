"""Analysis of a sweep's run records: tidy table of per-run metrics, per-arm statistics with confidence
intervals, and what the figures and the claims (alphagrad_rl.claims) are computed from.

Statistics (scipy; rliable 1.2.0 does not import under pandas 3):
- IQM: the interquartile mean, scipy.stats.trim_mean(x, 0.25).
- 95% CIs of the IQM: BCa bootstrap, stratified by environment (each environment's runs are resampled
  separately, as rliable does across tasks), computed from the exact bootstrap distribution (every distinct
  resample with its probability) wherever it has at most EXACT_RESAMPLES members (10 runs per environment:
  92,378), so an interval has no Monte-Carlo error; beyond, Monte-Carlo BCa with resamples added until two
  seeds agree to 1% of the interval's width (iqm_ci).
- Probability of improvement P(X > Y) = Mann-Whitney U / (n m) (ties count one half), with the Brunner-Munzel
  95% CI (Brunner and Munzel, 2000: a t interval on the rank placements, no resampling).
Per-run metrics (on the episodic-return curve smoothed by a 10-episode moving mean where it says so):
- final return: mean of the last `final_window` episodes; peak return: the best smoothed value; early return:
  mean return of the episodes that end in the first quarter of the steps; area under the curve (auc): the
  mean return over training.
- mean drawdown: the mean over episodes of (best smoothed return so far - smoothed return); 0 for a
  monotonic curve. Measures "smooth, almost monotonic" (TD3) and oscillation (DQN).
- variability: the standard deviation of step-to-step changes of the smoothed curve on a 100-point grid (of
  the return, of TD3's Q-values and of its actor loss).
- TD-loss spikes (DQN): logged TD losses that are non-finite or above 5 times the median of the 20 before
  (spikes relative to the recent level); TD-loss p99: the 99th percentile of the logged TD losses (their
  absolute size).
- PPO: explained variance (mean over the last 25% of iterations), entropy drop (mean of the first 10% minus
  the last 10%), approx KL (mean over iterations).
- frozen updates: the largest, over the networks whose update norms were logged, of the fraction of their logged
  updates that changed no parameter; a run above FROZEN_FRACTION has a network that stopped learning (TD3: an
  actor whose tanh saturated, so its gradient is exactly 0 in float32).
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import re
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special, stats

from .runs import (
    COMPACT_SUFFIX,
    RESUME_MAY_CHANGE,
    config_differences,
    flatten_config,
    is_added_later_default,
    read_run,
    write_compact_record,
)

SMOOTHING_EPISODES = 10
SPIKE_FACTOR, SPIKE_WINDOW = 5.0, 20
CONFIDENCE = 0.95
EPISODE_METRICS = ("charts/episodic_return", "charts/episodic_length")
PANELS = {
    "dqn": ["charts/episodic_return", "charts/episodic_length", "losses/td_loss", "losses/q_values"],
    "td3_continuous_action": ["charts/episodic_return", "losses/qf1_values", "losses/actor_loss"],
    "ppo_continuous_action": ["charts/episodic_return", "losses/explained_variance", "losses/entropy",
                              "losses/approx_kl"],
}
TABLE_COLUMNS = ["run", "arm", "algorithm", "env_id", "optimizer", "alpha", "lr", "seed", "status", "final_return",
                 "auc", "best_return", "peak_return", "start_return", "early_return", "episodes", "mean_drawdown",
                 "relative_drawdown", "peak_retention", "variability", "td_loss_spikes", "td_loss_p99",
                 "dip_spike_correlation", "explained_variance", "entropy_drop", "approx_kl",
                 "q_value_variability", "actor_loss_variability", "saturation", "frozen_updates", "wall_clock_s", "sps"]
# the series a per-run column is computed from (td_loss_spikes and _p99, q-value and actor-loss variability, the PPO
# columns): a compact record keeps each whole and unrounded, so that every column recomputes from it
COLUMN_INPUTS = ("losses/td_loss", "losses/qf1_values", "losses/actor_loss", "losses/explained_variance",
                 "losses/entropy", "losses/approx_kl")
EARLY_FRACTION = 0.25  # early_return: the mean return of the episodes ending in the first quarter of the steps
FROZEN_FRACTION = 0.5  # a run froze: more than this fraction of one network's logged updates changed nothing


# ---- statistics ----

def edge_of_search(value: float, low: float, high: float, log: bool, fraction: float = 0.1) -> str | None:
    """"low" or "high" when `value` lies within `fraction` of its searched range [low, high] (on a log scale for a
    log range) of that end, else None: a best setting there may have its optimum outside the range searched."""
    scale = math.log if log else float
    position = (scale(value) - scale(low)) / (scale(high) - scale(low))
    return "low" if position < fraction else "high" if position > 1 - fraction else None


def iqm(values: Sequence[float]) -> float:
    return float(stats.trim_mean(np.asarray(values, dtype=float), 0.25))


def bootstrap_ci(strata: Sequence[Sequence[float]], statistic, seed: int = 0, resamples: int = 2000,
                 vectorized: bool = False) -> tuple[float, float]:
    """BCa bootstrap CI of statistic(*strata), resampling each stratum separately (the percentile interval
    where BCa is undefined, e.g. a constant sample). `vectorized`: the statistic takes `axis` and computes every
    resample at once (stratified_iqm, probability_of_improvement), the same values as one resample at a time."""
    samples = [np.asarray(s, dtype=float) for s in strata]
    if any(len(s) < 2 for s in samples):
        value = statistic(*samples)
        return value, value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on a degenerate sample warns and returns NaN: the fallback below
        result = stats.bootstrap(samples, statistic, vectorized=vectorized, paired=False, confidence_level=CONFIDENCE,
                                 n_resamples=resamples, method="BCa", rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        distribution = result.bootstrap_distribution
        low, high = (float(np.percentile(distribution, q)) for q in (2.5, 97.5))
    return low, high


EXACT_RESAMPLES = 250_000  # the most distinct resamples iqm_ci enumerates (a stratum of 10 runs has 92,378)
MONTE_CARLO_RESAMPLES = 100_000  # iqm_ci's first Monte-Carlo size beyond it (x4 until stable, at most 6.4M)


def iqm_ci(strata: Sequence[Sequence[float]]) -> tuple[float, float]:
    """The 95% BCa interval of the stratified IQM (stratified_iqm), from the exact bootstrap distribution when it
    has at most EXACT_RESAMPLES distinct resamples, else by Monte Carlo with enough resamples that two seeds give
    bounds within 1% of the interval's width. Both equal (value, value) for a stratum of one run."""
    samples = [np.asarray(s, dtype=float) for s in strata]
    if any(len(s) < 2 for s in samples):
        value = float(stratified_iqm(*samples))
        return value, value
    if math.prod(math.comb(2 * len(s) - 1, len(s)) for s in samples) <= EXACT_RESAMPLES:
        return exact_bca(samples, stratified_iqm)
    return stable_monte_carlo_bca(samples, stratified_iqm)[0]


def stable_monte_carlo_bca(samples: list[np.ndarray], statistic) -> tuple[tuple[float, float], int]:
    """A vectorized statistic's Monte-Carlo BCa interval (bootstrap_ci, seed 0) with MONTE_CARLO_RESAMPLES, x4 until
    seeds 0 and 1 give bounds within 1% of the width (at most 6.4M); returns it and the resamples it took."""
    resamples = MONTE_CARLO_RESAMPLES
    while True:
        first, second = (bootstrap_ci(samples, statistic, seed, resamples, vectorized=True) for seed in (0, 1))
        if max(abs(a - b) for a, b in zip(first, second)) <= 0.01 * (first[1] - first[0]) or resamples >= 6_400_000:
            return first, resamples
        resamples *= 4


@functools.cache
def _multisets(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct bootstrap resample of n runs, as index rows (each multiset once), and its probability
    (multinomial: n! / prod(counts!) / n^n)."""
    rows = np.array(list(itertools.combinations_with_replacement(range(n), n)), dtype=np.int64)
    counts = (rows[:, :, None] == np.arange(n)).sum(axis=1)
    log_probability = math.lgamma(n + 1) - special.gammaln(counts + 1).sum(axis=1) - n * math.log(n)
    return rows, np.exp(log_probability)


def exact_bca(samples: list[np.ndarray], statistic) -> tuple[float, float]:
    """The 95% BCa interval (Efron and Tibshirani, 1993, 14.3) of statistic(*samples, axis=-1) from its exact
    bootstrap distribution: each sample resampled on its own, every combination of distinct resamples weighed by
    its probability. z0 counts ties half (as scipy's BCa), the acceleration is the jackknife's over each sample, and
    the bounds are the distribution's quantiles (the limit of scipy's with infinitely many resamples); where z0 is
    infinite, the percentile interval."""
    tables = [_multisets(len(s)) for s in samples]
    grids = np.meshgrid(*(np.arange(len(rows)) for rows, _ in tables), indexing="ij")
    picks = [grid.ravel() for grid in grids]
    resampled = [s[rows[pick]] for s, (rows, _), pick in zip(samples, tables, picks)]
    probability = np.prod([weights[pick] for (_, weights), pick in zip(tables, picks)], axis=0)
    values = np.asarray(statistic(*resampled, axis=-1), dtype=float)
    estimate = float(statistic(*samples, axis=-1))
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(probability[order])
    cumulative /= cumulative[-1]

    def quantile(level: float) -> float:
        return float(values[min(np.searchsorted(cumulative, level - 1e-12), len(values) - 1)])

    def mass(side: str) -> float:  # the probability of the values below the estimate ("left") or not above it
        count = np.searchsorted(values, estimate, side)
        return float(cumulative[count - 1]) if count else 0.0

    z0 = special.ndtri((mass("left") + mass("right")) / 2)
    alpha = (1 - CONFIDENCE) / 2
    if not math.isfinite(z0):
        return quantile(alpha), quantile(1 - alpha)
    numerator = denominator = 0.0
    for j, sample in enumerate(samples):  # the jackknife of each sample, the others whole
        leave_one_out = np.array([statistic(*[np.delete(sample, i) if k == j else other
                                              for k, other in enumerate(samples)], axis=-1)
                                  for i in range(len(sample))])
        u = (len(sample) - 1) * (leave_one_out.mean() - leave_one_out)
        numerator += float((u ** 3).sum()) / len(sample) ** 3
        denominator += float((u ** 2).sum()) / len(sample) ** 2
    acceleration = numerator / (6 * denominator ** 1.5) if denominator > 0 else 0.0
    levels = [special.ndtr(z0 + (z0 + z) / (1 - acceleration * (z0 + z))) for z in special.ndtri([alpha, 1 - alpha])]
    return quantile(levels[0]), quantile(levels[1])


def improvement_ci(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """The 95% Brunner-Munzel interval of P(X > Y) + P(X = Y) / 2 (probability_of_improvement): the estimate plus or
    minus t(df) times its rank-placement standard error (Brunner and Munzel, 2000; df by Satterthwaite, as
    scipy.stats.brunnermunzel), clipped to [0, 1]. A point where both arms' placements have no spread."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n, m = len(x), len(y)
    pooled = stats.rankdata(np.concatenate([x, y]))
    spread = [float(np.var(pooled[part] - stats.rankdata(values), ddof=1))
              for part, values in ((slice(0, n), x), (slice(n, None), y))]
    estimate = float(probability_of_improvement(x, y))
    variance = n * spread[0] + m * spread[1]
    if variance == 0:
        return estimate, estimate
    df = variance ** 2 / ((n * spread[0]) ** 2 / (n - 1) + (m * spread[1]) ** 2 / (m - 1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * math.sqrt(variance) / (n * m)
    return max(0.0, estimate - half), min(1.0, estimate + half)


def stratified_iqm(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    """The IQM of the strata pooled, along `axis` (a bootstrap's resamples at once)."""
    return stats.trim_mean(np.concatenate(strata, axis=axis), 0.25, axis=axis)


def probability_of_improvement(x: Sequence[float], y: Sequence[float], axis: int = -1) -> float | np.ndarray:
    """P(X > Y) for a random run of each arm (ties count one half): the Mann-Whitney U over n m; along `axis` for
    a bootstrap's resamples at once."""
    x, y = (np.moveaxis(np.asarray(v, dtype=float), axis, -1) for v in (x, y))
    pairs = x[..., :, None] - y[..., None, :]
    u = (pairs > 0).sum(axis=(-2, -1)) + 0.5 * (pairs == 0).sum(axis=(-2, -1))  # exact: an integer or a half
    p = u / (x.shape[-1] * y.shape[-1])
    return float(p) if p.ndim == 0 else p


# ---- per-run metrics ----

def smoothed(values: Sequence[float], window: int = SMOOTHING_EPISODES) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return values
    window = min(window, len(values))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def mean_drawdown(returns: Sequence[float]) -> float:
    curve = smoothed(returns)
    return float(np.mean(np.maximum.accumulate(curve) - curve)) if len(curve) else math.nan


def variability(steps: Sequence[float], returns: Sequence[float], points: int = 100) -> float:
    curve = smoothed(returns)
    if len(curve) < 2:
        return math.nan
    curve_steps = np.asarray(steps, dtype=float)[len(steps) - len(curve):]
    grid = np.linspace(curve_steps[0], curve_steps[-1], points)
    return float(np.std(np.diff(np.interp(grid, curve_steps, curve))))


def peak_return(returns: Sequence[float]) -> float:
    """The best SMOOTHING_EPISODES-episode moving mean of the returns (a peak that one lucky episode cannot make)."""
    curve = smoothed(returns)
    return float(np.nanmax(curve)) if np.isfinite(curve).any() else math.nan


def tail_mean(values: np.ndarray, fraction: float, head: bool = False) -> float:
    """Mean of the last (or with `head`, the first) `fraction` of a logged series (at least one value)."""
    if not len(values):
        return math.nan
    count = max(1, int(round(fraction * len(values))))
    return float(np.mean(values[:count] if head else values[-count:]))


def spike_count(losses: Sequence[float]) -> int:
    """Logged losses that are non-finite, or above SPIKE_FACTOR x the median of the SPIKE_WINDOW finite ones before."""
    losses = np.asarray(losses, dtype=float)
    finite = losses[np.isfinite(losses)]
    positions = np.cumsum(np.isfinite(losses)) - np.isfinite(losses)  # finite values before each logged loss
    return int(sum(not math.isfinite(loss) or (start >= SPIKE_WINDOW and
                                               loss > SPIKE_FACTOR * np.median(finite[start - SPIKE_WINDOW:start]))
                   for loss, start in zip(losses, positions)))


COINCIDENCE_WINDOWS = 20  # dip_spike_correlation: the run's steps in this many equal windows
COINCIDENCE_MIN_PAIRS = 5


def dip_spike_correlation(return_steps: Sequence[float], returns: Sequence[float], loss_steps: Sequence[float],
                          losses: Sequence[float], total: float) -> float:
    """Whether a run's return dips come with its loss spikes: over COINCIDENCE_WINDOWS equal windows of its `total`
    steps, Spearman's correlation between a window's largest loss (non-finite counts as largest) and the fall of
    its mean episodic return from the window before. NaN with fewer than COINCIDENCE_MIN_PAIRS windows holding both,
    or when either series is constant."""
    if not total or not len(returns) or not len(losses):
        return math.nan
    edges = np.linspace(0.0, float(total), COINCIDENCE_WINDOWS + 1)

    def window_of(steps):
        return np.clip(np.searchsorted(edges, np.asarray(steps, dtype=float), side="right") - 1, 0,
                       COINCIDENCE_WINDOWS - 1)

    returns, losses = np.asarray(returns, dtype=float), np.asarray(losses, dtype=float)
    losses = np.where(np.isnan(losses), -np.inf, losses)  # a NaN loss is missing; an infinite one the largest
    return_window, loss_window = window_of(return_steps), window_of(loss_steps)
    means = np.array([np.mean(returns[return_window == w]) if (return_window == w).any() else math.nan
                      for w in range(COINCIDENCE_WINDOWS)])
    largest = np.array([np.max(losses[loss_window == w]) if (loss_window == w).any() else -np.inf
                        for w in range(COINCIDENCE_WINDOWS)])
    falls = means[:-1] - means[1:]
    peaks = largest[1:]
    kept = np.isfinite(falls) & (peaks > -np.inf)
    if kept.sum() < COINCIDENCE_MIN_PAIRS or np.ptp(falls[kept]) == 0 or len(set(peaks[kept])) < 2:
        return math.nan
    return float(stats.spearmanr(peaks[kept], falls[kept]).statistic)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if math.isfinite(numerator) and math.isfinite(denominator) and denominator > 0 \
        else math.nan


def loss_percentile(losses: Sequence[float], q: float) -> float:
    """q-th percentile of the logged losses, NaN ignored; infinite where it interpolates towards an infinite loss
    (numpy's interpolation gives NaN there)."""
    losses = np.asarray(losses, dtype=float)
    with np.errstate(invalid="ignore"):
        value = float(np.nanpercentile(losses, q))
    return math.inf if math.isnan(value) and np.isposinf(losses).any() else value


def _value(logged: Any) -> float | None:
    """A logged metric as a float: numbers, and the strings "nan", "inf", "-inf" the run record writes for them."""
    if isinstance(logged, (int, float)) and not isinstance(logged, bool):
        return float(logged)
    if logged in ("nan", "inf", "-inf"):
        return float(logged)
    return None


def series(metrics: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(row["step"], _value(row.get(name))) for row in metrics if _value(row.get(name)) is not None]
    if not rows:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*rows)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


# ---- loading ----

@dataclass
class Run:
    name: str
    arm: str
    algorithm: str
    env_id: str
    optimizer: str
    alpha: float | None
    seed: int
    status: str
    summary: dict[str, Any]
    metrics: list[dict] = field(repr=False)
    row: dict[str, Any] = field(default_factory=dict)
    excluded: str | None = None  # why a finished run is left out of the statistics
    header: dict[str, Any] = field(default_factory=dict, repr=False)  # its config.json (schema, algorithm, config)

    @property
    def included(self) -> bool:
        """Whether the run counts in the statistics: finished, with a finite final return."""
        return self.status == "finished" and self.excluded is None

    @property
    def reason_left_out(self) -> str:
        if self.status != "finished":
            error = (self.summary.get("error") or "").strip().splitlines()
            return f"{self.status}" + (f": {error[-1][:160]}" if error else "")
        return self.excluded or ""

    @property
    def settings(self) -> dict[str, Any]:
        """Its options as dotted keys (runs.flatten_config), without its seed, the options that change nothing
        it computes (RESUME_MAY_CHANGE) and those added later at the value that computes what a record made before
        them did (checkpoint.ADDED_LATER): what the runs of one setting share."""
        return {key: value for key, value in flatten_config(self.header.get("config", {})).items()
                if key not in RESUME_MAY_CHANGE and key != "seed" and not is_added_later_default(key, value)}


def _optimizer_of(config: dict) -> tuple[str, float | None, float | None]:
    """(optimizer name, AlphaGrad's alpha or None, lr or None) of a run (TD3: its critic's optimizer)."""
    spec = config.get("optim") or config.get("critic_optim") or {}
    name = spec.get("name", "?")
    alpha = spec.get("alpha") if name.startswith("alphagrad") else None
    lr = spec.get("lr")
    return (name, float(alpha) if isinstance(alpha, (int, float)) else None,
            float(lr) if isinstance(lr, (int, float)) else None)


def network_saturation(metrics: list[dict]) -> float:
    """The mean over training of AlphaGrad's network-wide saturation ratio S (section 7.3; every
    `optimizer/<network>/saturation` value logged, all networks AlphaGrad steps); NaN when none was logged."""
    values = [value for row in metrics for key, value in row.items()
              if key.startswith("optimizer/") and key.endswith("/saturation") and key.count("/") == 2
              and isinstance(value, (int, float))]
    return float(np.mean(values)) if values else math.nan


def frozen_update_fraction(metrics: list[dict]) -> float:
    """The largest, over the networks with logged update norms (`optimizer/<network>/update_norm/<tensor>`,
    experiment.update_diagnostics), of the fraction of that network's logged updates in which every tensor's update
    norm was exactly 0: the update changed no parameter. NaN when no update norm was logged."""
    changed: dict[str, list[bool]] = {}
    for row in metrics:
        moved: dict[str, bool] = {}
        for key, value in row.items():
            if (logged := _update_norm(key, value)) is not None:
                network, norm = logged
                moved[network] = moved.get(network, False) or norm != 0
        for network, any_moved in moved.items():
            changed.setdefault(network, []).append(any_moved)
    return max(1 - float(np.mean(flags)) for flags in changed.values()) if changed else math.nan


def run_folders(sweep_dir: str | Path) -> list[Path]:
    """Every run record under `sweep_dir`: folders with config.json (at any depth, not inside another run) and
    compact record files (COMPACT_SUFFIX)."""
    folders = sorted(path.parent for path in Path(sweep_dir).rglob("config.json"))
    folders = [folder for folder in folders if not any(other in folder.parents for other in folders)]
    return sorted(folders + sorted(Path(sweep_dir).rglob(f"*{COMPACT_SUFFIX}")))


def compact_record_path(out_dir: str | Path, run_name: str) -> Path:
    """Where export_records writes the compact record of the run named `run_name`."""
    return Path(out_dir) / f"{run_name.replace('/', '--')}{COMPACT_SUFFIX}"


def export_records(sweep_dir: str | Path, out_dir: str | Path, final_window: int = 100,
                   max_points: int = 1000, only: Collection[str] | None = None, overwrite: bool = False) -> list[Path]:
    """Write a compact record (alphagrad_rl.runs.write_compact_record) of every finished or crashed run under
    `sweep_dir` (or of those named in `only`) into `out_dir`: every episode's return and length, the figure metrics
    (PANELS) thinned to at most `max_points` values each, and the per-run table row computed from the full record
    (so the statistics of a report made from the compact records are those of the full ones). A record already in
    `out_dir` is refreshed only from a run of the same options: one of other options (another budget, another
    environment, an edited arm) raises ValueError naming each, before anything is written, unless `overwrite`.
    Returns the files written."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    runs = [run for run in _runs_in(sweep_dir, final_window, only) if run.status in ("finished", "crashed")]
    if not overwrite:  # (a run still running or interrupted is exported once it ends)
        conflicts = [f"{path}: {'; '.join(differences)}" for run in runs
                     if (path := compact_record_path(out_dir, run.name)).exists()
                     and (differences := config_differences(_recorded_config(path), run.header.get("config", {}),
                                                            "committed"))]
        if conflicts:
            raise ValueError(f"{len(conflicts)} record(s) in {out_dir} were made from runs of other options than those "
                             f"in {sweep_dir}, and exporting would overwrite them; write the report elsewhere "
                             "(--output), or pass --overwrite to replace them:\n" + "\n".join(conflicts[:20])
                             + (f"\n... and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""))
    written = []
    for run in runs:
        kept = [name for name in PANELS.get(run.algorithm, []) if name not in EPISODE_METRICS + COLUMN_INPUTS]
        counts = {name: sum(name in row for row in run.metrics) for name in kept}
        strides = {name: max(1, math.ceil(count / max_points)) for name, count in counts.items()}
        seen = dict.fromkeys(kept, 0)
        metrics = []
        for row in run.metrics:
            compact = {key: row[key] for key in EPISODE_METRICS + COLUMN_INPUTS if key in row}
            for name in kept:
                if name in row:
                    if seen[name] % strides[name] == 0:
                        compact[name] = _rounded(row[name])
                    seen[name] += 1
            compact.update(_diagnostics_inputs(row))
            if compact:
                metrics.append({"step": row["step"], **compact})
        path = compact_record_path(out_dir, run.name)
        write_compact_record(path, {"config": run.header, "summary": run.summary}, metrics,
                             {"final_window": final_window, "row": run.row, "thinned": strides,
                              "complete_inputs": True})
        written.append(path)
    return written


def _diagnostics_inputs(row: dict[str, Any]) -> dict[str, Any]:
    """What network_saturation and frozen_update_fraction read of one logged row, in few keys: each network's
    saturation as logged, and per network whether any tensor's update norm was non-zero (1.0) or every one was 0
    (0.0), as `optimizer/<network>/update_norm/any_tensor`."""
    kept: dict[str, Any] = {}
    for key, value in row.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "optimizer" and parts[2] == "saturation":
            kept[key] = value
        elif (logged := _update_norm(key, value)) is not None:
            flag = f"optimizer/{logged[0]}/update_norm/any_tensor"
            kept[flag] = max(kept.get(flag, 0.0), float(logged[1] != 0))
    return kept


def _update_norm(key: str, value: Any) -> tuple[str, float] | None:
    """(network, norm) of a logged `optimizer/<network>/update_norm/<tensor>` value; None for any other metric."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "optimizer" and parts[2] == "update_norm" and (norm := _value(value)) is not None:
        return parts[1], norm
    return None


def _recorded_config(path: Path) -> dict[str, Any]:
    """The options a compact record was made with ({} when it cannot be read: then it counts as made with others)."""
    try:
        return read_run(path)["config"].get("config", {})
    except (OSError, ValueError, KeyError):
        return {}


def _rounded(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) and math.isfinite(value) else value


def load_runs(sweep_dirs: str | Path | Sequence[str | Path], final_window: int = 100) -> list[Run]:
    """Every run record under `sweep_dirs` (one sweep's folder, or several sweeps' analyzed together), with its
    tidy-table row. A record that cannot be read becomes a run with status "unreadable"; a finished run without a
    finite final return is `excluded` (with the reason). A run name found in two of the folders is an error."""
    runs: list[Run] = []
    found_in: dict[str, Path] = {}
    for sweep_dir in [sweep_dirs] if isinstance(sweep_dirs, (str, Path)) else sweep_dirs:
        for run in _runs_in(Path(sweep_dir), final_window):
            if run.name in found_in:
                raise ValueError(f"run {run.name!r} is in both {found_in[run.name]} and {sweep_dir}: analyze "
                                 "sweeps together only when their run names differ")
            found_in[run.name] = Path(sweep_dir)
            runs.append(run)
    return runs


VARIANT_SUFFIX = re.compile(r"[a-z0-9][a-z0-9.]*")


def as_variant(runs: Sequence[Run], suffix: str) -> list[Run]:
    """Runs of the same arms made under another condition (another simulator version, say), renamed as variants
    of their arms (adam__s1 -> adam-<suffix>__s1), so that a report measures each arm's difference as an extra
    arm against the arm it varies (claims.variant_comparisons)."""
    if not VARIANT_SUFFIX.fullmatch(suffix):
        raise ValueError(f"invalid variant suffix {suffix!r} (allowed: lower-case letters, digits and dots, e.g. "
                         "mujoco4)")
    renamed = []
    for run in runs:
        folder, _, name = run.name.rpartition("/")
        name = f"{run.arm}-{suffix}{name.removeprefix(run.arm)}"
        name = f"{folder}/{name}" if folder else name
        arm = f"{run.arm}-{suffix}"
        renamed.append(replace(run, name=name, arm=arm, row={**run.row, "run": name, "arm": arm}))
    return renamed


PROVENANCE_FILE = "provenance.json"  # in a records folder: {"software": {...}, "source": "..."} for older records


def stated_software(sweep_dir: Path) -> dict[str, Any] | None:
    """What a folder's PROVENANCE_FILE states about the software of its runs whose records predate the "software"
    field ({"software": {package: version}, "source": where that is known from}), or None."""
    try:
        stated = json.loads((sweep_dir / PROVENANCE_FILE).read_text())
    except FileNotFoundError:
        return None
    if not (isinstance(stated.get("software"), dict) and isinstance(stated.get("source"), str)):
        raise ValueError(f"{sweep_dir / PROVENANCE_FILE}: allowed: {{\"software\": {{package: version}}, \"source\": "
                         "text}")
    return stated


def _runs_in(sweep_dir: Path, final_window: int, only: Collection[str] | None = None) -> list[Run]:
    runs = []
    stated = stated_software(sweep_dir)
    for run_dir in run_folders(sweep_dir):
        name = run_dir.relative_to(sweep_dir).as_posix().removesuffix(COMPACT_SUFFIX).replace("--", "/")
        if only is not None and name not in only:
            continue
        arm = re.sub(r"__s-?\d+$", "", name.rsplit("/", 1)[-1])  # the run's configuration: its name less the seed
        try:
            record = read_run(run_dir)
            config = record["config"]["config"]
            algorithm = record["config"]["algorithm"]
        except (ValueError, KeyError, TypeError, OSError) as error:  # json.JSONDecodeError is a ValueError
            runs.append(Run(name, arm, "?", "?", "?", None, 0, "unreadable",
                            {"error": f"{run_dir / 'config.json'}: {type(error).__name__}: {error}"}, [],
                            row={"run": name, "arm": arm, "status": "unreadable"}))
            continue
        optimizer, alpha, lr = _optimizer_of(config)
        summary = record["summary"] or {}
        header = record["config"]
        if stated is not None and "software" not in header:
            header = {**header, "stated_software": stated}
        run = Run(name, arm if "__" in name else optimizer, algorithm, config.get("env_id", "?"), optimizer,
                  alpha, int(config.get("seed", 0)), summary.get("status") or "missing", summary, record["metrics"],
                  header=header)
        steps, returns = series(run.metrics, "charts/episodic_return")
        total = summary.get("total_timesteps") or (steps[-1] if len(steps) else 0)
        td_steps, td_losses = series(run.metrics, "losses/td_loss")
        _, explained = series(run.metrics, "losses/explained_variance")
        _, entropy = series(run.metrics, "losses/entropy")
        _, approx_kl = series(run.metrics, "losses/approx_kl")
        final = float(np.mean(returns[-final_window:])) if len(returns) else math.nan
        early = returns[steps <= EARLY_FRACTION * total] if total else returns[:0]
        peak = peak_return(returns)
        drawdown = mean_drawdown(returns)
        run.row = {
            "run": run.name, "arm": run.arm, "algorithm": run.algorithm, "env_id": run.env_id,
            "optimizer": optimizer, "alpha": alpha, "lr": lr, "seed": run.seed, "status": run.status,
            "final_return": final,
            # area under the return curve, per env step: the mean return over training
            "auc": float(np.trapezoid(returns, steps) / total) if len(returns) > 1 and total else math.nan,
            "best_return": float(np.nanmax(returns)) if np.isfinite(returns).any() else math.nan,
            "peak_return": peak,
            "start_return": float(np.mean(returns[:SMOOTHING_EPISODES])) if len(returns) else math.nan,
            "early_return": float(np.mean(early)) if len(early) else math.nan,
            "episodes": len(returns),
            "mean_drawdown": drawdown,
            "relative_drawdown": _ratio(drawdown, peak),
            "peak_retention": _ratio(final, peak),
            "variability": variability(steps, returns),
            "td_loss_spikes": spike_count(td_losses) if len(td_losses) else None,
            "td_loss_p99": loss_percentile(td_losses, 99) if len(td_losses) else None,
            "dip_spike_correlation": dip_spike_correlation(steps, returns, td_steps, td_losses, total)
            if len(td_losses) else None,
            "explained_variance": tail_mean(explained[np.isfinite(explained)], 0.25),
            "entropy_drop": tail_mean(entropy, 0.1, head=True) - tail_mean(entropy, 0.1),
            "approx_kl": float(np.mean(approx_kl)) if len(approx_kl) else math.nan,
            "q_value_variability": variability(*series(run.metrics, "losses/qf1_values")),
            "actor_loss_variability": variability(*series(run.metrics, "losses/actor_loss")),
            "saturation": network_saturation(run.metrics),
            "frozen_updates": frozen_update_fraction(run.metrics),
            "wall_clock_s": summary.get("wall_clock_s"), "sps": summary.get("sps"),
        }
        derived = record.get("derived")
        if derived and not derived.get("complete_inputs"):  # a compact record that thinned its inputs (exported
            # before they were kept whole): per-run values from its full record (the final return if the window agrees)
            same_window = derived["final_window"] == final_window
            run.row.update({key: value for key, value in derived["row"].items()
                            if key not in ("run", "arm") and (same_window or key != "final_return")})
        if not len(returns):
            run.excluded = "finished without a single episode: no final return"
        elif not math.isfinite(final):
            run.excluded = f"its final return is {final} (non-finite episodic returns in the last {final_window})"
        runs.append(run)
    return runs


def write_table(runs: list[Run], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        for run in runs:
            writer.writerow(run.row)


# ---- per-arm aggregation ----

@dataclass
class ArmStats:
    arm: str
    runs: int
    finished: int
    mean: float
    std: float
    iqm: float
    iqm_ci: tuple[float, float]
    improvement_over_baseline: tuple[float, float, float] | None  # P(arm > baseline), CI low, CI high
    mean_drawdown: float
    variability: float


def finished_values(runs: list[Run], arm: str, column: str) -> dict[str, list[float]]:
    """Values of `column` for the finished runs of `arm`, by environment (the bootstrap strata)."""
    by_env: dict[str, list[float]] = {}
    for run in runs:
        value = run.row.get(column)
        if run.arm == arm and run.included and isinstance(value, (int, float)) and math.isfinite(value):
            by_env.setdefault(run.env_id, []).append(float(value))
    return by_env


def arm_stats(runs: list[Run], baseline: str = "adam") -> list[ArmStats]:
    result = []
    baseline_values = sum(finished_values(runs, baseline, "final_return").values(), [])
    for arm in dict.fromkeys(run.arm for run in runs):
        strata = finished_values(runs, arm, "final_return")
        values = sum(strata.values(), [])
        total = sum(run.arm == arm for run in runs)
        if not values:
            result.append(ArmStats(arm, total, 0, math.nan, math.nan, math.nan, (math.nan, math.nan), None,
                                   math.nan, math.nan))
            continue
        improvement = None  # no interval from a single run (on either side): NaN bounds
        if arm != baseline and baseline_values:
            p = probability_of_improvement(values, baseline_values)
            low, high = (improvement_ci(values, baseline_values) if min(len(values), len(baseline_values)) > 1
                         else (math.nan, math.nan))
            improvement = (p, low, high)
        drawdowns = sum(finished_values(runs, arm, "mean_drawdown").values(), [])
        variabilities = sum(finished_values(runs, arm, "variability").values(), [])
        result.append(ArmStats(
            arm, total, len(values), float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
            iqm(values), iqm_ci(list(strata.values())) if len(values) > 1 else (math.nan, math.nan),
            improvement,
            float(np.mean(drawdowns)) if drawdowns else math.nan,
            float(np.mean(variabilities)) if variabilities else math.nan,
        ))
    return result


ARM_COLUMNS = ["arm", "runs", "finished", "mean", "std", "iqm", "iqm_ci_low", "iqm_ci_high", "p_improvement",
               "p_low", "p_high", "mean_drawdown", "variability"]


def write_arm_table(arms: list[ArmStats], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ARM_COLUMNS)
        for a in arms:
            writer.writerow([a.arm, a.runs, a.finished, a.mean, a.std, a.iqm, *a.iqm_ci,
                             *(a.improvement_over_baseline or (math.nan,) * 3), a.mean_drawdown, a.variability])
