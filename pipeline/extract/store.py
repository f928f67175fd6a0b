"""The embedding frame both extraction stages write, and the resumable shard store under it.

Both return an embedding frame with the contract
    item_id Int32 (unique), emb Array(Float32, D), status Utf8 (one of STATUSES)
in the order of the ids given. An item whose input is unusable keeps its row with a zero vector and its status,
so the item universe never shrinks silently:
    text:  ok | empty (null, empty or whitespace-only title, or one with no token but the tokenizer's special ones)
    image: ok | missing (no file) | empty (zero-byte file) | corrupt (undecodable, truncated) |
           too_large (more than max_pixels pixels; never decoded, so memory stays bounded)

Long runs are resumable: `ShardStore` keeps finished shards of `shard_size` items in a hidden folder beside the
output (`.<out name>.shards/`, outside what DVC caches), each written atomically under a name carrying a digest
of its item ids, inputs and the model/params fingerprint, so a rerun reuses exactly the shards that still match.
On CUDA out-of-memory the batch is halved and retried (`BatchSize`), down to 1."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from pipeline.core.distributed import SINGLE, Dist
from pipeline.core.io import DataError, atomic_path, output_group, write_json, write_parquet
from pipeline.extract.batching import CPU, BatchSize

log = logging.getLogger(__name__)

STATUSES = ("ok", "empty", "missing", "corrupt", "too_large")
# Test hook: when set to k, the process SIGKILLs itself right after writing its k-th new shard (kill-and-resume
# tests). Never set it outside tests.
FAULT_ENV = "MMCTR_FAULT_AFTER_SHARDS"


def embedding_frame(ids: np.ndarray, emb: np.ndarray, status: Sequence[str]) -> pl.DataFrame:
    """(N,) ids, (N, D) float32 vectors and N statuses -> the embedding frame contract above."""
    return pl.DataFrame({
        "item_id": pl.Series(ids, dtype=pl.Int32),
        "emb": pl.Series(emb.astype(np.float32, copy=False), dtype=pl.Array(pl.Float32, emb.shape[1])),
        "status": pl.Series(list(status), dtype=pl.Utf8),
    })


def check_unique_ids(ids: np.ndarray, what: str) -> None:
    """A duplicate item id is a one-line DataError naming the (first) duplicate."""
    uniq, counts = np.unique(np.asarray(ids), return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise DataError(f"{what}: duplicate item_id {int(dup[0])} ({len(dup)} duplicated id(s)); ids must be unique")


# ------------------------------------------------------------------------------------------- shards


# The code an extraction runs (its phase and pipeline/core, the stage's dvc.yaml code deps besides its module).
EXTRACTION_CODE = (Path(__file__).parent, Path(__file__).parents[1] / "core")


@functools.cache
def code_digest() -> str:
    """sha256 of the extraction code, by content (EXTRACTION_CODE's .py files and open_clip configs), and of the
    versions of the libraries that compute the vectors."""
    from importlib.metadata import version

    h = hashlib.sha256(json.dumps([version(p) for p in ("torch", "transformers", "open_clip_torch")]).encode())
    for folder in EXTRACTION_CODE:
        for path in sorted(p for p in folder.rglob("*") if p.suffix in (".py", ".json") and p.is_file()):
            h.update(f"{path.relative_to(folder.parent).as_posix()}:{path.stat().st_size}:".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def fingerprint(**parts: object) -> str:
    """A stable hex digest of JSON-able parts (model spec, the params that change the vectors, device kind) and of
    the code (`code_digest`): the shards of an interrupted run are reused only by a rerun of the same code, where
    DVC reruns the stage after a code fix too."""
    return hashlib.sha256(json.dumps({**parts, "code": code_digest()}, sort_keys=True, default=str).encode()
                          ).hexdigest()


def file_stamp(path: str | Path) -> str:
    """What changes whenever a file's content may have: size, mtime, and ctime and inode, which no tool can set
    back (a cover replaced by one of the same size with its old mtime restored still gets a new ctime)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def folder_stamp(path: str | Path) -> list[tuple[str, str]]:
    """(relative name, file_stamp) of every file under a local model folder or checkpoint file, sorted; [] for
    anything else (a hub name). A model retrained into the same folder gets new shards."""
    root = Path(path)
    if root.is_file():
        return [(root.name, file_stamp(root))]
    if not root.is_dir():
        return []
    return sorted((p.relative_to(root).as_posix(), file_stamp(p)) for p in root.rglob("*") if p.is_file())


class ShardStore:
    """Finished shards of an extraction, kept in `.<out name>.shards/` beside `out`.

    Shard k covers items [k * shard_size, (k + 1) * shard_size) of `ids`; its file name carries a digest of the
    fingerprint, its ids and its per-item input keys (titles, or cover path + file_stamp), so a shard is reused
    only when all of those still match (and its item_id column is checked again on load). Shards are written to a
    temp file and renamed, so a kill never leaves a half-written shard under a valid name; the sha256 of its bytes,
    written beside it after it, is checked on load.
    """

    def __init__(self, out: str | Path, ids: np.ndarray, keys: Sequence[str], fp: str, shard_size: int):
        out = Path(out)
        self.folder = out.parent / f".{out.name}.shards"
        self.ids = np.asarray(ids, dtype=np.int64)
        self.bounds = [(a, min(a + shard_size, len(ids))) for a in range(0, len(ids), shard_size)]
        self.names = []
        for k, (a, b) in enumerate(self.bounds):
            h = hashlib.sha256(fp.encode())
            h.update(self.ids[a:b].tobytes())
            for key in keys[a:b]:  # length-prefixed: no title can shift its bytes into its neighbour's
                data = key.encode("utf-8", "surrogatepass")
                h.update(len(data).to_bytes(8, "little"))
                h.update(data)
            self.names.append(f"shard-{k:06d}-{h.hexdigest()[:20]}.parquet")
        self.written = 0

    def __len__(self) -> int:
        return len(self.bounds)

    def load(self, k: int) -> pl.DataFrame | None:
        """Shard k from disk if it was finished for these inputs and its bytes are the ones written (the digest
        beside it: parquet keeps no checksum of its pages, so a flipped byte would read back as other vectors),
        else None."""
        path = self.folder / self.names[k]
        try:
            data = path.read_bytes()
            if _digest_path(path).read_text() != hashlib.sha256(data).hexdigest():
                return None
            buffer = io.BytesIO(data)  # the bytes just checked, not a second read of the file
            frame = pl.read_parquet(buffer, glob=False)
        except Exception:  # a missing, damaged or unreadable shard is recomputed, never trusted
            return None
        a, b = self.bounds[k]
        if frame.columns != ["item_id", "emb", "status"] or not np.array_equal(frame["item_id"].to_numpy(),
                                                                               self.ids[a:b]):
            return None
        return frame

    def save(self, k: int, frame: pl.DataFrame) -> None:
        """Write shard k atomically; then honour the MMCTR_FAULT_AFTER_SHARDS test hook."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.names[k]
        with atomic_path(path) as tmp:
            frame.write_parquet(tmp, compression="zstd")
            digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        with atomic_path(_digest_path(path)) as tmp:  # last: a shard without its digest is not finished
            tmp.write_text(digest)
        self.written += 1
        fault = os.environ.get(FAULT_ENV)
        if fault and self.written >= int(fault):
            log.warning("%s=%s: killing this process after %d new shard(s) (test hook)", FAULT_ENV, fault,
                        self.written)
            os.kill(os.getpid(), signal.SIGKILL)

    def run(self, compute: Callable[[list[int]], Iterable[tuple[int, pl.DataFrame]]], dist: Dist = SINGLE,
            device: torch.device = CPU) -> tuple[pl.DataFrame | None, dict[str, int]]:
        """Reuse finished shards, compute this rank's others with compute(pending) -> (k, frame) pairs, and on rank
        0 assemble the whole table from the shard files (the same bytes whether or not the run was resumed or
        split across ranks). Under torchrun rank r owns the shards k with k % world == r, and every rank waits at a
        barrier before rank 0 assembles; `device` carries the one count exchanged (NCCL needs CUDA tensors).
        Returns (frame, or None off rank 0; {"total": shards, "reused": shards taken from an earlier run})."""
        if not self.bounds:
            raise DataError("no items to embed")
        mine = [k for k in range(len(self)) if dist.owns(k)]
        pending = [k for k in mine if self.load(k) is None]
        reused = int(dist.sum(len(mine) - len(pending), device))
        if reused:
            log.info("resuming: %d of %d shards already finished", reused, len(self))
        for k, frame in compute(pending):
            self.save(k, frame)
        dist.barrier()
        counts = {"total": len(self), "reused": reused}
        if not dist.is_main:
            return None, counts
        frames = [self.load(k) for k in range(len(self))]
        if any(f is None for f in frames):
            raise RuntimeError(f"{self.folder}: a shard vanished while the run was assembling")
        return pl.concat(frames, rechunk=True), counts

    def remove(self) -> None:
        """Delete the shard folder (after the final table is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _digest_path(shard: Path) -> Path:
    """The file beside a shard that holds the sha256 of its bytes."""
    return shard.with_name(f"{shard.name}.sha256")


def status_counts(frame: pl.DataFrame) -> dict[str, int]:
    """{status: count} for an embedding frame, with every status present (0 when absent)."""
    counts = dict(frame.group_by("status").len().iter_rows())
    return {s: int(counts.get(s, 0)) for s in STATUSES}


def write_extraction(frame: pl.DataFrame, out: str | Path, metrics: str | Path, store: ShardStore,
                     shards: dict[str, int], batch: BatchSize, section: str) -> None:
    """Write extraction stage `section`'s outputs together (output_group): the embedding frame and the metrics JSON
    (items, width, counts per status, shards total/reused, the batch size after any halving); then drop its shard
    folder.
    A non-finite vector (an encoder whose weights hold NaN, or that overflows) is a DataError: nothing is written."""
    emb = frame["emb"].to_numpy()
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise DataError(f"{section}: the encoder gave non-finite vectors for {int(bad.sum())} of {len(bad)} items "
                        f"(first: item {frame['item_id'][int(bad.argmax())]}); its weights hold NaN or inf, or it "
                        "overflows")
    counts = status_counts(frame)
    with output_group():  # the embeddings and their metrics go in place together
        write_parquet(frame, out)
        write_json({"items": frame.height, "dim": frame["emb"].dtype.size, "status": counts, "shards": shards,
                    "batch_size": batch.value}, metrics)
    store.remove()
    log.info("wrote %s: %d x %d, status %s", out, frame.height, frame["emb"].dtype.size, counts)
