"""The RL optimizer benchmark (alphagrad_rl.suite, .benchmark, .leaderboard): the ruleset's checks, the protocol
at a tiny budget (Adam under another name scores 1, an optimizer that never moves the parameters scores near the
random policy's 0, every optimizer gets the same tuning budget), rows that are never overwritten or mixed."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from alphagrad_rl.agents import sweep_registry

from alphagrad_rl.benchmark import resolve_optimizer, run_entry, tune_config
from alphagrad_rl.leaderboard import build, decided_line, write_leaderboard
from alphagrad_rl.suite import SuiteError, load_suite, searched_ranges
from alphagrad_rl.sweep import LaunchOptions
from alphagrad_rl.tuning import load_tune_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "benchmark_tiny.yaml"
REGISTRY = sweep_registry()


def test_the_shipped_suite_is_valid_and_every_optimizer_gets_the_same_budget():
    for profile in ("cpu", "full"):
        suite = load_suite(ROOT / "configs" / "benchmark.yaml", profile)
        assert set(suite.tasks) == {"dqn-cartpole", "ppo-halfcheetah", "td3-hopper"}
        for task in suite.tasks.values():
            assert len(task.eval_seeds) >= 10 and not set(task.eval_seeds) & set(task.tuning_seeds)
            configs = [tune_config(suite, task, entry, 0.0, REGISTRY) for entry in suite.optimizers.values()]
            budget = {key: [config[key] for config in configs] for key in
                      ("program", "parameters", "seeds", "trials", "score", "report_every", "pruner", "sampler",
                       "final")}
            for key, values in budget.items():  # the same for every optimizer
                assert all(value == values[0] for value in values), (profile, task.name, key)
            for config, entry in zip(configs, suite.optimizers.values()):
                lr = config["search"][f"{task.optimizer_flags[0]}.lr"]
                assert lr["log"] and lr["high"] / lr["low"] >= 1000 - 1e-6
                for prefix in task.optimizer_flags:  # one spec for every optimizer of the task (TD3: actor, critic)
                    assert config["arm"][f"{prefix}.name"] == entry.flags["name"]
    assert load_suite(ROOT / "configs" / "benchmark.yaml").digest() != load_suite(
        ROOT / "configs" / "benchmark.yaml", "full").digest()


def test_every_optimizer_the_suite_names_is_a_valid_tuning_config_on_every_task(tmp_path):
    """Each trial's flags pass the agent's own checks (the tuner probes both ends of every range); PPO's preset
    eps 1e-5 (CleanRL's) stays for optimizers that read eps and is cleared for those that do not."""
    for profile in ("cpu", "full"):
        suite = load_suite(ROOT / "configs" / "benchmark.yaml", profile)
        for entry in suite.optimizers.values():
            for task in suite.tasks.values():
                path = tmp_path / f"{profile}-{entry.name}-{task.name}.yaml"
                path.write_text(yaml.safe_dump(tune_config(suite, task, entry, 0.0, REGISTRY)))
                load_tune_config(path, REGISTRY)
    suite = load_suite(ROOT / "configs" / "benchmark.yaml")
    ppo = suite.tasks["ppo-halfcheetah"]
    assert tune_config(suite, ppo, suite.optimizers["adam"], 0.0, REGISTRY)["arm"]["optim.eps"] == 1e-5
    assert tune_config(suite, ppo, suite.optimizers["lion"], 0.0, REGISTRY)["arm"]["optim.eps"] is None
    assert "optim.eps" not in tune_config(suite, suite.tasks["dqn-cartpole"], suite.optimizers["lion"], 0.0,
                                          REGISTRY)["arm"]


def test_td3_searches_one_lr_for_actor_and_critic():
    suite = load_suite(ROOT / "configs" / "benchmark.yaml")
    config = tune_config(suite, suite.tasks["td3-hopper"], suite.optimizers["alphagrad"], 3.0, REGISTRY)
    assert config["search"]["actor-optim.lr"]["also"] == ["critic-optim.lr"]
    assert config["search"]["actor-optim.alpha"]["also"] == ["critic-optim.alpha"]
    assert config["arm"]["critic-optim.momentum"] == 0.9


def edited_suite(tmp_path, edit):
    data = yaml.safe_load(TINY.read_text())
    edit(data)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["optimizers"]["adam"].update(lr=[1e-4, 1e-2]), "spans 2.00 decades"),
    (lambda d: d["profiles"]["tiny"]["tasks"]["dqn-cartpole"].update(eval_seeds=[1, 2, 3, 4, 5]), "also tuning seeds"),
    (lambda d: d["profiles"]["tiny"]["tasks"]["dqn-cartpole"].update(eval_seeds=[7]), "at least 5"),
    (lambda d: d["rules"].update(reference="sgd"), "'sgd' is not under optimizers"),
    (lambda d: d["tasks"]["dqn-cartpole"]["parameters"].update({"optim.eps": 1e-5}), "optimizer flag"),
    (lambda d: d["profiles"]["tiny"]["tasks"]["dqn-cartpole"].update(trails=3), "unknown key"),
    (lambda d: d["optimizers"]["adam"].update(search={"lr": {"low": 1, "high": 2}}), "searched by the rules"),
])
def test_suite_errors_name_the_key_and_what_is_allowed(tmp_path, edit, message):
    with pytest.raises(SuiteError, match=message):
        load_suite(edited_suite(tmp_path, edit), "tiny")


