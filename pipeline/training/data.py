"""Splits as tensors, and batches over them.

Each split is loaded once into contiguous tensors (history matrix, ids, context features, labels), in memory or as
views of memory-mapped files (pipeline/training/stream.py), with every value range-checked against the feature
map; batches are index slices, trimmed to the longest real history in the batch (never below first_k), which
changes no output because padded positions are masked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from pipeline.core.config import ModelConfig
from pipeline.core.feature_map import FeatureMap
from pipeline.core.io import DataError, check_range, first_true, list_matrix, read_parquet
from pipeline.core.items import item_info_table, read_semantic_ids


@dataclass(frozen=True)
class SplitTensors:
    """One split on the CPU, in the narrow dtypes of the file (batches widen them: `make_batch`):
    item_seq (n, L) int32, item_id (n,) int32, context {name: (n,) int8}, label (n,) float32, user_id (n,) int32.
    (Tensors built elsewhere, e.g. in tests, may hold int64: every consumer reads them through make_batch.)"""

    item_seq: Tensor
    item_id: Tensor
    context: dict[str, Tensor]
    label: Tensor
    user_id: Tensor

    def __len__(self) -> int:
        return self.label.shape[0]

    def nbytes(self) -> int:
        """The bytes of the split's tensors."""
        tensors = (self.item_seq, self.item_id, self.label, self.user_id, *self.context.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def history_lengths(self) -> Tensor:
        """(n,) int32 real (non-padding) history items per row (int32: 4 bytes a row, 120 MB for a 30M-row split),
        counted LENGTH_CHUNK rows at a time: the count widens each cell, so a whole 3.6M x 100 split at once would be
        a multi-GB temporary (and a mapped split lets each chunk's pages go before the next)."""
        # One output written in place: per-chunk results kept in a list would sit between the freed temporaries on
        # malloc's heap, which then cannot shrink (a 2M-row split kept up to 650 MB of them)
        out = torch.empty(len(self), dtype=torch.int32)
        for lo in range(0, len(self), LENGTH_CHUNK):
            torch.sum(self.item_seq[lo:lo + LENGTH_CHUNK] != 0, dim=1, dtype=torch.int32, out=out[lo:lo + LENGTH_CHUNK])
            self.release()
        return out

    def release(self) -> None:
        """Let go of what reading rows has paged in (a memory-mapped split, pipeline/training/stream.py); in memory,
        nothing to do."""


LENGTH_CHUNK = 1 << 16  # rows per history_lengths step: a (chunk, L) int32 temporary, 26 MB at L = 100
RELEASE_BATCHES = 64  # batches between SplitTensors.release() calls of the training loop and of scoring


def split_schema(feature_map: FeatureMap) -> dict[str, type[pl.DataType] | pl.DataType]:
    """The columns and dtypes a split file must have (sequences contract) for `feature_map`."""
    return {"user_id": pl.Int32, "item_seq": pl.List(pl.Int32), "item_id": pl.Int32, "label": pl.Float32,
            **{f.name: pl.Int8 for f in feature_map.context_features}}


def split_arrays(path: str | Path, df: pl.DataFrame, feature_map: FeatureMap, first_row: int = 0
                 ) -> dict[str, np.ndarray]:
    """Rows of a split file (all of it, or one chunk whose first row is file row `first_row`) -> checked arrays
    {item_seq (R, L) int32, item_id, user_id (R,) int32, label (R,) float32, <context> (R,) int8}.

    Every column that indexes an embedding table is range-checked against `feature_map` (item_id 1..N, item_seq
    0..N of length max_len and left-padded, each context feature 0..vocab-1), and label must be 0 or 1: a bad
    value is a DataError naming the file, the first bad row (of the file) and the column, before any training step
    (an id past a table would otherwise be an IndexError mid-run)."""
    names = [f.name for f in feature_map.context_features]
    n_ids = feature_map["item_id"].vocab_size
    seq = list_matrix(path, df, "item_seq", feature_map["item_seq"].max_len, pl.Int32, first_row)  # (R, L)
    bad = first_true(((seq < 0) | (seq >= n_ids)).any(axis=1))
    if bad is not None:
        raise DataError(f"{path}: row {bad + first_row}: item_seq holds an item id outside 0..{n_ids - 1}")
    # left-padded: every 0 before the first item id (trim_history keeps the last columns, first_k the last items)
    real = seq != 0
    bad = first_true(real.any(axis=1) & (real.argmax(axis=1) != seq.shape[1] - real.sum(axis=1)))
    if bad is not None:
        raise DataError(f"{path}: row {bad + first_row}: item_seq is not left-padded (a 0 follows an item id)")
    check_range(path, df, "user_id", 0, np.iinfo(np.int32).max, first_row)
    check_range(path, df, "item_id", 1, n_ids - 1, first_row)
    for n in names:
        check_range(path, df, n, 0, feature_map[n].vocab_size - 1, first_row)
    label = df["label"].to_numpy()
    bad = first_true(~np.isin(label, (0.0, 1.0)))
    if bad is not None:
        raise DataError(f"{path}: row {bad + first_row}: label {label[bad]} is not 0 or 1")
    # torch wants writable arrays; polars may hand out read-only views (np.require copies only then)
    return {"item_seq": np.require(seq, np.int32, ["C", "W"]), "label": np.require(label, np.float32, ["W"]),
            **{c: np.require(df[c].to_numpy(), requirements=["W"]) for c in ("item_id", "user_id", *names)}}


def tensors_of(arrays: dict[str, np.ndarray], feature_map: FeatureMap) -> SplitTensors:
    """split_arrays' arrays (or views of them) -> SplitTensors sharing their memory."""
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return SplitTensors(t["item_seq"], t["item_id"], {f.name: t[f.name] for f in feature_map.context_features},
                        t["label"], t["user_id"])


def load_split(path: str | Path, feature_map: FeatureMap) -> SplitTensors:
    """Read a split parquet (sequences contract) into memory, checked as `split_arrays` says."""
    df = read_parquet(path, split_schema(feature_map))
    if df.height == 0:
        raise DataError(f"{path}: split has no rows")
    return tensors_of(split_arrays(path, df, feature_map), feature_map)


def load_item_tables(path: str | Path) -> tuple[Tensor, Tensor, int]:
    """item_info.parquet -> (tags (N+1, T) int64, frozen embeddings (N+1, M) float32, M), after checking that
    row i holds item i, that item_tags are lists of one length with ids >= 0, and that the one item_emb_d<M>
    column is a list of M finite numbers per row (first bad row named)."""
    df = read_parquet(path, {"item_id": pl.Int32, "item_tags": pl.List(pl.Int32)})
    mm = item_info_table(df, str(path))  # (N+1, M)
    tags = list_matrix(path, df, "item_tags", None, pl.Int64)  # (N+1, T)
    bad = first_true((tags < 0).any(axis=1))
    if bad is not None:
        raise DataError(f"{path}: row {bad}: item_tags holds a negative tag id")
    # torch wants writable arrays; polars may hand out read-only views (np.require copies only then)
    return torch.from_numpy(np.require(tags, requirements="W")), torch.from_numpy(mm), mm.shape[1]


def target_counts(item_id: np.ndarray | Tensor, n_rows: int) -> np.ndarray:
    """(R,) target item ids of the train rows -> (n_rows,) int64 the number of rows whose target is each item id;
    ValueError for an id past the table (ids must be in 0..n_rows-1)."""
    counts = np.bincount(np.asarray(item_id, dtype=np.int64), minlength=n_rows)
    if len(counts) > n_rows:
        raise ValueError(f"item ids reach {len(counts) - 1}, the item table has {n_rows} rows")
    return counts


def exposure_levels(item_id: np.ndarray | Tensor, n_rows: int, levels: int) -> Tensor:
    """(R,) target item ids of the train rows -> (n_rows,) int64 train-exposure level of each item id (ModelConfig
    exposure_levels): with c_i the number of rows whose target is item i (its exposures, or its clicks and
    sampled non-clicks), an item with c_i > 0 gets 1 + the number of edges <= c_i, the edges being the distinct
    k/levels quantiles (k = 1..levels-1) of c over the items 1..n_rows-1 with c > 0. Levels are in 1..levels, equal
    counts share one. An item no train row has as its target gets 0, as row 0 (padding) does: its level embedding is
    the zero vector, "not known", where the lowest level would say "shown least", which under a time split is
    wrong for items released after the train split (they ranked 0.03 test AUC lower on benchmarks/variants.py's
    `cold`, README "New-item offset"). Ids must be in 0..n_rows-1."""
    counts = target_counts(item_id, n_rows)
    seen = counts[1:][counts[1:] > 0]
    edges = np.unique(np.quantile(seen, np.arange(1, levels) / levels)) if len(seen) else np.zeros(0)
    out = np.where(counts > 0, 1 + np.searchsorted(edges, counts, side="right"), 0)
    out[0] = 0
    return torch.from_numpy(out.astype(np.int64))


def user_keys(user_id: np.ndarray | Tensor) -> Tensor:
    """(R,) user ids of the train rows -> (U,) int64 their distinct values, increasing: the index of the user
    tables (ModelConfig user_bias and user_interest; model/layers.py `user_rows`)."""
    return torch.from_numpy(np.unique(np.asarray(user_id, dtype=np.int64)))


def new_items(item_id: np.ndarray | Tensor, n_rows: int) -> Tensor:
    """(R,) target item ids of the train rows -> (n_rows,) bool, True for the items 1..n_rows-1 that no train row has
    as its target (ModelConfig new_item_offset); row 0 (padding) is False. Ids must be in 0..n_rows-1."""
    counts = target_counts(item_id, n_rows)
    new = counts == 0
    new[0] = False
    return torch.from_numpy(new)


def split_tables(train: SplitTensors, n_rows: int, cfg: ModelConfig) -> dict[str, Tensor | None]:
    """The tables a model derives from its train split, as build_model's keyword arguments: item_exposure (n_rows,)
    int64 of `exposure_levels` (None when cfg.exposure_levels is 0), user_keys (U,) int64 of `user_keys` (None
    without cfg.user_bias and cfg.user_interest), item_new (n_rows,) bool of `new_items` (None without
    cfg.new_item_offset). The one place they are made, so a stage and a benchmark build the same model."""
    return {"item_exposure": exposure_levels(train.item_id, n_rows, cfg.exposure_levels) if cfg.exposure_levels
            else None,
            "user_keys": user_keys(train.user_id) if cfg.user_bias or cfg.user_interest else None,
            "item_new": new_items(train.item_id, n_rows) if cfg.new_item_offset else None}


def load_semantic_ids(path: str | Path, n_rows: int) -> Tensor:
    """semantic_ids.parquet -> (N+1, L) int64 codes as a tensor, checked by `read_semantic_ids`."""
    return torch.from_numpy(read_semantic_ids(path, n_rows))


def check_item_tables(path: str | Path, tags: Tensor, feature_map: FeatureMap) -> None:
    """The item table of `load_item_tables` fits the feature map of the splits: one row per item id (N+1) and tag
    ids below item_tags' vocabulary; else a DataError naming `path` (an index past a table fails mid-run)."""
    n_ids, n_tags = feature_map["item_id"].vocab_size, feature_map["item_tags"].vocab_size
    if tags.shape[0] != n_ids:
        raise DataError(f"{path}: {tags.shape[0] - 1} items, but the feature map has item ids 1..{n_ids - 1}")
    bad = first_true((tags >= n_tags).any(dim=1).numpy())
    if bad is not None:
        raise DataError(f"{path}: row {bad}: item_tags holds a tag id outside 0..{n_tags - 1}")


def trim_history(seq: Tensor, first_k: int) -> Tensor:
    """(B, L) left-padded histories -> (B, L') keeping the last max(longest real history, first_k) columns."""
    longest = int((seq != 0).sum(dim=1).max().item()) if seq.numel() else 0
    keep = min(seq.shape[1], max(longest, first_k))
    return seq[:, seq.shape[1] - keep:]


def make_batch(split: SplitTensors, idx: Tensor, first_k: int, device: torch.device) -> dict[str, Tensor]:
    """Rows `idx` of a split as the model's input dict on `device`, every tensor int64 (item_seq widened here):
    item_seq, item_id, user_id and each context feature."""
    batch = {"item_seq": trim_history(split.item_seq[idx], first_k).long(), "item_id": split.item_id[idx].long(),
             "user_id": split.user_id[idx].long(),
             **{n: t[idx].long() for n, t in split.context.items()}}
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
