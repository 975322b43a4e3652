"""What a tracked run tells Weights & Biases, read back from the offline run's own log (run-<id>.wandb): a sweep's
runs grouped by sweep, typed and tagged by arm, named <arm>__s<seed>, every series against global_step, and a
config that says which arm, sweep, seed, population member, commit and software trained it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alphagrad_rl.agents import dqn, dqn_population, sweep_registry
from test_agents import dqn_args
from test_population import SPECS, population_args

from alphagrad_rl import population
from alphagrad_rl.planning import population_argv
from alphagrad_rl.sweep_config import RunSpec, load_sweep, wandb_sweep_configs

ROOT = Path(__file__).resolve().parent.parent


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of the offline W&B run in `run_dir` (W&B's leveldb-style log: a 7-byte file header, then
    32 KiB blocks of chunks, each a 7-byte header (CRC, length, type: full, first, middle, last) and its bytes)."""
    from wandb.proto import wandb_internal_pb2

    [log] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = log.read_bytes()
    assert data[:4] == b":W&B"
    position, block, chunks, pending = 7, 32768, [], b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            pending = (pending if kind == 3 else b"") + chunk
        elif kind == 4:
            chunks.append(pending + chunk)
    return [wandb_internal_pb2.Record.FromString(chunk) for chunk in chunks]


def tracked_run(run_dir: Path) -> tuple[object, dict, list[dict]]:
    """(the W&B run record, its config, its logged rows) of an offline run."""
    records = wandb_records(run_dir)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    rows = [{"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    metrics = {(r.metric.name or r.metric.glob_name): r.metric.step_metric for r in records
               if r.WhichOneof("record_type") == "metric"}
    return run, config, rows, metrics


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_a_sweeps_run_is_grouped_by_sweep_typed_and_tagged_by_arm_and_plotted_against_global_step(tmp_path, offline):
    dqn.main(dqn_args(tmp_path, track=True, exp_name="alphagrad-93", wandb_group="demo-dqn-cartpole",
                      run_name="alphagrad-93__s1", seed=1))
    run, config, rows, metrics = tracked_run(tmp_path / "alphagrad-93__s1")
    software = json.loads((tmp_path / "alphagrad-93__s1" / "config.json").read_text())["software"]
    assert (run.display_name, run.run_group, run.job_type) == ("alphagrad-93__s1", "demo-dqn-cartpole", "alphagrad-93")
    assert list(run.tags) == ["alphagrad-93", software["alphagrad-rl"]]
    assert {key: config[key] for key in ("arm", "sweep", "seed", "member", "population_size", "git_commit")} == {
        "arm": "alphagrad-93", "sweep": "demo-dqn-cartpole", "seed": 1, "member": None, "population_size": 1,
        "git_commit": software["alphagrad-rl"]}
    assert config["software"] == software and config["exp_name"] == "alphagrad-93"
    assert metrics == {"global_step": "", "*": "global_step"}
    returns = [row for row in rows if "charts/episodic_return" in row]
    assert returns and all(row["global_step"] == row["_step"] for row in rows)


def test_each_population_member_is_its_own_wandb_run_with_its_arm(tmp_path, offline):
    args = population_args(tmp_path, SPECS["alphagrad"], track=True, wandb_group="sweep", seeds=(1, 2),
                           alphas=(3.0, 30.0), exp_names=("alphagrad-3", "alphagrad-30"),
                           run_names=("alphagrad-3__s1", "alphagrad-30__s2"))
    dqn_population.main(args)
    for member, (arm, name) in enumerate([("alphagrad-3", "alphagrad-3__s1"), ("alphagrad-30", "alphagrad-30__s2")]):
        run, config, rows, _ = tracked_run(tmp_path / name)
        assert (run.display_name, run.run_group, run.job_type) == (name, "sweep", arm)
        assert (config["arm"], config["member"], config["population_size"], config["seed"]) == (arm, member, 2,
                                                                                                  member + 1)
        assert any("losses/td_loss" in row for row in rows)


def test_the_launcher_names_each_run_and_member_by_its_arm_unless_the_config_does():
    registry = sweep_registry()
    sweep = load_sweep(ROOT / "configs" / "paper_dqn_cartpole.yaml", registry)
    run = sweep.runs[0]
    argv = run.argv(Path("agents/dqn.py"), Path("results"))
    assert argv[argv.index("--exp-name") + 1] == run.arm
    members = [r for r in sweep.runs if r.arm in ("alphagrad-93", "alphagrad-186") and r.seed == 1]
    argv = population_argv(members, sweep.agent, Path("results"), ())
    assert argv[argv.index("--exp-names") + 1:argv.index("--exp-names") + 3] == ["alphagrad-93", "alphagrad-186"]
    parsed = population.member_args(dqn_population.Args(seeds=(1, 1), alphas=(93.0, 186.0), optim=SPECS["alphagrad"],
                                                        exp_names=("alphagrad-93", "alphagrad-186"), run_names=("a", "b")),
                                    dqn.Args, "DQN")
    assert [m.exp_name for m in parsed] == ["alphagrad-93", "alphagrad-186"]
    command = wandb_sweep_configs(sweep)["paper-dqn-cartpole-adam"]["command"]
    assert command[command.index("--exp-name") + 1] == "adam"
    labelled = RunSpec("x__s1", "x", 1, (("seed", 1), ("exp-name", "mine")))  # the config names it: kept
    argv = labelled.argv(Path("agents/dqn.py"), Path("results"))
    assert argv.count("--exp-name") == 1 and argv[argv.index("--exp-name") + 1] == "mine"


def test_the_tuner_tracks_each_trial_grouped_by_study_and_typed_by_trial(tmp_path, offline):
    from test_tune import tiny_config, write

    from alphagrad_rl.tuning import load_tune_config, tune

    config = load_tune_config(write(tmp_path, tiny_config(parameters={**tiny_config()["parameters"],
                                                                       "total-timesteps": {"value": 400}})),
                              sweep_registry())
    tune(config, tmp_path / "runs", max_trials=1, report=lambda _: None, poll_s=0.1, track=True)
    for seed in (1, 2):
        run, config_logged, _, _ = tracked_run(tmp_path / "runs" / "tiny-tune" / "trials" / f"trial0000__s{seed}")
        assert (run.display_name, run.run_group, run.job_type) == (f"trial0000__s{seed}", "tiny-tune", "trial0000")
        assert config_logged["seed"] == seed and 5 <= config_logged["optim"]["alpha"] <= 500


@pytest.mark.parametrize("algorithm", ["dqn", "td3_continuous_action", "ppo_continuous_action"])
def test_the_dashboard_groups_a_sweeps_runs_by_arm_with_the_papers_panels(algorithm):
    """The W&B workspace builds without a server: runs filtered to the sweep, grouped by the config's arm, each of
    the algorithm's paper panels against global_step."""
    from alphagrad_rl.analysis import PANELS
    from alphagrad_rl.dashboard import sweep_workspace

    workspace = sweep_workspace("me", "alphagrad-rl", "paper-x", algorithm)
    view = json.dumps(workspace._to_model().model_dump(by_alias=True), default=str)
    assert workspace.runset_settings.groupby[0].name == "arm"
    assert "paper-x" in view and view.count('"global_step"') >= len(PANELS[algorithm])
    plotted = [panel.y for panel in workspace.sections[0].panels]
    assert plotted == [[metric] for metric in PANELS[algorithm]]
    with pytest.raises(ValueError, match="invalid algorithm: 'sac'"):
        sweep_workspace("me", "alphagrad-rl", "paper-x", "sac")
