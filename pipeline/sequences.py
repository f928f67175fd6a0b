"""User history sequences, time split and sampled non-clicks, in the WWW2025 MMCTR challenge's format.

Split file contract ({train,valid,test}.parquet), one row per labelled (user, history, target item):
    user_id Int32, item_seq List(Int32) of length max_len (left-padded with 0, most recent item last),
    item_id Int32, likes_level Int8, views_level Int8 (of the target item), label Float32 (1 click, 0 sampled),
    event_ts Int64 (Unix ms of the click event the row belongs to; negatives share their click's history).
Histories are leakage-free: a row's item_seq holds only that user's clicks strictly before the event in the
order (timestamp, file row), so ties in timestamp are broken deterministically by file order.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.io import DataError


def order_events(pairs: pl.DataFrame) -> pl.DataFrame:
    """pairs (user, item, timestamp) -> events sorted by (user, timestamp, file row) with `pos` Int64, the
    number of the user's earlier clicks."""
    return (pairs.with_row_index("_row")
            .sort(["user", "timestamp", "_row"])
            .with_columns(pos=pl.int_range(pl.len(), dtype=pl.Int64).over("user"))
            .drop("_row"))


def add_histories(events: pl.DataFrame, max_len: int) -> pl.DataFrame:
    """Add `item_seq` (List(Int32), length max_len) to events from `order_events`.

    Column j of the history (j = 0 oldest .. max_len-1 most recent) is the click `max_len - j` positions
    earlier in the same user's ordered events, or 0 where the user has no such click. Because events are sorted
    by user, a plain shift reaches the same user's click exactly when `pos >= shift`.
    """
    item = pl.col("item").cast(pl.Int32)
    cols = [pl.when(pl.col("pos") >= k).then(item.shift(k)).otherwise(0).alias(f"_h{k}")
            for k in range(max_len, 0, -1)]
    return events.with_columns(item_seq=pl.concat_list(cols))


def histories_reference(pairs: pl.DataFrame, max_len: int) -> dict[tuple[int, int, int], list[int]]:
    """Plain-Python reference for `add_histories`: {(user, timestamp, item): left-padded history}.

    Assumes no user clicks the same item twice at the same timestamp (the key would not be unique).
    """
    rows = list(enumerate(pairs.iter_rows()))
    rows.sort(key=lambda r: (r[1][0], r[1][2], r[0]))
    out: dict[tuple[int, int, int], list[int]] = {}
    seen: dict[int, list[int]] = {}
    for _, (user, item, ts) in rows:
        past = seen.setdefault(user, [])
        hist = past[-max_len:] if max_len else []
        out[(user, ts, item)] = [0] * (max_len - len(hist)) + hist
        past.append(item)
    return out


def assign_split(events: pl.DataFrame, valid_frac: float, test_frac: float) -> pl.DataFrame:
    """Add `split` (train | valid | test) by a global time cut: the last `test_frac` of events by timestamp are
    test, the `valid_frac` before them valid. Cut points are timestamps, so ties never straddle a cut."""
    ts = events["timestamp"].to_numpy()
    valid_start = np.quantile(ts, 1 - valid_frac - test_frac, method="higher")
    test_start = np.quantile(ts, 1 - test_frac, method="higher")
    return events.with_columns(
        split=pl.when(pl.col("timestamp") >= test_start).then(pl.lit("test"))
        .when(pl.col("timestamp") >= valid_start).then(pl.lit("valid")).otherwise(pl.lit("train")))


