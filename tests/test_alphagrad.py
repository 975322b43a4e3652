import copy
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

from alphagrad import AlphaGrad, auto_alpha, diagnostics
from alphagrad._fused import rational_tanh


def one_step(grad, lr=0.1, theta=None, **options):
    """Parameters after one AlphaGrad step from `theta` (default ones) with gradient `grad`."""
    grad = torch.tensor(grad, dtype=torch.float64)
    param = torch.nn.Parameter(torch.ones_like(grad) if theta is None else torch.tensor(theta, dtype=torch.float64))
    param.grad = grad.clone()
    AlphaGrad([param], lr=lr, **options).step()
    return param.detach()


PATHS = [dict(foreach=False), dict(foreach=True)]


# ---- hand-computed reference values (eq. 2-4 and the variants) ----

@pytest.mark.parametrize("path", PATHS)
def test_basic_update_matches_hand_computation(path):
    # g = [3, 4]: ||g|| = 5, g_hat = [0.6, 0.8]; alpha = 1 -> g' = tanh([0.6, 0.8])
    result = one_step([3.0, 4.0], lr=0.1, alpha=1.0, **path)
    expected = torch.tensor([1 - 0.1 * 0.5370495669980353, 1 - 0.1 * 0.6640367702678489], dtype=torch.float64)
    torch.testing.assert_close(result, expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("options", "direction"),
    [
        (dict(alpha=1.0, transform="scaled_tanh", beta=0.5), [0.5 * math.tanh(0.6), 0.5 * math.tanh(0.8)]),
        (dict(alpha=1.0, transform="sin_tanh", kappa=2.0), [math.sin(2 * math.tanh(0.6)), math.sin(2 * math.tanh(0.8))]),
        (dict(alpha=1.0, transform="hybrid", hybrid_lambda=0.25),
         [0.25 * math.tanh(0.6) + 0.75 * 0.6, 0.25 * math.tanh(0.8) + 0.75 * 0.8]),
        (dict(alpha=2.0, transform="linear"), [1.2, 1.6]),
        (dict(alpha=0.1, normalization="none"), [math.tanh(0.3), math.tanh(0.4)]),
        (dict(alpha="auto"), [math.tanh(math.sqrt(2) * 0.6), math.tanh(math.sqrt(2) * 0.8)]),
        (dict(alpha="auto", alpha_k=3.0), [math.tanh(3 * math.sqrt(2) * 0.6), math.tanh(3 * math.sqrt(2) * 0.8)]),
    ],
)
def test_variants_match_hand_computation(path, options, direction):
    result = one_step([3.0, 4.0], lr=0.1, **options, **path)
    expected = 1 - 0.1 * torch.tensor(direction, dtype=torch.float64)
    torch.testing.assert_close(result, expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("path", PATHS)
def test_group_normalization_treats_group_as_one_vector(path):
    # two tensors [3] and [4]: per tensor each normalizes to 1; as one vector to 0.6 and 0.8
    a, b = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)), torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    a.grad, b.grad = torch.tensor([3.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)
    AlphaGrad([a, b], lr=1.0, alpha=1.0, normalization="group", **path).step()
    torch.testing.assert_close(torch.cat([a, b]).detach(), -torch.tensor([math.tanh(0.6), math.tanh(0.8)], dtype=torch.float64))


def test_auto_alpha_group_uses_total_elements():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(6))
    a.grad, b.grad = torch.ones(3), torch.ones(6)
    AlphaGrad([a, b], lr=1.0, alpha="auto", normalization="group").step()
    # g_hat_i = 1/3 for all 9 elements; alpha = sqrt(9) = 3 -> g' = tanh(1)
    torch.testing.assert_close(a.detach(), torch.full((3,), -math.tanh(1.0)))
    assert auto_alpha(9664) == pytest.approx(98.3, abs=0.1)  # the paper's HalfCheetah alpha (Table 2)


