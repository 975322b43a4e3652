from pathlib import Path

import pytest
import pytorch_optimizer
import torch
import tyro

from alphagrad import AGR, AlphaGrad, SaturationAlphaScheduler
from alphagrad_rl.factory import (
    OPTIMIZER_NAMES,
    OptimizerSpec,
    custom_callable,
    make_alpha_scheduler,
    make_optimizer,
)

EXAMPLE = f"{Path(__file__).resolve().parents[1] / 'examples' / 'softsign_alphagrad.py'}:SoftsignAlphaGrad"
SoftsignAlphaGrad = custom_callable(EXAMPLE)

EXPECTED_TYPES = {  # the optimizer's type, and whether AGR is attached to it
    "adam": (torch.optim.Adam, False), "adamw": (torch.optim.AdamW, False), "sgd": (torch.optim.SGD, False),
    "alphagrad": (AlphaGrad, False), "adamw-agr": (torch.optim.AdamW, True), "adan": (pytorch_optimizer.Adan, False),
    "adan-agr": (pytorch_optimizer.Adan, True), "lion": (pytorch_optimizer.Lion, False),
    "signsgd": (pytorch_optimizer.SignSGD, False), "custom": (SoftsignAlphaGrad, False),
}


def test_every_required_name_is_supported():
    assert set(EXPECTED_TYPES) <= set(OPTIMIZER_NAMES)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_factory_builds_every_name_and_it_reduces_a_loss(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    inputs, targets = torch.randn(64, 4), torch.randn(64, 1)
    opt = make_optimizer(model.named_parameters(), OptimizerSpec(
        name=name, lr=1e-2, alpha=4.0 if name == "alphagrad" else "auto", target=EXAMPLE if name == "custom" else None,
        options='{"alpha": 4.0}' if name == "custom" else "{}"))
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


def test_a_custom_optimizer_from_a_module_or_a_file_gets_every_setting():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    rmsprop = make_optimizer(model.named_parameters(), name="custom", target="torch.optim:RMSprop", lr=0.01,
                             weight_decay=0.1, options='{"alpha": 0.9, "centered": true}')
    assert type(rmsprop) is torch.optim.RMSprop and rmsprop.param_groups[0]["param_names"] == ["weight", "bias"]
    assert {key: rmsprop.defaults[key] for key in ("lr", "weight_decay", "alpha", "centered")} == dict(
        lr=0.01, weight_decay=0.1, alpha=0.9, centered=True)
    softsign = make_optimizer(model.parameters(), name="custom", target=EXAMPLE, lr=0.5, agr=True,
                              options='{"alpha": 3.0}')
    assert type(softsign) is SoftsignAlphaGrad and AGR.of(softsign) is not None  # AGR in front of it too
    grads = [torch.randn_like(p) for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    softsign.step()
    for p, old, g in zip(model.parameters(), before, grads):
        g = g - g.abs() / g.abs().sum() * g  # AGR (eq. 1 of its paper), then the example's update by hand
        scaled = 3.0 * g / (g.norm() + 1e-8)
        assert torch.allclose(p.detach(), old - 0.5 * scaled / (1 + scaled.abs()), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="cannot train stacked parameters"):
        make_optimizer(model.parameters(), name="custom", target=EXAMPLE, members=2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(), "'custom' needs a target: --optim.target 'package.module:callable'"),
        (dict(target="torch.optim.RMSprop"), "invalid optimizer target: 'torch.optim.RMSprop' \\(allowed:"),
        (dict(target="no_such_module:Opt"), "cannot import no_such_module .*PYTHONPATH"),
        (dict(target="torch.optim:NoSuch"), "torch.optim has no NoSuch"),
        (dict(target="missing/file.py:Opt"), "no file .*missing/file.py"),
        (dict(target="torch.optim:RMSprop", options="[0.9]"), "options: '\\[0.9\\]' \\(allowed: a JSON object"),
        (dict(target="torch.optim:RMSprop", options="{alpha: 0.9}"), "options: .*allowed: a JSON object; Expecting"),
        (dict(target="torch.optim:RMSprop", options='{"lr": 0.1}'), "options: lr \\(set them as --optim.<name>"),
        (dict(target="torch.optim:RMSprop", options='{"alhpa": 0.9}'), "refused its arguments .*alhpa"),
        (dict(target="torch.optim:RMSprop", eps=1e-5), "does not use eps=1e-05.*own arguments go in options"),
        (dict(name="adam", target="torch.optim:SGD"), "'adam' does not use target='torch.optim:SGD'"),
    ],
)
def test_a_bad_custom_optimizer_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], **{"name": "custom", **overrides})


