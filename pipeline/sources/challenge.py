"""Readers for the WWW2025 MMCTR challenge data (MicroLens_1M_x1), and the challenge's submission file.

`find_challenge_files(data_dir)` looks for each file in data_dir and in data_dir/MicroLens_1M_x1 (the download
puts the splits and item_info there and item_feature.parquet beside that folder):
    train.parquet, valid.parquet, test.parquet   user_id, item_seq (int list, left-padded with 0, most recent
                                                 last), item_id, likes_level, views_level (0..10), label
                                                 (test: absent or dummy)
    item_info.parquet      item_id, item_tags (int list, left-padded with 0), item_emb_d128 (128 floats);
                           row i = item i, row 0 the all-zero padding item
    item_feature.parquet   item_id 1..N, item_title, item_tags, likes_level, views_level, txt_emb_BERT (768 floats),
                           img_emb_CLIPRN50 (1024 floats)
    item_images/           covers `<item_id>.jpg` (or `image<item_id>.jpg`; optional)

`read_split` returns our split contract (pipeline/sequences/build.py): user_id Int32, item_seq List(Int32) (all of one
length), item_id Int32, likes_level Int8, views_level Int8, label Float32, event_ts Int64. The challenge has no
timestamps, so event_ts is the row index: every row is its own event and file order is kept.

Every problem is a one-line DataError naming the file and the column or row (0-based, as in the parquet file).
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.config import CHALLENGE_EMB_DIM, INT32_MAX, MAX_ITEM_TAGS, MAX_SEQ_LEN
from pipeline.core.io import (
    DataError,
    atomic_path,
    check_finite,
    check_range,
    first_true,
    list_matrix,
    parquet_schema,
    reads_parquet,
    unreadable_parquet,
)
from pipeline.core.items import check_item_table
from pipeline.sources.microlens import detect_cover_naming

N_LEVELS = 11  # likes_level and views_level are 0..10
TEXT_EMB_DIM = 768  # item_feature.txt_emb_BERT
IMAGE_EMB_DIM = 1024  # item_feature.img_emb_CLIPRN50
CHALLENGE_SUBDIR = "MicroLens_1M_x1"
SUBMISSION_MEMBER = "prediction.csv"
# Rows per batch of the scan for a too-long list: a few, as each may hold millions of values.
LONG_LIST_SCAN_ROWS = 16
# The most values the decoded list columns of one row group may hold before the file is read from a copy in
# smaller row groups: polars decodes whole row groups, a few at once, at about 12 bytes a value (2,000 rows of
# 99,999 zeros in one row group, a 19 KB file, took 2.5 GB). The challenge's own files are read as they are in
# row groups of up to 1.3M histories of 100 (pyarrow writes 1,048,576 rows a row group by default).
ROW_GROUP_LIST_VALUES = 1 << 27


# --------------------------------------------------------------------------------------------------
# Finding the files


@dataclass(frozen=True)
class ChallengeFiles:
    """The challenge files of one data directory; `images` and `image_naming` are None without item_images/.

    image_naming is one of pipeline.sources.microlens.COVER_NAMINGS, for pipeline.sources.microlens.cover_path.
    """

    train: Path
    valid: Path
    test: Path
    item_info: Path
    item_feature: Path
    images: Path | None
    image_naming: str | None


def _locate(data_dir: Path, name: str, is_dir: bool = False) -> Path | None:
    """data_dir/name or data_dir/MicroLens_1M_x1/name; both present is a DataError naming both."""
    found = [d / name for d in (data_dir, data_dir / CHALLENGE_SUBDIR)
             if ((d / name).is_dir() if is_dir else (d / name).is_file())]
    if not is_dir and (folder := next((d / name for d in (data_dir, data_dir / CHALLENGE_SUBDIR)
                                       if (d / name).is_dir()), None)):
        raise DataError(f"{folder}: a folder, not a file (a partitioned dataset, as Spark writes?); write it as one "
                        "parquet file")
    if len(found) > 1:
        raise DataError(f"{data_dir}: both {found[0]} and {found[1]} exist; keep one")
    return found[0] if found else None


def find_challenge_files(data_dir: str | Path) -> ChallengeFiles:
    """Find the five parquet files (required) and item_images/ (optional) of the module docstring."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: challenge data directory not found")
    paths = {}
    for role in ("train", "valid", "test", "item_info", "item_feature"):
        path = _locate(data_dir, f"{role}.parquet")
        if path is None:
            raise DataError(f"{data_dir}: no {role}.parquet (looked in {data_dir} and {data_dir / CHALLENGE_SUBDIR})")
        paths[role] = path
    images = _locate(data_dir, "item_images", is_dir=True)
    return ChallengeFiles(**paths, images=images,
                          image_naming=detect_cover_naming(images) if images is not None else None)


