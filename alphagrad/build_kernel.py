"""Build AlphaGrad's fused CPU kernel for this environment, once (~30-60 s): `python -m alphagrad.build_kernel`.

Until it is built, AlphaGrad's default path on the CPU is foreach (exact, slower): no default optimizer step
compiles anything. It needs a C++ compiler and ninja (`pip install "alphagrad-rl[fused]"` installs ninja).
"""

from __future__ import annotations

import sys
import time

from ._fused import build_cpu_kernel


def main() -> int:
    start = time.perf_counter()
    try:
        kernel = build_cpu_kernel()
    except Exception as error:  # no compiler, no ninja, a failed build
        cause = (str(error).strip().splitlines() or [""])[0]
        print(f"error: the fused CPU kernel could not be built ({type(error).__name__}: {cause}); it needs a C++ "
              "compiler and ninja (pip install ninja). AlphaGrad works without it, on its foreach path.",
              file=sys.stderr)
        return 1
    print(f"alphagrad: the fused CPU kernel is ready ({kernel.__file__}; {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
