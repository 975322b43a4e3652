import copy

import pytest
import torch

from alphagrad import AGR, AlphaGrad, agr_


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
    wrapped = AGR(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1))
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
    wrapped, plain = AGR(torch.optim.SGD(model.parameters(), lr=0.1)), torch.optim.SGD(plain_model.parameters(), lr=0.1)
    for net, opt in ((model, wrapped), (plain_model, plain)):
        opt.zero_grad()
        net(batches[0]).pow(2).mean().backward()
        opt.step()
    assert not torch.allclose(model[0].weight, plain_model[0].weight)


def test_scope_matrices_skips_biases_and_active_steps_stops():
    layer = torch.nn.Linear(3, 2)
    opt = AGR(torch.optim.SGD(layer.parameters(), lr=0.0), scope="matrices", active_steps=1)
    for step in range(2):
        layer.weight.grad, layer.bias.grad = torch.ones(2, 3), torch.tensor([1.0, 3.0])
        opt.step()
        expected = torch.full((2, 3), 1 - 1 / 6) if step == 0 else torch.ones(2, 3)
        torch.testing.assert_close(layer.weight.grad, expected)
        torch.testing.assert_close(layer.bias.grad, torch.tensor([1.0, 3.0]))
    assert not opt.active


def test_agr_wraps_alphagrad_and_works_with_lr_schedulers_and_state_dict():
    model, batches = make_problem()
    opt = AGR(AlphaGrad(model.parameters(), lr=0.1, alpha=4.0, momentum=0.9), active_steps=10)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for x in batches[:2]:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        scheduler.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)

    clone = copy.deepcopy(model)
    clone_opt = AGR(AlphaGrad(clone.parameters(), lr=0.1, alpha=4.0, momentum=0.9), active_steps=10)
    clone_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert clone_opt.steps_taken == 2 and clone_opt.param_groups[0]["lr"] == pytest.approx(0.025)
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
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        AGR("adam")