# --------------------------------------------------------------------------------------------------
# Schema and value checks


def _schema(path: Path) -> dict[str, pl.DataType]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return dict(parquet_schema(path))
    except Exception as e:  # polars raises several types for corrupt files
        raise unreadable_parquet(path, e) from None


# A column kind: (does a dtype qualify, how an error message names the kind).
_Kind = tuple[Callable[[pl.DataType], bool], str]
INTEGER: _Kind = (lambda t: t.is_integer(), "an integer type")
INT_LIST: _Kind = (lambda t: isinstance(t, pl.List | pl.Array) and t.inner.is_integer(), "a list of integers")
NUMBER_LIST: _Kind = (lambda t: isinstance(t, pl.List | pl.Array) and t.inner.is_numeric(), "a list of numbers")
NUMBER: _Kind = (lambda t: t.is_numeric() or t == pl.Boolean, "a number type")
TEXT: _Kind = (lambda t: t in (pl.Utf8, pl.Null, pl.Categorical) or isinstance(t, pl.Enum), "a string type")


def _wide_int(dtype: pl.DataType) -> type[pl.DataType]:
    """The integer type that holds every value of a list column of integers `dtype` exactly: UInt64 for UInt64
    (whose values past 2^63 a cast to Int64 would refuse with a traceback), else Int64. Range checks then run on
    the file's own values."""
    return pl.UInt64 if dtype.inner == pl.UInt64 else pl.Int64


def _require_columns(path: Path, schema: dict[str, pl.DataType], columns: dict[str, _Kind]) -> None:
    for name, (ok, kind) in columns.items():
        if name not in schema:
            raise DataError(f"{path}: missing column {name!r} (has {', '.join(schema)})")
        if not ok(schema[name]):
            raise DataError(f"{path}: column {name!r} has dtype {schema[name]}, expected {kind}")


# --------------------------------------------------------------------------------------------------
# Splits


@dataclass(frozen=True)
class ChallengeSplit:
    """A split in our contract (module docstring). labels_hidden: the file's labels are absent or dummy, so
    `rows.label` is all 0.0 and must not be scored. seq_len: the length of the file's histories (all one), which
    `rows.item_seq` keeps when read with no max_len or a larger one."""

    rows: pl.DataFrame
    labels_hidden: bool
    seq_len: int


