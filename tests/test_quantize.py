"""Semantic ids (pipeline/itememb/quantize.py, stages/quantize.py): faiss's residual k-means against plain
references (the residual chain, Lloyd's k-means, per-pair tag counts), determinism, collisions and the stage's
output contract."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from pipeline.core.io import DataError
from pipeline.itememb.quantize import (
    assign_codes,
    collision_share,
    dense_tag_ids,
    perplexity,
    prefix_groups,
    prefix_tag_agreement,
    quantize_report,
    residual_kmeans,
)
from pipeline.itememb.rqvae import train_rqvae
from stages.quantize import main as quantize_stage


def lloyd(x: np.ndarray, init: np.ndarray, iters: int = 50) -> np.ndarray:
    """Plain Lloyd's k-means from `init` centroids -> the label of each row."""
    centroids = init.copy()
    for _ in range(iters):
        labels = ((x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        centroids = np.stack([x[labels == c].mean(0) for c in range(len(centroids))])
    return labels


def blobs(n_per: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 10], [10, 0, 0], [0, 10, 0], [10, 10, 10]], dtype=np.float32)
    truth = np.repeat(np.arange(4), n_per)
    return (centres[truth] + rng.normal(scale=0.5, size=(len(truth), 3))).astype(np.float32), truth


def test_codes_are_the_residual_chain_over_the_codebooks():
    x = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    codes, books = residual_kmeans(x, levels=3, codebook_size=8, iterations=10, seed=0)
    assert codes.shape == (300, 3) and codes.dtype == np.int16 and books.shape == (3, 8, 8)
    np.testing.assert_array_equal(codes, assign_codes(x, books))
    # each level explains part of what was left: the reconstruction error falls level by level
    report = quantize_report(x, codes, books, np.zeros((301, 1), np.int64), sample_items=50, seed=0)
    errors = [lvl["recon_error"] for lvl in report["by_level"]]
    assert 1.0 > errors[0] > errors[1] > errors[2] > 0.0
    residual = x.astype(np.float64) - sum(books[lvl][codes[:, lvl]] for lvl in range(3))
    assert errors[2] == pytest.approx((residual ** 2).sum(1).mean() / (x.astype(np.float64) ** 2).sum(1).mean())


def test_first_level_finds_the_partition_of_plain_lloyd():
    x, truth = blobs()
    codes, _ = residual_kmeans(x, levels=1, codebook_size=4, iterations=20, seed=3)
    ref = lloyd(x, x[[0, 50, 100, 150]])
    pairs = set(zip(codes[:, 0].tolist(), ref.tolist()))
    assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4  # the same partition, up to the labels' names
    assert len(set(zip(ref.tolist(), truth.tolist()))) == 4


def test_codes_are_deterministic_for_a_seed():
    x = np.random.default_rng(2).normal(size=(400, 6)).astype(np.float32)
    a = residual_kmeans(x, 2, 16, 10, seed=5)
    b = residual_kmeans(x, 2, 16, 10, seed=5)
    c = residual_kmeans(x, 2, 16, 10, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_more_centroids_than_items_names_the_key():
    with pytest.raises(DataError, match=r"^quantize\.codebook_size: 16 centroids need at least as many items"):
        residual_kmeans(np.zeros((10, 3), np.float32), 1, 16, 5, 0)


def test_collisions_and_perplexity_count_by_hand():
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 1], [2, 0]], dtype=np.int16)
    assert collision_share(codes) == pytest.approx(2 / 5)  # items 1 and 2 share (0, 1)
    assert prefix_groups(codes, 1).tolist() == [0, 0, 0, 1, 2]
    assert perplexity(np.array([0, 1, 2, 3])) == pytest.approx(4.0)
    assert perplexity(np.array([7, 7, 7])) == pytest.approx(1.0)
    p = np.array([3, 1, 1]) / 5
    assert perplexity(codes[:, 0]) == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_prefix_tag_agreement_against_a_per_pair_reference():
    rng = np.random.default_rng(4)
    n = 120
    tags = np.zeros((n + 1, 3), np.int64)
    tags[1:] = rng.integers(0, 6, size=(n, 3))  # 0 = no tag; some items have none
    groups = rng.integers(0, 9, size=n)
    queries = np.sort(rng.choice(np.arange(1, n + 1), size=60, replace=False))
    shares = []
    for q in queries:
        mine = set(tags[q].tolist()) - {0}
        others = [o for o in range(1, n + 1) if o != q and groups[o - 1] == groups[q - 1]]
        if mine and others:
            shares.append(sum(1 for o in others if mine & (set(tags[o].tolist()) - {0})) / len(others))
    got, count = prefix_tag_agreement(groups, dense_tag_ids(tags), queries)
    assert count == len(shares) and got == pytest.approx(np.mean(shares))


