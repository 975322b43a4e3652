import pytest
import torch

from alphagrad import AlphaGrad, SaturationAlphaScheduler


def make(alpha, grad, **scheduler_options):
    param = torch.nn.Parameter(torch.zeros_like(grad))
    param.grad = grad
    opt = AlphaGrad([param], lr=0.0, alpha=alpha)
    return opt, SaturationAlphaScheduler(opt, **scheduler_options)


def test_saturation_of_known_gradient():
    # g_hat = [0.6, 0.8]; alpha = 5 -> [3, 4]; tau 3.5 -> S = 0.5
    opt, scheduler = make(5.0, torch.tensor([3.0, 4.0]), tau=3.5)
    assert scheduler.saturation(opt.param_groups[0]) == 0.5


def test_alpha_decreases_when_saturated_and_increases_when_linear():
    grad = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    high, scheduler = make(1000.0, grad.clone(), factor=2.0)
    scheduler.step()
    assert high.param_groups[0]["alpha"] == 500.0 and scheduler.last_saturation[0] > 0.25
    low, scheduler = make(0.01, grad.clone(), factor=2.0)
    scheduler.step()
    assert low.param_groups[0]["alpha"] == 0.02 and scheduler.last_saturation[0] < 0.05


def test_scheduler_brings_saturation_into_target_and_respects_bounds():
    grad = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    opt, scheduler = make(5000.0, grad, target=(0.05, 0.25), factor=1.1)
    for _ in range(200):
        scheduler.step()
    assert 0.05 <= scheduler.saturation(opt.param_groups[0]) <= 0.25
    opt, scheduler = make(10.0, grad.clone(), max_alpha=12.0, factor=2.0)
    for _ in range(5):
        scheduler.step()
    assert opt.param_groups[0]["alpha"] == 12.0  # near-linear regime wants more, capped


def test_auto_alpha_groups_scale_alpha_k_and_interval():
    opt, scheduler = make("auto", torch.randn(100), factor=2.0, target=(0.9, 1.0), interval=2)
    scheduler.step()
    assert opt.param_groups[0]["alpha_k"] == 1.0  # not measured on the first of every 2 steps
    scheduler.step()
    assert opt.param_groups[0]["alpha"] == "auto" and opt.param_groups[0]["alpha_k"] == 2.0


def test_scheduler_state_round_trips():
    opt, scheduler = make(1000.0, torch.randn(50), factor=1.5)
    scheduler.step()
    other_opt, other = make(1000.0, torch.randn(50))
    other.load_state_dict(scheduler.state_dict())
    assert other.steps == 1 and other.factor == 1.5 and other.optimizer is other_opt


@pytest.mark.parametrize(
    "options",
    [dict(target=(0.3, 0.1)), dict(target=(0.1, 1.5)), dict(tau=0.0), dict(factor=1.0), dict(interval=0)],
)
def test_scheduler_rejects_bad_arguments(options):
    with pytest.raises(ValueError, match="allowed"):
        make(1.0, torch.ones(2), **options)


def test_scheduler_needs_alphagrad():
    with pytest.raises(TypeError, match="AlphaGrad"):
        SaturationAlphaScheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
