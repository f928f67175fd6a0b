"""Benchmark: build_sequences' row builder at MicroLens-1M scale, and against the plain-Python reference.

    python benchmarks/sequences.py                  # 1M users (~9M clicks), 91,717 items, max_len 100, neg_ratio 4
    python benchmarks/sequences.py --users 50000    # a quick run

Generates a click log (no images): each user clicks min_clicks + Geometric more times (mean `--mean-clicks`),
items are drawn Zipf-like (probability ~ 1 / rank**zipf over a random id order, with repeats), timestamps are a
per-user start plus exponential gaps rounded to seconds (so ties occur), and the rows are shuffled, so nothing is
in file order already. Then, in a fresh process so its peak RSS is the builder's alone (input log included):
    build   build_split_rows: sort, split, negative sampling
    rows    every row of every split assembled (SplitRows.frames), as the stage streams them
    write   every split streamed to zstd parquet (SplitRows.lazy + sink_parquet, assembling the rows again)
Finally, on a log of `--ref-users` users from the same generator, the polars path (build + every split collected)
against `split_rows_reference` (plain-Python order, histories, split, filter, side features and row order, given
the polars path's negatives: the reference's sampling time is not counted, so the ratio is a lower bound), best of
`--repeat` runs each, and checks the rows are identical.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import polars as pl
from rss import own_peak_rss  # benchmarks/rss.py

from pipeline.sequences.build import SPLITS, SplitRows, build_split_rows, split_rows_reference

START_MS = 1_609_459_200_000  # 2021-01-01
GAP_MS = 2 * 86_400_000  # mean gap between a user's clicks: two days


def click_log(users: int, items: int, mean_clicks: float, min_clicks: int, zipf: float, seed: int) -> pl.DataFrame:
    """(user, item Int32; timestamp Int64 Unix ms) clicks of users 1..users on items 1..items, rows shuffled."""
    rng = np.random.default_rng(seed)
    counts = min_clicks - 1 + rng.geometric(1 / (mean_clicks - min_clicks + 1), users)  # (U,) mean = mean_clicks
    n = int(counts.sum())
    user = np.repeat(np.arange(1, users + 1, dtype=np.int32), counts)
    cdf = np.cumsum(1.0 / np.arange(1, items + 1) ** zipf)
    item_at_rank = rng.permutation(items).astype(np.int32) + 1
    item = item_at_rank[np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), items - 1)]
    gaps = rng.exponential(GAP_MS, n).astype(np.int64) // 1000 * 1000
    first = np.cumsum(counts) - counts  # (U,) index of each user's first click
    since_start = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first] - gaps[first], counts)
    ts = np.repeat(START_MS + rng.integers(0, 2 * 365 * 86_400_000, users), counts) + since_start
    order = rng.permutation(n)
    return pl.DataFrame({"user": user[order], "item": item[order], "timestamp": ts[order]})


def item_table(items: int, seed: int) -> pl.DataFrame:
    """item_id 0..items with random likes/views levels 0..10 (row 0 = padding)."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"item_id": pl.Series(np.arange(items + 1), dtype=pl.Int32),
                         "likes_level": pl.Series(rng.integers(0, 11, items + 1), dtype=pl.Int8),
                         "views_level": pl.Series(rng.integers(0, 11, items + 1), dtype=pl.Int8)})