def test_a_custom_target_must_return_an_optimizer(tmp_path):
    (tmp_path / "not_an_optimizer.py").write_text("def make(params, lr):\n    return list(params)\n")
    with pytest.raises(ValueError, match="returned list, not a torch.optim.Optimizer"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], name="custom",
                       target=f"{tmp_path / 'not_an_optimizer.py'}:make")


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


def _moves(spec: OptimizerSpec, scale: float, members: int | None = None) -> torch.Tensor:
    """How far one step at `scale` x lr moves a parameter, from a state one step old (float64; members: stacked)."""
    from alphagrad_rl.factory import make_optimizer

    generator = torch.Generator().manual_seed(0)
    shape = (3, 2, 5) if members else (2, 5)
    param = torch.nn.Parameter(torch.randn(*shape, generator=generator, dtype=torch.float64))
    optimizer = make_optimizer([param], spec, members=members)
    param.grad = torch.randn(*shape, generator=generator, dtype=torch.float64)
    optimizer.step()
    for group in optimizer.param_groups:
        group["lr"] = spec.lr * scale
    before = param.detach().clone()
    param.grad = torch.randn(*shape, generator=generator, dtype=torch.float64)
    optimizer.step()
    return param.detach() - before


@pytest.mark.parametrize("name", [n for n in OPTIMIZER_NAMES if n != "custom"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_each_optimizers_declared_capabilities_hold(name, weight_decay):
    """What the factory declares, checked on the optimizer's real steps: a step at 2 lr moves twice as far exactly
    when it declares member_lrs (from the same state), and with members every member's slice moves as its own
    optimizer would move it."""
    from alphagrad_rl.factory import capabilities, make_optimizer

    spec = OptimizerSpec(name=name, lr=1e-2, weight_decay=weight_decay)
    declared = capabilities(spec)
    linear = torch.allclose(_moves(spec, 2.0), 2 * _moves(spec, 1.0), rtol=1e-6, atol=1e-12)
    assert linear == declared.member_lrs, (name, weight_decay)
    assert declared.stacked and declared.member_alpha_momentum == (name == "alphagrad")
    stacked = _moves(spec, 1.0, members=3)
    for member in range(3):
        generator = torch.Generator().manual_seed(0)
        params = torch.randn(3, 2, 5, generator=generator, dtype=torch.float64)
        grads = [torch.randn(3, 2, 5, generator=generator, dtype=torch.float64) for _ in range(2)]
        own = torch.nn.Parameter(params[member].clone())
        optimizer = make_optimizer([own], spec)
        for grad in grads:
            own.grad = grad[member].clone()
            before = own.detach().clone()
            optimizer.step()
        # (AlphaGrad alone: its single-run default, the C++ kernel, evaluates tanh within 4.4e-7)
        torch.testing.assert_close(stacked[member], own.detach() - before, rtol=1e-6 if name == "alphagrad" else 1e-9,
                                   atol=1e-8 if name == "alphagrad" else 1e-12)


def test_a_custom_optimizer_declares_nothing_a_population_needs():
    from alphagrad_rl.factory import capabilities

    declared = capabilities(OptimizerSpec(name="custom", target="torch.optim:SGD"))
    assert not (declared.stacked or declared.member_lrs or declared.member_alpha_momentum)
