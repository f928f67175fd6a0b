"""The Makefile's two entry points (`make repro`, `make test`) in a checkout whose path a shell would misparse:
a stand-in `python` in the virtual environment records how it was called, so the recipes run without installing
anything. Every recipe runs the environment's python itself (`python -m dvc`, not pip's `dvc` launcher script,
whose exec line breaks on a `"` or `$` in the path)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORDER = '#!/bin/sh\necho "python $* in $(pwd)" >> "$(dirname "$0")/../calls.log"\n'

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def checkout(tmp_path: Path) -> Path:
    """The Makefile and a pyproject.toml under a folder named with a space, both quotes and a $; a virtual
    environment whose python only records its calls (in .venv/calls.log)."""
    root = tmp_path / "my checkout" / "it's \"a\" $HOME"
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", root / "Makefile")
    (root / "pyproject.toml").write_text("")
    python = root / ".venv" / "bin" / "python"
    python.write_text(RECORDER)
    python.chmod(0o755)
    return root


def make(root: Path, target: str) -> list[str]:
    """Runs `make <target>` in root; returns the recorded calls, one line each."""
    env = {k: v for k, v in os.environ.items() if k not in ("VENV", "PYTHON", "EXTRAS")}
    result = subprocess.run(["make", "-C", str(root), target], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return (root / ".venv" / "calls.log").read_text().splitlines()


def test_make_repro_installs_then_runs_dvc_in_a_path_a_shell_would_misparse(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    assert make(root, "repro") == [f"python -m pip install --quiet --upgrade pip in {root}",
                                   f"python -m pip install --quiet -e .[cpu,dev] in {root}",
                                   f"python -m pipeline.cli.main check-params in {root}",
                                   f"python -m dvc repro in {root}"]
    assert (root / ".venv" / ".installed-cpu-dev").exists()
    # installed and pyproject.toml unchanged since: only dvc runs
    (root / ".venv" / "calls.log").unlink()
    assert make(root, "repro") == [f"python -m pipeline.cli.main check-params in {root}",
                                   f"python -m dvc repro in {root}"]


def test_make_test_runs_pytest_with_the_environments_python(tmp_path: Path) -> None:
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("the browser target would install Chromium")
    root = checkout(tmp_path)
    (root / ".venv" / ".installed-cpu-dev").touch()
    assert make(root, "test") == [f"python -m pytest -q in {root}"]