@pytest.mark.parametrize("path", PATHS)
def test_decoupled_weight_decay(path):
    result = one_step([3.0, 4.0], lr=0.1, theta=[2.0, 2.0], alpha=1.0, weight_decay=0.5, **path)
    expected = 2 * (1 - 0.1 * 0.5) - 0.1 * torch.tensor([math.tanh(0.6), math.tanh(0.8)], dtype=torch.float64)
    torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("path", PATHS)
def test_momentum_forms_across_a_learning_rate_change(path):
    """Paper eq. 5-6 keep each step's lr in the buffer; torch SGD's form rescales the history by today's lr."""
    g_prime = torch.tensor([math.tanh(0.6), math.tanh(0.8)], dtype=torch.float64)
    results = {}
    for form in ("paper", "sgd"):
        param = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
        opt = AlphaGrad([param], lr=0.1, alpha=1.0, momentum=0.9, momentum_form=form, **path)
        for lr in (0.1, 0.01):
            opt.param_groups[0]["lr"] = lr
            param.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
            opt.step()
        results[form] = param.detach()
    # paper: v1 = 0.1 g', v2 = 0.9 v1 + 0.01 g' = 0.1 g'  -> theta = 1 - 0.2 g'
    torch.testing.assert_close(results["paper"], 1 - 0.2 * g_prime)
    # sgd: b1 = g', b2 = 1.9 g' -> theta = 1 - 0.1 g' - 0.01 * 1.9 g'
    torch.testing.assert_close(results["sgd"], 1 - 0.119 * g_prime)


@pytest.mark.parametrize("path", PATHS)
def test_momentum_forms_agree_under_constant_lr(path):
    params = {}
    for form in ("paper", "sgd"):
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)
        opt = AlphaGrad(model.parameters(), lr=0.05, alpha=3.0, momentum=0.9, momentum_form=form, **path)
        for step in range(5):
            torch.manual_seed(step)
            opt.zero_grad()
            model(torch.randn(8, 5)).pow(2).mean().backward()
            opt.step()
        params[form] = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(params["paper"], params["sgd"], atol=1e-6, rtol=0)


# ---- limits and invariances (section 2) ----

def test_small_alpha_is_scaled_normalized_gradient_descent():
    grad = torch.randn(50, dtype=torch.float64)
    alpha, lr = 1e-4, 1.0
    step = 1 - one_step(grad.tolist(), lr=lr, alpha=alpha)
    torch.testing.assert_close(step / alpha, grad / grad.norm(), rtol=1e-6, atol=1e-12)


def test_large_alpha_is_sign_descent():
    grad = torch.randn(50, dtype=torch.float64)
    step = 1 - one_step(grad.tolist(), lr=1.0, alpha=1e7)
    torch.testing.assert_close(step, torch.sign(grad), atol=1e-6, rtol=0)


@pytest.mark.parametrize("path", PATHS)
def test_update_components_bounded_before_lr(path):
    torch.manual_seed(0)
    grad = torch.randn(1000) * torch.logspace(-3, 3, 1000)
    # |step| = tanh(alpha * |g_hat|) per component: its largest is tanh(alpha * max|g| / ||g||), strictly below 1
    # (float64 tanh rounds to 1 only past |x| ~ 19)
    for alpha in (1.0, 8.0):
        step = 1 - one_step(grad.tolist(), lr=1.0, alpha=alpha, **path)
        largest = math.tanh(alpha * grad.double().abs().max().item() / grad.double().norm().item())
        assert step.abs().max().item() == pytest.approx(largest, abs=1e-12) and largest < 1.0


