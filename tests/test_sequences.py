"""pipeline/sequences/build.py: histories and whole split rows against the plain-Python references, leakage, both split
methods, both negative samplers and exclusion modes, the chunked/streamed row paths and the split-row contract."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterator

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.core.io import DataError
from pipeline.sequences.build import (
    CHUNK_CELLS,
    MAX_REJECTION_ROUNDS,
    ROW_SCHEMA,
    SPLITS,
    AllowedRanks,
    SplitRows,
    assign_split,
    bloom_bit,
    bloom_contains,
    bloom_filters,
    build_exposure_rows,
    build_split_rows,
    exposure_rows_reference,
    histories_reference,
    history_matrix,
    order_events,
    ordered_map,
    sample_negatives,
    sort_events_reference,
    split_rows_reference,
    stable_order,
    user_time_key,
)
from pipeline.sequences.inputs import SequenceData
from pipeline.sources.microlens import count_before


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


def _histories(events: pl.DataFrame, max_len: int) -> list[list[int]]:
    """history_matrix of every event, as lists in event order."""
    rows = np.arange(events.height)
    return history_matrix(events["item"].to_numpy(), events["pos"].to_numpy(), rows, max_len).tolist()


# ---------------------------------------------------------------------------------------------- histories


def test_ties_are_broken_by_file_row() -> None:
    pairs = _pairs([1, 1, 2, 1], [5, 7, 5, 9], [10, 10, 3, 5])
    events = order_events(pairs)
    got = {(u, t, i): (p, s) for (u, i, t, p), s in zip(events.select("user", "item", "timestamp", "pos").rows(),
                                                        _histories(events, 3), strict=True)}
    assert got == {
        (1, 5, 9): (0, [0, 0, 0]),
        (1, 10, 5): (1, [0, 0, 9]),
        (1, 10, 7): (2, [0, 9, 5]),
        (2, 3, 5): (0, [0, 0, 0]),
    }


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_len", [1, 4, 50])
def test_history_matrix_equals_reference(seed: int, max_len: int) -> None:
    pairs = random_pairs(seed)
    events = order_events(pairs)
    matrix = history_matrix(events["item"].to_numpy(), events["pos"].to_numpy(), np.arange(events.height), max_len)
    assert matrix.dtype == np.int32 and matrix.shape == (events.height, max_len)
    reference = histories_reference(pairs, max_len)
    assert events.height == pairs.height == len(reference)
    for (user, item, ts), seq in zip(events.select("user", "item", "timestamp").iter_rows(), matrix.tolist(),
                                     strict=True):
        assert seq == reference[(user, ts, item)], (user, ts, item)


def test_history_matrix_of_a_subset_is_those_rows_of_the_full_matrix() -> None:
    events = order_events(random_pairs(4))
    item, pos = events["item"].to_numpy(), events["pos"].to_numpy()
    full = history_matrix(item, pos, np.arange(events.height), 7)
    rows = np.random.default_rng(0).permutation(events.height)[:300]
    np.testing.assert_array_equal(history_matrix(item, pos, rows, 7), full[rows])
    assert history_matrix(item, pos, rows[:0], 7).shape == (0, 7)


@pytest.mark.parametrize("seed", range(3))
def test_histories_are_leakage_free_and_most_recent_last(seed: int) -> None:
    max_len = 6
    pairs = random_pairs(seed + 100, n_users=15, n_rows=600, n_times=20)
    clicks = _ordered_clicks(pairs)
    events = order_events(pairs)
    for (user, item, ts, pos), seq in zip(events.select("user", "item", "timestamp", "pos").iter_rows(),
                                          _histories(events, max_len), strict=True):
        user_clicks = clicks[user]
        # pos is this event's place in (timestamp, file row) order
        assert user_clicks[pos][0] == ts and user_clicks[pos][2] == item
        earlier = [it for _, _, it in user_clicks[:pos]]
        n_real = min(pos, max_len)
        assert seq[:max_len - n_real] == [0] * (max_len - n_real)  # left padding only
        assert seq[max_len - n_real:] == earlier[len(earlier) - n_real:]  # the latest earlier clicks, in order


def test_order_events_does_not_mutate_and_keeps_all_columns() -> None:
    pairs = random_pairs(7, n_rows=200)
    before = pairs.clone()
    events = order_events(pairs)
    assert pairs.equals(before)
    assert events.schema["pos"] == pl.Int64
    assert sorted(events.drop("pos").rows()) == sorted(pairs.rows())


@pytest.mark.parametrize("case", ["ties", "negative ids", "wide timestamps", "too wide: reference path"])
def test_order_events_packed_key_matches_the_three_key_sort(case: str) -> None:
    """The one-key sort gives exactly the (user, timestamp, file row) order of the plain three-key sort, ties in
    file order, for negative ids and wide timestamp ranges; past 63 bits the key is None and the reference sorts."""
    pairs = random_pairs(11, n_rows=3000, n_times=5)  # 5 timestamps: many ties within each user
    if case == "negative ids":
        pairs = pairs.with_columns(pl.col("user") - 1000)
    if case == "wide timestamps":  # 2^40 ms apart: user ids (6 bits) + 41 bits still fit
        pairs = pairs.with_columns(pl.col("timestamp") * (1 << 40) // 1_700_000_000_000)
    if case == "too wide: reference path":
        pairs = pairs.with_columns(pl.when(pl.col("user") == 1).then(-(1 << 60)).otherwise(pl.col("timestamp"))
                                   .alias("timestamp"))
    key = user_time_key(pairs["user"].to_numpy(), pairs["timestamp"].to_numpy())
    assert (key is None) == (case == "too wide: reference path")
    expected = sort_events_reference(pairs)
    assert order_events(pairs).drop("pos").equals(expected)
    if key is not None:  # one key per distinct (user, timestamp)
        assert len(np.unique(key)) == pairs.select("user", "timestamp").n_unique()


# ---------------------------------------------------------------------------------------------- assign_split


def _split_names(codes: np.ndarray) -> list[str]:
    return [SPLITS[c] for c in codes.tolist()]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_times", [20, 100_000])
def test_time_split_is_a_time_cut(seed: int, n_times: int) -> None:
    events = order_events(random_pairs(seed, n_rows=5000, n_times=n_times))
    codes = assign_split(events, "time", valid_frac=0.15, test_frac=0.1)
    assert codes.dtype == np.int8 and codes.shape == (events.height,)
    ts = {s: events["timestamp"].to_numpy()[codes == k] for k, s in enumerate(SPLITS)}
    assert all(len(v) for v in ts.values())
    assert ts["train"].max() < ts["valid"].min()
    assert ts["valid"].max() < ts["test"].min()
    if n_times > events.height:  # (nearly) distinct timestamps: the fractions are close to the target
        frac = {s: len(v) / events.height for s, v in ts.items()}
        assert abs(frac["test"] - 0.1) < 0.01
        assert abs(frac["valid"] - 0.15) < 0.01


def test_time_split_ties_go_to_one_side() -> None:
    events = order_events(_pairs([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 2, 2, 3]))
    codes = assign_split(events, "time", valid_frac=0.2, test_frac=0.2)
    by_ts = defaultdict(set)
    for ts, code in zip(events["timestamp"].to_list(), codes.tolist(), strict=True):
        by_ts[ts].add(code)
    assert all(len(v) == 1 for v in by_ts.values())


@pytest.mark.parametrize("seed", range(3))
def test_leave_last_holds_out_each_users_last_two_events(seed: int) -> None:
    pairs = random_pairs(seed, n_users=30, n_rows=400)
    events = order_events(pairs)
    codes = _split_names(assign_split(events, "leave_last", valid_frac=0.1, test_frac=0.1))
    clicks = _ordered_clicks(pairs)
    got: dict[int, dict[int, str]] = defaultdict(dict)
    for (user, pos), name in zip(events.select("user", "pos").rows(), codes, strict=True):
        got[user][pos] = name
    for user, user_clicks in clicks.items():
        n = len(user_clicks)
        assert [got[user][p] for p in range(n)] == (["train"] * (n - 2) + ["valid", "test"])[-n:]


def test_leave_last_with_one_or_two_clicks() -> None:
    events = order_events(_pairs([1, 2, 2, 3, 3, 3], [1, 1, 2, 1, 2, 3], [5, 9, 1, 4, 4, 4]))
    codes = _split_names(assign_split(events, "leave_last", valid_frac=0.1, test_frac=0.1))
    assert list(zip(events["user"].to_list(), events["item"].to_list(), codes, strict=True)) == [
        (1, 1, "test"),  # a single click is the user's last
        (2, 2, "valid"), (2, 1, "test"),  # by timestamp, not file order
        (3, 1, "train"), (3, 2, "valid"), (3, 3, "test"),  # equal timestamps: file order
    ]


# ---------------------------------------------------------------------------------------------- sample_negatives


def _clicked_before(events: pl.DataFrame) -> list[set[int]]:
    seen: dict[int, dict[int, int]] = defaultdict(dict)
    for user, item, pos in events.select("user", "item", "pos").iter_rows():
        seen[user].setdefault(item, pos)
    return [{it for it, p in seen[u].items() if p < pos} for u, pos in events.select("user", "pos").iter_rows()]


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
@pytest.mark.parametrize("seed", range(3))
def test_negatives_are_never_the_target_or_an_earlier_click(seed: int, sampling: str) -> None:
    n_items = 30
    events = order_events(random_pairs(seed, n_users=10, n_items=n_items, n_rows=400))
    neg = sample_negatives(events, n_items, neg_ratio=8, seed=seed, sampling=sampling, exclude="before")
    assert neg.shape == (events.height, 8) and neg.dtype == np.int32
    assert neg.min() >= 1 and neg.max() <= n_items
    targets = events["item"].to_numpy()
    for row, before in enumerate(_clicked_before(events)):
        assert targets[row] not in neg[row]
        assert not before.intersection(neg[row].tolist()), row


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
@pytest.mark.parametrize("seed", range(3))
def test_negatives_ever_are_never_any_click_of_the_user(seed: int, sampling: str) -> None:
    n_items = 60
    events = order_events(random_pairs(seed, n_users=10, n_items=n_items, n_rows=300))
    neg = sample_negatives(events, n_items, neg_ratio=8, seed=seed, sampling=sampling, exclude="ever")
    clicked: dict[int, set[int]] = defaultdict(set)
    for user, item in events.select("user", "item").iter_rows():
        clicked[user].add(item)
    for row, user in enumerate(events["user"].to_list()):
        assert not clicked[user].intersection(neg[row].tolist()), row


def test_negatives_cover_exactly_the_allowed_items() -> None:
    # one user clicks 2, 5, 2 (repeat), 7; with `before` later clicks stay allowed, earlier ones never are
    n_items = 10
    events = order_events(_pairs([1, 1, 1, 1], [2, 5, 2, 7], [1, 2, 3, 4]))
    neg = sample_negatives(events, n_items, neg_ratio=500, seed=0)
    everything = set(range(1, n_items + 1))
    assert set(neg[0].tolist()) == everything - {2}  # 5 and 7 come later: allowed
    assert set(neg[1].tolist()) == everything - {2, 5}
    assert set(neg[2].tolist()) == everything - {2, 5}  # a repeat click: its own earlier click excluded too
    assert set(neg[3].tolist()) == everything - {2, 5, 7}
    ever = sample_negatives(events, n_items, neg_ratio=500, seed=0, exclude="ever")
    for row in ever:
        assert set(row.tolist()) == everything - {2, 5, 7}


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
@pytest.mark.parametrize("exclude", ["before", "ever"])
def test_negatives_are_deterministic_for_a_seed(sampling: str, exclude: str) -> None:
    events = order_events(random_pairs(3, n_rows=300))
    kw = dict(sampling=sampling, exclude=exclude)
    a = sample_negatives(events, 30, neg_ratio=4, seed=11, **kw)
    b = sample_negatives(events, 30, neg_ratio=4, seed=11, **kw)
    c = sample_negatives(events, 30, neg_ratio=4, seed=12, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bloom_filters_hold_each_users_item_bits() -> None:
    rng = np.random.default_rng(0)
    n_clicks = rng.integers(1, 40, 500)  # clicks of users 0..499
    user_no = np.repeat(np.arange(500), n_clicks)
    item = rng.integers(1, 92_000, len(user_no)).astype(np.int32)
    bloom = bloom_filters(item, np.cumsum(n_clicks) - n_clicks)
    assert bloom.shape == (500 * 2 ** 8 // 64,) and bloom.dtype == np.uint64
    assert bloom_contains(bloom, user_no, item).all()  # no false negatives
    cand = rng.integers(1, 92_000, (500, 64)).astype(np.int32)
    got = bloom_contains(bloom, np.arange(500)[:, None], cand)
    bits = [set(bloom_bit(item[user_no == u]).tolist()) for u in range(500)]
    expected = np.array([[b in bits[u] for b in bloom_bit(cand[u]).tolist()] for u in range(500)])
    np.testing.assert_array_equal(got, expected)  # exactly "some item of the user has this bit"
    few = n_clicks[:, None] <= 10  # users with <= 10 items: under 4% of 256 bits are set
    assert got[few[:, 0]].mean() < 0.08


@pytest.mark.parametrize("exclude", ["before", "ever"])
@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_negatives_do_not_depend_on_the_bloom_prefilter(monkeypatch, sampling: str, exclude: str) -> None:
    # The filter only decides which draws take the exact check: with one that says "maybe" for every draw, every
    # draw is checked exactly and the negatives must be the very same.
    events = order_events(random_pairs(5, n_users=60, n_items=40, n_rows=2000))
    kw = dict(neg_ratio=6, seed=3, sampling=sampling, exclude=exclude)
    filtered = sample_negatives(events, 40, **kw)
    monkeypatch.setattr("pipeline.sequences.build.bloom_contains",
                        lambda bloom, user_no, item: np.ones(np.broadcast_shapes(np.shape(user_no), item.shape), bool))
    np.testing.assert_array_equal(sample_negatives(events, 40, **kw), filtered)


def test_stable_order_is_lexsort_with_ties_in_row_order() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 400), rng.integers(0, 3, 400)
    np.testing.assert_array_equal(stable_order(a), np.argsort(a, kind="stable"))
    np.testing.assert_array_equal(stable_order(a, b), np.lexsort((np.arange(400), b, a)))
    assert stable_order(np.zeros(0, np.int64)).shape == (0,)


@pytest.mark.parametrize("threads", [1, 3])
def test_ordered_map_keeps_order_and_stops_early(threads: int) -> None:
    import time

    def slow_square(x: int) -> int:
        time.sleep(0.001 * (x % 3))  # later items finish first: order must come from the queue, not completion
        return x * x

    assert list(ordered_map(slow_square, range(50), threads)) == [x * x for x in range(50)]
    started: list[int] = []
    it = ordered_map(lambda x: started.append(x) or x, iter(range(1000)), threads)
    assert [next(it) for _ in range(5)] == list(range(5))
    it.close()
    assert len(started) <= 5 + 2 * threads  # at most 2 * threads results were pending


def test_ordered_map_closed_on_one_of_its_own_threads_does_not_join_that_thread() -> None:
    """Garbage collection can close an abandoned ordered_map on any thread, one of its pool's included (polars
    drops a lazy source it has read enough of): closing must then not wait for its own thread ("cannot join current
    thread")."""
    import threading

    it: Iterator[int] | None = None
    first_taken, closed = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def close_from_a_worker(x: int) -> int:
        if x == 3:  # submitted before the first result is yielded, so it runs on a pool thread while it is paused
            first_taken.wait(60)
            try:
                it.close()
            except BaseException as e:  # noqa: BLE001 - recorded for the assertion below
                errors.append(e)
            closed.set()
        return x

    it = ordered_map(close_from_a_worker, range(8), 2)
    assert next(it) == 0
    first_taken.set()
    assert closed.wait(60)
    assert errors == []


def _chi2(counts: np.ndarray, expected: np.ndarray) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


def test_negatives_are_uniform_over_allowed_items() -> None:
    n_items = 20
    events = order_events(_pairs([1] * 6, [3, 8, 1, 15, 20, 4], [1, 2, 3, 4, 5, 6]))
    neg = sample_negatives(events, n_items, neg_ratio=40_000, seed=123)[5]  # event on item 4 at pos 5
    allowed = sorted(set(range(1, n_items + 1)) - {3, 8, 1, 15, 20, 4})
    counts = np.array([(neg == i).sum() for i in allowed])
    assert counts.sum() == neg.size
    expected = np.full(len(allowed), neg.size / len(allowed))
    # 13 degrees of freedom: P(chi2 > 40) < 1e-4 under uniformity
    assert _chi2(counts, expected) < 40
    assert np.abs(counts / expected - 1).max() < 0.06


@pytest.mark.parametrize("exclude", ["before", "ever"])
def test_popularity_negatives_are_proportional_to_clicks_plus_one(exclude: str) -> None:
    # users 2..4 make items 1..6 unequally popular; user 1's first event excludes only its target (item 9)
    n_items = 10
    users = [1, 1] + [2] * 5 + [3] * 4 + [4] * 3
    items = [9, 10] + [1, 2, 3, 4, 5] + [1, 2, 3, 4] + [1, 2, 6]
    events = order_events(_pairs(users, items, list(range(len(users)))))
    neg = sample_negatives(events, n_items, neg_ratio=60_000, seed=5, sampling="popularity", exclude=exclude)[0]
    clicks = Counter(items)
    allowed = [i for i in range(1, n_items + 1) if i != 9 and not (exclude == "ever" and i == 10)]
    weights = np.array([clicks[i] + 1 for i in allowed], dtype=float)  # 4, 4, 3, 3, 2, 2, 1, 1, (2)
    counts = np.array([(neg == i).sum() for i in allowed])
    assert counts.sum() == neg.size
    expected = neg.size * weights / weights.sum()
    # 7 or 8 degrees of freedom: P(chi2 > 30) < 3e-4 under the weights
    assert _chi2(counts, expected) < 30
    assert np.abs(counts / expected - 1).max() < 0.05


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_negatives_when_nearly_every_item_was_clicked(sampling: str) -> None:
    # user 1 clicks items 3..n: only 1 and 2 remain (weights 3 and 1 under popularity, of about 800 in all), so a
    # draw is accepted with probability < 1/200 and most are made by the exact fallback after MAX_REJECTION_ROUNDS
    n_items = 400
    users = [2, 3] + [1] * (n_items - 2)
    items = [1, 1] + list(range(3, n_items + 1))
    events = order_events(_pairs(users, items, list(range(len(users)))))
    assert (1 - 1 / 200) ** (MAX_REJECTION_ROUNDS + 1) > 0.8
    neg = sample_negatives(events, n_items, neg_ratio=100, seed=0, sampling=sampling, exclude="ever")
    mine = neg[(events["user"] == 1).to_numpy()]  # (398, 100)
    assert set(mine.ravel().tolist()) == {1, 2}
    p_item1 = 0.75 if sampling == "popularity" else 0.5
    assert abs((mine == 1).mean() - p_item1) < 0.01  # sd about 0.0017 at 39,800 draws
    # with `before`, the first events still have most items to choose from
    neg = sample_negatives(events, n_items, neg_ratio=50, seed=0, sampling=sampling, exclude="before")
    for row, before in enumerate(_clicked_before(events)):
        assert not before.intersection(neg[row].tolist()) and events["item"][row] not in neg[row]


@pytest.mark.parametrize("items", [[1, 2, 3], [1, 2, 3, 1], [2, 1, 2, 3, 3]])
def test_negatives_refuse_when_no_item_remains(items: list[int]) -> None:
    events = order_events(_pairs([1] * len(items), items, list(range(len(items)))))
    with pytest.raises(DataError, match="too few of the 3 items remain"):
        sample_negatives(events, 3, neg_ratio=1, seed=0)


def test_negatives_ever_refuse_a_user_who_clicked_every_item() -> None:
    events = order_events(_pairs([4, 7, 7, 7, 4], [1, 1, 3, 2, 2], [1, 2, 3, 4, 5]))
    with pytest.raises(DataError) as info:
        sample_negatives(events, 3, neg_ratio=1, seed=0, exclude="ever")
    message = str(info.value)
    assert message.startswith("user 7 has clicked 3 distinct items") and "too few of the 3 items remain" in message


@pytest.mark.parametrize(("items", "allowed_last"), [
    ([1, 1, 1, 1, 1, 1], {2, 3}),  # repeat clicks count once: two items stay allowed
    ([1, 2, 1], {3}),  # a repeat target is already among the earlier clicks
    ([2, 2, 1, 2], {3}),
])
def test_negatives_with_repeat_clicks_sample_what_is_left(items: list[int], allowed_last: set[int]) -> None:
    events = order_events(_pairs([1] * len(items), items, list(range(len(items)))))
    neg = sample_negatives(events, 3, neg_ratio=200, seed=0)
    assert set(neg[-1].tolist()) == allowed_last



@pytest.mark.parametrize("seed", range(4))
def test_allowed_ranks_equal_the_explicit_allowed_set(seed: int) -> None:
    # every r in [0, total) against the plain map over the allowed set: each allowed item is hit exactly its weight
    # times, a banned one never
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(2, 40))
    weights = rng.integers(1, 6, n_items) if seed % 2 else np.ones(n_items, np.int64)
    banned = np.sort(rng.choice(np.arange(1, n_items + 1), int(rng.integers(0, n_items)), replace=False))
    ranks = AllowedRanks.of(banned, np.concatenate([[0], np.cumsum(weights)]))
    allowed = np.setdiff1d(np.arange(1, n_items + 1), banned)
    assert ranks.total == weights[allowed - 1].sum()
    r = np.arange(ranks.total)
    expected = allowed[np.searchsorted(np.cumsum(weights[allowed - 1]), r, side="right")]
    np.testing.assert_array_equal(ranks.item(r), expected)
    np.testing.assert_array_equal(np.bincount(ranks.item(r), minlength=n_items + 1)[1:],
                                  np.where(np.isin(np.arange(1, n_items + 1), banned), 0, weights))


