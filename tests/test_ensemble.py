"""Stacked ("ensemble") parameters: dim 0 indexes independent members; each member's update is exactly the one a
separate optimizer would give it, whatever the other members do."""

import copy

import pytest
import torch

from alphagrad import AGR, AlphaGrad, SaturationAlphaScheduler, agr_, diagnostics, with_agr

MEMBERS = 3
SHAPES = [(5, 4), (5,), (2, 5), (2,)]  # a 4-5-2 MLP's weights and biases, per member


def stacked_problem(seed=0):
    """Per-member parameters and a few steps of per-member gradients (member 1's ~1000x larger)."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(MEMBERS, *shape, generator=generator, dtype=torch.float64) for shape in SHAPES]
    scale = torch.tensor([1.0, 1000.0, 0.01], dtype=torch.float64)
    grads = [[torch.randn(MEMBERS, *shape, generator=generator, dtype=torch.float64)
              * scale.view(-1, *[1] * len(shape)) for shape in SHAPES] for _ in range(4)]
    return params, grads


def run_stacked(params, grads, **options):
    stacked = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = AlphaGrad(stacked, members=MEMBERS, **options)
    for step_grads in grads:
        for p, g in zip(stacked, step_grads):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() for p in stacked], optimizer


def run_separately(params, grads, member_options, **options):
    """Each member with its own optimizer over its own slices: the reference."""
    results = []
    for m in range(MEMBERS):
        own = [torch.nn.Parameter(p[m].clone()) for p in params]
        optimizer = AlphaGrad(own, foreach=False, **options, **member_options(m))
        for step_grads in grads:
            for p, g in zip(own, step_grads):
                p.grad = g[m].clone()
            optimizer.step()
        results.append([p.detach() for p in own])
    return results


OPTIONS = [
    dict(alpha=3.0),
    dict(alpha="auto", alpha_k=2.0, momentum=0.9),
    dict(alpha=5.0, momentum=0.9, momentum_form="sgd", weight_decay=0.1, maximize=True),
    dict(alpha=5.0, normalization="group"),
    dict(alpha="auto", normalization="group", momentum=0.5),
    dict(alpha=0.5, normalization="none"),
    dict(alpha=4.0, transform="hybrid", hybrid_lambda=0.3),
    dict(alpha=4.0, transform="sin_tanh", kappa=1.5),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_each_member_steps_as_its_own_optimizer_would(options):
    params, grads = stacked_problem()
    stacked, _ = run_stacked(params, grads, lr=0.05, **options)
    for m, separate in enumerate(run_separately(params, grads, lambda m: {}, lr=0.05, **options)):
        for s, p in zip(stacked, separate):
            torch.testing.assert_close(s[m], p, atol=1e-12, rtol=1e-10)


def test_per_member_alpha_lr_and_momentum():
    params, grads = stacked_problem(1)
    alphas, lrs, momenta = [3.0, 93.0, 279.0], [0.1, 0.01, 0.001], [0.0, 0.5, 0.9]
    stacked, _ = run_stacked(params, grads, alpha=alphas, lr=torch.tensor(lrs, dtype=torch.float64), momentum=momenta, momentum_form="sgd")
    separate = run_separately(params, grads, lambda m: dict(alpha=alphas[m], lr=lrs[m], momentum=momenta[m]),
                              momentum_form="sgd")
    for m in range(MEMBERS):
        for s, p in zip(stacked, separate[m]):
            torch.testing.assert_close(s[m], p, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e150])
def test_a_bad_member_changes_no_other_member(bad):
    params, grads = stacked_problem(2)
    grads[1][0][1, 0, 0] = bad  # member 1, second step, one element
    stacked, optimizer = run_stacked(params, grads, lr=0.05, alpha=3.0, momentum=0.9, nonfinite="skip")
    clean_params, clean_grads = stacked_problem(2)
    reference, _ = run_stacked(clean_params, clean_grads, lr=0.05, alpha=3.0, momentum=0.9)
    for s, r in zip(stacked, reference):
        for m in (0, 2):
            assert torch.equal(s[m], r[m])  # bitwise: nothing crosses members
    if bad == 1e150:  # huge but finite: normalization makes it an ordinary step
        assert optimizer.param_groups[0]["skipped_steps"] == [0, 0, 0]
    else:
        assert optimizer.param_groups[0]["skipped_steps"] == [0, 1, 0]


def test_raise_names_the_member_after_the_others_stepped():
    params, grads = stacked_problem(3)
    stacked = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = AlphaGrad(stacked, members=MEMBERS, lr=0.1, alpha=3.0)
    for p, g in zip(stacked, grads[0]):
        p.grad = g.clone()
    stacked[0].grad[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"member\(s\) \[2\] of param group 0"):
        optimizer.step()
    assert torch.equal(stacked[0][2], params[0][2]) and not torch.equal(stacked[0][0], params[0][0])


def test_diagnostics_per_member_match_separate_optimizers():
    params, grads = stacked_problem(4)
    stacked = [torch.nn.Parameter(p.clone()) for p in params]
    for p, g in zip(stacked, grads[0]):
        p.grad = g.clone()
    per_member = diagnostics(AlphaGrad(stacked, members=MEMBERS, lr=0.1, alpha=[1.0, 5.0, 50.0]), tau=1.0)
    for m, alpha in enumerate([1.0, 5.0, 50.0]):
        own = [torch.nn.Parameter(p[m].clone()) for p in params]
        for p, g in zip(own, grads[0]):
            p.grad = g[m].clone()
        expected = diagnostics(AlphaGrad(own, lr=0.1, alpha=alpha), tau=1.0)
        for (name, values), (_, reference) in zip(per_member.items(), expected.items()):
            assert values["elements"] == reference["elements"]  # one member's size, the same for every member
            for key in set(values) - {"elements"}:
                assert values[key][m] == pytest.approx(reference[key], rel=1e-9, abs=1e-12), (name, key)


def test_agr_sums_each_member_on_its_own():
    grads = [torch.tensor([[1.0, -3.0], [2.0, 2.0], [0.0, 0.0]])]  # member sums 4, 4, 0
    agr_(grads, members=3)
    torch.testing.assert_close(grads[0], torch.tensor([[0.75, -0.75], [1.0, 1.0], [0.0, 0.0]]))
    param = torch.nn.Parameter(torch.zeros(3, 2))
    optimizer = with_agr(torch.optim.SGD([param], lr=1.0), members=3, nonfinite="skip")
    param.grad = torch.tensor([[1.0, -3.0], [float("nan"), 1.0], [2.0, 2.0]])
    optimizer.step()
    torch.testing.assert_close(param.detach()[[0, 2]], -torch.tensor([[0.75, -0.75], [1.0, 1.0]]))
    assert AGR.of(optimizer).skipped_tensors == 1


def test_adam_on_stacked_parameters_is_each_members_adam():
    """Elementwise optimizers need nothing: one Adam over stacked parameters is each member's Adam."""
    params, grads = stacked_problem(5)
    stacked = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = torch.optim.Adam(stacked, lr=0.01)
    for step_grads in grads:
        for p, g in zip(stacked, step_grads):
            p.grad = g.clone()
        optimizer.step()
    for m in range(MEMBERS):
        own = [torch.nn.Parameter(p[m].clone()) for p in params]
        reference = torch.optim.Adam(own, lr=0.01)
        for step_grads in grads:
            for p, g in zip(own, step_grads):
                p.grad = g[m].clone()
            reference.step()
        for s, p in zip(stacked, own):
            torch.testing.assert_close(s[m], p.detach(), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(("options", "message"), [
    (dict(members=4), "dim 0 must index the members, got shape \\(3, 5, 4\\)"),
    (dict(members=3, lr=[0.1, 0.2]), "invalid lr: 2 values for 3 members"),
    (dict(members=3, alpha=[1.0, -1.0, 2.0]), "alpha .*: -1.0"),
    (dict(members=3, fused=True), "members .*has its own path"),
    (dict(members=0), "members: 0"),
])
def test_member_settings_are_validated(options, message):
    params, _ = stacked_problem()
    with pytest.raises(ValueError, match=message):
        AlphaGrad([torch.nn.Parameter(p) for p in params], **options)


def test_state_dict_round_trip_and_no_saturation_scheduler_for_members():
    params, grads = stacked_problem(6)
    stacked, optimizer = run_stacked(params, grads[:2], lr=[0.1, 0.2, 0.3], alpha=3.0, momentum=0.9)
    clone = [torch.nn.Parameter(p.clone()) for p in stacked]
    restored = AlphaGrad(clone, members=MEMBERS, lr=0.5, alpha=3.0, momentum=0.9)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # a live state_dict shares its tensors
    for opt, ps in ((optimizer, optimizer.param_groups[0]["params"]), (restored, clone)):
        for step_grads in grads[2:]:
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(optimizer.param_groups[0]["params"], clone):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not support stacked parameters"):
        SaturationAlphaScheduler(optimizer)


@pytest.mark.parametrize("foreach", [False, True])
def test_members_take_the_reference_loop_and_foreach_paths_alike(foreach):
    """Stacked parameters run through the same core as one model: foreach=False (one tensor at a time) and
    foreach=True give the default members path's result exactly."""
    params, grads = stacked_problem(5)
    options = dict(lr=[0.1, 0.01, 0.05], alpha=[3.0, 30.0, 300.0], momentum=0.9, weight_decay=0.01)
    reference, _ = run_stacked(params, grads, **options)
    other, _ = run_stacked(params, grads, foreach=foreach, **options)
    for r, o in zip(reference, other):
        assert torch.equal(r, o)
