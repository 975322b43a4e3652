"""Analysis of a sweep's run records: tidy table, statistics with confidence intervals, stability metrics,
the paper's figures, and a report whose claim verdicts are decided from the confidence intervals.

Statistics (scipy; rliable 1.2.0 does not import under pandas 3):
- IQM: the interquartile mean, scipy.stats.trim_mean(x, 0.25).
- 95% CIs: percentile bootstrap (scipy.stats.bootstrap), stratified by environment: each environment's
  runs are resampled separately (one sample per stratum), as rliable does across tasks.
- Probability of improvement P(X > Y) = Mann-Whitney U / (n m) (ties count one half), with a
  bootstrap CI over both arms.
Stability metrics (each computed on the episodic-return curve smoothed by a 10-episode moving mean):
- mean drawdown: the mean over episodes of (best smoothed return so far - smoothed return); 0 for a
  monotonic curve. Measures "smooth, almost monotonic" (TD3) and oscillation (DQN).
- variability: the standard deviation of step-to-step changes of the smoothed curve on a 100-point grid.
- TD-loss spikes (DQN): logged TD losses above 5 times the median of the 20 values before them.
A verdict needs at least MIN_RUNS finished runs in each arm it uses; with fewer, it is "inconclusive".
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from .runs import read_run

SMOOTHING_EPISODES = 10
MIN_RUNS = 3  # fewer finished runs per arm than this: bootstrap CIs are degenerate, verdicts inconclusive
SPIKE_FACTOR, SPIKE_WINDOW = 5.0, 20
CONFIDENCE = 0.95
PANELS = {
    "dqn": ["charts/episodic_return", "charts/episodic_length", "losses/td_loss", "losses/q_values"],
    "td3_continuous_action": ["charts/episodic_return", "losses/qf1_values", "losses/actor_loss"],
    "ppo_continuous_action": ["charts/episodic_return", "losses/explained_variance", "losses/entropy",
                              "losses/approx_kl"],
}
TABLE_COLUMNS = ["run", "arm", "algorithm", "env_id", "optimizer", "alpha", "seed", "status", "final_return",
                 "auc", "best_return", "episodes", "mean_drawdown", "variability", "td_loss_spikes",
                 "wall_clock_s", "sps"]


# ---- statistics ----

def iqm(values: Sequence[float]) -> float:
    return float(stats.trim_mean(np.asarray(values, dtype=float), 0.25))


def bootstrap_ci(strata: Sequence[Sequence[float]], statistic, seed: int = 0,
                 resamples: int = 2000) -> tuple[float, float]:
    """Percentile-bootstrap CI of statistic(*strata), resampling each stratum separately."""
    samples = [np.asarray(s, dtype=float) for s in strata]
    if any(len(s) < 2 for s in samples):
        value = statistic(*samples)
        return value, value
    result = stats.bootstrap(samples, statistic, vectorized=False, paired=False, confidence_level=CONFIDENCE,
                             n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def stratified_iqm(*strata: np.ndarray) -> float:
    return iqm(np.concatenate(strata))


def probability_of_improvement(x: Sequence[float], y: Sequence[float]) -> float:
    """P(X > Y) for a random run of each arm (ties count one half)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(stats.mannwhitneyu(x, y, alternative="two-sided").statistic / (len(x) * len(y)))


def difference_ci(a: Sequence[float], b: Sequence[float], statistic=iqm) -> tuple[float, float, float]:
    """statistic(a) - statistic(b) with its bootstrap CI (arms resampled independently)."""
    def diff(x, y):
        return statistic(x) - statistic(y)

    low, high = bootstrap_ci([a, b], diff)
    return diff(np.asarray(a), np.asarray(b)), low, high


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


def spike_count(losses: Sequence[float]) -> int:
    """Logged losses that are non-finite, or above SPIKE_FACTOR x the median of the SPIKE_WINDOW finite ones before."""
    losses = np.asarray(losses, dtype=float)
    finite = losses[np.isfinite(losses)]
    positions = np.cumsum(np.isfinite(losses)) - np.isfinite(losses)  # finite values before each logged loss
    return int(sum(not math.isfinite(loss) or (start >= SPIKE_WINDOW and
                                               loss > SPIKE_FACTOR * np.median(finite[start - SPIKE_WINDOW:start]))
                   for loss, start in zip(losses, positions)))


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


