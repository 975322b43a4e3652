"""Alpha sensitivity: AlphaGrad's final return (IQM with its 95% BCa CI over seeds) against k = alpha / sqrt(d), one
line per learning rate, beside Adam's best learning rate as a band; the same against lr x alpha; and the measured
saturation ratio S against k (AlphaGrad paper, section 5.2 for k and Table 2 for d, section 7.3 for S).

d is the paper's own parameter count per environment (Table 2), so that k = 1, 2, 3 are the paper's alphas.
Where |alpha g_hat| is small, tanh is linear and AlphaGrad's update (eq. 3-6) is lr x alpha x g / ||g|| per
tensor: normalized gradient descent whose step only the product sets (section 2: "alpha -> 0 behaves like
normalized gradient descent"). Lines for different lrs that meet on the lr x alpha axis show that regime.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.ticker import NullFormatter
from scipy import stats

from .analysis import FROZEN_FRACTION, Run, iqm, iqm_ci
from .claims import LEVEL, MIN_RUNS, TestResult, holm, minimal_detectable_effect, t_result, welch
from .report import BASELINE_STYLE, budget_note, budget_text, natural_key, plt, save_figure
from .runs import atomic_write

# Table 2 of the paper: "total network parameters based on CleanRL defaults", the d of alpha = k sqrt(d)
PAPER_D = {"CartPole-v1": 8_576, "HalfCheetah-v5": 9_664, "HalfCheetah-v4": 9_664, "Hopper-v4": 209_413,
           "Hopper-v5": 209_413}
PAPER_K = (1, 2, 3)  # the paper's alphas are k = 1 and 3 (and 2 for DQN)
K_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 3, 4, 10)  # the k axis's labelled ticks (log scale)
MIN_ALPHAS = 5  # a sweep with at least this many alphas in one setting gets a sensitivity figure
OPTIMIZER_SPECS = ("optim", "actor_optim", "critic_optim")  # the agents' optimizer options (TD3: actor and critics)
ALPHA_OPTIONS = {f"{spec}.alpha" for spec in OPTIMIZER_SPECS}


@dataclass
class Point:
    """One setting of an optimizer (every option but alpha and the seed) at one alpha (None: not AlphaGrad), over
    its seeds."""

    optimizer: str
    setting: tuple[tuple[str, str], ...]  # (option, value) of the options that vary between the runs' settings
    alpha: float | None
    k: float | None
    runs: int
    finished: int
    iqm: float
    ci: tuple[float, float]
    mean: float
    saturation: float  # mean over seeds of the mean S over training
    lr: float | None = None  # the runs' lr (TD3: the critics'), when they share one
    values: tuple[float, ...] = ()  # the finished runs' final returns
    frozen: tuple[int, int] = (0, 0)  # (finished runs in which a network froze, finished runs whose update norms tell)
    protocol: tuple[tuple[str, str], ...] = ()  # (option, value) of every option that is no optimizer's (env, agent)

    @property
    def frozen_text(self) -> str:
        """The frozen runs of those measured, e.g. 1/5; "-" where no run logged its update norms."""
        return f"{self.frozen[0]}/{self.frozen[1]}" if self.frozen[1] else "-"

    @property
    def step(self) -> float | None:
        """lr x alpha: the step size of AlphaGrad's update where tanh is linear (normalized gradient descent)."""
        return self.lr * self.alpha if self.lr is not None and self.alpha is not None else None

    @property
    def label(self) -> str:
        """The setting's options without their optimizer prefix, and once where actor and critics share a value
        (TD3: "lr 3e-05", not "actor_optim.lr 3e-05, critic_optim.lr 3e-05")."""
        def short(option: str) -> str:
            spec, _, name = option.partition(".")
            return name if spec in OPTIMIZER_SPECS and name else option

        values: dict[str, set[str]] = {}
        for option, value in self.setting:
            values.setdefault(short(option), set()).add(value)
        parts = [f"{short(option) if len(values[short(option)]) == 1 else option} {value}"
                 for option, value in self.setting]
        return ", ".join(dict.fromkeys(parts)) or "-"


def _setting(run: Run) -> dict[str, str]:
    return {key: json.dumps(value, default=str) for key, value in run.settings.items() if key not in ALPHA_OPTIONS}


