"""Sweep configs, expansion, resume, crash isolation, GPU packing and the Ray backend."""

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from alphagrad_rl.agents import sweep_registry
from test_agents import metric_rows

from alphagrad_rl import backends, planning, sweep_config
from alphagrad_rl import runs as runs_module
from alphagrad_rl import sweep as sweep_module
from alphagrad_rl.analysis import export_records
from alphagrad_rl.planning import assign_gpus
from alphagrad_rl.runs import COMPACT_SUFFIX, read_run, read_summary, write_json_atomic
from alphagrad_rl.sensitivity import PAPER_D
from alphagrad_rl.sweep import LaunchOptions, launch
from alphagrad_rl.sweep_config import SweepConfigError, filter_runs, load_sweep, override_flag

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = sweep_registry()
TINY = {"total-timesteps": {"value": 400}, "learning-starts": {"value": 100}, "buffer-size": {"value": 500},
        "batch-size": {"value": 16}, "diagnostics-interval": {"value": 0}}


def run_status(run_dir: Path) -> str | None:
    """The status in a run's summary.json, or None when it has none."""
    return (read_summary(run_dir) or {}).get("status")


def wait_for(condition, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll `condition` until it holds (True) or `timeout_s` has passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


# Launchers started with this environment give their agents Python's fault handler: `dump_agent_stacks` then
# makes an agent that should have stopped write every thread's stack into its output.log
FAULT_HANDLER_ENV = {**os.environ, "PYTHONFAULTHANDLER": "1"}


def dump_agent_stacks(folder: Path) -> None:
    """SIGABRT every process whose command line names `folder`; with PYTHONFAULTHANDLER set, each writes its
    threads' stacks to its stderr (the run's output.log) and exits."""
    pids = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.split()
    for pid in pids:
        os.kill(int(pid), signal.SIGABRT)
    time.sleep(1.0)


def write_checkpoint_manifest(run_dir: Path, manifest: dict) -> None:
    """A checkpoint manifest at step 200 in a run folder (what the launcher reads to plan a resume)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-000000000200.json").write_text(json.dumps(manifest))


def fake_jobs(started: list):
    """A stand-in for backends.execute_job that notes what it would start (a run's name, or a population's names)
    and says each run finished."""

    def execute_job(job, context, locks=()):
        names = [run.name for run in job.runs]
        started.append(names if job.population else names[0])
        return [{"status": "finished"}] * len(names)

    return execute_job


def write_config(tmp_path, **overrides):
    config = {"name": "tiny", "program": "agents/dqn.py", "method": "grid",
              "parameters": {**TINY, "seed": {"values": [1, 2]}},
              "arms": {"adam": {}, "alphagrad-93": {"optim.name": "alphagrad", "optim.alpha": 93}}}
    config.update(overrides)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_every_shipped_config_is_valid_and_expands_to_the_paper_grid():
    expected = {"paper_dqn_cartpole.yaml": 110, "paper_td3_hopper.yaml": 70, "paper_ppo_halfcheetah.yaml": 120,
                "demo_dqn_cartpole.yaml": 6, "sensitivity_dqn_cartpole.yaml": 165,
                "sensitivity_ppo_halfcheetah.yaml": 165, "sensitivity_td3_hopper.yaml": 135,
                "sensitivity_td3_hopper_cpu.yaml": 65}
    for name, runs in expected.items():
        assert len(load_sweep(ROOT / "configs" / name, REGISTRY).runs) == runs
    td3 = load_sweep(ROOT / "configs" / "paper_td3_hopper.yaml", REGISTRY)
    alphas = {dict(run.flags).get("critic-optim.alpha") for run in td3.runs}
    assert alphas == {None, 100, 150, 200, 250, 457}
    jobs = planning.population_jobs(td3.runs, td3.agent, 5)  # TD3 populations: an arm's seeds
    assert len(jobs) == 14 and all(len({run.arm for run in job}) == 1 and len(job) == 5 for job in jobs)
    assert planning.population_argv(jobs[0], td3.agent, Path("out"), ())[1].endswith(
        "agents/td3_continuous_action_population.py")
    pairs = planning.population_jobs(td3.runs, td3.agent, 10)  # alphas pack: one value sets actor and critic
    mixed = next(job for job in pairs if {run.arm for run in job} == {"alphagrad-100", "alphagrad-150"})
    argv = planning.population_argv(mixed, td3.agent, Path("out"), ())
    assert argv[argv.index("--alphas") + 1:argv.index("--alphas") + 11] == ["100.0"] * 5 + ["150.0"] * 5
    assert not any(arg.startswith(("--actor-optim.alpha", "--critic-optim.alpha")) for arg in argv)
    sensitivity = load_sweep(ROOT / "configs" / "sensitivity_td3_hopper.yaml", REGISTRY)
    for run in sensitivity.runs:  # k = alpha / sqrt(d) as the arm says, one value for actor and critics
        flags = dict(run.flags)
        setting, lr = run.arm.rsplit("-lr", 1)
        assert flags["actor-optim.lr"] == flags["critic-optim.lr"] == float(lr), run.name
        if setting.startswith("k"):
            assert flags["actor-optim.alpha"] == flags["critic-optim.alpha"]
            assert flags["critic-optim.alpha"] / PAPER_D["Hopper-v4"] ** 0.5 == pytest.approx(float(setting[1:]),
                                                                                           rel=0.01), run.name
    packed = planning.population_jobs(sensitivity.runs, sensitivity.agent, 10)
    # Adam's three lrs pack by --lrs (15 runs: 10 + 5); AlphaGrad's 40 runs per lr by --alphas (4 x 10 per lr)
    assert sorted(len(job) for job in packed) == [5] + [10] * 13
    # the CPU slice runs the reproduction's AlphaGrad settings at its 200k steps, at (lr, alpha) the reproduction
    # lacks, so that analyzing the two together makes one curve per lr (scripts/analyze.py --include); its lr 1e-4
    # and 3e-4 points each meet a point of another lr at the same lr x alpha within 1%, so that SENSITIVITY.md can
    # test "only the product matters"
    cpu_slice = load_sweep(ROOT / "configs" / "sensitivity_td3_hopper_cpu.yaml", REGISTRY)

    def setting(run):
        return {flag: value for flag, value in run.flags if not flag.endswith((".alpha", ".lr")) and flag != "seed"}

    def lr_alpha(runs):
        return {(dict(run.flags)["critic-optim.lr"], dict(run.flags)["critic-optim.alpha"]) for run in runs}

    momentum = [run for run in td3.runs if re.fullmatch(r"alphagrad-\d+(-lr3e-4)?", run.arm)]
    reproduction = {**setting(momentum[0]), "total-timesteps": 200_000}
    assert all(setting(run) == reproduction for run in cpu_slice.runs)
    assert all(flags[f"actor-optim.{name}"] == flags[f"critic-optim.{name}"]
               for flags in (dict(run.flags) for run in cpu_slice.runs) for name in ("lr", "alpha"))
    assert not lr_alpha(cpu_slice.runs) & lr_alpha(momentum)
    points = lr_alpha(cpu_slice.runs) | lr_alpha(momentum)
    assert {lr for lr, _ in points} == {3e-5, 1e-4, 3e-4}
    for lr, alpha in sorted(point for point in points if point[0] != 3e-5):
        assert any(other_lr != lr and abs(math.log(lr * alpha / (other_lr * other_alpha))) < 0.01
                   for other_lr, other_alpha in points), (lr, alpha)


@pytest.mark.slow
@pytest.mark.parametrize(("config", "prefixes"), [("paper_dqn_cartpole.yaml", ["optim."]),
                                                  ("paper_ppo_halfcheetah.yaml", ["optim."]),
                                                  ("paper_td3_hopper.yaml", ["actor-optim.", "critic-optim."])])
def test_reproduction_arms_run_the_authors_settings(config, prefixes):
    """The arms named like the paper's run the author's code settings: AlphaGrad with momentum 0.9 in SGD form and
    eps 1e-5, next-step autoreset; PPO's AlphaGrad unclipped and every PPO arm but the -bootstrap ones (our
    environment handling, an extra arm) with terminal truncations."""
    sweep = load_sweep(ROOT / "configs" / config, REGISTRY)
    for run in sweep.runs:
        flags = dict(run.flags)
        if re.fullmatch(r"alphagrad-\d+", run.arm):
            for prefix in prefixes:
                assert (flags[prefix + "momentum"], flags[prefix + "momentum-form"], flags[prefix + "eps"]) == (
                    0.9, "sgd", 1e-5), run.name
        if not run.arm.endswith(("same-step", "bootstrap")):
            assert flags["autoreset-mode"] == "next-step", run.name
        if config.startswith("paper_ppo"):
            assert flags["bootstrap-truncation"] is run.arm.endswith("-bootstrap"), run.name
            assert ("max-grad-norm" in flags) == run.arm.startswith("alphagrad"), run.name


def test_grid_expansion_crosses_arms_axes_and_seeds(tmp_path):
    path = write_config(tmp_path, parameters={**TINY, "env-id": {"values": ["CartPole-v1", "Acrobot-v1"]},
                                              "seed": {"values": [1, 2, 3]}})
    sweep = load_sweep(path, REGISTRY)
    assert len(sweep.runs) == 2 * 2 * 3
    names = [run.name for run in sweep.runs]
    assert len(set(names)) == len(names)
    assert "alphagrad-93__env-id=Acrobot-v1__s3" in names
    run = next(r for r in sweep.runs if r.name == "alphagrad-93__env-id=Acrobot-v1__s3")
    argv = run.argv("agents/dqn.py", Path("out"))
    assert argv[argv.index("--optim.alpha") + 1] == "93" and argv[argv.index("--env-id") + 1] == "Acrobot-v1"
    assert argv[argv.index("--seed") + 1] == "3" and argv[argv.index("--run-name") + 1] == run.name
    assert len(filter_runs(sweep.runs, arms=("adam",), seeds=(2,))) == 2
    quick = override_flag(sweep.runs, "total-timesteps", 5000, sweep.agent)
    assert all(dict(r.flags)["total-timesteps"] == 5000 for r in quick)
    for budget, problem in ((50, "invalid learning_starts: 100 \\(allowed: below total_timesteps, 50"),
                            (0, "invalid total_timesteps: 0")):
        with pytest.raises(SweepConfigError, match=f"--total-timesteps {budget}: run adam__env-id=CartPole-v1__s1: "
                           f".*{problem}"):
            override_flag(sweep.runs, "total-timesteps", budget, sweep.agent)


@pytest.mark.slow
def test_wandb_export_gives_one_plain_grid_per_arm_that_the_agent_parses(tmp_path):
    import tyro
    from alphagrad_rl.agents import dqn

    from alphagrad_rl.sweep_config import wandb_sweep_configs

    configs = wandb_sweep_configs(load_sweep(ROOT / "configs" / "paper_dqn_cartpole.yaml", REGISTRY))
    assert set(configs) == {f"paper-dqn-cartpole-{arm}" for arm in
                            ("adam", "alphagrad-93", "alphagrad-186", "alphagrad-279", "adamw-agr",
                             "alphagrad-93-no-momentum", "alphagrad-186-no-momentum", "alphagrad-279-no-momentum",
                             "adam-same-step", "alphagrad-93-lr-div10", "alphagrad-93-no-momentum-lr-x10")}
    config = configs["paper-dqn-cartpole-alphagrad-186"]
    assert set(config) <= {"name", "description", "program", "method", "metric", "parameters", "command"}
    assert config["method"] == "grid" and config["parameters"]["seed"] == {"values": list(range(1, 11))}
    assert config["parameters"]["optim.alpha"] == {"value": 186}
    assert "--track" in config["command"] and "paper-dqn-cartpole" in config["command"]
    # a W&B agent passes --flag=value; the agent's tyro parser must accept every one of them
    argv = [f"--{flag}={spec.get('value', (spec.get('values') or [None])[0])}" for flag, spec in config["parameters"].items()]
    args = tyro.cli(dqn.Args, args=argv)
    assert args.optim.name == "alphagrad" and args.optim.alpha == 186.0 and args.total_timesteps == 500000


def test_a_custom_optimizers_options_are_set_key_by_key_in_grids_arms_and_wandb_exports(tmp_path):
    import tyro
    from alphagrad_rl.agents import dqn

    from alphagrad_rl.sweep_config import wandb_sweep_configs

    arms = {"rmsprop": {"optim.name": "custom", "optim.target": "torch.optim:RMSprop", "optim.options.alpha": 0.95},
            "rmsprop-centered": {"optim.name": "custom", "optim.target": "torch.optim:RMSprop",
                                 "optim.options": '{"centered": true}'}}
    parameters = {**TINY, "optim.options.momentum": {"values": [0.0, 0.5]}}
    sweep = load_sweep(write_config(tmp_path, arms=arms, parameters=parameters), REGISTRY)
    options = {run.name: json.loads(run.flag_args()[run.flag_args().index("--optim.options") + 1]) for run in sweep.runs}
    assert options == {"rmsprop__optim.options.momentum=0.0__s1": {"momentum": 0.0, "alpha": 0.95},
                       "rmsprop__optim.options.momentum=0.5__s1": {"momentum": 0.5, "alpha": 0.95},
                       "rmsprop-centered__optim.options.momentum=0.0__s1": {"momentum": 0.0, "centered": True},
                       "rmsprop-centered__optim.options.momentum=0.5__s1": {"momentum": 0.5, "centered": True}}
    with pytest.raises(SweepConfigError, match="cannot vary one key of a custom optimizer's options"):
        wandb_sweep_configs(sweep)
    fixed = {**TINY, "optim.options.momentum": {"value": 0.5}}
    config = wandb_sweep_configs(load_sweep(write_config(tmp_path, arms=arms, parameters=fixed), REGISTRY))["tiny-rmsprop"]
    argv = [f"--{flag}={spec.get('value', (spec.get('values') or [None])[0])}" for flag, spec in config["parameters"].items()]
    assert json.loads(tyro.cli(dqn.Args, args=argv).optim.options) == {"momentum": 0.5, "alpha": 0.95}
    for flag, message in (("optim.opts.alpha", "'optim.opts.alpha' is not a flag"),
                          ("optim.options.2x", "'optim.options.2x' is not a flag"),
                          ("optim.options.alpha", "SGD refused its arguments .*unexpected keyword argument 'alpha'")):
        bad = {"custom": {"optim.name": "custom", "optim.target": "torch.optim:SGD", flag: 1}}
        with pytest.raises(SweepConfigError, match=message):
            load_sweep(write_config(tmp_path, arms=bad), REGISTRY)


def test_boolean_flags_use_tyro_negation(tmp_path):
    sweep = load_sweep(write_config(tmp_path, arms={"agr-off": {"optim.agr": False, "save-model": True}}), REGISTRY)
    argv = sweep.runs[0].argv("agents/dqn.py", Path("out"))
    assert "--optim.no-agr" in argv and "--save-model" in argv


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(metod="grid"), "key 'metod': unknown key"),
        (dict(method="bayes"), "key 'method': 'bayes' is not supported"),
        (dict(program="agents/sac.py"), "key 'program': 'agents/sac.py'"),
        (dict(arms={}), "key 'arms'"),
        (dict(parameters={"seeds": {"values": [1]}}), "key 'parameters.seeds': 'seeds' is not a flag"),
        (dict(parameters={"seed": {"values": []}}), "key 'parameters.seed.values': must be a non-empty list"),
        (dict(parameters={"seed": [1, 2]}), "key 'parameters.seed': must be"),
        (dict(parameters={"run-name": {"value": "x"}}), "set by the launcher"),
        (dict(arms={"a": {"optim.alpah": 3}}), "key 'arms.a.optim.alpah': 'optim.alpah' is not a flag"),
        (dict(arms={"a": {"seed": 3}}), "key 'arms.a.seed': is also set under parameters"),
        (dict(arms={"bad/name": {}}), "arm names use"),
    ],
)
def test_config_validation_names_file_key_and_allowed(tmp_path, overrides, message):
    path = write_config(tmp_path, **overrides)
    with pytest.raises(SweepConfigError) as error:
        load_sweep(path, REGISTRY)
    assert str(path) in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("values", [[1, 1], [5000, "5000"]])
def test_a_grid_value_given_twice_is_refused(tmp_path, values):
    path = write_config(tmp_path, parameters={**TINY, "seed": {"values": [1]}, "buffer-size": {"values": values}})
    with pytest.raises(SweepConfigError, match="parameters.buffer-size.values': lists a value more than once"):
        load_sweep(path, REGISTRY)


def test_a_key_given_twice_in_the_yaml_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nprogram: agents/dqn.py\nparameters: {}\narms:\n  adam: {}\n"
                    "  adam: {optim.name: adamw}\n")
    with pytest.raises(SweepConfigError, match="found duplicate key 'adam'"):
        load_sweep(path, REGISTRY)


@pytest.mark.parametrize(("arms", "parameters", "message"), [
    ({"a": {"optim.name": "alphagrad", "optim.alpha": -1}}, {}, "run a__s1'.*--optim.alpha -1 .*: --optim: invalid alpha"),
    ({"a": {"optim.lr": "fast"}}, {}, r"run a__s1'.*: --optim.lr fast: refused by the agent's parser \(the flag takes "
                                      r"FLOAT\)"),
    ({"a": {"optim.momentum-form": "nesterov"}}, {},
     r"--optim.momentum-form nesterov: refused by the agent's parser \(the flag takes one of \{paper,sgd\}\)"),
    ({"a": {}}, {"seed": {"values": [1.7]}}, "seed 1.7 is not an integer"),
    ({"a": {}}, {"seed": {"values": [None]}}, "seed None is not an integer"),
    ({"a": {"optim.alpha": 98}}, {}, "'adam' does not use alpha=98.0"),
    ({"a": {}}, {"env-id": {"value": "CartPole-v9"}}, "unknown environment id 'CartPole-v9'"),
])
def test_every_run_is_checked_by_the_agent_before_anything_starts(tmp_path, arms, parameters, message):
    path = write_config(tmp_path, arms=arms, parameters={**TINY, "seed": {"values": [1]}, **parameters})
    with pytest.raises(SweepConfigError, match=message):
        load_sweep(path, REGISTRY)


def test_grid_values_become_safe_run_names(tmp_path):
    path = write_config(tmp_path, arms={"sgd": {"optim.name": "custom"}},
                        parameters={**TINY, "seed": {"values": [1]},
                                    "optim.target": {"values": ["torch.optim:SGD", "torch.optim:ASGD"]}})
    assert [run.name for run in load_sweep(path, REGISTRY).runs] == ["sgd__optim.target=torch.optim-SGD__s1",
                                                                      "sgd__optim.target=torch.optim-ASGD__s1"]


@pytest.mark.parametrize("parameters", [
    {"optim.lr": {"values": ["1e-3", 0.001]}},  # YAML reads 1e-3 as text: two spellings of one value
    {"exp-name": {"values": ["a", "b"]}},  # a label: the runs train the same options
])
def test_runs_that_train_the_same_options_are_refused(tmp_path, parameters):
    path = write_config(tmp_path, arms={"adam": {}}, parameters={**TINY, "seed": {"values": [1]}, **parameters})
    with pytest.raises(SweepConfigError, match="train the same options as the agent reads them"):
        load_sweep(path, REGISTRY)


def test_population_packing_groups_runs_that_differ_in_seed_and_alphagrad_values(tmp_path):
    arms = {"adam": {}, "adam-lr": {"optim.lr": 0.001}, "alphagrad-93": {"optim.name": "alphagrad", "optim.alpha": 93},
            "alphagrad-186": {"optim.name": "alphagrad", "optim.alpha": 186}}
    sweep = load_sweep(write_config(tmp_path, arms=arms, parameters={**TINY, "seed": {"values": [1, 2, 3]}}), REGISTRY)
    jobs = planning.population_jobs(sweep.runs, sweep.agent, 4)
    # config order (write_config's YAML lists the arms alphabetically); Adam's lr is per member too
    assert [[run.name for run in job] for job in jobs] == [
        ["adam__s1", "adam__s2", "adam__s3", "adam-lr__s1"], ["adam-lr__s2", "adam-lr__s3"],
        ["alphagrad-186__s1", "alphagrad-186__s2", "alphagrad-186__s3", "alphagrad-93__s1"],
        ["alphagrad-93__s2", "alphagrad-93__s3"]]
    adam = planning.population_argv(jobs[0], sweep.agent, Path("out"), ())
    # the adam arm leaves the lr at the agent's default, 2.5e-4: it is spelled out for its members
    assert adam[adam.index("--lrs") + 1:adam.index("--lrs") + 5] == ["0.00025"] * 3 + ["0.001"]
    assert "--alphas" not in adam and "--optim.lr" not in adam
    argv = planning.population_argv(jobs[2], sweep.agent, Path("out"), ())
    assert argv[1].endswith("agents/dqn_population.py")
    assert argv[argv.index("--seeds") + 1:argv.index("--seeds") + 5] == ["1", "2", "3", "1"]
    assert argv[argv.index("--alphas") + 1:argv.index("--alphas") + 5] == ["186.0", "186.0", "186.0", "93.0"]
    assert "--optim.alpha" not in argv and argv[argv.index("--run-names") + 4] == "alphagrad-93__s1"


@pytest.mark.parametrize("population_size", [0, 2])
def test_seed_order_starts_every_arms_first_seed_first_and_keeps_populations(tmp_path, monkeypatch, population_size):
    arms = {"adam": {}, "alphagrad-93": {"optim.name": "alphagrad", "optim.alpha": 93}}
    sweep = load_sweep(write_config(tmp_path, arms=arms, parameters={**TINY, "seed": {"values": [1, 2, 3]}}), REGISTRY)
    started = []

    monkeypatch.setattr(backends, "execute_job", fake_jobs(started))
    for order in ("config", "seed"):
        started.clear()
        launch(sweep, sweep.runs, LaunchOptions(results_dir=tmp_path / "runs", workers=1, use_gpus=False,
                                                population_size=population_size, order=order), report=quiet)
        if population_size:  # the same populations either way (an interrupted one resumes), lowest seed first
            assert started == ([["adam__s1", "adam__s2"], ["adam__s3"], ["alphagrad-93__s1", "alphagrad-93__s2"],
                                ["alphagrad-93__s3"]] if order == "config" else
                               [["adam__s1", "adam__s2"], ["alphagrad-93__s1", "alphagrad-93__s2"], ["adam__s3"],
                                ["alphagrad-93__s3"]])
        else:
            assert started == ([f"{arm}__s{seed}" for arm in arms for seed in (1, 2, 3)] if order == "config" else
                               [f"{arm}__s{seed}" for seed in (1, 2, 3) for arm in arms])
    with pytest.raises(ValueError, match="unknown run order 'random' \\(allowed: config, seed\\)"):
        planning.start_order([], "random")


def test_interrupted_attempts_resume_as_they_ran_whatever_the_packing_asked_now(tmp_path, monkeypatch):
    """A population checkpoint's members run as that population again, and a run with its own checkpoint alone,
    with or without --population-size and at any size (packing them anew would empty their folders, checkpoints
    and all); a population whose other members this launch did not select is held back, its checkpoint kept."""
    arms = {"adam": {}, "alphagrad-93": {"optim.name": "alphagrad", "optim.alpha": 93}}
    sweep = load_sweep(write_config(tmp_path, arms=arms, parameters={**TINY, "seed": {"values": [1, 2, 3, 4, 5]}}),
                       REGISTRY)
    sweep_dir = tmp_path / "runs" / "tiny"

    def checkpoint(run, manifest):
        write_checkpoint_manifest(sweep_dir / run, manifest)

    members = ["alphagrad-93__s4", "alphagrad-93__s2", "alphagrad-93__s5"]  # packed by another launch, its order
    checkpoint(members[0], {"config": {f"member{i}": {"run_name": name} for i, name in enumerate(members)}})
    checkpoint("adam__s2", {"config": {"seed": 2}})  # a single-file run's
    checkpoint("adam__s4", {"config": {"member0": {"run_name": "adam__s4"}, "member1": {"run_name": "adam__s9"}}})
    started, said = [], []
    monkeypatch.setattr(backends, "execute_job", fake_jobs(started))
    for size in (0, 2):
        started.clear(), said.clear()
        launch(sweep, sweep.runs, LaunchOptions(results_dir=tmp_path / "runs", workers=1, use_gpus=False,
                                                population_size=size), report=said.append)
        fresh = ([["adam__s1", "adam__s3"], ["adam__s4", "adam__s5"], ["alphagrad-93__s1", "alphagrad-93__s3"]] if size
                 else ["adam__s1", "adam__s3", "adam__s4", "adam__s5", "alphagrad-93__s1", "alphagrad-93__s3"])
        # adam__s4's population had a member this sweep no longer has: it cannot resume, so it starts afresh
        assert started == ["adam__s2", members, *fresh]  # the resumed first, in config order
        assert said[1] == "resuming from their checkpoints: 1 population(s) of 3 runs, 1 single run(s)"
    said.clear()
    launch(sweep, sweep.runs[:1] + sweep.runs[5:], LaunchOptions(results_dir=tmp_path / "runs", workers=1,
                                                                 use_gpus=False), report=said.append)
    assert "resuming from their checkpoints: 1 population(s) of 3 runs" in said
    plan = planning.plan_jobs(sweep, sweep.runs, sweep_dir, 2, "config", quiet)
    assert planning.describe_plan(plan) == (
        "population of 3: alphagrad-93__s4 ... alphagrad-93__s5\npopulation of 2: adam__s1 ... adam__s3\n"
        "population of 2: adam__s4 ... adam__s5\npopulation of 2: alphagrad-93__s1 ... alphagrad-93__s3\n"
        "1 single run(s)\n5 process(es) to start")
    started.clear()
    selected = filter_runs(sweep.runs, ["alphagrad-93"], [1, 2, 4])
    launch(sweep, selected, LaunchOptions(results_dir=tmp_path / "runs", workers=1, use_gpus=False,
                                          population_size=2), report=said.append)
    assert started == [["alphagrad-93__s1"]]  # s2 and s4 wait for s5: started together they would lose it
    assert "alphagrad-93__s4, alphagrad-93__s2: not started; an interrupted population holds them with " \
           "alphagrad-93__s5, not selected: select them too to resume it from its checkpoint" in said


def test_a_single_run_resumes_from_its_own_checkpoint_never_from_a_populations(tmp_path):
    """A population checkpoint reaches a single run only when its population cannot resume (its other members
    finished, or left the config): the run starts afresh instead of crashing on it at every launch."""
    def checkpoint(run_dir, manifest):
        write_checkpoint_manifest(run_dir, manifest)
        (run_dir / "metrics.jsonl").write_text("{}\n")

    own, member, other = tmp_path / "a__s1", tmp_path / "b__s1", tmp_path / "b__s2"
    checkpoint(own, {"config": {"seed": 1}})
    checkpoint(member, {"config": {"member0": {"run_name": "b__s1"}, "member1": {"run_name": "b__s2"}}})
    assert backends.prepare_run_folders([own], population=False) and (own / "metrics.jsonl").exists()
    assert backends.prepare_run_folders([member, other], population=True) and (member / "metrics.jsonl").exists()
    assert not backends.prepare_run_folders([member], population=False)
    assert member.is_dir() and not any(member.iterdir())  # emptied for the fresh start


def test_a_run_lock_lasts_until_the_run_process_exits_even_after_the_launcher_lets_go(tmp_path):
    fds = runs_module.lock_runs(tmp_path, ["a__s1", "a__s2"])
    assert runs_module.lock_runs(tmp_path, ["a__s2"], wait_s=0) is None  # held
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"], pass_fds=tuple(fds))
    runs_module.release_runs(fds)  # as a killed launcher would: its run process still holds the locks
    assert runs_module.lock_runs(tmp_path, ["a__s1"], wait_s=0) is None
    child.wait()
    fds = runs_module.lock_runs(tmp_path, ["a__s1", "a__s2"], wait_s=0)
    assert fds is not None
    runs_module.release_runs(fds)


def test_progress_tells_each_runs_state_and_the_compute_left(tmp_path):
    """The dry run's view of a sweep in progress: finished, training now (locked), stopped with or without a
    checkpoint, a population member (resumes from member 0's checkpoint), crashed, not started; the estimate
    comes from the finished runs' process-seconds per step."""
    sweep = load_sweep(write_config(tmp_path, parameters={**TINY, "seed": {"values": [1, 2, 3, 4, 5, 6, 7]}},
                                    arms={"adam": {}}), REGISTRY)
    sweep_dir = tmp_path / "runs" / "tiny"

    def record(name, **summary):
        (sweep_dir / name).mkdir(parents=True)
        write_json_atomic(sweep_dir / name / "summary.json", summary)

    record("adam__s1", status="finished", wall_clock_s=40.0, population_size=1)  # 0.1 s a step (budget 400)
    record("adam__s2", status="running", global_step=100)  # training now, checkpoint at 300 (s2 and s5's population)
    (sweep_dir / "adam__s2" / "checkpoints").mkdir()
    (sweep_dir / "adam__s2" / "checkpoints" / "step-000000000300.json").write_text(json.dumps(
        {"config": {"member0": {"run_name": "adam__s2"}, "member1": {"run_name": "adam__s5"}}}))
    (sweep_dir / "adam__s2" / "metrics.jsonl").write_text('{"step": 320, "time": 3.2}\n{"step": 340, "time": 3.4}\n'
                                                        '{"step": 3')  # now at 340 (a line being written)
    record("adam__s3", status="interrupted", global_step=200)  # stopped, checkpoint at 200
    (sweep_dir / "adam__s3" / "checkpoints").mkdir()
    (sweep_dir / "adam__s3" / "checkpoints" / "step-000000000200.json").write_text("{}")
    record("adam__s4", status="running", global_step=50)  # killed before its first checkpoint
    record("adam__s5", status="interrupted", global_step=100, population_size=2)  # member 0 (s2) has the checkpoint
    record("adam__s6", status="crashed", global_step=10)
    fds = runs_module.lock_runs(sweep_dir, ["adam__s2"])
    try:
        progress = planning.sweep_progress(sweep_dir, sweep.runs, sweep.agent)
    finally:
        runs_module.release_runs(fds)
    assert [p.describe() for p in progress] == [
        "finished", "training now, at step 340/400 (85%); its last checkpoint is at step 300",
        "stopped: resumes at step 200/400 (50%)",
        "stopped before a checkpoint: starts over", "stopped: resumes at step 300/400 (75%)",
        "crashed: the next launch retries it (see its output.log)", "not started"]
    assert [p.steps_left for p in progress] == [0, 100, 200, 400, 100, 400, 400]
    assert planning.sweep_progress(sweep_dir, sweep.runs[1:2], sweep.agent)[0].state == "stopped"  # unlocked
    summary = planning.progress_summary(progress, workers=2)
    assert summary.startswith("7 runs: 1 finished, 1 training, 3 stopped, 1 crashed, 1 not started\n")
    assert "the 1,600 env steps left need about 0.0 process-hours, 0.0 h on 2 worker(s)" in summary


def test_two_launchers_on_one_results_folder_train_each_run_once(tmp_path, monkeypatch):
    sweep = load_sweep(write_config(tmp_path, parameters={**TINY, "seed": {"values": [1, 2, 3]}}), REGISTRY)
    lock, executions = threading.Lock(), []

    def fake_run(job, context, locks=()):
        name, run_dir = job.runs[0].name, context.sweep_dir / job.runs[0].name
        assert runs_module.lock_runs(context.sweep_dir, [name], wait_s=0) is None  # locked while it trains
        with lock:
            executions.append(name)
        time.sleep(0.1)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "summary.json", {"status": "finished", "final_return": 1.0})
        return [{"status": "finished", "final_return": 1.0}]

    monkeypatch.setattr(backends, "execute_job", fake_run)
    options = LaunchOptions(results_dir=tmp_path / "runs", workers=2, use_gpus=False)
    both = [threading.Thread(target=launch, args=(sweep, sweep.runs, options), kwargs={"report": quiet})
            for _ in range(2)]
    for launcher in both:
        launcher.start()
    for launcher in both:
        launcher.join()
    assert sorted(executions) == sorted(run.name for run in sweep.runs)  # each of the 9 runs once


