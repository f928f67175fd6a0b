"""Atomic file output and the project's one-line data errors.

Every artifact is written to a temporary sibling and renamed into place, so a killed stage never leaves a
half-written file where DVC would cache it; the temp of a killed writer is removed by the next write of that path.
"""

from __future__ import annotations

import errno
import functools
import glob
import json
import math
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa


class DataError(ValueError):
    """Bad input data; the message names the file (and row or column where known) in one line."""


# Test hook: when set to a file name, the process SIGKILLs itself right before renaming a finished temp output onto
# a path of that name (kill-mid-stage tests). Never set it outside tests.
FAULT_ENV = "MMCTR_FAULT_BEFORE_RENAME"

# Errors of the output location itself (read-only, full, no permission): reported as a DataError naming the output.
OUTPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOENT, errno.ENOTDIR,
                 errno.EEXIST, errno.EISDIR}


# polars reports an OS error inside its own exception's text: `... (os error 28)`.
_POLARS_ERRNO = re.compile(r"\(os error (\d+)\)")


def error_errno(e: BaseException) -> int | None:
    """The errno of an OSError, or of a polars error that wraps one (its message ends `(os error N)`)."""
    if isinstance(e, OSError):
        return e.errno
    if isinstance(e, pl.exceptions.PolarsError) and (m := _POLARS_ERRNO.search(str(e))):
        return int(m.group(1))
    return None


@contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, pl.exceptions.PolarsError) as e:
        code = error_errno(e)
        if code not in OUTPUT_ERRNOS:
            raise
        raise DataError(f"{path}: cannot write the output ({os.strerror(code)})") from None


def _make_parent(path: Path) -> None:
    """Create the folder of output `path`; a file where a folder of its path should be is a DataError naming both
    (mkdir would say only "File exists" or "Not a directory")."""
    for folder in (path.parent, *path.parent.parents):
        if folder.is_symlink() and not folder.exists():
            raise DataError(f"{path}: cannot write the output ({folder} is a broken link to {os.readlink(folder)})")
        if folder.exists():
            if not folder.is_dir():
                raise DataError(f"{path}: cannot write the output ({folder} is a file, not a folder)")
            break
    path.parent.mkdir(parents=True, exist_ok=True)


def prepare_outputs(*paths: str | Path) -> None:
    """Create the folders of a stage's outputs and check that a file can be written in each (a probe temp file,
    removed at once), before the stage does any work: an output that is a folder, under a file, or in a read-only,
    full or forbidden folder is a DataError naming it at the start, not after minutes of work with the outputs
    before it already written."""
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():  # a file cannot be renamed onto it (a link is replaced)
            raise DataError(f"{path}: cannot write the output (a folder is in its place)")
        with _output_errors(path):
            _make_parent(path)
            _temp_file(path).unlink()


def _temp_prefix(path: Path) -> str:
    """Temp siblings are named `.<name>.<pid>.<random>.tmp`, so a later run can tell whose they are."""
    return f".{path.name}.{os.getpid()}."


def _temp_file(path: Path) -> Path:
    """A new empty temp sibling of `path` (mode 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _remove_stale_temps(path: Path) -> None:
    """Delete temp siblings of `path` left by a process that no longer runs (killed mid-write): a killed run leaves
    no litter past the next run, and a temp of a live process (a concurrent writer) is never touched."""
    if not path.parent.is_dir():
        return
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            continue


def _plain_mode(tmp: Path, directory: bool) -> None:
    """Give a finished temp file or folder the mode a plain open()/mkdir() would have (0666/0777 less the
    umask): mkstemp and mkdtemp make them 0600/0700, which would leave every output readable by its owner only."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    if tmp.exists():
        os.chmod(tmp, (0o777 if directory or tmp.is_dir() else 0o666) & ~umask)


def _fault_hook(path: Path) -> None:
    if os.environ.get(FAULT_ENV) == path.name:
        os.kill(os.getpid(), signal.SIGKILL)


# The output group being written (output_group): finished temp files and the paths they go to, in order.
_GROUP: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("output_group", default=None)


