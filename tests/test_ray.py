"""The Ray backend on a local multi-node cluster (ray.cluster_utils.Cluster): the local launcher's guarantees hold there
too. A node lost mid-sweep and a launcher stopped or killed and relaunched end with every run finished once, its
metrics identical to an uninterrupted local sweep's; populations pack as locally; runs share GPUs as asked."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from alphagrad_rl.agents import dqn, sweep_registry
from test_agents import metric_rows
from test_sweep import ROOT, TINY, quiet, run_status, wait_for, write_config

from alphagrad_rl import sweep as sweep_module
from alphagrad_rl.runs import checkpoint_manifests, lock_runs, read_run, read_summary, release_runs
from alphagrad_rl.sweep import LaunchOptions, launch
from alphagrad_rl.sweep_config import AgentEntry, load_sweep

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = pytest.mark.slow

# Two AlphaGrad alphas x two seeds: with --population-size 2, two population processes of two members each (alpha is
# a per-member value), a checkpoint every 1,500 steps
ARMS = {"alphagrad-93": {"optim.name": "alphagrad", "optim.alpha": 93},
        "alphagrad-186": {"optim.name": "alphagrad", "optim.alpha": 186}}
PARAMETERS = {**TINY, "total-timesteps": {"value": 24000}, "checkpoint-interval-steps": {"value": 1500},
              "checkpoint-interval-s": {"value": 0}, "seed": {"values": [1, 2]}}
FIRST_MEMBERS = ("alphagrad-93__s1", "alphagrad-186__s1")  # the folders that hold each population's checkpoints


@pytest.fixture(autouse=True)
def workers_at_normal_priority(monkeypatch):
    """Ray starts its workers (and so the runs) at nice 15: beside the other tests running in parallel they would
    get almost no CPU."""
    monkeypatch.setenv("RAY_worker_niceness", "0")


@pytest.fixture
def cluster():
    """A head that runs nothing and two worker nodes of one CPU each."""
    cluster = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, nodes
    cluster.shutdown()


def launcher(config: Path, results: Path, address: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(config), "--results-dir", str(results),
            "--backend", "ray", "--ray-address", address, "--population-size", "2", "--no-progress", "--no-gpus"]


def local_reference(config: Path, results: Path) -> Path:
    """The same sweep run locally without interruption: what every run must match."""
    sweep = load_sweep(config, sweep_registry())
    launch(sweep, sweep.runs, LaunchOptions(results_dir=results, workers=2, use_gpus=False, population_size=2),
           report=quiet)
    return results / "tiny"


def assert_finished_once_as_locally(sweep_dir: Path, reference: Path) -> list[dict]:
    """Every run finished, with one complete record equal to the uninterrupted local run's; returns the summaries."""
    summaries = []
    for name in ("alphagrad-93__s1", "alphagrad-93__s2", "alphagrad-186__s1", "alphagrad-186__s2"):
        record = read_run(sweep_dir / name)
        assert record["summary"]["status"] == "finished" and record["summary"]["population_size"] == 2, name
        steps = [row["step"] for row in record["metrics"] if "charts/episodic_return" in row]
        assert steps == sorted(steps) and len(steps) == len(set(steps)), name  # nothing duplicated
        assert metric_rows(sweep_dir / name) == metric_rows(reference / name), name
        summaries.append(record["summary"])
    return summaries


def checkpointed(sweep_dir: Path, names=FIRST_MEMBERS) -> bool:
    return all(checkpoint_manifests(sweep_dir / name) for name in names)