def test_an_unknown_profile_or_optimizer_is_refused_with_the_choices():
    with pytest.raises(SuiteError, match="allowed: tiny"):
        load_suite(TINY, "cpu")
    suite = load_suite(TINY, "tiny")
    with pytest.raises(SuiteError, match="allowed: adam"):
        resolve_optimizer(suite, "adma")
    with pytest.raises(SuiteError, match="FLAG=LOW:HIGH"):
        resolve_optimizer(suite, "tests/benchmark_optimizers.py:frozen", search=["options.beta=0.9"])
    with pytest.raises(SuiteError, match="spans 1.00 decades"):
        resolve_optimizer(suite, "tests/benchmark_optimizers.py:frozen", lr_range=(1e-3, 1e-2))


def test_the_verdict_line_names_each_separated_optimizer_with_its_side():
    interval = lambda low, high: SimpleNamespace(low=low, high=high)  # noqa: E731
    board = SimpleNamespace(improvement={"adam": interval(0.35, 0.65)})
    assert decided_line(board, "adam") is None  # the reference alone compares nothing
    board.improvement.update(slow=interval(0.05, 0.30), fast=interval(0.55, 0.95), tied=interval(0.31, 0.61))
    line = decided_line(board, "adam")
    assert "excludes 0.5: slow (below), fast (above). " in line and "tied" not in line
    assert "half-width of 0.20:" in line  # the widest: fast's (0.95 - 0.55) / 2
    board.improvement = {"adam": interval(0.35, 0.65), "tied": interval(0.31, 0.61)}
    assert "excludes 0.5: none. " in decided_line(board, "adam")


def test_a_tuned_setting_at_an_end_of_its_searched_range_is_marked():
    from alphagrad_rl.leaderboard import _tuned_setting

    ranges = searched_ranges({"lr": [1e-5, 1e-2], "search": {"alpha": {"low": 1, "high": 1000, "log": True}}})
    assert _tuned_setting(ranges, "actor-optim.lr", 1.2e-5) == ("lr=1.2e-05", "low")
    assert _tuned_setting(ranges, "optim.lr", 3.66e-4) == ("lr=0.000366", None)
    assert _tuned_setting(ranges, "optim.alpha", 800.0) == ("alpha=800", "high")
    assert _tuned_setting(ranges, "optim.momentum-form", "sgd") == ("momentum-form=sgd", None)
    integer = searched_ranges({"lr": [1e-5, 1e-2], "search": {"warmup": {"low": 0, "high": 100}}})
    assert _tuned_setting(integer, "optim.warmup", 97) == ("warmup=97", "high")


@pytest.fixture(scope="module")
def benchmarked(tmp_path_factory):
    """Adam, Adam under another name and a frozen optimizer through the tiny suite (single-file runs, so the two
    Adams train the same way)."""
    root = tmp_path_factory.mktemp("benchmark")
    suite = load_suite(TINY, "tiny")
    options = LaunchOptions(workers=2, population_size=0)
    entries = [resolve_optimizer(suite, "adam"),
               resolve_optimizer(suite, "tests/benchmark_optimizers.py:adam_alias", lr_range=(1e-4, 1e-1)),
               resolve_optimizer(suite, "tests/benchmark_optimizers.py:frozen")]
    for entry in entries:
        assert run_entry(suite, entry, root / "leaderboard", root / "runs", REGISTRY, options,
                         report=lambda line: None) is not None
    return suite, root