def test_a_launcher_waits_for_the_runs_another_is_training_and_takes_over_those_it_leaves(tmp_path, monkeypatch):
    """--wait-for-others: runs locked by another launcher are waited for at the end; one it finished counts as
    finished here, one it left stopped is resumed here; without the option both are skipped."""
    sweep = load_sweep(write_config(tmp_path, parameters={**TINY, "seed": {"values": [1]}}), REGISTRY)
    sweep_dir = tmp_path / "runs" / "tiny"
    executions = []

    def fake_run(job, context, locks=()):
        executions.append(job.runs[0].name)
        write_json_atomic(context.sweep_dir / job.runs[0].name / "summary.json", {"status": "finished", "final_return": 2.0})
        return [{"status": "finished", "final_return": 2.0}]

    monkeypatch.setattr(backends, "execute_job", fake_run)
    monkeypatch.setattr(sweep_module, "LOCK_WAIT_S", 0.2)
    for run in sweep.runs:
        (sweep_dir / run.name).mkdir(parents=True)
    other = runs_module.lock_runs(sweep_dir, ["adam__s1", "alphagrad-93__s1"])  # the other launcher's runs

    def other_launcher_ends():  # it finishes adam__s1 and is stopped during alphagrad-93__s1
        time.sleep(1.0)
        write_json_atomic(sweep_dir / "adam__s1" / "summary.json", {"status": "finished", "final_return": 1.0})
        write_json_atomic(sweep_dir / "alphagrad-93__s1" / "summary.json", {"status": "interrupted"})
        runs_module.release_runs(other)

    options = LaunchOptions(results_dir=tmp_path / "runs", workers=2, use_gpus=False)
    assert all(not summary for summary in launch(sweep, sweep.runs, options, report=quiet).values())  # skipped
    threading.Thread(target=other_launcher_ends).start()
    messages = []
    results = launch(sweep, sweep.runs, dataclasses.replace(options, wait_for_others=True), report=messages.append)
    assert executions == ["alphagrad-93__s1"]  # adam__s1 was finished by the other launcher, not trained again
    assert results["adam__s1"]["final_return"] == 1.0 and results["alphagrad-93__s1"]["final_return"] == 2.0
    assert "waiting for 2 run(s) that another launcher is training" in messages


