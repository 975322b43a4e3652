"""The AlphaGrad paper's claims (sections 6.1-6.3), each judged by a test whose verdict is valid at 5-10 seeds.

Each claim is a directional statement about a per-run metric (analysis.load_runs' table): an arm against the
baseline (Adam), two AlphaGrad arms against each other, an arm against a multiple of another arm's mean ("within
10% of Adam's peak": mean(a) - 0.9 mean(adam) > 0), or an arm against a fixed threshold. Each states its definition:
what is measured, and where the paper gives no number, the threshold chosen and why. Tests:
- two arms, or an arm against a multiple c of another's mean: Welch's t on mean(a) - c mean(b) (unequal variances;
  its standard error counts the other arm's spread too, c^2 var(b) / n_b); the estimate, its 95% interval and a
  two-sided p.
- one arm against a fixed threshold: the one-sample t on mean - threshold.
- all p-values of a report are adjusted together by Holm's step-down method (family-wise error 5%).
Verdicts, one rule for every claim (a claim of non-inferiority, "within 10% of Adam's", included): *holds* when
the adjusted p < 0.05 and the estimate points the claimed way; *does not hold* when it is significant the other way;
otherwise *undecided, estimate against* when the estimate points against the claim, plain *undecided* when it points
the claimed way (or is 0), each with the minimal detectable effect (MDE): the smallest true effect the test would
have found with 80% power at the Bonferroni level 0.05 / (number of claims), given the arms' n and spread.
Claims are judged on the arms named `alphagrad-<alpha>` (the paper's settings as its author ran them);
other arms appear in the tables and figures only. A claim needs at least MIN_RUNS finished runs per arm.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_RUNS = 3
LEVEL = 0.05
POWER = 0.8
# the env steps per run the paper's author trained (his released code's defaults, Soham4001A/CleanRLfork commit
# 228578b3): claims about training's end are his at these budgets
AUTHOR_BUDGETS = {"dqn": 500_000, "td3_continuous_action": 500_000, "ppo_continuous_action": 1_000_000}
# the environment packages the paper's author ran (his pip freeze: requirements.txt of Soham4001A/CleanRLfork at
# ed6c553); results/env-versions/ measures which differences change a task (MuJoCo >= 3.5 changes Hopper's)
AUTHOR_SOFTWARE = {"gymnasium": "1.1.1", "mujoco": "3.3.1"}
# per algorithm, the per-run metrics of the paper's claims about how it learns (stability, peaks, PPO's
# mechanisms; sections 6.1-6.3): extra arms are measured on them besides the final return
MECHANISMS = {"dqn": ("mean_drawdown", "td_loss_spikes", "td_loss_p99"),
              "td3_continuous_action": ("peak_return", "mean_drawdown", "q_value_variability",
                                        "actor_loss_variability"),
              "ppo_continuous_action": ("peak_return", "explained_variance", "entropy_drop", "approx_kl")}


@dataclass
class TestResult:
    estimate: float  # difference of means (arm - scale x other), or mean - threshold
    low: float  # 95% interval of the estimate
    high: float
    p: float  # two-sided p-value of the null: no difference
    mde: float  # minimal detectable |effect|, filled in once the number of claims is known
    n: tuple[int, ...]
    se: float
    df: float


def welch(a: Sequence[float], b: Sequence[float], scale: float = 1.0) -> TestResult:
    """Welch's t for mean(a) - scale * mean(b), two-sided. The Welch-Satterthwaite df use the scaled variances."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), scale**2 * b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
    return t_result(float(a.mean() - scale * b.mean()), se, df, (len(a), len(b)))


def one_sample(a: Sequence[float], threshold: float) -> TestResult:
    """The one-sample t for mean(a) - threshold (two-sided p)."""
    a = np.asarray(a, dtype=float)
    return t_result(float(a.mean() - threshold), float(a.std(ddof=1) / math.sqrt(len(a))), len(a) - 1, (len(a),))


