import copy

import pytest
import torch

from alphagrad import AGR, AlphaGrad, agr_, with_agr


@pytest.mark.parametrize("foreach", [True, False])
def test_agr_hand_computed(foreach):
    # g = [1, -3]: sum|g| = 4, g' = g - (|g| / 4) * g = [1 - 1/4, -3 + 9/4] = [0.75, -0.75]
    grad = torch.tensor([1.0, -3.0])
    matrix = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # sum 4: diagonal 2 - (2/4) * 2 = 1
    agr_([grad, matrix], foreach=foreach)
    torch.testing.assert_close(grad, torch.tensor([0.75, -0.75]))
    torch.testing.assert_close(matrix, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


@pytest.mark.parametrize("foreach", [True, False])
def test_agr_leaves_zero_gradient_zero(foreach):
    zero, other = torch.zeros(5), torch.tensor([2.0, 2.0])
    agr_([zero, other], foreach=foreach)
    assert torch.equal(zero, torch.zeros(5))
    torch.testing.assert_close(other, torch.tensor([1.0, 1.0]))


def test_agr_foreach_matches_single_tensor():
    torch.manual_seed(0)
    grads = [torch.randn(7, 3), torch.randn(11), torch.randn(2, 2, 2)]
    single, multi = [g.clone() for g in grads], [g.clone() for g in grads]
    agr_(single, foreach=False)
    agr_(multi, foreach=True)
    for a, b in zip(single, multi):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def make_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    batches = [torch.randn(16, 4) for _ in range(4)]
    return model, batches


def test_agr_adamw_equals_manual_computation():
    model, batches = make_problem()
    manual = copy.deepcopy(model)
    wrapped = with_agr(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1))
    plain = torch.optim.AdamW(manual.parameters(), lr=1e-2, weight_decay=0.1)
    for x in batches:
        wrapped.zero_grad()
        model(x).pow(2).mean().backward()
        wrapped.step()
        plain.zero_grad()
        manual(x).pow(2).mean().backward()
        with torch.no_grad():
            for p in manual.parameters():
                p.grad -= p.grad.abs() / p.grad.abs().sum() * p.grad
        plain.step()
    for a, b in zip(model.parameters(), manual.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0)


def test_agr_differs_from_plain_optimizer():
    model, batches = make_problem()
    plain_model = copy.deepcopy(model)
    wrapped, plain = with_agr(torch.optim.SGD(model.parameters(), lr=0.1)), torch.optim.SGD(plain_model.parameters(), lr=0.1)
    for net, opt in ((model, wrapped), (plain_model, plain)):
        opt.zero_grad()
        net(batches[0]).pow(2).mean().backward()
        opt.step()
    assert not torch.allclose(model[0].weight, plain_model[0].weight)


def test_scope_matrices_skips_biases_and_active_steps_stops():
    layer = torch.nn.Linear(3, 2)
    opt = with_agr(torch.optim.SGD(layer.parameters(), lr=0.0), scope="matrices", active_steps=1)
    for step in range(2):
        layer.weight.grad, layer.bias.grad = torch.ones(2, 3), torch.tensor([1.0, 3.0])
        opt.step()
        expected = torch.full((2, 3), 1 - 1 / 6) if step == 0 else torch.ones(2, 3)
        torch.testing.assert_close(layer.weight.grad, expected)
        torch.testing.assert_close(layer.bias.grad, torch.tensor([1.0, 3.0]))
    assert not AGR.of(opt).active


def test_agr_wraps_alphagrad_and_works_with_lr_schedulers_and_state_dict():
    model, batches = make_problem()
    opt = with_agr(AlphaGrad(model.parameters(), lr=0.1, alpha=4.0, momentum=0.9), active_steps=10)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for x in batches[:2]:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        scheduler.step()
    assert type(opt) is AlphaGrad and opt.param_groups[0]["lr"] == pytest.approx(0.025)

    clone = copy.deepcopy(model)
    clone_opt = with_agr(AlphaGrad(clone.parameters(), lr=0.1, alpha=4.0, momentum=0.9), active_steps=10)
    clone_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert AGR.of(clone_opt).steps_taken == 2 and clone_opt.param_groups[0]["lr"] == pytest.approx(0.025)
    for net, optimizer in ((model, opt), (clone, clone_opt)):
        for x in batches[2:]:
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_agr_rejects_bad_arguments():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="scope: 'weights'"):
        AGR(opt, scope="weights")
    with pytest.raises(ValueError, match="active_steps: -1"):
        AGR(opt, active_steps=-1)
    with pytest.raises(ValueError, match="nonfinite: 'ignore'"):
        AGR(opt, nonfinite="ignore")
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        AGR("adam")
    AGR(opt)
    with pytest.raises(ValueError, match="already has AGR attached"):
        AGR(opt)


def nan_problem(nonfinite):
    good, bad = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([{"params": [good, bad], "param_names": ["encoder.weight", "head.bias"]}], lr=0.1)
    with_agr(opt, nonfinite=nonfinite)
    good.grad, bad.grad = torch.tensor([1.0, 3.0]), torch.tensor([1.0, float("nan"), 2.0])
    return opt, good, bad


def test_nonfinite_gradient_raises_naming_the_tensor_before_any_change():
    opt, good, bad = nan_problem("raise")
    with pytest.raises(ValueError, match=r"non-finite gradient \(NaN or inf\) in head\.bias;"):
        opt.step()
    assert torch.equal(good.grad, torch.tensor([1.0, 3.0])) and torch.equal(good.detach(), torch.ones(2))


def test_nonfinite_skip_leaves_that_tensor_alone_instead_of_spreading_the_nan():
    opt, good, bad = nan_problem("skip")
    opt.step()
    torch.testing.assert_close(good.grad, torch.tensor([0.75, 0.75]))  # [1, 3] - ([1, 3] / 4) * [1, 3]
    assert bad.grad[0] == 1.0 and bad.grad[2] == 2.0 and AGR.of(opt).skipped_tensors == 1


def test_state_dict_without_agr_or_with_other_options_is_refused_at_load():
    params = [torch.nn.Parameter(torch.zeros(2))]
    plain_state = torch.optim.AdamW(params, lr=0.1).state_dict()
    with pytest.raises(ValueError, match="saved by a AdamW without AGR"):
        with_agr(torch.optim.AdamW(params, lr=0.1)).load_state_dict(plain_state)
    saved = with_agr(torch.optim.AdamW(params, lr=0.1), scope="matrices").state_dict()
    with pytest.raises(ValueError, match="scope 'matrices' \\(saved\\) != 'all' \\(now\\)"):
        with_agr(torch.optim.AdamW(params, lr=0.1)).load_state_dict(saved)


def test_closure_is_refused_and_remove_detaches():
    param = torch.nn.Parameter(torch.ones(2))
    opt = with_agr(torch.optim.SGD([param], lr=1.0))
    param.grad = torch.tensor([1.0, 3.0])
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: torch.tensor(0.0))
    AGR.of(opt).remove()
    assert AGR.of(opt) is None
    opt.step()
    torch.testing.assert_close(param.detach(), torch.tensor([0.0, -2.0]))  # the raw gradient