def _agreement_by_pairs_of_tags(groups: np.ndarray, tags: np.ndarray, queries: np.ndarray) -> tuple[float | None, int]:
    """The former prefix_tag_agreement, the reference: each query's (others, T, T) tag comparison."""
    order = np.argsort(groups, kind="stable")
    starts = np.searchsorted(groups[order], np.arange(groups.max() + 1))
    ends = np.append(starts[1:], len(order))
    shares = []
    for q in queries:
        g = groups[q - 1]
        others = order[starts[g]:ends[g]] + 1
        others = others[others != q]
        mine = tags[q][tags[q] != 0]
        if len(others) and len(mine):
            shares.append(float((tags[others][:, :, None] == mine[None, None, :]).any(axis=(1, 2)).mean()))
    return (float(np.mean(shares)) if shares else None), len(shares)


@pytest.mark.parametrize("seed", range(12))
def test_prefix_tag_agreement_equals_the_pairwise_comparison_exactly(seed: int) -> None:
    """Random groups (one group = collapsed codes), tags with 0 = none, items with no tags, repeated and huge ids:
    the same mean and count, bit for bit, as comparing every pair of tags."""
    rng = np.random.default_rng(seed)
    n, t = int(rng.integers(2, 150)), int(rng.integers(1, 6))
    tags = np.zeros((n + 1, t), np.int64)
    vocab = rng.choice([0, 1, 2, 3, 7, 2**31 - 1, 2**31 - 2], size=int(rng.integers(1, 7)), replace=False)
    tags[1:] = rng.choice(vocab, size=(n, t))
    tags[1:][rng.random(n) < 0.25] = 0  # items with no tags
    groups = rng.integers(0, int(rng.integers(1, 6)), size=n)
    queries = np.sort(rng.choice(np.arange(1, n + 1), size=int(rng.integers(1, n + 1)), replace=False))
    assert prefix_tag_agreement(groups, dense_tag_ids(tags), queries) == _agreement_by_pairs_of_tags(groups, tags,
                                                                                                    queries)


def test_prefix_tag_agreement_makes_no_tag_by_tag_temporary() -> None:
    """All items in one group (codes collapsed), many tag slots: peak numpy memory stays a few times the (N, T)
    tags, where the (N, T, T) comparison alone was T / 8 times that."""
    n, t = 500, 400
    tags = np.random.default_rng(0).integers(0, 1000, size=(n + 1, t))
    tags[0] = 0
    groups, queries = np.zeros(n, np.int64), np.arange(1, 11)
    tracemalloc.start()
    try:
        prefix_tag_agreement(groups, dense_tag_ids(tags), queries)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * tags.nbytes


def test_items_close_in_the_embedding_share_codes_and_tags():
    """Two tag families on two blobs each: items sharing a code prefix share tags far above chance."""
    x, truth = blobs(n_per=60)
    tags = np.zeros((len(x) + 1, 1), np.int64)
    tags[1:, 0] = 1 + truth // 2  # blobs 0, 1 -> tag 1; blobs 2, 3 -> tag 2
    codes, books = residual_kmeans(x, 2, 4, 20, seed=0)
    report = quantize_report(x, codes, books, tags, sample_items=100, seed=0)
    assert report["by_level"][0]["tag_agreement"] == 1.0
    assert report["chance_tag_agreement"] < 0.7
    assert report["items"] == 240 and report["levels"] == 2 and report["codebook_size"] == 4
    assert report["by_level"][0]["used_codes"] == 4
    assert report["distinct_codes"] == len({tuple(c) for c in codes.tolist()})


