"""The package as a cluster user installs it (`pip install .`, used from another folder), the checkout as a user
works in it (the repository root as the working directory), and the dependency ranges pyproject.toml declares.

The editable install every other test uses hides a folder left out of the wheel and package data that stays in the
checkout; these tests build the real wheel and import from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# What the code itself needs, whatever else was tested: a floor below one of these would let pip resolve a version
# that breaks at run time.
NEEDS = {
    "transformers": "4.56",  # from_pretrained(dtype=...) everywhere a model loads
    "torch": "2.4",  # torch.distributed's gloo all_to_all_single with uneven splits, torch.amp on CPU
    "peft": "0.13",  # LoraConfig(target_modules=list), get_peft_model on a LlamaForCausalLM
    "deepspeed": "0.15",  # ZeRO-3 zero.Init through HfDeepSpeedConfig, engine.save_checkpoint(exclude_frozen_parameters)
}


def _run(
    args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **extra}


def test_every_folder_under_the_package_is_found_by_the_package_list():
    from setuptools import find_packages

    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(str(REPO), include=include))
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "rapidun_dist").rglob("*.py")}
    assert folders - found == set(), "folders with modules that the wheel would leave out"
    unpackaged = {f for f in folders if not (REPO / f.replace(".", "/") / "__init__.py").exists()}
    assert unpackaged == set(), "folders with modules but no __init__.py (find_packages skips them)"


def test_nothing_at_the_top_level_is_a_package_but_rapidun_dist():
    """A top-level `kernels/` with an `__init__.py` shadowed Hugging Face's `kernels`, which transformers 5
    imports when it loads a model: no top-level folder may be a regular package that could shadow a dependency."""
    tops = sorted(p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert tops == ["rapidun_dist"]
    assert not any((REPO / name).exists() for name in ("kernels.py", "transformers.py", "deepspeed.py"))


def test_a_model_class_loads_with_the_repository_root_as_working_directory():
    code = (
        "import importlib.util as u, json; from transformers import LlamaForCausalLM; "
        "s = u.find_spec('kernels'); "
        "print(json.dumps([LlamaForCausalLM.__name__, s and s.origin, list(s.submodule_search_locations or [])]))"
    )
    run = _run([sys.executable, "-c", code], cwd=REPO, env=_clean_env())
    assert run.returncode == 0, run.stderr[-3000:]
    name, origin, locations = json.loads(run.stdout.strip().splitlines()[-1])
    assert name == "LlamaForCausalLM"
    here = str(REPO / "kernels")
    assert origin is None or not Path(origin).resolve().is_relative_to(REPO / "kernels"), origin
    # Hugging Face's `kernels` (a transformers dependency) is a regular package and wins over the checkout's
    # plain folder; the folder must not be the one that `import kernels` finds
    assert origin is not None or here not in locations, locations


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from the checkout, installed without dependencies into a fresh folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp),
            str(REPO),
        ],
        cwd=tmp,
        env=_clean_env(),
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp.glob("rapidun_dist-*.whl")
    target = tmp / "site"
    install = _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        cwd=tmp,
        env=_clean_env(),
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return target


def test_the_wheel_ships_every_module_and_the_zero_configs(installed):
    shipped = {p.relative_to(installed).as_posix() for p in (installed / "rapidun_dist").rglob("*.py")}
    source = {p.relative_to(REPO).as_posix() for p in (REPO / "rapidun_dist").rglob("*.py")}
    assert source - shipped == set()
    zero = sorted(p.name for p in (installed / "rapidun_dist" / "models" / "zero").glob("zero*.json"))
    assert zero == [f"zero{i}.json" for i in range(4)]
    assert not (installed / "kernels").exists() and not (installed / "configs").exists()


def test_every_module_imports_from_the_installed_copy_outside_the_checkout(installed, tmp_path):
    code = f"""
import importlib, json, pkgutil, sys
sys.path.insert(0, {str(installed)!r})
import rapidun_dist
names = ["rapidun_dist"] + [m.name for m in pkgutil.walk_packages(rapidun_dist.__path__, "rapidun_dist.")]
bad, outside = {{}}, []
for name in names:
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # every failure is reported, not just the first
        bad[name] = f"{{type(e).__name__}}: {{e}}"
        continue
    if not getattr(mod, "__file__", "").startswith({str(installed)!r}):
        outside.append(name)
from rapidun_dist.training.engine import ZERO_DIR
print(json.dumps({{"n": len(names), "bad": bad, "outside": outside, "zero": str(ZERO_DIR)}}))
"""
    run = _run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["bad"] == {} and out["outside"] == []
    assert out["n"] >= 100  # the package has ~110 modules; a short walk means folders went missing
    assert Path(out["zero"]).is_relative_to(installed)


def _requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return {r.name: r for r in reqs if r.marker is None or r.marker.evaluate()}


def _floor(req: Requirement) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert floors, f"{req} declares no floor"
    return max(floors)


def test_the_installed_versions_satisfy_the_declared_ranges():
    for name, req in _requirements().items():
        try:
            got = Version(version(name).split("+")[0])
        except PackageNotFoundError:
            pytest.fail(f"{name} is declared but not installed")
        assert req.specifier.contains(got, prereleases=True), f"{name} {got} is outside {req.specifier}"


def test_every_floor_covers_what_the_code_needs():
    reqs = _requirements()
    for name, need in NEEDS.items():
        assert _floor(reqs[name]) >= Version(need), (
            f"{name}: floor {_floor(reqs[name])} below the needed {need}"
        )
    for name, req in reqs.items():
        assert any(s.operator == "<" for s in req.specifier), f"{name} has no upper bound"
