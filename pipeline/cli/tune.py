"""Hyperparameter search over the train stage, as DVC experiments (`mmctr tune`).

The search space is params.yaml's `tune` section (`TuneConfig`): one list of candidate values per tuned train key.
`sample_trials` draws `tune.trials` distinct combinations with a seeded RNG, the first being the current train
values, and checks every candidate and every combination against `TrainConfig` before anything runs. Trial k of
search s is the experiment `tune-<s>-<k>`:

    dvc exp run --temp -n tune-<s>-<k> -S train.<key>=<value> ... train

DVC runs it in a temporary copy of the workspace up to the train stage only: the upstream stages come from the
cache, and `evaluate` never runs, so no trial ever scores the test split. `trial_records` reads `dvc exp show --json`
back into one record per trial; `best_trial` picks the highest valid AUC (ties: the lower valid logloss, then the
earlier trial, so the current values win a tie) and `mmctr tune` applies it (`apply_trial`). Every search gets
a new number s, so its names never collide with an earlier search's on the same commit.

Cost: one train-stage run per trial, one after another (the first is free when the workspace's train stage is up to
date: DVC finds nothing to rerun).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import math
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from pipeline.cli.compare import TRAIN_METRICS, _metric, _walk, dig, run_failed
from pipeline.core.config import (
    PARAMS_FILE,
    ParamsError,
    TrainConfig,
    TuneConfig,
    from_dict,
    load_section,
    params_dict,
    parse_yaml,
    read_params,
    require,
)
from pipeline.core.io import atomic_path

PREFIX = "tune"
LOCK_FILE = "dvc.lock"
# The tuned train keys: every TuneConfig field that lists candidates.
TUNED: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TuneConfig) if f.name not in ("trials", "seed"))


_TRAIN_DEFAULTS = params_dict(TrainConfig())


class TuneError(Exception):
    """A DVC command of the search failed; the message is one line."""


# ------------------------------------------------------------------------------------------------ the trials


def set_value(value: Any) -> str:
    """The text of `value` in `-S train.<key>=<text>`. DVC parses it and writes the number back into params.yaml as
    Python's repr (0.0001, 1e-05), so the repr is what the stage will read."""
    return repr(float(value)) if isinstance(value, float) else str(value)


