"""The fused AlphaGrad update: per param group, one pass for the norms, then one read-modify-write pass
over the parameters. On the CPU (float32/float64) a small C++ kernel does it (csrc/fused_alphagrad.cpp,
built once per environment by torch.utils.cpp_extension, ~30-60 s, with `python -m alphagrad.build_kernel`, by
`make install`, or on a first fused=True step; never by a default step); elsewhere (CUDA, other
dtypes) alphagrad's Python update compiled by torch.compile with `rational_tanh` for tanh does (a few
seconds per process; Triton on GPUs).

`torch.tanh` costs ~4 ns per element on a CPU (even compiled), more than the whole memory traffic of
the update. `rational_tanh` replaces it with an odd rational function, x * P(x^2) / Q(x^2), on
|x| <= CLAMP. Its coefficients were fitted for this project (least squares started from Lambert's
continued-fraction Pade approximant, then reweighted towards minimax). Evaluated in float32 its
absolute error against tanh is below 4.4e-7 everywhere, and |rational_tanh(x)| <= 0.99999983 < 1,
so the update stays in (-1, 1) as eq. 3 requires. It is a handful of fused multiply-adds that
inductor vectorizes, so the update is memory-bound: 1 read for the norms, then read g, read p,
write p (Adam reads and writes 7 tensors' worth).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import platform
import sys
import warnings
from pathlib import Path

import torch

CLAMP = 7.90531110763549805
_NUMERATOR = (0.9999994282327312, 0.1292295755231318, 0.0029487993626052334, 1.1417681317808258e-05)
_DENOMINATOR = (
    1.0,
    0.4625607894119939,
    0.023804701200465978,
    0.0002384354737026495,
    2.4581779562473504e-07,
)


def _horner(coefficients: tuple[float, ...], z: torch.Tensor) -> torch.Tensor:
    result = z * coefficients[-1] + coefficients[-2]
    for c in reversed(coefficients[:-2]):
        result = result * z + c
    return result


def rational_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) to within 4.4e-7 (float32), strictly inside (-1, 1)."""
    x = x.clamp(-CLAMP, CLAMP)
    z = x * x
    return x * _horner(_NUMERATOR, z) / _horner(_DENOMINATOR, z)


_cpu_kernels = None
_cpu_kernel_error: str | None = None
_cpu_kernel_built: bool | None = None
_cpu_kernel_hinted = False


def cpu_kernel_applies(tensors: list[torch.Tensor]) -> bool:
    """Whether the C++ kernel can update these tensors (a group's parameters, gradients and momentum buffers): CPU,
    one dtype, float32 or float64, dense and contiguous."""
    dtype = tensors[0].dtype
    return dtype in (torch.float32, torch.float64) and all(
        t.device.type == "cpu" and t.dtype == dtype and t.layout == torch.strided and t.is_contiguous()
        for t in tensors)


_CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math"]


def _build_tag() -> str:
    """Tag of what the kernel's build depends on: this CPU's instruction set (it is built with -march=native), its
    source and flags, and the torch installation it compiles against (each environment gets its own build
    directory, so two virtual environments on one machine do not rebuild it for each other's include paths)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor() or platform.machine()
    source = (Path(__file__).parent / "csrc" / "fused_alphagrad.cpp").read_bytes()
    torch_installation = f"{torch.__version__} {Path(torch.__file__).resolve().parent}".encode()
    return hashlib.sha1(flags.encode() + source + " ".join(_CFLAGS).encode() + torch_installation).hexdigest()[:10]


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on `lock_path` (fcntl.flock: the system releases it when its process dies, even
    killed; where fcntl is missing, no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _built(library: Path, stamp: Path) -> bool:
    """Whether a build finished: its stamp holds the size of the library it loaded."""
    try:
        return library.stat().st_size == int(stamp.read_text())
    except (OSError, ValueError):
        return False


def _import_extension(name: str, library: Path):
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kernel_files() -> tuple[str, Path, Path]:
    """The kernel's module name, library and build stamp for this CPU kind and torch installation."""
    from torch.utils.cpp_extension import LIB_EXT, _get_build_directory

    name = f"alphagrad_fused_{_build_tag()}"
    directory = Path(_get_build_directory(name, verbose=False))
    return name, directory / f"{name}{LIB_EXT}", directory / f"{name}.built"  # (torch's name: .so, .pyd)


