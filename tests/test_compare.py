"""The Table-2 comparison: its 14 queued experiments are valid configs, and `dvc exp show --json` output (shaped as
DVC 3 writes it) comes back as the table."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.compare import comparison_table, experiment_name, experiment_records, queue_commands
from pipeline.config import TrainConfig, load_section

ROOT = Path(__file__).resolve().parents[1]


def test_every_queued_experiment_is_a_valid_train_config(tmp_path: Path) -> None:
    cmds = queue_commands()
    names = [c[c.index("-n") + 1] for c in cmds]
    assert len(cmds) == 14 and len(set(names)) == 14
    for cmd in cmds:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"]
        for s in sets:
            key, value = s.split("=", 1)
            section, name = key.split(".")
            params[section][name] = yaml.safe_load(value)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        cfg = load_section(tmp_path / "params.yaml", "train", TrainConfig)
        name = cmd[cmd.index("-n") + 1]
        assert cfg.use_mm_emb == name.endswith("-mm")
        assert (cfg.model == "meanpool") == name.startswith("cmp-meanpool-")
        # only the mmctr row has the project's additions, whatever params.yaml's train section holds
        assert (cfg.mean_interest and cfg.cross_rank == 8) == name.startswith("cmp-mmctr-")
    ablated = [c[c.index("-n") + 1] for c in cmds if "train.use_transformer=false" in c]
    assert ablated == ["cmp-tdcn-no-transformer-id", "cmp-tdcn-no-transformer-mm"]


def _rev(name: str | None, valid_auc: float, auc: float, timestamp: str = "2026-11-30T19:00:00") -> dict:
    return {"rev": "x", "name": name, "error": None, "experiments": None, "data": {"timestamp": timestamp,
        "params": {"params.yaml": {"data": {"train": {}}}},
        "metrics": {"data/metrics/train/metrics.json": {"data": {"valid_auc": valid_auc, "valid_logloss": 0.4}},
                    "data/metrics/evaluate.json": {"data": {"auc": auc, "logloss": 0.41, "oracle_auc": 0.88,
                                                            "history_oracle_auc": 0.865}}}}}


def test_table_from_dvc_exp_show_json() -> None:
    baseline = _rev("main", 0.85, 0.84)
    baseline["experiments"] = [
        {"revs": [_rev(experiment_name("din", False), 0.80, 0.79)], "executor": None,
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
    assert din == "| DIN | 0.8000 | 0.4000 | 0.7900 | 0.4100 | - | - | - | - |"
    tdcn = next(line for line in table if line.startswith("| Transformer + DCNv2 |"))
    assert tdcn.endswith("| 0.8600 | 0.4000 | 0.8550 | 0.4100 |")
    assert "oracle AUC (planted model, hidden user preference): 0.8800" in table[-1]
    assert "0.8650" in table[-1]