def _heavy_user(n_items: int) -> pl.DataFrame:
    """User 1 clicks items 3..n_items in order; users 2 and 3 click item 1 (its weight is 3 under popularity)."""
    users = [2, 3] + [1] * (n_items - 2)
    return _pairs(users, [1, 1] + list(range(3, n_items + 1)), list(range(n_items)))


@pytest.mark.parametrize("exclude", ["before", "ever"])
def test_exact_fallback_builds_one_inversion_per_user(monkeypatch, exclude: str) -> None:
    # Hundreds of user 1's events reach the exact draws; their allowed sets come from one AllowedRanks of the
    # user's clicks (O(K) once), never from an (N,) allowed set per event, and still hold no banned item.
    n_items = 400
    events = order_events(_heavy_user(n_items))
    built: list[int] = []
    of = AllowedRanks.of.__func__
    monkeypatch.setattr(AllowedRanks, "of", classmethod(lambda cls, banned, cum: built.append(len(banned))
                                                        or of(cls, banned, cum)))
    neg = sample_negatives(events, n_items, neg_ratio=20, seed=0, exclude=exclude)
    assert built == [n_items - 2]
    clicked = set(range(3, n_items + 1))
    for row, before in enumerate(_clicked_before(events)):
        banned = clicked if exclude == "ever" and events["user"][row] == 1 else before | {events["item"][row]}
        assert not banned.intersection(neg[row].tolist()), row


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_exact_fallback_before_draws_by_weight_over_the_allowed_items(sampling: str) -> None:
    # user 1's event on item 396 (of 400) leaves items 1, 2 (never clicked) and 397..400 (clicked later): rejection
    # accepts 6 of 400 draws, so nearly all of them come from the exact draws, which must follow the weights
    n_items = 400
    events = order_events(_heavy_user(n_items))
    row = int(np.flatnonzero(events["item"].to_numpy() == 396)[0])
    neg = sample_negatives(events, n_items, neg_ratio=30_000, seed=2, sampling=sampling)[row]
    allowed = [1, 2, 397, 398, 399, 400]
    weights = np.array([3, 1, 2, 2, 2, 2] if sampling == "popularity" else [1] * 6, dtype=float)
    counts = np.array([(neg == i).sum() for i in allowed])
    assert counts.sum() == neg.size
    # 5 degrees of freedom: P(chi2 > 25) < 2e-4 under the weights
    assert _chi2(counts, neg.size * weights / weights.sum()) < 25

