"""Streamed splits (pipeline/training/stream.py, train.data_loading: stream) against the in-memory reader: the same
arrays chunk by chunk, the same errors naming the file's row, the same training run; the block-shuffled pass
order; and that releasing a mapped split gives its pages back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from model.factory import build_model
from pipeline.core.io import DataError
from pipeline.training import stream
from pipeline.training.data import load_split
from pipeline.training.loop import PassWindows, fit, pass_batches, pass_batches_reference
from tests.conftest import SMALL, feature_map, item_tables, toy_split, train_cfg

CPU = torch.device("cpu")


def _write(split, path: Path) -> Path:
    pl.DataFrame({
        "user_id": pl.Series(split.user_id.numpy(), dtype=pl.Int32),
        "item_seq": pl.Series(split.item_seq.numpy().tolist(), dtype=pl.List(pl.Int32)),
        "item_id": pl.Series(split.item_id.numpy(), dtype=pl.Int32),
        "label": pl.Series(split.label.numpy(), dtype=pl.Float32),
        **{k: pl.Series(v.numpy(), dtype=pl.Int8) for k, v in split.context.items()},
    }).write_parquet(path, row_group_size=50)
    return path


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "STREAM_CHUNK", 16)  # many chunks, so chunk seams are exercised


def test_mapped_split_holds_what_load_split_reads(tmp_path: Path, small_chunks: None) -> None:
    path = _write(toy_split(203, seed=4), tmp_path / "s.parquet")
    fmap = feature_map()
    assert stream.write_split_arrays(path, fmap, tmp_path / "arrays") == 203
    mapped, loaded = stream.open_split_arrays(tmp_path / "arrays", fmap), load_split(path, fmap)
    for name in ("item_seq", "item_id", "label", "user_id"):
        a, b = getattr(mapped, name), getattr(loaded, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert mapped.item_seq.dtype == torch.int32 and mapped.item_id.dtype == torch.int32
    for name in loaded.context:
        assert torch.equal(mapped.context[name], loaded.context[name])
    assert torch.equal(mapped.history_lengths(), loaded.history_lengths())
    mapped.release()  # pages go; the values are read again from the file
    assert torch.equal(mapped.item_seq, loaded.item_seq)


def test_a_bad_value_in_a_later_chunk_names_the_files_row(tmp_path: Path, small_chunks: None) -> None:
    split = toy_split(60, seed=5)
    item_id = split.item_id.clone()
    item_id[37] = 10_000
    path = _write(dataclasses.replace(split, item_id=item_id), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: row 37: item_id 10000 is outside 1\.\.60"):
        stream.write_split_arrays(path, feature_map(), tmp_path / "a")
    with pytest.raises(DataError, match=r"bad\.parquet: row 37: item_id 10000 is outside"):
        load_split(path, feature_map())
    pl.read_parquet(path).with_columns(pl.col("label").cast(pl.Float64)).write_parquet(path)
    with pytest.raises(DataError, match=r"bad\.parquet: column 'label' has dtype Float64, expected Float32"):
        stream.write_split_arrays(path, feature_map(), tmp_path / "a")
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable parquet file"):
        stream.write_split_arrays(path, feature_map(), tmp_path / "a")
    pl.read_parquet(_write(split, tmp_path / "ok.parquet")).head(0).write_parquet(path)
    with pytest.raises(DataError, match=r"bad\.parquet: split has no rows"):
        stream.write_split_arrays(path, feature_map(), tmp_path / "a")


def test_streamed_split_removes_its_arrays_on_errors_too(tmp_path: Path) -> None:
    path = _write(toy_split(40, seed=6), tmp_path / "s.parquet")
    with stream.streamed_split(path, feature_map(), tmp_path / "w") as split:
        assert len(split) == 40 and (tmp_path / "w" / "item_seq.npy").is_file()
    assert not (tmp_path / "w").exists()
    with pytest.raises(RuntimeError), stream.streamed_split(path, feature_map(), tmp_path / "w"):
        raise RuntimeError("mid-run")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("block_rows", [0, 48])
def test_training_on_the_mapped_split_is_the_run_in_memory(tmp_path: Path, block_rows: int) -> None:
    """The same params and seed give the same validations and the same weights, streamed or in memory."""
    fmap = feature_map()
    train_path = _write(toy_split(500, seed=1), tmp_path / "train.parquet")
    valid_path = _write(toy_split(150, seed=2), tmp_path / "valid.parquet")
    cfg = train_cfg(epochs=2, shuffle_block_rows=block_rows, shuffle_buffer_blocks=3, bucket_batches=2)
    runs = []
    for mode in ("memory", "stream"):
        torch.manual_seed(0)
        net = build_model(SMALL, fmap, *item_tables())
        if mode == "memory":
            history = fit(net, load_split(train_path, fmap), load_split(valid_path, fmap), cfg, CPU)
        else:
            with stream.streamed_split(train_path, fmap, tmp_path / "t") as train, \
                    stream.streamed_split(valid_path, fmap, tmp_path / "v") as valid:
                history = fit(net, train, valid, dataclasses.replace(cfg, data_loading="stream"), CPU)
        runs.append((history, net.state_dict()))
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][name]), name


def test_pass_windows_are_whole_blocks_and_default_is_one_uniform_order() -> None:
    made = PassWindows(103, 10, 3, torch.Generator().manual_seed(0))
    sizes = made.sizes()
    windows = list(made)
    assert [len(w) for w in windows] == sizes
    assert sorted(torch.cat(windows).tolist()) == list(range(103))
    for w in windows:  # each window is a union of whole blocks
        blocks = {int(r) // 10 for r in w}
        assert len(w) == sum(min(10, 103 - 10 * b) for b in blocks)
    assert len(windows) == 4  # 11 blocks, 3 per window
    same = torch.randperm(103, generator=torch.Generator().manual_seed(5))
    assert torch.equal(list(PassWindows(103, 0, 3, torch.Generator().manual_seed(5)))[0], same)
    # bucketed batches are whole (one short batch per pass) and local: a batch's rows come from at most two
    # consecutive windows (a run of rows left at a window's end continues into the next)
    for block, buffer in ((10, 3), (1, 1), (2, 2)):  # windows larger, and smaller, than a batch
        gen = torch.Generator().manual_seed(1)
        lengths = torch.randint(0, 20, (103,))
        batches = list(pass_batches(lengths, 8, 2, gen, block_rows=block, buffer_blocks=buffer))
        gen = torch.Generator().manual_seed(1)
        window_of = torch.empty(103, dtype=torch.long)
        for i, w in enumerate(PassWindows(103, block, buffer, gen)):
            window_of[w] = i
        assert all(window_of[b].max() - window_of[b].min() <= 1 for b in batches) or block < 8
        assert [len(b) for b in batches].count(8) == len(batches) - 1 == 103 // 8
        assert sorted(torch.cat(batches).tolist()) == list(range(103))


@pytest.mark.parametrize(("n", "batch", "bucket", "block", "buffer"), [
    (103, 8, 0, 0, 1), (103, 8, 2, 0, 1), (103, 8, 0, 10, 3), (103, 8, 2, 10, 3), (1000, 7, 3, 64, 4),
    (1000, 32, 0, 64, 4), (96, 8, 2, 8, 2), (5, 8, 2, 10, 3), (1000, 16, 1, 1, 1),
    # fewer rows than a batch, in the whole split or in each window (a window then ends in no whole batch)
    (5, 8, 0, 0, 1), (5, 8, 0, 2, 1), (103, 32, 0, 10, 1),
    # bucketed, with windows smaller than a batch (runs then span windows) or than a run
    (1000, 16, 4, 2, 2), (1000, 16, 1000, 1, 1), (103, 8, 3, 5, 3)])
def test_batches_made_a_window_at_a_time_are_the_reference_ones(n: int, batch: int, bucket: int, block: int,
                                                                 buffer: int) -> None:
    lengths = torch.randint(0, 20, (n,), generator=torch.Generator().manual_seed(n), dtype=torch.int32)
    lazy_gen, ref_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    lazy = pass_batches(lengths, batch, bucket, lazy_gen, block, buffer)
    count = len(lazy)
    got = list(lazy)
    want = pass_batches_reference(lengths, batch, bucket, ref_gen, block, buffer)
    assert count == len(got) == len(want) and all(len(b) for b in got)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    # the generator ends the pass in the same state: the next pass (and a resumed run) draws the same order
    assert torch.equal(lazy_gen.get_state(), ref_gen.get_state())


def _rss_file_kb() -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    return None


@pytest.mark.skipif(not Path("/proc/self/status").exists() or _rss_file_kb() is None,
                    reason="needs Linux's /proc/self/status RssFile")
def test_release_gives_the_pages_read_back(tmp_path: Path) -> None:
    """Reading a 40 MB mapped split pages it into the process; release() takes the process back to where it was
    (the file's pages stay in the OS page cache, outside the process)."""
    n, width = 160_000, 64
    fmap = feature_map(max_len=width)
    out = tmp_path / "arrays"
    out.mkdir()
    cols = {"item_seq": np.ones((n, width), np.int32), "item_id": np.ones(n, np.int32),
            "user_id": np.zeros(n, np.int32), "label": np.zeros(n, np.float32),
            "likes_level": np.zeros(n, np.int8), "views_level": np.zeros(n, np.int8)}
    for name, a in cols.items():
        np.save(out / f"{name}.npy", a)
    split = stream.open_split_arrays(out, fmap)
    before = _rss_file_kb()
    assert int(split.item_seq.sum()) == n * width  # touches every page
    read = _rss_file_kb()
    split.release()
    after = _rss_file_kb()
    assert read - before > 30_000  # kB: the 41 MB of history were paged in
    assert after - before < 5_000
