"""`mmctr tune`: the trials drawn from params.yaml's tune section, their DVC commands, the results read back from
`dvc exp show --json` (shaped as DVC 3 writes it), the pick by valid AUC, and one whole search on the tiny profile
in a temporary git+DVC repository."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import tune as tune_module
from pipeline.cli.main import main as mmctr
from pipeline.cli.tune import (
    TUNED,
    TuneError,
    _error_line,
    apply_trial,
    best_trial,
    load_trials,
    ranked,
    results_table,
    run_dvc,
    sample_trials,
    session_number,
    set_value,
    trial_command,
    trial_names,
    trial_records,
    with_train_values,
)
from pipeline.core.config import (
    ParamsError,
    TrainConfig,
    TuneConfig,
    load_section,
    params_dict,
    parse_yaml,
)
from tests.conftest import reproduced_copy, stage_env

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tiny_params.yaml"


def _train() -> dict[str, Any]:
    """params.yaml's train section with these tests' own current values of the tuned keys."""
    return {**yaml.safe_load((ROOT / "params.yaml").read_text())["train"], "learning_rate": 0.002,
            "batch_size": 1024, "embedding_regularizer": 0.0, "net_regularizer": 0.0, "net_dropout": 0.1,
            "embedding_dim": 16}


def _cfg(**values: Any) -> TuneConfig:
    base = {"trials": 5, "seed": 0, "learning_rate": (0.001, 0.002, 0.004), "batch_size": (512, 1024),
            "embedding_regularizer": (0.0, 0.001), "net_regularizer": (0.0,), "net_dropout": (0.0, 0.1),
            "embedding_dim": (16, 32)}
    return TuneConfig(**{**base, **values})


def _grid(cfg: TuneConfig) -> int:
    return math.prod(len(getattr(cfg, key)) for key in TUNED)


# ------------------------------------------------------------------------------------------------ the trials


@pytest.mark.parametrize("path", [ROOT / "params.yaml", TINY], ids=["params.yaml", "tiny_params.yaml"])
def test_the_params_files_tune_sections_are_complete_and_valid(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    cfg = load_section(path, "tune", TuneConfig)
    assert set(raw["tune"]) == {f.name for f in dataclasses.fields(TuneConfig)}  # every value stated
    assert set(TUNED) == {"learning_rate", "batch_size", "embedding_regularizer", "net_regularizer", "net_dropout",
                          "embedding_dim"}
    trials = sample_trials(cfg, raw["train"])  # every candidate and every trial is a valid train section
    assert len(trials) == min(cfg.trials, _grid(cfg) + 1)


def test_sampling_is_deterministic_distinct_within_the_grid_and_starts_with_the_current_values() -> None:
    train, cfg = _train(), _cfg(trials=9)
    trials = sample_trials(cfg, train)
    assert trials == sample_trials(cfg, train)  # same seed, same trials
    assert trials != sample_trials(dataclasses.replace(cfg, seed=1), train)
    assert len(trials) == 9
    assert trials[0] == {key: train[key] for key in TUNED}
    assert len({tuple(t.values()) for t in trials}) == 9
    for trial in trials[1:]:
        assert list(trial) == list(TUNED)
        assert all(trial[key] in getattr(cfg, key) for key in TUNED)
    longer = sample_trials(dataclasses.replace(cfg, trials=_grid(cfg) + 1), train)
    assert longer[:9] == trials  # a longer search starts with the trials of a shorter one


def test_sampling_never_exceeds_the_grid() -> None:
    train = _train()  # learning_rate 0.002, batch_size 1024, net_dropout 0.1, embedding_dim 16: inside this grid
    inside = _cfg(trials=1000, learning_rate=(0.002, 0.004), batch_size=(1024,), embedding_regularizer=(0.0,),
                  net_regularizer=(0.0,), net_dropout=(0.1,), embedding_dim=(16, 32))
    trials = sample_trials(inside, train)
    assert len(trials) == _grid(inside) == 4
    assert {(t["learning_rate"], t["embedding_dim"]) for t in trials} == {(0.002, 16), (0.002, 32), (0.004, 16),
                                                                          (0.004, 32)}
    outside = dataclasses.replace(inside, learning_rate=(0.001, 0.004))  # the current 0.002 is not a candidate
    trials = sample_trials(outside, train)
    assert len(trials) == _grid(outside) + 1 and trials[0]["learning_rate"] == 0.002
    assert len(sample_trials(dataclasses.replace(inside, trials=1), train)) == 1


@pytest.mark.parametrize(("key", "value", "named"), [
    ("learning_rate", -0.001, "tune.learning_rate"),  # TrainConfig: must be > 0
    ("net_dropout", 1.5, "tune.net_dropout"),  # must be in [0, 1)
    ("embedding_dim", 0, "tune.embedding_dim"),
    ("batch_size", -8, "tune.batch_size"),
    ("net_regularizer", -1.0, "tune.net_regularizer"),
])
def test_a_bad_candidate_is_one_line_naming_its_tune_key(key: str, value: Any, named: str) -> None:
    cfg = dataclasses.replace(_cfg(), **{key: (*getattr(_cfg(), key)[:1], value)})
    with pytest.raises(ParamsError) as err:
        sample_trials(cfg, _train())  # whether or not the draw picks it
    assert str(err.value).startswith(f"{named}: ") and "\n" not in str(err.value)


def test_a_candidate_below_min_lr_names_the_tune_key() -> None:
    train = {**_train(), "min_lr": 0.001}
    with pytest.raises(ParamsError, match=r"^tune\.learning_rate: candidate 0\.0005 makes the train section "
                                          r"invalid \(train\.min_lr: "):
        sample_trials(_cfg(learning_rate=(0.002, 0.0005)), train)


def test_a_key_the_train_section_leaves_out_can_only_keep_its_default() -> None:
    """`dvc exp run -S` refuses to add a key: a candidate other than the default needs the key stated."""
    train = {k: v for k, v in _train().items() if k != "net_regularizer"}
    default = TrainConfig().net_regularizer
    other = 0.01 if default != 0.01 else 0.02
    assert sample_trials(_cfg(net_regularizer=(default,)), train)  # the default: no trial sets it
    with pytest.raises(ParamsError, match=rf"^tune\.net_regularizer: candidate {other} needs train\.net_regularizer in "
                                          rf"the train section .*: add `net_regularizer: {default}` to it$"):
        sample_trials(_cfg(net_regularizer=(default, other)), train)


def test_the_tune_section_is_typed_and_checked(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for values, named in (({"batch_size": [512, 512]}, "tune.batch_size: lists 512 more than once"),
                          ({"net_dropout": []}, "tune.net_dropout: must list at least one"),
                          ({"learning_rate": 0.001}, "tune.learning_rate: must be a list"),
                          ({"embedding_dim": [16.0]}, "tune.embedding_dim[0]: must be an integer"),
                          ({"trials": 0}, "tune.trials: must be >= 1"),
                          ({"dropout": [0.1]}, "tune.dropout: unknown key")):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "tune": {**params["tune"], **values}}))
        with pytest.raises(ParamsError) as err:
            load_section(tmp_path / "params.yaml", "tune", TuneConfig)
        assert str(err.value).startswith(named)


def test_trial_commands_run_the_train_stage_only_and_set_only_what_differs() -> None:
    trials = sample_trials(_cfg(), _train())
    names = trial_names(3, len(trials))
    assert names[:2] == ["tune-3-1", "tune-3-2"]
    cmds = [trial_command(name, trial, trials[0]) for name, trial in zip(names, trials)]
    assert cmds[0] == ["dvc", "exp", "run", "--temp", "-n", "tune-3-1", "train"]
    for cmd, trial in zip(cmds[1:], trials[1:]):
        assert cmd[:6] == ["dvc", "exp", "run", "--temp", "-n", cmd[5]] and cmd[-1] == "train"
        sets = dict(cmd[i + 1].removeprefix("train.").split("=") for i, a in enumerate(cmd) if a == "-S")
        assert sets and {k: yaml.safe_load(v) for k, v in sets.items()} == {
            k: v for k, v in trial.items() if v != trials[0][k]}


def test_a_new_search_never_reuses_a_name() -> None:
    assert session_number([]) == 1
    assert session_number(["tune-1-1", "tune-1-12", "tune-3-2", "cmp-din-id", "tune-x-1", "mytune-9-1"]) == 4


# ------------------------------------------------------------------------------------------------ the results


def _rev(name: str | None, lr: float, valid_auc: float | None, test_auc: float, logloss: float = 0.45,
         timestamp: str = "2026-12-01T10:00:00") -> dict:
    train = {"learning_rate": lr, "batch_size": 1024, "embedding_regularizer": 0.0, "net_regularizer": 0.0,
             "net_dropout": 0.1, "embedding_dim": 16, "epochs": 3}
    valid = {} if valid_auc is None else {"best_epoch": 2, "valid_auc": valid_auc, "valid_logloss": logloss,
                                          "epochs_run": 3, "step": 3}
    return {"rev": "x", "name": name, "error": None, "experiments": None, "data": {
        "timestamp": timestamp, "params": {"params.yaml": {"data": {"train": train}}},
        "metrics": {"data/metrics/train/metrics.json": {"data": valid},
                    "data/metrics/evaluate.json": {"data": {"auc": test_auc, "logloss": 0.41}}}}}


def _exp(rev: dict) -> dict:
    return {"revs": [rev], "executor": None, "name": rev["name"]}


def _exp_show() -> list[dict]:
    baseline = _rev("main", 0.002, 0.85, 0.84)
    older_params = _rev("tune-2-3", 0.001, 0.84, 0.90)  # the best test AUC: must not matter
    del older_params["data"]["params"]["params.yaml"]["data"]["train"]["net_regularizer"]  # a key left out
    baseline["experiments"] = [
        _exp(_rev("tune-2-1", 0.002, 0.85, 0.84)),
        _exp(_rev("tune-2-2", 0.004, 0.86, 0.83)),  # the best valid AUC
        _exp(older_params),
        _exp(_rev("tune-1-1", 0.01, 0.99, 0.99)),  # an earlier search
        _exp(_rev("cmp-din-id", 0.002, 0.95, 0.95)),  # not a tune experiment
        _exp(_rev("tune-2-4", 0.0005, None, 0.5)),  # no valid metrics (a broken run)
    ]
    return [_rev(None, 0.002, 0.85, 0.84), baseline]  # the workspace first, as DVC writes it


def test_records_table_and_best_come_from_the_valid_split_only() -> None:
    names = trial_names(2, 4)
    records = trial_records(_exp_show(), names)
    assert [r["name"] for r in records] == names
    assert records[1] == {"name": "tune-2-2", "rev": "x", "learning_rate": 0.004, "batch_size": 1024,
                          "embedding_regularizer": 0.0, "net_regularizer": 0.0, "net_dropout": 0.1, "embedding_dim": 16,
                          "valid_auc": 0.86, "valid_logloss": 0.45, "best_epoch": 2}
    assert all("auc" not in r for r in records)  # test metrics are not even read
    assert records[2]["net_regularizer"] == TrainConfig().net_regularizer  # what the stage used for a missing key
    assert best_trial(records)["name"] == "tune-2-2"  # not tune-2-3 (better test AUC) nor tune-1-1 (other search)
    assert [r["name"] for r in ranked(records)] == ["tune-2-2", "tune-2-1", "tune-2-3"]  # tune-2-4: no valid AUC
    table = results_table(records, current="tune-2-1").splitlines()
    assert table[0] == ("| trial | learning_rate | batch_size | embedding_regularizer | net_regularizer | net_dropout "
                        "| embedding_dim | valid AUC | valid logloss | best epoch |")
    assert table[2] == "| tune-2-2 | 0.004 | 1024 | 0 | 0 | 0.1 | 16 | 0.8600 | 0.4500 | 2 |"
    assert table[3].startswith("| tune-2-1 (current) | 0.002 |")
    assert len(table) == 5


def test_ties_go_to_the_lower_logloss_then_the_earlier_trial() -> None:
    records = [{"name": n, "valid_auc": auc, "valid_logloss": ll}
               for n, auc, ll in (("a", 0.8, 0.5), ("b", 0.8, 0.4), ("c", 0.8, 0.4), ("d", float("nan"), 0.1))]
    assert [r["name"] for r in ranked(records)] == ["b", "c", "a"]
    assert best_trial(records[:1])["name"] == "a"
    with pytest.raises(TuneError, match="no trial finished"):
        best_trial([{"name": "d", "valid_auc": None, "valid_logloss": None}])


def test_a_newer_run_of_the_same_name_wins() -> None:
    old, new = _rev("tune-1-1", 0.002, 0.70, 0.7, timestamp="2026-11-01T00:00:00"), _rev("tune-1-1", 0.002, 0.80, 0.8)
    for order in ([old, new], [new, old]):
        assert trial_records([{"rev": "y", "experiments": [_exp(r) for r in order]}], ["tune-1-1"])[0][
            "valid_auc"] == 0.80


def test_applied_params_keep_their_layout(tmp_path: Path) -> None:
    """with_train_values against DVC's own writer: the same values as `-S` gives, with the author's layout and
    comments (DVC's writer turns flow lists into block lists and drops comments)."""
    from dvc.utils.hydra import apply_overrides

    before = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(before)
    apply_overrides(str(path), ["train.learning_rate=0.002", "train.embedding_dim=8", "train.net_dropout=0.0"])
    kept = with_train_values(before, {"learning_rate": 0.002, "embedding_dim": 8, "net_dropout": 0.0})
    assert yaml.safe_load(kept) == yaml.safe_load(path.read_text())
    changed = [(a, b) for a, b in zip(kept.splitlines(), before.splitlines(), strict=True) if a != b]
    assert [a.split("#")[0].rstrip() for a, _ in changed] == [
        "  embedding_dim: 8", "  net_dropout: 0.0", "  learning_rate: 0.002"]
    assert all(("#" in a) == ("#" in b) for a, b in changed)  # each line's comment stays


def test_a_layout_the_apply_cannot_edit_is_refused_before_the_search(tmp_path: Path) -> None:
    """A quoted train key is valid YAML (DVC and check_params accept it), but the winner could not be written back
    in place: that showed only after every trial had run. Now the plan refuses it, naming the file and the key."""
    path = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    assert text.index("\n  learning_rate: ") < text.index("\ntune:")  # the first is train's
    path.write_text(text.replace("\n  learning_rate: ", '\n  "learning_rate": ', 1))
    with pytest.raises(ParamsError, match=rf"{re.escape(str(path))}: could not set train\.learning_rate.* in the "
                                          r"params text in place, as a search's winner is applied"):
        load_trials(path, trials=2)
    path.write_text(text)
    assert len(load_trials(path, trials=2)) == 2


def test_a_tuned_key_the_train_section_does_not_write_gets_a_line() -> None:
    text = "data:\n  source: synthetic\ntrain:  # the model\n  epochs: 3  # passes\ntune:\n  epochs: [1]\n"
    out = with_train_values(text, {"epochs": 5, "net_regularizer": 1e-05})
    assert parse_yaml(out) == {"data": {"source": "synthetic"}, "train": {"epochs": 5, "net_regularizer": 1e-05},
                                   "tune": {"epochs": [1]}}
    assert "  epochs: 5  # passes\n" in out and out.startswith("data:\n  source: synthetic\ntrain:  # the model\n")
    with pytest.raises(ValueError, match="train.epochs"):  # a layout the line-wise edit cannot follow
        with_train_values("train: {epochs: 3}\n", {"epochs": 5})


def test_dvc_errors_that_list_their_targets_keep_them_on_the_line() -> None:
    output = ("ERROR: Checkout failed for following targets:\ndata/raw\ndata/eval/predictions.parquet\n"
              "Is your cache up to date?\n")
    assert _error_line(output) == ("ERROR: Checkout failed for following targets: data/raw "
                                   "data/eval/predictions.parquet Is your cache up to date?")
    assert _error_line("WARNING: x\nERROR: failed to reproduce 'train'\n") == "ERROR: failed to reproduce 'train'"


def test_dvc_runs_as_this_pythons_module_without_a_launcher_on_the_path(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """run_dvc starts DVC as `python -m dvc` (pip's launcher breaks on a " or $ in its environment's path): with
    no `dvc` on PATH it still runs, and its failures still name the command as the user would type it."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", run_dvc(["dvc", "--version"]).strip())
    with pytest.raises(TuneError, match=r"^`dvc exp list` failed: ERROR: you are not inside of a DVC repository"):
        run_dvc(["dvc", "exp", "list", "--name-only"])
    with pytest.raises(TuneError, match="no-such-tool: command not found"):
        run_dvc(["no-such-tool", "x"])


def test_mmctr_runs_as_a_module_without_its_launcher() -> None:
    """`python -m pipeline.cli.main` is the mmctr command, for where pip's launcher cannot start."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "tune", "--help"], cwd=ROOT,
                          env={"PATH": ""}, capture_output=True, text=True)
    assert proc.returncode == 0 and "Usage: python -m pipeline.cli.main tune" in proc.stdout


# ------------------------------------------------------------------------------------------------ the command


def test_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", stage_env()["PATH"])
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = CliRunner().invoke(mmctr, ["tune", "--dry-run"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("Error: `dvc root` failed: ERROR: you are not inside of a DVC repository")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tune"]["learning_rate"] = [0.002, -0.1]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(mmctr, ["tune"])
    assert result.exit_code == 1 and result.output.startswith("Error: tune.learning_rate: candidate -0.1 ")
    assert len(result.output.strip().splitlines()) == 1
    # the search space is the project's params.yaml, the file `dvc exp run -S` reads and writes: there is no option
    # to name another file, whose values DVC would never run; and it runs at the root, where DVC finds `train`
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    result = CliRunner().invoke(mmctr, ["tune"])
    assert result.exit_code == 1 and result.output.strip() == (f"Error: run mmctr tune at the project's root "
                                                               f"({tmp_path.resolve()}), where DVC finds the train "
                                                               "stage and params.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").unlink()
    result = CliRunner().invoke(mmctr, ["tune"])
    assert result.exit_code == 1 and "params file not found" in result.output
    assert CliRunner().invoke(mmctr, ["tune", "--params", "other.yaml"]).exit_code == 2  # no such option


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=stage_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_reproduced) -> Path:
    """The project on the tiny profile (a copy of the session's), with a poor learning rate committed (1e-4, four
    epochs: the search has something to find), after `dvc repro` (train and evaluate rerun)."""
    root = reproduced_copy(tiny_reproduced, tmp_path_factory.mktemp("tune") / "project")
    tiny = (root / "params.yaml").read_text()
    assert tiny.count("\n  learning_rate: 0.003\n") == 1
    (root / "params.yaml").write_text(tiny.replace("\n  learning_rate: 0.003\n", "\n  learning_rate: 0.0001\n"))
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lr 1e-4", "params.yaml"], root)
    _run(["dvc", "repro"], root)
    return root


def _workspace(root: Path) -> dict[str, bytes]:
    """What an apply may change: params.yaml, dvc.lock, the model and train's metrics, by path."""
    paths = [root / "params.yaml", root / "dvc.lock", root / "data/model/model.pt",
             *sorted((root / "data/metrics/train").rglob("*"))]
    return {str(p.relative_to(root)): p.read_bytes() for p in paths if p.is_file()}


@pytest.mark.slow
def test_tune_applies_the_trial_with_the_best_valid_auc(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluated = (project / "data/metrics/evaluate.json").read_bytes()
    # As after `dvc repro train` alone in a fresh clone: evaluate's data outputs are in neither the workspace nor
    # the cache (`dvc exp apply` of the winner failed there: it checks out every output the trial's commit names)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for out in lock["stages"]["evaluate"]["outs"]:
        if out["path"].startswith("data/eval/"):
            (project / ".dvc/cache/files/md5" / out["md5"][:2] / out["md5"][2:]).unlink()
            (project / out["path"]).unlink()
    # The whole command in this process, so that the DVC and git commands it runs can be seen (and interrupted).
    monkeypatch.chdir(project)
    monkeypatch.setenv("PATH", stage_env()["PATH"])
    real_run, calls = tune_module.run_dvc, []

    def interrupted(cmd: list[str]) -> str:
        calls.append(cmd)
        if cmd[:2] == ["dvc", "status"] and any(c[:2] == ["dvc", "checkout"] for c in calls):
            raise KeyboardInterrupt  # Ctrl-C once the winner's model is checked out
        return real_run(cmd)

    monkeypatch.setattr(tune_module, "run_dvc", interrupted)
    start = _workspace(project)
    result = CliRunner().invoke(mmctr, ["tune", "--trials", "2"])
    assert result.exit_code == 1 and result.output.rstrip().endswith("Aborted!"), result.output
    assert _workspace(project) == start  # the apply was undone: params, lock, model and metrics as before
    lines = result.output.splitlines()
    assert lines[0].startswith("2 trials, run one after another; cost: 1 run(s) of the train stage (tune-1-1, ")
    assert lines[1] == "[1/2] tune-1-1: the current values ..."
    assert lines[3].startswith("[2/2] tune-1-2: ") and lines[4].startswith("[2/2] tune-1-2: valid AUC 0.")

    names = ["tune-1-1", "tune-1-2"]
    records = trial_records(json.loads(_run(["dvc", "exp", "show", "--json"], project)), names)
    assert [r["name"] for r in records] == names
    current, other = records
    assert current["learning_rate"] == 0.0001 and other["learning_rate"] in (0.003, 0.01)
    assert other["valid_auc"] > current["valid_auc"]  # lr 1e-4 for four epochs barely trains
    assert f"best by valid AUC: tune-1-2 ({other['valid_auc']:.4f})" in result.output
    assert next(line for line in lines if line.startswith("| tune-")).startswith("| tune-1-2 |")

    # The user edits a tracked file and stages a new one while the search runs: the apply leaves both alone.
    (project / "dvc.yaml").write_text((project / "dvc.yaml").read_text() + "# edited during the search\n")
    (project / "notes.md").write_text("mine\n")
    _run(["git", "add", "notes.md"], project)
    calls.clear()
    monkeypatch.setattr(tune_module, "run_dvc", lambda cmd: calls.append(cmd) or real_run(cmd))
    apply_trial(other, "params.yaml")
    assert not [c for c in calls if c[:2] == ["dvc", "repro"]]  # the winner was checked out, not trained again
    assert (project / "dvc.yaml").read_text().endswith("# edited during the search\n")
    assert (project / "notes.md").read_text() == "mine\n"
    params = (project / "params.yaml").read_text()
    applied = load_section(project / "params.yaml", "train", TrainConfig)
    assert {k: params_dict(applied)[k] for k in TUNED} == {k: other[k] for k in TUNED}
    assert "dnn_hidden_units: [32]" in params  # the layout survived
    summary = json.loads((project / "data/metrics/train/metrics.json").read_text())
    assert summary["valid_auc"] == other["valid_auc"]  # the winner's model and metrics are in the workspace
    trial_lock = yaml.safe_load(_run(["git", "show", f"{other['rev']}:dvc.lock"], project))["stages"]["train"]
    model_md5 = next(o["md5"] for o in trial_lock["outs"] if o["path"] == "data/model/model.pt")
    assert hashlib.md5((project / "data/model/model.pt").read_bytes()).hexdigest() == model_md5
    assert (project / "data/metrics/evaluate.json").read_bytes() == evaluated  # the search never scored test
    status = json.loads(_run(["dvc", "status", "--json"], project))
    assert set(status) == {"evaluate"}  # `dvc repro` now evaluates the winner, nothing else

    # A second search gets new names, starts from the applied values, and the dry run runs nothing.
    again = _run(["mmctr", "tune", "--trials", "2", "--dry-run"], project).splitlines()
    assert again[0].startswith("2 trials, run one after another; cost: 1 run(s) of the train stage (tune-2-1, ")
    assert again[1] == "dvc exp run --temp -n tune-2-1 train"
    assert again[2].startswith("dvc exp run --temp -n tune-2-2 -S train.") and len(again) == 3
    assert sorted(_run(["dvc", "exp", "list", "--name-only"], project).split()) == names


def test_small_float_candidates_reach_the_stage_as_numbers() -> None:
    """`dvc exp run -S` writes Python's repr (1e-05 for a small float); the params loader reads it back as that
    number, so any regulariser value can be tuned."""
    for value in (1e-05, 0.0001, 3e-07, 0.0):
        assert parse_yaml(f"x: {set_value(value)}")["x"] == value