@contextmanager
def output_group() -> Iterator[None]:
    """Put a stage's outputs in place together: inside the block each atomic_path write stays in its finished temp
    file, and at the block's end all of them are renamed onto their paths, in the order written. An error or a
    kill before then leaves every earlier output as it was, never some new files beside old siblings (new splits
    with an old metrics file). Only a kill or a failed rename within the renames themselves can still split them
    (prepare_outputs checks every location first). A file written in the block reads back as the old one until
    the end; atomic_dir is not held back. A nested group is part of the outer one: its files wait for the outer
    group's end, so an error after the inner block still leaves them all as they were."""
    if _GROUP.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _GROUP.set(pending)
    try:
        yield
        while pending:
            tmp, path = pending[0]
            with _output_errors(path):
                _fault_hook(path)
                os.replace(tmp, path)
            pending.pop(0)
    finally:
        _GROUP.reset(token)
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path` (inside an output_group, at the
    group's end), on error remove it. A read-only, full or forbidden output location is a one-line DataError
    naming `path`."""
    path = Path(path)
    with _output_errors(path):
        _make_parent(path)
        _remove_stale_temps(path)
        tmp_path = _temp_file(path)
        group = _GROUP.get()
        try:
            yield tmp_path
            _plain_mode(tmp_path, directory=False)
            if group is not None:
                group.append((tmp_path, path))
                return
            _fault_hook(path)
            os.replace(tmp_path, path)
        finally:
            if group is None or (tmp_path, path) not in group:
                tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `path`; on success it replaces `path` whole. Output-location
    errors as in atomic_path.

    The old `path` (a folder, a file, or a link, whose target is left alone) is renamed aside first and deleted
    only once the new folder is in place: deleting it in place would leave it half gone to a kill or a file that
    cannot be removed, and a folder cannot be renamed onto a non-empty one. Between the two renames `path` is
    briefly absent, never partial."""
    path = Path(path)
    with _output_errors(path):
        _make_parent(path)
        _remove_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
        old = tmp.with_name(tmp.name.removesuffix(".tmp") + "-old.tmp")  # a temp name: a killed run's is cleaned
        try:
            yield tmp
            _plain_mode(tmp, directory=True)
            _fault_hook(path)
            if path.is_symlink() or path.exists():
                os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                if old.is_symlink() or old.exists():
                    os.rename(old, path)
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def write_parquet(df: pl.DataFrame, path: str | Path) -> None:
    """Write `df` to `path` atomically (zstd, statistics on)."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, compression="zstd")


def write_json(obj: Any, path: str | Path) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` atomically. A NaN or infinite float is written as null:
    JSON has no such number, and strict parsers refuse Python's `NaN` (a gAUC where no user has both labels)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite_or_null(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _finite_or_null(obj: Any) -> Any:
    """`obj` with every non-finite float, at any depth of dicts, lists and tuples, replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_null(v) for v in obj]
    return obj


def first_line(e: BaseException) -> str:
    """The first line of an exception's text, 200 characters at most ("" for an exception without text)."""
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else ""


def error_summary(e: BaseException) -> str:
    """An exception in a few words for a one-line error: its type and the first line of its text, for errors of
    libraries that raise many types (polars, transformers, open_clip, torch.load)."""
    line = first_line(e)
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def unreadable_parquet(path: str | Path, e: BaseException) -> DataError:
    """The one-line DataError for a file that parquet readers cannot read: `path` and `error_summary(e)` (polars
    and pyarrow raise several types for corrupt files)."""
    return DataError(f"{path}: not a readable parquet file ({error_summary(e)})")


_Reader = TypeVar("_Reader", bound=Callable[..., Any])


def reads_parquet(reader: _Reader) -> _Reader:
    """Decorate a reader whose first argument is a parquet path: an error that polars raises while it reads the
    file's pages (a file whose footer, and so its schema, reads but whose data is corrupt), or that pyarrow raises
    while a reader scans or copies pages itself, becomes the one-line DataError of `unreadable_parquet` instead of
    a traceback. The reader's own DataErrors pass through."""

    @functools.wraps(reader)
    def checked(path: str | Path, *args: Any, **kwargs: Any) -> Any:
        try:
            return reader(path, *args, **kwargs)
        except (OSError, pl.exceptions.PolarsError, pa.ArrowException) as e:
            raise unreadable_parquet(path, e) from None

    return checked  # type: ignore[return-value]


def parquet_schema(path: str | Path) -> pl.Schema:
    """The schema of the parquet file at `path`, from its footer. Every polars read in the project passes
    glob=False: polars expands `[`, `*` and `?` in a path by default, so a folder named `mm[1]` would read its
    sibling `mm1`'s file, and `mm*` every match's rows joined (pl.read_parquet_schema has no such switch)."""
    return pl.scan_parquet(path, glob=False).collect_schema()


