"""The Table-2 comparison: its 18 queued experiments are valid configs, and `dvc exp show --json` output (shaped as
DVC 3 writes it) comes back as the table."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.cli.compare import (
    EVAL_METRICS,
    TRAIN_METRICS,
    comparison_table,
    dig,
    experiment_name,
    experiment_names,
    experiment_records,
    headline_rows,
    headline_table,
    queue_commands,
)
from pipeline.core.config import PLAIN_SWITCHES, ModelConfig, TrainConfig, load_section

ROOT = Path(__file__).resolve().parents[1]


def test_every_queued_experiment_is_a_valid_train_config(tmp_path: Path) -> None:
    cmds = queue_commands()
    names = [c[c.index("-n") + 1] for c in cmds]
    assert len(cmds) == 18 and len(set(names)) == 18
    for cmd in cmds:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["train"]["ensemble"] = 3  # no row's value: every row must set its own
        params["train"]["id_init"] = "mm"
        del params["train"]["model"]  # a valid section may leave a key out: `-S ++` adds it (plain -S fails)
        sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"]
        assert all(s.startswith("++train.") for s in sets)
        for s in sets:
            key, value = s.removeprefix("++").split("=", 1)
            section, name = key.split(".")
            params[section][name] = yaml.safe_load(value)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        cfg = load_section(tmp_path / "params.yaml", "train", TrainConfig)
        name = cmd[cmd.index("-n") + 1]
        assert cfg.arch.use_mm_emb == name.endswith("-mm")
        assert (cfg.arch.model == "meanpool") == name.startswith("cmp-meanpool-")
        # only the mmctr row has the project's additions, whatever params.yaml's train section holds
        mmctr = name.startswith("cmp-mmctr-")
        assert (cfg.arch.mean_interest and cfg.arch.cross_rank == 8) == mmctr
        assert (cfg.arch.recent_interest, cfg.arch.exposure_levels) == ((3, 20) if mmctr else (0, 0))
        assert cfg.arch.ensemble == (2 if mmctr else 1) and cfg.arch.id_init == "random"
        assert cfg.arch.item_repr == {"sem": "semantic", "idsem": "id+semantic"}.get(name.split("-")[2], "id")
        if mmctr:  # the default's every addition, at its default (user_bias and ensemble_mix included)
            default = ModelConfig()
            assert all(getattr(cfg.arch, k) == getattr(default, k) for k in PLAIN_SWITCHES if k != "item_repr")
    ablated = [c[c.index("-n") + 1] for c in cmds if "++train.use_transformer=false" in c]
    assert ablated == ["cmp-tdcn-no-transformer-id", "cmp-tdcn-no-transformer-mm"]


def _rev(name: str | None, valid_auc: float, auc: float, timestamp: str = "2026-11-30T19:00:00",
         cold: float | None = None) -> dict:
    slices = {"0": {"rows": 0} if cold is None else {"rows": 40, "auc": cold}, "10+": {"rows": 60, "auc": auc}}
    return {"rev": "x", "name": name, "error": None, "experiments": None, "data": {"timestamp": timestamp,
        "params": {"params.yaml": {"data": {"train": {}}}},
        "metrics": {"data/metrics/train/metrics.json": {"data": {"valid_auc": valid_auc, "valid_logloss": 0.4}},
                    "data/metrics/evaluate.json": {"data": {"auc": auc, "logloss": 0.41, "oracle_auc": 0.88,
                                                            "history_oracle_auc": 0.865,
                                                            "by_train_exposures": slices}}}}}


def test_table_from_dvc_exp_show_json() -> None:
    baseline = _rev("main", 0.85, 0.84)
    baseline["experiments"] = [
        {"revs": [_rev(experiment_name("din", False), 0.80, 0.79, cold=0.70)], "executor": None,
         "name": experiment_name("din", False)},
        {"revs": [_rev(experiment_name("tdcn", True), 0.86, 0.855)], "executor": None,
         "name": experiment_name("tdcn", True)},
        {"revs": [_rev("someone-elses-exp", 0.5, 0.5)], "executor": None, "name": "someone-elses-exp"},
    ]
    older = _rev("old-main", 0.85, 0.84)  # the same experiment name run on an older commit (--all-commits)
    older["experiments"] = [{"revs": [_rev(experiment_name("din", False), 0.5, 0.5, "2026-11-01T10:00:00")],
                             "executor": None, "name": experiment_name("din", False)}]
    records = experiment_records([_rev(None, 0.1, 0.1), baseline, older])
    assert set(records) == {"cmp-din-id", "cmp-tdcn-mm"}
    assert records["cmp-tdcn-mm"]["auc"] == 0.855
    table = comparison_table(records).splitlines()
    assert table[0].startswith("| model | valid AUC")
    din = next(line for line in table if line.startswith("| DIN |"))
    assert din == "| DIN | 0.8000 | 0.4000 | 0.7900 | 0.4100 | 0.7000 | - | - | - | - | - |"
    tdcn = next(line for line in table if line.startswith("| Transformer + DCNv2 |"))
    assert tdcn.endswith("| 0.8600 | 0.4000 | 0.8550 | 0.4100 | - |")  # its run had no new items
    assert "oracle AUC (planted model, hidden user preference): 0.8800" in table[-1]
    assert "0.8650" in table[-1]


def _revision(name, rev, params, valid, auc, oracle=None):
    evaluate = {"auc": auc, "logloss": 0.45, "gauc": auc - 0.01, **({"history_oracle_auc": oracle} if oracle else {})}
    return {"rev": rev, "name": name, "data": {
        "rev": rev, "params": {"params.yaml": {"data": params}},
        "metrics": {TRAIN_METRICS: {"data": {"valid_auc": valid}}, EVAL_METRICS: {"data": evaluate}}}}


def test_headline_table_shows_the_params_that_differ_and_the_oracle_gap() -> None:
    base = {"fit_pca": {"dim": 64}, "train": {"learning_rate": 0.004, "batch_size": 256}}
    other = {"fit_pca": {"dim": 32}, "train": {"learning_rate": 0.004, "batch_size": 256}}
    shown = [_revision(None, "workspace", base, 0.85, 0.854, 0.86), {
        "rev": "a" * 40, "name": "main", "data": _revision(None, "a" * 40, base, 0.85, 0.854, 0.86)["data"],
        "experiments": [{"revs": [_revision("exp-dim32", "b" * 40, other, 0.84, 0.849)]}]}]
    rows = headline_rows(shown)
    assert [r["name"] for r in rows] == ["workspace", "main", "exp-dim32"]
    assert headline_table(rows).splitlines() == [
        "| experiment | fit_pca.dim | valid AUC | test AUC | logloss | gAUC | gap to history oracle |",
        "|---|---|---|---|---|---|---|",
        "| workspace | 64 | 0.8500 | 0.8540 | 0.4500 | 0.8440 | 0.0060 |",
        "| main | 64 | 0.8500 | 0.8540 | 0.4500 | 0.8440 | 0.0060 |",
        "| exp-dim32 | 32 | 0.8400 | 0.8490 | 0.4500 | 0.8390 | - |"]


def test_headline_table_keeps_hostile_names_and_values_in_their_cell() -> None:
    """Experiment names and params values come from files anyone may write: a newline, an escape sequence or a `|`
    in one is printed escaped, so it can neither add a row or a column nor reach the terminal."""
    hostile = "x\n| fake-exp | 0.9999 |\x1b]0;title\x07"
    base, other = {"data": {"raw_dir": hostile}}, {"data": {"raw_dir": "data/mmctr"}}
    rows = headline_rows([_revision(None, "workspace", base, 0.8, 0.81),
                          _revision("exp|1\u202e", "b" * 40, other, 0.8, 0.81)])
    lines = headline_table(rows).splitlines()
    assert len(lines) == 4 and "\x1b" not in "".join(lines) and "\u202e" not in "".join(lines)
    assert lines[2].startswith("| workspace | x\\n\\| fake-exp \\| 0.9999 \\|\\x1b]0;title\\x07 | 0.8000 |")
    assert lines[3].startswith("| exp\\|1\\u202e | data/mmctr | 0.8000 |")
    rows = headline_rows([_revision(None, "workspace", {"x": {"v": "a\\|b"}}, 0.8, 0.81),
                          _revision("e", "b" * 40, {"x": {"v": "c"}}, 0.8, 0.81)])
    assert headline_table(rows).splitlines()[2].startswith("| workspace | a\\\\\\|b | 0.8000 |")  # `\|` stays one cell


def test_metrics_and_params_of_another_shape_read_as_missing() -> None:
    """A metrics file holding a number, a slice holding a string, a params file holding a list: '-' in the tables,
    not a traceback (`dig` goes through dicts only)."""
    rev = _revision("cmp-din-id", "b" * 40, {"train": {}}, 0.8, 0.81)
    rev["data"]["metrics"][EVAL_METRICS]["data"] = 0.5
    rev["data"]["metrics"][TRAIN_METRICS]["data"]["valid_auc"] = "high"
    rev["data"]["params"]["params.yaml"]["data"] = ["not", "a", "mapping"]
    assert dig({"a": {"b": 5}}, "a", "b") == {} and dig({"a": [1]}, "a", "b") == {} and dig(3, "a") == {}
    records = experiment_records([rev])
    assert records["cmp-din-id"]["auc"] is None and "| DIN | - | - | - | - | - |" in comparison_table(records)
    rows = headline_rows([rev])
    assert rows[0]["params"] == {} and headline_table(rows).splitlines()[2].startswith("| cmp-din-id | - | - |")
    shaped = _revision("cmp-din-mm", "c" * 40, {"train": {}}, 0.8, 0.81)
    shaped["data"]["metrics"][EVAL_METRICS]["data"]["by_train_exposures"] = 5
    assert experiment_records([shaped])["cmp-din-mm"]["cold_auc"] is None


def test_compare_queue_skips_what_the_commit_already_has(monkeypatch) -> None:
    """`mmctr compare --queue` run twice would queue every experiment again under the same name: the names `dvc exp
    show` already lists (run or queued; a queued one has no metrics yet) are skipped, saying how to redo one."""
    from click.testing import CliRunner

    from pipeline.cli import main as cli

    queued = {"rev": "e" * 40, "name": "cmp-din-id", "data": {"rev": "e" * 40, "metrics": {}, "params": {}}}
    calls = []

    def fake_dvc(cmd: list[str]) -> str:
        calls.append(cmd)
        return json.dumps([_revision("cmp-mmctr-mm", "b" * 40, {"train": {}}, 0.8, 0.81), queued])

    monkeypatch.setattr(cli, "run_dvc", fake_dvc)
    result = CliRunner().invoke(cli.main, ["compare", "--queue"])
    assert result.exit_code == 0, result.output
    assert experiment_names(json.loads(fake_dvc([]))) == {"cmp-mmctr-mm", "cmp-din-id"}
    ran = [c[c.index("-n") + 1] for c in calls if "--queue" in c]
    assert len(ran) == 16 and "cmp-din-id" not in ran and "cmp-mmctr-mm" not in ran
    assert ("cmp-din-id: already run or queued on this commit, skipped (`dvc exp remove cmp-din-id` to run it "
            "again)") in result.output.splitlines()
    assert "add the 18 experiments" in CliRunner().invoke(cli.main, ["compare", "-h"]).output


def test_results_command_prints_the_table(monkeypatch) -> None:
    from click.testing import CliRunner

    from pipeline.cli import main as cli

    base = {"train": {"learning_rate": 0.004}}
    status: dict = {}
    monkeypatch.setattr(cli, "run_dvc", lambda cmd: json.dumps(
        status if cmd[1] == "status" else [_revision(None, "workspace", base, 0.8, 0.81)]))
    result = CliRunner().invoke(cli.main, ["results"])
    assert result.exit_code == 0
    assert result.output.splitlines()[2] == "| workspace | 0.8000 | 0.8100 | 0.4500 | 0.8000 | - |"
    # params edited (or left by a failed `dvc exp run`) since the last run: the metrics on disk are not theirs
    status.update({"fit_pca": [{"changed deps": {"params.yaml": {"fit_pca": "modified"}, "data/x": "modified"}}],
                   "train": [{"changed deps": {"params.yaml": {"train": "modified"}}}, {"changed outs": {}}]})
    result = CliRunner().invoke(cli.main, ["results"])
    assert result.output.splitlines()[2].startswith("| workspace (not reproduced: fit_pca, train) | 0.8000 |")


def test_a_failed_experiment_shows_no_metrics_and_is_never_a_record() -> None:
    """DVC keeps a failed queued experiment with its params beside the metrics of the commit it started from: its
    row says it failed and shows none of them, and neither the comparison nor tune takes it as a result."""
    from pipeline.cli.tune import trial_records

    failed = _revision("cmp-din-id", "b" * 40, {"fit_pca": {"dim": 0}}, 0.85, 0.854, 0.86)
    failed["error"] = {"msg": "Experiment run failed", "type": ""}
    ok = _revision("cmp-din-mm", "c" * 40, {"fit_pca": {"dim": 16}}, 0.80, 0.79)
    ok["error"] = None
    rows = headline_rows([failed, ok])
    assert headline_table(rows).splitlines()[2:] == [
        "| cmp-din-id (failed) | 0 | - | - | - | - | - |",
        "| cmp-din-mm | 16 | 0.8000 | 0.7900 | 0.4500 | 0.7800 | - |"]
    assert set(experiment_records([failed, ok])) == {"cmp-din-mm"}
    failed["name"] = "tune-1-1"
    assert trial_records([failed], ["tune-1-1"]) == []