def _protocol(setting: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A setting's options that are no optimizer's (the environment's, the agent's, the budget): how it was run."""
    return tuple(sorted((key, value.strip('"')) for key, value in setting.items()
                        if key.partition(".")[0] not in OPTIMIZER_SPECS))


def _finite_values(members: list[Run], column: str) -> list[float]:
    """The finite float values of a per-run column over the members that count (NaN: not measured)."""
    values = [run.row.get(column) for run in members if run.included]
    return [value for value in values if isinstance(value, float) and math.isfinite(value)]


def sensitivity_points(runs: list[Run]) -> tuple[str, list[Point]]:
    """(environment, one Point per (optimizer, setting, alpha)): the settings are the runs' options except alpha and
    the seed, shown by the options that differ between them (e.g. the lr)."""
    envs = sorted({run.env_id for run in runs})
    if len(envs) != 1:
        raise ValueError(f"a sensitivity figure is made per environment; these runs have {envs}")
    env = envs[0]
    if env not in PAPER_D:
        raise ValueError(f"no paper d (Table 2) for {env!r} (known: {', '.join(PAPER_D)})")
    settings = [_setting(run) for run in runs]
    groups: dict[tuple, list[Run]] = {}
    protocols: dict[tuple, tuple[tuple[str, str], ...]] = {}  # per group: its first run's _protocol
    for optimizer in dict.fromkeys(run.optimizer for run in runs):  # the options that vary within each optimizer
        own = [(run, setting) for run, setting in zip(runs, settings) if run.optimizer == optimizer]
        varying = sorted({key for _, setting in own for key in setting
                          if len({other.get(key) for _, other in own}) > 1})
        for run, setting in own:
            shown = tuple((key, setting.get(key, "-").strip('"')) for key in varying)
            group = (optimizer, shown, run.alpha)
            if group not in groups:
                groups[group], protocols[group] = [], _protocol(setting)
            groups[group].append(run)
    points = []
    for (optimizer, setting, alpha), members in groups.items():
        values = [run.row["final_return"] for run in members if run.included]
        saturations, frozen = _finite_values(members, "saturation"), _finite_values(members, "frozen_updates")
        ci = iqm_ci([values]) if len(values) > 1 else (math.nan, math.nan)
        lrs = {run.row.get("lr") for run in members}
        points.append(Point(optimizer, setting, alpha, alpha / math.sqrt(PAPER_D[env]) if alpha is not None else None,
                            len(members), len(values), iqm(values) if values else math.nan, ci,
                            float(np.mean(values)) if values else math.nan,
                            float(np.mean(saturations)) if saturations else math.nan,
                            lrs.pop() if len(lrs) == 1 else None, tuple(values),
                            (sum(f > FROZEN_FRACTION for f in frozen), len(frozen)),
                            protocols[optimizer, setting, alpha]))
    points.sort(key=lambda p: (p.alpha is not None, p.optimizer, p.setting, p.alpha or 0))
    return env, points


def has_alpha_grid(runs: list[Run]) -> bool:
    """Whether the runs (in one environment) hold at least MIN_ALPHAS AlphaGrad alphas in one setting."""
    if len({run.env_id for run in runs}) != 1:
        return False
    alphas: dict[str, set] = {}
    for run in runs:
        if run.alpha is not None:
            alphas.setdefault(json.dumps(_setting(run), sort_keys=True), set()).add(run.alpha)
    return any(len(a) >= MIN_ALPHAS for a in alphas.values())


def baseline_settings(points: list[Point], baseline: str) -> tuple[list[Point], list[tuple[Point, str]]]:
    """(the baseline's settings with a final return that its best is chosen from, each other one with why it is set
    aside). Only its optimizer options are the baseline's to tune: a setting that differs from every AlphaGrad point
    in another option in which the baseline's settings differ (e.g. an autoreset mode run as an extra arm) was run
    otherwise than AlphaGrad and is set aside. So is a setting with fewer than MIN_RUNS finished runs while another
    has them: no point could be tested against it."""
    own = [p for p in points if p.optimizer == baseline and p.alpha is None and math.isfinite(p.iqm)]
    alphagrad = [dict(p.protocol) for p in points if p.alpha is not None]
    protocols = [dict(p.protocol) for p in own]
    varying = sorted({key for options in protocols for key in options
                      if len({other.get(key) for other in protocols}) > 1})
    kept, set_aside = [], []
    for p, options in zip(own, protocols):
        unlike = [key for key in varying if alphagrad and all(a.get(key) != options.get(key) for a in alphagrad)]
        if unlike:
            ran = " and ".join(f"{key} {'/'.join(sorted({str(a.get(key, '-')) for a in alphagrad}))}" for key in unlike)
            set_aside.append((p, f"AlphaGrad's runs have {ran}: not an optimizer option"))
        else:
            kept.append(p)
    if any(p.finished >= MIN_RUNS for p in kept):
        set_aside += [(p, f"under {MIN_RUNS} finished runs") for p in kept if p.finished < MIN_RUNS]
        kept = [p for p in kept if p.finished >= MIN_RUNS]
    return kept, set_aside


def _natural(setting: tuple[tuple[str, str], ...]) -> list:
    """Settings in numeric order of their values (lr 6.25e-05 before 0.00025)."""
    return [natural_key(value) for _, value in setting]


def plot_sensitivity(env: str, points: list[Point], baseline: Point | None, baseline_name: str,
                     out_dir: Path, budget: str = "") -> list[Path]:
    """Final return against k (and against lr x alpha) per setting, with the baseline's IQM and CI as a black line
    and grey band (baseline_name: its legend entry), and the saturation ratio S against k; one legend below the
    panels, the budget in the title."""
    alphagrad = [p for p in points if p.alpha is not None]
    settings = sorted({p.setting for p in alphagrad}, key=_natural)
    with_steps = all(p.step is not None for p in alphagrad)
    figure, axes = plt.subplots(1, 3 if with_steps else 2, figsize=(17, 5.0) if with_steps else (11.5, 5.0),
                                layout="constrained")  # which makes room for the title and the legend below
    left, right = axes[0], axes[-1]
    return_axes = axes[:-1]  # final return against k, and against lr x alpha when every point has an lr
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, max(len(settings), 1)))
    for color, setting in zip(colors, settings):
        line = sorted((p for p in alphagrad if p.setting == setting), key=lambda p: p.k)
        ks = [p.k for p in line]
        centers = np.array([p.iqm for p in line])
        lows = np.array([p.ci[0] if math.isfinite(p.ci[0]) else p.iqm for p in line])
        highs = np.array([p.ci[1] if math.isfinite(p.ci[1]) else p.iqm for p in line])
        label = f"AlphaGrad {line[0].label}" if setting else "AlphaGrad"
        for axis, xs in zip(return_axes, (ks, [p.step for p in line])):
            axis.errorbar(xs, centers, yerr=[centers - lows, highs - centers], marker="o", capsize=3, color=color,
                          label=label)
        right.plot(ks, [p.saturation for p in line], marker="o", color=color, label=label)
    if baseline is not None:
        low, high = baseline.ci if all(map(math.isfinite, baseline.ci)) else (baseline.iqm, baseline.iqm)
        for axis in return_axes:
            axis.axhspan(low, high, color=BASELINE_STYLE[0], alpha=0.12, lw=0)
            axis.axhline(baseline.iqm, color=BASELINE_STYLE[0], lw=BASELINE_STYLE[2], label=f"{baseline_name}: IQM, 95% CI")
    shown_k = [p.k for p in alphagrad] + list(PAPER_K)
    ticks = [k for k in K_TICKS if min(shown_k) / 1.5 <= k <= max(shown_k) * 1.5]
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xticks(ticks, [f"{k:g}" for k in ticks])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel(f"k = alpha / sqrt(d)   (d = {PAPER_D[env]:,}, paper Table 2)")
        for k in PAPER_K:
            axis.axvline(k, color="grey", ls=":", lw=0.8)
    left.set_ylabel("final return (IQM over seeds, 95% CI)")
    left.set_title("final return against k (dotted: the paper's k = 1, 2, 3)", fontsize=10)
    if with_steps:
        middle = axes[1]
        middle.set_xscale("log")
        middle.set_xlabel("lr x alpha (the step where tanh is linear)")
        middle.set_ylabel("final return (IQM over seeds, 95% CI)")
        middle.set_title("against lr x alpha (one curve where only the product matters)", fontsize=10)
    right.set_ylabel("saturation S = P(|alpha g_hat| > 2.5)")
    right.set_ylim(bottom=0)
    right.set_title("saturation ratio, mean over training (section 7.3)", fontsize=10)
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    figure.suptitle(f"{env}: AlphaGrad's final return and saturation against k" + (f"; {budget}" if budget else ""),
                    fontsize=11)
    return save_figure(figure, out_dir / "sensitivity")


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def _with_ci(point: Point) -> str:
    if all(map(math.isfinite, point.ci)):
        return f"{point.iqm:.1f} [{point.ci[0]:.1f}, {point.ci[1]:.1f}]"
    return f"{point.iqm:.1f} [-]"


def _baseline_name(best: Point, kept: list[Point], set_aside: list[tuple[Point, str]], baseline: str) -> str:
    """The baseline as compared with: "adam at its best setting (lr 0.001)" where chosen among several settings,
    "adam (autoreset_mode next-step)" where the others were set aside, "adam" where it has one."""
    return baseline + (f" at its best setting ({best.label})" if len(kept) > 1 else
                       f" ({best.label})" if set_aside else "")


def _baseline_text(name: str, best: Point, kept: list[Point], set_aside: list[tuple[Point, str]]) -> str:
    """The report's line on the baseline: the setting compared with, and each of its settings with its IQM."""
    reasons = {id(p): reason for p, reason in set_aside}
    settings = [f"{p.label}: {p.iqm:.1f}" + (f" ({_seeds(p.finished)}; set aside: {reasons[id(p)]})"
                                            if id(p) in reasons else "")
                for p in sorted(kept + [p for p, _ in set_aside], key=lambda p: _natural(p.setting))]
    return (f"{name}: IQM {_with_ci(best)} over {_seeds(best.finished)}"
            + ("; each of its settings: " + ", ".join(settings) if len(settings) > 1 else "") + ".")


def _at_grid_edge(top: Point, line: list[Point]) -> str:
    """A warning when a setting's best k is its grid's smallest or largest (of at least 3): the grid brackets no
    optimum there, so a better alpha may lie beyond it."""
    if len(line) < 3 or top not in (line[0], line[-1]):
        return ""
    side, beyond = ("smallest", "below") if top is line[0] else ("largest", "above")
    return (f" The best k is the grid's {side}: the grid does not bracket an optimum, and a better alpha may lie "
            f"{beyond} k = {top.k:.3g} (extend the grid there to find out).")


@dataclass
class Comparison:
    """Welch's t on the difference of two points' mean final returns, within a family of such tests."""

    result: TestResult
    p_adjusted: float  # Holm over the family
    mde: float  # the smallest true difference found with 80% power at the Bonferroni level 0.05 / family size

    @property
    def differs(self) -> bool:
        return self.p_adjusted < LEVEL

    def text(self) -> str:
        r = self.result
        return f"{r.estimate:+.1f} [{r.low:+.1f}, {r.high:+.1f}]; p = {self.p_adjusted:.2g}"


def compare_family(pairs: list[tuple[Point, Point]]) -> list[Comparison | None]:
    """Each pair (a, b) tested by Welch's t on mean(a) - mean(b), Holm-adjusted over the pairs tested (those with at
    least MIN_RUNS finished runs a side; the others: None)."""
    results = {i: welch(a.values, b.values) for i, (a, b) in enumerate(pairs)
               if len(a.values) >= MIN_RUNS and len(b.values) >= MIN_RUNS}
    adjusted = dict(zip(results, holm([r.p for r in results.values()])))
    level = LEVEL / max(len(results), 1)
    return [Comparison(results[i], adjusted[i], minimal_detectable_effect(results[i], level)) if i in results
            else None for i in range(len(pairs))]


def _detectable(comparisons: list[Comparison]) -> str:
    """The family's smallest detectable differences: their median and range."""
    mdes = sorted(c.mde for c in comparisons)
    spread = f"{mdes[0]:.0f}" if len(mdes) == 1 else f"median {np.median(mdes):.0f}, from {mdes[0]:.0f} to {mdes[-1]:.0f}"
    return (f"the smallest true difference these seeds could detect (80% power, two-sided at 0.05 / {len(mdes)}): "
            f"{spread} return points")


def _versus_baseline(alphagrad: list[Point], best: Point, baseline: str, name: str,
                     tuned: bool) -> tuple[dict[int, Comparison], list[str]]:
    """Each AlphaGrad point against the baseline's setting `best` (its id -> Comparison; name: _baseline_name's;
    tuned: chosen among several) and the section saying what the family of tests decides."""
    comparisons = compare_family([(p, best) for p in alphagrad])
    tested = {id(p): c for p, c in zip(alphagrad, comparisons) if c is not None}
    if not tested:
        return {}, []
    chosen = f", chosen on these same seeds and so optimistic for {baseline}" if tuned else ""
    verdicts = []
    for word, keep in (("above", lambda c: c.differs and c.result.estimate > 0),
                       ("below", lambda c: c.differs and c.result.estimate < 0)):
        found = [p for p in alphagrad if id(p) in tested and keep(tested[id(p)])]
        verdicts.append(f"{len(found)} {word}" + (" (" + "; ".join(f"{p.label}, k {p.k:.3g}" for p in found) + ")"
                                                  if found else ""))
    undecided = sum(not c.differs for c in tested.values())
    lines = [f"## Against {baseline}" + ("'s best" if tuned else ""), "",
             f"Each AlphaGrad point against {name}{chosen}: Welch's t on the difference of mean final returns "
             f"(the tables' last column: AlphaGrad - {baseline}, its 95% interval and the Holm-adjusted p over the "
             f"{len(tested)} points tested, at least {MIN_RUNS} seeds a side). {', '.join(verdicts)}, {undecided} "
             f"undecided; {_detectable(list(tested.values()))}. A point not above {baseline} is not shown worse "
             "unless it is below.", ""]
    return tested, lines


K_ONE = (0.9, 1.1)  # the point "at k = 1" of a setting: the sqrt(d) rule's alpha, up to rounding of alpha


def _below_k_one(alphagrad: list[Point]) -> list[str]:
    """The paper's section 6.3 conjecture, "tuning below the k = 1 threshold could unlock even greater performance
    gains", judged in each setting: each point with k < 1 against the setting's k = 1 point (Welch, Holm over every
    such pair). Per setting: holds when some k < 1 ends significantly above k = 1; does not hold when every k < 1
    ends significantly below it; otherwise undecided (estimate against when no k < 1 point's estimate is above)."""
    pairs, settings = [], []
    for setting in sorted({p.setting for p in alphagrad}, key=_natural):
        line = [p for p in alphagrad if p.setting == setting and p.k is not None]
        ones = [p for p in line if K_ONE[0] <= p.k <= K_ONE[1]]
        below = sorted((p for p in line if p.k < K_ONE[0]), key=lambda p: p.k)
        if ones and below:
            settings.append((ones[0], below))
            pairs += [(p, ones[0]) for p in below]
    comparisons = compare_family(pairs)
    tested = [c for c in comparisons if c is not None]
    if not tested:
        return []
    found = dict(zip((id(a) for a, _ in pairs), comparisons))
    lines = ["## Below k = 1", "",
             "The paper (section 6.3, PPO): \"tuning below the k = 1 threshold could potentially unlock even greater "
             "performance gains\". In each setting, every k < 1 point against the k = 1 point (Welch's t on the "
             f"difference of mean final returns, Holm over the {len(tested)} pairs; "
             f"{_detectable(tested)}): *holds* when some k < 1 ends significantly above k = 1, *does not hold* when "
             "every one ends significantly below it, otherwise *undecided* (*estimate against* when none is above "
             "k = 1 even as an estimate).", "",
             "| setting | k = 1 mean | k < 1 above k = 1 (Holm p < 0.05) | k < 1 below | verdict |", "|---|---|---|---|---|"]
    for one, below in settings:
        results = [found[id(p)] for p in below if found.get(id(p)) is not None]
        above = [p for p in below if (c := found.get(id(p))) is not None and c.differs and c.result.estimate > 0]
        under = [p for p in below if (c := found.get(id(p))) is not None and c.differs and c.result.estimate < 0]
        if above:
            verdict = "holds"
        elif results and len(under) == len(below):
            verdict = "does not hold"
        else:
            verdict = ("undecided, estimate against" if all(c.result.estimate <= 0 for c in results)
                       else "undecided")
        lines.append(f"| {one.label} | {one.mean:.1f} | "
                     + (", ".join(f"k {p.k:.3g}: {found[id(p)].text()}" for p in above) or "none") + " | "
                     + (", ".join(f"k {p.k:.3g}" for p in under) or "none") + f" | **{verdict}** |")
    return lines + [""]


@dataclass
class PooledEffect(TestResult):
    """A pooled t test (TestResult) with the heterogeneity of what it pools: Cochran's Q on k - 1 df and its p,
    I^2 (the share of the spread beyond sampling noise) and DerSimonian-Laird's between-pair variance tau^2."""
    q: float = math.nan
    q_p: float = math.nan
    i2: float = 0.0
    tau2: float = 0.0


def pooled_lr_effect(pairs: list[tuple[Point, Point]]) -> PooledEffect | None:
    """The pairs' differences at equal lr x alpha, higher lr minus lower, pooled: one t test of "only the product
    matters" (every difference 0), with power where the pairs lean one way. Random effects (DerSimonian and Laird,
    1986): weights 1 / (the pair's variance + tau^2), tau^2 from Cochran's Q (0, the fixed-effect estimate, when Q
    does not exceed its df; Q treats pairs that share a point as independent). A point in several pairs counts once
    in the variance (the pooled difference is a signed sum of point means, plus tau^2 times the squared weights),
    and the df are Welch-Satterthwaite's over the points and tau^2 (k - 1). None without a pair of MIN_RUNS seeds a
    side."""
    usable = [(a, b) if a.lr > b.lr else (b, a) for a, b in pairs
              if len(a.values) >= MIN_RUNS and len(b.values) >= MIN_RUNS]
    if not usable:
        return None
    points = {id(p): p for pair in usable for p in pair}
    variance = {key: float(np.var(p.values, ddof=1)) / len(p.values) for key, p in points.items()}
    pair_variances = np.array([variance[id(high)] + variance[id(low)] for high, low in usable])
    differences = np.array([np.mean(high.values) - np.mean(low.values) for high, low in usable])
    k = len(usable)
    q = q_p = math.nan
    i2 = tau2 = 0.0
    if k > 1 and np.all(pair_variances > 0):
        fixed = 1 / pair_variances
        q = float(np.sum(fixed * (differences - np.sum(fixed * differences) / fixed.sum()) ** 2))
        q_p = float(stats.chi2.sf(q, k - 1))
        i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
        tau2 = max(0.0, (q - (k - 1)) / (fixed.sum() - np.sum(fixed ** 2) / fixed.sum()))
    weights = 1 / (pair_variances + tau2) if np.all(pair_variances + tau2 > 0) else np.ones(k)
    weights /= weights.sum()
    loading = dict.fromkeys(points, 0.0)  # each point mean's coefficient in the pooled difference
    for weight, (high, low) in zip(weights, usable):
        loading[id(high)] += weight
        loading[id(low)] -= weight
    parts = [(loading[key] ** 2 * variance[key], len(points[key].values) - 1) for key in points]
    parts.append((tau2 * float(np.sum(weights ** 2)), k - 1))
    total = sum(part for part, _ in parts)
    df = (total ** 2 / sum(part ** 2 / part_df for part, part_df in parts if part > 0)
          if total > 0 else sum(len(p.values) - 1 for p in points.values()))
    estimate = sum(loading[key] * float(np.mean(p.values)) for key, p in points.items())
    result = t_result(estimate, math.sqrt(total), df, (k,))
    return PooledEffect(**vars(result), q=q, q_p=q_p, i2=i2, tau2=tau2)


def _same_step_pairs(alphagrad: list[Point]) -> list[str]:
    """A table of the pairs of settings that differ only in lr and reach the same lr x alpha (within 1%), each tested
    by Welch's t (Holm over the pairs): where the update is linear in alpha these pairs are the same optimizer."""
    def besides_lr(point: Point) -> tuple:
        return tuple((option, value) for option, value in point.setting if option.rpartition(".")[2] != "lr")

    pairs = sorted(((a, b) for i, a in enumerate(alphagrad) for b in alphagrad[i + 1:]
                    if a.lr != b.lr and besides_lr(a) == besides_lr(b) and a.step and b.step
                    and abs(math.log(a.step / b.step)) < 0.01), key=lambda pair: pair[0].step)
    if not pairs:
        return []
    comparisons = compare_family(pairs)
    lines = ["## Same lr x alpha, different lr", "",
             "| lr x alpha | setting, k: IQM [95% CI] | setting, k: IQM [95% CI] | difference of means [95% CI]; Holm p |",
             "|---|---|---|---|"]
    for (a, b), comparison in zip(pairs, comparisons):
        tested = "-" if comparison is None else comparison.text() + (" **differ**" if comparison.differs else "")
        lines.append(f"| {a.step:.3g} | {a.label}, k {a.k:.3g}: {_with_ci(a)} | {b.label}, k {b.k:.3g}: {_with_ci(b)} | "
                     f"{tested} |")
    tested = [c for c in comparisons if c is not None]
    if not tested:
        return lines + ["", f"No pair has {MIN_RUNS} seeds a side yet: none is tested.", ""]
    differing = sum(c.differs for c in tested)
    verdict = (f"No pair differs (Holm over the {len(tested)} tested): the data are consistent with only the product "
               f"mattering, which they cannot prove; {_detectable(tested)}." if not differing else
               f"{differing} of {len(tested)} pairs differ (Holm): there alpha and lr do not trade one for one (the "
               f"tanh is not linear at that k, or the lr matters beyond the step); {_detectable(tested)}.")
    lines += ["", verdict, "", _pooled_text(pooled_lr_effect(pairs))]
    unfrozen = [(a, b) for a, b in pairs if a.frozen[1] and b.frozen[1] and not a.frozen[0] and not b.frozen[0]]
    if (linear := pooled_lr_effect(unfrozen)) is not None and linear.n[0] < len(tested):
        lines += ["", _pooled_text(linear, " in which no measured run froze") + " (Where the tanh can stay linear; "
                  "a split chosen after seeing which runs froze, so a description, not a planned test.)"]
    return lines + [""]


def _pooled_text(pooled: PooledEffect, scope: str = "") -> str:
    """The pooled lr effect at equal lr x alpha (pooled_lr_effect) over the tested pairs (scope: which of them), how
    much the pairs disagree, what it decides and what it could detect."""
    spread = ("" if math.isnan(pooled.q) else
              f" Heterogeneity: Cochran's Q = {pooled.q:.1f} on {pooled.n[0] - 1} df (p = {pooled.q_p:.2g}), I^2 = "
              f"{pooled.i2:.0%}" + (f", so the estimate is random-effects (DerSimonian-Laird; the pairs' true "
                                    f"differences spread by tau = {math.sqrt(pooled.tau2):.0f} return points): the "
                                    "average of differences that disagree, not one shared effect."
                                    if pooled.tau2 > 0 else ": no spread beyond sampling noise (tau = 0), so the "
                                    "random-effects estimate is the fixed-effect one."))
    return (f"Pooled over the {pooled.n[0]} tested pairs{scope} (higher lr minus lower lr at the same lr x alpha, "
            f"random-effects inverse-variance weights): {pooled.estimate:+.1f} [{pooled.low:+.1f}, {pooled.high:+.1f}]"
            f", p = {pooled.p:.2g}: " + ("the lr matters beyond the product, this way on average" if pooled.p < LEVEL
                                         else "no lr effect at equal product found")
            + f"; the smallest pooled effect these seeds could detect (80% power, two-sided at 0.05): "
            f"{minimal_detectable_effect(pooled, LEVEL):.0f} return points." + spread)


def write_sensitivity(runs: list[Run], out_dir: Path, baseline: str = "adam", final_window: int = 100) -> Path:
    """sensitivity.csv, the figure and SENSITIVITY.md (a table per setting and what the data can say)."""
    env, points = sensitivity_points(runs)
    kept, set_aside = baseline_settings(points, baseline)
    best = max(kept, key=lambda p: p.iqm) if kept else None
    name = _baseline_name(best, kept, set_aside, baseline) if best is not None else baseline
    alphagrad = [p for p in points if p.alpha is not None]
    versus, versus_lines = (_versus_baseline(alphagrad, best, baseline, name, len(kept) > 1) if best is not None
                            else ({}, []))
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "sensitivity.csv") as f:
        writer = csv.writer(f)
        writer.writerow(["optimizer", "setting", "alpha", "k", "runs", "finished", "iqm", "iqm_ci_low", "iqm_ci_high",
                         "mean", "saturation", "frozen", "frozen_measured", "vs_baseline_mean_diff", "vs_baseline_low",
                         "vs_baseline_high", "vs_baseline_p_holm", "vs_baseline_mde"])
        for p in points:
            comparison = versus.get(id(p))
            tested = [comparison.result.estimate, comparison.result.low, comparison.result.high, comparison.p_adjusted,
                      comparison.mde] if comparison is not None else [""] * 5
            writer.writerow([p.optimizer, p.label, p.alpha, p.k, p.runs, p.finished, p.iqm, *p.ci, p.mean,
                             p.saturation, *p.frozen, *tested])
    figures = plot_sensitivity(env, points, best, name, out_dir, budget_text(runs))
    lines = [f"# Alpha sensitivity: {env}", "",
             f"Final return (mean of the last {final_window} episodes per run; IQM over seeds with its 95% BCa CI) "
             f"against k = alpha / sqrt(d), d = {PAPER_D[env]:,} (the paper's Table 2), in each setting; S = the "
             "fraction of |alpha g_hat| above 2.5 over the whole network, averaged over training (section 7.3); "
             "lr x alpha = the step of AlphaGrad's update where tanh is linear (small |alpha g_hat|): there the "
             "update is lr x alpha x g / ||g|| per tensor, normalized gradient descent, so settings with equal "
             "lr x alpha are the same optimizer and only the product needs tuning; frozen = the runs in which a "
             f"network stopped changing (over {FROZEN_FRACTION:.0%} of its logged updates changed no parameter, e.g. "
             "a TD3 actor whose tanh saturated: its gradient is exactly 0 in float32) of those whose records keep "
             "update norms (- where none do).", "",
             f"Budget: {budget_text(runs)}." + budget_note(runs), ""]
    if best is not None:
        lines += [_baseline_text(name, best, kept, set_aside), ""]
    for setting in sorted({p.setting for p in alphagrad}, key=_natural):
        line = sorted((p for p in alphagrad if p.setting == setting), key=lambda p: p.k)
        top = max(line, key=lambda p: p.iqm if math.isfinite(p.iqm) else -math.inf)
        lines += ["## AlphaGrad" + (f", {line[0].label}" if setting else ""), "",
                  "| k | alpha | lr x alpha | seeds | IQM [95% CI] | mean | S | frozen |"
                  + (f" mean - {baseline}'s [95% CI]; Holm p |" if versus else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|" if versus else "")]
        for p in line:
            step = "-" if p.step is None else f"{p.step:.3g}"
            row = f"| {p.k:.3g} | {p.alpha:g} | {step} | {p.finished}/{p.runs} | {_with_ci(p)} | {p.mean:.1f} | " \
                  f"{p.saturation:.3f} | {p.frozen_text} |"
            if versus:
                comparison = versus.get(id(p))
                row += " - |" if comparison is None else f" {comparison.text()}" + (
                    f" **{'above' if comparison.result.estimate > 0 else 'below'}**" if comparison.differs else "") + " |"
            lines.append(row)
        if all(map(math.isfinite, top.ci)):
            overlapping = [p for p in line if all(map(math.isfinite, p.ci)) and p.ci[1] >= top.ci[0]]
            lines += ["", f"Best k {top.k:.3g} (IQM {top.iqm:.1f}); k values whose CI reaches the best's lower bound "
                      f"(not separable from it at {top.finished} seeds): "
                      + ", ".join(f"{p.k:.3g}" for p in overlapping) + "." + _at_grid_edge(top, line), ""]
        else:
            lines += ["", f"Highest IQM at k {top.k:.3g} ({top.iqm:.1f}), from {_seeds(top.finished)}: no interval "
                      "yet (at least 2 seeds per k), so no k is separable from another." + _at_grid_edge(top, line), ""]
    lines += versus_lines
    lines += _below_k_one(alphagrad)
    lines += _same_step_pairs(alphagrad)
    seeds = sorted({p.finished for p in points})
    shown = _seeds(seeds[-1]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds"
    reading = ("no point has a CI yet, so the tables rank settings without separating any" if seeds[-1] < 2 else
               "a setting's CI is wide (and a BCa bootstrap's is narrower than its nominal 95% at under ~10 seeds); "
               "the tests above decide what differs, and a difference they do not find is undecided, not absent")
    lines += [f"Reading: with {shown} per point {reading}.", "", "## Figure", ""]
    lines += [f"![{path.stem}]({path.name})" for path in figures if path.suffix == ".png"]
    path = out_dir / "SENSITIVITY.md"
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    return path