@reads_parquet
def read_split(path: str | Path, n_items: int, *, require_labels: bool = True, max_len: int | None = None
               ) -> ChallengeSplit:
    """Read and validate one of train/valid/test.parquet against an item table of items 1..n_items.

    Checks, each naming the first bad row: user_id in 0..2^31-1; item_id in 1..n_items; likes_level and
    views_level in 0..10; item_seq of one length (row 0's) with ids in 0..n_items, left-padded (no 0 after an
    item id); no nulls. With require_labels, `label` must exist and be 0 or 1. Without it (test), the labels
    count as hidden when the column is absent, is not numeric (all nulls, text), holds anything but 0 and 1, or is
    constant (a real test split has both classes); hidden labels come back as 0.0 with labels_hidden=True. A test
    split's `ID` column, if any, must be each row's position (the submission's ID). Other columns are dropped.
    With max_len, each item_seq keeps its last max_len items (the most recent) as it is read.

    Histories longer than MAX_SEQ_LEN are refused from the file's footer before any page is read (a small file of
    zero padding would decode to gigabytes), and a file with row groups of more than ROW_GROUP_LIST_VALUES history
    values is read from a temporary copy in smaller ones. The checks are one streaming pass over the whole
    histories, so only the returned frame, cut to max_len, is held whole in memory, beside the few row groups
    being decoded (about 1 GB peak per million rows of 100-long histories).
    """
    path = Path(path)
    schema = _schema(path)
    _require_columns(path, schema, {"user_id": INTEGER, "item_seq": INT_LIST, "item_id": INTEGER,
                                    "likes_level": INTEGER, "views_level": INTEGER})
    if require_labels:
        _require_columns(path, schema, {"label": NUMBER})
    _refuse_long_lists(path, "item_seq", MAX_SEQ_LEN, " (the longest history build_sequences.max_len may keep)")
    with _bounded_row_groups(path, "item_seq") as source:
        return _read_split(path, source, schema, n_items, require_labels, max_len)


def _read_split(path: Path, source: Path, schema: pl.Schema, n_items: int, require_labels: bool,
                max_len: int | None) -> ChallengeSplit:
    """read_split's checks and read of `source`, which is `path` or its copy in smaller row groups (same rows,
    same schema); errors name `path`."""
    has_label = "label" in schema and NUMBER[0](schema["label"])  # a test label of nulls or text is hidden

    used = [c for c in ("user_id", "item_seq", "item_id", "likes_level", "views_level", "label", "ID") if c in schema]
    lf = pl.scan_parquet(source, glob=False).select(used).with_row_index("_row")  # other columns may be named `_row`
    seq = pl.col("item_seq").cast(pl.List(_wide_int(schema["item_seq"])))
    n_rows, seq_len = lf.select(pl.len(), seq.first().list.len()).collect().row(0)
    if n_rows == 0:
        raise DataError(f"{path}: no rows")
    n_zero = seq.list.eval(pl.element() == 0).list.sum()
    first_item = seq.list.eval(pl.element() != 0).list.arg_max()
    label = pl.col("label").cast(pl.Float64)
    # name -> (bad-row expression, value shown in the message, message given the value)
    checks: dict[str, tuple[pl.Expr, pl.Expr, Callable[[object], str]]] = {}
    for column, low, high in (("user_id", 0, INT32_MAX), ("item_id", 1, n_items),
                              ("likes_level", 0, N_LEVELS - 1), ("views_level", 0, N_LEVELS - 1)):
        c = pl.col(column)
        checks[column] = (c.is_null() | (c < low) | (c > high), c,
                          lambda v, column=column, low=low, high=high:
                          f"{column} is null" if v is None else f"{column} {v} is outside {low}..{high}")
    checks["seq_length"] = ((seq.list.len() != seq_len).fill_null(True), seq.list.len(),
                            lambda v: "item_seq is null" if v is None
                            else f"item_seq has length {v}, expected {seq_len} (as row 0)")
    checks["seq_null"] = (seq.list.eval(pl.element().is_null()).list.any(), pl.lit(None),
                          lambda v: "item_seq holds a null")
    outside = (pl.element() < 0) | (pl.element() > n_items)
    checks["seq_range"] = (seq.list.eval(outside).list.any(), seq.list.eval(pl.element().filter(outside)).list.first(),
                           lambda v: f"item_seq holds item id {v} outside 0..{n_items}")
    checks["seq_padding"] = ((n_zero < seq.list.len()) & (first_item != n_zero), pl.lit(None),
                             lambda v: "item_seq is not left-padded (a 0 follows an item id)")
    if require_labels:
        checks["label"] = (label.is_null() | ~label.is_in([0.0, 1.0]), label,
                           lambda v: "label is null" if v is None else f"label {v} is not 0 or 1")
    elif "ID" in schema:  # the submission's ID is the test row's position: an ID column must say the same
        position = pl.col("ID").cast(pl.Float64, strict=False) != pl.col("_row")
        checks["ID"] = (position.fill_null(True), pl.col("ID"),
                        lambda v: f"ID {v} is not the row's position; the submission's IDs are the test rows' "
                                  "positions 0..n-1, so sort the file by ID (or drop the column)")

    first_bad = lf.select([pl.col("_row").filter(bad).min().alias(name) for name, (bad, _, _) in checks.items()]
                          ).collect(engine="streaming").row(0, named=True)
    for name, (_, shown, message) in checks.items():
        row = first_bad[name]
        if row is not None:
            value = lf.filter(pl.col("_row") == row).select(shown).collect().item()
            raise DataError(f"{path}: row {row}: {message(value)}")

    labels_hidden = not has_label
    if has_label and not require_labels:
        n_bad, n_values = lf.select((label.is_null() | ~label.is_in([0.0, 1.0])).sum().alias("n_bad"),
                                    label.n_unique().alias("n_values")).collect().row(0)
        labels_hidden = n_bad > 0 or n_values < 2
    history = pl.col("item_seq").cast(pl.List(pl.Int32))
    if max_len is not None:  # left-padded, most recent last: the tail is what is kept
        history = history.list.tail(max_len)
    # The row index comes from with_row_index, not int_range(len()): a length over the whole file made polars decode
    # every history whole before the tail (a 172 KB file of 8,000 near-MAX_SEQ_LEN rows took 6.4 GB, now 0.8 GB).
    rows = pl.scan_parquet(source, glob=False).select(
        pl.col("user_id").cast(pl.Int32), history, pl.col("item_id").cast(pl.Int32),
        pl.col("likes_level").cast(pl.Int8), pl.col("views_level").cast(pl.Int8),
        pl.lit(0.0, dtype=pl.Float32).alias("label") if labels_hidden else pl.col("label").cast(pl.Float32),
    ).with_row_index("event_ts").select(pl.exclude("event_ts"), pl.col("event_ts").cast(pl.Int64)
                                        ).collect(engine="streaming")
    return ChallengeSplit(rows=rows, labels_hidden=labels_hidden, seq_len=seq_len)