# ---------------------------------------------------------------------------------------------- build_split_rows

SPLIT_SCHEMA = pl.Schema({
    "user_id": pl.Int32, "item_seq": pl.List(pl.Int32), "item_id": pl.Int32, "likes_level": pl.Int8,
    "views_level": pl.Int8, "label": pl.Float32, "event_ts": pl.Int64,
})


def _build(pairs: pl.DataFrame, items: pl.DataFrame, **kw) -> SplitRows:
    args = dict(max_len=5, min_history=1, split="time", valid_frac=0.1, test_frac=0.1, neg_ratio=3,
                neg_sampling="uniform", neg_exclude="before", seed=0) | kw
    return build_split_rows(pairs, items, **args)


def _all_rows(rows: SplitRows) -> pl.DataFrame:
    """Every split's rows with a `split` column, train then valid then test."""
    return pl.concat([rows.collect(name).with_columns(split=pl.lit(name)) for name in SPLITS])


def test_row_schema_is_the_file_contract() -> None:
    assert ROW_SCHEMA == SPLIT_SCHEMA


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("split", ["leave_last", "time"])
@pytest.mark.parametrize(("max_len", "min_history"), [(1, 0), (4, 1), (30, 3)])
def test_split_rows_equal_the_reference_builder(seed: int, split: str, max_len: int, min_history: int) -> None:
    n_items = 40
    pairs = random_pairs(seed, n_users=20, n_items=n_items, n_rows=400, n_times=25)
    items = _item_table(n_items, seed)
    sampling, exclude = [("uniform", "before"), ("popularity", "ever")][seed % 2]
    common = dict(max_len=max_len, min_history=min_history, split=split, valid_frac=0.15, test_frac=0.2)
    rows = _build(pairs, items, neg_sampling=sampling, neg_exclude=exclude, seed=seed, **common)
    reference = split_rows_reference(pairs, items, rows.negatives, **common)
    for name in SPLITS:
        assert rows.collect(name).rows() == reference[name], name
    assert sum(len(v) for v in reference.values()) == (pairs.height - _n_short(pairs, min_history)) * 4