def test_adam_under_another_name_scores_one_and_a_frozen_optimizer_near_zero(benchmarked):
    suite, root = benchmarked
    board = build(suite, root / "leaderboard")
    assert [row.name for row in board.rows] == ["adam", "adam_alias", "frozen"]
    adam, alias, frozen = (board.aggregates[name]["IQM"] for name in ("adam", "adam_alias", "frozen"))
    assert adam.low <= 1.0 <= adam.high
    assert alias.low <= 1.0 <= alias.high
    assert board.improvement["adam_alias"].low <= 0.5 <= board.improvement["adam_alias"].high
    assert abs(frozen.value) < 0.25 and frozen.high < adam.low  # a frozen greedy policy: about the random policy's
    assert board.improvement["frozen"].value < 0.1


def test_the_aggregates_figure_shows_every_interval_whole_inside_its_panel(benchmarked, captured_figures):
    """Each interval's ends lie inside the panel, clear of its frame (a bar pins the axis to its left end unless
    told not to, and the interval's low end then sits on the frame)."""
    from alphagrad_rl import leaderboard

    suite, root = benchmarked
    board = build(suite, root / "leaderboard")
    leaderboard.plot_aggregates(board, root)
    (figure,) = captured_figures
    for axis in figure.axes:
        left, right = axis.get_xlim()
        ends = [x for patch in axis.patches for x in (patch.get_x(), patch.get_x() + patch.get_width())]
        assert len(ends) == 2 * len(board.rows)
        margin = 0.02 * (right - left)
        assert left + margin < min(ends) and max(ends) < right - margin, axis.get_title()


def test_every_optimizer_spent_the_same_tuning_budget(benchmarked):
    suite, root = benchmarked
    entries = root / "leaderboard" / "tiny" / "entries"
    for name in ("adam", "adam_alias", "frozen"):
        result = json.loads((entries / name / "row.json").read_text())["tasks"]["dqn-cartpole"]
        assert result["trials"]["finished"] == 2 and result["tuning_seeds"] == [1]
        assert result["process_hours"]["tuning"] > 0 and result["process_hours"]["evaluation"] > 0
        assert result["eval_seeds"] == [101, 102, 103, 104, 105]
        configs = yaml.safe_load((entries / name / "dqn-cartpole" / "tune.yaml").read_text())
        assert configs["trials"] == 2 and configs["seeds"] == [1]
        assert len(list((entries / name / "dqn-cartpole" / "records").glob("*.record.json.gz"))) == 5
    text = write_leaderboard(suite, root / "leaderboard").read_text()
    assert "| adam | 1.0" in text and "Rows not compared" not in text
    assert "where its P(improvement) interval excludes 0.5: frozen (below). " in text
    anchors = json.loads((root / "leaderboard" / "tiny" / "anchors" / f"{suite.digest()}.json").read_text())
    assert anchors["suite"]["digest"] == suite.digest() and len(anchors["random"]["dqn-cartpole"]["final_returns"]) == 5


def test_rows_are_never_overwritten_nor_mixed_across_budgets_or_suites(benchmarked, tmp_path):
    suite, root = benchmarked
    with pytest.raises(SuiteError, match="never overwritten"):
        run_entry(suite, resolve_optimizer(suite, "adam"), root / "leaderboard", root / "runs", REGISTRY)
    copy = tmp_path / "leaderboard"
    shutil.copytree(root / "leaderboard", copy)
    row_path = copy / "tiny" / "entries" / "adam_alias" / "row.json"
    row = json.loads(row_path.read_text())
    row["tasks"]["dqn-cartpole"]["trials"]["finished"] = 3  # a row that tuned longer than the others
    row_path.write_text(json.dumps(row))
    frozen_path = copy / "tiny" / "entries" / "frozen" / "row.json"
    frozen = json.loads(frozen_path.read_text())
    frozen["suite"]["digest"] = "0" * 16  # a row from another suite version
    frozen_path.write_text(json.dumps(frozen))
    text = write_leaderboard(suite, copy).read_text()
    assert [row.name for row in build(suite, copy).rows] == ["adam"]
    assert "- adam_alias: tuned dqn-cartpole with 3 trials" in text
    assert "- frozen: ran under suite v1 digest 0000000000000000" in text