@pytest.mark.slow
def test_a_sweep_runs_as_populations_with_one_standard_record_per_run(tmp_path):
    path = write_config(tmp_path, parameters={**TINY, "seed": {"values": [1, 2]}})
    sweep = load_sweep(path, REGISTRY)
    options = LaunchOptions(results_dir=tmp_path / "runs", workers=2, use_gpus=False, population_size=2)
    results = launch(sweep, sweep.runs, options, report=quiet)
    assert {name: summary["status"] for name, summary in results.items()} == {
        "adam__s1": "finished", "adam__s2": "finished", "alphagrad-93__s1": "finished", "alphagrad-93__s2": "finished"}
    record = read_run(tmp_path / "runs" / "tiny" / "alphagrad-93__s2")
    assert record["config"]["config"]["seed"] == 2 and record["config"]["config"]["optim"]["alpha"] == 93.0
    assert "its output:" in (tmp_path / "runs" / "tiny" / "alphagrad-93__s2" / "output.log").read_text()
    again = launch(sweep, sweep.runs, options, report=quiet)  # everything finished: nothing runs again
    assert again == results


@pytest.mark.slow
def test_a_custom_optimizer_arm_trains_one_run_per_process_beside_populations(tmp_path):
    """A custom optimizer may not treat stacked members apart, so its runs never join a population; its options
    are written in the YAML as a mapping and reach the agent as JSON."""
    example = f"{ROOT / 'examples' / 'softsign_alphagrad.py'}:SoftsignAlphaGrad"
    arms = {"adam": {}, "softsign": {"optim.name": "custom", "optim.target": example, "optim.lr": 0.001,
                                     "optim.options": {"momentum": 0.9}, "optim.options.alpha": 30.0}}
    sweep = load_sweep(write_config(tmp_path, arms=arms), REGISTRY)
    flags = sweep.runs[-1].flag_args()  # one key set on its own joins the others: one JSON flag
    assert json.loads(flags[flags.index("--optim.options") + 1]) == {"momentum": 0.9, "alpha": 30.0}
    plan = planning.plan_jobs(sweep, sweep.runs, tmp_path / "runs" / "tiny", 2, "config",
                                  quiet)
    assert [([run.name for run in job.runs], job.population) for job in plan] == [
        (["adam__s1", "adam__s2"], True), (["softsign__s1"], False), (["softsign__s2"], False)]
    results = launch(sweep, sweep.runs, LaunchOptions(results_dir=tmp_path / "runs", workers=2, use_gpus=False,
                                                      population_size=2), report=quiet)
    assert {summary["status"] for summary in results.values()} == {"finished"}
    optim = read_run(tmp_path / "runs" / "tiny" / "softsign__s2")["config"]["config"]["optim"]
    assert (optim["target"], json.loads(optim["options"])) == (example, {"alpha": 30.0, "momentum": 0.9})
    assert [results[name]["population_size"] for name in ("adam__s1", "softsign__s1")] == [2, 1]