@pytest.mark.parametrize("path", PATHS)
def test_loss_scale_invariance(path):
    final = []
    for scale in (1.0, 1000.0):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        opt = AlphaGrad(model.parameters(), lr=0.01, alpha=5.0, **path)
        data = torch.randn(32, 4)
        for _ in range(5):
            opt.zero_grad()
            (scale * model(data).pow(2).mean()).backward()
            opt.step()
        final.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(final[0], final[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("path", PATHS)
def test_maximize_equals_minimizing_the_negative(path):
    results = []
    for maximize in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = AlphaGrad(model.parameters(), lr=0.1, alpha=2.0, momentum=0.5, maximize=maximize, **path)
        sign = -1.0 if maximize else 1.0
        for _ in range(3):
            opt.zero_grad()
            (sign * model(torch.ones(4, 3)).pow(2).sum()).backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1])


# ---- the two (three) paths agree ----

def train(options, steps=6, seed=0, first_layer_alpha=None):
    """Parameters after `steps` AlphaGrad steps on a small MLP; `first_layer_alpha` puts the first layer in a
    param group of its own with that alpha (per-group alpha)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 3))
    params = list(model.parameters())
    groups = params if first_layer_alpha is None else [{"params": params[:2], "alpha": first_layer_alpha},
                                                       {"params": params[2:]}]
    opt = AlphaGrad(groups, lr=0.01, **options)
    for step in range(steps):
        torch.manual_seed(100 + step)
        opt.zero_grad()
        model(torch.randn(16, 6)).pow(2).mean().backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    "options",
    [
        dict(alpha=10.0),
        dict(alpha="auto", momentum=0.9),
        dict(alpha=10.0, momentum=0.9, momentum_form="sgd", weight_decay=0.1),
        dict(alpha=10.0, normalization="group"),
        dict(alpha=0.5, normalization="none"),
        dict(alpha=10.0, transform="scaled_tanh", beta=0.7),
        dict(alpha=10.0, transform="sin_tanh", kappa=1.5),
        dict(alpha=10.0, transform="hybrid", hybrid_lambda=0.3),
        dict(alpha=10.0, transform="linear"),
    ],
)
def test_foreach_matches_single_tensor(options):
    torch.testing.assert_close(train({**options, "foreach": True}), train({**options, "foreach": False}),
                               atol=1e-6, rtol=0)


def test_rational_tanh_is_within_tolerance_and_bounded():
    x = torch.linspace(-40, 40, 2_000_001)
    approx = rational_tanh(x)
    assert (approx.double() - torch.tanh(x.double())).abs().max() < 5e-7
    assert approx.abs().max() < 1.0


MOMENTA = [dict(momentum=0.0), dict(momentum=0.9, momentum_form="paper"), dict(momentum=0.9, momentum_form="sgd")]
FUSED_GRID = [
    dict(**momentum, weight_decay=weight_decay, maximize=maximize, normalization=normalization, alpha=alpha,
         first_layer_alpha=first_layer_alpha)
    for momentum in MOMENTA for weight_decay in (0.0, 0.01) for maximize in (False, True)
    for normalization in ("tensor", "group") for alpha in (10.0, "auto") for first_layer_alpha in (None, 3.0)
]


def fused_error(options, steps=3):
    """Max |parameter difference| between the fused path and the exact single-tensor path."""
    options = dict(options)
    first_layer_alpha = options.pop("first_layer_alpha")
    fused = train({**options, "fused": True}, steps=steps, first_layer_alpha=first_layer_alpha)
    exact = train({**options, "foreach": False}, steps=steps, first_layer_alpha=first_layer_alpha)
    return (fused - exact).abs().max().item()


@pytest.mark.parametrize("options", FUSED_GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_fused_cpu_kernel_matches_exact_formula_over_the_option_grid(options):
    """Every combination of momentum form, weight decay, maximize, normalization, alpha (number or auto) and
    per-group alpha: each update component within 1e-6 of tanh, lr = 0.01, 3 steps (momentum: <= 3 * 2.71 lr)."""
    assert fused_error(options) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("options", FUSED_GRID[1::5], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_compiled_kernel_matches_exact_formula(options, monkeypatch):
    """The torch.compile kernel (GPUs, other dtypes), forced on the CPU; a spread of the grid (each compiles)."""
    monkeypatch.setattr("alphagrad.optimizer.cpu_kernel_applies", lambda tensors: False)
    assert fused_error(options) < 1e-6


def test_default_path_is_the_fused_kernel_where_it_applies_and_foreach_otherwise(monkeypatch):
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    for p in params:
        p.grad = torch.ones_like(p)
    calls = []
    monkeypatch.setattr("alphagrad.optimizer.cpu_alphagrad_update", lambda *args: calls.append(args) or True)
    AlphaGrad(params, alpha=2.0).step()
    assert len(calls) == 1  # the fused kernel took the step
    AlphaGrad(params, alpha=2.0, transform="scaled_tanh").step()  # the kernel has no scaled_tanh: foreach
    AlphaGrad(params, alpha=2.0, foreach=True).step()
    assert len(calls) == 1
    monkeypatch.setattr("alphagrad.optimizer.cpu_kernel_available", lambda build: False)  # e.g. not built
    AlphaGrad(params, alpha=2.0).step()
    assert len(calls) == 1


def test_a_kernel_that_cannot_be_built_is_reported_once_and_foreach_is_used(monkeypatch):
    from alphagrad import _fused

    def no_compiler(verbose=False):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(_fused, "_cpu_kernels", None)
    monkeypatch.setattr(_fused, "_cpu_kernel_error", None)
    monkeypatch.setattr(_fused, "build_cpu_kernel", no_compiler)
    param = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    param.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="could not be built .*Ninja is required.*foreach path"):
        AlphaGrad([param], lr=0.1, alpha=1.0, fused=True).step()  # fused=True asks for the kernel: a build
    assert not _fused.cpu_kernel_available(build=True)  # reported once: no second build attempt, no second warning


def test_a_default_step_never_builds_the_kernel_and_says_once_how_to(monkeypatch):
    """Where the kernel is not built, the default path is foreach (the exact formula), with one hint naming the
    command that builds it; no step compiles."""
    from alphagrad import _fused

    def build(verbose=False):
        raise AssertionError("a default step built the kernel")

    monkeypatch.setattr(_fused, "_cpu_kernels", None)
    monkeypatch.setattr(_fused, "_cpu_kernel_built", False)
    monkeypatch.setattr(_fused, "_cpu_kernel_hinted", False)
    monkeypatch.setattr(_fused, "build_cpu_kernel", build)
    param = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    param.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"not built .*python -m alphagrad\.build_kernel"):
        AlphaGrad([param], lr=0.1, alpha=1.0).step()
    expected = 1 - 0.1 * torch.tensor([math.tanh(0.6), math.tanh(0.8)], dtype=torch.float64)
    torch.testing.assert_close(param.detach(), expected, atol=1e-9, rtol=0)  # the exact path (fused: ~4e-8 off)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AlphaGrad([param], lr=0.1, alpha=1.0).step()  # said once


def test_the_build_command_builds_or_names_what_is_missing(monkeypatch, capsys):
    from alphagrad import build_kernel

    assert build_kernel.main() == 0 and "fused CPU kernel is ready" in capsys.readouterr().out

    def no_compiler(verbose=False):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(build_kernel, "build_cpu_kernel", no_compiler)
    assert build_kernel.main() == 1
    assert "could not be built (RuntimeError: Ninja is required" in capsys.readouterr().err


def test_kernel_build_directory_is_per_torch_installation(monkeypatch):
    """Two environments (different torch installations) on one machine build into different directories: one
    shared directory would be rebuilt for each environment's include paths in turn."""
    from alphagrad import _fused

    tag = _fused._build_tag()
    assert tag == _fused._build_tag()  # stable within an environment: built once
    monkeypatch.setattr(torch, "__file__", "/elsewhere/.venv/lib/python3.11/site-packages/torch/__init__.py")
    assert _fused._build_tag() != tag

