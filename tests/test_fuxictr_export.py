"""The export of benchmarks/fuxictr_din.py, read back the way FuxiCTR's LongCTR DIN reads it (no fuxictr needed)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from benchmarks.fuxictr_din import (
    CHALLENGE_DIN,
    CHALLENGE_TRAIN,
    SPLITS,
    challenge_overrides,
    export_fuxictr,
    fuxictr_settings,
    main,
    read_fuxictr_result,
    read_versus,
)
from model.factory import build_model
from pipeline.core.config import PLAIN_SWITCHES, TrainConfig, from_dict
from pipeline.core.feature_map import FeatureMap
from pipeline.core.io import DataError
from pipeline.core.metrics import auc
from pipeline.training.data import load_item_tables, load_split

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

MAX_LEN, N_ITEMS, N_TAGS, MM = 4, 6, 4, 3
HISTORIES = {"train": [[0, 0, 3, 1], [2, 5, 4, 1], [0, 0, 0, 6]], "valid": [[0, 1, 2, 3], [0, 0, 0, 2]],
             "test": [[0, 0, 6, 5]]}


def din_cfg(**kw) -> TrainConfig:
    """A DIN train section, one model with every addition of the default off (PLAIN_SWITCHES)."""
    return from_dict(TrainConfig, {"model": "din", **PLAIN_SWITCHES, **kw}, "train")


def feature_map() -> FeatureMap:
    return FeatureMap.from_dict({"label": "label", "features": [
        {"name": "item_id", "type": "categorical", "source": "item", "vocab_size": N_ITEMS + 1},
        {"name": "item_tags", "type": "sequence", "source": "item", "vocab_size": N_TAGS + 1, "max_len": 2},
        {"name": "item_seq", "type": "sequence", "source": "history", "vocab_size": N_ITEMS + 1,
         "max_len": MAX_LEN, "share_embedding": "item_id"},
        {"name": "likes_level", "type": "categorical", "source": "context", "vocab_size": 11},
        {"name": "views_level", "type": "categorical", "source": "context", "vocab_size": 11}]})


def write_inputs(tmp_path, histories):
    """Split parquets (sequences contract) and an item_info.parquet (row i = item i) under tmp_path."""
    rng = np.random.default_rng(0)
    for name, seqs in histories.items():
        n = len(seqs)
        pl.DataFrame({
            "user_id": pl.Series(np.arange(n), dtype=pl.Int32),
            "item_seq": pl.Series(seqs, dtype=pl.List(pl.Int32)),
            "item_id": pl.Series(rng.integers(1, N_ITEMS + 1, n), dtype=pl.Int32),
            "likes_level": pl.Series(rng.integers(0, 11, n), dtype=pl.Int8),
            "views_level": pl.Series(rng.integers(0, 11, n), dtype=pl.Int8),
            "label": pl.Series(np.arange(n) % 2, dtype=pl.Float32),
            "event_ts": pl.Series(np.arange(n), dtype=pl.Int64),
        }).write_parquet(tmp_path / f"{name}.parquet")
    tags = rng.integers(0, N_TAGS + 1, (N_ITEMS + 1, 2))
    mm = rng.normal(size=(N_ITEMS + 1, MM)).astype(np.float32)
    tags[0], mm[0] = 0, 0.0
    pl.DataFrame({"item_id": pl.Series(np.arange(N_ITEMS + 1), dtype=pl.Int32),
                  "item_tags": pl.Series(tags.tolist(), dtype=pl.List(pl.Int32)),
                  f"item_emb_d{MM}": pl.Series(mm, dtype=pl.Array(pl.Float32, MM))}
                 ).write_parquet(tmp_path / "item_info.parquet")


def export(tmp_path, cfg: TrainConfig):
    tags, mm, mm_dim = load_item_tables(tmp_path / "item_info.parquet")
    fmap = feature_map().with_mm_embedding(mm_dim)
    splits = {s: load_split(tmp_path / f"{s}.parquet", fmap) for s in SPLITS}
    export_fuxictr(splits, tags, mm, fmap, cfg, tmp_path / "out")
    return splits, tags, mm, fmap


def test_rows_read_back_as_fuxictr_reads_them(tmp_path):
    """FuxiCTR's collator: history = full_item_seq[user_index][:seq_len] left-padded with 0, item features =
    item_info row `item_index`. That must give back every split row's history, item and features exactly."""
    write_inputs(tmp_path, HISTORIES)
    splits, tags, mm, _ = export(tmp_path, din_cfg(embedding_dim=4, mm_dim=2))
    out = tmp_path / "out"
    user_info = pl.read_parquet(out / "user_info.parquet")["full_item_seq"].to_list()
    items = pl.read_parquet(out / "item_info.parquet")
    seen_users = []
    for name in SPLITS:
        rows = pl.read_parquet(out / f"{name}.parquet")
        assert all(dtype.is_integer() for dtype in rows.dtypes)  # FuxiCTR stacks the columns into one int matrix
        for i, row in enumerate(rows.iter_rows(named=True)):
            history = user_info[row["user_index"]][:row["seq_len"]]
            assert [0] * (MAX_LEN - len(history)) + history == splits[name].item_seq[i].tolist()
            assert row["item_index"] == splits[name].item_id[i].item()
            assert row["label"] == splits[name].label[i].item()
            for c in ("likes_level", "views_level"):
                assert row[c] == splits[name].context[c][i].item()
            seen_users.append(row["user_index"])
    assert sorted(seen_users) == list(range(len(user_info)))  # one user_info row per split row, none shared
    for item in range(N_ITEMS + 1):
        row = items.row(item, named=True)  # FuxiCTR: item_info.set_index("item_index").iloc[item]
        assert row["item_index"] == row["item_id"] == item
        assert row["item_tags"] == tags[item].tolist()
        np.testing.assert_array_equal(np.array(row[f"item_emb_d{MM}"], dtype=np.float32), mm[item].numpy())


