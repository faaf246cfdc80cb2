"""A non-editable install works: the wheel holds the configs, the script modules and their
console commands, and an install of it runs from another directory.

The wheel is built from a copy of the source tree (so no ``build/`` or ``*.egg-info`` lands
in the checkout) and installed with ``pip install --target``. The commands then run with
only that directory on ``PYTHONPATH`` and an empty working directory, and the test checks
that every module they import comes from the install, not from the checkout or from an
editable install of the same project in the running interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["collect", "train_vae", "encode", "train_frmdn", "compare_memory",
           "compare_controllers", "train_controller", "evaluate", "run", "dream"]
PRESETS = ["carracing", "doom_takecover"]

pytestmark = pytest.mark.slow


def _builds_in_place() -> bool:
    """Whether this interpreter's setuptools can build the wheel without an isolated
    build env: the project asks for >= 68, and before 70.1 bdist_wheel needs ``wheel``."""
    try:
        version = tuple(int(p) for p in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    if version >= (70, 1):
        return True
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return False
    return version >= (68, 0)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "venv", "runs", "data", "build", "dist", "*.egg-info",
        "__pycache__", ".pytest_cache", ".ruff_cache"))
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "-w", str(tmp / "dist"),
           "--no-deps", "--quiet"]
    # a virtual env made by `python -m venv` (CI) has an older setuptools without bdist_wheel:
    # there pip builds in an isolated env, fetching setuptools as `pip install -e .` did
    if _builds_in_place():
        cmd.append("--no-build-isolation")
    subprocess.run(cmd, check=True, env=_clean_env(), cwd=tmp)
    (found,) = (tmp / "dist").glob("worldmodels-*.whl")
    return found


def test_wheel_holds_configs_scripts_and_commands(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        commands = zf.read(entry_points).decode()
    assert "configs/__init__.py" in names
    for preset in [*PRESETS, "common"]:  # common: the part of the presets both share
        assert f"configs/{preset}.yaml" in names
    for script in SCRIPTS:
        assert f"{script}.py" in names
        # every console command goes through run_cli: main() returns a dict, which a
        # console script would hand to sys.exit as an error
        command = "worldmodels-" + script.replace("_", "-")
        assert f"{command} = {script}:cli" in commands
    assert not any(n.startswith(("tests/", "docs/", "runs/")) for n in names)


def test_installed_wheel_runs_from_another_directory(wheel: Path, tmp_path: Path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--quiet", "--target", str(target), str(wheel)],
                   check=True, env=_clean_env(), cwd=elsewhere)
    env = _clean_env(PYTHONPATH=str(target))

    # where each module comes from, and the presets load from the install
    where = subprocess.run([sys.executable, "-c", (
        "import importlib.util as u\n"
        "from worldmodels.config import load_config, resolve_config_path\n"
        f"for name in {['worldmodels', 'envs', 'agents', 'configs', *SCRIPTS]!r}:\n"
        "    print(u.find_spec(name).origin)\n"
        "print(resolve_config_path('carracing'))\n"
        f"for preset in {PRESETS!r}:\n"
        "    load_config(preset, ['quick'])\n")],
        env=env, cwd=elsewhere, capture_output=True, text=True, check=True)
    for line in where.stdout.splitlines():
        assert Path(line).is_relative_to(target), line

    # a script module, the documented way to run one without a checkout
    shown = subprocess.run([sys.executable, "-m", "train_vae", "--help-config"],
                           env=env, cwd=elsewhere, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "vae.epochs = " in shown.stdout

    # a console command: bad input is one line naming the installed presets, exit 2
    refused = subprocess.run([str(target / "bin" / "worldmodels-run"), "--config", "nope"],
                             env=env, cwd=elsewhere, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1
    assert f"known in {target / 'configs'}: carracing, common, doom_takecover" in refused.stderr
