"""`make repro`'s run time at two commits, side by side: the whole pipeline on the embedded default, from nothing.

    python benchmarks/repro_time.py                         # 1286ecc (before issue 13's profile) vs HEAD
    python benchmarks/repro_time.py --base <commit> --head <commit> --work /tmp/repro_time

Each commit is cloned into its own folder under --work (a fresh clone: an empty DVC cache, so no stage is restored
from a run cache) and `dvc repro` runs there with this checkout's virtual environment, one commit after the other,
as `make repro` runs it. DVC runs each stage as `python -m stages.<name>` from the clone's root, so the clone's
own `pipeline`/`model` packages come first on sys.path, ahead of the editable install of this checkout. Every
line DVC prints is timestamped as it arrives; a stage's time runs from its "Running stage" line to the next one
(the last: to the end of the run). Prints each stage's seconds at both commits, their ratio, the totals and the
default data's test AUC at each. A stage only one commit has shows `-`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def timed_repro(project: Path) -> tuple[dict[str, float], float]:
    """Run `dvc repro` in `project`; returns ({stage: seconds}, total seconds). Fails with DVC's last lines."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    stages: dict[str, float] = {}
    current, since = None, time.perf_counter()
    start = since
    tail: deque[str] = deque(maxlen=5)  # DVC's last lines, for the error
    with subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            tail.append(line.rstrip())
            found = STAGE_LINE.search(line)
            if found:
                now = time.perf_counter()
                if current is not None:
                    stages[current] = now - since
                current, since = found.group(1), now
    end = time.perf_counter()
    if proc.returncode:
        raise click.ClickException(f"dvc repro failed in {project}: {' | '.join(tail)}")
    if current is not None:
        stages[current] = end - since
    return stages, end - start


def git(*args: str) -> str:
    """`git args...`'s stdout; a failure is a one-line error with git's last line, not a traceback."""
    try:
        return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        said = e.stderr.strip().splitlines()
        raise click.ClickException(f"git {' '.join(args)}: {said[-1] if said else f'exit {e.returncode}'}") from None


def evaluate_auc(project: Path) -> float:
    """The evaluate stage's test AUC (data/metrics/evaluate.json's `auc`, at every commit since the first)."""
    return float(json.loads((project / "data" / "metrics" / "evaluate.json").read_text())["auc"])


@click.command()
@click.option("--base", default="1286ecc", show_default=True, help="the earlier commit")
@click.option("--head", default="HEAD", show_default=True, help="the later commit")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path, resolve_path=True), default=None,
              help="where the two clones go (default: a temporary folder)")
def main(base: str, head: str, work: Path | None) -> None:
    work = work or Path(tempfile.mkdtemp(prefix="repro_time_"))  # absolute: never read by git as an option
    results = {}
    for name, commit in (("base", base), ("head", head)):
        sha = git("-C", str(ROOT), "rev-parse", "--short", "--verify", "--end-of-options",
                  f"{commit}^{{commit}}").strip()
        project = work / f"{name}-{sha}"
        if project.exists():
            raise click.ClickException(f"{project} exists: pass another --work")
        git("clone", "-q", "--", str(ROOT), str(project))
        git("-C", str(project), "checkout", "-q", sha)
        click.echo(f"{name} {sha}: dvc repro in {project} ...", err=True)
        stages, total = timed_repro(project)
        results[name] = (sha, stages, total, evaluate_auc(project))
    (bsha, bst, btot, bauc), (hsha, hst, htot, hauc) = results["base"], results["head"]
    click.echo(f"| stage | {bsha} s | {hsha} s | ratio |\n|---|---|---|---|")
    for stage in list(bst) + [s for s in hst if s not in bst]:
        b, h = bst.get(stage), hst.get(stage)
        cells = [f"{b:.1f}" if b is not None else "-", f"{h:.1f}" if h is not None else "-",
                 f"{h / b:.2f}" if b and h is not None else "-"]
        click.echo(f"| {stage} | " + " | ".join(cells) + " |")
    click.echo(f"| **dvc repro** | {btot:.1f} | {htot:.1f} | {htot / btot:.2f} |")
    click.echo(f"test AUC: {bsha} {bauc:.4f}, {hsha} {hauc:.4f}")


if __name__ == "__main__":
    main()