def t_result(estimate: float, se: float, df: float, n: tuple[int, ...]) -> TestResult:
    """The two-sided t test of an estimate with standard error `se` on `df` degrees of freedom, with its 95%
    interval."""
    half = stats.t.ppf(1 - LEVEL / 2, df) * se
    if se == 0:
        p = 0.0 if estimate != 0 else 1.0
    else:
        p = float(2 * stats.t.sf(abs(estimate) / se, df))
    return TestResult(estimate, estimate - half, estimate + half, p, math.nan, n, se, df)


def minimal_detectable_effect(result: TestResult, level: float, power: float = POWER) -> float:
    """Smallest true |effect| a two-sided t test at `level` finds with probability `power` (normal-t approx.)."""
    return float((stats.t.ppf(1 - level / 2, result.df) + stats.t.ppf(power, result.df)) * result.se)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the given order."""
    order = np.argsort(pvalues)
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


VERDICTS = ("holds", "does not hold", "undecided, estimate against", "undecided")


@dataclass
class Claim:
    section: str
    claim: str
    paper: str  # the paper's own number or words
    definition: str = ""  # what is measured; a threshold the paper does not give, and why it is this one
    evidence: str = ""
    verdict: str = "undecided"  # one of VERDICTS
    result: TestResult | None = None
    direction: int = 1  # +1: the claim says estimate > 0; -1: estimate < 0
    p_adjusted: float = math.nan
    metric: str = ""  # the per-run metric compared


def verdict(claim: Claim) -> str:
    """The claim's verdict from its adjusted p and its estimate's sign (VERDICTS); "undecided" untested."""
    if claim.result is None:
        return "undecided"
    sign = np.sign(claim.result.estimate)
    if claim.p_adjusted < LEVEL:
        return "holds" if sign == claim.direction else "does not hold"
    return "undecided, estimate against" if sign == -claim.direction else "undecided"


def _values(runs, arm: str, column: str) -> list[float]:
    return [float(run.row[column]) for run in runs if run.arm == arm and run.included
            and isinstance(run.row.get(column), (int, float)) and math.isfinite(run.row[column])]


def _alpha_arm(runs, alpha: int) -> str | None:
    name = f"alphagrad-{alpha}"
    return name if any(run.arm == name for run in runs) else None


class _Builder:
    def __init__(self, runs, baseline: str):
        self.runs, self.baseline, self.claims = runs, baseline, []

    def compare(self, section, text, paper, arm, other, column, direction, scale=1.0, other_column=None,
                definition=""):
        """A claim on mean(arm's `column`) - scale * mean(other's `other_column`, default `column`)."""
        other_column = other_column or column
        a, b = _values(self.runs, arm, column), _values(self.runs, other, other_column)
        claim = Claim(section, text, paper, definition, direction=direction, metric=column)
        if min(len(a), len(b)) < MIN_RUNS:
            claim.evidence = f"{len(a)} and {len(b)} finished runs of {arm} and {other} (at least {MIN_RUNS} needed)"
        else:
            claim.result = welch(a, b, scale)
            times = f"{scale:g} x " if scale != 1 else ""
            named = f" {other_column}" if other_column != column else ""
            claim.evidence = (f"{column}: mean {np.mean(a):.4g} ({arm}, n={len(a)}) vs {times}{np.mean(b):.4g} "
                              f"({other}{named}, n={len(b)}); difference {claim.result.estimate:.4g} "
                              f"[{claim.result.low:.4g}, {claim.result.high:.4g}]")
        self.claims.append(claim)

    def threshold(self, section, text, paper, arm, column, threshold, direction, threshold_label, definition=""):
        a = _values(self.runs, arm, column)
        claim = Claim(section, text, paper, definition, direction=direction, metric=column)
        if len(a) < MIN_RUNS:
            claim.evidence = f"{len(a)} finished runs of {arm} (at least {MIN_RUNS} needed)"
        else:
            claim.result = one_sample(a, threshold)
            claim.evidence = (f"{column}: mean {np.mean(a):.4g} ({arm}, n={len(a)}) vs {threshold_label} "
                              f"{threshold:.4g}; difference {claim.result.estimate:.4g} "
                              f"[{claim.result.low:.4g}, {claim.result.high:.4g}]")
        self.claims.append(claim)


# definitions shared by several claims
FINAL = "final_return: the mean return of the run's last episodes (the report's final window)"
PEAK = "peak_return: the best 10-episode moving mean of the run's returns"
DRAWDOWN = ("mean_drawdown: the mean over episodes of (best smoothed return so far - smoothed return), smoothed over "
            "10 episodes; 0 for a curve that never falls")
EARLY = "early_return: the mean return of the episodes ending in the first 25% of the steps"
TD_P99 = ("td_loss_p99: the 99th percentile of the run's logged TD losses, i.e. the absolute size of its largest "
          "losses, which is what 'large spikes, less pronounced under Adam' compares (a count of losses above a "
          "multiple of the recent level would compare each optimizer with its own loss floor, ~5x lower under Adam)")
COINCIDENCE = ("dip_spike_correlation: per run, over 20 equal windows of its steps, Spearman's correlation between a "
               "window's largest TD loss and the fall of its mean return from the window before; > 0 when dips come "
               "with spikes. 'Directly correlated' read as a positive correlation within a run, on average over runs")
CARTPOLE_SOLVED = 475.0  # gymnasium's reward_threshold for CartPole-v1


def _dqn_claims(b: _Builder) -> None:
    alphas = [alpha for alpha in (93, 186, 279) if _alpha_arm(b.runs, alpha)]
    learns = CARTPOLE_SOLVED / 2
    for alpha in alphas:
        b.threshold("6.1", f"AlphaGrad alpha={alpha} learns the task (final return at least half the solved score)",
                    "learns, all three alphas", f"alphagrad-{alpha}", "final_return", learns, +1,
                    "half of CartPole-v1's solved score 475:",
                    f"{FINAL}. 'Learns' read as reaching half of the score gymnasium calls solved (475; a random "
                    "policy scores ~22, so 237.5 is ~11x it and cannot be reached without learning to balance)")
    if 93 in alphas:
        b.compare("6.1", "alpha=93 makes rapid initial progress: its early return above Adam's",
                  "alpha=93 showing rapid initial progress", "alphagrad-93", b.baseline, "early_return", +1,
                  definition=f"{EARLY}. 'Rapid' read against the baseline's early progress")
    for alpha in alphas:
        b.compare("6.1", f"AlphaGrad alpha={alpha} is less stable than Adam (higher mean drawdown)",
                  "marked instability vs Adam's smooth convergence", f"alphagrad-{alpha}", b.baseline,
                  "mean_drawdown", +1, definition=DRAWDOWN)
    for alpha in alphas:
        b.compare("6.1", f"AlphaGrad alpha={alpha} has larger TD-loss spikes than Adam (99th percentile of the TD "
                  "loss)", "large TD-loss spikes, less pronounced under Adam", f"alphagrad-{alpha}", b.baseline,
                  "td_loss_p99", +1, definition=TD_P99)
    for alpha in alphas:
        b.threshold("6.1", f"alpha={alpha}'s return dips coincide with TD-loss spikes within a run",
                    "fluctuations directly correlated with large spikes in the TD loss", f"alphagrad-{alpha}",
                    "dip_spike_correlation", 0.0, +1, "no correlation:", COINCIDENCE)
    if {93, 279} <= set(alphas):
        b.compare("6.1", "alpha=93 makes faster initial progress than alpha=279 (mean return over the first 25% "
                  "of steps)", "alpha=93 rapid initial progress; higher alpha slower", "alphagrad-93",
                  "alphagrad-279", "early_return", +1, definition=EARLY)
        b.compare("6.1", "higher alpha learns more slowly: alpha=279 has a lower area under the return curve than "
                  "alpha=93", "higher alpha: slower learning", "alphagrad-279", "alphagrad-93", "auc", -1,
                  definition="auc: the area under the return curve per env step, the mean return over training")
        b.compare("6.1", "higher alpha peaks lower: alpha=279's peak (10-episode mean) below alpha=93's",
                  "higher alpha: lower peak performance", "alphagrad-279", "alphagrad-93", "peak_return", -1,
                  definition=PEAK)
        b.compare("6.1", "higher alpha oscillates more: alpha=279's mean drawdown above alpha=93's",
                  "higher alpha: more pronounced oscillations", "alphagrad-279", "alphagrad-93", "mean_drawdown",
                  +1, definition=DRAWDOWN)
    for low, high in zip(alphas, alphas[1:]):
        b.compare("6.1", f"higher alpha ends lower: alpha={high}'s final return below alpha={low}'s",
                  "higher alpha exacerbated the issue (the relative success of alpha=93)", f"alphagrad-{high}",
                  f"alphagrad-{low}", "final_return", -1,
                  definition=f"{FINAL}; the ordering 93 > 186 > 279 tested pair by pair")


def _td3_claims(b: _Builder) -> None:
    tuned = [alpha for alpha in (100, 150, 200, 250) if _alpha_arm(b.runs, alpha)]
    within = "'Competitive' and 'match' read as within 10% of Adam's mean, or above"
    for alpha in tuned:
        arm = f"alphagrad-{alpha}"
        b.compare("6.2", f"alpha={alpha} is competitive with Adam's peak (peak within 10% of Adam's, or above)",
                  "alpha in [100, 250] competitive with Adam's peak rewards", arm, b.baseline, "peak_return", +1,
                  scale=0.9, definition=f"{PEAK}. {within}")
        b.compare("6.2", f"alpha={alpha} matches Adam's performance (final return within 10% of Adam's, or above)",
                  "AlphaGrad can match Adam's performance", arm, b.baseline, "final_return", +1, scale=0.9,
                  definition=f"{FINAL}. {within}")
        b.compare("6.2", f"Adam peaks slightly higher than alpha={alpha}", "Adam achieved slightly higher peak "
                  "rewards", arm, b.baseline, "peak_return", -1, definition=PEAK)
        b.compare("6.2", f"alpha={alpha} learns more smoothly than Adam (lower mean drawdown)",
                  "remarkably smooth, almost monotonic vs Adam's dips", arm, b.baseline, "mean_drawdown", -1,
                  definition=DRAWDOWN)
        b.threshold("6.2", f"alpha={alpha} improves almost monotonically (mean drawdown below 10% of its peak)",
                    "remarkably smooth, almost monotonic improvement", arm, "relative_drawdown", 0.1, -1,
                    "a tenth of the peak:", "relative_drawdown: mean_drawdown / peak_return. 'Almost monotonic' read "
                    "as giving back on average less than a tenth of the best level reached")
        b.threshold("6.2", f"alpha={alpha} avoids performance collapse (final return above half its own peak)",
                    "consistent improvement and avoidance of performance collapse", arm, "peak_retention", 0.5, +1,
                    "half the peak:", "peak_retention: final_return / peak_return. A collapse read as ending below "
                    "half the best level the run reached")
        b.compare("6.2", f"alpha={alpha} has more stable Q-value estimates than Adam (lower variability of qf1 "
                  "values)", "more stable Q-value estimates", arm, b.baseline, "q_value_variability", -1,
                  definition="q_value_variability: the standard deviation of the step-to-step changes of the smoothed "
                  "qf1 values on a 100-point grid")
        b.compare("6.2", f"alpha={alpha} has a more stable actor loss than Adam (lower variability)",
                  "more stable actor loss trajectories", arm, b.baseline, "actor_loss_variability", -1,
                  definition="actor_loss_variability: as q_value_variability, of the actor loss")
    if _alpha_arm(b.runs, 457):
        b.compare("6.2", "alpha=457 (the sqrt(d) rule) fails to learn (final return below 25% of Adam's)",
                  "alpha=457 failed to learn effectively", "alphagrad-457", b.baseline, "final_return", -1,
                  scale=0.25, definition=f"{FINAL}. 'Failed to learn effectively' read as keeping less than a "
                  "quarter of what Adam learns in the same budget")
        for alpha in tuned:
            b.compare("6.2", f"alpha={alpha} ends above alpha=457 (final return)", "empirically identified lower "
                      "values yielded strong performance where the scaling law's 457 failed", f"alphagrad-{alpha}",
                      "alphagrad-457", "final_return", +1, definition=FINAL)


def _ppo_claims(b: _Builder) -> None:
    alphas = [alpha for alpha in (98, 196, 294) if _alpha_arm(b.runs, alpha)]
    for alpha in alphas:
        b.compare("6.3", f"alpha={alpha} ends above Adam (final return)", "all AlphaGrad variants achieved "
                  "substantially higher asymptotic rewards", f"alphagrad-{alpha}", b.baseline, "final_return", +1,
                  definition=FINAL)
    if 98 in alphas:
        b.threshold("6.3", "alpha=98 peaks above 3000", "alpha=98 peaking above 3000", "alphagrad-98",
                    "peak_return", 3000.0, +1, "the paper's", definition=PEAK)
        b.compare("6.3", "alpha=98's peak is more than double Adam's plateau (final return)",
                  "more than double Adam's plateau around 1500", "alphagrad-98", b.baseline, "peak_return", +1,
                  scale=2.0, other_column="final_return",
                  definition=f"{PEAK}; Adam's plateau read as its final return")
        for other in (196, 294):
            if other in alphas:
                b.compare("6.3", f"alpha=98 ends above alpha={other} (final return)", "the optimal performance "
                          "observed at alpha=98", "alphagrad-98", f"alphagrad-{other}", "final_return", +1,
                          definition=FINAL)
    for alpha in alphas:
        b.compare("6.3", f"alpha={alpha} has a higher explained variance than Adam (last 25% of training)",
                  "significantly higher explained variance", f"alphagrad-{alpha}", b.baseline,
                  "explained_variance", +1,
                  definition="explained_variance: the mean of the logged explained variance over the last 25% of "
                  "training")
        b.compare("6.3", f"alpha={alpha}'s entropy decays faster than Adam's (entropy drop, first to last 10%)",
                  "faster entropy decay (especially for higher alpha)", f"alphagrad-{alpha}", b.baseline,
                  "entropy_drop", +1, definition="entropy_drop: the mean policy entropy over the first 10% of the "
                  "logged values minus that over the last 10%")
        b.compare("6.3", f"alpha={alpha} takes larger policy steps than Adam (mean approx KL per iteration)",
                  "markedly larger approximate KL per iteration", f"alphagrad-{alpha}", b.baseline, "approx_kl", +1,
                  definition="approx_kl: the mean of the logged approximate KL divergence per update")
    if {98, 294} <= set(alphas):
        b.compare("6.3", "entropy decays faster at higher alpha: alpha=294's entropy drop above alpha=98's",
                  "faster entropy decay (especially for higher alpha)", "alphagrad-294", "alphagrad-98",
                  "entropy_drop", +1, definition="entropy_drop, as above; the highest alpha against the lowest")


_CLAIMS_OF: dict[str, Callable[[_Builder], None]] = {
    "dqn": _dqn_claims, "td3_continuous_action": _td3_claims, "ppo_continuous_action": _ppo_claims}


def _adjust_together(claims: list[Claim]) -> list[Claim]:
    """The tested claims (those with a result), each given its p Holm-adjusted over them all and its MDE at the
    Bonferroni level 0.05 / (number tested) that the adjustment implies."""
    tested = [claim for claim in claims if claim.result is not None]
    for claim, adjusted in zip(tested, holm([claim.result.p for claim in tested])):
        claim.p_adjusted = adjusted
        claim.result.mde = minimal_detectable_effect(claim.result, LEVEL / len(tested))
    return tested


def paper_claims(runs, baseline: str = "adam") -> list[Claim]:
    """Every claim of the paper for the algorithms in `runs`, tested and judged together (Holm)."""
    builder = _Builder(runs, baseline)
    for algorithm in dict.fromkeys(run.algorithm for run in runs):
        if algorithm in _CLAIMS_OF:
            _CLAIMS_OF[algorithm](builder)
    claims = builder.claims
    _adjust_together(claims)
    for claim in claims:
        claim.verdict = verdict(claim)
    return claims


def _without_agr(run) -> tuple[str, bool]:
    """(the run's settings (Run.settings) with AGR taken out of its optimizers, as one comparable string; whether it
    had AGR). X-agr and agr=True become X, AdamW without weight decay is Adam."""
    options = run.settings
    had_agr = False
    for optimizer in [key.removesuffix(".name") for key in options if key.endswith("optim.name")]:
        name = str(options[f"{optimizer}.name"])
        had_agr |= name.endswith("-agr") or bool(options.get(f"{optimizer}.agr"))
        name = name.removesuffix("-agr")
        options[f"{optimizer}.name"] = "adam" if name == "adamw" and not options.get(f"{optimizer}.weight_decay") else name
        options[f"{optimizer}.agr"] = False
    return json.dumps(options, sort_keys=True, default=str), had_agr


def _agr_bases(runs, arms: list[str]) -> dict[str, str]:
    """{arm with AGR: the arm with the same options without AGR} (adamw-agr: the Adam arm of its settings; of
    several with those options, the shortest name: the others vary it by name, e.g. adam-mujoco4)."""
    first = {arm: next(run for run in runs if run.arm == arm) for arm in arms}
    keys = {arm: _without_agr(run) for arm, run in first.items()}
    plain: dict[str, str] = {}
    for arm in sorted(keys, key=len):
        key, had_agr = keys[arm]
        if not had_agr:
            plain.setdefault(key, arm)
    return {arm: plain[key] for arm, (key, had_agr) in keys.items() if had_agr and key in plain}


# Momentum 0.9 in SGD form moves a steady direction 1 / (1 - 0.9) = 10 x lr per step: an arm with one of these
# suffixes has the steady step of the arm named by the other suffix on the same base, so the pair differs in momentum
# alone (configs/paper_dqn_cartpole.yaml: alphagrad-93-no-momentum-lr-x10 against alphagrad-93, and
# alphagrad-93-lr-div10 against alphagrad-93-no-momentum).
EQUAL_STEP_SUFFIXES = (("-no-momentum-lr-x10", ""), ("-lr-div10", "-no-momentum"))


def equal_step_arm(arm: str, arms: Sequence[str]) -> str | None:
    """The arm with `arm`'s steady step size and the other momentum setting (EQUAL_STEP_SUFFIXES), or None."""
    for suffix, other in EQUAL_STEP_SUFFIXES:
        if arm.endswith(suffix) and (match := arm.removesuffix(suffix) + other) in arms:
            return match
    return None


