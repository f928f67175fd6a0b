"""The item id -> row index every item-side table relies on.

An *item table* is a frame or array whose row i holds item i, with row 0 the all-zero padding item. Tables are
built by scattering values to their ids (`scatter_by_id`), never by trusting input order, and every table read
back is checked with `check_item_table` before it is indexed by id. `unit_rows` L2-normalises the rows of a table
(zero rows stay zero). `read_semantic_ids` reads the quantize stage's item table of codes, bounded so a hostile
file cannot size a model's code table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.config import MAX_CODEBOOK, MAX_LEVELS
from pipeline.core.feature_map import find_mm_column
from pipeline.core.io import DataError, check_finite, first_true, list_matrix, read_parquet


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


def item_info_table(info: pl.DataFrame, where: str) -> np.ndarray:
    """An item table with one item_emb_d<M> column (fit_pca's item_info, or the training's) -> its (N+1, M)
    float32 embeddings, after checking that row i holds item i, that there is an item besides the padding row, and
    that the column is a list of M finite numbers per row, M >= 1 (the first bad row named, with `where`)."""
    check_item_table(info, where)
    if info.height < 2:
        raise DataError(f"{where}: holds no items (row 0 is the padding item, items 1..N follow it)")
    column = find_mm_column(info.columns, where)
    dtype = info.schema[column]
    if not (isinstance(dtype, pl.List | pl.Array) and dtype.inner.is_numeric()):
        raise DataError(f"{where}: column {column!r} has dtype {dtype}, expected a list of numbers")
    mm = list_matrix(where, info, column, None, pl.Float32)  # (N+1, M)
    if mm.shape[1] == 0:
        raise DataError(f"{where}: column {column!r} holds empty lists")
    check_finite(where, column, mm)
    return np.require(mm, np.float32, ["C", "W"])


def unit_rows(x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """(N, D) -> rows of `dtype` scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=dtype)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def nonzero_rows(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N,) bool: the rows with some value other than 0. The one test of "this item has no content" (a
    zero row: an unusable title and cover, or a release's missing embedding), shared by every stage."""
    return np.any(np.asarray(x) != 0, axis=1)


def mean_norm_rows(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(N, D) -> (the rows divided by one factor, float32, so that the nonzero rows' mean L2 norm is 1; the factor,
    their mean norm before, 1.0 when every row is zero). One factor for the whole table keeps every direction,
    cosine and ratio of norms; only the overall scale, which the model's init and lr assume to be about 1, changes."""
    x64 = np.asarray(x, dtype=np.float64)
    keep = nonzero_rows(x64)
    scale = float(np.linalg.norm(x64[keep], axis=1).mean()) if keep.any() else 1.0
    return (x64 / scale).astype(np.float32), scale


def read_semantic_ids(path: str | Path, n_rows: int) -> np.ndarray:
    """semantic_ids.parquet (stages/quantize.py contract) -> (N+1, L) int64 codes, after checking that row i holds
    item i, that there are n_rows rows (the item table's), that codes are lists of one length L in 1..MAX_LEVELS,
    and that row 0 is all -1 and every other code is in 0..MAX_CODEBOOK-1 (the first bad row named): a code past
    that would size a model's code table from a hostile file."""
    df = read_parquet(path, {"item_id": pl.Int32})
    check_item_table(df, str(path))
    if df.height != n_rows:
        raise DataError(f"{path}: codes for {df.height - 1} items, the item table has {n_rows - 1} (rerun quantize: "
                        "`dvc repro`)")
    if "codes" not in df.columns:
        raise DataError(f"{path}: missing column 'codes' (has {', '.join(df.columns)})")
    dtype = df.schema["codes"]
    if not (isinstance(dtype, pl.List | pl.Array) and dtype.inner.is_integer()):
        raise DataError(f"{path}: column 'codes' has dtype {dtype}, expected a list of integers")
    codes = list_matrix(path, df, "codes", None, pl.Int64)  # (N+1, L)
    if not 1 <= codes.shape[1] <= MAX_LEVELS:
        raise DataError(f"{path}: column 'codes' holds lists of length {codes.shape[1]}, expected 1..{MAX_LEVELS}")
    item = first_true(((codes[1:] < 0) | (codes[1:] >= MAX_CODEBOOK)).any(axis=1))
    bad = 0 if (codes[0] != -1).any() else None if item is None else item + 1  # a file row
    if bad is not None:
        raise DataError(f"{path}: row {bad}: codes must be -1 for row 0 (padding) and in 0..{MAX_CODEBOOK - 1} "
                        "for items")
    return np.require(codes, np.int64, ["C", "W"])