def test_a_built_kernel_is_imported_even_when_a_killed_build_left_torchs_lock(monkeypatch, tmp_path):
    """torch's `load` waits forever on a lock file whose holder was killed, and rebuilds whenever its build
    command changes; a finished build is imported without either, and a missing one is built once, under a lock
    the system drops, after removing torch's stale lock."""
    from torch.utils import cpp_extension

    from alphagrad import _fused

    kernel = _fused.build_cpu_kernel()
    name = f"alphagrad_fused_{_fused._build_tag()}"
    built_library = Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}{cpp_extension.LIB_EXT}"
    directory = tmp_path / name
    directory.mkdir()
    (directory / "lock").touch()  # torch's lock, its holder killed
    loads = []

    def build(name, sources, extra_cflags, verbose):
        assert not (directory / "lock").exists()
        shutil.copy(built_library, directory / f"{name}{cpp_extension.LIB_EXT}")
        loads.append(name)
        return kernel

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path / name))
    monkeypatch.setattr(cpp_extension, "load", build)
    monkeypatch.setattr(_fused, "_cpu_kernels", None)
    assert _fused.build_cpu_kernel() is kernel and loads == [name]
    monkeypatch.setattr(_fused, "_cpu_kernels", None)
    assert _fused.build_cpu_kernel() is kernel and loads == [name]  # (in this process, the build it loaded)

    # a new process, with torch's stale lock back and torch's load unusable: it imports the finished build
    (directory / "lock").touch()
    code = """
import torch.utils.cpp_extension as cpp_extension
def refuse(**kwargs): raise AssertionError("built again")
cpp_extension.load = refuse
from alphagrad._fused import build_cpu_kernel
print(build_cpu_kernel().__file__)
"""
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == str(directory / f"{name}{cpp_extension.LIB_EXT}")

    (directory / f"{name}.built").write_text("12\n")  # a stamp that does not match the library: built again
    monkeypatch.setattr(_fused, "_cpu_kernels", None)
    _fused.build_cpu_kernel()
    assert loads == [name, name]