def _list_values(group: pq.RowGroupMetaData, column: str) -> int:
    """The values a row group's footer counts in the list `column` (a null list counts one)."""
    return sum(group.column(j).num_values for j in range(group.num_columns)
               if group.column(j).path_in_schema.split(".")[0] == column)


def _refuse_long_lists(path: Path, column: str, limit: int, why: str = "") -> None:
    """DataError naming the first row whose list `column` is longer than `limit`, in a row group whose `column`
    holds more than `limit` values a row by the file's footer. Zero padding compresses to almost nothing (250
    rows of 1M-long histories are 356 KB), and every read decodes a whole row group, so this is judged before any
    page is read; only such a row group is scanned, a few rows at a time."""
    file = pq.ParquetFile(path)
    first_row = 0
    for g in range(file.num_row_groups):
        group = file.metadata.row_group(g)
        if _list_values(group, column) > group.num_rows * limit:
            row = first_row
            for batch in file.iter_batches(LONG_LIST_SCAN_ROWS, row_groups=[g], columns=[column]):
                lengths = pc.fill_null(pc.list_value_length(batch.column(0)), 0).to_numpy()
                long = first_true(lengths > limit)
                if long is not None:
                    raise DataError(f"{path}: row {row + long}: {column} has length {lengths[long]}, longer than "
                                    f"{limit}{why}")
                row += batch.num_rows
        first_row += group.num_rows


