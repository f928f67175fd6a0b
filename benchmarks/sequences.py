"""Benchmark: the polars history builder against the plain-Python reference, on the same random click log.

    python benchmarks/sequences.py --users 20000 --clicks-per-user 30 --max-len 100

Prints wall time of each builder, the speed ratio, and checks that both give the same histories.
"""

from __future__ import annotations

import time

import click
import numpy as np
import polars as pl

from pipeline.sequences import add_histories, histories_reference, order_events


def random_log(users: int, clicks_per_user: int, items: int, seed: int) -> pl.DataFrame:
    """A click log with ~clicks_per_user clicks per user, unique (user, timestamp, item) keys."""
    rng = np.random.default_rng(seed)
    n = users * clicks_per_user
    df = pl.DataFrame({"user": rng.integers(1, users + 1, n).astype(np.int32),
                       "item": rng.integers(1, items + 1, n).astype(np.int32),
                       "timestamp": rng.integers(0, 10 * n, n)})
    return df.unique(["user", "timestamp", "item"], maintain_order=True)


@click.command()
@click.option("--users", default=20000, show_default=True)
@click.option("--clicks-per-user", default=30, show_default=True)
@click.option("--items", default=50000, show_default=True)
@click.option("--max-len", default=100, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(users: int, clicks_per_user: int, items: int, max_len: int, seed: int) -> None:
    pairs = random_log(users, clicks_per_user, items, seed)
    t0 = time.perf_counter()
    events = add_histories(order_events(pairs), max_len)
    t_polars = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = histories_reference(pairs, max_len)
    t_ref = time.perf_counter() - t0
    got = {(u, ts, i): s for u, i, ts, s in events.select("user", "item", "timestamp", "item_seq").iter_rows()}
    same = got.keys() == ref.keys() and all(list(got[k]) == v for k, v in ref.items())
    click.echo(f"clicks {pairs.height:,}  max_len {max_len}")
    click.echo(f"polars    {t_polars:8.2f} s  {pairs.height / t_polars:12,.0f} clicks/s")
    click.echo(f"reference {t_ref:8.2f} s  {pairs.height / t_ref:12,.0f} clicks/s")
    click.echo(f"ratio     {t_ref / t_polars:8.1f}x  identical: {same}")


if __name__ == "__main__":
    main()
