"""Bad input at every entry point gets one clear line (never a traceback), is never silently accepted, and
loses no data. Command-line entry points are called in-process with their argv."""

import dataclasses
import math
import os
import re
import stat
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from alphagrad_rl.agents import dqn, ppo_continuous_action, td3_continuous_action

from alphagrad import AlphaGrad
from alphagrad_rl.cli import sweep as sweep_script
from alphagrad_rl.experiment import COMMON_RANGES, cli
from alphagrad_rl.runs import read_run

ROOT = Path(__file__).resolve().parents[1]

TINY_DQN = ["--total-timesteps", "300", "--learning-starts", "100", "--batch-size", "16", "--buffer-size", "300",
            "--quiet", "--no-cuda"]


def agent_error(module, argv, capsys) -> str:
    """Run an agent's command line; return its one-line error (and assert it is one line, no traceback)."""
    with pytest.raises(SystemExit) as stopped:
        cli(module.main, module.Args, argv)
    message = str(stopped.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in capsys.readouterr().err
    return message


@pytest.mark.parametrize(("argv", "expected"), [
    (["--run-name", "../../x"], "invalid run name '../../x'"),
    (["--run-name", "/tmp/abs"], "invalid run name '/tmp/abs'"),
    (["--run-name", "a/b"], "invalid run name 'a/b'"),
    (["--run-name", "."], "invalid run name '.'"),
    (["--optim.name", "adam", "--optim.alpha", "98"], "--optim: optimizer 'adam' does not use alpha=98.0"),
    (["--optim.name", "alphagrad", "--optim.alpha", "-1"], "--optim: invalid alpha"),
    (["--optim.name", "sgd", "--optim.momentum", "1.5"], "--optim: invalid optimizer momentum: 1.5"),
    (["--env-id", "Hopper-v5"], "DQN needs a Discrete action space"),
])
def test_agent_rejects_bad_options_before_creating_anything(argv, expected, tmp_path, capsys):
    message = agent_error(dqn, [*TINY_DQN, "--results-dir", str(tmp_path), *argv], capsys)
    assert expected in message
    assert not list(tmp_path.iterdir())  # no run folder, no "crashed" record


def test_ppo_on_a_discrete_action_env_is_one_clear_line(tmp_path, capsys):
    message = agent_error(ppo_continuous_action, ["--env-id", "CartPole-v1", "--results-dir", str(tmp_path)], capsys)
    assert message == "error: PPO needs a Box action space, but the environment has Discrete(2)"


def test_results_dir_that_is_a_file_or_not_writable(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file, not a folder" in agent_error(dqn, [*TINY_DQN, "--results-dir", str(a_file / "runs")], capsys)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "is not writable" in agent_error(dqn, [*TINY_DQN, "--results-dir", str(locked)], capsys)


def test_ppo_says_how_it_rounds_the_budget(tmp_path, capsys):
    ppo_continuous_action.main(ppo_continuous_action.Args(
        env_id="Hopper-v5", total_timesteps=200, num_steps=64, num_minibatches=2, update_epochs=1,
        results_dir=str(tmp_path), run_name="ppo", quiet=True, cuda=False))
    assert "--total-timesteps 200 runs 192" in capsys.readouterr().err
    assert read_run(tmp_path / "ppo")["summary"]["total_timesteps"] == 192


def test_run_record_files_get_the_usual_file_mode(tmp_path):
    dqn.main(dqn.Args(total_timesteps=200, learning_starts=100, batch_size=16, buffer_size=300, quiet=True, cuda=False,
                      results_dir=str(tmp_path), run_name="run"))
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "run").iterdir() if path.is_file()}
    assert modes["config.json"] == modes["summary.json"] == modes["metrics.jsonl"] == 0o666 & ~umask


@pytest.mark.parametrize(("argv", "expected"), [
    (["--workers", "-1"], "invalid --workers -1"),
    (["--runs-per-gpu", "0"], "--runs-per-gpu 0"),
    (["--total-timesteps", "0"], "--total-timesteps 0: run adam__s1: invalid total_timesteps: 0 (allowed: [1, inf))"),
    (["--arms", "nope"], "unknown arm(s) ['nope']"),
])
def test_sweep_launcher_rejects_bad_options(argv, expected, tmp_path, capsys):
    argv = [str(ROOT / "configs" / "demo_dqn_cartpole.yaml"), "--results-dir", str(tmp_path), *argv]
    assert sweep_script.main(sweep_script.tyro.cli(sweep_script.Args, args=argv)) == 2
    assert expected in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_sweep_results_dir_that_is_a_file(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    argv = [str(ROOT / "configs" / "demo_dqn_cartpole.yaml"), "--results-dir", str(a_file)]
    assert sweep_script.main(sweep_script.tyro.cli(sweep_script.Args, args=argv)) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_alphagrad_refuses_complex_parameters_and_foreign_or_invalid_state():
    with pytest.raises(ValueError, match="does not support complex parameters"):
        AlphaGrad([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))], alpha=2.0)
    params = [torch.nn.Parameter(torch.zeros(2))]
    params[0].grad = torch.ones(2)
    adam = torch.optim.Adam(params)
    adam.step()
    with pytest.raises(ValueError, match="not an AlphaGrad state_dict: its param group 0 lacks alpha"):
        AlphaGrad(params, alpha=2.0).load_state_dict(adam.state_dict())
    saved = AlphaGrad(params, alpha=2.0).state_dict()
    saved["param_groups"][0]["alpha"] = -5.0
    optimizer = AlphaGrad(params, alpha=2.0)
    with pytest.raises(ValueError, match="alpha .*: -5.0"):
        optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["alpha"] == 2.0  # refused before anything was loaded