@contextmanager
def _bounded_row_groups(path: Path, column: str) -> Iterator[Path]:
    """`path`, or, when a row group's list `column` holds more than ROW_GROUP_LIST_VALUES values by the file's
    footer, a temporary copy of the file whose row groups each hold at most an eighth of that, written a few rows
    at a time: read it in the file's place (same rows, same order). Every read decodes whole row groups, several
    at once, and a small file of zeros can hold billions of values."""
    file = pq.ParquetFile(path)
    values = [_list_values(file.metadata.row_group(g), column) for g in range(file.num_row_groups)]
    if max(values, default=0) <= ROW_GROUP_LIST_VALUES:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mmctr-rowgroups-") as tmp:
        copy = Path(tmp) / path.name
        with pq.ParquetWriter(copy, file.schema_arrow) as writer:
            for g, n in enumerate(values):
                rows = file.metadata.row_group(g).num_rows
                batch_rows = max(1, ROW_GROUP_LIST_VALUES // 8 * rows // max(n, 1))
                for batch in file.iter_batches(batch_rows, row_groups=[g]):
                    writer.write_table(pa.Table.from_batches([batch]))
        yield copy


# --------------------------------------------------------------------------------------------------
# Item tables


@dataclass(frozen=True)
class ItemInfo:
    """item_info.parquet as an item table (row i = item i, row 0 padding, N = n_items).

    tags: item_id Int32 (0..N), item_tags List(Int32) of one length T (tag ids, left-padded with 0);
    emb_d128: (N+1, 128) float32, the organisers' PCA of BERT + CLIP embeddings; row 0 zeros.
    """

    tags: pl.DataFrame
    emb_d128: np.ndarray

    @property
    def n_items(self) -> int:
        """N, the number of real items (ids 1..N)."""
        return self.tags.height - 1


@reads_parquet
def read_item_info(path: str | Path) -> ItemInfo:
    """Read and validate item_info.parquet: item_id = row index from 0, item_tags of one length (at most
    MAX_ITEM_TAGS, judged from the footer) with ids >= 0, item_emb_d128 of 128 finite values, row 0 all zero; each
    problem names the first bad row."""
    path = Path(path)
    schema = _schema(path)
    _require_columns(path, schema, {"item_id": INTEGER, "item_tags": INT_LIST, "item_emb_d128": NUMBER_LIST})
    _refuse_long_lists(path, "item_emb_d128", CHALLENGE_EMB_DIM)
    # the tag lists have no fixed width, but every item's is embedded at every step: bound them as max_tags is
    _refuse_long_lists(path, "item_tags", MAX_ITEM_TAGS,
                       " (the most tags an item may carry, as build_sequences.max_tags)")
    df = pl.read_parquet(path, glob=False, columns=["item_id", "item_tags", "item_emb_d128"])
    if df.height < 2:
        raise DataError(f"{path}: {df.height} rows; expected the padding row 0 and at least one item")
    check_item_table(df, str(path))
    tags = list_matrix(path, df, "item_tags", None, _wide_int(schema["item_tags"]))
    bad = first_true(((tags < 0) | (tags > INT32_MAX)).any(axis=1))
    if bad is not None:
        raise DataError(f"{path}: row {bad}: item_tags holds a tag id outside 0..{INT32_MAX}")
    emb = list_matrix(path, df, "item_emb_d128", CHALLENGE_EMB_DIM, pl.Float32)
    check_finite(path, "item_emb_d128", emb)
    if tags[0].any() or emb[0].any():
        raise DataError(f"{path}: row 0 (the padding item) must have all-zero item_tags and item_emb_d128")
    frame = pl.DataFrame({"item_id": df["item_id"].cast(pl.Int32),
                          "item_tags": df["item_tags"].cast(pl.List(pl.Int32))})
    return ItemInfo(tags=frame, emb_d128=emb.astype(np.float32, copy=False))


@dataclass(frozen=True)
class ItemFeature:
    """item_feature.parquet sorted by item_id (N items, ids 1..N; row j holds item j+1).

    titles: item_id Int32, title Utf8 (a null title becomes ""), the contract of pipeline.sources.microlens.read_titles;
    levels: item_id Int32, likes_level Int8, views_level Int8 (0..10);
    item_ids: (N,) int64, the id of each embedding row; text_emb: (N, 768) float32 txt_emb_BERT;
    image_emb: (N, 1024) float32 img_emb_CLIPRN50 (both None when read with embeddings=False).
    """

    titles: pl.DataFrame
    levels: pl.DataFrame
    item_ids: np.ndarray
    text_emb: np.ndarray | None
    image_emb: np.ndarray | None


@reads_parquet
def read_item_feature(path: str | Path, n_items: int | None = None, *, embeddings: bool = True) -> ItemFeature:
    """Read and validate item_feature.parquet, whose rows may come in any order.

    item_id must hold each of 1..N exactly once (N = n_items when given, e.g. from item_info), levels lie in
    0..10, embeddings have 768 and 1024 finite values; each problem names the first bad row of the file.
    embeddings=False (build_sequences and the titles need no more) neither reads nor requires the two embedding
    columns: a file without them, or with vectors of other widths, still gives its titles and levels, and the
    1,792 floats an item are not held in memory.
    """
    path = Path(path)
    schema = _schema(path)
    vectors = {"txt_emb_BERT": TEXT_EMB_DIM, "img_emb_CLIPRN50": IMAGE_EMB_DIM} if embeddings else {}
    columns = {"item_id": INTEGER, "item_title": TEXT, "likes_level": INTEGER, "views_level": INTEGER,
               **dict.fromkeys(vectors, NUMBER_LIST)}
    _require_columns(path, schema, columns)
    for column, width in vectors.items():
        _refuse_long_lists(path, column, width)
    df = pl.read_parquet(path, glob=False, columns=list(columns))
    n = df.height if n_items is None else n_items
    check_range(path, df, "item_id", 1, n)
    ids = df["item_id"].to_numpy().astype(np.int64)
    order = np.argsort(ids, kind="stable")
    if ids.size != n or np.unique(ids).size != ids.size:
        repeated = first_true(np.diff(ids[order]) == 0)
        if repeated is not None:
            rows = sorted(order[repeated:repeated + 2].tolist())
            raise DataError(f"{path}: item_id {ids[rows[0]]} appears twice (rows {rows[0]} and {rows[1]})")
        missing = np.setdiff1d(np.arange(1, n + 1), ids)
        raise DataError(f"{path}: {ids.size} items, expected each of 1..{n} once; item_id {missing[0]} is missing")
    for column in ("likes_level", "views_level"):
        check_range(path, df, column, 0, N_LEVELS - 1)
    matrices = {}
    for name, dim in vectors.items():
        matrices[name] = list_matrix(path, df, name, dim, pl.Float32)
        check_finite(path, name, matrices[name])

    df = df.drop(*vectors)[order]  # the vectors are in `matrices` already
    item_id = df["item_id"].cast(pl.Int32)
    text, image = (matrices[name][order].astype(np.float32, copy=False) if name in matrices else None
                   for name in ("txt_emb_BERT", "img_emb_CLIPRN50"))
    return ItemFeature(
        titles=pl.DataFrame({"item_id": item_id, "title": df["item_title"].cast(pl.Utf8).fill_null("")}),
        levels=pl.DataFrame({"item_id": item_id, "likes_level": df["likes_level"].cast(pl.Int8),
                             "views_level": df["views_level"].cast(pl.Int8)}),
        item_ids=ids[order], text_emb=text, image_emb=image)


# --------------------------------------------------------------------------------------------------
# Writing the layout


def write_challenge_dataset(out_dir: str | Path, splits: dict[str, pl.DataFrame], *, item_tags: np.ndarray,
                            item_emb: np.ndarray, titles: list[str], text_emb: np.ndarray, image_emb: np.ndarray
                            ) -> None:
    """Write a dataset in the challenge layout the readers above take (flat, no images), e.g. synthetic data for
    held-out checks: out_dir/{train,valid,test}.parquet from frames in our split contract (written with the
    challenge's columns: user_id, item_seq, item_id, likes_level, views_level, label; event_ts dropped);
    item_info.parquet from item_tags (N+1, T) int and item_emb (N+1, 128) float (row i = item i, row 0 zeros);
    item_feature.parquet for items 1..N: titles (N), their levels (taken from the splits' rows, 0 for an item in
    none), text_emb (N, 768), image_emb (N, 1024). Each file is written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = item_emb.shape[0] - 1
    if item_tags.shape[0] != n + 1 or item_emb.shape[1] != CHALLENGE_EMB_DIM or len(titles) != n:
        raise ValueError(f"item tables disagree: tags {item_tags.shape}, emb {item_emb.shape}, {len(titles)} titles")
    if text_emb.shape != (n, TEXT_EMB_DIM) or image_emb.shape != (n, IMAGE_EMB_DIM):
        raise ValueError(f"text/image embeddings must be ({n}, {TEXT_EMB_DIM}) / ({n}, {IMAGE_EMB_DIM})")
    columns = ["user_id", "item_seq", "item_id", "likes_level", "views_level", "label"]
    for name in ("train", "valid", "test"):
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            splits[name].select(columns).write_parquet(tmp)
    likes, views = np.zeros(n + 1, np.int8), np.zeros(n + 1, np.int8)
    for frame in splits.values():
        ids = frame["item_id"].to_numpy()
        likes[ids], views[ids] = frame["likes_level"].to_numpy(), frame["views_level"].to_numpy()
    tags = pl.Series(item_tags.astype(np.int64)).cast(pl.List(pl.Int64))
    with atomic_path(out_dir / "item_info.parquet") as tmp:
        pl.DataFrame({"item_id": np.arange(n + 1), "item_tags": tags,
                      "item_emb_d128": pl.Series(item_emb.astype(np.float32)).cast(pl.List(pl.Float32))}
                     ).write_parquet(tmp)
    with atomic_path(out_dir / "item_feature.parquet") as tmp:
        pl.DataFrame({"item_id": np.arange(1, n + 1), "item_title": titles, "item_tags": tags[1:],
                      "likes_level": likes[1:], "views_level": views[1:],
                      "txt_emb_BERT": pl.Series(text_emb.astype(np.float32)).cast(pl.List(pl.Float32)),
                      "img_emb_CLIPRN50": pl.Series(image_emb.astype(np.float32)).cast(pl.List(pl.Float32))}
                     ).write_parquet(tmp)


# --------------------------------------------------------------------------------------------------
# Submission


def write_submission(scores: np.ndarray, out_zip: str | Path) -> None:
    """Write the challenge submission: out_zip holds one member, prediction.csv, with columns ID (0..n-1, the
    test split's row order) and Task1 (scores[ID], a click probability in [0, 1]).

    The zip is written atomically and byte-identically for identical scores (fixed member date); floats are
    written in their shortest round-tripping form.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one probability per test row, got shape {scores.shape}")
    bad = first_true(~(np.isfinite(scores) & (scores >= 0.0) & (scores <= 1.0)))
    if bad is not None:
        raise ValueError(f"score {bad} is {scores[bad]}, not a probability in [0, 1]")
    table = pl.DataFrame({"ID": np.arange(scores.size, dtype=np.int64), "Task1": scores})
    member = zipfile.ZipInfo(SUBMISSION_MEMBER, date_time=(1980, 1, 1, 0, 0, 0))
    member.compress_type = zipfile.ZIP_DEFLATED
    member.external_attr = 0o644 << 16
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr(member, table.write_csv())
