"""The benchmark's leaderboard, rebuilt from committed entries (alphagrad_rl.benchmark): each optimizer's
evaluation runs scored per task against the random policy (0) and the tuned reference optimizer, Adam (1), then
aggregated across tasks (alphagrad_rl.suite_scores: IQM, mean, median, optimality gap, probability of improvement
over Adam, performance profiles; stratified bootstrap intervals).

A row counts only when it ran under the current suite digest, spent exactly the suite's tuning budget on every task
(trials, tuning seeds) and has a finished evaluation run on every evaluation seed; any other row is listed with the
reason, never mixed in. Analysis layer: no torch.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import edge_of_search, iqm, load_runs
from .runs import atomic_write
from .suite import Suite, anchors_path, searched_ranges
from .suite_scores import AGGREGATES, Estimate, aggregate, improvement_over, normalized, performance_profile

TUNED_ARM = "tuned"  # the evaluation sweep's arm (alphagrad_rl.tuning.final_sweep_config)


@dataclasses.dataclass
class Row:
    name: str
    row: dict[str, Any]
    returns: dict[str, list[float | None]]  # per task: each evaluation seed's final return (None: crashed), seed order
    scores: list[np.ndarray] = dataclasses.field(default_factory=list)  # per task, in the suite's order

    def crashed(self) -> dict[str, int]:
        """Per task, the evaluation runs that crashed (a non-finite loss), scored as the random policy."""
        return {task: values.count(None) for task, values in self.returns.items() if None in values}


def _final_returns(task_dir: Path, last_episodes: int) -> dict[int, float | None]:
    """Each evaluation seed's final return: a finished run's, or None for a run that crashed (as in tuning, it
    scores as the random policy; a diverging optimizer is scored, not left out)."""
    runs = load_runs(task_dir / "records", last_episodes) if (task_dir / "records").is_dir() else []
    finals: dict[int, float | None] = {run.seed: float(run.row["final_return"]) for run in runs
                                       if run.arm == TUNED_ARM and run.status == "finished" and run.included}
    finals.update({run.seed: None for run in runs if run.arm == TUNED_ARM and run.status == "crashed"})
    return finals


def _problem(suite: Suite, row: dict[str, Any], returns: dict[str, dict[int, float]]) -> str | None:
    """Why a row cannot be compared under `suite` (None when it can)."""
    stamp = row.get("suite", {})
    if stamp.get("digest") != suite.digest():
        return (f"ran under suite v{stamp.get('version')} digest {stamp.get('digest')}, not the current "
                f"v{suite.version} digest {suite.digest()}")
    for task in suite.tasks.values():
        result = row.get("tasks", {}).get(task.name)
        if result is None:
            return f"has no result on {task.name}"
        finished = result.get("trials", {}).get("finished")
        if finished != task.trials or result.get("tuning_seeds") != list(task.tuning_seeds):
            return (f"tuned {task.name} with {finished} trials on seeds {result.get('tuning_seeds')} (the suite: "
                    f"{task.trials} trials on seeds {list(task.tuning_seeds)})")
        if missing := sorted(set(task.eval_seeds) - set(returns[task.name])):
            return f"has no finished (or crashed) evaluation run on {task.name} for seed(s) {missing}"
    return None


def read_rows(suite: Suite, leaderboard: Path) -> tuple[list[Row], list[tuple[str, str]]]:
    """The profile's comparable rows, and (name, reason) for each row left out."""
    rows, left_out = [], []
    for path in sorted((leaderboard / suite.profile / "entries").glob("*/row.json")):
        row = json.loads(path.read_text())
        folder = path.parent
        returns = {task.name: _final_returns(folder / task.name, task.last_episodes) for task in suite.tasks.values()}
        if problem := _problem(suite, row, returns):
            left_out.append((row.get("name", folder.name), problem))
            continue
        rows.append(Row(row["name"], row, {task.name: [returns[task.name][seed] for seed in task.eval_seeds]
                                           for task in suite.tasks.values()}))
    return rows, left_out


def entries_in_progress(suite: Suite, leaderboard: Path) -> list[tuple[str, list[str]]]:
    """Each entry started under the profile without its row yet: (name, the tasks it has finished)."""
    entries = leaderboard / suite.profile / "entries"
    return [(path.parent.name, [task for task in suite.tasks if (path.parent / task / "result.json").exists()])
            for path in sorted(entries.glob("*/entry.json")) if not (path.parent / "row.json").exists()]