def test_kernel_builds_take_a_lock_that_a_killed_builder_drops(tmp_path):
    from alphagrad._fused import _exclusive

    lock = tmp_path / "alphagrad-build.lock"
    code = f"""
import os, signal
from pathlib import Path
from alphagrad._fused import _exclusive
with _exclusive(Path({str(lock)!r})):
    os.kill(os.getpid(), signal.SIGKILL)  # killed while building
"""
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9 and lock.exists()
    second_holder = threading.Event()

    def build_beside():
        with _exclusive(lock):
            second_holder.set()

    with _exclusive(lock):  # free despite the killed holder (torch's lock file would be taken forever)
        beside = threading.Thread(target=build_beside)
        beside.start()
        assert not second_holder.wait(0.5)  # a second build waits for the first
    assert second_holder.wait(10)
    beside.join()


def test_fused_cpu_kernel_on_float64_and_fallback_for_other_dtypes():
    for dtype in (torch.float64, torch.bfloat16):
        param = torch.nn.Parameter(torch.ones(4, dtype=dtype))
        param.grad = torch.tensor([3.0, 4.0, 0.0, 0.0], dtype=dtype)
        AlphaGrad([param], lr=0.1, alpha=1.0, fused=True).step()
        expected = 1 - 0.1 * torch.tensor([math.tanh(0.6), math.tanh(0.8), 0.0, 0.0], dtype=torch.float64)
        torch.testing.assert_close(param.detach().double(), expected, atol=1e-6 if dtype == torch.float64 else 1e-2,
                                   rtol=0)


# ---- state, diagnostics, non-finite gradients ----