@pytest.mark.parametrize("use_mm_emb", [True, False])
def test_feature_map_names_every_column_with_our_widths(tmp_path, use_mm_emb):
    """FuxiCTR's collator passes only columns named in its feature map; its DIN's item width (the item-sourced
    features' embedding_dim, default embedding_dim) must equal our DIN's item_dim."""
    write_inputs(tmp_path, HISTORIES)
    cfg = din_cfg(embedding_dim=4, mm_dim=2, use_mm_emb=use_mm_emb)
    _, tags, mm, fmap = export(tmp_path, cfg)
    out = tmp_path / "out"
    spec = json.loads((out / "feature_map.json").read_text())
    assert spec["dataset_id"] == "mmctr" and spec["labels"] == ["label"]
    features = {k: v for f in spec["features"] for k, v in f.items()}
    item_features = {k for k, v in features.items() if v.get("source") == "item"}
    for name in SPLITS:
        assert set(pl.read_parquet(out / f"{name}.parquet").columns) == set(features) - item_features | {"label"}
    assert set(pl.read_parquet(out / "item_info.parquet").columns) == item_features | {"item_index"}
    assert {k for k, v in features.items() if v["type"] == "meta"} == {"user_index", "item_index", "seq_len"}
    assert (f"item_emb_d{MM}" in features) == use_mm_emb
    item_dim = sum(features[k].get("embedding_dim", cfg.arch.embedding_dim) for k in item_features)
    torch.manual_seed(0)
    assert item_dim == build_model(cfg.arch, fmap, tags, mm).item_dim
    assert features["item_id"]["vocab_size"] == N_ITEMS + 1 and features["item_tags"]["vocab_size"] == N_TAGS + 1


def test_padding_after_a_real_item_is_refused(tmp_path):
    """FuxiCTR keeps a history as a length, so a 0 inside a history cannot be exported faithfully."""
    write_inputs(tmp_path, {**HISTORIES, "valid": [[0, 1, 0, 3], [0, 0, 0, 2]]})
    with pytest.raises(DataError, match=r"valid\.parquet: row 0: item_seq is not left-padded"):
        export(tmp_path, din_cfg(embedding_dim=4, mm_dim=2))


def test_challenge_recipe_sets_both_sides_alike():
    """--recipe challenge: FuxiCTR's DIN gets the challenge's settings, and our DIN, built from the same overrides,
    the same widths, optimiser, regularisers, batches and early stopping."""
    cfg = din_cfg(**challenge_overrides())
    run = fuxictr_settings(cfg, MAX_LEN, threads=1, recipe="challenge")
    din = run["din"]
    assert {k: din[k] for k in CHALLENGE_DIN} == CHALLENGE_DIN
    assert (run["batch_size"], run["epochs"]) == (CHALLENGE_TRAIN["batch_size"], CHALLENGE_TRAIN["epochs"])
    assert (cfg.arch.embedding_dim, cfg.arch.mm_dim) == (din["embedding_dim"], CHALLENGE_TRAIN["mm_dim"])
    assert list(cfg.arch.din_attention_units) == din["attention_hidden_units"]
    assert list(cfg.arch.dnn_hidden_units) == din["dnn_hidden_units"]
    assert (cfg.learning_rate, cfg.patience, cfg.embedding_regularizer, cfg.net_regularizer) == (
        din["learning_rate"], din["early_stop_patience"], din["embedding_regularizer"], din["net_regularizer"])
    # the params recipe keeps cfg's own settings on FuxiCTR's side
    plain = fuxictr_settings(din_cfg(embedding_dim=4), MAX_LEN, threads=1)["din"]
    assert plain["embedding_dim"] == 4 and plain["batch_norm"] is False and plain["embedding_regularizer"] is None


