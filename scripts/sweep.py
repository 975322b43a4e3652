"""`alphagrad-rl sweep` in a clone: python scripts/sweep.py [OPTIONS] (alphagrad_rl/cli/sweep.py; --help)."""

import sys

from alphagrad_rl.cli.sweep import run

if __name__ == "__main__":
    sys.exit(run())