def test_a_node_lost_mid_sweep_is_retried_by_ray_and_its_runs_resume_from_their_checkpoints(tmp_path, cluster):
    cluster, nodes = cluster
    config = write_config(tmp_path, arms=ARMS, parameters=PARAMETERS)
    sweep_dir = tmp_path / "runs" / "tiny"
    process = subprocess.Popen(launcher(config, tmp_path / "runs", cluster.address), cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert wait_for(lambda: checkpointed(sweep_dir), 180, poll_s=0.05), process.communicate(timeout=60)[0]
    cluster.remove_node(nodes[0])  # with the population it trains
    cluster.add_node(num_cpus=1)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "Ray: the cluster at" in output and "(3 node(s), 2 CPUs, 0 GPUs)" in output
    assert "on Ray tasks (CPU)" in output
    summaries = assert_finished_once_as_locally(sweep_dir, local_reference(config, tmp_path / "local"))
    assert any(summary.get("resumes") for summary in summaries), "no population was resumed: the node was removed " \
        "after its runs ended"


def test_a_stopped_and_a_killed_ray_launcher_lose_nothing_when_relaunched(tmp_path, cluster):
    cluster, _ = cluster
    config = write_config(tmp_path, arms=ARMS, parameters=PARAMETERS)
    sweep_dir = tmp_path / "runs" / "tiny"
    command = launcher(config, tmp_path / "runs", cluster.address)

    # SIGTERM: every running run saves a checkpoint and stops; the launcher says how to go on
    process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert wait_for(lambda: checkpointed(sweep_dir), 180, poll_s=0.05), process.communicate(timeout=60)[0]
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 130 and "the same command resumes the sweep" in output, output
    stopped = {name: run_status(sweep_dir / name) for name in FIRST_MEMBERS}
    assert set(stopped.values()) <= {"interrupted", "finished"} and "interrupted" in stopped.values(), stopped
    assert "SIGTERM: saving a checkpoint" in (sweep_dir / FIRST_MEMBERS[0] / "output.log").read_text()

    # SIGKILL: the runs lose at most their checkpoint interval
    process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    resumed_steps = {name: len(checkpoint_manifests(sweep_dir / name)) for name in FIRST_MEMBERS}
    assert wait_for(lambda: any(len(checkpoint_manifests(sweep_dir / name)) > resumed_steps[name]
                                for name in FIRST_MEMBERS if run_status(sweep_dir / name) != "finished"), 180,
                    poll_s=0.05) or all(run_status(sweep_dir / name) == "finished" for name in FIRST_MEMBERS)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    summaries = assert_finished_once_as_locally(sweep_dir, local_reference(config, tmp_path / "local"))
    assert all(summary.get("resumes") for summary in summaries)


def test_runs_share_gpus_as_asked_on_a_cluster_whose_nodes_declare_them(tmp_path):
    """--runs-per-gpu 2 on a node of 2 GPUs: each run gets one GPU (CUDA_VISIBLE_DEVICES, from Ray), at most two runs
    share one at any time. The agent here is a probe that notes its GPU and when it ran."""
    cluster = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 6, "num_gpus": 2})
    try:
        probe = AgentEntry(ROOT / "tests" / "gpu_probe_agent.py", dqn.Args, dqn.check_args)
        sweep = load_sweep(write_config(tmp_path, parameters={**TINY, "seed": {"values": [1, 2, 3]}}),
                           {"agents/dqn.py": probe})
        lines: list[str] = []
        results = launch(sweep, sweep.runs, LaunchOptions(results_dir=tmp_path / "runs", backend="ray",
                                                          ray_address=cluster.address, runs_per_gpu=2),
                         report=lines.append)
    finally:
        cluster.shutdown()
    assert "Ray: the cluster at" in lines[0] and "6 CPUs, 2 GPUs" in lines[0]
    assert any("on Ray tasks (0.5 GPU each)" in line for line in lines), lines
    assert {summary["status"] for summary in results.values()} == {"finished"}
    probes = [read_summary(tmp_path / "runs" / "tiny" / run.name) for run in sweep.runs]
    assert {probe["gpus"] for probe in probes} <= {"0", "1"}
    for gpu in ("0", "1"):
        spans = [(probe["start"], probe["end"]) for probe in probes if probe["gpus"] == gpu]
        assert max(sum(start <= moment < end for start, end in spans) for moment, _ in spans) <= 2, spans


def test_without_an_address_ray_starts_a_local_instance_and_its_tasks_respect_run_locks(tmp_path, monkeypatch):
    path = write_config(tmp_path, parameters={**TINY, "seed": {"values": [1, 2]}})
    sweep = load_sweep(path, sweep_registry())
    options = LaunchOptions(results_dir=tmp_path / "runs", workers=2, backend="ray", use_gpus=False)
    sweep_dir = tmp_path / "runs" / "tiny"
    (sweep_dir / "adam__s2").mkdir(parents=True)
    other = lock_runs(sweep_dir, ["adam__s2"])  # another launcher trains it
    monkeypatch.setattr(sweep_module, "LOCK_WAIT_S", 0.5)
    lines: list[str] = []
    try:
        results = launch(sweep, sweep.runs, options, report=lines.append)
    finally:
        release_runs(other)
    assert {name: s.get("status") for name, s in results.items()} == {
        "adam__s1": "finished", "adam__s2": None, "alphagrad-93__s1": "finished", "alphagrad-93__s2": "finished"}
    assert "adam__s2: skipped, another launcher is running it" in lines
    assert not (sweep_dir / "adam__s2" / "summary.json").exists()  # the task touched nothing of it
    assert "Ray: a new local instance (1 node(s), 2 CPUs, 0 GPUs)" in lines  # no --ray-address: never joins one found
    assert read_summary(sweep_dir / "adam__s1")["episodes"] > 0


def test_a_node_that_does_not_see_the_results_folder_fails_with_one_line_naming_it(tmp_path):
    from alphagrad_rl.backends import JobContext, SharedStorageError, _ray_job
    from alphagrad_rl.planning import Job

    sweep = load_sweep(write_config(tmp_path, parameters={**TINY, "seed": {"values": [1]}}), sweep_registry())
    context = JobContext(sweep.agent, tmp_path / "runs" / "tiny", (), {}, str(ROOT))
    with pytest.raises(SharedStorageError, match=r"does not see the results folder .*runs \(no abc there\): a Ray "
                                                 r"sweep writes its runs into a folder every node mounts"):
        _ray_job(Job(sweep.runs[:1], False), context, 0.0, tmp_path / "runs" / "tiny" / ".launches" / "abc")
    assert not (tmp_path / "runs").exists()  # nothing written
