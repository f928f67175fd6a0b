"""The paper's model comparison (its Table 2) as DVC experiments on the current data.

Each row of the table is a model variant (the paper's five, the mean-pool MLP baseline of model/meanpool.py, the
project's default Transformer + DCNv2 with mean interest, a low-rank cross network and train-exposure levels, and
that default with semantic-id item embeddings, `train.item_repr`), run twice: without and with the frozen multimodal
(PCA) item embedding (`train.use_mm_emb`). `queue_commands` gives the `dvc exp run --queue` command of each of the
18 experiments; `experiment_records` reads `dvc exp show --json` back into flat records, and `comparison_table` lays
them out like the paper: one row per variant, AUC and logloss (valid, from train's dvclive summary, and test, from
evaluate) and the test AUC on items new to the model (evaluate's `by_train_exposures` slice `0`) without | with the
MM embedding, plus the oracle AUCs of the data when it is synthetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from pipeline.cli.terminal import printable
from pipeline.core.config import PARAMS_FILE, PLAIN_SWITCHES, ModelConfig

# Row label, experiment name stem and the train params that make the variant (on top of params.yaml). Every row
# sets each model switch, so a row means the same model whatever params.yaml's train section holds: the paper's
# Transformer + DCNv2 rows are the winner's (PLAIN_SWITCHES: full-rank cross, no mean or recent interest, no
# exposure levels, one model), and the mmctr default rows set each of those switches at its default (ModelConfig's,
# which are params.yaml's: tests/test_config.py), its ensemble included.
_PLAIN = {f"train.{k}": v for k, v in PLAIN_SWITCHES.items()}
_MMCTR = {f"train.{k}": getattr(ModelConfig(), k) for k in PLAIN_SWITCHES}


def _row(model: str, dice: bool, transformer: bool, dcn: bool, switches: dict[str, Any]) -> dict[str, Any]:
    return {"train.model": model, "train.dice": dice, "train.use_transformer": transformer, "train.use_dcn": dcn,
            **switches}


VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("DIN", "din", _row("din", False, True, True, _PLAIN)),
    ("DIN + Dice", "din-dice", _row("din", True, True, True, _PLAIN)),
    ("Transformer + DCNv2", "tdcn", _row("transformer_dcn", False, True, True, _PLAIN)),
    ("w/o Transformer", "tdcn-no-transformer", _row("transformer_dcn", False, False, True, _PLAIN)),
    ("w/o DCNv2", "tdcn-no-dcn", _row("transformer_dcn", False, True, False, _PLAIN)),
    ("Mean-pool MLP", "meanpool", _row("meanpool", False, True, True, _PLAIN)),
    ("mmctr default (+ mean and recent interest, low-rank cross, exposure levels, user bias and interest, "
     "history length, an ensemble of two)",
     "mmctr", _row("transformer_dcn", False, True, True, _MMCTR)),
    ("mmctr default, semantic ids", "mmctr-sem",
     _row("transformer_dcn", False, True, True, {**_MMCTR, "train.item_repr": "semantic"})),
    ("mmctr default, id + semantic ids", "mmctr-idsem",
     _row("transformer_dcn", False, True, True, {**_MMCTR, "train.item_repr": "id+semantic"})),
)
PREFIX = "cmp"
TRAIN_METRICS = "data/metrics/train/metrics.json"
EVAL_METRICS = "data/metrics/evaluate.json"


def experiment_name(stem: str, mm: bool) -> str:
    return f"{PREFIX}-{stem}-{'mm' if mm else 'id'}"


def _yaml_value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def queue_commands() -> list[list[str]]:
    """argv of `dvc exp run --queue -n <name> -S ++key=value ...` for every variant, without and with MM emb.
    `++` (Hydra's add-or-override) because a plain `-S key=value` fails on a key params.yaml leaves out, as a valid
    train section may (its default is taken)."""
    cmds = []
    for _, stem, params in VARIANTS:
        for mm in (False, True):
            sets = {**params, "train.use_mm_emb": mm}
            cmd = ["dvc", "exp", "run", "--queue", "-n", experiment_name(stem, mm)]
            for key, value in sets.items():
                cmd += ["-S", f"++{key}={_yaml_value(value)}"]
            cmds.append(cmd)
    return cmds


def _walk(node: Any) -> Iterator[dict]:
    """Every dict in a `dvc exp show --json` tree that describes one revision (has a `data` dict with metrics)."""
    if isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, dict) and "metrics" in data:
            yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def run_failed(node: dict) -> bool:
    """Whether a revision of `dvc exp show --json` is an experiment whose run failed (its `error` is set): its data
    then holds its params beside the metrics of the commit it started from, which no run of those params wrote."""
    return bool(node.get("error"))


def dig(node: Any, *keys: str) -> dict[str, Any]:
    """node[keys[0]][keys[1]]... of a `dvc exp show --json` tree, through dicts only -> the dict found there, or {}
    where a level is missing or is not a dict (a metrics or params file of another shape reads as missing, never as
    a traceback)."""
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _metric(data: dict, path: str) -> dict[str, Any]:
    return dig(data, "metrics", path, "data")


def experiment_names(exp_show: Any) -> set[str]:
    """`dvc exp show --json` -> the names of its experiments, finished or queued (a queued one is listed too,
    with no metrics yet)."""
    names = (node.get("name") or node["data"].get("name") for node in _walk(exp_show))
    return {name for name in names if isinstance(name, str)}


def experiment_records(exp_show: Any) -> dict[str, dict[str, Any]]:
    """`dvc exp show --json` -> {experiment name: {valid_auc, valid_logloss, auc, logloss, cold_auc (test AUC of
    the rows whose item has no train exposure; None when there are none or they are one class), oracle_auc,
    history_oracle_auc}} for the experiments this module names. A name run on several commits (--all-commits)
    keeps its newest run (ISO timestamps compare as strings)."""
    records: dict[str, dict[str, Any]] = {}
    stamps: dict[str, str] = {}
    for node in _walk(exp_show):
        name = node.get("name") or node["data"].get("name")
        if not isinstance(name, str) or not name.startswith(f"{PREFIX}-") or run_failed(node):
            continue
        stamp = node["data"].get("timestamp") or ""
        if name in stamps and stamp < stamps[name]:
            continue
        train, test = _metric(node["data"], TRAIN_METRICS), _metric(node["data"], EVAL_METRICS)
        stamps[name] = stamp
        cold = dig(test, "by_train_exposures", "0")
        records[name] = {"valid_auc": train.get("valid_auc"), "valid_logloss": train.get("valid_logloss"),
                         "auc": test.get("auc"), "logloss": test.get("logloss"), "cold_auc": cold.get("auc"),
                         "oracle_auc": test.get("oracle_auc"), "history_oracle_auc": test.get("history_oracle_auc")}
    return records


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def comparison_table(records: dict[str, dict[str, Any]]) -> str:
    """A Markdown table shaped like the paper's Table 2, plus the test AUC on items with no train exposure
    ("new items"; missing experiments and empty slices show '-')."""
    head = ("| model | valid AUC | valid logloss | test AUC | test logloss | new items' AUC "
            "| valid AUC (MM) | valid logloss (MM) | test AUC (MM) | test logloss (MM) | new items' AUC (MM) |")
    lines = [head, "|" + "---|" * 11]
    for label, stem, _ in VARIANTS:
        cells = []
        for mm in (False, True):
            r = records.get(experiment_name(stem, mm), {})
            cells += [_fmt(r.get(k)) for k in ("valid_auc", "valid_logloss", "auc", "logloss", "cold_auc")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    oracles = {k: v for r in records.values() for k, v in r.items() if k.endswith("oracle_auc") and v is not None}
    if oracles:
        lines.append("")
        lines.append(f"Test oracle AUC (planted model, hidden user preference): {_fmt(oracles.get('oracle_auc'))}; "
                     f"history oracle AUC (planted items, preference from the visible history): "
                     f"{_fmt(oracles.get('history_oracle_auc'))}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The headline table of `mmctr results`: one row per revision of `dvc exp show --json`


HEADLINE = (("valid AUC", TRAIN_METRICS, "valid_auc"), ("test AUC", EVAL_METRICS, "auc"),
            ("logloss", EVAL_METRICS, "logloss"), ("gAUC", EVAL_METRICS, "gauc"))


def _flat_params(data: dict) -> dict[str, Any]:
    """params.yaml of one revision as {"section.key": value}."""
    params = dig(data, "params", PARAMS_FILE, "data")
    return {f"{section}.{key}": value for section, values in params.items() if isinstance(values, dict)
            for key, value in values.items()}


def unreproduced_params(status: Any) -> list[str]:
    """`dvc status --json` -> the params (sections, as the stages list them) changed since the workspace's last run,
    sorted: params entries of "changed deps" are dicts ({"params.yaml": {"fit_pca": "modified"}}), files' strings."""
    changed: set[str] = set()
    for entries in status.values() if isinstance(status, dict) else ():
        for entry in entries if isinstance(entries, list) else ():
            deps = entry.get("changed deps") if isinstance(entry, dict) else None
            for value in deps.values() if isinstance(deps, dict) else ():
                if isinstance(value, dict):
                    changed.update(map(str, value))
    return sorted(changed)


def headline_rows(exp_show: Any, unreproduced: list[str] | None = None) -> list[dict[str, Any]]:
    """`dvc exp show --json` -> one row per revision (workspace, commit, experiment), in its order: name, params
    ({"section.key": value}) and the headline metrics (HEADLINE's keys, plus history_oracle_auc when known).

    A failed experiment's row is named "<name> (failed)" with no metrics, and with `unreproduced` (the params
    `dvc status` reports changed) the workspace's "workspace (not reproduced: ...)": in both the metrics on disk
    were written by other params than the row shows."""
    rows = []
    for node in _walk(exp_show):
        data = node["data"]
        rev = str(node.get("rev") or data.get("rev", "?"))
        name = node.get("name") or data.get("name") or (rev[:7] if len(rev) == 40 else rev)  # a sha, or "workspace"
        failed = run_failed(node)
        if failed:
            name = f"{name} (failed)"
        elif rev == "workspace" and unreproduced:
            name = f"workspace (not reproduced: {', '.join(unreproduced)})"
        row = {"name": name, "params": _flat_params(data)}
        for label, path, key in HEADLINE:
            row[label] = None if failed else _metric(data, path).get(key)
        row["history_oracle_auc"] = None if failed else _metric(data, EVAL_METRICS).get("history_oracle_auc")
        rows.append(row)
    return rows


def _text_cell(value: Any) -> str:
    """A name or params value as one Markdown table cell on one terminal line: it comes from a file anyone may have
    written, so it may hold a newline, an escape sequence or a `|` (or `\\|`) that would add rows or columns of its
    own. Its backslashes are doubled first, so the escapes printable writes stay single."""
    return printable(str(value).replace("\\", "\\\\")).replace("|", "\\|")


def headline_table(rows: list[dict[str, Any]], max_params: int = 4) -> str:
    """The rows as a Markdown table narrow enough for a terminal: the experiment, the params whose values differ
    between the rows (at most `max_params`, the rest counted), the headline metrics and the test AUC's gap to the
    history oracle (synthetic data only)."""
    keys = sorted({k for r in rows for k in r["params"]})
    differ = [k for k in keys if len({repr(r["params"].get(k)) for r in rows}) > 1]
    shown = differ[:max_params]
    head = ["experiment", *map(_text_cell, shown), *(label for label, _, _ in HEADLINE), "gap to history oracle"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        gap = (r["history_oracle_auc"] - r["test AUC"]
               if isinstance(r["history_oracle_auc"], float) and isinstance(r["test AUC"], float) else None)
        cells = [_text_cell(r["name"]), *(_text_cell(r["params"].get(k, "-")) for k in shown),
                 *(_fmt(r[label]) for label, _, _ in HEADLINE), _fmt(gap)]
        lines.append("| " + " | ".join(cells) + " |")
    if len(differ) > len(shown):
        rest = ", ".join(map(_text_cell, differ[len(shown):]))
        lines.append(f"({len(differ) - len(shown)} more params differ: {rest})")
    return "\n".join(lines)