@pytest.mark.parametrize("recipe", ["params", "challenge"])
def test_gpu_index_reaches_fuxictr_under_either_recipe(recipe):
    cfg = din_cfg(**challenge_overrides()) if recipe == "challenge" else din_cfg(embedding_dim=4)
    assert fuxictr_settings(cfg, MAX_LEN, threads=1, recipe=recipe)["din"]["gpu"] == -1
    assert fuxictr_settings(cfg, MAX_LEN, threads=1, recipe=recipe, gpu=0)["din"]["gpu"] == 0


def test_a_run_made_elsewhere_is_read_back_or_refused_by_name(tmp_path):
    """--fuxictr-result: the worker's two files, with exactly one probability per test row."""
    with pytest.raises(click.ClickException, match="result.json: missing"):
        read_fuxictr_result(tmp_path, 3)
    (tmp_path / "result.json").write_text(json.dumps({"valid_auc": [0.7]}))
    with pytest.raises(click.ClickException, match="test_probs.npy: missing"):
        read_fuxictr_result(tmp_path, 3)
    (tmp_path / "test_probs.npy").write_text("not numpy")
    with pytest.raises(click.ClickException, match="unreadable worker output"):
        read_fuxictr_result(tmp_path, 3)
    np.save(tmp_path / "test_probs.npy", np.array([0.1, 0.9]))
    with pytest.raises(click.ClickException, match=r"test_probs.npy: probabilities of shape \(2,\) for 3 test rows"):
        read_fuxictr_result(tmp_path, 3)
    result, probs = read_fuxictr_result(tmp_path, 2)
    assert result == {"valid_auc": [0.7]} and probs.tolist() == [0.1, 0.9]