def bad_values(low: float, high: float, brackets: str) -> list[float]:
    """NaN and the nearest values just outside the interval."""
    values = [float("nan")]
    if math.isfinite(low):
        values.append(low if brackets[0] == "(" else low - 1)
    if math.isfinite(high):
        values.append(high if brackets[1] == ")" else high + 1)
    return values


@pytest.mark.parametrize("module", [dqn, td3_continuous_action, ppo_continuous_action], ids=lambda m: m.__name__)
def test_every_numeric_option_of_every_agent_is_range_checked(module):
    """Negative budgets, learning starts, exploration schedules and loss coefficients, NaN clipping norms: each numeric
    option has a declared interval, and a value outside it (or NaN) is one ValueError naming it."""
    hints = typing.get_type_hints(module.Args)
    numeric = {f.name for f in dataclasses.fields(module.Args)
               if re.search(r"\b(int|float)\b", str(hints[f.name])) and hints[f.name] is not bool}
    ranges = {**COMMON_RANGES, **module.RANGES}
    assert numeric == set(ranges)
    good = module.Args(results_dir="/tmp", quiet=True)
    module.check_args(good)
    for name, interval in ranges.items():
        for value in bad_values(*interval):
            with pytest.raises(ValueError, match=f"^invalid {name}: "):
                module.check_args(dataclasses.replace(good, **{name: value}))