@pytest.mark.slow
def test_a_ppo_sweep_packs_into_a_population_that_writes_standard_records(tmp_path):
    parameters = {"env-id": {"value": "HalfCheetah-v5"}, "total-timesteps": {"value": 128},
                  "num-steps": {"value": 64}, "num-minibatches": {"value": 2}, "update-epochs": {"value": 1},
                  "seed": {"values": [1, 2]}}
    arms = {"alphagrad-98": {"optim.name": "alphagrad", "optim.alpha": 98},
            "alphagrad-294": {"optim.name": "alphagrad", "optim.alpha": 294}}
    sweep = load_sweep(write_config(tmp_path, program="agents/ppo_continuous_action.py", parameters=parameters,
                                    arms=arms), REGISTRY)
    jobs = planning.population_jobs(sweep.runs, sweep.agent, 4)
    assert len(jobs) == 1 and planning.population_argv(jobs[0], sweep.agent, Path("out"), ())[1].endswith(
        "agents/ppo_continuous_action_population.py")
    options = LaunchOptions(results_dir=tmp_path / "runs", workers=1, use_gpus=False, population_size=4)
    results = launch(sweep, sweep.runs, options, report=quiet)
    assert sorted(summary["status"] for summary in results.values()) == ["finished"] * 4
    record = read_run(tmp_path / "runs" / "tiny" / "alphagrad-98__s2")
    assert record["config"]["config"]["seed"] == 2 and record["config"]["config"]["optim"]["alpha"] == 98.0


