"""Figures (matplotlib, PNG and SVG) and the markdown report of a sweep's analysis."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .analysis import (  # noqa: E402
    CONFIDENCE,
    PANELS,
    PROVENANCE_FILE,
    SMOOTHING_EPISODES,
    ArmStats,
    Run,
    arm_stats,
    load_runs,
    series,
    smoothed,
    write_arm_table,
    write_table,
)
from .claims import (  # noqa: E402
    AUTHOR_BUDGETS,
    AUTHOR_SOFTWARE,
    LEVEL,
    MIN_RUNS,
    Claim,
    paper_claims,
    variant_comparisons,
    varied_arm,
)
from .runs import process_seconds  # noqa: E402

GRID_POINTS = 200
BAND_RESAMPLES = 1000
STEPS_AXIS = FuncFormatter(lambda x, _: f"{x / 1e6:g}M" if abs(x) >= 1e6 else f"{x / 1e3:g}k" if x else "0")


def save_figure(figure, path_stem: Path) -> list[Path]:
    """PNG and SVG, byte-identical when made again from the same records (no date, fixed SVG ids)."""
    paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".svg")]
    with plt.rc_context({"svg.hashsalt": path_stem.name}):
        for path in paths:
            figure.savefig(path, dpi=120 if path.suffix == ".png" else None, bbox_inches="tight",
                           metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(figure)
    return paths


def curve_band(runs: list[Run], metric: str, grid: np.ndarray,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean over runs of `metric` (smoothed, interpolated on `grid`) with a 95% percentile-bootstrap band over
    runs (resampling whole runs), which stays within the range of the runs' curves; shown only where at least half
    of the runs have data; None without data."""
    curves = []
    for run in runs:
        steps, values = series(run.metrics, metric)
        values = smoothed(values)
        steps = steps[len(steps) - len(values):]
        if len(steps) >= 2:
            inside = grid <= steps[-1]
            curve = np.full(len(grid), np.nan)
            curve[inside] = np.interp(grid[inside], steps, values)
            curves.append(curve)
    if not curves:
        return None
    stacked = np.vstack(curves)
    picks = np.random.default_rng(seed).integers(0, len(curves), size=(BAND_RESAMPLES, len(curves)))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grid points past some runs' ends
        mean = np.nanmean(stacked, axis=0)
        resampled = np.nanmean(stacked[picks], axis=1)  # (resamples, grid)
        low, high = np.nanpercentile(resampled, [2.5, 97.5], axis=0)
    sparse = np.sum(~np.isnan(stacked), axis=0) < len(curves) / 2  # past the end of most runs' curves
    return tuple(np.where(sparse, np.nan, values) for values in (mean, low, high))


_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def natural_key(text: str) -> list:
    """Sort key reading the numbers in `text` as numbers, decimals and exponents included: alphagrad-93 before
    alphagrad-186, k0.05 before k0.2, lr=6.25e-05 before lr=0.00025 (a name's dashes are separators, not signs)."""
    return [float(part) if i % 2 else part for i, part in enumerate(_NUMBER.split(text))]


def natural_order(arms, baseline: str) -> list[str]:
    """Arm names with the baseline first, then in natural order (natural_key)."""
    return sorted(dict.fromkeys(arms), key=lambda arm: (arm != baseline, natural_key(arm)))


# per metric: panel title and y-axis label, in words with units
METRIC_LABELS = {
    "charts/episodic_return": ("Episodic return", "return (sum of rewards)"),
    "charts/episodic_length": ("Episode length", "env steps"),
    "losses/td_loss": ("TD loss", "mean squared TD error"),
    "losses/q_values": ("Q-value of the taken action", "Q (mean over the batch)"),
    "losses/qf1_values": ("Critic Q-value", "Q1 (mean over the batch)"),
    "losses/actor_loss": ("Actor loss", "-Q1(s, pi(s)) (mean over the batch)"),
    "losses/explained_variance": ("Value function's explained variance", "fraction (1: exact)"),
    "losses/entropy": ("Policy entropy", "nats"),
    "losses/approx_kl": ("Approximate KL of each update", "nats"),
}
ALGORITHM_NAMES = {"dqn": "DQN", "td3_continuous_action": "TD3", "ppo_continuous_action": "PPO"}
BASELINE_STYLE = ("black", "-", 2.2)  # the baseline: the same in every panel and figure
VARIANT_LINESTYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
LOG_SCALE_CANDIDATES = {"losses/td_loss", "losses/approx_kl"}  # drawn on a log scale where they span decades
LINES_PER_PANEL = 8  # the baseline and at most 7 other arms; more arms go to further rows of panels