def varied_arm(arm: str, arms: Sequence[str]) -> str | None:
    """The arm that `arm` varies by its name: the longest other arm name it extends with "-..."
    (alphagrad-93-no-momentum varies alphagrad-93, adam-same-step varies adam); None if none."""
    return max((base for base in arms if arm.startswith(base + "-")), key=len, default=None)


def variant_comparisons(runs) -> list[Claim]:
    """Each extra arm against the arm it varies: its name with a suffix (alphagrad-93-no-momentum vs alphagrad-93,
    adam-same-step vs adam), or an AGR arm against the same optimizer and options without AGR (adamw-agr vs adam),
    and an equal-step arm also against the arm of the same steady step with the other momentum (equal_step_arm):
    the difference in final return, then in each metric the algorithm's claims use (MECHANISMS), each with its
    Welch interval, its p, that p Holm-adjusted over all the comparisons made (p_adjusted: many arms times many
    metrics make some small unadjusted p likely by chance) and the MDE at the level that adjustment implies, the
    Bonferroni 0.05 / (number of comparisons) as for the claims. These measure each departure and extra setting;
    they are not claims."""
    arms = list(dict.fromkeys(run.arm for run in runs))
    agr_bases = _agr_bases(runs, arms)
    comparisons = []
    for arm in arms:
        for base in dict.fromkeys(b for b in (varied_arm(arm, arms) or agr_bases.get(arm), equal_step_arm(arm, arms))
                                  if b is not None):
            algorithm = next(run.algorithm for run in runs if run.arm == arm)
            builder = _Builder(runs, base)
            for metric in ("final_return", *MECHANISMS.get(algorithm, ())):
                builder.compare("", f"{arm} vs {base}", "", arm, base, metric, +1)
            # too few runs: said once (on the final return); a metric the runs do not log: left out
            comparisons += [c for c in builder.claims if c.result is not None or c.metric == "final_return"]
    _adjust_together(comparisons)
    return comparisons
