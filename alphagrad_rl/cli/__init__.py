"""`alphagrad-rl COMMAND [OPTIONS]`: the harness's commands, installed with the package (console script). In a
clone, `python scripts/<command>.py` runs the same code. `alphagrad-rl COMMAND --help` documents each."""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
from collections.abc import Iterator

COMMANDS = {  # command -> (module with run(argv, prog), what it does)
    "sweep": ("alphagrad_rl.cli.sweep", "launch a sweep config's runs (a relaunch resumes them), or --dry-run"),
    "analyze": ("alphagrad_rl.cli.analyze", "runs or compact records -> statistics, claims, figures, REPORT.md"),
    "tune": ("alphagrad_rl.cli.tune", "search alpha and lr with Optuna, then evaluate the best on fresh seeds"),
    "benchmark": ("alphagrad_rl.cli.benchmark", "tune and evaluate an optimizer on the RL suite, add its leaderboard row"),
    "dashboard": ("alphagrad_rl.dashboard", "save a W&B workspace that compares a tracked sweep's arms"),
}


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block, as Ctrl-C does: a command stops its runs (each saves a
    checkpoint) and the same command resumes. The previous handler is restored after."""
    def stop(signum: int, _frame) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "usage: alphagrad-rl COMMAND [OPTIONS]  (alphagrad-rl COMMAND --help)\n\ncommands:\n" + "\n".join(
        f"  {name:{width}s}  {summary}" for name, (_, summary) in COMMANDS.items())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    command, *options = argv
    if command not in COMMANDS:
        sys.exit(f"error: unknown command {command!r} (allowed: {', '.join(COMMANDS)}; alphagrad-rl --help)")
    module = importlib.import_module(COMMANDS[command][0])
    sys.exit(module.run(options, prog=f"alphagrad-rl {command}"))