def test_missing_key_and_bad_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nprogram: agents/dqn.py\nparameters: {}\n")
    with pytest.raises(SweepConfigError, match="key 'arms': missing"):
        load_sweep(path, REGISTRY)
    path.write_text("name: [unclosed\n")
    with pytest.raises(SweepConfigError, match="not valid YAML"):
        load_sweep(path, REGISTRY)


def quiet(_message):
    pass


@pytest.mark.slow
def test_sweep_runs_resumes_and_isolates_a_crash(tmp_path):
    # a valid config whose second arm diverges: lr 1e30 overflows the Q-values, the TD loss turns NaN
    path = write_config(tmp_path, arms={"adam": {}, "broken": {"optim.name": "alphagrad", "optim.alpha": 93,
                                                                "optim.lr": 1e30}},
                        parameters={**TINY, "seed": {"values": [1]}})
    sweep = load_sweep(path, REGISTRY)
    options = LaunchOptions(results_dir=tmp_path / "runs", workers=2, use_gpus=False)
    results = launch(sweep, sweep.runs, options, report=quiet)
    assert results["adam__s1"]["status"] == "finished"
    crashed = results["broken__s1"]
    assert crashed["status"] == "crashed" and re.fullmatch(r"non-finite TD loss \(nan\) at step \d+", crashed["error"])
    assert "error: non-finite TD loss" in (tmp_path / "runs" / "tiny" / "broken__s1" / "output.log").read_text()

    # running it again skips the finished run (its files untouched) and retries only the crashed one
    finished_summary = tmp_path / "runs" / "tiny" / "adam__s1" / "summary.json"
    before = finished_summary.stat().st_mtime_ns
    again = launch(sweep, sweep.runs, options, report=quiet)
    assert finished_summary.stat().st_mtime_ns == before and again["adam__s1"]["status"] == "finished"
    assert again["broken__s1"]["status"] == "crashed"


@pytest.mark.slow
def test_each_runs_compact_record_is_written_as_it_ends(tmp_path):
    """--records: a run's compact record (analyze.py's) appears when the run ends, not when the sweep does, so a
    long sweep's finished runs can be committed while it goes on; those missing are written on the next launch."""
    sweep = load_sweep(write_config(tmp_path, parameters={**TINY, "seed": {"values": [1]}}), REGISTRY)
    records, first = tmp_path / "records", sweep.runs[0].name
    present_when_the_second_ended = []

    def report(message):
        if message.startswith("[2/2]"):
            present_when_the_second_ended.extend(path.name for path in records.glob("*"))

    options = LaunchOptions(results_dir=tmp_path / "runs", workers=1, use_gpus=False, records_dir=records)
    launch(sweep, sweep.runs, options, report=report)
    assert present_when_the_second_ended == [f"{first}{COMPACT_SUFFIX}"]
    exported = export_records(tmp_path / "runs" / "tiny", tmp_path / "analyzed")  # what analyze.py writes
    assert sorted(path.name for path in records.iterdir()) == sorted(path.name for path in exported)
    assert all((records / path.name).read_bytes() == path.read_bytes() for path in exported)

    for path in records.iterdir():
        path.unlink()
    summary = tmp_path / "runs" / "tiny" / first / "summary.json"
    before = summary.stat().st_mtime_ns
    launch(sweep, sweep.runs, options, report=quiet)  # nothing left to run: only the missing records are written
    assert all((records / path.name).read_bytes() == path.read_bytes() for path in exported)
    assert summary.stat().st_mtime_ns == before


