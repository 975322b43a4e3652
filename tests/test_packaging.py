"""The optimizer library stands alone: `alphagrad` imports and works in a fresh virtualenv holding torch alone."""

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker

ROOT = Path(__file__).resolve().parents[1]
HARNESS_ONLY = ("gymnasium", "mujoco", "tyro", "tensorboard", "wandb", "pytorch_optimizer", "yaml", "scipy",
                "matplotlib", "ninja", "alphagrad_rl")


def distributions_needed_by(name: str, found: dict | None = None) -> dict[str, importlib.metadata.Distribution]:
    """`name`'s installed distribution and, recursively, those it requires (no extras)."""
    found = {} if found is None else found
    key = name.lower().replace("_", "-")
    if key in found:
        return found
    try:
        found[key] = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return found
    for requirement in found[key].requires or []:
        requirement, _, marker = requirement.partition(";")
        if marker and ("extra" in marker or not Marker(marker).evaluate()):
            continue
        distributions_needed_by(re.split(r"[\s<>=!~\[(]", requirement.strip())[0], found)
    return found


def test_project_requires_only_torch():
    requirements = importlib.metadata.requires("alphagrad-rl")
    core = [r for r in requirements if "extra ==" not in r]
    assert [re.split(r"[\s<>=]", r)[0] for r in core] == ["torch"]


@pytest.mark.slow
def test_alphagrad_imports_and_steps_in_a_fresh_venv_with_torch_alone(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    site = tmp_path / "site"  # torch, what torch requires, and the alphagrad package: nothing else
    site.mkdir()
    for dist in distributions_needed_by("torch").values():
        for top in {Path(str(file)).parts[0] for file in dist.files or []} - {"..", "bin"}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    (site / "alphagrad").symlink_to(ROOT / "alphagrad")
    (next((env_dir / "lib").glob("python3*")) / "site-packages" / "only-torch.pth").write_text(str(site) + "\n")
    code = f"""
import importlib.util, sys, torch
import alphagrad
from alphagrad import AGR, AlphaGrad, SaturationAlphaScheduler, alphagrad as functional, with_agr
for name in {HARNESS_ONLY!r}:
    assert importlib.util.find_spec(name) is None, name + " is visible: the venv is not torch-only"
model = torch.nn.Linear(4, 2)
for path in (dict(foreach=False), dict(foreach=True)):
    opt = with_agr(AlphaGrad(model.parameters(), lr=0.1, alpha=3.0, momentum=0.9, **path))
    model(torch.randn(8, 4)).pow(2).mean().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.weight.detach())
    AGR.of(opt).remove()
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in {HARNESS_ONLY!r}))
"""
    completed = subprocess.run([str(env_dir / "bin" / "python"), "-c", code], capture_output=True, text=True,
                               timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok []"


def test_the_harness_without_its_extra_names_the_extra_in_one_import_error():
    code = ("import importlib.util, sys\n"
            "find = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'pytorch_optimizer' else find(name, *a)\n"
            "import alphagrad\n"  # the optimizers need torch only
            "try:\n"
            "    import alphagrad_rl\n"
            "except ImportError as error:\n"
            "    print(error)\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == (
        'alphagrad_rl (the RL harness) needs the `rl` extra: pip install "alphagrad-rl[rl]" (missing: '
        "pytorch_optimizer); the optimizers alone, `import alphagrad`, need torch only")


@pytest.mark.slow
def test_the_wheel_installs_clean_and_its_commands_run_a_sweep_and_its_analysis_outside_the_clone(tmp_path):
    """Built as a wheel and installed into a fresh virtualenv (its dependencies visible through a .pth, not the
    project): nothing but alphagrad and alphagrad_rl at site-packages' top level, one version, and `alphagrad-rl
    sweep` then `alphagrad-rl analyze`, run from a folder that is not the clone, train a 2-run sweep and report it."""
    source = tmp_path / "source"  # the working tree's package files (a build writes into its source folder)
    for name in ("alphagrad", "alphagrad_rl", "agents"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("alphagrad_rl-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    site = next((env_dir / "lib").glob("python3*")) / "site-packages"
    dependencies = Path(importlib.metadata.distribution("wandb").locate_file(""))  # this environment's packages
    (site / "dependencies.pth").write_text(f"{dependencies}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    top_level = {path.name for path in site.iterdir()} - {"dependencies.pth", "__pycache__"}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"alphagrad", "alphagrad_rl"}
    version = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import alphagrad, alphagrad_rl, "
                              "importlib.metadata as m; print(alphagrad.__file__, alphagrad.__version__, "
                              "alphagrad_rl.__version__, m.version('alphagrad-rl'))"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    path, *versions = version.stdout.split()
    assert path.startswith(str(site)) and len(set(versions)) == 1, version.stdout + version.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "program": "agents/dqn.py", "method": "grid",
        "parameters": {"total-timesteps": {"value": 600}, "learning-starts": {"value": 200},
                       "buffer-size": {"value": 600}, "batch-size": {"value": 16}, "seed": {"values": [1, 2]}},
        "arms": {"adam": {"optim.name": "adam"}}}))
    command = str(env_dir / "bin" / "alphagrad-rl")
    swept = subprocess.run([command, "sweep", "tiny.yaml", "--results-dir", "runs", "--workers", "2"], cwd=work,
                           capture_output=True, text=True, timeout=600)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    for seed in (1, 2):
        summary = json.loads((work / "runs" / "tiny" / f"adam__s{seed}" / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["global_step"] == 600
    analyzed = subprocess.run([command, "analyze", "runs/tiny", "--output", "report"], cwd=work, capture_output=True,
                              text=True, timeout=600)
    assert analyzed.returncode == 0, analyzed.stdout + analyzed.stderr
    assert (work / "report" / "REPORT.md").exists() and len(list((work / "report" / "records").iterdir())) == 2
    usage = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and all(name in usage.stdout for name in ("sweep", "analyze", "tune", "dashboard"))
