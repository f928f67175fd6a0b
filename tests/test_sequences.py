"""pipeline/sequences.py: polars histories against the plain-Python reference, leakage, time split, negatives and
the split-row contract."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import polars as pl
import pytest

from pipeline.io import DataError
from pipeline.sequences import (
    add_histories,
    assign_split,
    build_split_rows,
    histories_reference,
    order_events,
    sample_negatives,
)


def _pairs(users: list[int], items: list[int], ts: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"user": pl.Series(users, dtype=pl.Int32), "item": pl.Series(items, dtype=pl.Int32),
                         "timestamp": pl.Series(ts, dtype=pl.Int64)})


def random_pairs(seed: int, n_users: int = 40, n_items: int = 30, n_rows: int = 1500, n_times: int = 60
                 ) -> pl.DataFrame:
    """A click log in file order with timestamp ties within users and repeat clicks; (user, ts, item) unique."""
    rng = np.random.default_rng(seed)
    df = _pairs(rng.integers(1, n_users + 1, n_rows).tolist(), rng.integers(1, n_items + 1, n_rows).tolist(),
                (1_700_000_000_000 + 1000 * rng.integers(0, n_times, n_rows)).tolist())
    return df.unique(subset=["user", "timestamp", "item"], keep="first", maintain_order=True)


def _ordered_clicks(pairs: pl.DataFrame) -> dict[int, list[tuple[int, int, int]]]:
    """user -> [(timestamp, file row, item)] in the documented order (timestamp, file row)."""
    out: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for row, (user, item, ts) in enumerate(pairs.iter_rows()):
        out[user].append((ts, row, item))
    return {u: sorted(v) for u, v in out.items()}


def _item_table(n_items: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    likes, views = rng.integers(0, 11, n_items + 1), rng.integers(0, 11, n_items + 1)
    likes[0] = views[0] = 0
    return pl.DataFrame({"item_id": pl.Series(np.arange(n_items + 1), dtype=pl.Int32),
                         "likes_level": pl.Series(likes, dtype=pl.Int8),
                         "views_level": pl.Series(views, dtype=pl.Int8)})


# ---------------------------------------------------------------------------------------------- histories


def test_ties_are_broken_by_file_row() -> None:
    pairs = _pairs([1, 1, 2, 1], [5, 7, 5, 9], [10, 10, 3, 5])
    events = add_histories(order_events(pairs), 3)
    got = {(u, t, i): (p, s) for u, i, t, p, s in events.select("user", "item", "timestamp", "pos", "item_seq").rows()}
    assert got == {
        (1, 5, 9): (0, [0, 0, 0]),
        (1, 10, 5): (1, [0, 0, 9]),
        (1, 10, 7): (2, [0, 9, 5]),
        (2, 3, 5): (0, [0, 0, 0]),
    }


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_len", [1, 4, 50])
def test_add_histories_equals_reference(seed: int, max_len: int) -> None:
    pairs = random_pairs(seed)
    events = add_histories(order_events(pairs), max_len)
    assert events.schema["item_seq"] == pl.List(pl.Int32)
    reference = histories_reference(pairs, max_len)
    assert events.height == pairs.height == len(reference)
    for user, item, ts, seq in events.select("user", "item", "timestamp", "item_seq").iter_rows():
        assert seq == reference[(user, ts, item)], (user, ts, item)


@pytest.mark.parametrize("seed", range(3))
def test_histories_are_leakage_free_and_most_recent_last(seed: int) -> None:
    max_len = 6
    pairs = random_pairs(seed + 100, n_users=15, n_rows=600, n_times=20)
    clicks = _ordered_clicks(pairs)
    events = add_histories(order_events(pairs), max_len)
    for user, item, ts, pos, seq in events.select("user", "item", "timestamp", "pos", "item_seq").iter_rows():
        user_clicks = clicks[user]
        # pos is this event's place in (timestamp, file row) order
        assert user_clicks[pos][0] == ts and user_clicks[pos][2] == item
        earlier = [it for _, _, it in user_clicks[:pos]]
        assert len(seq) == max_len
        n_real = min(pos, max_len)
        assert seq[:max_len - n_real] == [0] * (max_len - n_real)  # left padding only
        assert all(s != 0 for s in seq[max_len - n_real:])
        assert all(s in earlier for s in seq if s != 0)  # only earlier clicks of the same user
        if pos:
            assert seq[-1] == earlier[-1]  # most recent last


def test_order_events_does_not_mutate_and_keeps_all_columns() -> None:
    pairs = random_pairs(7, n_rows=200)
    before = pairs.clone()
    events = order_events(pairs)
    assert pairs.equals(before)
    assert events.schema["pos"] == pl.Int64
    assert sorted(events.drop("pos").rows()) == sorted(pairs.rows())


# ---------------------------------------------------------------------------------------------- assign_split


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_times", [20, 100_000])
def test_split_is_a_time_cut(seed: int, n_times: int) -> None:
    events = order_events(random_pairs(seed, n_rows=5000, n_times=n_times))
    split = assign_split(events, valid_frac=0.15, test_frac=0.1)
    ts = {s: split.filter(pl.col("split") == s)["timestamp"] for s in ("train", "valid", "test")}
    assert all(len(v) for v in ts.values())
    assert ts["train"].max() < ts["valid"].min()
    assert ts["valid"].max() < ts["test"].min()
    assert split.height == events.height
    if n_times > events.height:  # (nearly) distinct timestamps: the fractions are close to the target
        frac = {s: len(v) / split.height for s, v in ts.items()}
        assert abs(frac["test"] - 0.1) < 0.01
        assert abs(frac["valid"] - 0.15) < 0.01


def test_split_ties_go_to_one_side() -> None:
    events = order_events(_pairs([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 2, 2, 3]))
    split = assign_split(events, valid_frac=0.2, test_frac=0.2)
    by_ts = split.group_by("timestamp").agg(pl.col("split").n_unique())
    assert (by_ts["split"] == 1).all()


# ---------------------------------------------------------------------------------------------- sample_negatives


def _clicked_before(events: pl.DataFrame) -> list[set[int]]:
    seen: dict[int, dict[int, int]] = defaultdict(dict)
    for user, item, pos in events.select("user", "item", "pos").iter_rows():
        seen[user].setdefault(item, pos)
    return [{it for it, p in seen[u].items() if p < pos} for u, pos in events.select("user", "pos").iter_rows()]


@pytest.mark.parametrize("seed", range(3))
def test_negatives_are_never_the_target_or_an_earlier_click(seed: int) -> None:
    n_items = 30
    events = order_events(random_pairs(seed, n_users=10, n_items=n_items, n_rows=400))
    neg = sample_negatives(events, n_items, neg_ratio=8, seed=seed)
    assert neg.shape == (events.height, 8) and neg.dtype == np.int32
    assert neg.min() >= 1 and neg.max() <= n_items
    targets = events["item"].to_numpy()
    for row, before in enumerate(_clicked_before(events)):
        assert targets[row] not in neg[row]
        assert not before.intersection(neg[row].tolist()), row


def test_negatives_cover_exactly_the_allowed_items() -> None:
    # one user clicks 2, 5, 2 (repeat), 7; later clicks stay allowed, earlier ones never are
    n_items = 10
    events = order_events(_pairs([1, 1, 1, 1], [2, 5, 2, 7], [1, 2, 3, 4]))
    neg = sample_negatives(events, n_items, neg_ratio=500, seed=0)
    everything = set(range(1, n_items + 1))
    assert set(neg[0].tolist()) == everything - {2}  # 5 and 7 come later: allowed
    assert set(neg[1].tolist()) == everything - {2, 5}
    assert set(neg[2].tolist()) == everything - {2, 5}  # a repeat click: its own earlier click excluded too
    assert set(neg[3].tolist()) == everything - {2, 5, 7}


def test_negatives_are_deterministic_for_a_seed() -> None:
    events = order_events(random_pairs(3, n_rows=300))
    a = sample_negatives(events, 30, neg_ratio=4, seed=11)
    b = sample_negatives(events, 30, neg_ratio=4, seed=11)
    c = sample_negatives(events, 30, neg_ratio=4, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_negatives_are_uniform_over_allowed_items() -> None:
    n_items = 20
    events = order_events(_pairs([1] * 6, [3, 8, 1, 15, 20, 4], [1, 2, 3, 4, 5, 6]))
    neg = sample_negatives(events, n_items, neg_ratio=40_000, seed=123)[5]  # event on item 4 at pos 5
    allowed = sorted(set(range(1, n_items + 1)) - {3, 8, 1, 15, 20, 4})
    counts = np.array([(neg == i).sum() for i in allowed])
    assert counts.sum() == neg.size
    expected = neg.size / len(allowed)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # 13 degrees of freedom: P(chi2 > 40) < 1e-4 under uniformity
    assert chi2 < 40, chi2
    assert np.abs(counts / expected - 1).max() < 0.06


@pytest.mark.parametrize("items", [[1, 2, 3], [1, 2, 3, 1], [2, 1, 2, 3, 3]])
def test_negatives_refuse_when_no_item_remains(items: list[int]) -> None:
    events = order_events(_pairs([1] * len(items), items, list(range(len(items)))))
    with pytest.raises(DataError, match="too few of the 3 items remain"):
        sample_negatives(events, 3, neg_ratio=1, seed=0)


@pytest.mark.parametrize(("items", "allowed_last"), [
    ([1, 1, 1, 1, 1, 1], {2, 3}),  # repeat clicks count once: two items stay allowed
    ([1, 2, 1], {3}),  # a repeat target is already among the earlier clicks
    ([2, 2, 1, 2], {3}),
])
def test_negatives_with_repeat_clicks_sample_what_is_left(items: list[int], allowed_last: set[int]) -> None:
    events = order_events(_pairs([1] * len(items), items, list(range(len(items)))))
    neg = sample_negatives(events, 3, neg_ratio=200, seed=0)
    assert set(neg[-1].tolist()) == allowed_last


# ---------------------------------------------------------------------------------------------- build_split_rows

SPLIT_SCHEMA = pl.Schema({
    "user_id": pl.Int32, "item_seq": pl.List(pl.Int32), "item_id": pl.Int32, "likes_level": pl.Int8,
    "views_level": pl.Int8, "label": pl.Float32, "event_ts": pl.Int64, "split": pl.Utf8,
})


def _build(pairs: pl.DataFrame, items: pl.DataFrame, **kw) -> pl.DataFrame:
    args = dict(max_len=5, min_history=1, valid_frac=0.1, test_frac=0.1, neg_ratio=3, seed=0) | kw
    return build_split_rows(pairs, items, **args)


@pytest.mark.parametrize("seed", range(3))
def test_split_rows_contract(seed: int) -> None:
    n_items, neg_ratio, max_len = 60, 3, 5
    pairs = random_pairs(seed, n_users=25, n_items=n_items, n_rows=800, n_times=30)
    items = _item_table(n_items, seed)
    rows = _build(pairs, items, max_len=max_len, neg_ratio=neg_ratio)
    assert rows.schema == SPLIT_SCHEMA
    assert (rows["item_seq"].list.len() == max_len).all()
    assert set(rows["label"].unique().to_list()) <= {0.0, 1.0}

    # every click row is followed by exactly neg_ratio non-clicks of the same event (ties included)
    labels = rows["label"].to_numpy()
    clicks = np.flatnonzero(labels == 1)
    assert rows.height == clicks.size * (1 + neg_ratio)
    np.testing.assert_array_equal(clicks, np.arange(0, rows.height, 1 + neg_ratio))
    listed = rows.select("user_id", "item_seq", "event_ts", "split").rows()
    for c in clicks:
        for j in range(1, neg_ratio + 1):
            assert labels[c + j] == 0
            assert listed[c + j] == listed[c]

    # side features are the row's own item's, looked up by id
    levels = items.rows()
    for item, likes, views in rows.select("item_id", "likes_level", "views_level").iter_rows():
        assert (likes, views) == levels[item][1:]

    # the clicks are exactly the events with at least min_history earlier clicks, histories as the reference
    reference = histories_reference(pairs, max_len)
    expected = {(u, t, i) for (u, t, i), seq in reference.items() if seq[-1] != 0}
    click_rows = rows.filter(pl.col("label") == 1)
    assert {(u, t, i) for u, t, i in click_rows.select("user_id", "event_ts", "item_id").rows()} == expected
    for u, t, i, seq in click_rows.select("user_id", "event_ts", "item_id", "item_seq").rows():
        assert seq == reference[(u, t, i)]

    # rows are ordered by (event_ts, user_id)
    keys = rows.select("event_ts", "user_id").rows()
    assert keys == sorted(keys)


@pytest.mark.parametrize("min_history", [1, 3])
def test_split_row_negatives_exclude_every_earlier_click(min_history: int) -> None:
    # the events dropped by min_history still count as clicks the user made before
    n_items, neg_ratio = 40, 20
    pairs = random_pairs(5, n_users=6, n_items=n_items, n_rows=60, n_times=40)
    rows = _build(pairs, _item_table(n_items), min_history=min_history, neg_ratio=neg_ratio)
    clicks = _ordered_clicks(pairs)
    listed = rows.select("user_id", "event_ts", "item_id", "label").rows()
    n_checked = 0
    for k in range(0, len(listed), 1 + neg_ratio):
        user, ts, target, label = listed[k]
        assert label == 1
        (pos,) = [p for p, (t, _, it) in enumerate(clicks[user]) if (t, it) == (ts, target)]
        earlier = {it for _, _, it in clicks[user][:pos]}
        for _, _, neg, label in listed[k + 1:k + 1 + neg_ratio]:
            assert label == 0 and neg != target and neg not in earlier
            n_checked += 1
    assert n_checked == (pairs.height - 6 * min_history) * neg_ratio


@pytest.mark.parametrize("min_history", [0, 2, 4])
def test_min_history_filters_rows(min_history: int) -> None:
    pairs = _pairs([1] * 5 + [2] * 2, [1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 1, 2])
    rows = _build(pairs, _item_table(20), min_history=min_history, neg_ratio=2)
    got = sorted(rows.filter(pl.col("label") == 1).select("user_id", "item_id").rows())
    expected = sorted([(1, i) for i in range(1 + min_history, 6)] + [(2, i) for i in range(6 + min_history, 8)])
    assert got == expected
    assert all(sum(1 for x in seq if x) >= min_history for seq in rows["item_seq"].to_list())


def test_min_history_with_no_rows_left_is_an_error() -> None:
    with pytest.raises(DataError, match="min_history=3"):
        _build(_pairs([1, 1, 2], [1, 2, 3], [1, 2, 3]), _item_table(20), min_history=3)


def test_unknown_item_names_item_and_user() -> None:
    pairs = _pairs([1, 1, 4], [1, 2, 11], [1, 2, 3])
    with pytest.raises(DataError) as info:
        _build(pairs, _item_table(10))
    message = str(info.value)
    assert "item 11 of user 4" in message and "1..10" in message and "\n" not in message


def test_split_rows_do_not_depend_on_pairs_row_order_without_ties() -> None:
    pairs = random_pairs(9, n_rows=500, n_times=10**9)
    assert pairs["timestamp"].n_unique() == pairs.height
    items = _item_table(30)
    a = _build(pairs, items)
    b = _build(pairs.sample(fraction=1.0, shuffle=True, seed=1), items)
    assert a.drop("item_id", "likes_level", "views_level").equals(b.drop("item_id", "likes_level", "views_level"))