def _optimizer_of(config: dict) -> tuple[str, float | None]:
    spec = config.get("optim") or config.get("critic_optim") or {}
    name = spec.get("name", "?")
    alpha = spec.get("alpha") if name.startswith("alphagrad") else None
    return name, (float(alpha) if isinstance(alpha, (int, float)) else None)


def run_folders(sweep_dir: str | Path) -> list[Path]:
    """Every run record under `sweep_dir` (a folder with config.json, at any depth; not inside another run)."""
    folders = sorted(path.parent for path in Path(sweep_dir).rglob("config.json"))
    return [folder for folder in folders if not any(other in folder.parents for other in folders)]


def load_runs(sweep_dir: str | Path, final_window: int = 100) -> list[Run]:
    """Every run record under `sweep_dir`, with its tidy-table row. A record that cannot be read becomes a run
    with status "unreadable"; a finished run without a finite final return is `excluded` (with the reason)."""
    runs = []
    for run_dir in run_folders(sweep_dir):
        name = run_dir.relative_to(sweep_dir).as_posix()
        arm = run_dir.name.split("__")[0]
        try:
            record = read_run(run_dir)
            config = record["config"]["config"]
            algorithm = record["config"]["algorithm"]
        except (ValueError, KeyError, TypeError, OSError) as error:  # json.JSONDecodeError is a ValueError
            runs.append(Run(name, arm, "?", "?", "?", None, 0, "unreadable",
                            {"error": f"{run_dir / 'config.json'}: {type(error).__name__}: {error}"}, [],
                            row={"run": name, "arm": arm, "status": "unreadable"}))
            continue
        optimizer, alpha = _optimizer_of(config)
        summary = record["summary"] or {}
        run = Run(name, arm if "__" in run_dir.name else optimizer, algorithm, config.get("env_id", "?"), optimizer,
                  alpha, int(config.get("seed", 0)), summary.get("status") or "missing", summary, record["metrics"])
        steps, returns = series(run.metrics, "charts/episodic_return")
        total = summary.get("total_timesteps") or (steps[-1] if len(steps) else 0)
        _, td_losses = series(run.metrics, "losses/td_loss")
        final = float(np.mean(returns[-final_window:])) if len(returns) else math.nan
        run.row = {
            "run": run.name, "arm": run.arm, "algorithm": run.algorithm, "env_id": run.env_id,
            "optimizer": optimizer, "alpha": alpha, "seed": run.seed, "status": run.status,
            "final_return": final,
            # area under the return curve, per env step: the mean return over training
            "auc": float(np.trapezoid(returns, steps) / total) if len(returns) > 1 and total else math.nan,
            "best_return": float(np.nanmax(returns)) if np.isfinite(returns).any() else math.nan,
            "episodes": len(returns),
            "mean_drawdown": mean_drawdown(returns),
            "variability": variability(steps, returns),
            "td_loss_spikes": spike_count(td_losses) if len(td_losses) else None,
            "wall_clock_s": summary.get("wall_clock_s"), "sps": summary.get("sps"),
        }
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
        improvement = None
        if arm != baseline and baseline_values:
            p = probability_of_improvement(values, baseline_values)
            low, high = bootstrap_ci([values, baseline_values], probability_of_improvement)
            improvement = (p, low, high)
        drawdowns = sum(finished_values(runs, arm, "mean_drawdown").values(), [])
        variabilities = sum(finished_values(runs, arm, "variability").values(), [])
        result.append(ArmStats(
            arm, total, len(values), float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            iqm(values), bootstrap_ci(list(strata.values()), stratified_iqm), improvement,
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


# ---- claims ----

@dataclass
class Claim:
    claim: str
    evidence: str
    verdict: str  # "holds" | "does not hold" | "inconclusive"


def verdict_above(low: float, high: float, threshold: float = 0.0) -> str:
    """Whether a quantity is above `threshold`, from its CI: holds, does not hold, or inconclusive."""
    if low > threshold:
        return "holds"
    if high <= threshold:
        return "does not hold"
    return "inconclusive"


def verdict_below(low: float, high: float, threshold: float = 0.0) -> str:
    return verdict_above(-high, -low, -threshold)


def _arms_with(runs: list[Run], optimizer: str, alphas: set[float] | None = None) -> list[str]:
    return list(dict.fromkeys(run.arm for run in runs if run.optimizer == optimizer
                              and (alphas is None or run.alpha in alphas)))


def _compare(runs, arm, baseline, column):
    a = sum(finished_values(runs, arm, column).values(), [])
    b = sum(finished_values(runs, baseline, column).values(), [])
    if len(a) < MIN_RUNS or len(b) < MIN_RUNS:
        return None
    return difference_ci(a, b, statistic=np.mean if column != "final_return" else iqm)


def _too_few(arm: str) -> str:
    return f"fewer than {MIN_RUNS} finished runs of {arm} or the baseline"


def paper_claims(runs: list[Run], baseline: str = "adam") -> list[Claim]:
    """The AlphaGrad paper's claims for the experiment(s) in `runs`, each with a CI-based verdict."""
    claims = []
    algorithms = {run.algorithm for run in runs}
    baseline_final = sum(finished_values(runs, baseline, "final_return").values(), [])
    if len(baseline_final) < MIN_RUNS:
        return [Claim("(all claims compare with Adam)",
                      f"{len(baseline_final)} finished runs of the baseline arm {baseline!r} (at least {MIN_RUNS} needed)",
                      "inconclusive")]
    adam_iqm = iqm(baseline_final)

    def compared(arm, column, label, verdict=verdict_above):
        """A claim about column(arm) - column(baseline), judged by `verdict` on its CI."""
        comparison = _compare(runs, arm, baseline, column)
        if comparison is None:
            return Claim(label, _too_few(arm), "inconclusive")
        diff, low, high = comparison
        return Claim(label, f"{column} difference {arm} - {baseline}: {diff:.3g} [{low:.3g}, {high:.3g}]",
                     verdict(low, high))

    if "ppo_continuous_action" in algorithms:
        for arm in _arms_with(runs, "alphagrad", {98.0}):
            claims.append(compared(arm, "final_return", f"PPO: AlphaGrad alpha=98 ({arm}) ends clearly above Adam"))
        for arm in _arms_with(runs, "alphagrad", {196.0, 294.0}):
            claims.append(compared(arm, "final_return", f"PPO: AlphaGrad ({arm}) ends above Adam"))
    if "td3_continuous_action" in algorithms:
        margin = 0.1 * abs(adam_iqm)
        for arm in _arms_with(runs, "alphagrad", {100.0, 150.0, 200.0, 250.0}):
            comparison = _compare(runs, arm, baseline, "final_return")
            if comparison is None:
                claims.append(Claim(f"TD3: {arm} competitive with Adam", _too_few(arm), "inconclusive"))
            else:
                diff, low, high = comparison
                claims.append(Claim(
                    f"TD3: {arm} competitive with Adam (IQM final return within 10% of Adam's, or above)",
                    f"IQM difference {diff:.3g} [{low:.3g}, {high:.3g}], margin -{margin:.3g}",
                    verdict_above(low, high, -margin)))
            claims.append(compared(arm, "mean_drawdown", f"TD3: {arm} learns more smoothly than Adam (lower mean drawdown)",
                                   verdict_below))
        for arm in _arms_with(runs, "alphagrad", {457.0}):
            values = sum(finished_values(runs, arm, "final_return").values(), [])
            if len(values) < MIN_RUNS:
                claims.append(Claim(f"TD3: {arm} fails", _too_few(arm), "inconclusive"))
                continue
            low, high = bootstrap_ci([values], iqm)
            claims.append(Claim(f"TD3: {arm} fails to learn (IQM final return below 25% of Adam's)",
                                f"IQM {iqm(values):.3g} [{low:.3g}, {high:.3g}] vs Adam's {adam_iqm:.3g}",
                                verdict_below(low, high, 0.25 * adam_iqm)))
    if "dqn" in algorithms:
        starts = [float(np.mean(series(run.metrics, "charts/episodic_return")[1][:10]))
                  for run in runs if run.included]
        threshold = 2.0 * float(np.mean(starts))
        for arm in _arms_with(runs, "alphagrad"):
            values = sum(finished_values(runs, arm, "final_return").values(), [])
            if len(values) < MIN_RUNS:
                claims.append(Claim(f"DQN: {arm} learns", _too_few(arm), "inconclusive"))
            else:
                low, high = bootstrap_ci([values], iqm)
                claims.append(Claim(f"DQN: {arm} learns (IQM final return above twice the first episodes' mean)",
                                    f"IQM {iqm(values):.3g} [{low:.3g}, {high:.3g}], threshold {threshold:.3g}",
                                    verdict_above(low, high, threshold)))
            claims.append(compared(arm, "mean_drawdown", f"DQN: {arm} is less stable than Adam (higher mean drawdown)"))
            claims.append(compared(arm, "td_loss_spikes", f"DQN: {arm} has more TD-loss spikes than Adam"))
    return claims
