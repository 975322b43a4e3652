"""Kill a sweep's run with SIGKILL part-way, run the same sweep again, and report what the resume cost.

Default: TD3 Hopper-v4 (Adam, seed 1) from configs/paper_td3_hopper.yaml for 120k steps, killed 450 s
after it started; the agents' default checkpoint interval (300 s of training) applies. With
--reference an uninterrupted copy runs alongside (second core) and the two records are compared.
    python scripts/demo_resume.py --reference
Reports: checkpoint steps and sizes on disk at the kill, the work lost (training time and steps between
the last checkpoint and the kill, as the resumed record measured them), the resumed run's status, and
whether its metrics equal the uninterrupted run's (time and SPS aside).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from alphagrad_rl.runs import LOCK_DIR, checkpoint_manifests, read_run

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    config: Path = Path("configs/paper_td3_hopper.yaml")
    """the sweep config"""
    arm: str = "adam"
    """the arm to run"""
    seed: int = 1
    """the seed to run"""
    total_timesteps: int = 120_000
    """the run's budget"""
    kill_after_s: float = 450.0
    """seconds after the launch at which the run is killed with SIGKILL"""
    results_dir: Path = Path("results/demo-resume")
    """the killed sweep goes to <results-dir>/killed, the reference to <results-dir>/reference"""
    reference: bool = False
    """also run the same sweep uninterrupted, in parallel, and compare the records"""


def sweep_command(args: Args, results_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(args.config), "--arms", args.arm, "--seeds",
            str(args.seed), "--total-timesteps", str(args.total_timesteps), "--results-dir", str(results_dir),
            "--workers", "1", "--no-gpus"]


def metric_rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("time", "charts/SPS")} for row in read_run(run_dir)["metrics"]]


def main(args: Args) -> int:
    killed_dir, reference_dir = args.results_dir / "killed", args.results_dir / "reference"
    reference = subprocess.Popen(sweep_command(args, reference_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) if args.reference else None
    launcher = subprocess.Popen(sweep_command(args, killed_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    time.sleep(args.kill_after_s)
    agent = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    if len(agent) != 1:
        print(f"error: expected one running agent under the launcher, found {agent} (did it finish already?)")
        return 1
    sweep_name = next(path for path in killed_dir.iterdir() if path.is_dir()).name
    run_dir = next(path for path in (killed_dir / sweep_name).iterdir() if path.name != LOCK_DIR)
    manifests = [json.loads(path.read_text()) for path in checkpoint_manifests(run_dir)]
    on_disk = sum(path.stat().st_size for path in (run_dir / "checkpoints").glob("step-*"))
    rows = read_run(run_dir)["metrics"]
    os.kill(int(agent[0]), signal.SIGKILL)
    launcher.wait()
    print(f"killed {run_dir.name} (pid {agent[0]}) with SIGKILL {args.kill_after_s:.0f} s after launch, at step "
          f"~{rows[-1]['step'] if rows else 0} ({rows[-1]['time'] if rows else 0:.0f} s of training)")
    for manifest in manifests:
        print(f"  checkpoint at step {manifest['step']}: {manifest['bytes'] / 2**20:.1f} MiB")
    print(f"  checkpoint folder on disk: {on_disk / 2**20:.1f} MiB (newest two checkpoints and manifests)")

    start = time.time()
    again = subprocess.run(sweep_command(args, killed_dir), cwd=ROOT, capture_output=True, text=True)
    summary = read_run(run_dir)["summary"]
    print(f"ran the same sweep again: exit {again.returncode}, {time.time() - start:.0f} s; "
          f"status {summary['status']}, {summary['global_step']} steps, final return {summary['final_return']:.1f}")
    for resume in summary.get("resumes", []):
        print(f"  resumed at step {resume['step']}: work lost {resume['lost_s']:.0f} s of training, "
              f"{resume['discarded_steps']} steps done twice; fresh episodes: {resume['fresh_episodes'] or 'none'}")
    print(f"  one complete record: {len(read_run(run_dir)['metrics'])} metric rows, "
          f"checkpoints left: {len(checkpoint_manifests(run_dir))}")
    if reference is not None:
        reference.wait()
        reference_run = reference_dir / sweep_name / run_dir.name
        same = metric_rows(run_dir) == metric_rows(reference_run)
        print(f"uninterrupted reference: final return {read_run(reference_run)['summary']['final_return']:.1f}; "
              f"metrics identical to the resumed run's: {same}")
    return 0 if summary["status"] == "finished" else 1


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
