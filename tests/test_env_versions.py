"""scripts/compare_env_versions.py: the same installation agrees with itself; a changed simulator shows in one step."""

import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_env_versions.py"
spec = importlib.util.spec_from_file_location("compare_env_versions", SCRIPT)
compare_env_versions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_env_versions)


def table_row(report: str, env_id: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {env_id} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_an_installation_replaying_its_own_states_agrees_with_itself(tmp_path):
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    compare_env_versions.main(["record", a, "--envs", "Hopper-v4", "CartPole-v1", "--steps", "60"])
    compare_env_versions.main(["record", b, "--envs", "Hopper-v4", "CartPole-v1", "--steps", "60", "--replay", a])
    report = compare_env_versions.compare(a, b)
    hopper, cartpole = table_row(report, "Hopper-v4"), table_row(report, "CartPole-v1")
    assert hopper[2] == "0" and hopper[3] == "-"  # the same trajectory, bit for bit
    assert float(hopper[4]) < 1e-9 and hopper[5] == "0.0%"  # one step from the same states: the same
    assert cartpole[2] == "0" and cartpole[4] == "-"  # no simulator state to replay
    recorded = np.load(a)
    assert recorded["Hopper-v4:rows"].shape == (60, 11 + 3) and recorded["Hopper-v4:qpos"].shape == (60, 6)
    assert recorded["Hopper-v4:rows"][:, -2].sum() >= 1  # random actions make the hopper fall: resets are covered


def test_a_changed_contact_shows_in_one_step_from_the_same_states(tmp_path, monkeypatch):
    """A simulator whose ground contact differs (here: ten times the friction) is told apart from rounding: its
    one-step differences are far above 1e-6 on the steps with contact, as MuJoCo >= 3.5's Hopper is from 3.3.1's."""
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    compare_env_versions.main(["record", a, "--envs", "Hopper-v4", "--steps", "200"])
    make = gym.make

    def more_friction(env_id, **kwargs):
        env = make(env_id, **kwargs)
        env.unwrapped.model.geom_friction[:, 0] *= 10
        return env

    monkeypatch.setattr(compare_env_versions.gym, "make", more_friction)
    compare_env_versions.main(["record", b, "--envs", "Hopper-v4", "--steps", "200", "--replay", a])
    hopper = table_row(compare_env_versions.compare(a, b), "Hopper-v4")
    assert float(hopper[4]) > 1e-3
    assert 0.0 < float(hopper[5].rstrip("%")) < 100.0  # on the contact steps only


def test_bad_input_is_named(tmp_path, capsys):
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    for argv, message in ((["record", a, "--envs", "Hoper-v4"], "unknown env id(s): Hoper-v4"),
                          (["record", a, "--steps", "0"], "--steps must be > 0 (got 0)"),
                          (["record", a, "--replay", b], f"no recording at {b}"),
                          (["compare", a, b], f"no recording at {a}, {b}")):
        try:
            compare_env_versions.main(argv)
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
        assert message in capsys.readouterr().err
    assert not Path(a).exists()  # nothing half-written
    compare_env_versions.main(["record", a, "--envs", "CartPole-v1", "Hopper-v4", "--steps", "5"])
    compare_env_versions.main(["record", b, "--envs", "CartPole-v1", "--steps", "5"])
    try:
        compare_env_versions.main(["compare", a, b])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "has no rollout of Hopper-v4 (record both with the same --envs)" in capsys.readouterr().err
