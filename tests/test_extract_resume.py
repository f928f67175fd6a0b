"""Kill-and-resume of the extraction stages: a run SIGKILLed after some shards (the MMCTR_FAULT_AFTER_SHARDS test
hook), then rerun, gives the same bytes as an uninterrupted run and reuses the finished shards."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from pipeline.core.config import DataConfig, ExtractImageConfig, ExtractTextConfig

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 14
TITLES = ["funny cat video", "", "dog", "   ", "my best cooking recipe, spicy noodles part 2", "kitten", "café ☕ 猫",
          "travel beach guitar", "music", "new football goal " * 20, "puppy", "cat dog", "best", "spicy noodles"]


@pytest.fixture(scope="module")
def raw_items(tmp_path_factory, tiny_bert_dir: Path) -> Path:
    """A MicroLens-layout raw folder (14 items, some bad covers) and a params file using the tiny models, shared by
    the module's tests (they only read them)."""
    root = tmp_path_factory.mktemp("extract")
    raw = root / "raw"
    (raw / "covers").mkdir(parents=True)
    (raw / "title_en.csv").write_text("item_id,title\n" + "".join(f"{i},{t}\n" for i, t in enumerate(TITLES, 1)))
    (raw / "pairs.csv").write_text("user,item,timestamp\n")  # located by the stages, not read
    (raw / "likes_and_views.txt").write_text("")
    rng = np.random.default_rng(0)
    for i in range(1, N_ITEMS + 1):
        if i == 3:
            continue  # missing
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(raw / "covers" / f"{i}.jpg")
    (raw / "covers" / "5.jpg").write_bytes(b"")  # zero-byte
    (raw / "covers" / "8.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # corrupt
    params = {
        "data": {**asdict(DataConfig(source="microlens", raw_dir=str(raw)))},
        "extract_text": {**asdict(ExtractTextConfig(model=str(tiny_bert_dir), device="cpu", batch_size=3,
                                                    shard_size=4, num_threads=1))},
        "extract_image": {**asdict(ExtractImageConfig(device="cpu", batch_size=2, shard_size=3, num_threads=1,
                                                      num_workers=1))},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.fixture
def project(tmp_path: Path, raw_items: Path) -> Path:
    """A fresh output folder with the shared raw folder (`raw` links to it) and its own copy of the params."""
    (tmp_path / "raw").symlink_to(raw_items / "raw", target_is_directory=True)
    shutil.copy(raw_items / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.fixture(scope="module")
def reference(raw_items: Path) -> Callable[[str], bytes]:
    """stage -> the bytes of one uninterrupted single-process run on the shared raw folder (run once per stage)."""
    @functools.cache
    def table(stage: str) -> bytes:
        ref = run_stage(raw_items, stage, f"ref-{stage}.parquet")
        assert ref.returncode == 0, ref.stderr
        assert not shard_dir(raw_items, f"ref-{stage}.parquet").exists()  # removed once the table is written
        return (raw_items / f"ref-{stage}.parquet").read_bytes()
    return table


def run_stage(project: Path, stage: str, out: str, fault_after: int | None = None,
              ranks: int = 0) -> subprocess.CompletedProcess:
    """Run an extraction stage in a subprocess; ranks > 0 launches it under torchrun with that many CPU ranks."""
    env = {k: v for k, v in os.environ.items() if k != "MMCTR_FAULT_AFTER_SHARDS"}
    env["PYTHONPATH"] = str(ROOT)
    if fault_after is not None:
        env["MMCTR_FAULT_AFTER_SHARDS"] = str(fault_after)
    launcher = [sys.executable]
    if ranks:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    cmd = [*launcher, "-m", f"stages.{stage}", "--raw-dir", str(project / "raw"), "--out",
           str(project / out), "--metrics", str(project / f"{out}.json"), "--params", str(project / "params.yaml")]
    return subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def shard_dir(project: Path, out: str) -> Path:
    return project / f".{out}.shards"


@pytest.mark.parametrize(("stage", "n_shards", "kill_after"), [("extract_text", 4, 2), ("extract_image", 5, 2)])
def test_killed_run_resumes_to_identical_output(project: Path, reference: Callable[[str], bytes], stage: str,
                                                n_shards: int, kill_after: int) -> None:
    killed = run_stage(project, stage, "emb.parquet", fault_after=kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (project / "emb.parquet").exists()  # nothing half-written where DVC looks
    shards = sorted(p.name for p in shard_dir(project, "emb.parquet").iterdir())
    assert len([s for s in shards if s.endswith(".parquet")]) == kill_after, shards

    resumed = run_stage(project, stage, "emb.parquet")
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((project / "emb.parquet.json").read_text())
    assert metrics["shards"] == {"total": n_shards, "reused": kill_after}  # the finished shards were not redone
    assert (project / "emb.parquet").read_bytes() == reference(stage)
    assert not shard_dir(project, "emb.parquet").exists()
    frame = pl.read_parquet(project / "emb.parquet")
    assert frame["item_id"].to_list() == list(range(1, N_ITEMS + 1))
    assert metrics["items"] == N_ITEMS and sum(metrics["status"].values()) == N_ITEMS
    if stage == "extract_image":
        assert frame.filter(pl.col("item_id").is_in([3, 5, 8]))["status"].to_list() == ["missing", "empty",
                                                                                        "corrupt"]
        assert metrics["status"] == {"ok": 11, "missing": 1, "empty": 1, "corrupt": 1, "too_large": 0}
    else:
        assert metrics["status"] == {"ok": 12, "empty": 2, "missing": 0, "corrupt": 0, "too_large": 0}


def _plant(shard: Path, frame: pl.DataFrame, digest: bool = True) -> None:
    """Write `frame` as the shard, with (as a finished run writes it) or without the digest of its bytes."""
    frame.write_parquet(shard)
    if digest:
        Path(f"{shard}.sha256").write_text(hashlib.sha256(shard.read_bytes()).hexdigest())


def test_resume_takes_finished_shards_as_they_are_and_ignores_stale_ones(project: Path) -> None:
    """A finished shard is read back, not recomputed (a marker planted in it, with its digest, survives); a shard
    whose bytes are not the ones its digest names (a flipped byte reads back as other vectors: parquet keeps no
    page checksums) is recomputed, and so is one written under other params (another fingerprint: max_length, or
    batch_size, whose padding moves vectors by ~1e-6)."""
    assert run_stage(project, "extract_text", "emb.parquet", fault_after=1).returncode == -signal.SIGKILL
    (shard,) = shard_dir(project, "emb.parquet").glob("shard-*.parquet")
    frame = pl.read_parquet(shard)
    marked = frame.with_columns(pl.Series("emb", np.full((frame.height, 32), 7.0, np.float32),
                                          dtype=pl.Array(pl.Float32, 32)))
    _plant(shard, marked)
    assert run_stage(project, "extract_text", "emb.parquet").returncode == 0
    emb = pl.read_parquet(project / "emb.parquet")["emb"].to_numpy()
    assert (emb[:4] == 7.0).all() and not (emb[4:] == 7.0).any()

    for key, value, digest in (("max_length", None, False), ("max_length", 16, True), ("batch_size", 2, True)):
        assert run_stage(project, "extract_text", "emb.parquet", fault_after=1).returncode == -signal.SIGKILL
        (shard,) = shard_dir(project, "emb.parquet").glob("shard-*.parquet")
        _plant(shard, marked, digest)
        if value is not None:
            params = yaml.safe_load((project / "params.yaml").read_text())
            params["extract_text"][key] = value
            (project / "params.yaml").write_text(yaml.safe_dump(params))
        assert run_stage(project, "extract_text", "emb.parquet").returncode == 0, key
        metrics = json.loads((project / "emb.parquet.json").read_text())
        assert metrics["shards"]["reused"] == 0, key
        assert not (pl.read_parquet(project / "emb.parquet")["emb"].to_numpy() == 7.0).any(), key


@pytest.mark.parametrize(("stage", "n_shards"), [("extract_text", 4), ("extract_image", 5)])
def test_torchrun_ranks_share_shards_and_rank0_assembles_the_same_table(
        project: Path, reference: Callable[[str], bytes], stage: str, n_shards: int) -> None:
    """Two gloo ranks under torchrun (each takes shards k % 2 == rank, rank 0 assembles) write the same bytes as
    one process; a rerun after killing one rank's work mid-way reuses what was finished."""
    two = run_stage(project, stage, "emb.parquet", ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (project / "emb.parquet").read_bytes() == reference(stage)
    assert json.loads((project / "emb.parquet.json").read_text())["shards"] == {"total": n_shards, "reused": 0}
    assert not shard_dir(project, "emb.parquet").exists()
    # Shards written by a 2-rank run that died are reused by a single-process rerun (same fingerprint).
    killed = run_stage(project, stage, "again.parquet", fault_after=1, ranks=2)
    assert killed.returncode != 0 and not (project / "again.parquet").exists()
    finished = len(list(shard_dir(project, "again.parquet").glob("shard-*.parquet")))
    assert finished >= 1
    assert run_stage(project, stage, "again.parquet").returncode == 0
    assert json.loads((project / "again.parquet.json").read_text())["shards"]["reused"] == finished
    assert (project / "again.parquet").read_bytes() == reference(stage)