def _item_info(path, n: int = 200, dim: int = 8, empty: tuple[int, ...] = ()) -> None:
    """An item_info.parquet of n items with N(0, 1) embeddings, the items in `empty` (and padding) all zeros."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n + 1, dim)).astype(np.float32)
    emb[[0, *empty]] = 0
    pl.DataFrame({"item_id": np.arange(n + 1, dtype=np.int32),
                  "item_tags": [[0, 0]] + [[0, int(t)] for t in rng.integers(1, 5, size=n)],
                  f"item_emb_d{dim}": pl.Series(emb, dtype=pl.Array(pl.Float32, dim))},
                 schema_overrides={"item_tags": pl.List(pl.Int32)}).write_parquet(path)


def _run(tmp_path, info, **extra) -> tuple[int, str]:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"quantize": {"levels": 2, "codebook_size": 8, "iterations": 5,
                                                   "sample_items": 50, "seed": 0, **extra}}))
    res = CliRunner().invoke(quantize_stage, ["--item-info", str(info), "--out", str(tmp_path / "ids.parquet"),
                                              "--metrics", str(tmp_path / "q.json"), "--params", str(params)])
    return res.exit_code, res.output


def test_stage_writes_an_item_table_of_codes(tmp_path):
    _item_info(tmp_path / "info.parquet")
    code, out = _run(tmp_path, tmp_path / "info.parquet")
    assert code == 0, out
    ids = pl.read_parquet(tmp_path / "ids.parquet")
    assert ids.schema == {"item_id": pl.Int32, "codes": pl.Array(pl.Int16, 2)}
    assert ids["item_id"].to_list() == list(range(201))
    codes = ids["codes"].to_numpy()
    assert codes[0].tolist() == [-1, -1] and codes[1:].min() >= 0 and codes[1:].max() < 8
    info = pl.read_parquet(tmp_path / "info.parquet")
    ref, _ = residual_kmeans(info["item_emb_d8"].to_numpy()[1:], 2, 8, 5, 0)
    np.testing.assert_array_equal(codes[1:], ref)
    metrics = json.loads((tmp_path / "q.json").read_text())
    assert [lvl["level"] for lvl in metrics["by_level"]] == [1, 2]


EMPTY = (3, 50, 51, 120)


@pytest.mark.parametrize("method", ["kmeans", "rqvae"])
def test_items_without_content_are_left_out_of_the_fit_and_the_report(tmp_path, method):
    """Zero rows (no usable title or cover, a release's missing embedding) are not fitted: the other items get the
    codes of a fit without them, and each empty item the zero vector's codes; `items` counts the others."""
    _item_info(tmp_path / "info.parquet", empty=EMPTY)
    extra = {"rqvae_epochs": 3, "rqvae_hidden": 8, "rqvae_latent_dim": 4} if method == "rqvae" else {}
    code, out = _run(tmp_path, tmp_path / "info.parquet", method=method, **extra)
    assert code == 0, out
    codes = pl.read_parquet(tmp_path / "ids.parquet")["codes"].to_numpy().astype(np.int16)  # (201, 2)
    emb = pl.read_parquet(tmp_path / "info.parquet")["item_emb_d8"].to_numpy()
    content = np.setdiff1d(np.arange(1, 201), EMPTY)
    if method == "rqvae":
        fit = train_rqvae(emb[content], 2, 8, seed=0, hidden=8, latent_dim=4, epochs=3, learning_rate=0.001,
                          beta=0.25, batch_size=256)
        fitted, zero_codes = fit.codes, fit.zero_codes
    else:
        fitted, books = residual_kmeans(emb[content], 2, 8, 5, 0)
        zero_codes = assign_codes(np.zeros((1, 8)), books)[0]
    np.testing.assert_array_equal(codes[content], fitted)
    np.testing.assert_array_equal(codes[list(EMPTY)], np.tile(zero_codes, (len(EMPTY), 1)))
    metrics = json.loads((tmp_path / "q.json").read_text())
    assert metrics["items"] == 196 and metrics["empty_items"] == 4


def test_zero_rows_no_longer_draw_a_flat_embedding_into_one_code(tmp_path):
    """Why they are left out: identical points at the origin are nearer every item of a flat 64-d embedding than
    the other centroids are. With 10% zero rows, a fit over every row put the others into about one code of 16
    (level-1 perplexity 1.2); the stage's fit uses nearly all 16."""
    _item_info(tmp_path / "info.parquet", n=600, dim=64, empty=tuple(range(1, 61)))
    code, out = _run(tmp_path, tmp_path / "info.parquet", levels=1, codebook_size=16, iterations=10)
    assert code == 0, out
    assert json.loads((tmp_path / "q.json").read_text())["by_level"][0]["perplexity"] > 12
    codes = pl.read_parquet(tmp_path / "ids.parquet")["codes"].to_numpy()
    emb = pl.read_parquet(tmp_path / "info.parquet")["item_emb_d64"].to_numpy()
    every_row, _ = residual_kmeans(emb[1:], 1, 16, 10, 0)
    assert perplexity(every_row[60:, 0]) < 4 < 12 < perplexity(codes[61:, 0])


def test_too_few_items_with_content_names_the_file_and_the_key(tmp_path):
    _item_info(tmp_path / "info.parquet", n=12, empty=(1, 2, 3, 4, 5))
    code, out = _run(tmp_path, tmp_path / "info.parquet")
    assert code != 0 and (f"{tmp_path / 'info.parquet'}: 7 items with a non-zero embedding (of 12), fewer than "
                          "quantize.codebook_size (8) centroids") in " ".join(out.split())
    assert not (tmp_path / "ids.parquet").exists()


def test_stage_refuses_an_item_table_out_of_id_order(tmp_path):
    _item_info(tmp_path / "info.parquet")
    shuffled = pl.read_parquet(tmp_path / "info.parquet").reverse()
    shuffled.write_parquet(tmp_path / "bad.parquet")
    code, out = _run(tmp_path, tmp_path / "bad.parquet")
    assert code != 0 and "bad.parquet: row 0 holds item_id 200" in out
    assert not (tmp_path / "ids.parquet").exists()


def test_levels_are_coarse_to_fine():
    """An item's first code groups it coarsely: more items share a 1-code prefix than a 2-code one."""
    x = np.random.default_rng(3).normal(size=(500, 4)).astype(np.float32)
    codes, _ = residual_kmeans(x, 2, 8, 10, 0)
    sizes = [np.bincount(prefix_groups(codes, n)).mean() for n in (1, 2)]
    assert sizes[0] > sizes[1]


RQVAE_ARGS = {"hidden": 16, "latent_dim": 4, "epochs": 30, "learning_rate": 0.01, "beta": 0.25, "batch_size": 64}


def test_rqvae_codes_are_the_residual_chain_of_its_latent_and_deterministic():
    """quantize.method rqvae: the returned codes are the plain residual chain over the learnt codebooks of the
    encoder's latent; the same seed gives the same codes, another seed other ones; training lowers the loss and
    the decoder explains most of the embedding."""
    x, truth = blobs(n_per=60)
    x /= 10  # fit_pca's rows are l2-normalised: the same scale
    fit = train_rqvae(x, 2, 4, seed=0, **RQVAE_ARGS)
    assert fit.codes.shape == (240, 2) and fit.codes.dtype == np.int16
    assert fit.codebooks.shape == (2, 4, 4) and fit.latent.shape == (240, 4)
    np.testing.assert_array_equal(fit.codes, assign_codes(fit.latent, fit.codebooks))
    np.testing.assert_array_equal(train_rqvae(x, 2, 4, seed=0, **RQVAE_ARGS).codes, fit.codes)
    assert not np.array_equal(train_rqvae(x, 2, 4, seed=1, **RQVAE_ARGS).latent, fit.latent)
    assert fit.losses[-1] < fit.losses[0] / 2 and fit.recon_error < 0.1
    # the four blobs get four different code tuples, each held by most of its blob
    tuples = fit.codes[:, 0].astype(np.int64) * 4 + fit.codes[:, 1]
    modal = [np.bincount(tuples[truth == b]).argmax() for b in range(4)]
    assert len(set(modal)) == 4
    assert all((tuples[truth == b] == modal[b]).mean() > 0.6 for b in range(4))


def test_stage_with_rqvae_writes_codes_and_reports_the_decoder(tmp_path):
    _item_info(tmp_path / "info.parquet")
    code, out = _run(tmp_path, tmp_path / "info.parquet", method="rqvae", rqvae_epochs=3, rqvae_hidden=8,
                     rqvae_latent_dim=4)
    assert code == 0, out
    codes = pl.read_parquet(tmp_path / "ids.parquet")["codes"].to_numpy()
    assert codes[0].tolist() == [-1, -1] and codes[1:].min() >= 0 and codes[1:].max() < 8
    metrics = json.loads((tmp_path / "q.json").read_text())
    assert metrics["method"] == "rqvae" and 0 <= metrics["decoder_recon_error"] and "final_loss" in metrics