def _n_short(pairs: pl.DataFrame, min_history: int) -> int:
    """Clicks with fewer than min_history earlier clicks of the same user."""
    counts = pairs.group_by("user").len()["len"].to_numpy()
    return int(np.minimum(counts, min_history).sum())


@pytest.mark.parametrize("seed", range(3))
def test_split_rows_contract(seed: int) -> None:
    n_items, neg_ratio, max_len = 60, 3, 5
    pairs = random_pairs(seed, n_users=25, n_items=n_items, n_rows=800, n_times=30)
    items = _item_table(n_items, seed)
    built = _build(pairs, items, max_len=max_len, neg_ratio=neg_ratio)
    rows = _all_rows(built)
    assert rows.drop("split").schema == SPLIT_SCHEMA
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

    # rows of each split are ordered by (event_ts, user_id); the summary counts them
    for name in SPLITS:
        part = built.collect(name)
        keys = part.select("event_ts", "user_id").rows()
        assert keys == sorted(keys)
        n_real = part["item_seq"].list.eval(pl.element() != 0).list.sum()
        assert built.summary(name) == {"rows": part.height, "clicks": int(part["label"].sum()),
                                       "mean_history": pytest.approx(n_real.mean())}


@pytest.mark.parametrize("split", ["leave_last", "time"])
def test_chunked_streamed_and_collected_rows_are_identical(split: str, tmp_path) -> None:
    pairs = random_pairs(11, n_users=30, n_items=50, n_rows=900, n_times=40)
    rows = _build(pairs, _item_table(50), split=split, max_len=8, neg_ratio=2)
    for name in SPLITS:
        whole = rows.collect(name)
        assert whole.height > 0
        # one chunk holding every event is the straightforward path; small chunks only move frame boundaries
        (single,) = rows.frames(name, chunk=10**9)
        assert single.equals(whole)
        for chunk in (1, 7):
            frames = list(rows.frames(name, chunk=chunk))
            assert max(f.height for f in frames) == chunk * 3
            assert pl.concat(frames).equals(whole)
        assert rows.lazy(name, chunk=7).collect().equals(whole)
        path = tmp_path / f"{name}.parquet"
        rows.lazy(name, chunk=7).sink_parquet(path)
        assert pl.read_parquet(path).equals(whole)