def test_state_dict_round_trip_restores_momentum_and_alpha():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = AlphaGrad(model.parameters(), lr=0.1, alpha=3.0, momentum=0.9)
    batches = [torch.randn(8, 4) for _ in range(6)]
    for x in batches[:3]:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    opt.param_groups[0]["alpha"] = 7.0  # as a scheduler would
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    clone = torch.nn.Linear(4, 4)
    clone.load_state_dict(saved_model)
    clone_opt = AlphaGrad(clone.parameters(), lr=0.1, alpha=3.0, momentum=0.9)
    clone_opt.load_state_dict(saved_opt)
    assert clone_opt.param_groups[0]["alpha"] == 7.0
    for net, optimizer in ((model, opt), (clone, clone_opt)):
        for x in batches[3:]:
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_loading_a_momentum_buffer_of_another_shape_raises_naming_the_parameter():
    model = torch.nn.Linear(4, 3)
    opt = AlphaGrad(model.named_parameters(), lr=0.1, alpha=3.0, momentum=0.9)
    wider = torch.nn.Linear(4, 5)  # a changed layer width: the saved buffers no longer fit
    wider_opt = AlphaGrad(wider.named_parameters(), lr=0.1, alpha=3.0, momentum=0.9)
    wider(torch.randn(2, 4)).sum().backward()
    wider_opt.step()
    with pytest.raises(ValueError, match=r"momentum buffer of weight has shape \(5, 4\), but the parameter has \(3, 4\)"):
        opt.load_state_dict(wider_opt.state_dict())
    assert not opt.state  # nothing was loaded


def test_a_loaded_buffer_with_other_strides_takes_its_parameters_layout_and_value():
    param = torch.nn.Parameter(torch.zeros(3, 2))
    opt = AlphaGrad([param], lr=0.1, alpha=2.0, momentum=0.5)
    saved = opt.state_dict()
    buffer = torch.arange(6.0).reshape(2, 3).t()  # the values of a (3, 2) tensor, stored transposed
    saved["state"] = {0: {"momentum_buffer": buffer}}
    opt.load_state_dict(saved)
    loaded = opt.state[param]["momentum_buffer"]
    assert loaded.is_contiguous() and torch.equal(loaded, buffer)
    param.grad = torch.zeros(3, 2)
    opt.step()  # a zero gradient: the step is the decayed buffer alone (eq. 5-6)
    torch.testing.assert_close(param.detach(), -0.5 * buffer, atol=1e-7, rtol=0)


@pytest.mark.parametrize(("call", "message"), [
    ("alphagrad([p, p], [g], [], lr=0.1, alpha=2.0)", "2 parameters but 1 gradients"),
    ("alphagrad([p], [g], [], lr=0.1, alpha=2.0, momentum=0.9)", "0 momentum buffers for 1 parameters"),
    ("alphagrad([p], [torch.ones(3)], [], lr=0.1, alpha=2.0)", "gradient of parameter 0 has shape (3,)"),
    ("alphagrad([p], [g.double()], [], lr=0.1, alpha=2.0)", "gradient of parameter 0 has dtype torch.float64"),
    ("alphagrad([p], [g], [torch.ones(2)], lr=0.1, alpha=2.0, momentum=0.9)", "momentum buffer of parameter 0 has shape"),
    ("alphagrad([p], [g.to_sparse()], [], lr=0.1, alpha=2.0)", "has layout torch.sparse_coo"),
])
def test_functional_alphagrad_refuses_tensors_that_do_not_match(call, message):
    from alphagrad.optimizer import alphagrad

    p, g = torch.zeros(4, 8), torch.ones(4, 8)
    before = p.clone()
    with pytest.raises(ValueError, match=re.escape(message)):
        eval(call, {"alphagrad": alphagrad, "torch": torch, "p": p, "g": g})
    assert torch.equal(p, before)


