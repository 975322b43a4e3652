"""Analyze a sweep: tidy table, per-arm statistics with CIs, the paper's figures and REPORT.md.

    python scripts/analyze.py results/runs/paper-ppo-halfcheetah            # writes results/paper-ppo-halfcheetah/
    python scripts/analyze.py results/runs/demo-dqn-cartpole --output results/demo
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from alphagrad_rl.report import write_report


@dataclass
class Args:
    sweep_dir: tyro.conf.Positional[Path]
    """a sweep's folder of run records (results/runs/<sweep name>)"""
    output: Path | None = None
    """where the report goes; default results/<sweep name>"""
    final_window: int = 100
    """final return = mean of the last N episodes"""
    baseline: str = "adam"
    """the arm the others are compared with"""


def main(args: Args) -> int:
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a folder of run records", file=sys.stderr)
        return 2
    if args.final_window <= 0:
        print(f"error: invalid --final-window {args.final_window} (allowed: > 0)", file=sys.stderr)
        return 2
    try:
        report = write_report(args.sweep_dir, args.output or Path("results") / args.sweep_dir.name,
                              args.final_window, args.baseline)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = report.read_text()
    print(text[: text.index("## Figures")] if "## Figures" in text else text)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
