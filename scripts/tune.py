"""`alphagrad-rl tune` in a clone: python scripts/tune.py [OPTIONS] (alphagrad_rl/cli/tune.py; --help)."""

import sys

from alphagrad_rl.cli.tune import run

if __name__ == "__main__":
    sys.exit(run())