@pytest.mark.parametrize(("module", "changes", "message"), [
    (dqn, dict(batch_size=128, buffer_size=64), "invalid batch_size: 128 (allowed: at most buffer_size, 64)"),
    (td3_continuous_action, dict(learning_starts=5000, total_timesteps=5000), "invalid learning_starts: 5000"),
    (dqn, dict(start_e=0.1, end_e=0.5), "invalid end_e: 0.5 (allowed: at most start_e, 0.1"),
    (ppo_continuous_action, dict(total_timesteps=1000), "invalid total_timesteps: 1000 (allowed: at least one rollout"),
])
def test_inconsistent_options_are_refused(module, changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        module.check_args(module.Args(results_dir="/tmp", quiet=True, **changes))


def test_a_population_checks_each_members_ranges():
    from alphagrad_rl.agents import dqn_population

    with pytest.raises(ValueError, match="^invalid gamma: nan"):
        dqn_population.check_args(dqn_population.Args(results_dir="/tmp", seeds=(1, 2), gamma=float("nan")))


@pytest.mark.parametrize(("source", "message"), [
    ("import torch\ndef Mine(params, lr):\n    return torch.optim.SGD(params, lr=lr\n",
     "loading {file} failed: SyntaxError: '(' was never closed ({file}, line 3)"),
    ("import torch\ndef Mine(params, lr):\n    raise RuntimeError('broken')\n",
     "custom optimizer {file}:Mine failed while it was built: RuntimeError: broken ({file}, line 3)"),
    ("raise KeyError('x')\n", "loading {file} failed: KeyError: 'x' ({file}, line 1)"),
])
def test_errors_in_a_custom_optimizers_code_are_one_line_naming_where(source, message, tmp_path, capsys):
    """A syntax error in the user's optimizer file, or an exception it raises, gave a 20-30 line traceback."""
    path = tmp_path / "mine.py"
    path.write_text(source)
    error = agent_error(dqn, [*TINY_DQN, "--results-dir", str(tmp_path / "runs"), "--optim.name", "custom",
                              "--optim.target", f"{path}:Mine"], capsys)
    assert message.format(file=path) in error
    assert not (tmp_path / "runs").exists()


def test_an_over_long_default_run_name_is_one_clear_line(tmp_path, capsys):
    error = agent_error(dqn, [*TINY_DQN, "--results-dir", str(tmp_path), "--exp-name", "x" * 300], capsys)
    assert "characters long (allowed: up to 200): shorten --exp-name, or give --run-name" in error


def test_an_observation_space_the_networks_cannot_take_is_refused(tmp_path, capsys):
    error = agent_error(dqn, [*TINY_DQN, "--results-dir", str(tmp_path), "--env-id", "FrozenLake-v1"], capsys)
    assert error == ("error: DQN needs a flat Box observation space (a vector; its networks are MLPs), but "
                     "FrozenLake-v1 has Discrete(16) (flatten it with a wrapper, e.g. gymnasium.wrappers."
                     "FlattenObservation, in an environment registered for it)")


@pytest.mark.parametrize(("flags", "message"), [
    (["--seeds", "7"], "unknown seed(s) [7] (allowed: 1, 2)"),
    (["--arms", "adam", "--seeds", "2", "--dry-run"], None),  # selects a run: fine
])
def test_seeds_that_select_no_run_are_refused(tmp_path, flags, message, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text("name: tiny\nprogram: agents/dqn.py\nparameters:\n  total-timesteps: {value: 300}\n"
                      "  learning-starts: {value: 100}\n  buffer-size: {value: 300}\n  batch-size: {value: 16}\n"
                      "  seed: {values: [1, 2]}\narms:\n  adam: {}\n")
    argv = [str(config), "--results-dir", str(tmp_path / "runs"), *flags]
    status = sweep_script.main(sweep_script.tyro.cli(sweep_script.Args, args=argv))
    err = capsys.readouterr().err
    assert (status, message in err if message else err == "") == ((2, True) if message else (0, True))


@pytest.mark.parametrize("flag", ["--records", "--export-wandb"])
def test_an_output_folder_that_is_a_file_is_one_clear_line(tmp_path, flag, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    config = tmp_path / "sweep.yaml"
    config.write_text("name: tiny\nprogram: agents/dqn.py\nparameters:\n  total-timesteps: {value: 300}\n"
                      "  learning-starts: {value: 100}\n  buffer-size: {value: 300}\n  batch-size: {value: 16}\n"
                      "arms:\n  adam: {}\n")
    argv = [str(config), "--results-dir", str(tmp_path / "runs"), flag, str(a_file / "sub")]
    assert sweep_script.main(sweep_script.tyro.cli(sweep_script.Args, args=argv)) == 2
    assert f"error: invalid {flag} folder '{a_file / 'sub'}': '{a_file}' is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(("change", "message"), [
    ({"min_alpha": -1.0}, "invalid min_alpha: -1.0"),
    ({"max_alpha": float("inf")}, "invalid max_alpha: inf"),
    ({"interval": 1.5}, "invalid interval: 1.5"),
    ({"steps": -3}, "invalid steps: -3"),
    ({"surprise": 1}, "not a SaturationAlphaScheduler state_dict"),
])
def test_the_saturation_scheduler_refuses_a_state_the_optimizer_would_refuse(change, message):
    from alphagrad import SaturationAlphaScheduler

    scheduler = SaturationAlphaScheduler(AlphaGrad([torch.nn.Parameter(torch.zeros(2))], alpha=2.0))
    before = dict(scheduler.state_dict())
    with pytest.raises(ValueError, match=re.escape(message)):
        scheduler.load_state_dict({**scheduler.state_dict(), **change})
    assert scheduler.state_dict() == before
    with pytest.raises(ValueError, match="invalid max_alpha: inf"):
        SaturationAlphaScheduler(AlphaGrad([torch.nn.Parameter(torch.zeros(2))], alpha=2.0), max_alpha=float("inf"))


@pytest.mark.parametrize(("options", "saved", "message"), [
    ({"foreach": "yes"}, None, "invalid foreach: 'yes'"),
    ({"active_steps": 2.5}, None, "invalid active_steps: 2.5"),
    ({}, {"steps_taken": 1.5}, "invalid agr steps_taken: 1.5"),
    ({}, {"skipped_tensors": -1}, "invalid agr skipped_tensors: -1"),
])
def test_agr_refuses_options_and_states_it_cannot_use(options, saved, message):
    from alphagrad import with_agr

    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=re.escape(message)):
        optimizer = with_agr(torch.optim.SGD([param], lr=0.1), **options)
        state = optimizer.state_dict()
        state["agr"].update(saved or {})
        with_agr(torch.optim.SGD([param], lr=0.1)).load_state_dict(state)


@pytest.mark.slow
def test_every_fast_bad_input_has_its_expected_outcome():
    """scripts/try_bad_inputs.py --fast: ~200 bad inputs that train nothing (the library, every agent's options, sweep
    and tuner configs, the launcher's and the analysis' flags), each with the outcome it must have."""
    completed = subprocess.run([sys.executable, str(ROOT / "scripts" / "try_bad_inputs.py"), "--fast", "--workers", "2"],
                               capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    tally = re.search(r"^(\d+) bad inputs: (\d+) clear error", completed.stdout, re.MULTILINE)
    assert tally and int(tally[1]) >= 150 and "0 case(s) with another outcome than expected" in completed.stdout


def test_a_custom_optimizer_that_fails_while_training_is_one_line_and_its_traceback_recorded(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("import torch\nclass Mine(torch.optim.SGD):\n    def step(self, closure=None):\n"
                    "        raise RuntimeError('my step is broken')\n")
    completed = subprocess.run([sys.executable, "agents/dqn.py", *TINY_DQN, "--results-dir", str(tmp_path), "--run-name",
                                "r", "--optim.name", "custom", "--optim.target", f"{path}:Mine"], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
    summary = read_run(tmp_path / "r")["summary"]
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == (
        "error: RuntimeError: my step is broken (the run stopped and is recorded as crashed; traceback recorded in "
        f"{tmp_path / 'r' / 'summary.json'})")
    assert summary["status"] == "crashed" and f'File "{path}", line 4, in step' in summary["error"]
