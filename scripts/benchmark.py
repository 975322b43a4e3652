"""`alphagrad-rl benchmark` in a clone: python scripts/benchmark.py [OPTIONS] (alphagrad_rl/cli/benchmark.py; --help)."""

import sys

from alphagrad_rl.cli.benchmark import run

if __name__ == "__main__":
    sys.exit(run())
