"""dvc.yaml's code deps cannot drift from the code: every project module a stage can import (transitively, from
its `python -m stages.<name>` command) and every data file the code reads from the package (open_clip configs) is
covered by one of that stage's deps, a file or a folder above it. A module missing from a stage's deps would let
`dvc repro` call that stage up to date after a change that alters what it computes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model", "stages")
# Files the code reads at run time besides its modules: (module that reads them, path).
DATA_FILES = {"pipeline/embeddings.py": ("pipeline/clip_configs",)}


def module_file(name: str) -> Path | None:
    """The file of project module `name` (a.b.c), a package's __init__.py, or None when it is not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_of(path: Path) -> set[Path]:
    """The project files `path` imports directly, with the __init__.py of each package on the way (Python runs
    those too). Imports inside functions count: a stage may reach them."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            f = module_file(".".join(parts[:i]))
            if f is not None:
                found.add(f)
    return found


def reachable(start: Path) -> set[str]:
    """Repository-relative paths of every project file `start` reaches by imports, itself included, plus the data
    files those modules read."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(imports_of(path) - seen)
    rel = {p.relative_to(ROOT).as_posix() for p in seen}
    return rel | {d for m in rel for d in DATA_FILES.get(m, ())}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_reaches_is_one_of_its_deps(stage: str) -> None:
    spec = STAGES[stage]
    module = re.search(r"python -m (stages\.\w+)", spec["cmd"]).group(1)
    assert module == f"stages.{stage}", "a stage's module is named after its dvc.yaml entry"
    missing = sorted(p for p in reachable(module_file(module)) if not covered(p, spec["deps"]))
    assert not missing, f"dvc.yaml stage {stage!r} does not list: {missing}"


def test_the_walk_finds_imports_inside_functions_and_from_package_imports(tmp_path: Path) -> None:
    found = {p.relative_to(ROOT).as_posix() for p in imports_of(ROOT / "stages" / "train.py")}
    assert {"pipeline/training.py", "pipeline/__init__.py"} <= found
    assert covered("pipeline/clip_configs/x.json", ["pipeline/clip_configs"])
    assert not covered("pipeline/io.py", ["pipeline/io"])


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_params_value_reaches_a_shell_command(stage: str) -> None:
    """DVC runs each `cmd` through a shell: an interpolated `${...}` (a raw folder named `x;touch PWNED`) would run
    as code. Values reach the stages through params.yaml; the cmd holds only fixed, shell-safe paths."""
    cmd = STAGES[stage]["cmd"]
    assert "${" not in cmd, f"dvc.yaml stage {stage!r} interpolates a value into its cmd: {cmd!r}"
    assert re.fullmatch(r"[\w./ \n-]+", cmd), f"dvc.yaml stage {stage!r}: shell-special characters in {cmd!r}"