def test_an_entry_name_keeps_its_definition(benchmarked):
    suite, root = benchmarked
    other = resolve_optimizer(suite, "tests/benchmark_optimizers.py:adam_alias", name="frozen2")
    folder = root / "leaderboard" / "tiny" / "entries" / "frozen2"
    folder.mkdir(parents=True)
    (folder / "entry.json").write_text(json.dumps({"definition": {"flags": {"name": "sgd"}}, "suite": {}}))
    with pytest.raises(SuiteError, match="defined otherwise"):
        run_entry(suite, other, root / "leaderboard", root / "runs", REGISTRY)


def test_an_entry_file_or_a_factory_becomes_an_entry(tmp_path):
    suite = load_suite(TINY, "tiny")
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "description": "SGD, Nesterov", "flags": {"name": "sgd"},
                                    "lr": [1e-4, 1e-1], "search": {"momentum": {"low": 0.5, "high": 0.99}}}))
    entry = resolve_optimizer(suite, str(path))
    assert (entry.name, entry.flags, entry.lr) == ("mine", {"name": "sgd"}, (1e-4, 1e-1))
    config = tune_config(suite, suite.tasks["dqn-cartpole"], entry, 20.0, REGISTRY)
    assert config["search"]["optim.momentum"] == {"low": 0.5, "high": 0.99}
    assert config["score"]["range"] == [20.0, 21.0]  # a crashed run scores as the random policy
    custom = resolve_optimizer(suite, "examples/softsign_alphagrad.py:SoftsignAlphaGrad",
                               search=["options.alpha=1:1000:log"])
    assert custom.name == "SoftsignAlphaGrad" and custom.flags == {
        "name": "custom", "target": "examples/softsign_alphagrad.py:SoftsignAlphaGrad"}
    assert tune_config(suite, suite.tasks["dqn-cartpole"], custom, 0.0, REGISTRY)["search"]["optim.options.alpha"] == {
        "low": 1.0, "high": 1000.0, "log": True}


def test_a_stopped_benchmark_resumes_where_it_stopped(tmp_path):
    """SIGTERM stops the command as Ctrl-C does (its runs save checkpoints, exit 130); the same command then
    finishes the entry with exactly the suite's trials, the interrupted trial continued, not counted twice."""
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "scripts/benchmark.py", "--optimizer", "adam", "--suite", str(TINY), "--profile",
               "tiny", "--leaderboard", str(tmp_path / "leaderboard"), "--results-dir", str(tmp_path / "runs"),
               "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trial = tmp_path / "runs" / "bench-tiny-adam-dqn-cartpole" / "trials" / "trial0000__s1" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (trial.exists() and trial.stat().st_size > 2000) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "the same command resumes the entry" in output
    assert list(trial.parent.glob("checkpoints/step-*.json")), output
    text = write_leaderboard(load_suite(TINY, "tiny"), tmp_path / "leaderboard").read_text()
    assert "No leaderboard yet" in text and "- adam: 0/1 tasks done" in text
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    row = json.loads((tmp_path / "leaderboard" / "tiny" / "entries" / "adam" / "row.json").read_text())
    trials = row["tasks"]["dqn-cartpole"]["trials"]
    assert trials["finished"] == 2 and trials["fail"] == 1  # the interrupted attempt, retried in its folder
    assert "resumed" in (trial.parent / "output.log").read_text()


def test_a_crashed_evaluation_run_scores_as_the_random_policy(benchmarked, tmp_path):
    """An optimizer whose best setting diverges on a fresh seed is scored for it (as the random policy, as in tuning),
    not left off the leaderboard."""
    import gzip

    suite, root = benchmarked
    copy = tmp_path / "leaderboard"
    shutil.copytree(root / "leaderboard", copy)
    record = copy / "tiny" / "entries" / "adam_alias" / "dqn-cartpole" / "records" / "tuned__s101.record.json.gz"
    data = json.loads(gzip.decompress(record.read_bytes()))
    data["summary"]["status"] = "crashed"
    record.write_bytes(gzip.compress(json.dumps(data).encode()))
    board = build(suite, copy)
    alias = next(row for row in board.rows if row.name == "adam_alias")
    assert alias.crashed() == {"dqn-cartpole": 1} and alias.returns["dqn-cartpole"][0] is None
    assert board.finals["adam_alias"]["dqn-cartpole"][0] == board.random["dqn-cartpole"]
    assert alias.scores[0][0] == 0.0 and board.aggregates["adam_alias"]["mean"].value < 1.0
    text = write_leaderboard(suite, copy).read_text()
    assert "scored as the random policy: adam_alias (dqn-cartpole: 1)." in text