def test_chunks_keep_to_the_cell_budget_as_max_len_grows(monkeypatch) -> None:
    # 16384 events a chunk at the default max_len 20 and neg_ratio 2 and at MicroLens-1M's 100 and 4; fewer as the
    # rows grow past 500 cells an event, down to 1 (at max_len 100,000, 16384 events' rows held 20 GB)
    pairs, items = random_pairs(13, n_users=30, n_items=50, n_rows=900, n_times=40), _item_table(50)
    default, wide = _build(pairs, items, max_len=20, neg_ratio=2), _build(pairs, items, max_len=100, neg_ratio=4)
    assert default.chunk_units == wide.chunk_units == 16_384
    sizes = [dataclasses.replace(default, max_len=n).chunk_units for n in (100, 1_000, 10_000, 100_000, 10**8)]
    assert sizes == [16_384, 2730, 273, 27, 1]
    clicks, shown = random_exposures(0)
    exposures = build_exposure_rows(clicks, shown, _item_table(30), max_len=100, min_history=0, split="time",
                                    valid_frac=0.1, test_frac=0.1)
    assert exposures.chunk_units == 16_384  # one row an exposure
    assert dataclasses.replace(exposures, max_len=100_000).chunk_units == CHUNK_CELLS // 100_000 == 81

    # the default frames hold at most CHUNK_CELLS cells, and the rows do not depend on where they break
    monkeypatch.setattr("pipeline.sequences.build.CHUNK_CELLS", 8 * 3 * 10)
    rows = _build(pairs, items, max_len=8, neg_ratio=2)
    assert rows.chunk_units == 10
    for name in SPLITS:
        frames = list(rows.frames(name))
        assert len(frames) > 1 and max(f.height for f in frames) == 30
        (single,) = rows.frames(name, chunk=10**9)
        assert pl.concat(frames).equals(single)
        assert rows.collect(name).equals(single)