def test_the_cpu_kernel_checks_every_tensor_it_touches():
    """Called directly (past alphagrad()'s checks), the C++ kernel raises for what would read or write out of bounds;
    in a subprocess, so that a regression shows as a failed test, not a crashed pytest."""
    code = """
import torch
from alphagrad._fused import cpu_alphagrad_update
p, g = torch.zeros(64), torch.ones(64)
calls = {
    "alphas": ([p], [g], [], [1.0, 2.0], 0.0), "grads": ([p, p], [g], [], [1.0, 1.0], 0.0),
    "buffers": ([p], [g], [], [1.0], 0.9), "size": ([p], [torch.ones(3)], [], [1.0], 0.0),
    "buffer size": ([p], [g], [torch.ones(3)], [1.0], 0.9), "dtype": ([p], [g.double()], [], [1.0], 0.0),
    "strides": ([p], [torch.ones(64, 2)[:, 0]], [], [1.0], 0.0),
}
for name, (params, grads, buffers, alphas, momentum) in calls.items():
    try:
        cpu_alphagrad_update(params, grads, buffers, alphas, 0.1, 1e-8, momentum, True, 0.0, False, False)
        print(name, "accepted")
    except RuntimeError as error:
        print(name, "refused:", str(error).splitlines()[0])
"""
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = completed.stdout.splitlines()
    assert len(lines) == 7 and all("refused: fused AlphaGrad" in line for line in lines), lines


def test_random_tensors_at_load_and_step_give_a_correct_step_or_a_value_error():
    """tests/property_alphagrad.py (hypothesis, derandomized) in a subprocess: a signal fails the test."""
    completed = subprocess.run([sys.executable, str(Path(__file__).parent / "property_alphagrad.py"),
                                "--examples", "300"], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"exit {completed.returncode}\n{completed.stdout}{completed.stderr[-4000:]}"
    assert completed.stdout.count("300 examples passed") == 2


def test_no_optimizer_state_without_momentum():
    model = torch.nn.Linear(4, 4)
    opt = AlphaGrad(model.parameters(), lr=0.1, alpha=3.0)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert all(len(s) == 0 for s in opt.state.values())


def test_diagnostics_hand_computed_and_named():
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([3.0, 4.0])
    opt = AlphaGrad([("layer.weight", param)], lr=0.1, alpha=5.0)
    stats = diagnostics(opt, tau=3.5)["layer.weight"]
    # alpha * g_hat = [3, 4]: one of two above 3.5, mean 3.5
    assert stats["saturation"] == 0.5
    assert stats["mean_abs_preactivation"] == pytest.approx(3.5)
    assert stats["update_norm"] == pytest.approx(0.1 * math.hypot(math.tanh(3.0), math.tanh(4.0)), rel=1e-6)
    assert diagnostics(opt, tau=2.5)["layer.weight"]["saturation"] == 1.0


@pytest.mark.parametrize("path", PATHS + [dict(fused=True)])
def test_nonfinite_gradient_raises_naming_the_tensor(path):
    good, bad = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    good.grad, bad.grad = torch.ones(2), torch.tensor([1.0, float("nan"), 1.0])
    opt = AlphaGrad([("encoder.weight", good), ("head.bias", bad)], lr=0.1, alpha=2.0, **path)
    with pytest.raises(ValueError, match=r"head\.bias \(shape \(3,\)\)"):
        opt.step()
    assert torch.equal(good.detach(), torch.ones(2)) and torch.equal(bad.detach(), torch.ones(3))


def test_nonfinite_gradient_skip_counts_and_leaves_parameters():
    param = torch.nn.Parameter(torch.ones(2))
    opt = AlphaGrad([param], lr=0.1, alpha=2.0, momentum=0.9, nonfinite="skip")
    param.grad = torch.tensor([float("inf"), 1.0])
    opt.step()
    assert torch.equal(param.detach(), torch.ones(2))
    assert opt.param_groups[0]["skipped_steps"] == 1
    assert opt.state_dict()["param_groups"][0]["skipped_steps"] == 1
    param.grad = torch.tensor([1.0, 1.0])
    opt.step()
    assert torch.all(param.detach() < 1.0)


# ---- validation ----

@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(lr=-0.1), "lr: -0.1"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=-3.0), "-3.0"),
        (dict(alpha="big"), "'big'"),
        (dict(eps=0.0), "eps: 0.0"),
        (dict(momentum=1.0), "momentum: 1.0"),
        (dict(momentum=-0.1), "momentum: -0.1"),
        (dict(weight_decay=-1.0), "weight_decay: -1.0"),
        (dict(transform="relu"), "transform: 'relu'"),
        (dict(normalization="layer"), "normalization: 'layer'"),
        (dict(momentum_form="nesterov"), "momentum_form"),
        (dict(nonfinite="ignore"), "nonfinite"),
        (dict(hybrid_lambda=1.5), "hybrid_lambda: 1.5"),
        (dict(fused=True, transform="sin_tanh"), "fused=True supports"),
        (dict(alpha=float("nan")), "nan"),
    ],
)
def test_invalid_hyperparameters_raise(options, message):
    with pytest.raises(ValueError, match="allowed|supports") as error:
        AlphaGrad([torch.nn.Parameter(torch.zeros(1))], **options)
    assert message in str(error.value)


