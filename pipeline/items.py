"""Item-side tables keyed by item id, and the id -> row index they rely on.

An *item table* is a frame or array whose row i holds item i, with row 0 the all-zero padding item. Tables are
built by scattering values to their ids (`scatter_by_id`), never by trusting input order, and every table read
back is checked with `check_item_table` before it is indexed by id.

`build_item_features` contract (written by build_sequences as items.parquet):
    item_id Int32 (0..N), item_tags List(Int32) of length max_tags (tag ids left-padded with 0),
    likes_level Int8, views_level Int8 (0..n_levels-1 by quantiles over items; 0 for the padding item and for
    items without counts).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.io import DataError


def scatter_by_id(ids: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """Place values[j] at row ids[j] of a zero array with `n_rows` rows; ids must be unique and in 1..n_rows-1."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 1 or ids.max() >= n_rows):
        raise DataError(f"item ids must lie in 1..{n_rows - 1}, got range {ids.min()}..{ids.max()}")
    if np.unique(ids).size != ids.size:
        raise DataError("item ids must be unique")
    out = np.zeros((n_rows, *values.shape[1:]), dtype=values.dtype)
    out[ids] = values
    return out


def check_item_table(frame: pl.DataFrame, where: str) -> None:
    """Raise DataError unless frame's item_id column is exactly 0..height-1 (row i holds item i)."""
    ids = frame["item_id"].to_numpy()
    expected = np.arange(frame.height)
    if ids.shape != expected.shape or not np.array_equal(ids, expected):
        bad = int(np.argmax(ids != expected)) if ids.shape == expected.shape else frame.height
        raise DataError(f"{where}: row {bad} holds item_id {ids[bad] if bad < len(ids) else None}; "
                        "an item table must hold item i at row i, from 0 (padding)")


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