@pytest.mark.slow
def test_runs_whose_finished_records_are_committed_are_not_trained_again_on_a_fresh_machine(tmp_path):
    """A fresh clone has the committed records but no run folders: the relaunch trains only the runs without a
    finished record, and a record of other options is refused, not overwritten."""
    sweep = load_sweep(write_config(tmp_path, parameters={**TINY, "seed": {"values": [1]}}), REGISTRY)
    records = tmp_path / "records"
    options = LaunchOptions(results_dir=tmp_path / "runs", workers=1, use_gpus=False, records_dir=records)
    launch(sweep, sweep.runs, options, report=quiet)
    kept, retried = sweep.runs
    (tmp_path / "runs").rename(tmp_path / "first-machine")  # the machine is gone, the records are committed
    record = {path.name: path.read_bytes() for path in records.iterdir()}
    crashed = tmp_path / "first-machine" / "tiny" / retried.name / "summary.json"
    crashed.write_text(json.dumps({**json.loads(crashed.read_text()), "status": "crashed"}))
    export_records(tmp_path / "first-machine" / "tiny", records, only={retried.name})  # a crashed run is retried

    progress = planning.sweep_progress(tmp_path / "runs" / "tiny", sweep.runs, sweep.agent,
                                           planning.recorded_runs(records, sweep.runs, sweep.agent))
    assert [p.state for p in progress] == ["finished", "not started"] and progress[0].process_s > 0
    messages = []
    results = launch(sweep, sweep.runs, options, report=messages.append)
    assert any("1 run(s) counted as finished from their records" in message for message in messages)
    assert not (tmp_path / "runs" / "tiny" / kept.name).exists()  # not trained again
    assert results[kept.name] == read_run(records / f"{kept.name}{COMPACT_SUFFIX}")["summary"]
    assert results[retried.name]["status"] == "finished" and run_status(tmp_path / "runs" / "tiny" / retried.name)
    assert (records / f"{kept.name}{COMPACT_SUFFIX}").read_bytes() == record[f"{kept.name}{COMPACT_SUFFIX}"]

    shutil.rmtree(tmp_path / "runs")
    longer = override_flag(sweep.runs, "total-timesteps", 800, sweep.agent)
    with pytest.raises(ValueError, match=rf"{kept.name}{re.escape(COMPACT_SUFFIX)}: total_timesteps: 400 \(record\) "
                                         r"!= 800 \(now\)"):
        launch(sweep, longer, options, report=quiet)
    assert (records / f"{kept.name}{COMPACT_SUFFIX}").read_bytes() == record[f"{kept.name}{COMPACT_SUFFIX}"]
    (records / f"{kept.name}{COMPACT_SUFFIX}").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=rf"{kept.name}{re.escape(COMPACT_SUFFIX)}: unreadable \(BadGzipFile"):
        planning.recorded_runs(records, sweep.runs, sweep.agent)
    assert not (tmp_path / "runs" / "tiny").exists() or not any((tmp_path / "runs" / "tiny").iterdir())


@pytest.mark.slow
def test_sweep_killed_with_sigkill_loses_and_duplicates_nothing(tmp_path):
    # 30,000 steps take ~3 s here: 3,000 (0.3 s) could end before the kill below (a CI failure, stop 34)
    path = write_config(tmp_path, parameters={**TINY, "total-timesteps": {"value": 30000}, "seed": {"values": [1]}})
    command = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(path), "--results-dir", str(tmp_path / "runs"),
               "--workers", "1", "--no-gpus"]
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=FAULT_HANDLER_ENV)
    sweep_dir = tmp_path / "runs" / "tiny"
    assert wait_for(lambda: run_status(sweep_dir / "adam__s1") == "finished", 120, poll_s=0.2)
    # the second run's record is open (its summary says "running", written just before it starts training and
    # handles SIGTERM): earlier, a kill would find it still starting, with nothing to save
    assert wait_for(lambda: run_status(sweep_dir / "alphagrad-93__s1") == "running", 120)
    time.sleep(0.3)
    os.kill(launcher.pid, signal.SIGKILL)  # mid-way through the second run
    launcher.wait()
    if not wait_for(lambda: run_status(sweep_dir / "alphagrad-93__s1") != "running", 60, poll_s=0.1):
        dump_agent_stacks(sweep_dir)
    # its process got SIGTERM when the launcher died: it saved a checkpoint and stopped
    assert run_status(sweep_dir / "alphagrad-93__s1") == "interrupted", \
        (sweep_dir / "alphagrad-93__s1" / "output.log").read_text()[-6000:]
    assert list((sweep_dir / "alphagrad-93__s1" / "checkpoints").glob("step-*.pt"))
    listing = subprocess.run(command + ["--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    assert re.search(r"alphagrad-93__s1 +stopped: resumes at step [\d,]+/30,000", listing), listing
    assert listing.endswith("resuming from their checkpoints: 1 single run(s)\n1 single run(s)\n"
                            "1 process(es) to start\n"), listing  # the launch it would make

    finished_mtime = (sweep_dir / "adam__s1" / "summary.json").stat().st_mtime_ns
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "1 already finished, 1 to run" in completed.stdout
    assert (sweep_dir / "adam__s1" / "summary.json").stat().st_mtime_ns == finished_mtime
    record = read_run(sweep_dir / "alphagrad-93__s1")
    assert record["summary"]["status"] == "finished"
    assert record["summary"]["resumes"][0]["discarded_steps"] == 0  # resumed from the checkpoint written on SIGTERM
    assert "resumed by the sweep launcher" in (sweep_dir / "alphagrad-93__s1" / "output.log").read_text()
    steps = [row["step"] for row in record["metrics"] if "charts/episodic_return" in row]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one complete record, no duplicates


@pytest.mark.slow
def test_a_killed_population_resumes_from_its_checkpoint_when_the_sweep_runs_again(tmp_path):
    path = write_config(tmp_path, parameters={**TINY, "total-timesteps": {"value": 30000}, "seed": {"values": [1, 2]}},
                        arms={"alphagrad-93": {"optim.name": "alphagrad", "optim.alpha": 93}})
    command = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(path), "--results-dir", str(tmp_path / "runs"),
               "--workers", "1", "--no-gpus", "--population-size", "2"]
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=FAULT_HANDLER_ENV)
    sweep_dir = tmp_path / "runs" / "tiny"
    first, second = sweep_dir / "alphagrad-93__s1", sweep_dir / "alphagrad-93__s2"
    # both members' records are open (each summary says "running"), then the population trains for a second:
    # earlier, a kill could find it still starting, before it handles SIGTERM
    started = wait_for(lambda: (run_status(first), run_status(second)) == ("running", "running"), 120)
    assert started, f"the population did not start within 120 s: {run_status(first)}, {run_status(second)}"
    time.sleep(1.0)
    os.kill(launcher.pid, signal.SIGKILL)  # the population process gets SIGTERM: it saves a checkpoint and stops
    launcher.wait()
    # its own deadline: a slow start must not leave the stop no time (a CI failure, stop 25)
    stopped = wait_for(lambda: "running" not in (run_status(first), run_status(second)), 60, poll_s=0.1)
    if not stopped:
        dump_agent_stacks(sweep_dir)  # still running: where it is stuck goes into the assertion's message
    assert run_status(first) == run_status(second) == "interrupted", \
        f"stopped within 60 s: {stopped}\n" + (first / "output.log").read_text()[-6000:]
    assert planning.population_checkpoint_matches([first, second])
    assert not planning.population_checkpoint_matches([second, first])  # other members: a fresh start

    # run again without packing: the interrupted population still resumes as itself
    completed = subprocess.run(command[:-2], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    for run_dir in (first, second):
        summary = read_run(run_dir)["summary"]
        assert summary["status"] == "finished" and summary["resumes"][0]["discarded_steps"] == 0
        steps = [row["step"] for row in read_run(run_dir)["metrics"] if "charts/episodic_return" in row]
        assert steps == sorted(steps) and len(steps) == len(set(steps))
    assert "population resumed by the sweep launcher" in (first / "output.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_the_sweep_and_its_runs_save_checkpoints(tmp_path, stop):
    path = write_config(tmp_path, parameters={**TINY, "total-timesteps": {"value": 20000}, "seed": {"values": [1]}})
    command = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(path), "--results-dir", str(tmp_path / "runs"),
               "--workers", "1", "--no-gpus"]
    # as from an interactive terminal: SIGINT handled (a background job, as CI may run us, inherits it ignored)
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    sweep_dir = tmp_path / "runs" / "tiny"
    wait_for(lambda: (sweep_dir / "adam__s1" / "metrics.jsonl").exists(), 120)
    time.sleep(0.5)
    if stop == "ctrl-c":
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole process group
    else:
        launcher.send_signal(signal.SIGTERM)  # the launcher alone (a scheduler's stop): it stops its runs itself
    output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 130 and "the same command resumes the sweep" in output, output
    assert run_status(sweep_dir / "adam__s1") == "interrupted"
    assert not (sweep_dir / "alphagrad-93__s1").exists()  # the queued run never started


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_from_its_checkpoint_when_the_sweep_runs_again(tmp_path):
    """The issue's scenario: the agent process dies without warning; running the same sweep again continues
    it from its last periodic checkpoint, and it ends exactly as an uninterrupted run."""
    parameters = {**TINY, "total-timesteps": {"value": 4000}, "checkpoint-interval-steps": {"value": 1000},
                  "checkpoint-interval-s": {"value": 0}, "seed": {"values": [1]}}
    path = write_config(tmp_path, parameters=parameters, arms={"adam": {}})
    command = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(path), "--results-dir", str(tmp_path / "runs"),
               "--workers", "1", "--no-gpus"]
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "runs" / "tiny" / "adam__s1"
    wait_for(lambda: any((run_dir / "checkpoints").glob("step-*.json")), 120, poll_s=0.01)
    agent = subprocess.run(["pgrep", "-f", str(run_dir.parent)], capture_output=True, text=True).stdout.split()
    if not agent:
        pytest.skip("the run finished before it could be killed")
    os.kill(int(agent[0]), signal.SIGKILL)
    output, _ = launcher.communicate(timeout=120)
    summary = read_run(run_dir)["summary"]
    if summary["status"] == "finished":
        pytest.skip("the run finished before it could be killed")
    assert launcher.returncode == 1 and "adam__s1: crashed" in output and "exit code -9" in summary["error"]

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = read_run(run_dir)["summary"]
    assert resumed["status"] == "finished" and resumed["resumes"][0]["step"] % 1000 == 0
    assert f"adam__s1: finished, final return {resumed['final_return']:.1f}" in again.stdout
    assert f"resumed at step {resumed['resumes'][0]['step']:,} (lost" in again.stdout
    reference = launch(load_sweep(path, REGISTRY), load_sweep(path, REGISTRY).runs, LaunchOptions(results_dir=tmp_path / "reference",
                                                                           workers=1, use_gpus=False), report=quiet)
    assert reference["adam__s1"]["final_return"] == resumed["final_return"]
    assert metric_rows(run_dir) == metric_rows(tmp_path / "reference" / "tiny" / "adam__s1")


