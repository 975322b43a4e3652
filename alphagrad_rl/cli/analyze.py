"""Analyze a sweep: tidy table, per-arm statistics with CIs, the paper's figures and REPORT.md with its claims;
for a sweep over AlphaGrad's alpha (>= 5 alphas in one setting), also the alpha-sensitivity figure and SENSITIVITY.md.

    python scripts/analyze.py results/runs/paper-dqn-cartpole     # run folders -> compact records -> report
    python scripts/analyze.py results/paper-dqn-cartpole/records  # the committed compact records -> report
    python scripts/analyze.py results/runs/sensitivity-td3-hopper-cpu --include results/paper-td3-hopper/records
    python scripts/analyze.py results/paper-td3-hopper/records --variant mujoco4=results/paper-td3-hopper-mujoco4/records \
        --output results/td3-mujoco-versions

Given run folders, it first writes (or refreshes) a compact record of every finished or crashed run into
<output>/records/ (small enough to commit), then builds the report from those records: a report is always
reproducible from the committed records alone, without rerunning anything. --include adds other sweeps' records
to the analysis without copying them (a run name found twice is an error). --variant SUFFIX=FOLDER adds runs of
the same arms made under another condition (another simulator version, say) as variants <arm>-SUFFIX, so the
report's "Extra arms and departures" measures what the condition changes in each arm.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from alphagrad_rl.analysis import as_variant, export_records, load_runs
from alphagrad_rl.report import report_runs
from alphagrad_rl.runs import check_results_dir
from alphagrad_rl.sensitivity import has_alpha_grid, write_sensitivity


@dataclass
class Args:
    sweep_dir: tyro.conf.Positional[Path]
    """a sweep's folder of run records (results/runs/<sweep name>), or of compact records (results/<sweep>/records)"""
    output: Path | None = None
    """where the report goes; default results/<sweep name>"""
    max_points: int = 1000
    """compact records keep at most this many points of each figure metric (every episode is kept)"""
    final_window: int = 100
    """final return = mean of the last N episodes"""
    baseline: str = "adam"
    """the arm the others are compared with"""
    include: tuple[Path, ...] = ()
    """other sweeps' run records (folders of runs or of compact records) analyzed together with this sweep's and
    read where they are, e.g. the reproduction's runs at alphas a sensitivity slice leaves out"""
    overwrite: bool = False
    """replace compact records in <output>/records that were made from runs of other options (by default refused,
    naming each: a quick sweep analyzed into a committed report's folder)"""
    variant: tuple[str, ...] = ()
    """SUFFIX=FOLDER: run records of the same arms under another condition (e.g. another MuJoCo version), analyzed
    as the variants <arm>-SUFFIX of their arms (adam-mujoco4 against adam)"""


def main(args: Args) -> int:
    variants = {}
    for spec in args.variant:
        suffix, separator, folder = spec.partition("=")
        if not separator or not suffix or not folder:
            print(f"error: invalid --variant {spec!r} (allowed: SUFFIX=FOLDER, e.g. mujoco4=results/x/records)",
                  file=sys.stderr)
            return 2
        variants[suffix] = Path(folder)
    for folder in (args.sweep_dir, *args.include, *variants.values()):
        if not folder.is_dir():
            hint = (" (no compact records committed yet: run the sweep first: its make target with RERUN=1)"
                    if folder.name == "records" else "")
            print(f"error: {folder} is not a folder of run records{hint}", file=sys.stderr)
            return 2
    if args.final_window <= 0 or args.max_points <= 0:
        print(f"error: invalid --final-window {args.final_window} or --max-points {args.max_points} (allowed: > 0)",
              file=sys.stderr)
        return 2
    from_records = args.sweep_dir.name == "records"
    output = args.output or Path("results") / (args.sweep_dir.parent.name if from_records else args.sweep_dir.name)
    try:
        check_results_dir(output, "--output folder")
        records = args.sweep_dir
        if not from_records:
            records = output / "records"
            written = export_records(args.sweep_dir, records, args.final_window, args.max_points,
                                     overwrite=args.overwrite)
            print(f"{len(written)} compact records in {records}")
        sources = [records, *args.include]
        runs = load_runs(sources, args.final_window)
        for suffix, folder in variants.items():
            runs += as_variant(load_runs(folder, args.final_window), suffix)
            sources.append(folder)
        if len({run.name for run in runs}) < len(runs):
            raise ValueError("a variant's renamed runs collide with other run names: choose another suffix")
        report = report_runs(runs, sources, output, args.final_window, args.baseline)
        sensitivity = write_sensitivity(runs, output, args.baseline, args.final_window) if has_alpha_grid(runs) else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = report.read_text()
    print(text[: text.index("## Figures")] if "## Figures" in text else text)
    print(f"report: {report}" + (f"\nalpha sensitivity: {sensitivity}" if sensitivity else ""))
    return 0


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line (`alphagrad-rl analyze`, or `python scripts/analyze.py` in a clone): its exit status."""
    return main(tyro.cli(Args, args=argv, prog=prog))


if __name__ == "__main__":
    sys.exit(run())