def test_positional_arguments_follow_torch_optim_order():
    opt = AlphaGrad([torch.nn.Parameter(torch.zeros(1))], 0.1, 98.0, 0.9, 0.01, 1e-6)
    assert (opt.defaults["lr"], opt.defaults["alpha"], opt.defaults["momentum"], opt.defaults["weight_decay"],
            opt.defaults["eps"]) == (0.1, 98.0, 0.9, 0.01, 1e-6)


def test_param_group_settings_are_validated():
    with pytest.raises(ValueError, match="alpha"):
        AlphaGrad([{"params": [torch.nn.Parameter(torch.zeros(1))], "alpha": -1.0}], alpha=2.0)


# ---- convergence ----

@pytest.mark.parametrize("options", [dict(alpha=2.0), dict(alpha="auto", momentum=0.9), dict(alpha=2.0, foreach=False)])
def test_converges_on_convex_quadratic(options):
    torch.manual_seed(0)
    eigenvalues = torch.logspace(-1, 1, 10)
    x = torch.nn.Parameter(torch.randn(10) * 3)
    opt = AlphaGrad([x], lr=0.05, **options)
    # normalized steps keep their length near the optimum: the lr must decay (total path ~25)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.998)
    start = 0.5 * (eigenvalues * x.detach() ** 2).sum().item()
    for _ in range(3000):
        opt.zero_grad()
        loss = 0.5 * (eigenvalues * x**2).sum()
        loss.backward()
        opt.step()
        scheduler.step()
    assert loss.item() < 1e-4 * start


def test_fits_a_small_regression_problem():
    torch.manual_seed(0)
    inputs = torch.randn(256, 5)
    targets = torch.sin(inputs[:, :1]) + 0.5 * inputs[:, 1:2] ** 2
    model = torch.nn.Sequential(torch.nn.Linear(5, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = AlphaGrad(model.parameters(), lr=3e-3, alpha="auto", momentum=0.9)
    baseline = torch.nn.functional.mse_loss(targets.mean().expand_as(targets), targets).item()
    for _ in range(600):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * baseline


def test_network_saturation_weighs_tensors_by_size():
    """update_diagnostics' network-wide S counts elements, not tensors: S(small) = 1 and S(large) = 0 give 2/10."""
    from alphagrad_rl.experiment import update_diagnostics

    small, large = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(8))
    small.grad = torch.tensor([1.0, 1.0])  # g_hat = 0.71 each: alpha * g_hat = 70.7 > 2.5
    large.grad = torch.tensor([1.0] + [0.0] * 7)  # one element of 8 carries the whole norm...
    opt = AlphaGrad([("small", small), ("large", large)], lr=0.1, alpha=100.0)
    with update_diagnostics(opt, "q", True) as stats:
        opt.step()
    assert stats["optimizer/q/saturation/small"] == 1.0
    assert stats["optimizer/q/saturation/large"] == 1 / 8  # ...so only it saturates
    assert stats["optimizer/q/saturation"] == pytest.approx((2 * 1.0 + 8 * (1 / 8)) / 10)
