"""Do two installations (gymnasium / MuJoCo versions) simulate the same environments? Each installation rolls every
env out under one fixed action sequence; the second also steps each of the first's recorded MuJoCo states once.
Two measures: the trajectories (a chaotic env amplifies even a rounding difference, so a late divergence says
little) and the one-step dynamics from identical states (rounding stays near 1e-13 there; a changed simulator
does not).

    python scripts/compare_env_versions.py record a.npz                     # this installation (A)
    pip install --target /tmp/mujoco400 --no-deps mujoco==4.0.0 mujoco-core==4.0.0
    PYTHONPATH=/tmp/mujoco400 python scripts/compare_env_versions.py record b.npz --replay a.npz
    python scripts/compare_env_versions.py compare a.npz b.npz

A rollout: reset(seed=1), then `--steps` steps of actions drawn from numpy's default_rng(0) (uniform over a Box,
uniform integers for Discrete), resetting without a seed after each episode."""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np

ENVS = ("Hopper-v4", "HalfCheetah-v5", "HalfCheetah-v4", "CartPole-v1")
THRESHOLDS = (0.0, 1e-12, 1e-6, 1e-3)


def rollout(env_id: str, steps: int) -> dict[str, np.ndarray]:
    """Rows of (observation, reward, terminated, truncated), the actions, the observation each step returned and,
    for a MuJoCo env, the simulator state (qpos, qvel) each step started from."""
    env = gym.make(env_id)
    rng = np.random.default_rng(0)
    space, simulator = env.action_space, getattr(env.unwrapped, "data", None)
    obs, _ = env.reset(seed=1)
    rows, actions, returned, qpos, qvel = [], [], [], [], []
    for _ in range(steps):
        if isinstance(space, gym.spaces.Discrete):
            action = int(rng.integers(space.n))
        else:
            action = rng.uniform(space.low, space.high).astype(space.dtype)
        if simulator is not None:
            qpos.append(simulator.qpos.copy())
            qvel.append(simulator.qvel.copy())
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows.append(np.concatenate([np.asarray(obs, dtype=np.float64).ravel(), [reward, terminated, truncated]]))
        actions.append(action)
        returned.append(np.asarray(next_obs, dtype=np.float64).ravel())
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    recording = {"rows": np.array(rows), "actions": np.array(actions), "returned": np.array(returned)}
    if simulator is not None:
        recording.update(qpos=np.array(qpos), qvel=np.array(qvel))
    return recording


def replay(env_id: str, recording) -> np.ndarray:
    """The observation each recorded step returns here when started from the recorded simulator state: the one-step
    dynamics, free of the chaos that amplifies rounding along a trajectory."""
    env = gym.make(env_id)
    env.reset(seed=1)
    returned = []
    for qpos, qvel, action in zip(recording[f"{env_id}:qpos"], recording[f"{env_id}:qvel"],
                                  recording[f"{env_id}:actions"]):
        env.unwrapped.set_state(qpos, qvel)
        next_obs, *_ = env.step(action)
        returned.append(np.asarray(next_obs, dtype=np.float64).ravel())
    env.close()
    return np.array(returned)


def record(path: str, env_ids: list[str], steps: int, replay_of: str | None) -> None:
    import mujoco  # the module actually imported: PYTHONPATH may put another installation first

    versions = f"gymnasium {gym.__version__}, mujoco {mujoco.__version__}"
    arrays = {"versions": versions}
    for env_id in env_ids:
        arrays.update({f"{env_id}:{name}": values for name, values in rollout(env_id, steps).items()})
    if replay_of is not None:  # the other installation's states, stepped here
        recorded = np.load(replay_of)
        arrays["replay_of"] = replay_of
        for env_id in env_ids:
            if f"{env_id}:qpos" in recorded.files:
                arrays[f"{env_id}:replayed"] = replay(env_id, recorded)
    np.savez(path, **arrays)
    print(f"{path}: {versions}, {len(env_ids)} envs x {steps} steps" + (f", replaying {replay_of}" if replay_of else ""))


def first_steps_above(a: np.ndarray, b: np.ndarray) -> tuple[float, list[int | None]]:
    """Largest difference between two arrays of rows, and for each threshold the first row that differs by more."""
    rows = min(len(a), len(b))
    difference = np.abs(a[:rows] - b[:rows]).max(axis=1)
    return float(difference.max()), [int(np.argmax(difference > t)) if (difference > t).any() else None
                                     for t in THRESHOLDS]


def compare(path_a: str, path_b: str) -> str:
    a, b = np.load(path_a), np.load(path_b)
    one_step = "replay_of" in b.files  # B stepped A's recorded states (record --replay A)
    replayed = f", B replayed {b['replay_of']}" if one_step else ""
    lines = [f"A = {path_a} ({a['versions']}), B = {path_b} ({b['versions']}{replayed})", "",
             "| env | steps | trajectory: max abs difference | first step above " + " / ".join(
                 f"{t:g}" for t in THRESHOLDS) + " | one step from A's states: max abs difference | steps above 1e-6 |",
             "|---|---|---|---|---|---|"]
    recorded = [dict.fromkeys(name.split(":")[0] for name in f.files if ":" in name) for f in (a, b)]
    unmatched = [env_id for env_id in recorded[0] if env_id not in recorded[1]]
    if unmatched:
        raise ValueError(f"{path_b} has no rollout of {', '.join(unmatched)} (record both with the same --envs)")
    for env_id in recorded[0]:
        largest, first = first_steps_above(a[f"{env_id}:rows"], b[f"{env_id}:rows"])
        steps = "-" if first[0] is None else " / ".join("-" if row is None else str(row) for row in first)
        step = share = "-"
        if one_step and f"{env_id}:replayed" in b.files:
            difference = np.abs(a[f"{env_id}:returned"] - b[f"{env_id}:replayed"]).max(axis=1)
            step, share = f"{difference.max():.3g}", f"{(difference > 1e-6).mean():.1%}"
        lines.append(f"| {env_id} | {len(a[f'{env_id}:rows'])} | {largest:.3g} | {steps} | {step} | {share} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    recorder = commands.add_parser("record", help="roll out each env here and save the rows")
    recorder.add_argument("out")
    recorder.add_argument("--envs", nargs="+", default=list(ENVS))
    recorder.add_argument("--steps", type=int, default=5000)
    recorder.add_argument("--replay", metavar="A.npz", help="also step A's recorded MuJoCo states here (one-step dynamics)")
    comparer = commands.add_parser("compare", help="compare two recordings")
    comparer.add_argument("a")
    comparer.add_argument("b")
    args = parser.parse_args(argv)
    inputs = [args.replay] if args.command == "record" else [args.a, args.b]
    missing = [path for path in inputs if path is not None and not Path(path).is_file()]
    if missing:
        parser.error(f"no recording at {', '.join(missing)} (make one with: record FILE)")
    if args.command == "record":
        if args.steps <= 0:
            parser.error(f"--steps must be > 0 (got {args.steps})")
        unknown = [env_id for env_id in args.envs if env_id not in gym.registry]
        if unknown:
            parser.error(f"unknown env id(s): {', '.join(unknown)} (allowed: gymnasium's registered ids, e.g. "
                         f"{', '.join(ENVS)})")
        record(args.out, args.envs, args.steps, args.replay)
    else:
        try:
            print(compare(args.a, args.b))
        except ValueError as error:
            parser.error(str(error))


if __name__ == "__main__":
    main()
