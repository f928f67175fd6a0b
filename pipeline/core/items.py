"""The item id -> row index every item-side table relies on.

An *item table* is a frame or array whose row i holds item i, with row 0 the all-zero padding item. Tables are
built by scattering values to their ids (`scatter_by_id`), never by trusting input order, and every table read
back is checked with `check_item_table` before it is indexed by id. `unit_rows` L2-normalises the rows of a table
(zero rows stay zero)."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.core.io import DataError


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


def unit_rows(x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """(N, D) -> rows of `dtype` scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=dtype)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)