def sample_negatives(events: pl.DataFrame, n_items: int, neg_ratio: int, seed: int) -> np.ndarray:
    """(E, neg_ratio) int32 non-clicks for E events: each drawn independently and uniformly from the items in
    1..n_items that the user did not click before the event and that are not the event's own item.

    Vectorised rejection sampling: a candidate is rejected when it equals the target or when the user's first
    click on it comes earlier in the user's order (`pos`) than the event. `events` must therefore hold every
    click of each user (all of `order_events`' rows), not a filtered subset.
    """
    users = events["user"].to_numpy().astype(np.int64)
    items = events["item"].to_numpy().astype(np.int64)
    pos = events["pos"].to_numpy()
    key = users * (n_items + 1) + items
    first = (pl.DataFrame({"key": key, "pos": pos}).group_by("key").agg(pl.col("pos").min()).sort("key"))
    keys, first_pos = first["key"].to_numpy(), first["pos"].to_numpy()
    # Excluded items = distinct items clicked before the event (not `pos`: repeat clicks count once) + the target.
    span = int(pos.max(initial=0)) + 1
    starts = np.sort(keys // (n_items + 1) * span + first_pos)  # (user, first pos) of each clicked item
    n_before = np.searchsorted(starts, users * span + pos) - np.searchsorted(starts, users * span)
    excluded = n_before + (first_pos[np.searchsorted(keys, key)] == pos)
    if (excluded >= n_items).any():
        e = int(np.argmax(excluded >= n_items))
        raise DataError(f"user {users[e]} has clicked {n_before[e]} distinct items before an event; "
                        f"too few of the {n_items} items remain to sample non-clicks")

    rng = np.random.default_rng(seed)
    out = rng.integers(1, n_items + 1, size=(len(events), neg_ratio))
    todo = np.ones(out.shape, dtype=bool)
    while True:
        rows, cols = np.nonzero(todo)
        cand = out[rows, cols]
        ck = users[rows] * (n_items + 1) + cand
        at = np.clip(np.searchsorted(keys, ck), 0, len(keys) - 1)
        clicked_before = (keys[at] == ck) & (first_pos[at] < pos[rows])
        bad = clicked_before | (cand == items[rows])
        todo[:] = False
        todo[rows[bad], cols[bad]] = True
        if not bad.any():
            return out.astype(np.int32)
        out[rows[bad], cols[bad]] = rng.integers(1, n_items + 1, size=int(bad.sum()))


def labelled_rows(events: pl.DataFrame, negatives: np.ndarray, item_features: pl.DataFrame) -> pl.DataFrame:
    """Events with histories and split + their (E, R) negatives -> split rows (module contract) plus `split`.

    Rows are ordered by (event_ts, user_id) with each click followed by its non-clicks. Side features are
    looked up by target item id through the item table (row i = item i).
    """
    e, r = negatives.shape
    base = events.select(
        pl.col("user").alias("user_id"), "item_seq", pl.col("timestamp").alias("event_ts"), "split",
        pl.col("item").alias("pos_item"))
    expanded = base.with_columns(
        item_id=pl.concat_list([pl.col("pos_item"), pl.Series("neg", negatives, dtype=pl.Array(pl.Int32, r))
                                .cast(pl.List(pl.Int32))]),
        label=pl.lit([1.0] + [0.0] * r, dtype=pl.List(pl.Float32)),
    ).explode(["item_id", "label"]).drop("pos_item").with_row_index("_k")
    levels = item_features.select("item_id", "likes_level", "views_level")
    # `_k` (event order, click before its non-clicks) breaks ties: sorting by label would put all clicks of a
    # user's same-timestamp events before their non-clicks, and the join need not keep row order.
    return (expanded.join(levels, on="item_id", how="left")
            .sort(["event_ts", "user_id", "_k"])
            .select("user_id", "item_seq", "item_id", "likes_level", "views_level", "label", "event_ts", "split"))


def build_split_rows(
    pairs: pl.DataFrame, item_features: pl.DataFrame, *, max_len: int, min_history: int, valid_frac: float,
    test_frac: float, neg_ratio: int, seed: int,
) -> pl.DataFrame:
    """Raw clicks -> all labelled rows with a `split` column (see module contract)."""
    n_items = item_features.height - 1
    unknown = pairs.filter((pl.col("item") > n_items))
    if unknown.height:
        raise DataError(f"pairs: item {unknown['item'][0]} of user {unknown['user'][0]} is not a known item "
                        f"(items are 1..{n_items})")
    events = assign_split(add_histories(order_events(pairs), max_len), valid_frac, test_frac)
    # Sample before the min_history filter: sample_negatives learns each user's earlier clicks from the events it
    # is given, so the filtered-out first clicks must still be among them.
    negatives = sample_negatives(events, n_items, neg_ratio, seed)
    keep = (events["pos"] >= min_history).to_numpy()
    events, negatives = events.filter(pl.Series(keep)), negatives[keep]
    if events.height == 0:
        raise DataError(f"no click has at least build_sequences.min_history={min_history} earlier clicks")
    return labelled_rows(events, negatives, item_features)
