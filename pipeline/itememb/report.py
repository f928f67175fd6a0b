"""Neighbour agreement: do an embedding's nearest items share the item's tags (and, on synthetic data, its planted
topic)? Computed for the text, image and PCA item tables so users see what each modality contributes.

For each query item q (all items 1..N, or a seeded sample of `sample_items`), its k nearest items by cosine,
itself excluded, come from the faiss index chosen by params (pipeline/itememb/neighbours.py `approx_index`):
- tag_agreement: mean over queries that have at least one tag of (neighbours sharing >= 1 tag with q) / k;
- topic_agreement: mean over queries of (neighbours with q's planted topic) / k (synthetic data only).
The same numbers for k uniformly random other items are the `chance` baseline, and the index's recall@k against
exact (flat) search on the same queries is reported per table.

Item tables here are (N+1, D) arrays, row i = item i, row 0 = padding: embedding frames are placed by their
item_id column (`scatter_by_id`), never by row position.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from pipeline.core.config import EmbeddingReportConfig
from pipeline.core.io import DataError
from pipeline.core.items import check_item_table, scatter_by_id, unit_rows
from pipeline.itememb.neighbours import approx_index, recall_at_k, result_cosines, usable_items

log = logging.getLogger(__name__)

MODALITIES = ("text", "image", "pca")


def frame_table(frame: pl.DataFrame, n_rows: int, where: str) -> np.ndarray:
    """An embedding frame (item_id Int32, emb Array(Float32, D)) -> (n_rows, D) float32 item table; items the frame
    lacks stay zero rows."""
    if "emb" not in frame.columns:
        raise DataError(f"{where}: missing column 'emb' (has {', '.join(frame.columns)})")
    try:
        return scatter_by_id(frame["item_id"].to_numpy(), frame["emb"].to_numpy().astype(np.float32), n_rows)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def item_tag_sets(items: pl.DataFrame, where: str) -> list[frozenset[int]]:
    """items.parquet (row i = item i, checked) -> the set of tag ids of each item (0 = padding, dropped)."""
    check_item_table(items, where)
    return [frozenset(t for t in tags if t) for tags in items["item_tags"].to_list()]


def sample_queries(n_items: int, sample_items: int, seed: int) -> np.ndarray:
    """Query item ids, ascending: all of 1..n_items, or a seeded sample of `sample_items` of them."""
    ids = np.arange(1, n_items + 1)
    if n_items <= sample_items:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size=sample_items, replace=False))


def neighbours_without_self(index, table: np.ndarray, index_ids: np.ndarray, query_ids: np.ndarray,
                            k: int) -> np.ndarray:
    """(Q, k) item ids of each query's nearest items in a faiss index over table[index_ids] (index row r = item
    index_ids[r]), the query itself excluded (its first occurrence; otherwise the (k+1)-th hit is dropped).
    -1 = no result."""
    _, rows = index.search(unit_rows(table[query_ids]), k + 1)  # (Q, k+1) rows of table[index_ids]
    ids = np.where(rows >= 0, index_ids[np.clip(rows, 0, None)], -1)
    out = np.empty((len(query_ids), k), dtype=np.int64)
    for i, (q, row) in enumerate(zip(query_ids, ids)):
        hit = np.flatnonzero(row == q)
        out[i] = np.delete(row, hit[0] if hit.size else k)
    return out


def random_neighbours(query_ids: np.ndarray, n_items: int, k: int, seed: int) -> np.ndarray:
    """(Q, k) distinct uniformly random item ids in 1..n_items other than each query (the chance baseline)."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(query_ids), k), dtype=np.int64)
    for i, q in enumerate(query_ids):
        others = rng.choice(n_items - 1, size=k, replace=False) + 1  # 1..n_items-1
        out[i] = np.where(others >= q, others + 1, others)  # skip q itself
    return out


def tag_agreement(query_ids: np.ndarray, neighbour_ids: np.ndarray, tags: list[frozenset[int]]) -> float | None:
    """Mean over queries with >= 1 tag of the share of their k neighbours sharing a tag; None if no query has tags."""
    k = neighbour_ids.shape[1]
    shares = [sum(1 for n in row if n > 0 and tags[q] & tags[n]) / k
              for q, row in zip(query_ids, neighbour_ids) if tags[q]]
    return float(np.mean(shares)) if shares else None