def arm_styles(arms: Sequence[str], baseline: str | None = None) -> dict[str, tuple[Any, Any, float]]:
    """{arm: (colour, linestyle, linewidth)}: the baseline black and thick; every other arm the colour of the arm it
    varies by name (alphagrad-93-no-momentum, alphagrad-93-lr-div10: alphagrad-93's; a variant of a variant: the
    root's), each root its own colour (tab10, then tab20's lighter shades), solid; a variant's line style is that of
    its variation (the name's suffix after its root: "no-momentum" is one style in the whole figure). A grid sweep's
    arm ("k0.1__optim.lr=0.001") is styled by its name before "__": one colour per alpha across the grid."""
    names = list(dict.fromkeys(_grid_split(arm)[0] for arm in arms))
    styles = _name_styles(names, baseline)
    return {arm: styles[_grid_split(arm)[0]] for arm in arms}


def _grid_split(arm: str) -> tuple[str, str]:
    """An arm's name and its grid values ("k0.1__optim.lr=0.001": "k0.1", "optim.lr=0.001"; "" without a grid)."""
    name, _, grid = arm.partition("__")
    return name, grid


def _name_styles(arms: list[str], baseline: str | None) -> dict[str, tuple[Any, Any, float]]:
    palette = [c for c in plt.get_cmap("tab10").colors if c != plt.get_cmap("tab10").colors[7]]  # no grey
    palette += list(plt.get_cmap("tab20").colors[1::2])
    roots = {arm: _root(arm, arms) for arm in arms}
    colours: dict[str, Any] = {}
    for root in dict.fromkeys(roots.values()):
        if root != baseline:
            colours[root] = palette[len(colours) % len(palette)]
    kinds = list(dict.fromkeys(_variation(arm, arms) for arm in arms if roots[arm] != arm))
    styles = {}
    for arm in arms:
        root = roots[arm]
        colour = BASELINE_STYLE[0] if root == baseline else colours[root]
        linestyle = "-" if root == arm else VARIANT_LINESTYLES[kinds.index(_variation(arm, arms)) % len(
            VARIANT_LINESTYLES)]
        styles[arm] = BASELINE_STYLE if arm == baseline else (colour, linestyle, 1.4)
    return styles


def _variation(arm: str, arms: Sequence[str]) -> str:
    """What `arm` varies of its root, by name: "no-momentum" for alphagrad-93-no-momentum ("" for a root)."""
    return arm[len(_root(arm, arms)) + 1:]


def _root(arm: str, arms: Sequence[str]) -> str:
    """The arm that `arm` varies by name, followed back to one that varies none (itself if it varies none)."""
    while (base := varied_arm(arm, arms)) is not None:
        arm = base
    return arm


def panel_rows(arms: Sequence[str], baseline: str) -> list[list[str]]:
    """The arms of each row of panels, at most LINES_PER_PANEL lines each, the baseline in every row: first the
    arms that vary none by name, then each variant beside the arm it varies, variants of one kind together; in a grid
    sweep (arms "<name>__<grid values>") each grid value's arms in rows of their own, with that value's baseline."""
    rows = []
    for grid in dict.fromkeys(_grid_split(arm)[1] for arm in arms):
        names = [_grid_split(arm)[0] for arm in arms if _grid_split(arm)[1] == grid]
        rows += [[f"{name}__{grid}" if grid else name for name in row] for row in _name_rows(names, baseline)]
    return rows


