"""Scale run: the pipeline's stages end to end on a MicroLens-1M-sized log, with the time and peak memory of each.

    python benchmarks/scale.py                                   # 1M users, ~9M clicks, 91,717 items, 2,000 steps
    python benchmarks/scale.py --users 20000 --max-steps 200     # a quick run
    python benchmarks/scale.py --set build_sequences.max_len=100 # any params.yaml override, section.key=value

Writes a raw folder in the MicroLens release layout (MicroLens-1M_pairs.csv, _title_en.csv, _likes_and_views.txt;
no covers) from benchmarks/sequences.py's click-log generator (Zipf-popular items, ~9 clicks per user, shuffled
rows), and the "given item table": text and image embedding frames (the extract stages' contract; 384-d and 512-d,
two noisy views of a 32-d item latent) standing in for extraction, which is measured on its own by
benchmarks/extract.py. Then runs the stages exactly as dvc.yaml does, one process each, with the repository's
params.yaml plus `data.source: microlens`, `build_sequences.neg_ratio: 4`, a streamed train
(`train.data_loading: stream`, block shuffling) of one pass cut at --max-steps, and any --set:
    build_sequences   histories, split, sampled non-clicks, streamed to parquet
    fit_pca           PCA of the two embeddings to fit_pca.dim
    quantize          semantic ids of the PCA embedding
    train             the split memory-mapped (written once as .npy), --max-steps optimiser steps, a validation
Each stage's wall time and peak RSS (the process's own maximum resident set, VmHWM: benchmarks/rss.py) are printed,
with the train stage's samples/s (steps x batch_size over its wall time, which includes writing the arrays and the
validation, so it is a lower bound on the loop's speed). The run's peak is the largest of them: the stages run one
after another, and this driver holds no data while they run.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import polars as pl
import yaml
from rss import module_command, own_peak_rss  # benchmarks/rss.py
from sequences import click_log  # benchmarks/sequences.py, the same log generator
from variants import parse_sets  # benchmarks/variants.py: section.key=value overrides

from pipeline.extract.store import embedding_frame

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "MicroLens-1M"


def write_raw(raw: Path, users: int, items: int, seed: int) -> int:
    """The MicroLens-1M layout under `raw`: pairs (user,item,timestamp), titles, likes/views; returns the clicks."""
    raw.mkdir(parents=True, exist_ok=True)
    pairs = click_log(users, items, mean_clicks=9.0, min_clicks=5, zipf=1.0, seed=seed)
    pairs.write_csv(raw / f"{PREFIX}_pairs.csv")
    ids = np.arange(1, items + 1)
    pl.DataFrame({"item": ids, "title": [f"video {i}" for i in ids]}).write_csv(raw / f"{PREFIX}_title_en.csv")
    rng = np.random.default_rng(seed + 1)
    views = rng.zipf(1.5, items).clip(max=10**9)
    likes = rng.binomial(views, 0.05)
    (raw / f"{PREFIX}_likes_and_views.txt").write_text(
        "".join(f"{i}\t{lk}\t{v}\n" for i, lk, v in zip(ids.tolist(), likes.tolist(), views.tolist(), strict=True)))
    return pairs.height


def write_embeddings(out: Path, items: int, seed: int) -> tuple[Path, Path]:
    """Text (384-d) and image (512-d) embedding frames of items 1..items: two noisy linear views of a 32-d latent."""
    rng = np.random.default_rng(seed + 2)
    latent = rng.standard_normal((items, 32)).astype(np.float32)
    ids = np.arange(1, items + 1)
    paths = []
    for name, dim in (("text", 384), ("image", 512)):
        view = latent @ rng.standard_normal((32, dim)).astype(np.float32)
        view += rng.standard_normal((items, dim)).astype(np.float32) * view.std()
        path = out / f"{name}_emb.parquet"
        embedding_frame(ids, view, ["ok"] * items).write_parquet(path)
        paths.append(path)
    return paths[0], paths[1]


def run_stage(name: str, args: list[str], env: dict[str, str], work: Path, log: Path) -> tuple[float, int]:
    """Run stages.<name> with args in `work` (so its stage lock is not the repository's: a run there does not block
    this one); (wall seconds, peak RSS bytes of that process). A failure stops the run."""
    peak_file = log.with_suffix(".peak")
    t0 = time.perf_counter()
    with open(log, "w") as err:
        code = subprocess.call(module_command(f"stages.{name}", args, peak_file), cwd=work, env=env, stderr=err)
    seconds = time.perf_counter() - t0
    if code:
        raise click.ClickException(f"{name} failed:\n{log.read_text()[-2000:]}")
    return seconds, int(peak_file.read_text())


@click.command()
@click.option("--users", default=1_000_000, show_default=True)
@click.option("--items", default=91_717, show_default=True, help="MicroLens-1M's item count")
@click.option("--max-steps", default=2000, show_default=True, help="optimiser steps of the one training pass")
@click.option("--set", "sets", multiple=True, help="params override section.key=value (after the scale settings)")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path, resolve_path=True), default=None,
              help="keep the raw folder and outputs here (default: a temporary folder, removed)")
@click.option("--threads", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(users: int, items: int, max_steps: int, sets: tuple[str, ...], work: Path | None, threads: int,
         seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = work or Path(tmp)
        raw, seq, out = work / "raw", work / "sequences", work / "out"
        for folder in (seq, out):
            folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        clicks = write_raw(raw, users, items, seed)
        text, image = write_embeddings(out, items, seed)
        click.echo(f"generated {users:,} users, {clicks:,} clicks, {items:,} items in {time.perf_counter() - t0:.0f} s")

        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        overrides = {"data": {"source": "microlens", "raw_dir": str(raw)},
                     "build_sequences": {"neg_ratio": 4},
                     "train": {"data_loading": "stream", "shuffle_block_rows": 4096, "epochs": 1,
                               "max_steps": max_steps, "eval_steps": 0}}
        for key, value in parse_sets(sets).items():
            section, _, name = key.partition(".")
            overrides.setdefault(section, {})[name] = value
        for section, values in overrides.items():
            params.setdefault(section, {}).update(values)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        p = ["--params", str(work / "params.yaml")]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        stages = [
            ("build_sequences", ["--raw-dir", str(raw), "--out-dir", str(seq), "--items", str(seq / "items.parquet"),
                                 "--feature-map", str(seq / "feature_map.json"),
                                 "--metrics", str(out / "build_sequences.json")]),
            ("fit_pca", ["--text", str(text), "--image", str(image), "--items", str(seq / "items.parquet"),
                         "--raw-dir", str(raw), "--out", str(out / "item_info.parquet"),
                         "--transform", str(out / "pca.npz"), "--metrics", str(out / "fit_pca.json"),
                         "--plot", str(out / "pca_plot.json")]),
            ("quantize", ["--item-info", str(out / "item_info.parquet"), "--out", str(out / "semantic_ids.parquet"),
                          "--metrics", str(out / "quantize.json")]),
            ("train", ["--train", str(seq / "train.parquet"), "--valid", str(seq / "valid.parquet"),
                       "--item-info", str(out / "item_info.parquet"), "--feature-map", str(seq / "feature_map.json"),
                       "--semantic-ids", str(out / "semantic_ids.parquet"), "--model", str(out / "model.pt"),
                       "--live-dir", str(out / "live")]),
        ]
        rows = []
        for name, args in stages:
            seconds, rss = run_stage(name, [*args, *p], env, work, out / f"{name}.log")
            rows.append((name, seconds, rss))
            click.echo(f"  {name:16s} {seconds:7.1f} s  peak RSS {rss / 2**30:5.2f} GiB", err=True)

        built = json.loads((out / "build_sequences.json").read_text())
        trained = json.loads((out / "live" / "metrics.json").read_text())
        batch = params["train"]["batch_size"]
        steps = trained["steps_run"]
        driver = own_peak_rss()
        click.echo(f"\n{users:,} users, {clicks:,} clicks, {items:,} items; build_sequences.max_len "
                   f"{params['build_sequences']['max_len']}, neg_ratio 4; rows: "
                   + ", ".join(f"{n} {built[n]['rows']:,}" for n in ("train", "valid", "test"))
                   + f"; {threads} threads, {os.cpu_count()} CPUs")
        click.echo("| step | wall s | peak RSS |")
        click.echo("|---|---|---|")
        for name, seconds, rss in rows:
            click.echo(f"| {name} | {seconds:.1f} | {rss / 2**30:.2f} GiB |")
        click.echo(f"| the run (largest stage; this driver {driver / 2**30:.2f} GiB) | {sum(r[1] for r in rows):.1f} | "
                   f"{max(r[2] for r in rows) / 2**30:.2f} GiB |")
        train_s = rows[-1][1]
        click.echo(f"train: {steps:,} steps x batch {batch} = {steps * batch:,} samples in {train_s:.1f} s "
                   f"({steps * batch / train_s:,.0f} samples/s, stage wall time); valid AUC {trained['valid_auc']:.4f}")


if __name__ == "__main__":
    main()