@dataclasses.dataclass
class Leaderboard:
    suite: Suite
    rows: list[Row]
    left_out: list[tuple[str, str]]
    random: dict[str, float]  # per task: the random policy's IQM final return
    reference: dict[str, float]  # per task: the reference optimizer's IQM final return
    finals: dict[str, dict[str, list[float]]]  # optimizer -> task -> final returns scored (crashed: random policy's)
    aggregates: dict[str, dict[str, Estimate]]  # optimizer -> aggregate name -> estimate
    improvement: dict[str, Estimate]  # optimizer -> P(its run beats the reference's run), averaged over tasks


def build(suite: Suite, leaderboard: Path) -> Leaderboard | None:
    """Score every comparable row; None while the anchors or the reference's row are missing."""
    path = anchors_path(suite, leaderboard)
    rows, left_out = read_rows(suite, leaderboard)
    reference_name = suite.rules["reference"]
    reference = next((row for row in rows if row.name == reference_name), None)
    if reference is None or not path.exists():
        return None
    anchors = json.loads(path.read_text())
    random = {name: float(anchors["random"][name]["iqm"]) for name in suite.tasks}
    finals = {row.name: {name: [random[name] if value is None else value for value in row.returns[name]]
                         for name in suite.tasks} for row in rows}
    reference_returns = {name: iqm(finals[reference.name][name]) for name in suite.tasks}
    for row in rows:
        row.scores = [normalized(finals[row.name][name], random[name], reference_returns[name])
                      for name in suite.tasks]
    aggregates = {row.name: aggregate(row.scores) for row in rows}
    improvement = {row.name: improvement_over(row.scores, reference.scores) for row in rows}
    return Leaderboard(suite, rows, left_out, random, reference_returns, finals, aggregates, improvement)


def ranked(board: Leaderboard) -> list[Row]:
    return sorted(board.rows, key=lambda row: (-board.aggregates[row.name]["IQM"].value, row.name))


CSV_COLUMNS = ["optimizer", *(f"{name.replace(' ', '_')}{part}" for name in AGGREGATES for part in ("", "_low", "_high")),
               "p_improvement_over_reference", "p_improvement_low", "p_improvement_high"]


def write_table(board: Leaderboard, path: Path) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    tasks = list(board.suite.tasks)
    writer.writerow([*CSV_COLUMNS, *(f"{task}_iqm_return" for task in tasks), "process_hours", "suite_version",
                     "suite_digest"])
    for row in ranked(board):
        estimates = [*board.aggregates[row.name].values(), board.improvement[row.name]]
        writer.writerow([row.name, *(f"{v:.6g}" for e in estimates for v in (e.value, e.low, e.high)),
                         *(f"{iqm(board.finals[row.name][task]):.6g}" for task in tasks),
                         f"{row.row['process_hours']:.3f}",
                         board.suite.version, board.suite.digest()])
    with atomic_write(path) as f:
        f.write(out.getvalue())


def _colours(board: Leaderboard) -> dict[str, Any]:
    from .report import BASELINE_STYLE, plt

    cycle = plt.get_cmap("tab10").colors
    others = [row.name for row in ranked(board) if row.name != board.suite.rules["reference"]]
    return {board.suite.rules["reference"]: BASELINE_STYLE[0],
            **{name: cycle[i % len(cycle)] for i, name in enumerate(others)}}


def plot_aggregates(board: Leaderboard, out_dir: Path) -> list[Path]:
    """One panel per aggregate: each optimizer's estimate and 95% interval (rliable's interval plot)."""
    from .report import plt, save_figure

    order = list(reversed(ranked(board)))
    colours = _colours(board)
    figure, axes = plt.subplots(1, len(AGGREGATES) + 1, figsize=(3.0 * (len(AGGREGATES) + 1), 0.5 * len(order) + 1.6),
                                sharey=True)
    panels = [(name, lambda row, name=name: board.aggregates[row.name][name]) for name in AGGREGATES]
    panels.append((f"P(improvement over {board.suite.rules['reference']})", lambda row: board.improvement[row.name]))
    for axis, (title, estimate_of) in zip(axes, panels):
        for y, row in enumerate(order):
            e = estimate_of(row)
            axis.barh(y, e.high - e.low, left=e.low, height=0.5, color=colours[row.name], alpha=0.3)
            axis.errorbar(e.value, y, xerr=[[e.value - e.low], [e.high - e.value]], fmt="o", color=colours[row.name],
                          markersize=5, capsize=3, linewidth=1.2)
        axis.axvline(0.5 if title.startswith("P(") else 1.0, color="grey", linestyle="--", linewidth=0.8)
        axis.use_sticky_edges = False  # else a bar's left end pins the axis there and the interval meets the frame
        axis.margins(x=0.08)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("normalized score" if not title.startswith("P(") else "probability", fontsize=8)
    axes[0].set_yticks(range(len(order)), [row.name for row in order], fontsize=8)
    tasks = len(board.suite.tasks)
    figure.suptitle(f"{tasks} task{'s' * (tasks != 1)}, {board.suite.profile} profile: estimates (dots) with 95% "
                    "stratified bootstrap intervals (0: random policy, 1: tuned Adam)", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, out_dir / "aggregates")


