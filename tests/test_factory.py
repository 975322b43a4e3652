import pytest
import pytorch_optimizer
import torch
import tyro

from alphagrad import AGR, AlphaGrad, SaturationAlphaScheduler
from alphagrad_rl.factory import OPTIMIZER_NAMES, OptimizerSpec, make_alpha_scheduler, make_optimizer

EXPECTED_TYPES = {  # the optimizer's type, and whether AGR is attached to it
    "adam": (torch.optim.Adam, False), "adamw": (torch.optim.AdamW, False), "sgd": (torch.optim.SGD, False),
    "alphagrad": (AlphaGrad, False), "adamw-agr": (torch.optim.AdamW, True), "adan": (pytorch_optimizer.Adan, False),
    "adan-agr": (pytorch_optimizer.Adan, True), "lion": (pytorch_optimizer.Lion, False),
    "signsgd": (pytorch_optimizer.SignSGD, False),
}


def test_every_required_name_is_supported():
    assert set(EXPECTED_TYPES) <= set(OPTIMIZER_NAMES)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_factory_builds_every_name_and_it_reduces_a_loss(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    inputs, targets = torch.randn(64, 4), torch.randn(64, 1)
    opt = make_optimizer(model.named_parameters(), OptimizerSpec(name=name, lr=1e-2,
                                                                 alpha=4.0 if name == "alphagrad" else "auto"))
    expected_type, with_agr = EXPECTED_TYPES[name]
    assert type(opt) is expected_type and (AGR.of(opt) is not None) == with_agr
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
    with_agr = make_optimizer(params, name="sgd", agr=True, agr_scope="matrices", agr_active_steps=5)
    assert AGR.of(with_agr).scope == "matrices" and AGR.of(with_agr).active_steps == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(name="adamax"), "optimizer name: 'adamax' .*'adam', 'adamw', 'sgd', 'alphagrad'"),
        (dict(name="adam", betas=(0.9, 0.9, 0.9)), "betas for adam"),
        (dict(name="adan", betas=(0.9, 0.9)), "betas for adan"),
        (dict(name="alphagrad", alpha=0.0), "alpha"),
        (dict(name="adam", lr=-1.0), "lr: -1.0"),
        (dict(name="adam", lr="0.1"), "lr: '0.1' \\(allowed: a number\\)"),
        (dict(name="sgd", agr="yes"), "agr: 'yes' \\(allowed: True or False\\)"),
        (dict(name="sgd", momentum=1.5), "momentum: 1.5"),
        (dict(name="adam", betas=(0.9, 1.2)), "betas \\(each\\): 1.2"),
        (dict(name="alphagrad", fused="no"), "fused: 'no'"),
        (dict(name="adam", alpha=98.0), "'adam' does not use alpha=98.0: remove it, or set it back to its default \\(alpha='auto'\\)"),
        (dict(name="alphagrad", beta=0.5), "does not use beta=0.5"),  # beta belongs to the scaled_tanh transform
        (dict(name="adamw", agr_scope="matrices"), "does not use agr_scope"),  # AGR is off
        (dict(name="adam", alhpa=3.0), "unknown optimizer option\\(s\\) alhpa"),
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
    with pytest.raises(ValueError, match="'adam' does not use alpha_schedule=True"):
        make_optimizer(params, OptimizerSpec(name="adam", alpha_schedule=True))
    with pytest.raises(ValueError, match="alpha_schedule needs the alphagrad optimizer"):
        make_alpha_scheduler(make_optimizer(params, name="adam"), OptimizerSpec(name="adam", alpha_schedule=True))
