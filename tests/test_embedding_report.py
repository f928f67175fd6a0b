"""pipeline/itememb/report.py against a plain-Python brute-force reference, and the embedding_report stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from pipeline.core.config import EmbeddingReportConfig
from pipeline.core.io import DataError
from pipeline.itememb.neighbours import approx_index
from pipeline.itememb.report import (
    embedding_report,
    frame_table,
    neighbours_without_self,
    random_neighbours,
    sample_queries,
    tag_agreement,
)
from pipeline.sources.planted import PlantedModel
from stages.embedding_report import main as stage

N_ITEMS, N_TOPICS = 40, 4


def _tiny(seed: int = 0) -> tuple[dict[str, np.ndarray], list[frozenset[int]], np.ndarray]:
    """Item tables (N+1, D) with topic structure, tag sets and planted topics (row 0 = padding)."""
    rng = np.random.default_rng(seed)
    topic = np.concatenate([[-1], rng.integers(0, N_TOPICS, size=N_ITEMS)])
    centres = rng.normal(size=(N_TOPICS, 6))
    tables = {}
    for name, noise in (("text", 0.3), ("image", 0.6), ("pca", 0.45)):
        t = centres[topic[1:]] + noise * rng.normal(size=(N_ITEMS, 6))
        tables[name] = np.vstack([np.zeros((1, 6)), t]).astype(np.float32)
    tags = [frozenset()] + [frozenset({int(topic[i]) + 1, int(rng.integers(10, 14))}) if i % 7 else frozenset()
                            for i in range(1, N_ITEMS + 1)]
    return tables, tags, topic


def _reference(table: np.ndarray, queries: list[int], k: int, tags: list[frozenset[int]], topic: np.ndarray
               ) -> tuple[float, float]:
    """Brute force in plain Python: cosine to every other item, best k, shares averaged over queries."""
    rows = [[float(v) for v in r] for r in table]

    def cos(a: list[float], b: list[float]) -> float:
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        return sum(x * y for x, y in zip(a, b)) / (na * nb)

    tag_shares, topic_shares = [], []
    for q in queries:
        others = sorted((i for i in range(1, len(rows)) if i != q), key=lambda i: (-cos(rows[q], rows[i]), i))[:k]
        if tags[q]:
            tag_shares.append(sum(bool(tags[q] & tags[n]) for n in others) / k)
        topic_shares.append(sum(topic[q] == topic[n] for n in others) / k)
    return sum(tag_shares) / len(tag_shares), sum(topic_shares) / len(topic_shares)


@pytest.mark.parametrize("sample_items", [N_ITEMS, 15])
def test_agreement_equals_brute_force(sample_items: int) -> None:
    tables, tags, topic = _tiny()
    cfg = EmbeddingReportConfig(index="flat", k=5, sample_items=sample_items, seed=3)
    report = embedding_report(tables, tags, topic, cfg)
    queries = sample_queries(N_ITEMS, sample_items, 3).tolist()
    assert report["queries"] == len(queries) and report["k"] == 5 and report["index"] == "flat"
    for name, table in tables.items():
        tag_ref, topic_ref = _reference(table, queries, 5, tags, topic)
        assert report[name]["tag_agreement"] == pytest.approx(tag_ref)
        assert report[name]["topic_agreement"] == pytest.approx(topic_ref)
        assert report[name]["recall_at_k"] == 1.0
    # the topic-clustered tables beat random neighbours clearly, and the least noisy one agrees most
    assert report["text"]["topic_agreement"] > report["image"]["topic_agreement"]
    assert report["image"]["topic_agreement"] > report["chance"]["topic_agreement"] + 0.1


def test_chance_baseline_is_random_neighbour_agreement() -> None:
    tables, tags, topic = _tiny()
    cfg = EmbeddingReportConfig(index="flat", k=5, sample_items=N_ITEMS, seed=1)
    report = embedding_report(tables, tags, topic, cfg)
    queries = np.arange(1, N_ITEMS + 1)
    rand = random_neighbours(queries, N_ITEMS, 5, 1)
    shares = [sum(topic[q] == topic[n] for n in row) / 5 for q, row in zip(queries, rand)]
    assert report["chance"]["topic_agreement"] == pytest.approx(np.mean(shares))
    assert report["chance"]["tag_agreement"] == pytest.approx(tag_agreement(queries, rand, tags))


def test_random_neighbours_are_distinct_others_in_range() -> None:
    queries = np.arange(1, 31)
    rand = random_neighbours(queries, 30, 29, seed=0)
    for q, row in zip(queries, rand):
        assert sorted(row.tolist()) == [i for i in range(1, 31) if i != q]
    np.testing.assert_array_equal(rand, random_neighbours(queries, 30, 29, seed=0))


def test_sample_queries_all_or_seeded_sorted_sample() -> None:
    np.testing.assert_array_equal(sample_queries(5, 10, 0), [1, 2, 3, 4, 5])
    s = sample_queries(100, 10, 7)
    assert len(set(s.tolist())) == 10 and s.min() >= 1 and s.max() <= 100 and (np.diff(s) > 0).all()
    np.testing.assert_array_equal(s, sample_queries(100, 10, 7))


def test_neighbours_exclude_the_query_even_with_a_duplicate() -> None:
    tables, _, _ = _tiny()
    table = tables["text"].copy()
    table[9] = table[4] * 3  # same direction as item 4: both score 1 for query 4
    ids = np.arange(1, N_ITEMS + 1)
    found = neighbours_without_self(approx_index(table[1:], "flat"), table, ids, np.array([4, 9]), 3)
    assert found[0, 0] == 9 and 4 not in found[0].tolist()
    assert found[1, 0] == 4 and 9 not in found[1].tolist()


def test_items_without_tags_are_left_out_and_no_tags_means_no_key() -> None:
    tags = [frozenset(), frozenset({1}), frozenset(), frozenset({1, 2})]
    assert tag_agreement(np.array([1, 2, 3]), np.array([[3], [1], [2]]), tags) == pytest.approx(0.5)
    tables, _, _ = _tiny()
    report = embedding_report(tables, [frozenset()] * (N_ITEMS + 1), None,
                              EmbeddingReportConfig(index="flat", k=3))
    assert report["text"] == {"recall_at_k": 1.0, "queries": N_ITEMS, "zero_items": 0} and report["chance"] == {}


def test_zero_vector_items_are_neither_queries_nor_neighbours() -> None:
    """An item whose cover was unusable has a zero image vector: it is left out of that table's queries and index
    (its agreement would be noise), and counted as zero_items; other tables still use it."""
    tables, tags, topic = _tiny()
    zero = [2, 5, 11]
    tables["image"][zero] = 0.0
    report = embedding_report(tables, tags, topic, EmbeddingReportConfig(index="flat", k=3))
    assert report["image"]["queries"] == N_ITEMS - 3 and report["image"]["zero_items"] == 3
    assert report["text"]["queries"] == N_ITEMS and report["text"]["zero_items"] == 0
    queries = [q for q in range(1, N_ITEMS + 1) if q not in zero]
    ref_rows = np.vstack([tables["image"][i] for i in [0, *queries]])
    remap = {new: old for new, old in enumerate([0, *queries])}
    tag_ref, topic_ref = _reference(ref_rows, list(range(1, len(queries) + 1)), 3,
                                    [tags[remap[i]] for i in range(len(remap))],
                                    np.array([topic[remap[i]] for i in range(len(remap))]))
    assert report["image"]["tag_agreement"] == pytest.approx(tag_ref)
    assert report["image"]["topic_agreement"] == pytest.approx(topic_ref)


def test_frame_table_places_rows_by_item_id() -> None:
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    ids = [3, 1, 4, 2]
    frame = pl.DataFrame({"item_id": pl.Series(ids, dtype=pl.Int32),
                          "emb": pl.Series(emb, dtype=pl.Array(pl.Float32, 3))})
    table = frame_table(frame, 6, "f")
    for j, i in enumerate(ids):
        np.testing.assert_array_equal(table[i], emb[j])
    assert not table[0].any() and not table[5].any()  # padding, and an item the frame lacks
    with pytest.raises(DataError, match="f: item ids must lie in 1..3"):
        frame_table(frame, 4, "f")


def test_mismatched_table_rows_are_a_data_error() -> None:
    tables, tags, topic = _tiny()
    tables["image"] = tables["image"][:-1]
    with pytest.raises(DataError, match="image embeddings have 40 item rows, the item table 41"):
        embedding_report(tables, tags, topic, EmbeddingReportConfig())


def test_a_modality_without_usable_vectors_is_a_line_not_a_stop() -> None:
    """No titles (every text vector zero): the report says so for text and still reports the other tables."""
    tables, tags, topic = _tiny()
    tables["text"][:] = 0.0
    report = embedding_report(tables, tags, topic, EmbeddingReportConfig())
    assert report["text"] == {"skipped": f"only 0 items have a non-zero vector, need more than k={report['k']}",
                              "queries": 0, "zero_items": N_ITEMS}
    assert report["image"]["queries"] > 0 and report["recall_at_k"] == min(
        report[name]["recall_at_k"] for name in ("image", "pca"))


# ---------------------------------------------------------------------------------------------- the stage


def _stage_files(tmp_path: Path, planted: bool) -> dict[str, Path]:
    tables, tags, topic = _tiny()
    rng = np.random.default_rng(5)
    paths = {name: tmp_path / f"{name}.parquet" for name in ("text", "image", "item_info", "items")}
    for name in ("text", "image"):
        order = rng.permutation(N_ITEMS) + 1  # frames in shuffled id order: rows must be placed by item_id
        pl.DataFrame({"item_id": pl.Series(order, dtype=pl.Int32),
                      "emb": pl.Series(tables[name][order], dtype=pl.Array(pl.Float32, 6)),
                      "status": ["ok"] * N_ITEMS}).write_parquet(paths[name])
    item_tags = pl.Series([sorted(t) + [0] * (2 - len(t)) for t in tags], dtype=pl.List(pl.Int32))
    ids = pl.Series(np.arange(N_ITEMS + 1), dtype=pl.Int32)
    pl.DataFrame({"item_id": ids, "item_tags": item_tags,
                  "item_emb_d6": pl.Series(tables["pca"], dtype=pl.Array(pl.Float32, 6))}
                 ).write_parquet(paths["item_info"])
    pl.DataFrame({"item_id": ids, "item_tags": item_tags}).write_parquet(paths["items"])
    raw = tmp_path / "raw"
    raw.mkdir()
    if planted:
        latent = np.vstack([np.zeros((1, 2)), np.ones((N_ITEMS, 2)) / np.sqrt(2)])
        PlantedModel(latent, np.zeros(N_ITEMS + 1), topic, np.zeros((3, 2)), 1.0, 1.0, 1.0, 1, "softmax", 0.0).save(
            raw / "planted.npz")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"source": "synthetic", "raw_dir": "data/raw", "unknown_items": "error",
                 "item_embeddings": "extracted"},
        "embedding_report": {"index": "hnsw", "k": 5, "sample_items": 30, "seed": 0, "ivf_nlist": 4,
                             "ivf_nprobe": 4, "hnsw_m": 8, "hnsw_ef_search": 64}}))
    return {**paths, "raw": raw, "params": params, "metrics": tmp_path / "out" / "embedding_report.json"}


def _invoke(p: dict[str, Path]):
    return CliRunner().invoke(stage, [
        "--text", str(p["text"]), "--image", str(p["image"]), "--item-info", str(p["item_info"]),
        "--items", str(p["items"]), "--raw-dir", str(p["raw"]), "--metrics", str(p["metrics"]),
        "--params", str(p["params"])])


def test_stage_writes_agreement_metrics(tmp_path: Path) -> None:
    p = _stage_files(tmp_path, planted=True)
    result = _invoke(p)
    assert result.exit_code == 0, result.output
    got = json.loads(p["metrics"].read_text())
    tables, tags, topic = _tiny()
    cfg = EmbeddingReportConfig(index="hnsw", k=5, sample_items=30, seed=0, ivf_nlist=4, ivf_nprobe=4, hnsw_m=8,
                                hnsw_ef_search=64)
    expected = embedding_report(tables, tags, topic, cfg)  # the stage placed the shuffled frames by item_id
    assert got == expected
    assert got["index"] == "hnsw" and got["queries"] == 30 and got["recall_at_k"] > 0.9
    assert set(got["text"]) == {"tag_agreement", "topic_agreement", "recall_at_k", "queries", "zero_items"}


def test_stage_without_planted_model_reports_tags_only(tmp_path: Path) -> None:
    p = _stage_files(tmp_path, planted=False)
    result = _invoke(p)
    assert result.exit_code == 0, result.output
    got = json.loads(p["metrics"].read_text())
    assert set(got["pca"]) == {"tag_agreement", "recall_at_k", "queries", "zero_items"}
    assert set(got["chance"]) == {"tag_agreement"}


def test_stage_bad_params_key_is_one_line(tmp_path: Path) -> None:
    p = _stage_files(tmp_path, planted=False)
    params = yaml.safe_load(p["params"].read_text())
    params["embedding_report"]["index"] = "lsh"
    p["params"].write_text(yaml.safe_dump(params))
    result = _invoke(p)
    assert result.exit_code == 1
    assert result.output.strip() == "Error: embedding_report.index: must be one of 'flat', 'ivf', 'hnsw', got 'lsh'"
    assert not p["metrics"].exists()