def test_export_only_writes_the_worker_inputs_and_trains_nothing(tmp_path):
    """--export-only --fuxictr-gpu 0: the export and a run.json for a GPU worker elsewhere, no result, no training."""
    write_inputs(tmp_path, HISTORIES)
    feature_map().save(tmp_path / "feature_map.json")
    out = tmp_path / "out"
    args = ["--sequences", str(tmp_path), "--item-info", str(tmp_path / "item_info.parquet"), "--params", str(PARAMS),
            "--recipe", "challenge", "--export-only"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "--export-only needs --work-dir" in refused.output
    both = CliRunner().invoke(main, [*args, "--work-dir", str(out), "--fuxictr-result", str(tmp_path)])
    assert both.exit_code == 2 and "--export-only excludes" in both.output and not out.exists()
    done = CliRunner().invoke(main, [*args, "--work-dir", str(out), "--fuxictr-gpu", "0"])
    assert done.exit_code == 0, done.output
    assert json.loads((out / "run.json").read_text())["din"]["gpu"] == 0
    assert {p.name for p in out.iterdir()} == {"run.json", "feature_map.json", "item_info.parquet",
                                               "user_info.parquet", *(f"{s}.parquet" for s in SPLITS)}


@pytest.mark.parametrize("transform", ["given", "fitted", "none"])
def test_export_gives_fuxictr_the_given_table_at_its_own_scale(tmp_path, transform):
    """fit_pca divides a challenge_d128 table by its mean row norm and keeps that `scale` in the transform beside
    the item table; FuxiCTR, as the held-out check runs it, gets the organisers' table back at that scale. A
    fitted PCA's transform (no `scale`) or none at all leaves the table as it is."""
    write_inputs(tmp_path, HISTORIES)
    feature_map().save(tmp_path / "feature_map.json")
    if transform == "given":
        np.savez(tmp_path / "pca.npz", given=np.array("challenge_d128"), scale=np.array(7.25))
    elif transform == "fitted":
        np.savez(tmp_path / "pca.npz", mean=np.zeros(3))
    out = tmp_path / "out"
    done = CliRunner().invoke(main, ["--sequences", str(tmp_path), "--item-info", str(tmp_path / "item_info.parquet"),
                                     "--params", str(PARAMS), "--recipe", "challenge", "--export-only",
                                     "--work-dir", str(out)])
    assert done.exit_code == 0, done.output
    _, mm, _ = load_item_tables(tmp_path / "item_info.parquet")
    exported = np.array(pl.read_parquet(out / "item_info.parquet")[f"item_emb_d{MM}"].to_list(), dtype=np.float32)
    np.testing.assert_allclose(exported, mm.numpy() * (7.25 if transform == "given" else 1.0), rtol=1e-6)


def write_predictions(path: Path, test: pl.DataFrame, scores: np.ndarray) -> None:
    """An evaluate predictions.parquet over `test`, as the evaluate stage writes it."""
    test.select("user_id", "item_id", "event_ts", "label").with_columns(score=pl.Series(scores)).write_parquet(path)


def test_versus_reads_scores_made_on_the_same_test_split_or_names_what_differs(tmp_path):
    write_inputs(tmp_path, {"test": [[0, 0, 6, 5], [0, 1, 2, 3], [0, 0, 0, 2]]})
    test = pl.read_parquet(tmp_path / "test.parquet")
    split = load_split(tmp_path / "test.parquet", feature_map())
    good = tmp_path / "predictions.parquet"
    write_predictions(good, test, np.array([0.2, 0.7, 0.4]))
    assert read_versus(good, split).tolist() == [0.2, 0.7, 0.4]
    bad = tmp_path / "bad.parquet"
    write_predictions(bad, test.head(2), np.array([0.2, 0.7]))
    with pytest.raises(click.ClickException, match="bad.parquet: 2 rows for 3 test rows"):
        read_versus(bad, split)
    write_predictions(bad, test.with_columns(pl.when(pl.int_range(3) == 1).then(0).otherwise(pl.col("item_id"))
                                             .cast(pl.Int32).alias("item_id")), np.array([0.2, 0.7, 0.4]))
    with pytest.raises(click.ClickException, match=r"bad.parquet: row 1 is \(1, 0, 1.0\) where the test split has"):
        read_versus(bad, split)
    write_predictions(bad, test, np.array([0.2, np.nan, 0.4]))
    with pytest.raises(click.ClickException, match="bad.parquet: score of row 1 is not finite"):
        read_versus(bad, split)
    test.write_parquet(bad)  # no score column
    with pytest.raises(click.ClickException, match="bad.parquet: not an evaluate predictions file"):
        read_versus(bad, split)


@pytest.mark.parametrize("stand_in", [True, False])
def test_versus_prints_the_lead_over_a_run_made_before(tmp_path, stand_in):
    """--fuxictr-result with --versus: the table, then the given model's AUC and its leads, each with an interval
    from the user bootstrap; --no-stand-in trains no DIN of ours and prints FuxiCTR's row and lead alone."""
    test_rows = [[0, 0, 6, 5], [0, 1, 2, 3], [0, 0, 0, 2], [0, 0, 4, 1], [0, 0, 0, 3], [0, 5, 6, 1]]
    write_inputs(tmp_path, {**HISTORIES, "test": test_rows})
    feature_map().save(tmp_path / "feature_map.json")
    run = tmp_path / "run"
    run.mkdir()
    fux_probs = np.array([0.3, 0.2, 0.6, 0.5, 0.4, 0.1])
    np.save(run / "test_probs.npy", fux_probs)
    (run / "result.json").write_text(json.dumps({
        "train_rows": 3, "train_seconds": [1.0], "valid_seconds": [0.1], "valid_auc": [0.5], "parameters": 1,
        "threads": 1, "version": "2.3.10", "device": "cpu"}))
    test = pl.read_parquet(tmp_path / "test.parquet")
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])  # labels 0, 1, 0, 1, 0, 1: a perfect ranking
    write_predictions(tmp_path / "predictions.parquet", test, scores)
    result = CliRunner().invoke(main, [
        "--sequences", str(tmp_path), "--item-info", str(tmp_path / "item_info.parquet"), "--params", str(PARAMS),
        "--recipe", "challenge", "--epochs", "1", "--work-dir", str(tmp_path / "out"), "--fuxictr-result", str(run),
        "--versus", str(tmp_path / "predictions.parquet"), "--margin", "0.5", *([] if stand_in else ["--no-stand-in"])])
    assert result.exit_code == 0, result.output
    labels = test["label"].to_numpy()
    lead = auc(labels, scores) - auc(labels, fux_probs)
    assert f"predictions.parquet: test AUC {auc(labels, scores):.5f}" in result.output
    assert "bootstrap over the 6 test users" in result.output and "lead >= 0.5" in result.output
    assert f"over FuxiCTR 2.3.10 {lead:+.4f} (sd " in " ".join(result.output.split())
    assert ("over mmctr" in result.output) == stand_in
    assert ("\nmmctr " in result.output) == stand_in  # the stand-in's table row
    assert ("ours on the CPU" in result.output) == stand_in  # the header names only the runs it scored
