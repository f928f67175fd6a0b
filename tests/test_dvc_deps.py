"""dvc.yaml's code deps cannot drift from the code: every project module a stage can import (transitively, from
its `python -m stages.<name>` command) and every data file the code reads from the package (open_clip configs) is
covered by one of that stage's deps, a file or a folder above it. A module missing from a stage's deps would let
`dvc repro` call that stage up to date after a change that alters what it computes."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model", "stages")
# Files the code reads at run time besides its modules: (module that reads them, path).
DATA_FILES = {"pipeline/extract/image.py": ("pipeline/extract/clip_configs",)}


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


def reachable(module: str) -> set[str]:
    """Repository-relative paths of every project file module `module` (a.b.c) reaches by imports, itself and its
    packages' __init__.py included (`python -m stages.x` runs stages/__init__.py first), plus the data files those
    modules read."""
    parts = module.split(".")
    seen, todo = set(), [module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
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
    missing = sorted(p for p in reachable(module) if not covered(p, spec["deps"]))
    assert not missing, f"dvc.yaml stage {stage!r} does not list: {missing}"


def test_the_walk_finds_imports_inside_functions_and_from_package_imports(tmp_path: Path) -> None:
    found = {p.relative_to(ROOT).as_posix() for p in imports_of(ROOT / "stages" / "train.py")}
    assert {"pipeline/training/loop.py", "pipeline/training/__init__.py", "pipeline/__init__.py"} <= found
    assert covered("pipeline/extract/clip_configs/x.json", ["pipeline/extract"])
    assert not covered("pipeline/core/io.py", ["pipeline/cor"])


CODE_ROOTS = ("pipeline/", "model", "stages/")


def code_deps(stage: str) -> list[str]:
    return [d for d in STAGES[stage]["deps"] if d.startswith(CODE_ROOTS)]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_whole_folders_the_stage_reaches(stage: str) -> None:
    """Library code is listed by folder (pipeline/<phase>, model), never file by file (a hand list drifts), and no
    folder is listed that the stage never imports from: a change there would rerun the stage for nothing."""
    reached = reachable(f"stages.{stage}")
    for dep in code_deps(stage):
        if dep.startswith("stages/") or dep == "pipeline/__init__.py":
            assert dep in reached, f"dvc.yaml stage {stage!r} lists {dep!r}, which it does not import"
            continue
        assert (ROOT / dep).is_dir(), f"dvc.yaml stage {stage!r} lists the file {dep!r}: list its folder"
        assert any(covered(p, [dep]) for p in reached), f"dvc.yaml stage {stage!r} lists {dep!r} but never reaches it"


def stages_listing(folder: str) -> set[str]:
    return {name for name in STAGES if folder in code_deps(name)}


def test_a_change_reruns_exactly_the_stages_of_its_phase() -> None:
    """What a code change reruns, by folder: core every stage; a phase folder its own stages (and, through their
    outputs, what follows them); the CLI none."""
    assert stages_listing("pipeline/core") == set(STAGES)
    assert stages_listing("pipeline/extract") == {"extract_text", "extract_image"}
    assert stages_listing("pipeline/sequences") == {"build_sequences"}
    assert stages_listing("pipeline/itememb") == {"fit_pca", "embedding_report", "quantize"}
    assert stages_listing("pipeline/training") == stages_listing("model") == {"train", "evaluate"}
    assert stages_listing("pipeline/cli") == set()
    assert not stages_listing("pipeline/sources") & {"check_params", "train"}


def test_the_phases_import_only_the_core_and_sources() -> None:
    """The layering that keeps the folder deps small: a phase imports pipeline/core and, where it reads raw
    inputs, pipeline/sources, never another phase; model/ imports the core only; sources/ imports the core only."""
    allowed = {"core": {"core"}, "sources": {"core", "sources"}, "model": {"core"}}
    for folder in ("core", "sources", "extract", "itememb", "sequences", "training", "model"):
        base = ROOT / "model" if folder == "model" else ROOT / "pipeline" / folder
        mine = allowed.get(folder, {"core", "sources", folder})
        for path in sorted(base.glob("*.py")):
            for dep in imports_of(path):
                rel = dep.relative_to(ROOT).parts
                if rel[0] == "pipeline" and len(rel) > 2:
                    assert rel[1] in mine, f"{path.relative_to(ROOT)} imports {dep.relative_to(ROOT)}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_params_value_reaches_a_shell_command(stage: str) -> None:
    """DVC runs each `cmd` through a shell: an interpolated `${...}` (a raw folder named `x;touch PWNED`) would run
    as code. Values reach the stages through params.yaml; the cmd holds only fixed, shell-safe paths."""
    cmd = STAGES[stage]["cmd"]
    assert "${" not in cmd, f"dvc.yaml stage {stage!r} interpolates a value into its cmd: {cmd!r}"
    assert re.fullmatch(r"[\w./ \n-]+", cmd), f"dvc.yaml stage {stage!r}: shell-special characters in {cmd!r}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_describes_itself_in_its_help(stage: str) -> None:
    """`python -m stages.<name> --help` starts with the stage's one-line description (its module docstring)."""
    from click.testing import CliRunner

    module = importlib.import_module(f"stages.{stage}")
    result = CliRunner().invoke(module.main, ["--help"])
    assert result.exit_code == 0
    assert f"Stage {stage}:" in result.output
