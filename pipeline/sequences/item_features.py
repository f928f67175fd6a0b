"""Per-item side features, built by build_sequences from the raw likes/views and tags.

`build_item_features` contract (written as items.parquet, an item table: row i is item i, see core/items.py):
    item_id Int32 (0..N), item_tags List(Int32) of length max_tags (tag ids left-padded with 0),
    likes_level Int8, views_level Int8 (0..n_levels-1 by quantiles over items; 0 for the padding item and for
    items without counts)."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.core.io import DataError
from pipeline.core.items import scatter_by_id


def quantile_levels(values: np.ndarray, n_levels: int) -> np.ndarray:
    """(N,) counts -> (N,) int8 levels 0..n_levels-1 by the values' quantiles (equal-mass bins over items)."""
    edges = np.quantile(values, np.arange(1, n_levels) / n_levels)
    return np.searchsorted(edges, values, side="right").astype(np.int8)


def tag_vocabulary(tags: pl.DataFrame) -> dict[str, int]:
    """Tag name -> id (1..T) in order of first appearance over items sorted by id."""
    vocab: dict[str, int] = {}
    for names in tags.sort("item_id")["tags"].to_list():
        for name in names:
            vocab.setdefault(name, len(vocab) + 1)
    return vocab


def dense_tag_ids(item_tags: pl.Series) -> tuple[pl.Series, int]:
    """A List(Int) column of tag ids (one width T, 0 = padding, ids >= 0, e.g. the challenge's item_info) ->
    (List(Int32) of the same shape with each id replaced by its rank among the distinct ids, K), so that the ids
    are 1..K for K distinct tags and 0 stays 0. The tag ids index an embedding table of K+1 rows: one tag id of
    2^31-1 is then one row, not a table of 2^31. Ids that are already 1..K with none missing are unchanged."""
    width = int(item_tags.list.len().max() or 0)
    raw = item_tags.list.to_array(width).to_numpy() if width else np.zeros((len(item_tags), 0), np.int64)
    vocab = np.union1d([0], raw)  # (K+1,) sorted, vocab[0] = 0
    dense = np.searchsorted(vocab, raw).astype(np.int32)  # (rows, T)
    return pl.Series(item_tags.name, dense, dtype=pl.Array(pl.Int32, width)).cast(pl.List(pl.Int32)), vocab.size - 1


def build_item_features(
    ids: np.ndarray, likes_views: pl.DataFrame, tags: pl.DataFrame, *, max_tags: int, n_levels: int,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Item universe `ids` (1..N) plus raw counts and tags -> (item table, tag vocabulary); see module contract."""
    n_rows = int(ids.max()) + 1
    if not np.array_equal(np.sort(ids), np.arange(1, n_rows)):
        raise DataError(f"item ids must be contiguous 1..{n_rows - 1}")
    lv = likes_views.filter(pl.col("item_id").is_in(ids.tolist()))
    levels = {}
    for col in ("likes", "views"):
        level = quantile_levels(lv[col].to_numpy(), n_levels)
        levels[col] = scatter_by_id(lv["item_id"].to_numpy(), level, n_rows)
    vocab = tag_vocabulary(tags)
    tag_ids = np.zeros((n_rows, max_tags), dtype=np.int32)
    for item, names in tags.filter(pl.col("item_id").is_in(ids.tolist())).iter_rows():
        row = [vocab[n] for n in names][:max_tags]
        if row:
            tag_ids[item, max_tags - len(row):] = row  # left-padded, as in the challenge's item_info
    frame = pl.DataFrame({
        "item_id": pl.Series(np.arange(n_rows), dtype=pl.Int32),
        "item_tags": pl.Series(tag_ids, dtype=pl.Array(pl.Int32, max_tags)).cast(pl.List(pl.Int32)),
        "likes_level": pl.Series(levels["likes"], dtype=pl.Int8),
        "views_level": pl.Series(levels["views"], dtype=pl.Int8),
    })
    return frame, vocab
