"""Streamed splits (train.data_loading: stream): a split parquet written once, a chunk at a time, as .npy arrays
beside the model, and read back through memory maps, so no split is ever held whole in memory.

`write_split_arrays` reads the parquet in chunks of STREAM_CHUNK rows (pyarrow's batch reader), checks each chunk
exactly as `load_split` checks a whole file (split_arrays: the same errors, naming the file's row), and appends
it to one .npy file per column (item_seq.npy (n, L) int32, item_id/user_id (n,) int32, label (n,) float32, one
(n,) int8 file per context feature), so it needs memory for one chunk. `open_split_arrays` maps those files
(private, copy-on-write maps: the arrays are writable for torch, and nothing is ever written back) into a
`MappedSplit`, a SplitTensors whose tensors are views of the maps; reading rows pages them in, and `release()`
(madvise MADV_DONTNEED) lets them go again, so the process keeps only what it read since the last release: the
training loop and scoring release every RELEASE_BATCHES batches (pipeline/training/data.py). The pages stay in
the OS page cache, so reading them again costs no disk read while memory lasts.

Rows come out exactly as `load_split` gives them, so a model trained on either sees the same numbers (test).
"""

from __future__ import annotations

import mmap
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipeline.core.feature_map import FeatureMap
from pipeline.core.io import DataError, check_schema, unreadable_parquet
from pipeline.training.data import SplitTensors, split_arrays, split_schema, tensors_of

STREAM_CHUNK = 1 << 16  # rows per parquet read: 26 MB of int32 history at max_len 100


def _columns(feature_map: FeatureMap) -> list[str]:
    return list(split_schema(feature_map))


def write_split_arrays(path: str | Path, feature_map: FeatureMap, out_dir: str | Path) -> int:
    """The split parquet at `path` -> one .npy per column under out_dir (module docstring); returns the row count.
    Bad files and values are one-line DataErrors naming `path` (and the row), as load_split's."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        reader = pq.ParquetFile(path)
        schema = pl.from_arrow(reader.schema_arrow.empty_table()).schema
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise unreadable_parquet(path, e) from None
    check_schema(path, schema, split_schema(feature_map))
    n = reader.metadata.num_rows
    if n == 0:
        raise DataError(f"{path}: split has no rows")
    files: dict[str, BinaryIO] = {}
    with ExitStack() as stack:
        done = 0
        for batch in reader.iter_batches(batch_size=STREAM_CHUNK, columns=_columns(feature_map)):
            arrays = split_arrays(path, pl.from_arrow(batch), feature_map, first_row=done)
            for name, a in arrays.items():
                if name not in files:
                    files[name] = stack.enter_context(open(out / f"{name}.npy", "wb"))
                    np.lib.format.write_array_header_2_0(
                        files[name], {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
                                      "shape": (n, *a.shape[1:])})
                files[name].write(np.ascontiguousarray(a).tobytes())
            done += len(batch)
    return n


@dataclass(frozen=True)
class MappedSplit(SplitTensors):
    """A SplitTensors over memory-mapped .npy files (module docstring); `release()` drops the pages read so far."""

    maps: tuple[mmap.mmap, ...] = field(default=(), repr=False)

    def release(self) -> None:
        for m in self.maps:
            m.madvise(mmap.MADV_DONTNEED)


def _map_npy(path: Path) -> tuple[np.ndarray, mmap.mmap]:
    """A .npy file -> (a writable array viewing a private map of it, the map)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise DataError(f"{path}: .npy format version {version} (expected 1.0 or 2.0)")
        shape, fortran, dtype = read_header[version](f)
        offset = f.tell()
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if fortran:
        raise DataError(f"{path}: a Fortran-ordered array; write_split_arrays writes C order")
    return np.frombuffer(m, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape), m


def open_split_arrays(out_dir: str | Path, feature_map: FeatureMap) -> MappedSplit:
    """The arrays `write_split_arrays` wrote under out_dir, mapped (not read) as a MappedSplit."""
    arrays, maps = {}, []
    for name in _columns(feature_map):
        arrays[name], m = _map_npy(Path(out_dir) / f"{name}.npy")
        maps.append(m)
    t = tensors_of(arrays, feature_map)
    return MappedSplit(t.item_seq, t.item_id, t.context, t.label, t.user_id, maps=tuple(maps))


@contextmanager
def streamed_split(path: str | Path, feature_map: FeatureMap, work_dir: str | Path) -> Iterator[MappedSplit]:
    """The split at `path` written under work_dir and mapped for the duration of the block; work_dir is removed
    afterwards, on errors too."""
    work = Path(work_dir)
    try:
        write_split_arrays(path, feature_map, work)
        yield open_split_arrays(work, feature_map)
    finally:
        shutil.rmtree(work, ignore_errors=True)
