"""The optimizer library stands alone: `alphagrad` imports and works in a fresh virtualenv holding torch alone."""

import importlib.metadata
import re
import subprocess
import venv
from pathlib import Path

import pytest
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