def read_parquet(path: str | Path, columns: dict[str, type[pl.DataType] | pl.DataType], *,
                 select: bool = False) -> pl.DataFrame:
    """Read `path` (with `select`, only the named columns: a split's histories are most of its bytes), checking
    that each named column exists with the given dtype (one-line DataError if not)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:  # polars raises several types for corrupt files
        check_schema(path, parquet_schema(path), columns)
        return pl.read_parquet(path, glob=False, columns=list(columns) if select else None)
    except DataError:
        raise
    except Exception as e:
        raise unreadable_parquet(path, e) from None


def check_schema(path: str | Path, schema: pl.Schema, columns: dict[str, type[pl.DataType] | pl.DataType]) -> None:
    """Each named column is in `schema` with the given dtype; else a one-line DataError naming `path`."""
    for name, dtype in columns.items():
        if name not in schema:
            raise DataError(f"{path}: missing column {name!r} (has {', '.join(schema)})")
        if not schema[name].is_(dtype) and schema[name] != dtype:
            raise DataError(f"{path}: column {name!r} has dtype {schema[name]}, expected {dtype}")


# --------------------------------------------------------------------------------------------------
# Value checks of a read frame: each names the file, the first bad row and the column


def first_true(mask: np.ndarray) -> int | None:
    """The index of the first True of a 1-D mask, or None."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def check_range(path: str | Path, df: pl.DataFrame, column: str, low: int, high: int, first_row: int = 0) -> None:
    """Every value of an integer column in low..high (no nulls); else a DataError naming the first bad row
    (counted from `first_row`, the file row of df's row 0, when df is one chunk of a file)."""
    col = df[column]
    bad = first_true((col.is_null() | (col < low) | (col > high)).fill_null(True).to_numpy())
    if bad is not None:
        value = col[bad]
        what = "is null" if value is None else f"{value} is outside {low}..{high}"
        raise DataError(f"{path}: row {bad + first_row}: {column} {what}")


def list_matrix(path: str | Path, df: pl.DataFrame, column: str, width: int | None, dtype: type[pl.DataType],
                first_row: int = 0) -> np.ndarray:
    """A list column whose rows all have `width` elements (default: row 0's) and no nulls -> (rows, width) array;
    errors name the first bad row, counted from `first_row` (as check_range)."""
    try:
        col = df[column].cast(pl.List(dtype))
    except pl.exceptions.PolarsError as e:  # e.g. unsigned values past the target dtype
        raise DataError(f"{path}: column {column!r} does not fit {dtype} ({error_summary(e)})") from None
    lengths = col.list.len()
    if width is None and len(col) and lengths[0] is None:
        raise DataError(f"{path}: row {first_row}: {column} is null")
    width = width if width is not None else (lengths[0] if len(col) else 0)
    bad = first_true((lengths != width).fill_null(True).to_numpy())
    if bad is not None:
        got = "is null" if lengths[bad] is None else f"has length {lengths[bad]}"
        raise DataError(f"{path}: row {bad + first_row}: {column} {got}, expected length {width}")
    bad = first_true(col.list.eval(pl.element().is_null()).list.any().to_numpy())
    if bad is not None:
        raise DataError(f"{path}: row {bad + first_row}: {column} holds a null")
    return col.list.to_array(width).to_numpy() if width else np.zeros((len(col), 0))


MAX_EMBEDDING_ABS = 1e15  # past it, squared distances of a few hundred dimensions overflow float32 (faiss aborts)


def check_finite(path: str | Path, column: str, values: np.ndarray, ids: np.ndarray | None = None) -> None:
    """Every row of (rows, width) embedding `values` finite and within +-MAX_EMBEDDING_ABS; else a DataError
    naming the first bad row of `column` (or its item, `ids[row]`, when the rows are not the file's)."""
    for bad_rows, problem in ((~np.isfinite(values).all(axis=1), "a non-finite value"),
                              ((np.abs(values) > MAX_EMBEDDING_ABS).any(axis=1),
                               f"a value beyond +-{MAX_EMBEDDING_ABS:.0e} (squared distances would overflow float32)")):
        bad = first_true(bad_rows)
        if bad is not None:
            where = f"row {bad}" if ids is None else f"item {ids[bad]}"
            raise DataError(f"{path}: {where}: {column} holds {problem}")