def _name_rows(arms: list[str], baseline: str) -> list[list[str]]:
    others = [arm for arm in arms if arm != baseline]
    roots = [arm for arm in others if varied_arm(arm, arms) is None]
    kinds = list(dict.fromkeys(_variation(arm, arms) for arm in others if arm not in roots))
    variants = sorted((arm for arm in others if arm not in roots),
                      key=lambda arm: (kinds.index(_variation(arm, arms)), others.index(arm)))
    beside_base = [[base, arm] if (base := varied_arm(arm, arms)) != baseline else [arm] for arm in variants]
    blocks = [[[arm] for arm in roots]] + [[group for group in beside_base if _variation(group[-1], arms) == kind]
                                           for kind in kinds]  # the roots, then each variation's arms
    room = LINES_PER_PANEL - 1
    rows: list[list[str]] = []
    for index, block in enumerate(blocks):
        whole = set().union(*map(set, block))
        if index <= 1 or len(set(rows[-1]) | whole) > room:  # a block starts a row unless it fits whole beside
            rows.append([])
        for group in block:
            if len(set(rows[-1]) | set(group)) > room:
                rows.append([])
            rows[-1].extend(arm for arm in group if arm not in rows[-1])
    return [[baseline, *row] if baseline in arms else row for row in rows if row] or [[baseline]]  # it alone