def build_cpu_kernel(verbose: bool = False):
    """Load the C++ kernel, building it first where this CPU kind and torch installation have none (~30-60 s;
    `python -m alphagrad.build_kernel` and `make install` call it). Raises when it cannot be built (no C++
    compiler, no ninja).

    A finished build (its library, and a `.built` stamp holding the library's size, written once it loaded) is
    imported directly: no ninja run and no wait on torch's lock file, whose holder may have been killed (torch's
    `load` then waits forever; it also rebuilds whenever its build command changes, as between two checkouts
    sharing one environment, while every other process waits). Builds take a lock that a killed builder drops."""
    global _cpu_kernels
    if _cpu_kernels is None:
        from torch.utils.cpp_extension import load

        name, library, stamp = _kernel_files()
        if not _built(library, stamp):
            with _exclusive(library.parent / "alphagrad-build.lock"):
                if not _built(library, stamp):  # (another process may have built it while this one waited)
                    (library.parent / "lock").unlink(missing_ok=True)  # torch's lock, left by a killed build
                    print("alphagrad: building the fused CPU kernel (once per environment, ~30-60 s)",
                          file=sys.stderr, flush=True)
                    _cpu_kernels = load(name=name, sources=[str(Path(__file__).parent / "csrc" / "fused_alphagrad.cpp")],
                                        extra_cflags=_CFLAGS, verbose=verbose)
                    stamp.write_text(f"{library.stat().st_size}\n")
        if _cpu_kernels is None:
            _cpu_kernels = _import_extension(name, library)
    return _cpu_kernels


def cpu_kernel_built() -> bool:
    """Whether this environment has a finished build of the kernel (loaded or not); checked once per process."""
    global _cpu_kernel_built
    if _cpu_kernel_built is None:
        _, library, stamp = _kernel_files()
        _cpu_kernel_built = _cpu_kernels is not None or _built(library, stamp)
    return _cpu_kernel_built


def cpu_kernel_available(build: bool = False) -> bool:
    """Whether the C++ kernel can be used. A finished build is loaded; `build` (fused=True asks for the kernel)
    builds a missing one. Otherwise no step waits on a compile: a missing kernel is reported once, with the command
    that builds it, and a failed build once, and AlphaGrad takes its foreach path."""
    global _cpu_kernel_error, _cpu_kernel_hinted
    if _cpu_kernels is not None:
        return True
    if _cpu_kernel_error is not None:
        return False
    if not build and not cpu_kernel_built():
        if not _cpu_kernel_hinted:
            _cpu_kernel_hinted = True
            warnings.warn("alphagrad: the fused CPU kernel is not built in this environment, so AlphaGrad takes its "
                          "foreach path (exact, slower on the CPU). Build it once with `python -m "
                          "alphagrad.build_kernel` (~30-60 s; needs a C++ compiler and ninja).", RuntimeWarning,
                          stacklevel=4)
        return False
    try:
        build_cpu_kernel()
    except Exception as error:  # no compiler, no ninja, a failed build: the foreach path still works
        _cpu_kernel_error = f"{type(error).__name__}: {error}".strip()
        warnings.warn(f"alphagrad: the fused CPU kernel could not be built ({_cpu_kernel_error.splitlines()[0]}); "
                      "AlphaGrad uses its foreach path instead (exact, slower). It needs a C++ compiler and "
                      "`pip install ninja`.", RuntimeWarning, stacklevel=4)
        return False
    return True


def cpu_alphagrad_update(params, grads, buffers, alphas, lr, eps, momentum, paper_momentum, weight_decay, maximize,
                         group_norm) -> bool:
    """The C++ kernel; returns False, writing nothing, when a gradient norm is not finite."""
    return build_cpu_kernel().alphagrad_update(
        params, grads, buffers, alphas, lr, eps, momentum, paper_momentum, weight_decay, maximize, group_norm,
        list(_NUMERATOR), list(_DENOMINATOR), CLAMP)
