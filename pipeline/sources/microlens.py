"""Readers for the MicroLens raw releases (50k, 100k, 1M) and for the synthetic generator's files.

`find_microlens_files(raw_dir)` finds each file by role, under either naming (`find_microlens_item_files` only
the titles and covers, for readers of the items alone):
    role         synthetic name          release names (<size> = 50k, 100k, 1M, ...)
    pairs        pairs.csv               MicroLens-<size>_pairs.csv, MicroLens-<size>_pairs.tsv
    titles       title_en.csv            MicroLens-<size>_title_en.csv, MicroLens-<size>_titles.csv
    likes_views  likes_and_views.txt     MicroLens-<size>_likes_and_views.txt
    tags         tags.csv                tags_to_summary.csv                              (optional)
    covers       covers/                 any folder whose name contains "cover" or "image" (optional)
    impressions  impressions.csv         MicroLens-<size>_impressions.csv                 (optional; no release
                                         ships one: the synthetic generator's exposure log)
A release that ships both `_pairs.csv` and `_pairs.tsv` of one size gives the .csv (it has timestamps).

Contracts of the returned frames (ids are the dataset's own, contiguous from 1; 0 is padding):
- `read_pairs`  -> user Int32, item Int32, timestamp Int64; one row per click, file order kept. From a .csv
  (header `user,item,timestamp`) the timestamp is the file's Unix ms; from a .tsv (`user<TAB>item item ...`, one
  line per user, clicks in time order, no times) it is the click's 0-based position in its user's line, which
  keeps each user's order but makes times incomparable across users (a global time cut is then meaningless).
- `read_impressions` -> user Int32, item Int32, timestamp Int64, click Int8: one row per item shown to a user,
  the timestamp that of the request that showed it (header `user,item,timestamp,click`), file order kept.
- `read_titles` -> item_id Int32, title Utf8 (see `read_titles` for the quoting rules).
- `read_likes_views` -> item_id Int32, likes Int64, views Int64 (tab-separated, no header).
- `read_tags` -> item_id Int32, tags List(Utf8) (see `read_tags` for the accepted forms).
- `cover_path(covers_dir, item_id, naming)` -> `covers_dir/<item_id>.jpg` or `covers_dir/image<item_id>.jpg`;
  the id must be a positive int, so no id can name a file outside the covers folder.
Blank (or all-whitespace) lines are skipped everywhere. Every problem is a one-line DataError naming the file
and, where known, the physical line (1-based, blank lines counted).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from pipeline.core.config import INT32_MAX
from pipeline.core.io import DataError

log = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
# Integer csv files: (column, kind) in header order; kinds in `read_int_csv`.
PAIRS_COLUMNS = (("user", "id"), ("item", "id"), ("timestamp", "int64"))
IMPRESSION_COLUMNS = (*PAIRS_COLUMNS, ("click", "flag"))
_KIND_DTYPES = {"id": pl.Int32, "int64": pl.Int64, "flag": pl.Int8}
TITLE_HEADERS = ("item,title", "item_id,title")  # the 50k release's `MicroLens-50k_titles.csv` has `item,title`
TAG_HEADERS = ("item_id,tags", "item,tags")
# The accepted cover file names; "<id>" stands for the decimal item id.
COVER_NAMINGS = ("<id>.jpg", "image<id>.jpg")
_COVER_NAME_RE = {"<id>.jpg": re.compile(r"(?P<id>[0-9]+)\.jpg"),
                  "image<id>.jpg": re.compile(r"image(?P<id>[0-9]+)\.jpg")}
_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*")
_ID_RE = re.compile(r"\s*[0-9]+\s*")
_ROW_START = re.compile(r"\s*[0-9]+\s*,")  # how a title row begins: `<id>,`
_TAG_SEPARATORS = re.compile(r"[|;,]")
_RELEASE = r"(?:MicroLens-[A-Za-z0-9]+_)?"


# --------------------------------------------------------------------------------------------------
# Finding the files


@dataclass(frozen=True)
class MicroLensFiles:
    """The files of one raw MicroLens directory; `tags`, `covers` and `cover_naming` are None when absent.

    cover_naming is one of COVER_NAMINGS, the naming every cover in `covers` uses.
    """

    pairs: Path
    titles: Path
    likes_views: Path
    tags: Path | None
    covers: Path | None
    cover_naming: str | None
    impressions: Path | None = None


# role -> (file name pattern, what an error message says was looked for)
_FILE_ROLES: dict[str, tuple[re.Pattern[str], str]] = {
    "pairs": (re.compile(_RELEASE + r"pairs\.(?:csv|tsv)"),
              "pairs.csv, MicroLens-<size>_pairs.csv or MicroLens-<size>_pairs.tsv"),
    "titles": (re.compile(_RELEASE + r"(?:title_en|titles)\.csv"),
               "title_en.csv, MicroLens-<size>_title_en.csv or MicroLens-<size>_titles.csv"),
    "likes_views": (re.compile(_RELEASE + r"likes_and_views\.txt"),
                    "likes_and_views.txt or MicroLens-<size>_likes_and_views.txt"),
    "tags": (re.compile(r"tags(?:_to_summary)?\.csv"), "tags.csv or tags_to_summary.csv"),
    "impressions": (re.compile(_RELEASE + r"impressions\.csv"),
                    "impressions.csv or MicroLens-<size>_impressions.csv"),
}


def _at_most_one(raw_dir: Path, role: str, found: list[Path]) -> Path | None:
    if len(found) > 1:
        raise DataError(f"{raw_dir}: more than one {role} file ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _exactly_one(raw_dir: Path, role: str, found: list[Path]) -> Path:
    path = _at_most_one(raw_dir, role, found)
    if path is None:
        raise DataError(f"{raw_dir}: no {role} file (looked for {_FILE_ROLES[role][1]})")
    return path


@dataclass(frozen=True)
class MicroLensItemFiles:
    """What the items alone need (extraction, `mmctr neighbours`): the titles file, and the covers folder and its
    naming (None when absent)."""

    titles: Path
    covers: Path | None
    cover_naming: str | None


def _scan(raw_dir: Path) -> tuple[dict[str, list[Path]], MicroLensItemFiles]:
    """The candidates for each role of _FILE_ROLES in raw_dir (not in subfolders; a release's .csv pairs preferred
    to its .tsv of the same size), and its item files: the one titles file and at most one covers folder."""
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: raw data directory not found")
    entries = sorted(raw_dir.iterdir())
    files = [p for p in entries if p.is_file()]
    found = {role: [p for p in files if pattern.fullmatch(p.name)] for role, (pattern, _) in _FILE_ROLES.items()}
    pairs = found["pairs"]
    if len(pairs) == 2 and {p.suffix for p in pairs} == {".csv", ".tsv"} and pairs[0].stem == pairs[1].stem:
        found["pairs"] = [p for p in pairs if p.suffix == ".csv"]
    dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")
            and ("cover" in p.name.lower() or "image" in p.name.lower())]
    if len(dirs) > 1:
        raise DataError(f"{raw_dir}: more than one covers folder ({', '.join(p.name for p in dirs)}); keep one")
    covers = dirs[0] if dirs else None
    return found, MicroLensItemFiles(titles=_exactly_one(raw_dir, "titles", found["titles"]), covers=covers,
                                     cover_naming=detect_cover_naming(covers) if covers is not None else None)


def find_microlens_item_files(raw_dir: str | Path) -> MicroLensItemFiles:
    """The titles file and covers folder of `raw_dir`, found as `find_microlens_files` finds them; the click files
    may be absent (a folder of titles and covers is enough to name and show items)."""
    return _scan(Path(raw_dir))[1]


def find_microlens_files(raw_dir: str | Path) -> MicroLensFiles:
    """Find the raw files in `raw_dir` (not in subfolders) by the names in the module docstring.

    pairs, titles and likes_views are required. A missing required file, or two candidates for one role, is a
    DataError naming raw_dir and the names looked for or found. The covers folder's naming is detected with
    `detect_cover_naming`.
    """
    raw_dir = Path(raw_dir)
    found, items = _scan(raw_dir)
    return MicroLensFiles(
        pairs=_exactly_one(raw_dir, "pairs", found["pairs"]),
        titles=items.titles,
        likes_views=_exactly_one(raw_dir, "likes_views", found["likes_views"]),
        tags=_at_most_one(raw_dir, "tags", found["tags"]),
        covers=items.covers,
        cover_naming=items.cover_naming,
        impressions=_at_most_one(raw_dir, "impressions", found["impressions"]),
    )


def detect_cover_naming(covers_dir: str | Path) -> str:
    """The one naming of COVER_NAMINGS that the .jpg files in covers_dir use (other files are ignored).

    A folder with covers of both namings is a DataError naming the folder. One with neither (empty, say: the
    images are a separate download) gets '<id>.jpg', so every cover is counted `missing` by extraction. Covers whose
    id has leading zeros (`007.jpg`) are never looked up (item 7's cover is `7.jpg`): a warning counts them.
    """
    covers_dir = Path(covers_dir)
    if not covers_dir.is_dir():
        raise DataError(f"{covers_dir}: covers folder not found")
    example: dict[str, str] = {}
    padded: list[str] = []
    with os.scandir(covers_dir) as it:
        for entry in it:
            for naming, pattern in _COVER_NAME_RE.items():
                match = pattern.fullmatch(entry.name)
                if match and naming not in example:
                    example[naming] = entry.name
                if match and len(match["id"]) > 1 and match["id"].startswith("0"):
                    padded.append(entry.name)
            if len(example) == len(COVER_NAMINGS):
                raise DataError(f"{covers_dir}: covers use both namings '<id>.jpg' and 'image<id>.jpg' "
                                f"(e.g. {example['<id>.jpg']} and {example['image<id>.jpg']}); keep one")
    if padded:
        log.warning("%s: %d cover names have ids with leading zeros (e.g. %s); a cover is looked up by its id "
                    "without them (item 7: 7.jpg), so these count as missing unless renamed", covers_dir, len(padded),
                    min(padded))
    if not example:
        log.warning("%s: no cover named '<id>.jpg' or 'image<id>.jpg'; every cover counts as missing", covers_dir)
        return COVER_NAMINGS[0]
    return next(iter(example))


def cover_path(covers_dir: str | Path, item_id: int, naming: str = "<id>.jpg") -> Path:
    """The cover of `item_id` under `naming` (one of COVER_NAMINGS); only positive integer ids are accepted, so
    paths stay inside the folder."""
    if naming not in COVER_NAMINGS:
        raise ValueError(f"unknown cover naming {naming!r}; expected one of {', '.join(COVER_NAMINGS)}")
    if isinstance(item_id, bool) or not isinstance(item_id, int | np.integer) or item_id < 1:
        raise DataError(f"{covers_dir}: invalid item id {item_id!r} for a cover path")
    return Path(covers_dir) / naming.replace("<id>", str(int(item_id)))


# --------------------------------------------------------------------------------------------------
# Line-level helpers


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")


def _read_lines(path: Path) -> list[str]:
    """Physical lines of a UTF-8 file, for line numbers: split at "\\n" (a "\\r" before it removed), or, in a file
    with no "\\n" at all, at "\\r" (a classic Mac or Excel "CSV (Macintosh)" export ends its lines with "\\r" alone:
    split at "\\n", its whole file would be one line). A lone "\\r" in a file of "\\n" lines is part of its line (a
    title may hold one). A leading BOM is removed."""
    _require_file(path)
    data = path.read_bytes()
    raw = data.split(b"\n" if b"\n" in data else b"\r")
    if raw[-1] == b"":
        raw.pop()  # the final line ending ends the last line, it does not start an empty one
    lines = []
    for line_no, chunk in enumerate(raw, start=1):
        try:
            lines.append(chunk.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: line {line_no}: not UTF-8 text (byte {e.start})") from None
    if lines:
        lines[0] = lines[0].removeprefix("\ufeff")
    return lines


def _first_non_utf8_line(path: Path) -> int:
    """The line number of the first byte of `path` that is not UTF-8 (a decoder's error offset is within its
    chunk, not the file)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return 1 + len(re.findall(rb"\r\n|\r|\n", raw[:e.start]))
    return 1


def _parse_id(path: Path, line_no: int, name: str, text: str, high: int = INT32_MAX) -> int:
    """A positive integer id from a field, or a DataError naming the line and the field."""
    if not _INT_RE.fullmatch(text):
        raise DataError(f"{path}: line {line_no}: {name} {text!r} is not an integer")
    value = int(text)
    if not 1 <= value <= high:
        raise DataError(f"{path}: line {line_no}: {name} {value} is outside 1..{high}")
    return value


def _first_seen(path: Path, line_no: int, item: int, seen: dict[int, int]) -> None:
    """Record that `item` appears on line_no; a second appearance is a DataError naming both lines."""
    if item in seen:
        raise DataError(f"{path}: line {line_no}: duplicate item_id {item} (first on line {seen[item]})")
    seen[item] = line_no


# --------------------------------------------------------------------------------------------------
# Pairs


def read_pairs(path: str | Path) -> pl.DataFrame:
    """Clicks from a pairs file: `.tsv` is read as `read_pairs_tsv`, anything else as `read_pairs_csv`."""
    path = Path(path)
    return read_pairs_tsv(path) if path.suffix == ".tsv" else read_pairs_csv(path)


def read_pairs_csv(path: str | Path) -> pl.DataFrame:
    """Clicks from a csv with header `user,item,timestamp` and integer fields (user, item in 1..2^31-1)."""
    return read_int_csv(path, PAIRS_COLUMNS)


def read_pairs_csv_reference(path: str | Path) -> pl.DataFrame:
    """Plain-Python reader of the same format as `read_pairs_csv`, the definition it is checked against."""
    return read_int_csv_reference(path, PAIRS_COLUMNS)


def read_impressions(path: str | Path) -> pl.DataFrame:
    """Exposures from a csv with header `user,item,timestamp,click`: every item shown to a user, at the time of
    the request that showed it, with click 1 (clicked) or 0 (shown, not clicked). -> user Int32, item Int32,
    timestamp Int64, click Int8, file order kept."""
    return read_int_csv(path, IMPRESSION_COLUMNS)


def _shown(text: str, limit: int = 60) -> str:
    """`text` quoted for an error message, cut to `limit` characters (a header line may be a whole file)."""
    return repr(text[:limit]) + (" ..." if len(text) > limit else "")


def _unquoted_line(line: str) -> str:
    """`line` with each comma-separated field that is wrapped in double quotes unwrapped (`"1", "2"` -> `1, 2`)."""
    return ",".join(field.strip()[1:-1] if re.fullmatch(r'\s*"[^"]*"\s*', field) else field
                    for field in line.split(","))


def read_int_csv(path: str | Path, columns: tuple[tuple[str, str], ...]) -> pl.DataFrame:
    """A csv whose header is the names of `columns` ((name, kind) pairs, kind `id` = an int in 1..2^31-1 read as
    Int32, `int64` = any 64-bit int, `flag` = 0 or 1 read as Int8) and whose fields are those integers.

    polars parses the file; if it fails or finds an empty or out-of-range field, `read_int_csv_reference`
    re-reads it line by line, so every problem is reported with its physical line.
    """
    path = Path(path)
    _require_file(path)
    header = ",".join(name for name, _ in columns)
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        # bounded: a file of one multi-GB line (no newline) must not be read, nor quoted, whole
        first = f.readline(len(header) + 64).rstrip("\r\n")
    if _unquoted_line(first) != header:
        raise DataError(f"{path}: line 1: expected header '{header}', got {_shown(first)}")
    try:
        df = pl.read_csv(path, glob=False, schema={name: _KIND_DTYPES[kind] for name, kind in columns})
    except pl.exceptions.PolarsError:
        return read_int_csv_reference(path, columns)
    # polars reads a blank line as an all-null row; the reference skips it and checks everything else.
    out_of_range = [(df[name] < 1).any() if kind == "id" else ~df[name].is_in([0, 1]).all() if kind == "flag"
                    else False for name, kind in columns]
    if df.null_count().sum_horizontal()[0] or any(out_of_range):
        return read_int_csv_reference(path, columns)
    return df


def read_int_csv_reference(path: str | Path, columns: tuple[tuple[str, str], ...]) -> pl.DataFrame:
    """Plain-Python reader of the format `read_int_csv` reads, the definition it is checked against.

    Each non-blank line after the header must hold len(columns) comma-separated integers (spaces around them
    allowed), each of its column's kind. A field (of the header too) may be wrapped in double quotes, as pandas
    (QUOTE_ALL) and spreadsheets write them.
    """
    path = Path(path)
    header = ",".join(name for name, _ in columns)
    lines = _read_lines(path)
    if not lines or _unquoted_line(lines[0]) != header:
        raise DataError(f"{path}: line 1: expected header '{header}', got {_shown((lines or [''])[0])}")
    values: list[list[int]] = [[] for _ in columns]
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = _unquoted_line(line).split(",")
        if len(fields) != len(columns):
            raise DataError(f"{path}: line {line_no}: expected {len(columns)} fields {header}, got {len(fields)}")
        for (name, kind), field, out in zip(columns, fields, values, strict=True):
            if kind == "id":
                out.append(_parse_id(path, line_no, name, field))
            elif not _INT_RE.fullmatch(field) or abs(int(field)) > INT64_MAX:
                raise DataError(f"{path}: line {line_no}: {name} {field!r} is not a 64-bit integer")
            elif kind == "flag" and int(field) not in (0, 1):
                raise DataError(f"{path}: line {line_no}: {name} must be 0 or 1, got {field.strip()!r}")
            else:
                out.append(int(field))
    return pl.DataFrame({name: pl.Series(v, dtype=_KIND_DTYPES[kind])
                         for (name, kind), v in zip(columns, values, strict=True)})


def read_pairs_tsv(path: str | Path) -> pl.DataFrame:
    """Clicks from the release's .tsv: one line per user, `user<TAB>item item ...` (items space-separated, in
    time order). Rows come line by line, items in line order; timestamp = 0-based position in the line (see the
    module docstring). A user on two lines is a DataError naming both, since their order would be unknown.
    """
    path = Path(path)
    lines = _read_lines(path)
    users, counts, line_nos = [], [], []
    items: list[int] = []
    first_line: dict[int, int] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        head, sep, rest = line.partition("\t")
        if not sep:
            raise DataError(f"{path}: line {line_no}: expected 'user<TAB>item item ...', got {line[:60]!r}")
        user = _parse_id(path, line_no, "user", head)
        if user in first_line:
            raise DataError(f"{path}: line {line_no}: user {user} already has line {first_line[user]}")
        first_line[user] = line_no
        tokens = rest.split()
        # int() alone would also take `3_0` (30) and non-ASCII digits, which the CSV readers refuse
        bad = next((t for t in tokens if not _INT_RE.fullmatch(t)), None)
        if bad is not None:
            raise DataError(f"{path}: line {line_no}: item {bad!r} is not an integer")
        line_items = [int(t) for t in tokens]
        if line_items and not 1 <= min(line_items) <= max(line_items) <= INT32_MAX:
            bad_item = next(i for i in line_items if not 1 <= i <= INT32_MAX)
            raise DataError(f"{path}: line {line_no}: item {bad_item} is outside 1..{INT32_MAX}")
        users.append(user)
        counts.append(len(line_items))
        line_nos.append(line_no)
        items.extend(line_items)
    count_arr = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(count_arr) - count_arr  # (n_lines,) index of each line's first click
    position = np.arange(len(items), dtype=np.int64) - np.repeat(starts, count_arr)
    return pl.DataFrame({"user": pl.Series(np.repeat(np.asarray(users, dtype=np.int32), count_arr)),
                         "item": pl.Series(np.asarray(items, dtype=np.int32)),
                         "timestamp": pl.Series(position)})


def check_known_items(pairs: pl.DataFrame, known: np.ndarray, policy: Literal["error", "drop"],
                      path: str | Path) -> tuple[pl.DataFrame, int]:
    """Clicks (or an impressions log's exposures) whose item is not in `known` (the item universe, e.g.
    `item_ids(titles)`), under `policy`.

    "error": a DataError naming `path` (the pairs file), the number of such clicks and the first one's user and
    item. "drop": returns the pairs without them (order kept) and how many were dropped. Without unknown items
    the pairs come back unchanged with 0.
    """
    if policy not in ("error", "drop"):
        raise ValueError(f"unknown policy {policy!r}; expected 'error' or 'drop'")
    is_known = pairs["item"].is_in(pl.Series(np.asarray(known, dtype=np.int64)).cast(pairs.schema["item"]))
    n_unknown = int((~is_known).sum())
    if n_unknown == 0:
        return pairs, 0
    if policy == "error":
        first = pairs.filter(~is_known).row(0, named=True)
        what = "exposures" if "click" in pairs.columns else "clicks"  # an impressions log, or pairs
        raise DataError(f"{path}: {n_unknown} {what} reference unknown items; first: user {first['user']} "
                        f"item {first['item']}")
    return pairs.filter(is_known), n_unknown


def drop_repeated_events(events: pl.DataFrame, path: str | Path) -> tuple[pl.DataFrame, int]:
    """Clicks (user, item, timestamp) or exposures (the same plus click) without the rows that repeat an earlier
    row exactly, and how many those were. A repeated row is one event logged twice (a log appended to itself, a
    retried upload): kept, a click would be its own latest history item and leak its label. The first occurrence is
    kept, file order unchanged. An exposure key shown twice with different click flags is a DataError naming
    `path`, both file rows (1-based, header = line 1) and the key."""
    keyed = events.with_row_index("_row")
    unique = keyed.unique(subset=events.columns, keep="first", maintain_order=True)
    if "click" in events.columns:
        key = ["user", "item", "timestamp"]
        clash = unique.filter(pl.struct(key).is_duplicated())
        if clash.height:
            first = clash.row(0, named=True)
            other = clash.filter((pl.col("user") == first["user"]) & (pl.col("item") == first["item"])
                                 & (pl.col("timestamp") == first["timestamp"]))["_row"][1]
            raise DataError(f"{path}: lines {first['_row'] + 2} and {other + 2}: user {first['user']} shown item "
                            f"{first['item']} at timestamp {first['timestamp']} with different click flags")
    return unique.drop("_row"), events.height - unique.height

# --------------------------------------------------------------------------------------------------
# Titles


def _quoted_title(rest: str, lines: list[str], index: int) -> tuple[str, int] | None:
    """rest (after `item_id,`, starting with a quote) as a CSV-quoted field that may run on over lines[index+1:]:
    (the unquoted title, the number of physical lines it used), or None if it is not such a field (no closing
    quote before the end of the file, text after the closing quote, or a next line that reads as an item row
    `<id>,...`: a title that opens with a lone quote must not swallow the rows after it up to some later title
    that ends in one)."""
    parts: list[str] = []
    text, pos, j = rest, 1, index
    while True:
        q = text.find('"', pos)
        if q == -1:  # the field goes on over the next line; the line break belongs to the title
            parts.append(text[pos:])
            j += 1
            if j >= len(lines) or _ROW_START.match(lines[j]):
                return None
            parts.append("\n")
            text, pos = lines[j], 0
        elif text.startswith('""', q):
            parts.append(text[pos:q + 1])
            pos = q + 2
        elif q == len(text) - 1:
            parts.append(text[pos:q])
            return "".join(parts), j - index + 1
        else:
            return None


def read_titles(path: str | Path) -> pl.DataFrame:
    """Titles, one per item, in file order.

    The first line may be the header `item,title` (the 50k release) or `item_id,title`; otherwise every line is
    data. A data line is split at its first comma into the id and the title, so titles may hold commas, quotes
    or nothing at all. A title that starts with a double quote and is a complete CSV-quoted field (closing quote
    at the end of a line, inner quotes doubled) is unquoted and may span lines (the line breaks kept as "\\n")
    unless one of the lines it would run on over begins like a row (`<id>,`); any other title, quotes included, is
    taken literally from its one line. Ids must be unique integers >= 1.
    """
    path = Path(path)
    lines = _read_lines(path)
    start = 1 if lines and lines[0].strip() in TITLE_HEADERS else 0
    ids: list[int] = []
    titles: list[str] = []
    seen: dict[int, int] = {}
    i = start
    while i < len(lines):
        line, line_no = lines[i], i + 1
        if not line.strip():
            i += 1
            continue
        head, sep, rest = line.partition(",")
        if not sep or not _ID_RE.fullmatch(head):
            raise DataError(f"{path}: line {line_no}: expected 'item_id,title', got {line[:60]!r}")
        item = int(head)
        if not 1 <= item <= INT32_MAX:
            raise DataError(f"{path}: line {line_no}: item_id {item} is outside 1..{INT32_MAX}")
        _first_seen(path, line_no, item, seen)
        quoted = _quoted_title(rest, lines, i) if rest.startswith('"') else None
        title, used = quoted if quoted is not None else (rest, 1)
        ids.append(item)
        titles.append(title)
        i += used
    return pl.DataFrame({"item_id": pl.Series(ids, dtype=pl.Int32), "title": pl.Series(titles, dtype=pl.Utf8)})


def read_item_universe(path: str | Path) -> pl.DataFrame:
    """`read_titles`, for the titles file that defines the item universe: its ids must be exactly 1..N for N
    titles (any order), since row i of every item table is item i. Checked before any stage sizes an array by the
    largest id (one id of 2e9 would ask for gigabytes): an id beyond N is a DataError naming the file and the id."""
    titles = read_titles(path)
    beyond = titles.filter(pl.col("item_id") > titles.height)
    if beyond.height:
        raise DataError(f"{path}: item_id {beyond['item_id'][0]} is beyond the {titles.height} titles; item ids must "
                        f"be 1..{titles.height} (row i of the item table is item i)")
    return titles


def item_ids(titles: pl.DataFrame) -> np.ndarray:
    """The item universe: sorted ids from the titles file, (N,) int64."""
    return np.sort(titles["item_id"].to_numpy().astype(np.int64))


# --------------------------------------------------------------------------------------------------
# Likes and views, tags


def read_likes_views(path: str | Path) -> pl.DataFrame:
    """Counts from `likes_and_views.txt`: no header, lines `item_id<TAB>likes<TAB>views`, non-negative ints."""
    path = Path(path)
    lines = _read_lines(path)
    ids, likes, views = [], [], []
    seen: dict[int, int] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(f"{path}: line {line_no}: expected 3 tab-separated fields item_id,likes,views, "
                            f"got {len(fields)}")
        item = _parse_id(path, line_no, "item_id", fields[0])
        for name, text, out in (("likes", fields[1], likes), ("views", fields[2], views)):
            if not _ID_RE.fullmatch(text) or int(text) > INT64_MAX:
                raise DataError(f"{path}: line {line_no}: {name} {text!r} is not a non-negative 64-bit integer")
            out.append(int(text))
        _first_seen(path, line_no, item, seen)
        ids.append(item)
    return pl.DataFrame({"item_id": pl.Series(ids, dtype=pl.Int32), "likes": pl.Series(likes, dtype=pl.Int64),
                         "views": pl.Series(views, dtype=pl.Int64)})


def read_tags(path: str | Path) -> pl.DataFrame:
    """Tags per item, in file order, from `tags.csv` or the release's `tags_to_summary.csv`.

    The file is CSV (quoted fields may hold commas and line breaks, but no line they run on over may begin like a
    row, `<id>,`: that is a quote left open, which would swallow those rows). The first line is the header
    `item_id,tags` (or `item,tags`) unless its first field is an integer, in which case every line is data
    (third-party readers of tags_to_summary.csv treat it as headerless `item_id,category`). A data row is the item
    id and one or more fields; all fields after the id are split at `|`, `;` and `,`, stripped, and empty pieces
    dropped, so `1,a|b`, `1,"a; b"`, `1,a,b` and `1,"a, b"` all give [a, b], and `1,` gives []. Ids are unique
    integers >= 1.
    """
    path = Path(path)
    _require_file(path)
    ids: list[int] = []
    tags: list[list[str]] = []
    seen: dict[int, int] = {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, strict=True)  # strict: a quote left open to the end of the file is an error
            end_of_previous = 0
            for row in reader:
                line_no, end_of_previous = end_of_previous + 1, reader.line_num
                # a field that opens a quote and closes it lines later, over what reads as rows, swallowed them
                swallowed = next((part for field in row for part in field.split("\n")[1:]
                                  if _ROW_START.match(part)), None)
                if swallowed is not None:
                    raise DataError(f"{path}: line {line_no}: a quoted field runs on over a line that begins like a "
                                    f"row ({swallowed[:40]!r}); is a quote left open?")
                if not any(field.strip() for field in row):
                    continue
                if line_no == 1 and not _ID_RE.fullmatch(row[0]):
                    if ",".join(field.strip() for field in row) not in TAG_HEADERS:
                        raise DataError(f"{path}: line 1: expected header 'item_id,tags' or an item_id,tags row, "
                                        f"got {','.join(row)[:60]!r}")
                    continue
                if len(row) < 2:
                    raise DataError(f"{path}: line {line_no}: expected 'item_id,tags', got {row[0][:60]!r}")
                item = _parse_id(path, line_no, "item_id", row[0])
                _first_seen(path, line_no, item, seen)
                ids.append(item)
                tags.append([t.strip() for field in row[1:] for t in _TAG_SEPARATORS.split(field) if t.strip()])
    except UnicodeDecodeError:
        raise DataError(f"{path}: line {_first_non_utf8_line(path)}: not UTF-8 text") from None
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: {e}") from None
    return pl.DataFrame({"item_id": pl.Series(ids, dtype=pl.Int32),
                         "tags": pl.Series(tags, dtype=pl.List(pl.Utf8))})


def count_before(click_user: np.ndarray, click_ts: np.ndarray, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """(Q,) int64: for each query (user[q], ts[q]), how many of that user's clicks have a timestamp < ts[q]. The
    clicks (C,) must be sorted by (user, timestamp); no composite key, so any int32 user and int64 time work."""
    all_user = np.concatenate([click_user, user])
    all_ts = np.concatenate([click_ts, ts])
    is_click = np.concatenate([np.ones(len(click_user), np.int64), np.zeros(len(user), np.int64)])
    # Sort by (user, ts, kind): a query sorts before clicks at its own timestamp, so they do not count.
    order = np.lexsort((is_click, all_ts, all_user))
    clicks_before = np.cumsum(is_click[order]) - is_click[order]  # clicks strictly before each sorted position
    before = np.empty_like(clicks_before)
    before[order] = clicks_before
    return before[len(click_user):] - np.searchsorted(click_user, user, side="left")
