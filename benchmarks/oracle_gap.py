"""Diagnostic: how much of the model's gap to the history oracle is learning the items' planted latents.

    python benchmarks/oracle_gap.py                 # after `make repro`, on the default synthetic data
    python benchmarks/oracle_gap.py --keep /tmp/gap # keep the model and metrics

Puts two runs of the `train` stage's model, same splits and params, side by side:
    pca      the pipeline's own run (data/metrics/evaluate.json; run `dvc repro` first so it matches params.yaml),
             whose frozen item embedding is the PCA of text and image vectors
    planted  a run trained here by the `train` stage and scored by `evaluate`, on the same item table with the
             embedding column replaced by each item's planted latent and log-popularity (data/raw/planted.npz),
             zero-padded to the same width: items known perfectly up front
and prints test AUC, the oracle AUCs and each run's gap to the history oracle. The planted run's gap is what the
model itself leaves (architecture, optimisation, the history it sees); the difference between the two gaps is
what learning the items from clicks and content costs. Takes one `train` run (about 8 minutes on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
import polars as pl

from pipeline.core.io import read_parquet
from pipeline.sources.planted import PlantedModel


def planted_item_info(item_info: Path, planted: Path, out: Path) -> None:
    """Copy item_info.parquet with its item_emb_d<M> column replaced by [latent (d), log_pop, zeros] per item_id."""
    info = read_parquet(item_info, {"item_id": pl.Int32})
    (col,) = [c for c in info.columns if c.startswith("item_emb_d")]
    model = PlantedModel.load(planted)
    width = info[col].dtype.size
    d = model.item_latent.shape[1]
    if d + 1 > width:
        raise click.UsageError(f"{col} has {width} columns; the planted latent needs {d + 1}")
    ids = info["item_id"].to_numpy()
    emb = np.zeros((len(ids), width), dtype=np.float32)
    emb[:, :d] = model.item_latent[ids]  # row 0 (padding) stays zero: item 0's latent is zero
    emb[:, d] = model.item_log_pop[ids]
    info.with_columns(pl.Series(col, emb, dtype=info[col].dtype)).write_parquet(out)


def train_and_evaluate(item_info: Path, data: Path, params: str, out: Path) -> dict[str, float]:
    """The train and evaluate stages, as dvc.yaml runs them, with outputs under `out`; returns evaluate's metrics."""
    seq = data / "sequences"
    run = lambda *args: subprocess.run([sys.executable, "-m", *args, "--params", params], check=True)
    run("stages.train", "--train", str(seq / "train.parquet"), "--valid", str(seq / "valid.parquet"),
        "--item-info", str(item_info), "--feature-map", str(seq / "feature_map.json"),
        "--semantic-ids", str(data / "features" / "semantic_ids.parquet"),
        "--model", str(out / "model.pt"), "--live-dir", str(out / "live"))
    run("stages.evaluate", "--model", str(out / "model.pt"), "--test", str(seq / "test.parquet"),
        "--train", str(seq / "train.parquet"), "--raw-dir", str(data / "raw"), "--metrics", str(out / "evaluate.json"), "--roc", str(out / "roc.json"),
        "--calibration", str(out / "calibration.json"), "--predictions", str(out / "predictions.parquet"),
        "--submission", str(out / "submission.zip"))
    return json.loads((out / "evaluate.json").read_text())


def measure(data: Path, params: str, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    planted_info = work / "item_info.parquet"
    planted_item_info(data / "features" / "item_info.parquet", data / "raw" / "planted.npz", planted_info)
    results = {"pca": json.loads((data / "metrics" / "evaluate.json").read_text()),
               "planted": train_and_evaluate(planted_info, data, params, work)}
    print(f"\n{'item embedding':16s} {'test AUC':>9s} {'history oracle':>15s} {'gap':>7s} {'oracle':>7s} {'gap':>7s}")
    for name, m in results.items():
        print(f"{name:16s} {m['auc']:9.4f} {m['history_oracle_auc']:15.4f} "
              f"{m['history_oracle_auc'] - m['auc']:7.4f} {m['oracle_auc']:7.4f} {m['oracle_auc'] - m['auc']:7.4f}")


@click.command()
@click.option("--data", default="data", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="the pipeline's data folder (synthetic source)")
@click.option("--params", default="params.yaml", show_default=True)
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write both runs here and keep them; default: a temporary folder")
def main(data: Path, params: str, keep: Path | None) -> None:
    if keep is not None:
        measure(data, params, keep)
    else:
        with tempfile.TemporaryDirectory(prefix="oracle_gap.") as tmp:
            measure(data, params, Path(tmp))


if __name__ == "__main__":
    main()
