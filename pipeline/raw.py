"""Readers for the MicroLens raw layout (the synthetic generator writes the same files).

Contracts of the returned frames (ids are the dataset's own, contiguous from 1; 0 is padding):
- `read_pairs`  -> user Int32, item Int32, timestamp Int64 (Unix ms); one row per click, file order kept.
- `read_titles` -> item_id Int32, title Utf8; `title_en.csv` has no header and each line is `item_id,title`
  where the title may itself contain commas (split at the first comma, as MicroLens' own loader does).
- `read_likes_views` -> item_id Int32, likes Int64, views Int64 (tab-separated, no header).
- `read_tags` -> item_id Int32, tags List(Utf8) (header `item_id,tags`, tags `|`-joined).
- `cover_path(covers_dir, item_id)` -> `covers_dir/<item_id>.jpg`; the id must be a positive int, so no id
  can name a file outside the covers folder.
Every problem is a one-line DataError naming the file and, where known, the line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from pipeline.io import DataError


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")


def _check_unique_ids(ids: np.ndarray, path: Path) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: duplicate item_id {int(uniq[counts > 1][0])}")


def read_pairs(path: str | Path) -> pl.DataFrame:
    """Clicks from `pairs.csv` (header `user,item,timestamp`)."""
    path = Path(path)
    _require_file(path)
    with path.open() as f:
        header = f.readline().strip()
    if header != "user,item,timestamp":
        raise DataError(f"{path}: line 1: expected header 'user,item,timestamp', got {header!r}")
    try:
        df = pl.read_csv(path, schema={"user": pl.Int32, "item": pl.Int32, "timestamp": pl.Int64})
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{path}: not integer user,item,timestamp rows ({str(e).splitlines()[0]})") from None
    bad = df.with_row_index("line", offset=2).filter(
        pl.any_horizontal(pl.all().exclude("line").is_null()) | (pl.col("user") < 1) | (pl.col("item") < 1))
    if bad.height:
        raise DataError(f"{path}: line {bad['line'][0]}: empty or non-positive user/item id")
    return df


def read_titles(path: str | Path) -> pl.DataFrame:
    """Titles from `title_en.csv` (no header; `item_id,title`, title may contain commas or be empty)."""
    path = Path(path)
    _require_file(path)
    ids: list[int] = []
    titles: list[str] = []
    with path.open(encoding="utf-8", newline="\n") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            head, sep, title = line.partition(",")
            if not sep or not head.strip().isdigit():
                raise DataError(f"{path}: line {line_no}: expected 'item_id,title', got {line[:60]!r}")
            ids.append(int(head))
            titles.append(title)
    id_arr = np.asarray(ids, dtype=np.int64)
    _check_unique_ids(id_arr, path)
    if (id_arr < 1).any():
        raise DataError(f"{path}: item ids must be >= 1")
    return pl.DataFrame({"item_id": pl.Series(ids, dtype=pl.Int32), "title": pl.Series(titles, dtype=pl.Utf8)})


def read_likes_views(path: str | Path) -> pl.DataFrame:
    """Counts from `likes_and_views.txt` (tab-separated `item_id likes views`, no header)."""
    path = Path(path)
    _require_file(path)
    try:
        df = pl.read_csv(path, separator="\t", has_header=False,
                         schema={"item_id": pl.Int32, "likes": pl.Int64, "views": pl.Int64})
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{path}: expected 3 integer tab-separated columns ({str(e).splitlines()[0]})") from None
    if df.null_count().sum_horizontal()[0] > 0:
        line = df.with_row_index("line", offset=1).filter(pl.any_horizontal(pl.all().is_null()))["line"][0]
        raise DataError(f"{path}: line {line}: missing value")
    _check_unique_ids(df["item_id"].to_numpy(), path)
    return df


def read_tags(path: str | Path) -> pl.DataFrame:
    """Tags from `tags.csv` (header `item_id,tags`; tags `|`-joined; an empty field means no tags)."""
    path = Path(path)
    _require_file(path)
    try:
        df = pl.read_csv(path, schema={"item_id": pl.Int32, "tags": pl.Utf8})
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{path}: expected columns item_id,tags ({str(e).splitlines()[0]})") from None
    if df["item_id"].null_count():
        raise DataError(f"{path}: empty item_id")
    _check_unique_ids(df["item_id"].to_numpy(), path)
    return df.with_columns(
        pl.col("tags").fill_null("").str.split("|").list.eval(pl.element().str.strip_chars())
        .list.eval(pl.element().filter(pl.element() != "")))


def cover_path(covers_dir: str | Path, item_id: int) -> Path:
    """`covers_dir/<item_id>.jpg`; only positive integer ids are accepted, so paths stay inside the folder."""
    if isinstance(item_id, bool) or not isinstance(item_id, int | np.integer) or item_id < 1:
        raise DataError(f"{covers_dir}: invalid item id {item_id!r} for a cover path")
    return Path(covers_dir) / f"{int(item_id)}.jpg"


def item_ids(titles: pl.DataFrame) -> np.ndarray:
    """The item universe: sorted ids from the titles file, (N,) int64."""
    return np.sort(titles["item_id"].to_numpy().astype(np.int64))
