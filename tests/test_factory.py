import pytest
import pytorch_optimizer
import torch
import tyro

from alphagrad import (
    AGR,
    OPTIMIZER_NAMES,
    AlphaGrad,
    OptimizerSpec,
    SaturationAlphaScheduler,
    make_alpha_scheduler,
    make_optimizer,
)

EXPECTED_TYPES = {
    "adam": (torch.optim.Adam, None), "adamw": (torch.optim.AdamW, None), "sgd": (torch.optim.SGD, None),
    "alphagrad": (AlphaGrad, None), "adamw-agr": (AGR, torch.optim.AdamW), "adan": (pytorch_optimizer.Adan, None),
    "adan-agr": (AGR, pytorch_optimizer.Adan), "lion": (pytorch_optimizer.Lion, None),
    "signsgd": (pytorch_optimizer.SignSGD, None),
}


def test_every_required_name_is_supported():
    assert set(EXPECTED_TYPES) <= set(OPTIMIZER_NAMES)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_factory_builds_every_name_and_it_reduces_a_loss(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    inputs, targets = torch.randn(64, 4), torch.randn(64, 1)
    opt = make_optimizer(model.named_parameters(), OptimizerSpec(name=name, lr=1e-2, alpha=4.0))
    outer, inner = EXPECTED_TYPES[name]
    assert type(opt) is outer
    if inner is not None:
        assert type(opt.optimizer) is inner
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_spec_settings_reach_the_optimizer():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = make_optimizer(params, OptimizerSpec(name="adam", lr=3e-4, eps=1e-5))  # CleanRL's PPO settings
    assert adam.defaults["eps"] == 1e-5 and adam.defaults["lr"] == 3e-4 and adam.defaults["betas"] == (0.9, 0.999)
    alpha = make_optimizer(params, name="alphagrad", alpha=98.0, momentum=0.9, momentum_form="sgd", fused=False)
    assert alpha.defaults["alpha"] == 98.0 and alpha.defaults["momentum_form"] == "sgd"
    assert make_optimizer(params, name="adan", betas=(0.9, 0.9, 0.9)).defaults["betas"] == (0.9, 0.9, 0.9)
    wrapped = make_optimizer(params, name="sgd", agr=True, agr_scope="matrices", agr_active_steps=5)
    assert isinstance(wrapped, AGR) and wrapped.scope == "matrices" and wrapped.active_steps == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(name="adamax"), "optimizer name: 'adamax' .*'adam', 'adamw', 'sgd', 'alphagrad'"),
        (dict(name="adam", betas=(0.9, 0.9, 0.9)), "betas for adam"),
        (dict(name="adan", betas=(0.9, 0.9)), "betas for adan"),
        (dict(name="alphagrad", alpha=0.0), "alpha"),
        (dict(name="adam", lr=-1.0), "learning rate"),
    ],
)
def test_factory_rejects_bad_specs(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], **overrides)


def test_spec_parses_from_the_command_line():
    spec = tyro.cli(OptimizerSpec, args=["--name", "alphagrad", "--alpha", "98", "--momentum", "0.9"])
    assert spec.name == "alphagrad" and spec.alpha == 98.0 and spec.momentum == 0.9
    assert tyro.cli(OptimizerSpec, args=["--alpha", "auto"]).alpha == "auto"
    with pytest.raises(SystemExit):
        tyro.cli(OptimizerSpec, args=["--name", "adamax"])


def test_alpha_scheduler_from_spec():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert make_alpha_scheduler(make_optimizer(params, name="alphagrad"), OptimizerSpec(name="alphagrad")) is None
    spec = OptimizerSpec(name="alphagrad", alpha_schedule=True, agr=True)
    assert isinstance(make_alpha_scheduler(make_optimizer(params, spec), spec), SaturationAlphaScheduler)
    with pytest.raises(ValueError, match="alpha_schedule needs the alphagrad optimizer"):
        spec = OptimizerSpec(name="adam", alpha_schedule=True)
        make_alpha_scheduler(make_optimizer(params, spec), spec)
