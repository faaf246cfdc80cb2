"""The diagnostic tools refuse bad input in one line, naming it, and every script in
tools/ and benchmarks/ imports the checkout it is run from."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.average_controllers import average
from worldmodels.errors import InputError


def test_average_controllers_names_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(InputError, match="not_a_run.*no trained M"):
        average(tmp_path / "out", [tmp_path / "not_a_run"])
    assert not (tmp_path / "out").exists()


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "tools").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
REPO_PACKAGES = {"worldmodels", "agents", "envs", "configs", "tools", "benchmarks"}


def _imported_roots(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return {node.module.split(".")[0]}
    return set()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_puts_its_checkout_first_on_the_path(script):
    """`python tools/x.py` puts tools/ first on sys.path, not the checkout: without the
    insert, a second clone's script would import whichever copy pip installed."""
    body = ast.parse(script.read_text()).body
    inserts = [i for i, node in enumerate(body) if "sys.path.insert(0" in ast.unparse(node)]
    repo_imports = [i for i, node in enumerate(body) if _imported_roots(node) & REPO_PACKAGES]
    assert inserts, f"{script}: no sys.path.insert(0, <checkout>)"
    assert not repo_imports or inserts[0] < repo_imports[0], \
        f"{script}: imports a repository package before putting its checkout on sys.path"


def test_a_script_imports_its_own_checkout_over_another_copy(tmp_path):
    """An importable `worldmodels` elsewhere on the path (an installed copy of another
    clone) does not shadow the checkout the script is run from."""
    shadow = tmp_path / "worldmodels"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the other copy was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "score_vae.py"), "--help"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