def test_gpu_slots_pack_runs_and_pass_cuda_visible_devices(tmp_path, monkeypatch):
    assert assign_gpus(2, 3) == ["0", "1", "0", "1", "0", "1"]
    assert assign_gpus(0, 2) == []
    with pytest.raises(ValueError):
        assign_gpus(1, 0)

    sweep = load_sweep(write_config(tmp_path, parameters={**TINY, "seed": {"values": [1, 2, 3, 4]}}), REGISTRY)
    monkeypatch.setattr(sweep_module, "visible_gpus", lambda: ["0", "1"])
    lock, active, seen, peak = threading.Lock(), {}, [], [0]

    def fake_execute(job, context, locks=()):
        gpu = context.env["CUDA_VISIBLE_DEVICES"]
        with lock:
            active[gpu] = active.get(gpu, 0) + 1
            peak[0] = max(peak[0], max(active.values()))
            seen.append(gpu)
        time.sleep(0.05)
        with lock:
            active[gpu] -= 1
        return [{"status": "finished", "final_return": 1.0}]

    monkeypatch.setattr(backends, "execute_job", fake_execute)
    results = launch(sweep, sweep.runs, LaunchOptions(results_dir=tmp_path / "runs", runs_per_gpu=2), report=quiet)
    assert len(results) == 8 and sorted(set(seen)) == ["0", "1"]
    assert peak[0] <= 2 and seen.count("0") + seen.count("1") == 8


# ---- integrity: a record says exactly what it trained ----

def sweep_cli(argv: list[str]) -> int:
    """The sweep command's main (alphagrad-rl sweep, scripts/sweep.py), in-process."""
    from alphagrad_rl.cli import sweep as sweep_script

    return sweep_script.run(argv)


