"""`alphagrad-rl analyze` in a clone: python scripts/analyze.py [OPTIONS] (alphagrad_rl/cli/analyze.py; --help)."""

import sys

from alphagrad_rl.cli.analyze import run

if __name__ == "__main__":
    sys.exit(run())