def _check(train_section: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """TrainConfig of the train section with `overrides`; a failure names the tune key that caused it."""
    try:
        return from_dict(TrainConfig, {**train_section, **overrides}, "train")
    except ParamsError as e:
        key = str(e).split(":", 1)[0].removeprefix("train.")
        if key in overrides:
            raise ParamsError(f"tune.{key}: candidate {overrides[key]!r} is not a valid train.{key} ({e})") from None
        if len(overrides) == 1:
            ((key, value),) = overrides.items()
            raise ParamsError(f"tune.{key}: candidate {value!r} makes the train section invalid ({e})") from None
        shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise ParamsError(f"tune: the combination {shown} is not a valid train section ({e})") from None


def sample_trials(cfg: TuneConfig, train_section: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials of the search: {tuned train key: value} per trial, the current train values first, then distinct
    grid combinations (none equal to the current values) drawn with `cfg.seed`. There are
    min(cfg.trials, number of distinct combinations) trials, the grid counting the current values once. The same
    cfg gives the same trials. Raises ParamsError naming `tune.<key>` when a candidate, alone or combined, does not
    make a valid train section (or `train.<key>` when the train section itself is invalid). A longer search starts
    with the trials of a shorter one."""
    base = from_dict(TrainConfig, train_section, "train")
    flat = params_dict(base)
    current = {key: flat[key] for key in TUNED}
    candidates = {key: getattr(cfg, key) for key in TUNED}
    for key, values in candidates.items():
        for value in values:
            _check(train_section, {key: value})
            # `dvc exp run -S train.<key>=...` changes a key that params.yaml states, and refuses to add one.
            require(key in train_section or value == current[key], f"tune.{key}",
                    f"candidate {value!r} needs train.{key} in the train section (`dvc exp run -S` changes only the "
                    f"keys a params file states): add `{key}: {set_value(current[key])}` to it")
    sizes = [len(values) for values in candidates.values()]
    grid = math.prod(sizes)

    def combination(index: int) -> dict[str, Any]:  # mixed-radix digits of index, last key fastest
        combo = {}
        for key, size in reversed(list(zip(TUNED, sizes))):
            index, digit = divmod(index, size)
            combo[key] = candidates[key][digit]
        return {key: combo[key] for key in TUNED}

    in_grid = all(current[key] in candidates[key] for key in TUNED)
    count = min(cfg.trials, grid + (0 if in_grid else 1))
    # Draw grid points one at a time and skip repeats: the draws do not depend on `count`, so a longer search
    # starts with the trials of a shorter one (same seed).
    rng, seen, others = random.Random(cfg.seed), set(), []
    while len(others) < count - 1:
        index = rng.randrange(grid)
        if index not in seen and (combo := combination(index)) != current:
            others.append(combo)
        seen.add(index)
    for trial in others:
        _check(train_section, trial)
    return [current, *others]


def load_trials(params_path: str | Path, trials: int | None = None) -> list[dict[str, Any]]:
    """`sample_trials` of the params file's tune and train sections; `trials` overrides tune.trials. The file's
    layout is checked up front too: the winner's values are written back line by line (`with_train_values`), and a
    layout that edit cannot handle (a quoted key, a value on a line of its own) would otherwise show only after the
    whole search."""
    cfg = load_section(params_path, "tune", TuneConfig)
    if trials is not None:
        cfg = dataclasses.replace(cfg, trials=trials)
    data = read_params(params_path)
    if "train" not in data:
        raise ParamsError(f"train: missing section in {params_path}")
    plan, text = sample_trials(cfg, data["train"]), Path(params_path).read_text()
    try:
        for trial in plan:
            with_train_values(text, trial)
    except ValueError as e:
        raise ParamsError(f"{params_path}: {e}, as a search's winner is applied: write each train key as "
                          "`  key: value` on a line of its own") from None
    return plan


def session_number(existing: Iterable[str]) -> int:
    """The number s of a new search: one more than the highest `tune-<s>-<k>` among the existing experiment names."""
    used = [int(m.group(1)) for name in existing if (m := re.fullmatch(rf"{PREFIX}-(\d+)-\d+", name.strip()))]
    return max(used, default=0) + 1


def trial_names(session: int, count: int) -> list[str]:
    return [f"{PREFIX}-{session}-{k}" for k in range(1, count + 1)]


def trial_command(name: str, trial: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """argv of the trial: `dvc exp run --temp -n <name> -S train.<key>=<value> ... train`, setting only the values
    that differ from the current ones (the first trial sets none)."""
    cmd = ["dvc", "exp", "run", "--temp", "-n", name]
    for key in TUNED:
        if trial[key] != current[key]:
            cmd += ["-S", f"train.{key}={set_value(trial[key])}"]
    return [*cmd, "train"]


def stale_stages(status: dict[str, Any]) -> list[str]:
    """The stages above train that `dvc status --json train` reports as changed: every trial would rerun them."""
    return sorted(stage for stage in status if stage != "train")


# ------------------------------------------------------------------------------------------------ the results


def trial_records(exp_show: Any, names: list[str]) -> list[dict[str, Any]]:
    """`dvc exp show --json` -> one record per finished trial among `names`, in the order of `names`: {name, rev
    (its experiment commit), the tuned train values (TrainConfig's default where params.yaml leaves a key out, as
    the stage does), valid_auc, valid_logloss, best_epoch} (valid metrics from train's dvclive summary; a missing
    value is None). Other experiments and failed runs are ignored; a name seen twice keeps its newest run."""
    found: dict[str, dict[str, Any]] = {}
    stamps: dict[str, str] = {}
    for node in _walk(exp_show):
        name = node.get("name") or node["data"].get("name")
        if name not in names or run_failed(node):
            continue
        stamp = node["data"].get("timestamp") or ""
        if name in stamps and stamp < stamps[name]:
            continue
        params = dig(node["data"], "params", PARAMS_FILE, "data", "train")
        valid = _metric(node["data"], TRAIN_METRICS)
        stamps[name] = stamp
        rev = str(node.get("rev") or node["data"].get("rev"))
        found[name] = {"name": name, "rev": rev, **{key: params.get(key, _TRAIN_DEFAULTS.get(key)) for key in TUNED},
                       **{key: valid.get(key) for key in ("valid_auc", "valid_logloss", "best_epoch")}}
    return [found[name] for name in names if name in found]


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def ranked(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with a valid AUC, best first: higher valid AUC, then lower valid logloss, then the earlier trial
    (the order of `records`, so the current values win a tie). Never looks at test metrics."""
    scored = [(i, r) for i, r in enumerate(records) if _finite(r.get("valid_auc"))]
    scored.sort(key=lambda ir: (-ir[1]["valid_auc"],
                                ir[1]["valid_logloss"] if _finite(ir[1].get("valid_logloss")) else math.inf, ir[0]))
    return [r for _, r in scored]


def best_trial(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of the highest valid AUC (ties as in `ranked`); TuneError when no trial has one."""
    order = ranked(records)
    if not order:
        raise TuneError("no trial finished with a valid AUC: nothing to pick")
    return order[0]


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4f}" if math.isfinite(x) else "-"
    return "-" if x is None else str(x)


def results_table(records: list[dict[str, Any]], current: str | None = None) -> str:
    """A Markdown table of the trials, best valid AUC first (`current` names the trial of the current values)."""
    head = ["trial", *TUNED, "valid AUC", "valid logloss", "best epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ranked(records):
        label = r["name"] + (" (current)" if r["name"] == current else "")
        values = [f"{r[k]:g}" if isinstance(r[k], float) else _cell(r[k]) for k in TUNED]
        metrics = [_cell(r.get(k)) for k in ("valid_auc", "valid_logloss", "best_epoch")]
        lines.append("| " + " | ".join([label, *values, *metrics]) + " |")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """`42s`, `8m05s`, `1h36m`."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def with_train_values(text: str, values: dict[str, Any]) -> str:
    """The params text with each `train.<key>: value` of `values` set in place: a key's own line keeps its
    indentation and comment, the rest of the file (its layout, flow lists, comments) is unchanged; a key the train
    section does not write gets a line of its own after `train:`. ValueError if the result does not read back as
    the text's values with `values` set (a layout this line-wise edit cannot handle)."""
    lines, section, found = text.splitlines(keepends=True), None, set()
    header = None
    for i, line in enumerate(lines):
        if re.match(r"[^\s#]", line):
            section = line.split(":", 1)[0]
            header = i if section == "train" else header
        elif section == "train" and (m := re.match(r"(\s+)(\w+)(:\s*)\S+(.*)", line, re.DOTALL)):
            if m.group(2) in values:
                lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)}{set_value(values[m.group(2)])}{m.group(4)}"
                found.add(m.group(2))
    missing = [f"  {k}: {set_value(v)}\n" for k, v in values.items() if k not in found]
    if missing and header is not None:
        lines[header + 1:header + 1] = missing
    out = "".join(lines)
    want = parse_yaml(text)
    want["train"] = {**want.get("train", {}), **values}
    try:
        same = parse_yaml(out) == want
    except yaml.YAMLError:
        same = False
    if not same:
        raise ValueError(f"could not set {', '.join(f'train.{k}' for k in values)} in the params text in place")
    return out


# ------------------------------------------------------------------------------------------------ running DVC


def _error_line(output: str) -> str:
    """The line of a failed command's output that says why: the stage's own `Error: ...`, else DVC's last
    `ERROR: ...`, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error:"):
            return line
    errors = [i for i, line in enumerate(lines) if line.startswith("ERROR:")]
    if not errors:
        return (lines or ["no output"])[-1]
    # DVC lists what an error is about on the lines after it ("Checkout failed for following targets:")
    return " ".join(lines[errors[-1]:]) if lines[errors[-1]].endswith(":") else lines[errors[-1]]


def run_dvc(cmd: list[str]) -> str:
    """Run a DVC (or git) command (`["dvc", ...]`, as shown to the user) and return its stdout; TuneError with one
    line when it cannot start or fails. DVC runs as `<this python> -m dvc` when this interpreter has it: pip's `dvc`
    launcher cannot start from an environment whose path holds a `"` or `$`, and it may be another environment's."""
    argv = [sys.executable, "-m", "dvc", *cmd[1:]] if cmd[0] == "dvc" and importlib.util.find_spec("dvc") else cmd
    try:
        proc = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise TuneError(f"{cmd[0]}: command not found (activate the project's environment)") from None
    if proc.returncode != 0:
        words = " ".join(itertools.takewhile(lambda a: not a.startswith("-"), cmd))
        raise TuneError(f"`{words}` failed: {_error_line(proc.stdout + proc.stderr)}")
    return proc.stdout


def show_records(names: list[str]) -> list[dict[str, Any]]:
    """The trials' records from `dvc exp show --json` (the experiments of the current commit)."""
    return trial_records(json.loads(run_dvc(["dvc", "exp", "show", "--json"])), names)


def run_trials(commands: list[tuple[str, list[str]]], first_is_free: bool,
               echo: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run the trials one after another, with one line per trial as it starts and as it ends (its valid AUC, its
    time, the time so far and an estimate of the time left). A failed trial is reported and skipped. Returns the
    records of the finished trials, in trial order."""
    names = [name for name, _ in commands]
    start, trained = time.monotonic(), []
    for k, (name, cmd) in enumerate(commands, start=1):
        sets = " ".join(a.removeprefix("train.") for a in cmd if a.startswith("train.")) or "the current values"
        echo(f"[{k}/{len(commands)}] {name}: {sets} ...")
        t0 = time.monotonic()
        try:
            run_dvc(cmd)
        except TuneError as e:
            echo(f"[{k}/{len(commands)}] {name} failed after {duration(time.monotonic() - t0)}: {e}")
            continue
        took = time.monotonic() - t0
        if k > 1 or not first_is_free:
            trained.append(took)
        record = next((r for r in show_records(names) if r["name"] == name), {})
        left = len(commands) - k
        eta = f", about {duration(left * sum(trained) / len(trained))} left" if left and trained else ""
        echo(f"[{k}/{len(commands)}] {name}: valid AUC {_cell(record.get('valid_auc'))} in {duration(took)} "
             f"(elapsed {duration(time.monotonic() - start)}{eta})")
    return show_records(names)


def apply_trial(record: dict[str, Any], params_path: str | Path) -> None:
    """Make the trial the workspace's result without training again: its tuned values written into params.yaml in
    place (`with_train_values`, atomically, so layout and comments stay); from its experiment commit, dvc.lock
    and the git-tracked outputs of the stages whose dvc.lock entries it changed (train's metrics and curves), and
    nothing else (a file the user edited while the search ran is left alone); then `dvc checkout` of those stages
    brings their cached outputs (the model, the checked params) from the cache, where the trial's run put them;
    `dvc status` of those stages must then be clean.

    Not `dvc repro train`: DVC's run cache keeps no run of a stage with an uncached output that is neither a metric
    nor a plot, as train's dvclive folder is, so it would train the winner again (and, where training is not
    bit-for-bit repeatable, write another model than the one that won). Not `dvc exp apply`: it checks out every
    output the trial's commit names, and fails when one is not in the cache (evaluate's, when only `dvc repro
    train` ran before the search). Whatever fails or is interrupted (Ctrl-C included), the files go back to what
    they were and those stages' outputs are checked out again, so the workspace is the one the search started
    from."""
    params_path = Path(params_path)
    rev = record["rev"]
    before = _lock_stages(Path(LOCK_FILE).read_text() if Path(LOCK_FILE).is_file() else "")
    theirs = _lock_stages(run_dvc(["git", "show", f"{rev}:./{LOCK_FILE}"]))
    stages = sorted(name for name, entry in theirs.items() if before.get(name) != entry)
    changed = [LOCK_FILE, *_tracked_outputs(rev, [o["path"] for name in stages for o in theirs[name].get("outs", [])])]
    saved = {Path(p): (Path(p).read_bytes() if Path(p).is_file() else None) for p in [params_path, *changed]}
    checked_out = False
    try:
        values = {k: record[k] for k in TUNED if record.get(k) is not None}
        _write_bytes(params_path, with_train_values(params_path.read_text(), values).encode())
        run_dvc(["git", "--literal-pathspecs", "restore", f"--source={rev}", "--worktree", "--", *changed])
        if stages:
            checked_out = True
            run_dvc(["dvc", "checkout", *stages])
            if stale := json.loads(run_dvc(["dvc", "status", "--json", *stages]) or "{}"):
                raise TuneError(f"{record['name']}: its outputs do not match its params after the checkout "
                                f"({', '.join(sorted(stale))} changed); nothing was applied")
    except BaseException:
        for path, data in saved.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                _write_bytes(path, data)
        if checked_out:
            run_dvc(["dvc", "checkout", *stages])
        raise


def _tracked_outputs(rev: str, outs: list[str]) -> list[str]:
    """The files under output paths `outs` (relative to the current folder) that git tracks in commit `rev` or in
    the index, sorted: an uncached output (a metrics file, dvclive's folder) is in git; a cached one is not."""
    if not outs:
        return []
    listed = run_dvc(["git", "--literal-pathspecs", "ls-tree", "-r", "--name-only", "-z", rev, "--", *outs])
    listed += run_dvc(["git", "--literal-pathspecs", "ls-files", "-z", "--", *outs])
    return sorted({p for p in listed.split("\0") if p})


def _lock_stages(text: str) -> dict[str, Any]:
    """The stage entries of a dvc.lock's text ({} for none)."""
    lock = yaml.safe_load(text) if text else None
    return lock.get("stages", {}) if isinstance(lock, dict) else {}


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