def fingerprint(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("edit", ["config", "total-timesteps", "same name"])
def test_a_relaunch_under_other_settings_is_refused_and_new_folder_trains_them_apart(tmp_path, edit, capsys):
    """An edited config, a --total-timesteps override or another config with the same name: the finished runs were
    counted as done and reported under the new settings; now the launch (and the dry run) refuses naming each
    difference, nothing is touched, and --new-folder trains the new settings in a folder of their own."""
    path = write_config(tmp_path, arms={"alphagrad-93": {"optim.name": "alphagrad", "optim.alpha": 93}},
                        parameters={**TINY, "seed": {"values": [1]}})
    base = [str(path), "--results-dir", str(tmp_path / "runs"), "--workers", "1", "--no-gpus"]
    assert sweep_cli(base) == 0
    sweep_dir = tmp_path / "runs" / "tiny"
    before = fingerprint(sweep_dir)
    extra, difference = [], "optim.alpha: 93.0 (record) != 50.0 (now)"
    if edit == "config":
        path = write_config(tmp_path, arms={"alphagrad-93": {"optim.name": "alphagrad", "optim.alpha": 50}},
                            parameters={**TINY, "seed": {"values": [1]}})
    elif edit == "total-timesteps":
        extra, difference = ["--total-timesteps", "500"], "total_timesteps: 400 (record) != 500 (now)"
    else:  # another experiment that reuses the name "tiny" and the arm name
        path = write_config(tmp_path, arms={"alphagrad-93": {"optim.name": "alphagrad", "optim.alpha": 93}},
                            parameters={**TINY, "seed": {"values": [1]}, "gamma": {"value": 0.9}})
        difference = "gamma: 0.99 (record) != 0.9 (now)"
    capsys.readouterr()
    for dry in (["--dry-run"], []):
        assert sweep_cli([*base, *extra, *dry]) == 2
        err = capsys.readouterr().err
        assert "hold records made with other options" in err and f"alphagrad-93__s1: {difference}" in err, err
    assert fingerprint(sweep_dir) == before  # nothing reused, resumed or touched

    assert sweep_cli([*base, *extra, "--new-folder"]) == 0
    out = capsys.readouterr().out
    moved = [folder for folder in (tmp_path / "runs").iterdir() if folder.name.startswith("tiny@")]
    assert len(moved) == 1 and f"go to {moved[0]}" in out
    assert read_summary(moved[0] / "alphagrad-93__s1")["status"] == "finished"
    assert fingerprint(sweep_dir) == before
    assert sweep_cli([*base, *extra, "--new-folder"]) == 0  # the same settings find the same folder: nothing to train
    assert "1/1 runs finished" in capsys.readouterr().out
    assert [folder.name for folder in (tmp_path / "runs").iterdir() if folder.name.startswith("tiny@")] == [moved[0].name]


@pytest.mark.parametrize("damage", ["garbled summary", "summary without status", "garbled config"])
def test_a_damaged_finished_record_is_reported_and_kept_not_retrained(tmp_path, damage):
    path = write_config(tmp_path, parameters={**TINY, "seed": {"values": [1]}})
    sweep = load_sweep(path, REGISTRY)
    options = LaunchOptions(results_dir=tmp_path / "runs", workers=1, use_gpus=False)
    launch(sweep, sweep.runs, options, report=quiet)
    run_dir = tmp_path / "runs" / "tiny" / "adam__s1"
    target = run_dir / ("config.json" if damage == "garbled config" else "summary.json")
    target.write_text('{"status": "finis' if damage != "summary without status" else '{"global_step": 400}')
    before = fingerprint(run_dir)
    said = []
    results = launch(sweep, sweep.runs, options, report=said.append)
    assert fingerprint(run_dir) == before  # kept byte for byte: not deleted, not retrained
    assert results["adam__s1"]["status"] == "damaged"
    assert any(message.startswith("adam__s1: skipped, its record is damaged") for message in said), said
    assert results["alphagrad-93__s1"]["status"] == "finished"


def test_resuming_a_run_that_another_process_trains_is_refused(tmp_path):
    """The single-file agents took no lock: a --resume beside a running run trained both into one folder."""
    argv = [sys.executable, "agents/dqn.py", "--total-timesteps", "2000000", "--learning-starts", "100",
            "--results-dir", str(tmp_path), "--run-name", "busy", "--quiet", "--no-cuda"]
    training = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (tmp_path / "busy" / "summary.json").exists(), 60)
        second = subprocess.run([*argv, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert second.stderr.strip() == (f"error: another process is training {tmp_path / 'busy'} (it holds "
                                          f"{tmp_path / '.locks' / 'busy.lock'}): wait for it to end, or stop it "
                                          "(SIGTERM saves a checkpoint) and resume the run then")
        assert training.poll() is None and run_status(tmp_path / "busy") == "running"
    finally:
        training.terminate()
        training.wait(60)
    assert run_status(tmp_path / "busy") == "interrupted"  # the first run's record is its own


def test_a_population_member_cannot_be_resumed_alone(tmp_path):
    """Resuming one population member with the single-file agent wiped its record and left the population
    unresumable; now it is refused and the record kept."""
    population = [sys.executable, "agents/dqn_population.py", "--total-timesteps", "2000000", "--learning-starts",
                  "100", "--results-dir", str(tmp_path), "--seeds", "1", "2", "--run-names", "m1", "m2",
                  "--quiet", "--no-cuda"]
    process = subprocess.Popen(population, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (tmp_path / "m2" / "summary.json").exists(), 60)
        time.sleep(1.0)
    finally:
        process.terminate()
        process.wait(60)
    assert run_status(tmp_path / "m2") == "interrupted"
    before = fingerprint(tmp_path / "m2")
    single = subprocess.run([sys.executable, "agents/dqn.py", "--total-timesteps", "2000000", "--learning-starts",
                             "100", "--results-dir", str(tmp_path), "--run-name", "m2", "--seed", "2", "--resume",
                             "--quiet", "--no-cuda"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert single.returncode == 1 and "Traceback" not in single.stderr
    assert "was trained as one of a population of 2 runs: resume it with its population" in single.stderr
    assert fingerprint(tmp_path / "m2") == before


@pytest.mark.slow
def test_every_shipped_config_exported_to_wandb_trains_what_the_launcher_trains():
    """The command W&B's agent builds from an exported sweep (with W&B's own argument builder, for every grid point
    of every arm) parses, by the agent's parser, to the launcher's run: W&B drops a false boolean from
    ${args_no_boolean_flags}, so PPO's arms trained with bootstrap_truncation=True (the agent's default)."""
    import itertools

    import tyro
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    from alphagrad_rl.sweep_config import wandb_sweep_configs

    skip = {"run_name", "results_dir", "track", "wandb_group", "quiet"}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("tune_") or path.name == "benchmark.yaml":  # a tuning config, the benchmark suite
            continue
        sweep = load_sweep(path, REGISTRY)
        for arm in sweep.arms:
            config = wandb_sweep_configs(sweep)[f"{sweep.name}-{arm}"]
            assert config["command"][-1] == "${args_no_boolean_flags}"
            grid = {flag: spec["values"] for flag, spec in config["parameters"].items() if "values" in spec}
            for point in itertools.product(*grid.values()):
                chosen = dict(zip(grid, point))
                args = {flag: {"value": chosen.get(flag, spec.get("value"))} for flag, spec in config["parameters"].items()}
                argv = create_sweep_command_args({"args": args})["args_no_boolean_flags"]
                parsed = dataclasses.asdict(tyro.cli(sweep.agent.args_type, args=argv))
                run = next(run for run in sweep.runs if run.arm == arm and all(
                    dict(run.flags).get(flag) == value for flag, value in chosen.items()))
                expected = dataclasses.asdict(sweep_config.parsed_args(run, sweep.agent))
                assert {k: v for k, v in parsed.items() if k not in skip} == \
                    {k: v for k, v in expected.items() if k not in skip}, (path.name, arm, chosen)


def test_a_wandb_export_refuses_a_grid_over_a_boolean(tmp_path):
    from alphagrad_rl.sweep_config import wandb_sweep_configs

    sweep = load_sweep(write_config(tmp_path, parameters={**TINY, "torch-deterministic": {"values": [True, False]}}),
                       REGISTRY)
    with pytest.raises(SweepConfigError, match="cannot vary a boolean flag \\(torch-deterministic\\)"):
        wandb_sweep_configs(sweep)


def test_live_progress_counts_runs_and_shows_each_training_runs_step_speed_return_and_the_eta(tmp_path):
    """The launcher's progress, read from the run folders: finished (as the launcher saw them end), training (lock
    held) with its step of its total, SPS and latest return from its metrics' tail, queued; the ETA from the steps
    gained since the progress started."""
    from alphagrad_rl.progress import SweepProgress

    sweep_dir = tmp_path / "tiny"
    for name in ("a__s1", "a__s2", "a__s3"):
        (sweep_dir / name).mkdir(parents=True)
    metrics = sweep_dir / "a__s2" / "metrics.jsonl"
    metrics.write_text('{"step": 100, "time": 1.0, "charts/episodic_return": 20.5}\n{"step": 100, "time": 1.0}\n')
    ended: list[str] = []
    progress = SweepProgress(sweep_dir, {"a__s1": 1000, "a__s2": 1000, "a__s3": 1000}, lambda: ended,
                             interval_s=60, live=False)
    fds = runs_module.lock_runs(sweep_dir, ["a__s2"])
    try:
        first = progress.snapshot(now=progress.start)
        assert (first.finished, first.queued, first.eta_s) == (0, 2, None)  # nothing measured yet
        [running] = first.running
        assert (running.name, running.step, running.total, running.sps, running.recent_return) == (
            "a__s2", 100, 1000, 100.0, 20.5)
        with metrics.open("a") as f:
            f.write('{"step": 400, "time": 4.0, "charts/episodic_return": 31.0}\n')
        ended.append("a__s1")  # 1000 + 300 steps in 30 s; 600 + 1000 left
        later = progress.snapshot(now=progress.start + 30.0)
    finally:
        runs_module.release_runs(fds)
    assert later.eta_s == pytest.approx(1600 / 1300 * 30.0)
    assert later.line() == ("1 finished, 1 running, 1 queued | 0:00:30 elapsed, ETA 0:00:37 | a__s2 400/1,000 (40%), "
                            "100 SPS, return 31.0")
    assert progress.table(later).row_count == 1


def test_a_launched_runs_output_log_holds_its_progress_and_its_last_line(tmp_path):
    sweep = load_sweep(write_config(tmp_path), REGISTRY)
    launch(sweep, sweep.runs[:1], LaunchOptions(results_dir=tmp_path / "runs", workers=1), report=quiet)
    log = (tmp_path / "runs" / "tiny" / sweep.runs[0].name / "output.log").read_text().splitlines()
    assert any(re.search(r"step [\d,]+/[\d,]+ .* elapsed, ETA", line) for line in log)
    assert re.search(rf"finished at step [\d,]+ .* record: .*{sweep.runs[0].name}$", log[-1])


@pytest.mark.parametrize("live", [False, True])
def test_progress_runs_beside_the_launch_as_lines_or_a_live_table(tmp_path, live, capsys):
    from alphagrad_rl.progress import SweepProgress

    (tmp_path / "a__s1").mkdir()
    lines: list[str] = []
    with SweepProgress(tmp_path, {"a__s1": 100}, lambda: [], interval_s=0.05, live=live, write=lines.append):
        time.sleep(0.3)
    if live:
        assert not lines  # the table is drawn on the terminal, not written as lines
    else:
        assert lines and all(re.fullmatch(r"\[\d\d:\d\d:\d\d\] 0 finished, 0 running, 1 queued \| .* ETA -", line)
                             for line in lines)