def plot_profiles(board: Leaderboard, out_dir: Path) -> list[Path]:
    """Performance profiles: the fraction of runs (all tasks) scoring above tau."""
    from .report import plt, save_figure

    pooled = np.concatenate([s for row in board.rows for s in row.scores])
    taus = np.linspace(min(0.0, float(pooled.min())), max(1.5, float(pooled.max())), 201)
    colours = _colours(board)
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for row in ranked(board):
        reference = row.name == board.suite.rules["reference"]
        axis.plot(taus, performance_profile(row.scores, taus), color=colours[row.name],
                  linewidth=2.2 if reference else 1.4, label=row.name)
    axis.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
    axis.set_xlabel("normalized score tau (0: random policy, 1: tuned Adam)")
    axis.set_ylabel("fraction of runs with score > tau")
    tasks = len(board.suite.tasks)
    axis.set_title(f"Performance profiles, {board.suite.profile} profile ({tasks} task{'s' * (tasks != 1)} x "
                   f"{len(next(iter(board.suite.tasks.values())).eval_seeds)} seeds)", fontsize=9)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    figure.tight_layout()
    return save_figure(figure, out_dir / "profiles")


def write_leaderboard(suite: Suite, leaderboard: Path) -> Path:
    """LEADERBOARD.md, leaderboard.csv, aggregates.png/svg and profiles.png/svg under <leaderboard>/<profile>/."""
    out_dir = leaderboard / suite.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    board = build(suite, leaderboard)
    lines = [f"# Optimizer leaderboard: {suite.profile} profile", "",
             f"Suite `{suite.path}` version {suite.version}, digest `{suite.digest()}`"
             + (f" ({suite.description})" if suite.description else "") + ". Every optimizer is tuned alike: its lr "
             "log-uniform over its range and its own searched flags, Optuna TPE (the same sampler seed), the same "
             "trials on the same tuning seeds; then its best setting trains on fresh evaluation seeds. A run's score: "
             f"(its final return - the random policy's) / (tuned {suite.rules['reference']}'s - the random policy's), "
             "its final return the mean of its last episodes, each anchor the IQM over the evaluation seeds.", "",
             "| task | program | steps | trials x tuning seeds | pruner | evaluation seeds | final return over |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {t.name} | `{t.program}` ({t.parameters.get('env-id', '')}) | {t.total_timesteps:,} | {t.trials} x "
              f"{len(t.tuning_seeds)} | {t.pruner.get('name')} | {len(t.eval_seeds)} | last {t.last_episodes} "
              "episodes |" for t in suite.tasks.values()]
    lines.append("")
    if board is None:
        lines += [f"No leaderboard yet: it needs the random-policy anchors and the reference "
                  f"({suite.rules['reference']}) row: `alphagrad-rl benchmark --optimizer {suite.rules['reference']}"
                  f" --profile {suite.profile}`.", ""]
        rows, left_out = read_rows(suite, leaderboard)
        lines += [f"Rows waiting for it: {', '.join(row.name for row in rows) or 'none'}.", ""]
    else:
        lines += _board_lines(board, out_dir)
        left_out = board.left_out
    if left_out:
        lines += ["## Rows not compared", ""] + [f"- {name}: {reason}" for name, reason in left_out] + [""]
    if unfinished := entries_in_progress(suite, leaderboard):
        lines += ["## Entries in progress", "", "Running `alphagrad-rl benchmark --optimizer NAME` again resumes each.",
                  ""] + [f"- {name}: {len(done)}/{len(suite.tasks)} tasks done" + (f" ({', '.join(done)})" if done
                                                                                   else "")
                         for name, done in unfinished] + [""]
    path = out_dir / "LEADERBOARD.md"
    with atomic_write(path) as f:
        f.write("\n".join(lines))
    return path


