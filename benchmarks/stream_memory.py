"""Benchmark: peak memory of reading a train split in memory (load_split) against streaming it (memory-mapped
.npy, train.data_loading: stream), at two split sizes, side by side.

    python benchmarks/stream_memory.py                       # 1M and 2M rows of 100-wide histories
    python benchmarks/stream_memory.py --rows 2000000 --rows 4000000 --width 100

It writes a split parquet per size (random histories, the sequences contract), then, for each size and each way of
reading, runs a fresh process that reads the split and makes one pass of training batches over it in the block-
shuffled order (`pass_batches`, batch 1024, 4096-row blocks, 16 blocks per window: what `fit` reads; no model, so
the figures are the data path's alone) and reports its own peak RSS (VmHWM: benchmarks/rss.py), the time to open the
split (stream: converting the parquet to .npy included) and the pass's rows/s. In memory the peak grows with the
rows; streamed it should stay about flat: the rows read between two releases, plus the (n,) index arrays.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import click
import numpy as np
import polars as pl
import torch
from rss import own_peak_rss  # benchmarks/rss.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.feature_map import Feature, FeatureMap  # noqa: E402
from pipeline.training.data import RELEASE_BATCHES, load_split, make_batch  # noqa: E402
from pipeline.training.loop import pass_batches  # noqa: E402
from pipeline.training.stream import streamed_split  # noqa: E402

N_ITEMS = 90_000
BATCH, BLOCK, BUFFER = 1024, 4096, 16


def feature_map(width: int) -> FeatureMap:
    return FeatureMap((
        Feature("item_id", "categorical", "item", vocab_size=N_ITEMS + 1),
        Feature("item_tags", "sequence", "item", vocab_size=2, max_len=1),
        Feature("item_seq", "sequence", "history", vocab_size=N_ITEMS + 1, max_len=width, share_embedding="item_id"),
        Feature("likes_level", "categorical", "context", vocab_size=11),
        Feature("views_level", "categorical", "context", vocab_size=11),
    ))


def write_split(path: Path, rows: int, width: int) -> None:
    """A split parquet of `rows` rows, written 250K rows at a time (left-padded random histories, median ~6)."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    writer = None
    for lo in range(0, rows, 250_000):
        n = min(250_000, rows - lo)
        seq = rng.integers(1, N_ITEMS + 1, size=(n, width), dtype=np.int32)
        real = np.minimum(rng.geometric(1 / 8, size=n), width)
        seq[np.arange(width)[None, :] < (width - real)[:, None]] = 0
        frame = pl.DataFrame({
            "user_id": pl.Series(rng.integers(0, 1_000_000, n), dtype=pl.Int32),
            "item_seq": pl.Series(seq, dtype=pl.Array(pl.Int32, width)).cast(pl.List(pl.Int32)),
            "item_id": pl.Series(rng.integers(1, N_ITEMS + 1, n), dtype=pl.Int32),
            "label": pl.Series(rng.integers(0, 2, n), dtype=pl.Float32),
            "likes_level": pl.Series(rng.integers(0, 11, n), dtype=pl.Int8),
            "views_level": pl.Series(rng.integers(0, 11, n), dtype=pl.Int8)}).to_arrow()
        writer = writer or pq.ParquetWriter(path, frame.schema)
        writer.write_table(frame)
    writer.close()


def measure(path: Path, width: int, mode: str, work: Path) -> dict[str, float]:
    """In this process: open the split `mode`'s way, one pass of batches; peak RSS and timings."""
    fmap = feature_map(width)
    start = time.perf_counter()
    with streamed_split(path, fmap, work) if mode == "stream" else nullcontext(load_split(path, fmap)) as split:
        opened = time.perf_counter() - start
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(0)
        batches = pass_batches(split.history_lengths(), BATCH, 0, gen, BLOCK, BUFFER)
        checksum = 0
        for b, idx in enumerate(batches):
            checksum += int(make_batch(split, idx, 16, torch.device("cpu"))["item_seq"][:, -1].sum())
            if b % RELEASE_BATCHES == RELEASE_BATCHES - 1:
                split.release()
        seconds = time.perf_counter() - start
    return {"peak_rss_mb": own_peak_rss() / 2**20, "open_s": opened,
            "rows_per_s": len(split) / seconds, "checksum": checksum}


@click.command()
@click.option("--rows", "sizes", multiple=True, type=int, default=(1_000_000, 2_000_000), show_default=True)
@click.option("--width", default=100, show_default=True, help="history positions (MicroLens-1M's challenge: 100)")
@click.option("--one", type=(click.Path(path_type=Path), str), default=None, hidden=True)
def main(sizes: tuple[int, ...], width: int, one: tuple[Path, str] | None) -> None:
    """Peak RSS of the in-memory and the streamed split, per size."""
    if one is not None:  # a child run: measure and print JSON
        path, mode = one
        click.echo(json.dumps(measure(path, width, mode, path.parent / f"arrays-{path.stem}")))
        return
    click.echo("| rows | history cells | reading | peak RSS (MB) | open (s) | pass (rows/s) |")
    click.echo("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            path = Path(tmp) / f"train{rows}.parquet"
            write_split(path, rows, width)
            results = {}
            for mode in ("memory", "stream"):
                out = subprocess.run([sys.executable, __file__, "--width", str(width), "--one", str(path), mode],
                                     capture_output=True, text=True, check=True)
                results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
                r = results[mode]
                click.echo(f"| {rows:,} | {rows * width:,} | {mode} | {r['peak_rss_mb']:.0f} | {r['open_s']:.1f} | "
                           f"{r['rows_per_s']:,.0f} |")
            if results["memory"]["checksum"] != results["stream"]["checksum"]:
                raise click.ClickException(f"{rows} rows: the two readings gave different batches")
            path.unlink()


if __name__ == "__main__":
    main()