def topic_agreement(query_ids: np.ndarray, neighbour_ids: np.ndarray, topic: np.ndarray) -> float:
    """Mean over queries of the share of their k neighbours with the query's topic (topic: (N+1,), row i = item i)."""
    valid = neighbour_ids > 0  # (Q, k)
    same = valid & (topic[np.where(valid, neighbour_ids, 0)] == topic[query_ids][:, None])
    return float(same.mean())


def _agreements(query_ids: np.ndarray, neighbour_ids: np.ndarray, tags: list[frozenset[int]],
                topic: np.ndarray | None) -> dict[str, float]:
    out = {}
    tag = tag_agreement(query_ids, neighbour_ids, tags)
    if tag is not None:
        out["tag_agreement"] = tag
    if topic is not None:
        out["topic_agreement"] = topic_agreement(query_ids, neighbour_ids, topic)
    return out


def embedding_report(tables: dict[str, np.ndarray], tags: list[frozenset[int]], topic: np.ndarray | None,
                     cfg: EmbeddingReportConfig) -> dict:
    """The metrics dict: per table {tag_agreement, topic_agreement (when `topic`), recall_at_k, queries,
    zero_items}, `chance` (random neighbours), `index`, `k`, `queries`, and `recall_at_k` = the lowest recall over
    the tables. Items with a zero vector in a table (`zero_items`: unusable title/cover) are neither queries nor
    neighbours for that table; a table with no more than k usable items is reported as {skipped: why, queries: 0,
    zero_items} (and has no recall).

    tables: name -> (N+1, D) item table; tags: N+1 tag sets; topic: (N+1,) planted topics or None."""
    n_rows = len(tags)
    for name, table in tables.items():
        if table.shape[0] != n_rows:
            raise DataError(f"{name} embeddings have {table.shape[0]} item rows, the item table {n_rows}")
    if topic is not None and topic.shape[0] != n_rows:
        raise DataError(f"planted topics cover {topic.shape[0] - 1} items, the item table {n_rows - 1}")
    n_items = n_rows - 1
    if n_items < 2:
        raise DataError(f"neighbour agreement needs at least 2 items, got {n_items}")
    k = min(cfg.k, n_items - 1)
    queries = sample_queries(n_items, cfg.sample_items, cfg.seed)
    report: dict = {"index": cfg.index, "k": k, "queries": len(queries)}
    for name, table in tables.items():
        ids = usable_items(table)
        if len(ids) <= k:
            # A report reports: a modality without usable vectors (no titles, no covers) is a line, not a stop.
            report[name] = {"skipped": f"only {len(ids)} items have a non-zero vector, need more than k={k}",
                            "queries": 0, "zero_items": int(n_items - len(ids))}
            log.warning("%s embeddings: %s", name, report[name]["skipped"])
            continue
        mine = queries[np.isin(queries, ids)]
        index = approx_index(table[ids], cfg.index, nlist=cfg.ivf_nlist, nprobe=cfg.ivf_nprobe, hnsw_m=cfg.hnsw_m,
                             ef_search=cfg.hnsw_ef_search, seed=cfg.seed)
        found = neighbours_without_self(index, table, ids, mine, k)
        exact = found if cfg.index == "flat" else neighbours_without_self(
            approx_index(table[ids], "flat"), table, ids, mine, k)
        recall = recall_at_k(result_cosines(table, mine, found), result_cosines(table, mine, exact))
        report[name] = {**_agreements(mine, found, tags, topic), "recall_at_k": recall,
                        "queries": len(mine), "zero_items": int(n_items - len(ids))}
    report["chance"] = _agreements(queries, random_neighbours(queries, n_items, k, cfg.seed), tags, topic)
    recalls = [report[name]["recall_at_k"] for name in tables if "recall_at_k" in report[name]]
    if recalls:
        report["recall_at_k"] = min(recalls)
    return report