def decided_line(board: Leaderboard, reference: str) -> str | None:
    """What the seeds decide: the optimizers whose P(improvement over `reference`) interval excludes 0.5, each with
    its side, and the widest interval's half-width (the smallest shift from 0.5 every row could detect); None while
    the reference is the only row."""
    others = {name: e for name, e in board.improvement.items() if name != reference}
    if not others:
        return None
    decided = [f"{name} ({'above' if e.low > 0.5 else 'below'})" for name, e in others.items()
               if not e.low <= 0.5 <= e.high]
    widest = max((e.high - e.low) / 2 for e in others.values())
    return (f"What the seeds decide: an optimizer differs from {reference} where its P(improvement) interval excludes "
            f"0.5: {', '.join(decided) or 'none'}. The widest P(improvement) interval has a half-width of {widest:.2f}: "
            "a shift of P(improvement) from 0.5 smaller than that may go undetected at these seeds.")


def _tuned_setting(ranges: dict[str, dict[str, Any]], flag: str, value: Any) -> tuple[str, str | None]:
    """A tuned flag as the table shows it (`lr=0.000366`) and the end of its searched range (suite.searched_ranges)
    it lies at, if any."""
    name = flag.split(".", 1)[-1]
    shown = f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
    searched = ranges.get(name, {})
    if isinstance(value, bool) or not isinstance(value, int | float) or "low" not in searched:
        return shown, None
    return shown, edge_of_search(value, searched["low"], searched["high"], searched.get("log", False))


def _board_lines(board: Leaderboard, out_dir: Path) -> list[str]:
    suite, tasks = board.suite, list(board.suite.tasks)
    write_table(board, out_dir / "leaderboard.csv")
    figures = plot_aggregates(board, out_dir) + plot_profiles(board, out_dir)
    reference = suite.rules["reference"]
    lines = ["## Scores across tasks", "",
             f"IQM, mean and median of the per-task mean, optimality gap (mean shortfall below 1; lower is better), "
             f"and P(improvement): the probability that a run of the optimizer beats a run of tuned {reference} on "
             "the same task, averaged over tasks. 95% stratified bootstrap intervals (BCa).", "",
             "| optimizer | IQM | mean | median | optimality gap | P(improvement over " + reference + ") | "
             "process-hours |", "|---|---|---|---|---|---|---|"]
    for row in ranked(board):
        estimates = board.aggregates[row.name]
        lines.append(f"| {row.name} | " + " | ".join(str(estimates[name]) for name in AGGREGATES)
                     + f" | {board.improvement[row.name]} | {row.row['process_hours']:.2f} |")
    verdict = decided_line(board, reference)
    if verdict:
        lines += ["", verdict]
    lines += ["", "## Per task: IQM final return over the evaluation seeds", "",
              "| optimizer | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks),
              "| random policy (score 0) | " + " | ".join(f"{board.random[t]:.1f}" for t in tasks) + " |"]
    for row in ranked(board):
        lines.append(f"| {row.name} | " + " | ".join(f"{iqm(board.finals[row.name][t]):.1f}" for t in tasks) + " |")
    if crashed := {row.name: row.crashed() for row in ranked(board) if row.crashed()}:
        lines += ["", "Evaluation runs that crashed (a non-finite loss), scored as the random policy: " + "; ".join(
            f"{name} ({', '.join(f'{task}: {n}' for task, n in tasks_crashed.items())})"
            for name, tasks_crashed in crashed.items()) + "."]
    lines += ["", "## Tuned settings", "", "| optimizer | definition | " + " | ".join(tasks) + " |",
              "|---|---|" + "---|" * len(tasks)]
    at_edges = False
    for row in ranked(board):
        ranges, cells = searched_ranges(row.row["definition"]), []
        for task in tasks:
            settings = [_tuned_setting(ranges, flag, value)
                        for flag, value in row.row["tasks"][task]["best"]["params"].items()]
            at_edges |= any(edge for _, edge in settings)
            cells.append(", ".join(text + (f" ({edge} end)" if edge else "") for text, edge in settings))
        lines.append(f"| {row.name} | {row.row['definition'].get('description', '')} | " + " | ".join(cells) + " |")
    if at_edges:
        lines += ["", "(low end), (high end): the best value lies within a tenth of its searched range (on a log scale "
                  "for a log range) of that end, so the optimum may lie outside the range searched."]
    lines += ["", "## Software", ""]
    for row in ranked(board):
        software = ", ".join(f"{package} {' / '.join(versions)}" for package, versions in row.row["software"].items())
        lines.append(f"- {row.name}: {software}")
    lines += ["", "## Figures", ""] + [f"![{path.stem}]({path.name})" for path in figures if path.suffix == ".png"]
    return lines + [""]