def spans_decades(values: Sequence[np.ndarray]) -> bool:
    """Whether positive curves span two decades or more (drawn on a log scale)."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    return bool(len(finite)) and bool(np.all(finite > 0)) and finite.max() / finite.min() >= 100


def plot_panels(runs: list[Run], algorithm: str, out_dir: Path, baseline: str = "adam") -> list[Path]:
    metrics = PANELS.get(algorithm, ["charts/episodic_return"])
    runs = [run for run in runs if run.algorithm == algorithm and run.metrics]
    if not runs:
        return []
    end = max(max((row["step"] for row in run.metrics), default=0) for run in runs)
    grid = np.linspace(0, end, GRID_POINTS)
    arms = list(dict.fromkeys(run.arm for run in runs))
    styles = arm_styles(arms, baseline)
    bands = {(arm, metric): curve_band([run for run in runs if run.arm == arm], metric, grid)
             for arm in arms for metric in metrics}
    rows = panel_rows(arms, baseline)
    figure, axes = plt.subplots(len(rows), len(metrics), figsize=(4.0 * len(metrics) + 2.6, 3.1 * len(rows)),
                                squeeze=False, layout="constrained")  # which makes room for the title and legends
    for row, row_axes in zip(rows, axes):
        for axis, metric in zip(row_axes, metrics):
            drawn = []
            for arm in row:
                if (band := bands[(arm, metric)]) is None:
                    continue
                mean, low, high = band
                colour, linestyle, width = styles[arm]
                axis.plot(grid, mean, label=arm, color=colour, linestyle=linestyle, linewidth=width,
                          zorder=3 if _grid_split(arm)[0] == baseline else 2)
                axis.fill_between(grid, low, high, color=colour, alpha=0.12, linewidth=0)
                drawn.append(mean)
            title, unit = METRIC_LABELS.get(metric, (metric, ""))
            if metric in LOG_SCALE_CANDIDATES and spans_decades(drawn):
                axis.set_yscale("log")
                unit += " (log scale)"
            axis.set_title(title, fontsize=9)
            axis.set_ylabel(unit, fontsize=8)
            axis.set_xlabel("environment steps", fontsize=8)
            axis.xaxis.set_major_formatter(STEPS_AXIS)
            axis.tick_params(labelsize=7)
            axis.grid(alpha=0.3)
        handles = {label: handle for axis in row_axes for handle, label in zip(*axis.get_legend_handles_labels())}
        if handles:  # beside the row's last panel, one entry per arm drawn in the row
            row_axes[-1].legend([handles[arm] for arm in row if arm in handles],
                                [_grid_split(arm)[0] for arm in row if arm in handles],
                                title=_grid_split(row[0])[1] or None,
                                title_fontsize=7, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                                borderaxespad=0)
    environments = ", ".join(sorted({run.env_id for run in runs}))
    figure.suptitle(f"{ALGORITHM_NAMES.get(algorithm, algorithm)} on {environments}, {budget_text(runs)}:"
                    f" mean over seeds of {SMOOTHING_EPISODES}-point moving means, {int(CONFIDENCE * 100)}% bootstrap "
                    "band over seeds", fontsize=9)
    return save_figure(figure, out_dir / f"curves_{algorithm}")


def plot_iqm(arms: list[ArmStats], out_dir: Path, budget: str = "", baseline: str = "adam") -> list[Path]:
    """The IQM final return of each arm with its 95% BCa interval, the baseline's bar black and its level drawn
    across; a grid sweep's arms in one panel per grid value (shared y axis)."""
    shown = [a for a in arms if a.finished]
    if not shown:
        return []
    grids = list(dict.fromkeys(_grid_split(a.arm)[1] for a in shown))
    widths = [sum(_grid_split(a.arm)[1] == grid for a in shown) for grid in grids]
    figure, axes = plt.subplots(1, len(grids), figsize=(1.6 + 0.5 * sum(widths) + 0.4 * len(grids), 3.8), sharey=True,
                                squeeze=False, gridspec_kw={"width_ratios": widths})
    for axis, grid in zip(axes[0], grids):
        bars = [a for a in shown if _grid_split(a.arm)[1] == grid]
        values = [a.iqm for a in bars]
        errors = np.nan_to_num([[a.iqm - a.iqm_ci[0] for a in bars], [a.iqm_ci[1] - a.iqm for a in bars]])  # 1 run
        is_baseline = [_grid_split(a.arm)[0] == baseline for a in bars]
        axis.bar(range(len(bars)), values, yerr=errors, capsize=3, alpha=0.8,
                 color=[BASELINE_STYLE[0] if flag else "tab:blue" for flag in is_baseline])
        if any(is_baseline):
            axis.axhline(values[is_baseline.index(True)], color=BASELINE_STYLE[0], linewidth=0.8, linestyle="--",
                         zorder=0)
        axis.set_xticks(range(len(bars)), [_grid_split(a.arm)[0] for a in bars], rotation=45, ha="right", fontsize=7)
        axis.set_title(grid, fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("IQM final return (sum of rewards)", fontsize=8)
    figure.suptitle(f"IQM over seeds with {int(CONFIDENCE * 100)}% BCa CI; {baseline} in black"
                    + (f"; {budget}" if budget else ""), fontsize=8)
    figure.tight_layout()
    return save_figure(figure, out_dir / "iqm")


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def write_report(sweep_dirs: str | Path | Sequence[str | Path], out_dir: str | Path, final_window: int = 100,
                 baseline: str = "adam") -> Path:
    """Analyze every run under `sweep_dirs` (one sweep's folder, or several sweeps' analyzed together); write
    runs.csv, arms.csv, figures and REPORT.md into `out_dir`."""
    sweep_dirs = [Path(sweep_dirs)] if isinstance(sweep_dirs, (str, Path)) else [Path(d) for d in sweep_dirs]
    return report_runs(load_runs(sweep_dirs, final_window), sweep_dirs, out_dir, final_window, baseline)


def _relative_to(folder: Path, report_dir: Path) -> Path:
    """A records folder as a report names it: relative to the report's folder when inside it (no machine's path)."""
    try:
        return folder.resolve().relative_to(report_dir.resolve())
    except ValueError:
        return folder


def report_runs(runs: list[Run], sweep_dirs: Sequence[Path], out_dir: str | Path, final_window: int = 100,
                baseline: str = "adam") -> Path:
    """write_report for runs already loaded (load_runs) from `sweep_dirs`; sorts `runs` into the report's order."""
    out_dir = Path(out_dir)
    if not runs:
        raise ValueError("no run records (folders with config.json, or compact records) under "
                         + " or ".join(map(str, sweep_dirs)))
    check_comparable(runs)
    order = natural_order([run.arm for run in runs], baseline)
    runs.sort(key=lambda run: (order.index(run.arm), run.seed, run.name))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(runs, out_dir / "runs.csv")
    arms = arm_stats(runs, baseline)
    write_arm_table(arms, out_dir / "arms.csv")
    figures = [path for algorithm in dict.fromkeys(run.algorithm for run in runs)
               for path in plot_panels(runs, algorithm, out_dir, baseline)] + plot_iqm(
                   arms, out_dir, budget_text(runs), baseline)
    claims = paper_claims(runs, baseline)
    report = out_dir / "REPORT.md"
    shown = [_relative_to(Path(d), out_dir) for d in sweep_dirs]
    report.write_text(_markdown(shown, out_dir.name, runs, arms, claims, variant_comparisons(runs), figures,
                                final_window, baseline))
    return report


def check_comparable(runs: Sequence[Run]) -> None:
    """Raise ValueError, naming each group, when `runs` trained different algorithms, environments or budgets: one
    report compares arms only on the same task at the same budget (analyze such runs into separate reports)."""
    groups: dict[tuple[str, str, int], list[str]] = {}
    for run in runs:
        if run.status != "unreadable":
            key = (run.algorithm, run.env_id, int(run.summary.get("total_timesteps") or 0))
            groups.setdefault(key, []).append(run.name)
    if len(groups) > 1:
        raise ValueError("these runs trained different tasks or budgets, which one report cannot compare; analyze each "
                         "group apart (--output):\n" + "\n".join(
                             f"{len(names)} run(s) of {algorithm} on {env_id} at {steps:,} steps (e.g. {names[0]})"
                             for (algorithm, env_id, steps), names in sorted(groups.items())))


def budget_text(runs) -> str:
    """The runs' budgets in env steps."""
    return ", ".join(f"{steps:,}" for steps in sorted({int(run.summary.get("total_timesteps") or 0) for run in runs})
                     ) + " env steps per run"


def budget_note(runs) -> str:
    """Where the runs trained fewer steps than the paper's author did: said, with what remains to run (for reports
    that judge the paper's claims). (A budget within 1% of his counts as his: PPO rounds it down to whole rollouts,
    999,424 steps for 1M, as his code did.)"""
    short: dict[str, int] = {}  # algorithm -> the largest budget its runs trained, where below the author's
    for run in runs:
        author, steps = AUTHOR_BUDGETS.get(run.algorithm), int(run.summary.get("total_timesteps") or 0)
        if author and 0 < steps < 0.99 * author:
            short[run.algorithm] = max(steps, short.get(run.algorithm, 0))
    return "".join(f" **Reduced budget**: the author trained {algorithm} for {AUTHOR_BUDGETS[algorithm]:,} steps, these "
                   f"runs for {steps:,}; the results and claims here are at this budget, and what remains is the same "
                   f"sweep at {AUTHOR_BUDGETS[algorithm]:,} steps (the config's own budget, e.g. on a GPU)."
                   for algorithm, steps in sorted(short.items()))


def _compute_line(runs) -> str:
    """The training time the runs took, in process-hours (one torch thread per process): a run trained in a
    population of N counts 1/N of its process's wall-clock time."""
    sizes = Counter(run.summary.get("population_size") for run in runs)
    unknown = sizes.pop(None, 0)
    hours = sum(process_seconds(run.summary) for run in runs) / 3600
    parts = [f"{n} run{'s' * (n > 1)} alone" if size == 1 else f"{n} in populations of {size}"
             for size, n in sorted(sizes.items())]
    if unknown:
        parts.append(f"{unknown} whose records predate the population_size field, counted in full (an upper "
                     "bound if they shared a process)")
    shown = f"{hours:.2g}" if hours < 0.1 else f"{hours:.1f}"  # a short evaluation never reads 0.0
    return (f"Compute: {shown} process-hours of training (wall-clock, restarts excluded; a run trained in a "
            f"population of N counts 1/N of its process's time): {'; '.join(parts)}.")


def software_line(runs) -> str:
    """The software the runs trained with (their config.json's "software"): each package's version, or its versions
    with their run counts where the runs differ; the runs whose records predate the field, and those resumed under
    other versions than they started with."""
    started = [run.header.get("software") for run in runs]
    unrecorded = sum(versions is None for versions in started)
    statements = Counter(json.dumps(run.header["stated_software"], sort_keys=True) for run in runs
                         if "software" not in run.header and "stated_software" in run.header)
    stated = "".join(
        f"; for {n} run{'s' * (n > 1)} whose records predate the field, {records_folder_note(json.loads(text))}"
        for text, n in statements.items())
    if unrecorded == len(runs):
        return "Software: not recorded (the run records predate the field)" + stated + "."
    parts = []
    for package in dict.fromkeys(name for versions in started if versions for name in versions):
        counts = Counter(versions[package] for versions in started if versions and package in versions)
        shares = [f"{version} ({n} run{'s' * (n > 1)})" for version, n in sorted(counts.items())]
        parts.append(f"{package} " + (next(iter(counts)) if len(counts) == 1 else " / ".join(shares)))
    notes = []
    if unrecorded:
        notes.append(f"not recorded for {unrecorded} run{'s' * (unrecorded > 1)} (records older than the field)")
    unlike_author = [f"{package} {version}" for package, version in AUTHOR_SOFTWARE.items()
                     if any(versions and versions.get(package, version) != version for versions in started)]
    if unlike_author:
        notes.append(f"the paper's author ran {' and '.join(unlike_author)} (results/env-versions/ measures what "
                     "the difference changes)")
    resumed_under = [[name for resume in (run.summary or {}).get("resumes", []) for name in resume.get("software", {})]
                     for run in runs]  # per run, the packages a resume ran under other versions of
    changed = [names for names in resumed_under if names]
    if changed:
        notes.append(f"{len(changed)} run{'s' * (len(changed) > 1)} resumed under other versions of "
                     f"{', '.join(dict.fromkeys(name for names in changed for name in names))} (listed in each "
                     "summary's resumes)")
    return (f"Software (what each run started with): {', '.join(parts)}" + "".join(f"; {note}" for note in notes)
            + stated + ".")


def records_folder_note(stated: dict[str, Any]) -> str:
    """A provenance statement (analysis.stated_software) as report text."""
    versions = ", ".join(f"{package} {version}" for package, version in stated["software"].items())
    return f"their folder's {PROVENANCE_FILE} states {versions} ({stated['source']})"


def verdict_counts(claims: list[Claim]) -> str:
    """How many claims have each verdict, e.g. "9 hold, 3 do not hold, 2 undecided (1 with the estimate against)"."""
    counts = Counter(claim.verdict for claim in claims)
    against = counts["undecided, estimate against"]
    return (f"{counts['holds']} hold, {counts['does not hold']} do not hold, {counts['undecided'] + against} undecided"
            + (f" ({against} with the estimate against the claim)" if against else ""))


def _markdown(sweep_dirs, name, runs, arms, claims: list[Claim], variants: list[Claim], figures, final_window,
              baseline) -> str:
    statuses = {}
    for run in runs:
        statuses[run.status] = statuses.get(run.status, 0) + 1
    left_out = [run for run in runs if not run.included]
    lines = [
        f"# Report: {name}", "",
        f"Generated from the run records in {' and '.join(f'`{d}`' for d in sweep_dirs)}: "
        f"{len(runs)} run{'s' * (len(runs) != 1)} "
        f"({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}); {len(runs) - len(left_out)} in the "
        "statistics (finished, with a finite final return; the others are listed under 'Runs left out'). "
        f"Final return = mean of the last {final_window} episodes.", "",
        f"Environment: {', '.join(sorted({run.env_id for run in runs}))}; budget: {budget_text(runs)}."
        + (budget_note(runs) if claims else ""), "",
        _compute_line(runs), "", software_line(runs), "",
        "## Arms", "",
        f"| arm | finished | mean +- std | IQM [{int(CONFIDENCE * 100)}% CI] | P(improvement over {baseline}) "
        "| mean drawdown | variability |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in arms:
        p = a.improvement_over_baseline
        spread = f" +- {_fmt(a.std)}" if math.isfinite(a.std) else ""  # none from one run
        lines.append(f"| {a.arm} | {a.finished}/{a.runs} | {_fmt(a.mean)}{spread} | {_fmt(a.iqm)} "
                     f"[{_fmt(a.iqm_ci[0])}, {_fmt(a.iqm_ci[1])}] | "
                     + (f"{p[0]:.2f} [{_fmt(p[1], 2)}, {_fmt(p[2], 2)}]" if p else "-")
                     + f" | {_fmt(a.mean_drawdown)} | {_fmt(a.variability, 2)} |")
    tested = sum(claim.result is not None for claim in claims)
    lines += ["", "## Claims of the AlphaGrad paper", ""]
    if not claims:
        lines += ["No claim of the paper concerns these arms: claims are judged on the arms named after the paper's "
                  "settings (`adam`, and `alphagrad-<alpha>` at the paper's alphas for the algorithm)."]
    else:
        lines += ["Each claim is tested on the finished runs (Welch's t for two arms and for an arm against a "
                  "multiple of another's mean, the one-sample t against a fixed "
                  + (f"threshold); the {tested} p-values are Holm-adjusted together. " if tested else
                     f"threshold), once its arms have at least {MIN_RUNS} finished runs each; none has yet. ")
                  + f"One rule for every claim: *holds*: adjusted p < {LEVEL} with the estimate the claimed way; "
                  "*does not hold*: significant the other way; *undecided, estimate against*: not significant, the "
                  "estimate against the claim; *undecided*: not significant, the estimate the claimed way. MDE: the "
                  "smallest true effect (in the metric's units) the test would detect with 80% power at the Bonferroni "
                  f"level {LEVEL}/{tested or '(claims tested)'}; an undecided claim with a large MDE needs more seeds. "
                  "Each claim's definition says what is measured and, where the paper gives no number, which "
                  "threshold reads its words and why.", "",
                  f"Verdicts: {verdict_counts(claims)}.", "",
                  "| section | claim | paper | definition | ours: mean (n), difference [95% CI] | adjusted p | MDE | "
                  "verdict |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {c.section} | {c.claim} | {c.paper} | {c.definition} | {c.evidence} | "
                  + (f"{c.p_adjusted:.3g} | {c.result.mde:.3g}" if c.result is not None else "- | -")
                  + f" | **{c.verdict}** |" for c in claims]
    if variants:
        compared = sum(v.result is not None for v in variants)
        lines += ["", "## Extra arms and departures, measured", "",
                  "Each extra arm against the arm it varies: the difference in final return, then in each metric "
                  "the paper's claims for the algorithm use (Welch 95% interval), the p, the p Holm-adjusted over "
                  f"the {compared} comparisons of this table (read a difference as measured only where that is below "
                  f"{LEVEL}), and the MDE at the level that adjustment implies ({LEVEL} / {compared}, as for the "
                  "claims). Descriptive: these are not claims of the paper.", "",
                  "| comparison | mean (n), difference [95% CI] | p | Holm p | MDE |", "|---|---|---|---|---|"]
        lines += [f"| {v.claim} | {v.evidence} | "
                  + (f"{v.result.p:.3g} | {v.p_adjusted:.3g} | {v.result.mde:.3g} |" if v.result is not None
                     else "- | - | - |")
                  for v in variants]
    if left_out:
        lines += ["", "## Runs left out of the statistics", "", "| run | status | why |", "|---|---|---|"]
        lines += [f"| {run.name} | {run.status} | {run.reason_left_out.replace('|', '/')} |" for run in left_out]
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"]
    lines += ["", "## Definitions", "",
              "- IQM: interquartile mean of the final returns; CI: BCa bootstrap, stratified by environment, from the "
              "exact bootstrap distribution (no Monte-Carlo error; with fewer than ~10 runs per arm bootstrap "
              "intervals are narrower than their nominal 95%; the claims use t tests instead). A claim needs at least "
              "3 finished runs per arm.",
              "- Peak return: the best 10-episode moving mean; early return: mean return of the episodes ending in "
              "the first 25% of the steps; auc: the mean return over training.",
              "- P(improvement): probability that a random run of the arm ends above a random run of the baseline "
              "(Mann-Whitney U / nm, ties counting one half), with the Brunner-Munzel 95% CI.",
              "- Mean drawdown: mean over episodes of (best smoothed return so far - smoothed return), on the "
              "return curve smoothed over 10 episodes; 0 for a monotonic curve.",
              "- Variability: standard deviation of the step-to-step changes of the smoothed return curve on a "
              "100-point grid.",
              "- TD-loss spikes: logged TD losses that are non-finite or above 5x the median of the 20 values before "
              "them (relative to the recent level); TD-loss p99: the 99th percentile of the logged TD losses (their "
              "absolute size).",
              "- Relative drawdown: mean drawdown / peak return; peak retention: final return / peak return; "
              "dip-spike correlation: over 20 equal windows of a run's steps, Spearman's correlation between a "
              "window's largest TD loss and the fall of its mean return from the window before (computed from the "
              "TD losses a record keeps: every one, or every fifth in records exported before they were kept "
              "whole).",
              "- Per-run values: `runs.csv`; per-arm values: `arms.csv`.", ""]
    return "\n".join(lines)