def full_path(pairs_path: str, items: int, params: dict, write_dir: str | None, seed: int) -> dict:
    """Run in a fresh process: read the log, build, assemble every row, write; wall times and peak RSS."""
    pairs = pl.read_parquet(pairs_path, glob=False)
    table = item_table(items, seed)
    out: dict = {"clicks": pairs.height}
    t0 = time.perf_counter()
    rows = build_split_rows(pairs, table, **params)
    out["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["rows"] = {name: sum(frame.height for frame in rows.frames(name)) for name in SPLITS}
    out["assemble"] = time.perf_counter() - t0
    out["summary"] = {name: rows.summary(name) for name in SPLITS}
    if write_dir is not None:
        t0 = time.perf_counter()
        for name in SPLITS:
            rows.lazy(name).sink_parquet(Path(write_dir) / f"{name}.parquet", compression="zstd")
        out["write"] = time.perf_counter() - t0
        out["bytes"] = sum((Path(write_dir) / f"{name}.parquet").stat().st_size for name in SPLITS)
    out["peak_rss"] = own_peak_rss()
    return out


def compare_with_reference(pairs: pl.DataFrame, table: pl.DataFrame, params: dict, repeat: int
                           ) -> tuple[float, float, bool]:
    """(polars seconds, reference seconds, identical rows) for build + every split collected. Each time is the best
    of `repeat` back-to-back runs, the polars ones after an untimed run: on this VM, memory a process touches for
    the first time costs more than the build itself at this size, and later runs reuse it."""
    ref_params = {k: params[k] for k in ("max_len", "min_history", "split", "valid_frac", "test_frac")}

    def polars_path() -> tuple[SplitRows, dict[str, pl.DataFrame]]:
        rows = build_split_rows(pairs, table, **params)
        return rows, {name: rows.collect(name) for name in SPLITS}

    polars_path()
    t_polars = t_ref = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows, got = polars_path()
        t_polars = min(t_polars, time.perf_counter() - t0)
    for _ in range(repeat):
        t0 = time.perf_counter()
        ref = split_rows_reference(pairs, table, rows.negatives, **ref_params)
        t_ref = min(t_ref, time.perf_counter() - t0)
    return t_polars, t_ref, all(got[name].rows() == ref[name] for name in SPLITS)


@click.command()
@click.option("--users", default=1_000_000, show_default=True)
@click.option("--items", default=91_717, show_default=True, help="MicroLens-1M's item count")
@click.option("--mean-clicks", default=9.0, show_default=True, help="mean clicks per user")
@click.option("--min-clicks", default=5, show_default=True)
@click.option("--zipf", default=1.0, show_default=True, help="item popularity exponent")
@click.option("--max-len", default=100, show_default=True)
@click.option("--min-history", default=1, show_default=True)
@click.option("--neg-ratio", default=4, show_default=True)
@click.option("--split", type=click.Choice(["leave_last", "time"]), default="leave_last", show_default=True)
@click.option("--neg-sampling", type=click.Choice(["uniform", "popularity"]), default="uniform", show_default=True)
@click.option("--neg-exclude", type=click.Choice(["before", "ever"]), default="before", show_default=True)
@click.option("--write/--no-write", default=True, show_default=True, help="also stream the splits to parquet")
@click.option("--ref-users", default=20_000, show_default=True, help="users in the reference comparison")
@click.option("--repeat", default=3, show_default=True, help="reference comparison: best of this many runs")
@click.option("--seed", default=0, show_default=True)
def main(users: int, items: int, mean_clicks: float, min_clicks: int, zipf: float, max_len: int, min_history: int,
         neg_ratio: int, split: str, neg_sampling: str, neg_exclude: str, write: bool, ref_users: int,
         repeat: int, seed: int) -> None:
    params = dict(max_len=max_len, min_history=min_history, split=split, valid_frac=0.1, test_frac=0.1,
                  neg_ratio=neg_ratio, neg_sampling=neg_sampling, neg_exclude=neg_exclude, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        pairs_path = str(Path(tmp) / "pairs.parquet")
        click_log(users, items, mean_clicks, min_clicks, zipf, seed).write_parquet(pairs_path)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            r = pool.apply(full_path, (pairs_path, items, params, tmp if write else None, seed))

    rows = r["rows"]
    click.echo(f"log: {users:,} users, {r['clicks']:,} clicks, {items:,} items (Zipf {zipf}), shuffled rows; "
               f"max_len {max_len}, min_history {min_history}, neg_ratio {neg_ratio}, {split}, "
               f"{neg_sampling}/{neg_exclude}")
    click.echo(f"full path in a fresh process ({multiprocessing.cpu_count()} CPUs):")
    click.echo(f"  build (sort, split, negatives)  {r['build']:7.1f} s")
    click.echo(f"  assemble every row              {r['assemble']:7.1f} s  {sum(rows.values()):,} rows ("
               + ", ".join(f"{n} {rows[n]:,}" for n in SPLITS) + "), mean history "
               + ", ".join(f"{r['summary'][n]['mean_history'] or 0:.1f}" for n in SPLITS))
    click.echo(f"  build + assemble                {r['build'] + r['assemble']:7.1f} s  (target <= 8 s, issue 18)")
    if write:
        click.echo(f"  write parquet (zstd)            {r['write']:7.1f} s  {r['bytes'] / 2**20:,.0f} MiB, "
                   f"assembling again")
        click.echo(f"  build + write (the stage)       {r['build'] + r['write']:7.1f} s")
    click.echo(f"  peak RSS                        {r['peak_rss'] / 2**30:7.2f} GiB  (target < 8 GB)")

    n_ref = min(ref_users, users)
    pairs = click_log(n_ref, items, mean_clicks, min_clicks, zipf, seed + 1)
    t_polars, t_ref, same = compare_with_reference(pairs, item_table(items, seed), params, repeat)
    click.echo(f"subset: {n_ref:,} users, {pairs.height:,} clicks; polars path (build + collect every split) vs "
               f"plain-Python split_rows_reference (order, histories, split, rows; given the same negatives)")
    click.echo(f"  polars     {t_polars:7.2f} s  (best of {repeat})")
    click.echo(f"  reference  {t_ref:7.2f} s  (best of {repeat})")
    click.echo(f"  ratio      {t_ref / t_polars:7.1f}x  (target >= 20x)  identical rows: {same}")


if __name__ == "__main__":
    main()
