"""benchmarks/repro_time.py and benchmarks/scale.py take their --work folder as a path, whatever it looks like: git
never reads it as an option, a failing git command is a one-line error, and a relative folder reaches the stages
(which run with another cwd) as an absolute one. No pipeline runs: the stage runners are replaced."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from benchmarks import repro_time

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_repo(tmp_path: Path) -> tuple[Path, str]:
    """A one-commit git repository standing in for this checkout; (its root, the commit's short sha)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "README").write_text("x\n")
    commit = ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]
    for args in (["init", "-q"], ["add", "README"], commit):
        subprocess.run(["git", *args], cwd=src, check=True)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, check=True, capture_output=True,
                         text=True).stdout.strip()
    return src, sha


@pytest.fixture
def no_repro(monkeypatch: pytest.MonkeyPatch, tiny_repo: tuple[Path, str]) -> list[Path]:
    """repro_time against tiny_repo with dvc repro replaced: the list of projects it would have run in."""
    projects: list[Path] = []
    monkeypatch.setattr(repro_time, "ROOT", tiny_repo[0])
    monkeypatch.setattr(repro_time, "timed_repro", lambda project: projects.append(project) or ({"train": 1.0}, 1.0))
    monkeypatch.setattr(repro_time, "evaluate_auc", lambda project: 0.5)
    return projects


@pytest.mark.parametrize("work", ["-w", "--template={evil}"])
def test_repro_time_clones_into_a_work_folder_that_looks_like_a_git_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_repo: tuple[Path, str], no_repro: list[Path],
        work: str) -> None:
    """`--work -w` and `--work=--template=DIR` are folders under the cwd: both commits are cloned there, and git
    does not take DIR as a template (whose post-checkout hook would run)."""
    _, sha = tiny_repo
    evil = tmp_path / "evil"
    hook = evil / f"base-{sha}" / "hooks" / "post-checkout"
    hook.parent.mkdir(parents=True)
    hook.write_text(f"#!/bin/sh\ntouch {tmp_path / 'HOOK_RAN'}\n")
    hook.chmod(0o755)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    work = work.format(evil=evil)
    result = CliRunner().invoke(repro_time.main, ["--base", "HEAD", f"--work={work}"])
    assert result.exit_code == 0, result.output
    assert no_repro == [cwd / work / f"{name}-{sha}" for name in ("base", "head")]
    assert all((project / "README").is_file() for project in no_repro)
    assert not (tmp_path / "HOOK_RAN").exists()


@pytest.mark.parametrize("base", ["no-such-commit", "--all"])
def test_repro_time_names_a_commit_git_cannot_find_in_one_line(tmp_path: Path, no_repro: list[Path],
                                                                base: str) -> None:
    result = CliRunner().invoke(repro_time.main, ["--base", base, "--work", str(tmp_path / "w")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"Error: git -C {repro_time.ROOT} rev-parse --short --verify --end-of-options {base}^{{commit}}: "
        "fatal: Needed a single revision"]
    assert no_repro == []


def test_scale_gives_the_stages_absolute_paths_from_a_relative_work(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--work w from another cwd: every path the first stage gets, and params.yaml's raw_dir, are absolute and
    there (the stages run with cwd = the work folder, where `w/raw` is not)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports its siblings as `rss`, `variants`
    import scale

    calls = []

    def first_stage_only(name: str, args: list[str], env: dict[str, str], work: Path, log: Path) -> None:
        calls.append((name, args, work))
        raise click.ClickException("stopped after the first stage's arguments")

    monkeypatch.setattr(scale, "run_stage", first_stage_only)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(scale.main, ["--users", "40", "--items", "30", "--work", "w"])
    assert "stopped after the first stage's arguments" in result.output
    [(name, args, work)] = calls
    assert name == "build_sequences" and work == tmp_path.resolve() / "w"
    paths = [Path(a) for a in args if not a.startswith("--")]
    assert paths and all(p.is_absolute() and p.is_relative_to(work) for p in paths)
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert Path(params["data"]["raw_dir"]) == work / "raw" and (work / "raw").is_dir()