def test_split_files_keep_row_groups_to_the_cell_budget(tmp_path) -> None:
    # polars' sink holds a row group (SINK_GROUP_ROWS rows) before writing it: its own grouping, so the default
    # files are as before, while that is within CHUNK_CELLS cells; fewer rows a group past max_len 100
    def group_rows(max_len: int) -> int | None:
        return SequenceData({}, {}, pl.DataFrame(), 0, 0, max_len, 11, 0, 0, 0).row_group_size

    assert group_rows(20) is group_rows(100) is None
    assert [group_rows(n) for n in (101, 100_000, 10**8)] == [CHUNK_CELLS // 101, 81, 1]
    rows = _build(random_pairs(14, n_rows=600), _item_table(30), neg_ratio=2)
    path = tmp_path / "train.parquet"
    rows.lazy("train").sink_parquet(path, row_group_size=40)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups > 1 and max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 40
    assert pl.read_parquet(path).equals(rows.collect("train"))

def test_lazy_rows_honour_projection_filters_and_limits() -> None:
    rows = _build(random_pairs(12, n_rows=600), _item_table(30), neg_ratio=2)
    whole = rows.collect("train")
    lazy = rows.lazy("train", chunk=5)
    query = [pl.col("label") == 0, pl.col("user_id") > 10]
    got = lazy.filter(*query).select("item_id", "event_ts").head(23).collect()
    assert got.equals(whole.filter(*query).select("item_id", "event_ts").head(23))
    assert lazy.select(pl.len()).collect().item() == whole.height
    assert lazy.head(4).collect().equals(whole.head(4))


def test_empty_split_has_the_contract_schema_and_no_rows(tmp_path) -> None:
    # every user has 2 clicks: with leave_last and min_history 1 nothing is left in train or valid
    pairs = _pairs([1, 1, 2, 2], [1, 2, 3, 4], [1, 2, 3, 4])
    rows = _build(pairs, _item_table(10), split="leave_last")
    assert rows.collect("train").height == rows.collect("valid").height == 0
    assert rows.collect("valid").schema == SPLIT_SCHEMA
    assert rows.summary("valid") == {"rows": 0, "clicks": 0, "mean_history": None}
    rows.lazy("valid").sink_parquet(tmp_path / "valid.parquet")
    empty = pl.read_parquet(tmp_path / "valid.parquet")
    assert empty.height == 0 and empty.schema == SPLIT_SCHEMA
    assert rows.collect("test").filter(pl.col("label") == 1).select("user_id", "item_id").rows() == [(1, 2), (2, 4)]


@pytest.mark.parametrize(("min_history", "expected"), [
    (0, {"train": [(3, 1)], "valid": [(2, 1), (3, 2)], "test": [(1, 1), (2, 2), (3, 3)]}),
    (1, {"train": [], "valid": [(3, 2)], "test": [(2, 2), (3, 3)]}),
])
def test_leave_last_rows_of_users_with_few_clicks(min_history: int, expected: dict[str, list]) -> None:
    # user u clicks items 1..u in order: one click (a test event), two (valid, test), three (train, valid, test)
    pairs = _pairs([1, 2, 2, 3, 3, 3], [1, 1, 2, 1, 2, 3], [1, 1, 2, 1, 2, 3])
    rows = _build(pairs, _item_table(10), split="leave_last", min_history=min_history)
    for name in SPLITS:
        got = rows.collect(name).filter(pl.col("label") == 1).select("user_id", "item_id").rows()
        assert sorted(got) == expected[name], name


@pytest.mark.parametrize("exclude", ["before", "ever"])
@pytest.mark.parametrize("min_history", [1, 3])
def test_split_row_negatives_exclude_the_users_clicks(min_history: int, exclude: str) -> None:
    # the events dropped by min_history still count as clicks the user made
    n_items, neg_ratio = 40, 20
    pairs = random_pairs(5, n_users=6, n_items=n_items, n_rows=60, n_times=40)
    rows = _build(pairs, _item_table(n_items), min_history=min_history, neg_ratio=neg_ratio, neg_exclude=exclude)
    clicks = _ordered_clicks(pairs)
    listed = _all_rows(rows).select("user_id", "event_ts", "item_id", "label").rows()
    n_checked = n_future = 0
    for k in range(0, len(listed), 1 + neg_ratio):
        user, ts, target, label = listed[k]
        assert label == 1
        (pos,) = [p for p, (t, _, it) in enumerate(clicks[user]) if (t, it) == (ts, target)]
        earlier = {it for _, _, it in clicks[user][:pos]}
        later = {it for _, _, it in clicks[user][pos + 1:]} - earlier - {target}
        for _, _, neg, label in listed[k + 1:k + 1 + neg_ratio]:
            assert label == 0 and neg != target and neg not in earlier
            assert exclude == "before" or neg not in later
            n_future += neg in later
            n_checked += 1
    assert n_checked == (pairs.height - 6 * min_history) * neg_ratio
    assert (n_future > 0) == (exclude == "before")  # `before` does sample clicks the user makes later


@pytest.mark.parametrize("min_history", [0, 2, 4])
def test_min_history_filters_rows(min_history: int) -> None:
    pairs = _pairs([1] * 5 + [2] * 2, [1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 1, 2])
    rows = _all_rows(_build(pairs, _item_table(20), min_history=min_history, neg_ratio=2))
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


def test_side_features_follow_item_id_not_row_position() -> None:
    pairs = random_pairs(2, n_rows=300)
    items = _item_table(30, seed=3)
    a = _all_rows(_build(pairs, items))
    b = _all_rows(_build(pairs, items.sample(fraction=1.0, shuffle=True, seed=0)))
    assert a.equals(b)


@pytest.mark.parametrize("split", ["leave_last", "time"])
def test_split_rows_do_not_depend_on_pairs_row_order_without_ties(split: str) -> None:
    pairs = random_pairs(9, n_rows=500, n_times=10**9)
    assert pairs["timestamp"].n_unique() == pairs.height
    items = _item_table(30)
    a = _all_rows(_build(pairs, items, split=split))
    b = _all_rows(_build(pairs.sample(fraction=1.0, shuffle=True, seed=1), items, split=split))
    assert a.drop("item_id", "likes_level", "views_level").equals(b.drop("item_id", "likes_level", "views_level"))


def test_split_rows_are_deterministic_for_a_seed() -> None:
    pairs, items = random_pairs(8, n_rows=400), _item_table(30)
    kw = dict(split="leave_last", neg_sampling="popularity", neg_exclude="ever")
    a, b = _all_rows(_build(pairs, items, seed=3, **kw)), _all_rows(_build(pairs, items, seed=3, **kw))
    c = _all_rows(_build(pairs, items, seed=4, **kw))
    assert a.equals(b)
    assert a.drop("item_id", "likes_level", "views_level").equals(c.drop("item_id", "likes_level", "views_level"))
    assert not a["item_id"].equals(c["item_id"])


# ---------------------------------------------------------------------------------------------- exposure rows


def random_exposures(seed: int, n_users: int = 15, n_items: int = 30, n_requests: int = 80, slate: int = 4
                     ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(pairs, impressions): requests at random times (some users share times, a user's requests do not), each
    showing `slate` distinct items, a random subset clicked; pairs are the clicks in impression order."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in rng.integers(1, n_users + 1, n_requests):
        ts = 1_700_000_000_000 + 1000 * int(rng.integers(0, 40))
        for item in rng.choice(np.arange(1, n_items + 1), size=slate, replace=False):
            rows.append((int(user), int(item), ts, int(rng.random() < 0.35)))
    shown = pl.DataFrame(rows, schema={"user": pl.Int32, "item": pl.Int32, "timestamp": pl.Int64, "click": pl.Int8},
                         orient="row").unique(subset=["user", "item", "timestamp"], keep="first", maintain_order=True)
    return shown.filter(pl.col("click") == 1).drop("click"), shown


def test_count_before_matches_a_plain_count() -> None:
    pairs = random_pairs(3, n_users=10, n_rows=300, n_times=20).sort("user", "timestamp", maintain_order=True)
    rng = np.random.default_rng(0)
    users = rng.integers(0, 12, 200)
    ts = 1_700_000_000_000 + 1000 * rng.integers(-1, 22, 200)
    got = count_before(pairs["user"].to_numpy(), pairs["timestamp"].to_numpy(), users, ts)
    clicks = list(pairs.select("user", "timestamp").iter_rows())
    assert got.tolist() == [sum(cu == u and ct < t for cu, ct in clicks) for u, t in zip(users, ts, strict=True)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("split", ["leave_last", "time"])
@pytest.mark.parametrize(("max_len", "min_history"), [(1, 0), (3, 1), (20, 2)])
def test_exposure_rows_equal_the_reference_builder(seed: int, split: str, max_len: int, min_history: int) -> None:
    pairs, shown = random_exposures(seed)
    items = _item_table(30, seed)
    common = dict(max_len=max_len, min_history=min_history, split=split, valid_frac=0.15, test_frac=0.2)
    rows = build_exposure_rows(pairs, shown, items, **common)
    reference = exposure_rows_reference(pairs, shown, items, **common)
    for name in SPLITS:
        assert rows.collect(name).rows() == reference[name], name
        assert rows.collect(name).schema == ROW_SCHEMA
        summary = rows.summary(name)
        assert summary["rows"] == len(reference[name])
        assert summary["clicks"] == sum(r[5] for r in reference[name])
    assert sum(len(v) for v in reference.values()) > 0


def test_exposure_rows_hold_every_exposure_once_with_its_click_as_label() -> None:
    pairs, shown = random_exposures(5)
    rows = build_exposure_rows(pairs, shown, _item_table(30), max_len=10, min_history=0, split="leave_last",
                               valid_frac=0.1, test_frac=0.1)
    out = pl.concat([rows.collect(name) for name in SPLITS])
    assert out.height == shown.height
    got = sorted(out.select("user_id", "item_id", "event_ts", "label").iter_rows())
    assert got == sorted((u, i, t, float(c)) for u, i, t, c in shown.iter_rows())
    # Clicks of the same request are not in each other's history: every history holds strictly earlier clicks.
    first_click = {(u, i): t for u, i, t in pairs.group_by("user", "item").agg(pl.col("timestamp").min()).iter_rows()}
    for u, seq, _, _, _, _, t in out.iter_rows():
        assert all(first_click[(u, i)] < t for i in seq if i)
    # leave_last: each user's last request (all its exposures) is test, the one before valid.
    test = rows.collect("test")
    last = shown.group_by("user").agg(pl.col("timestamp").max())
    assert sorted(set(test.select("user_id", "event_ts").iter_rows())) == sorted(last.iter_rows())


def test_exposure_rows_refuse_unknown_items() -> None:
    pairs, shown = random_exposures(1)
    with pytest.raises(DataError, match="impressions: item 31 shown to user"):
        build_exposure_rows(pairs, shown.with_columns(item=pl.lit(31, pl.Int32)), _item_table(30), max_len=3,
                            min_history=0, split="time", valid_frac=0.1, test_frac=0.1)
