"""Property test of AlphaGrad's tensor handling, run in a subprocess by tests/test_alphagrad.py (a segmentation fault
there fails that test instead of killing pytest).

Hypothesis throws random parameter lists at the functional `alphagrad()` and at `AlphaGrad.load_state_dict` + `step`:
shapes (empty ones included), dtypes (float32/64, float16, bfloat16), strides (transposed and sliced tensors),
gradients and momentum buffers of other shapes, dtypes, strides or counts, one or two param groups, every path
(default, which takes the C++ kernel where it applies; foreach; the single-tensor loop). Every outcome must be the step
of a float64 reference of eq. 1-6 (within the dtype's rounding and the kernel's rational tanh), "not applied" for a
non-finite gradient (nothing written), or a ValueError where, and only where, the input is invalid.

    python tests/property_alphagrad.py --examples 300
"""

from __future__ import annotations

import argparse
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alphagrad import AlphaGrad
from alphagrad.optimizer import alphagrad

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
TOLERANCE = {torch.float32: 2e-5, torch.float64: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}
PATHS = ({}, {"foreach": True}, {"foreach": False}, {"fused": False})

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@st.composite
def tensors(draw, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor of `shape` and `dtype`, contiguous, transposed or a strided slice of a larger one."""
    layout = draw(st.sampled_from(("contiguous", "transposed", "sliced")))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    if layout == "transposed" and len(shape) >= 2:
        tensor = torch.randn(shape[::-1], generator=generator, dtype=torch.float64).to(dtype).permute(
            *reversed(range(len(shape))))
    elif layout == "sliced" and len(shape) >= 1:
        wide = torch.randn((*shape[:-1], 2 * shape[-1]), generator=generator, dtype=torch.float64).to(dtype)
        tensor = wide[..., ::2]
    else:
        tensor = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    return tensor


@st.composite
def step_inputs(draw):
    """Parameters, gradients, momentum buffers and options; whether the tensors match one to one."""
    count = draw(st.integers(1, 3))
    mixed = draw(st.integers(0, 4)) == 0  # tensors of several dtypes in one call
    dtype = draw(st.sampled_from(DTYPES))
    params = [draw(tensors(draw(shapes), draw(st.sampled_from(DTYPES)) if mixed else dtype)) for _ in range(count)]
    valid = True
    grads = []
    for param in params:
        broken = draw(st.sampled_from(("none", "none", "none", "shape", "dtype")))
        shape = draw(shapes.filter(lambda s, p=param: s != tuple(p.shape))) if broken == "shape" else tuple(param.shape)
        grad_dtype = (draw(st.sampled_from([d for d in DTYPES if d != param.dtype])) if broken == "dtype"
                      else param.dtype)
        grads.append(draw(tensors(shape, grad_dtype)))
        valid &= broken == "none"
    if draw(st.integers(0, 9)) == 0:  # one gradient too few or too many
        grads = grads[:-1] if draw(st.booleans()) else grads + [grads[0]]
        valid = False
    momentum = draw(st.sampled_from((0.0, 0.9)))
    buffers: list[torch.Tensor] = []
    if momentum or draw(st.booleans()):
        for param in params:
            broken = draw(st.sampled_from(("none", "none", "none", "shape", "dtype")))
            shape = (draw(shapes.filter(lambda s, p=param: s != tuple(p.shape))) if broken == "shape"
                     else tuple(param.shape))
            buffer_dtype = (draw(st.sampled_from([d for d in DTYPES if d != param.dtype])) if broken == "dtype"
                            else param.dtype)
            buffers.append(draw(tensors(shape, buffer_dtype)))
            valid &= broken == "none"
        if draw(st.integers(0, 9)) == 0:
            buffers = buffers[:-1]
            valid = False
    if momentum and not buffers:
        valid = False
    finite = draw(st.integers(0, 9)) > 0
    if not finite and grads and grads[0].numel():
        grads[0] = grads[0].clone()
        grads[0][(0,) * grads[0].dim()] = math.nan
    options = {"lr": draw(st.sampled_from((1e-3, 0.1))), "alpha": draw(st.sampled_from((0.5, 3.0, 50.0))),
               "eps": draw(st.sampled_from((1e-8, 1e-3))), "momentum": momentum,
               "momentum_form": draw(st.sampled_from(("paper", "sgd"))),
               "weight_decay": draw(st.sampled_from((0.0, 0.1))), "maximize": draw(st.booleans()),
               "normalization": draw(st.sampled_from(("tensor", "group", "none"))), **draw(st.sampled_from(PATHS))}
    return params, grads, buffers, options, valid


def reference(params, grads, buffers, *, lr, alpha, eps, momentum, momentum_form, weight_decay, maximize,
              normalization, **_path) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """Eq. 1-6 in float64, one tensor at a time; None when a gradient norm is not finite (no step)."""
    grads = [(-g if maximize else g).double() for g in grads]
    norms = [g.norm() for g in grads]
    if not all(torch.isfinite(n) for n in norms):
        return None
    if normalization == "group":
        norms = [torch.stack(norms).norm()] * len(grads)
    new_params, new_buffers = [], []
    for i, (param, grad) in enumerate(zip(params, grads)):
        g_hat = grad / (norms[i] + eps) if normalization != "none" else grad
        direction = torch.tanh(alpha * g_hat)
        p = param.double() * (1 - lr * weight_decay)
        if momentum:
            v = buffers[i].double()
            v = momentum * v + (lr * direction if momentum_form == "paper" else direction)
            p = p - (v if momentum_form == "paper" else lr * v)
            new_buffers.append(v)
        else:
            p = p - lr * direction
        new_params.append(p)
    return new_params, new_buffers


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(actual.double(), expected, atol=tolerance, rtol=tolerance, msg=lambda m: f"{what}: {m}")


@given(step_inputs())
def functional_step(inputs) -> None:
    params, grads, buffers, options, valid = inputs
    before = [p.clone() for p in params], [b.clone() for b in buffers]
    expected = reference(params, grads, buffers, **options) if valid else None
    try:
        applied = alphagrad(params, grads, buffers, **options)
    except ValueError:
        assert not valid, "a valid input was refused"
        assert all(torch.equal(p, q) for p, q in zip(params, before[0])), "a refused step wrote the parameters"
        return
    assert valid, "an invalid input was accepted"
    if expected is None:
        assert not applied
        assert all(torch.equal(p, q) for p, q in zip(params, before[0])), "a skipped step wrote the parameters"
        return
    assert applied
    for i, (param, new) in enumerate(zip(params, expected[0])):
        assert_close(param, new, param.dtype, f"parameter {i}")
    for i, (buffer, new) in enumerate(zip(buffers, expected[1])):
        assert_close(buffer, new, buffer.dtype, f"momentum buffer {i}")


@st.composite
def loaded_states(draw):
    """An optimizer of one or two param groups and a state_dict whose momentum buffers may not fit it."""
    dtype = draw(st.sampled_from((torch.float32, torch.float64)))
    groups = [[draw(tensors(draw(shapes), dtype)).requires_grad_() for _ in range(draw(st.integers(1, 2)))]
              for _ in range(draw(st.integers(1, 2)))]
    valid, state = True, {}
    for index, param in enumerate(p for group in groups for p in group):
        kind = draw(st.sampled_from(("fits", "fits", "none", "transposed", "shape", "dtype", "sparse", "integer")))
        if kind == "none":
            continue
        shape = draw(shapes.filter(lambda s, p=param: s != tuple(p.shape))) if kind == "shape" else tuple(param.shape)
        buffer = draw(tensors(shape, torch.float64 if kind == "dtype" and dtype == torch.float32 else dtype))
        if kind == "transposed" and buffer.dim() >= 2:
            buffer = buffer.mT.contiguous().mT
        if kind == "sparse":
            buffer = buffer.to_sparse()
        if kind == "integer":
            buffer = buffer.round().to(torch.int64)
        state[index] = {"momentum_buffer": buffer}
        valid &= kind not in ("shape", "sparse", "integer")
    path = draw(st.sampled_from(PATHS))
    return groups, state, valid, path


@given(loaded_states())
def load_then_step(inputs) -> None:
    groups, state, valid, path = inputs
    optimizer = AlphaGrad([{"params": group, "alpha": 2.0 + i} for i, group in enumerate(groups)], lr=0.1,
                          momentum=0.9, **path)
    saved = optimizer.state_dict()
    saved["state"] = state
    try:
        optimizer.load_state_dict(saved)
    except ValueError:
        assert not valid, "a state of matching buffers was refused"
        return
    assert valid, "a state whose buffers do not match the parameters was loaded"
    params = [p for group in groups for p in group]
    for param in params:
        param.grad = torch.randn_like(param)
    buffers = [state[i]["momentum_buffer"].to(p.dtype) if i in state else torch.zeros_like(p)
               for i, p in enumerate(params)]
    expected, offset = [], 0
    for i, group in enumerate(groups):
        new = reference([p.detach() for p in group], [p.grad for p in group], buffers[offset:offset + len(group)],
                        lr=0.1, alpha=2.0 + i, eps=1e-8, momentum=0.9, momentum_form="paper", weight_decay=0.0,
                        maximize=False, normalization="tensor")
        expected += new[0]
        offset += len(group)
    optimizer.step()
    for i, (param, new) in enumerate(zip(params, expected)):
        assert_close(param.detach(), new, param.dtype, f"parameter {i} after loading")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300, help="examples per property")
    examples = parser.parse_args().examples
    configured = settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck))
    for prop in (functional_step, load_then_step):
        configured(prop)()
        print(f"{prop.__name__}: {examples} examples passed", flush=True)


if __name__ == "__main__":
    main()
