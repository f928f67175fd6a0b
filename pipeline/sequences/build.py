"""User history sequences, train/valid/test split and sampled non-clicks, in the WWW2025 MMCTR challenge's format.

Split file contract ({train,valid,test}.parquet, `ROW_SCHEMA`), one row per labelled (user, history, target item):
    user_id Int32, item_seq List(Int32) of length max_len (left-padded with 0, most recent item last),
    item_id Int32, likes_level Int8, views_level Int8 (of the target item), label Float32 (1 click, 0 sampled),
    event_ts Int64 (Unix ms of the click event the row belongs to; negatives share their click's history).
Each file's rows are ordered by (event_ts, user_id, the event's place in its user's order), each click followed
by its neg_ratio non-clicks. Histories are leakage-free: a row's item_seq holds only that user's clicks strictly before
the event in the order (timestamp, file row), so ties in timestamp are broken deterministically by file order.

Events (one per click) are split by `split`:
    leave_last  per user, the last event in that order is test, the one before it valid, all earlier ones train.
                The split depends only on an event's place from the end of its user's clicks; `min_history` drops
                events afterwards, so with min_history=1 a user with 2 clicks has a test row and no valid row
                (its valid event has no history), and a user with 1 click has no row at all.
    time        a global time cut: the last test_frac of events by timestamp are test, the valid_frac before
                them valid (cut points are timestamps, so ties never straddle a cut).
Non-clicks are drawn with replacement, `neg_sampling` uniform or popularity-weighted (item weight = clicks in the
whole log + 1), never the target, and never an item the user clicked before the event (`neg_exclude: before`)
or at any time (`ever`).

Scale: at MicroLens-1M size (9M clicks, max_len 100, neg_ratio 4) the rows hold 4e9 history cells (16 GB as
Int32), so they are never all in memory. `build_split_rows` does the per-event work (order, split, negatives) once
in numpy, O(events) memory, and returns a `SplitRows` whose `lazy(name)` assembles one split's rows a chunk of
events at a time, for `sink_parquet` to stream into a file.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import polars as pl
from polars.io.plugins import register_io_source

from pipeline.core.io import DataError
from pipeline.sources.microlens import count_before

SPLITS = ("train", "valid", "test")  # split code k of an event is SPLITS[k]
SplitMethod = Literal["leave_last", "time"]
NegSampling = Literal["uniform", "popularity"]
NegExclude = Literal["before", "ever"]
T = TypeVar("T")
U = TypeVar("U")
ROW_SCHEMA = pl.Schema({
    "user_id": pl.Int32, "item_seq": pl.List(pl.Int32), "item_id": pl.Int32, "likes_level": pl.Int8,
    "views_level": pl.Int8, "label": pl.Float32, "event_ts": pl.Int64,
})
# Events per assembled chunk: 16384 events x (1 + neg_ratio 4) rows x 100 Int32 cells = 33 MB of item_seq. Small
# enough to keep memory flat and the copies cheap (one 16 GB np.repeat is dominated by page faults), large enough
# that sink_parquet's per-frame overhead stays small (4096 events per chunk wrote 9M rows 40% slower).
CHUNK_EVENTS = 16_384
# item_seq cells per assembled chunk, at most: those 33 MB. Rows longer than 500 cells an event (a long max_len)
# take fewer events a chunk (`RowSource.chunk_units`): at max_len 100,000, 16384 events' rows held 20 GB.
CHUNK_CELLS = CHUNK_EVENTS * 5 * 100
# Threads that assemble chunks of rows (RowSource.frames): one per core this process may run on, at most 4.
ASSEMBLY_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
# Rejection rounds before the draws still rejected are made exactly from their event's allowed items; only a user
# who clicked nearly every item gets there, where rejection alone could take millions of rounds.
MAX_REJECTION_ROUNDS = 32
# Bits of each user's Bloom filter of clicked items, as a power of two: 256 bits (32 bytes, 32 MB at 1M users)
# send ~3.5% of a 9-click user's draws to the exact check.
BLOOM_BITS_LOG2 = 8
CHECK_EVENTS = 1 << 16  # events per block of the first rejection check


def order_events(pairs: pl.DataFrame) -> pl.DataFrame:
    """pairs (user, item, timestamp) -> events sorted by (user, timestamp, file row) with `pos` Int64, the
    number of the user's earlier clicks."""
    key = user_time_key(pairs["user"].to_numpy(), pairs["timestamp"].to_numpy())
    if key is None:
        events = sort_events_reference(pairs)
    else:  # one stable sort of one int64 column: ~2x polars' sort by three columns at 9M events
        events = pairs.with_columns(_key=pl.Series(key)).sort("_key", maintain_order=True).drop("_key")
    starts, counts = _user_runs(events["user"].to_numpy())
    pos = np.arange(events.height, dtype=np.int64) - np.repeat(starts, counts)
    return events.with_columns(pos=pl.Series(pos, dtype=pl.Int64))


def sort_events_reference(pairs: pl.DataFrame) -> pl.DataFrame:
    """pairs sorted by (user, timestamp, file row): the plain three-key sort that `order_events` packs into one key."""
    return pairs.with_row_index("_row").sort(["user", "timestamp", "_row"]).drop("_row")


def user_time_key(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray | None:
    """(E,) int64 key that orders events as (user, timestamp) do: (user - min user) in the high bits, (timestamp -
    min timestamp) in the low ones; ties stay ties. None when the two ranges need more than 63 bits together (the
    caller then sorts by both columns) or there are no events."""
    if not len(user):
        return None
    user_min, time_min = int(user.min()), int(timestamp.min())
    user_bits = (int(user.max()) - user_min).bit_length()
    time_bits = (int(timestamp.max()) - time_min).bit_length()
    if user_bits + time_bits > 63:
        return None
    key = user.astype(np.int64) - user_min
    key <<= time_bits
    key |= timestamp.astype(np.int64) - time_min
    return key


def _user_runs(user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) int64 of each run of equal ids in `user` (E,), which is sorted by user."""
    if not len(user):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new = np.empty(len(user), dtype=bool)
    new[0] = True
    np.not_equal(user[1:], user[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    return starts, np.diff(np.append(starts, len(user)))


def history_matrix(item: np.ndarray, pos: np.ndarray, rows: np.ndarray, max_len: int) -> np.ndarray:
    """(len(rows), max_len) int32 histories of events `rows` (int indices) of `order_events`' (E,) item, pos.

    Row k holds the min(pos, max_len) clicks just before event rows[k], oldest first and left-padded with 0:
    because events are sorted by (user, pos), the click j places before event i is event i - j whenever j <= pos.
    """
    return gather_histories(item, rows, np.minimum(pos[rows], max_len), max_len)


def gather_histories(item: np.ndarray, end: np.ndarray, n_hist: np.ndarray, max_len: int) -> np.ndarray:
    """(C, max_len) int32: row k holds item[end[k] - n_hist[k] : end[k]] (n_hist[k] <= max_len clicks of one user,
    oldest first), left-padded with 0. Only the real cells are written (MicroLens histories are mostly padding)."""
    out = np.zeros((len(end), max_len), dtype=np.int32)
    # Cell j of row k's real run (j = 0 .. n_hist[k] - 1, oldest first) is item[end[k] - n_hist[k] + j], written
    # at flat position k * max_len + max_len - n_hist[k] + j: both are a per-row start plus j, and j is a running
    # count minus the row's offset in it, so source = arange + a per-row constant and target = source + another.
    offset = np.cumsum(n_hist) - n_hist  # (C,) first real cell of each row in the run of all of them
    source = np.repeat(end - n_hist - offset, n_hist) + np.arange(int(n_hist.sum()))  # (H,)
    shift = np.arange(len(end)) * max_len + max_len - end  # (C,) target - source of row k's cells
    out.reshape(-1)[source + np.repeat(shift, n_hist)] = item[source]
    return out


def histories_reference(pairs: pl.DataFrame, max_len: int) -> dict[tuple[int, int, int], list[int]]:
    """Plain-Python reference for `history_matrix`: {(user, timestamp, item): left-padded history}.

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


def time_cut_index(q: float, n: int) -> int:
    """Index in the n sorted timestamps of the q-quantile cut point (the `higher` quantile: q * (n - 1) rounded
    up); events at or after that timestamp are on the later side of the cut."""
    return math.ceil(q * (n - 1))


def assign_split(events: pl.DataFrame, split: SplitMethod, valid_frac: float, test_frac: float) -> np.ndarray:
    """(E,) int8 split code (index into SPLITS) of each event from `order_events` (module docstring: `split`;
    valid_frac and test_frac only matter for `time`). `leave_last` needs every click of each user."""
    if split == "leave_last":
        _, counts = _user_runs(events["user"].to_numpy())
        return codes_from_end(np.repeat(counts, counts) - 1 - events["pos"].to_numpy())
    if split == "time":
        return time_split_codes(events["timestamp"].to_numpy(), valid_frac, test_frac)
    raise ValueError(f"unknown split method {split!r} (allowed: leave_last, time)")


def codes_from_end(from_end: np.ndarray) -> np.ndarray:
    """leave_last: (E,) int8 split codes from each event's place counted from its user's end (0 = last)."""
    return (2 - np.minimum(from_end, 2)).astype(np.int8)


def time_split_codes(ts: np.ndarray, valid_frac: float, test_frac: float) -> np.ndarray:
    """time: (E,) int8 split codes of timestamps `ts` by the global quantile cuts (module docstring)."""
    at = [time_cut_index(1 - valid_frac - test_frac, len(ts)), time_cut_index(1 - test_frac, len(ts))]
    valid_start, test_start = np.partition(ts, at)[at]
    return ((ts >= valid_start).astype(np.int8) + (ts >= test_start)).astype(np.int8)


def bloom_bit(item: np.ndarray) -> np.ndarray:
    """Bloom-filter bit (uint32, 0 .. 2**BLOOM_BITS_LOG2 - 1, shape of `item`) of each item id: the top bits of a
    multiplicative (Fibonacci) hash, so ids that differ only in high bits still spread over the bits."""
    return (item.astype(np.uint32) * np.uint32(0x9E3779B1)) >> np.uint32(32 - BLOOM_BITS_LOG2)


def bloom_filters(item: np.ndarray, user_start: np.ndarray) -> np.ndarray:
    """(U * W,) uint64, W = 2**BLOOM_BITS_LOG2 / 64 words per user: words u*W .. u*W + W - 1 have bit
    `bloom_bit(i)` set for every item i in the u-th run item[user_start[u]:user_start[u + 1]] of the (E,) item ids
    (the runs cover item; user_start (U,) ascending, from 0)."""
    words = 1 << (BLOOM_BITS_LOG2 - 6)
    bit = bloom_bit(item)
    one = np.left_shift(np.uint64(1), (bit & 63).astype(np.uint64))  # (E,) the item's bit within its word
    word = bit >> 6
    out = np.zeros((len(user_start), words), dtype=np.uint64)
    if len(user_start):
        for w in range(words):  # an OR over each user's run, one word at a time (np.bitwise_or.at is 3x slower)
            out[:, w] = np.bitwise_or.reduceat(np.where(word == w, one, np.uint64(0)), user_start)
    return out.reshape(-1)


def bloom_contains(bloom: np.ndarray, user_no: np.ndarray, item: np.ndarray) -> np.ndarray:
    """bool (broadcast shape of user_no, item): False where item was certainly not in user `user_no`'s run of
    `bloom_filters`; True where it may have been (it was, or another item of the run shares its bit)."""
    bit = bloom_bit(item)
    word = bloom[user_no * (1 << (BLOOM_BITS_LOG2 - 6)) + (bit >> 6)]
    return (word >> (bit & 63).astype(np.uint64)) & np.uint64(1) != 0


def sample_negatives(
    events: pl.DataFrame, n_items: int, neg_ratio: int, seed: int, *, sampling: NegSampling = "uniform",
    exclude: NegExclude = "before",
) -> np.ndarray:
    """(E, neg_ratio) int32 non-clicks for the E events of `order_events`, each drawn independently from the items
    1..n_items except the event's own item and the user's clicks before the event (`exclude="before"`, by `pos`)
    or at any time (`"ever"`); uniformly, or (`sampling="popularity"`) with probability proportional to the item's
    number of clicks in `events` + 1.

    Vectorised rejection sampling over all draws at once, then over the rejected ones, MAX_REJECTION_ROUNDS times;
    what is still rejected is drawn exactly from its event's allowed items (`AllowedRanks`). `events` must hold
    every click of each user (all of `order_events`' rows), not a filtered subset. The result depends only on the
    events and `seed`. Raises DataError naming the user when an event leaves no item to sample.
    """
    if sampling not in ("uniform", "popularity"):
        raise ValueError(f"unknown sampling {sampling!r} (allowed: uniform, popularity)")
    if exclude not in ("before", "ever"):
        raise ValueError(f"unknown exclusion {exclude!r} (allowed: before, ever)")
    user = events["user"].to_numpy().astype(np.int64)
    item = events["item"].to_numpy()
    pos = events["pos"].to_numpy()
    stride = n_items + 1
    # Distinct (user, item) clicks as sorted keys, with the pos of the first click. Events are in (user, pos) order,
    # so the keys are sorted by user already: a stable argsort (timsort, which merges those runs) is fast, and it
    # puts each key's earliest event first.
    key = user * stride + item
    by_key = np.argsort(key, kind="stable")
    starts_key = np.ones(len(key), dtype=bool)
    np.not_equal(key[by_key[1:]], key[by_key[:-1]], out=starts_key[1:])
    first = by_key[starts_key]  # (K,) each distinct key's first event, in key order
    keys, first_pos = key[first], pos[first]
    new_item = np.zeros(len(key), dtype=bool)  # (E,) the event is its user's first click of its item
    new_item[first] = True
    user_start, user_len = _user_runs(user)
    # Distinct items each user clicked before the event (repeat clicks count once): the new_item events before it.
    seen = np.cumsum(new_item) - new_item
    seen -= np.repeat(seen[user_start], user_len)

    if exclude == "before":
        n_before = seen
        excluded = n_before + new_item  # + the target if it is new
        what = "distinct items before an event"
    else:
        last = user_start + user_len - 1
        n_before = excluded = np.repeat(seen[last] + new_item[last], user_len)
        what = "distinct items in all (neg_exclude=ever)"
    if (excluded >= n_items).any():
        e = int(np.argmax(excluded >= n_items))
        raise DataError(f"user {user[e]} has clicked {n_before[e]} {what}; too few of the {n_items} items remain "
                        f"to sample non-clicks")
    # A Bloom filter of each user's clicked items: a draw whose bit is clear was never clicked by its user, which
    # settles nearly every draw with one lookup in a small table, where a binary search over all keys costs ~23
    # cache misses. Only draws whose bit is set take the exact check, so the draws are the same either way.
    user_no = np.repeat(np.arange(len(user_start)), user_len)  # (E,) dense user number
    bloom = bloom_filters(item, user_start)

    rng = np.random.default_rng(seed)
    weights = np.ones(n_items, dtype=np.int64)  # (N,) weight of item i + 1
    if sampling == "popularity":
        weights += np.bincount(item, minlength=stride)[1:]
        # Item i + 1 repeated weights[i] times (clicks + N cells): one lookup per draw, where a binary search
        # over the cumulative weights costs 17 cache-missing steps per draw at 92k items.
        owner = np.repeat(np.arange(1, stride, dtype=np.int32), weights)

    def draw(n: int) -> np.ndarray:  # (n,) int32 items drawn with probability weights / weights.sum()
        if sampling == "uniform":
            return rng.integers(1, stride, size=n, dtype=np.int32)
        return owner[rng.integers(0, len(owner), size=n)]

    def rejected(rows: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """bool, shape of `cand`: candidate items `cand` of the events `rows` (same shape, or broadcast)."""
        out = np.zeros(cand.shape, dtype=bool) if exclude == "ever" else cand == item[rows]
        maybe = np.nonzero(bloom_contains(bloom, user_no[rows], cand))
        r, c = np.broadcast_to(rows, cand.shape)[maybe], cand[maybe]
        ck = user[r] * stride + c
        at = np.minimum(np.searchsorted(keys, ck), len(keys) - 1)
        clicked = keys[at] == ck
        out[maybe] |= clicked if exclude == "ever" else clicked & (first_pos[at] < pos[r])
        return out

    out = draw(len(events) * neg_ratio).reshape(len(events), neg_ratio)
    flat = out.reshape(-1)
    # The first check goes CHECK_EVENTS events at a time, so its temporaries stay in cache, and broadcasts the
    # (C, 1) event columns over the (C, R) draws: no (E*R,) gathers.
    todo = np.concatenate([np.zeros(0, np.int64)] + [  # flat indices of the rejected draws
        lo * neg_ratio + np.flatnonzero(rejected(np.arange(lo, hi)[:, None], out[lo:hi]))
        for lo, hi in ((lo, min(lo + CHECK_EVENTS, len(events))) for lo in range(0, len(events), CHECK_EVENTS))])
    for _ in range(MAX_REJECTION_ROUNDS):
        if not todo.size:
            break
        flat[todo] = draw(todo.size)
        todo = todo[rejected(todo // neg_ratio, flat[todo])]

    # Exact draws for the few events whose allowed set is too small for rejection to finish quickly (a heavy user
    # sends thousands of events here: building each one's (N,) allowed set made that quadratic in N). An event's
    # allowed items are the items its user never clicks, mapped by `AllowedRanks` from the user's sorted clicks,
    # then (`before`) the user's items first clicked after the event, a suffix of them in first-click order. One rng
    # call per event draws r in [0, allowed weight) and takes the item r falls on in that order.
    cum_weights = np.concatenate([np.zeros(1, np.int64), np.cumsum(weights)])  # (N+1,) weight of items 1..i
    rows, first_slot, n_slots = np.unique(todo // neg_ratio, return_index=True, return_counts=True)
    fallback_user = None
    for e, lo, n in zip(rows.tolist(), first_slot.tolist(), n_slots.tolist(), strict=True):
        if user[e] != fallback_user:
            fallback_user = user[e]
            mine = slice(np.searchsorted(keys, user[e] * stride), np.searchsorted(keys, (user[e] + 1) * stride))
            never = AllowedRanks.of(keys[mine] - user[e] * stride, cum_weights)
            by_first = np.argsort(first_pos[mine], kind="stable")
            later = (keys[mine] - user[e] * stride)[by_first]  # (K,) the user's items in first-click order
            later_pos = first_pos[mine][by_first]
            later_cum = np.concatenate([np.zeros(1, np.int64), np.cumsum(weights[later - 1])])  # (K+1,)
        m = np.searchsorted(later_pos, pos[e], side="right") if exclude == "before" else len(later)
        r = rng.integers(0, never.total + later_cum[-1] - later_cum[m], size=n)
        got = never.item(np.minimum(r, never.total - 1))
        up = r >= never.total  # past the never-clicked items: one of later[m:]
        got[up] = later[np.searchsorted(later_cum, later_cum[m] + r[up] - never.total, side="right") - 1]
        flat[todo[lo:lo + n]] = got
    return out


@dataclass(frozen=True)
class AllowedRanks:
    """Rank inversion over the items 1..N not in a banned set: `item(r)` is the allowed item (ascending ids) whose
    cumulative weight first exceeds r, so r uniform in [0, total) draws an allowed item with probability weight /
    total. The same map as `allowed[searchsorted(cumsum(weights[allowed - 1]), r, side="right")]` over the explicit
    allowed set, in O(k) to build (`of`) and O(log N) per draw instead of O(N).

    cum_weights (N+1,) int64, cum_weights[i] the weight of items 1..i (every weight >= 1); allowed_below (k,) int64,
    the allowed weight under each banned id (non-decreasing); banned_before (k+1,) int64, the weight of the first j
    banned ids.
    """

    cum_weights: np.ndarray
    allowed_below: np.ndarray
    banned_before: np.ndarray

    @classmethod
    def of(cls, banned: np.ndarray, cum_weights: np.ndarray) -> AllowedRanks:
        """The inversion for `banned` (k,) ascending distinct ids in 1..N."""
        under = cum_weights[banned - 1]  # (k,) weight of all items under each banned id
        before = np.concatenate([np.zeros(1, np.int64), np.cumsum(cum_weights[banned] - under)])
        return cls(cum_weights, under - before[:-1], before)

    @property
    def total(self) -> int:
        """Weight of all allowed items."""
        return int(self.cum_weights[-1] - self.banned_before[-1])

    def item(self, r: np.ndarray) -> np.ndarray:
        """(n,) int32 allowed items of the (n,) ints r in [0, total)."""
        # The item x holding r has every banned id under it counted here (their allowed weight below is <= r) and
        # none above it (theirs includes x's weight, so > r); past those j banned ids, x spans the overall
        # cumulative weight r + banned_before[j].
        j = np.searchsorted(self.allowed_below, r, side="right")  # (n,)
        return np.searchsorted(self.cum_weights, r + self.banned_before[j], side="right").astype(np.int32)


def stable_order(*keys: np.ndarray) -> np.ndarray:
    """(n,) int64 permutation that sorts n rows by keys[0], then keys[1], ..., ties kept in row order (as
    np.lexsort(keys[::-1])). polars' sort, multi-threaded: 0.43 s for 7M timestamps where numpy's stable argsort
    takes 1.1 s."""
    frame = pl.DataFrame({f"k{i}": key for i, key in enumerate(keys)}).with_row_index("row")
    return frame.sort([f"k{i}" for i in range(len(keys))], maintain_order=True)["row"].to_numpy().astype(np.int64)


def ordered_map(fn: Callable[[T], U], items: Iterable[T], threads: int) -> Iterator[U]:
    """fn over items on `threads` threads, yielded in the order of items, with at most 2 * threads results pending
    (bounded memory); threads <= 1 is a plain map. Closing the iterator early cancels what has not started."""
    if threads <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future[U]] = deque()
    pool = ThreadPoolExecutor(threads)
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # Not `with pool` (shutdown(wait=True)): garbage collection may close an abandoned iterator on one of the
        # pool's own threads, which cannot join itself. A task already running finishes on its own.
        pool.shutdown(wait=False, cancel_futures=True)


class RowSource:
    """What build_sequences streams into the split files. A subclass gives `units_of(name)`, the events (or
    exposures) of split `name` in row order, and `frame_of(units)`, their rows (ROW_SCHEMA, module order);
    `frames` assembles the chunks on ASSEMBLY_THREADS threads (numpy releases the GIL in the gathers and copies that
    dominate), in order, and `lazy` and `collect` are built on it."""

    keep: np.ndarray  # (units,) bool: the unit has at least min_history earlier clicks (no row otherwise)

    @property
    def unit_cells(self) -> int:
        """item_seq cells in one unit's rows."""
        raise NotImplementedError

    @property
    def chunk_units(self) -> int:
        """Units per assembled chunk: CHUNK_EVENTS, or as many (at least 1) as keep to CHUNK_CELLS cells."""
        return min(CHUNK_EVENTS, max(1, CHUNK_CELLS // self.unit_cells))

    def units_of(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def frame_of(self, units: np.ndarray) -> pl.DataFrame:
        raise NotImplementedError

    def frames(self, name: str, chunk: int | None = None) -> Iterator[pl.DataFrame]:
        """Split `name`'s rows (ROW_SCHEMA, module order) as frames of `chunk` (default `chunk_units`) units' rows
        each (the last may be shorter); none for an empty split. Chunking changes only where frames break, never
        the rows."""
        idx = self.units_of(name)
        chunk = self.chunk_units if chunk is None else chunk
        yield from ordered_map(self.frame_of, (idx[lo:lo + chunk] for lo in range(0, len(idx), chunk)),
                               ASSEMBLY_THREADS)

    def lazy(self, name: str, chunk: int | None = None) -> pl.LazyFrame:
        """Split `name`'s rows as a LazyFrame whose source is `frames`, so `sink_parquet` streams them to a file
        in bounded memory. Uses polars' IO-plugin API (`register_io_source`, marked unstable; polars is pinned)."""

        def source(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
                   _batch_size: int | None) -> Iterator[pl.DataFrame]:
            left = math.inf if n_rows is None else n_rows
            for frame in self.frames(name, chunk):
                if predicate is not None:
                    frame = frame.filter(predicate)
                if with_columns is not None:
                    frame = frame.select(with_columns)
                if left <= frame.height:
                    yield frame.head(int(left))
                    return
                left -= frame.height
                yield frame

        return register_io_source(source, schema=ROW_SCHEMA)

    def collect(self, name: str) -> pl.DataFrame:
        """Split `name`'s rows in one frame (ROW_SCHEMA); for data that fits in memory."""
        return pl.concat([pl.DataFrame(schema=ROW_SCHEMA), *self.frames(name)])


@dataclass(frozen=True, eq=False)
class SplitRows(RowSource):
    """Every labelled row, held as per-event arrays (E events in `order_events` order, N items, R = neg_ratio).

    user, item (E,) int32; ts, pos (E,) int64; split (E,) int8 code (index into SPLITS); keep (E,) bool (the
    event has at least min_history earlier clicks); negatives (E, R) int32; likes, views (N+1,) int8, the levels
    of item id i at index i. Rows of one split are assembled from these on demand (`frames`, `lazy`).
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    pos: np.ndarray
    split: np.ndarray
    keep: np.ndarray
    negatives: np.ndarray
    likes: np.ndarray
    views: np.ndarray
    max_len: int

    @property
    def unit_cells(self) -> int:
        return self.max_len * (1 + self.negatives.shape[1])  # a click's row and its R non-clicks'

    def units_of(self, name: str) -> np.ndarray:
        """(C,) int64 indices of the kept events of split `name`, in row order (event_ts, user, pos)."""
        idx = np.flatnonzero(self.keep & (self.split == SPLITS.index(name)))
        # idx is in (user, pos) order, so a stable sort by timestamp leaves ties in (user, pos) order.
        return idx[stable_order(self.ts[idx])]

    def frame_of(self, units: np.ndarray) -> pl.DataFrame:
        """The (1 + R) rows of each event in `units` (C,), a click then its R non-clicks."""
        per_event = 1 + self.negatives.shape[1]
        label = np.zeros(per_event, dtype=np.float32)
        label[0] = 1
        hist = history_matrix(self.item, self.pos, units, self.max_len)  # (C, L)
        item_id = np.concatenate([self.item[units, None], self.negatives[units]], axis=1).reshape(-1)  # (C*(1+R),)
        return pl.DataFrame({
            "user_id": np.repeat(self.user[units], per_event),
            "item_seq": pl.Series(np.repeat(hist, per_event, axis=0)).cast(pl.List(pl.Int32)),
            "item_id": item_id,
            "likes_level": self.likes[item_id],
            "views_level": self.views[item_id],
            "label": np.tile(label, len(units)),
            "event_ts": np.repeat(self.ts[units], per_event),
        })

    def summary(self, name: str) -> dict[str, float | int | None]:
        """rows, clicks and mean_history (non-padding cells of item_seq per row; None when empty) of `name`."""
        idx = self.units_of(name)
        n_hist = np.minimum(self.pos[idx], self.max_len)
        return {"rows": len(idx) * (1 + self.negatives.shape[1]), "clicks": len(idx),
                "mean_history": float(n_hist.mean()) if len(idx) else None}


def build_split_rows(
    pairs: pl.DataFrame, item_features: pl.DataFrame, *, max_len: int, min_history: int, split: SplitMethod,
    valid_frac: float, test_frac: float, neg_ratio: int, neg_sampling: NegSampling, neg_exclude: NegExclude,
    seed: int,
) -> SplitRows:
    """Raw clicks (user, item Int32; timestamp Int64) and the item table (item_id 0..N, likes_level, views_level)
    -> every labelled row (module contract), assembled per split by the returned SplitRows."""
    n_items = item_features.height - 1
    ids = item_features["item_id"].to_numpy()
    if not np.array_equal(np.sort(ids), np.arange(n_items + 1)):
        raise DataError(f"item table: item_id must be 0..{n_items}, each once")
    unknown = pairs.filter((pl.col("item") > n_items))
    if unknown.height:
        raise DataError(f"pairs: item {unknown['item'][0]} of user {unknown['user'][0]} is not a known item "
                        f"(items are 1..{n_items})")
    events = order_events(pairs)
    pos = events["pos"].to_numpy()
    keep = pos >= min_history
    if not keep.any():
        raise DataError(f"no click has at least build_sequences.min_history={min_history} earlier clicks")
    # Split and sample over every event before the min_history filter: leave_last counts from each user's last
    # click and the sampler learns each user's earlier clicks from the events it is given.
    codes = assign_split(events, split, valid_frac, test_frac)
    negatives = sample_negatives(events, n_items, neg_ratio, seed, sampling=neg_sampling, exclude=neg_exclude)
    likes = np.zeros(n_items + 1, dtype=np.int8)
    views = np.zeros(n_items + 1, dtype=np.int8)
    likes[ids] = item_features["likes_level"].to_numpy()
    views[ids] = item_features["views_level"].to_numpy()
    return SplitRows(user=events["user"].to_numpy().astype(np.int32), item=events["item"].to_numpy().astype(np.int32),
                     ts=events["timestamp"].to_numpy().astype(np.int64), pos=pos, split=codes, keep=keep,
                     negatives=negatives, likes=likes, views=views, max_len=max_len)


@dataclass(frozen=True, eq=False)
class ExposureRows(RowSource):
    """Every exposure of an impressions log as one labelled row (negatives: exposures).

    click_item (C,) int32: the clicks in `order_events` order (user, timestamp, file row). Per exposure (X, in
    impressions file order): user, item int32; ts int64; label float32 (the click flag); end int64, the index in
    click_item one past the user's last click strictly before ts; n_before int64, how many clicks that is; split
    int8 code; keep bool (n_before >= min_history). likes, views (N+1,) int8 by item id. A row's history is
    click_item[end - min(n_before, max_len) : end].
    """

    click_item: np.ndarray
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    label: np.ndarray
    end: np.ndarray
    n_before: np.ndarray
    split: np.ndarray
    keep: np.ndarray
    likes: np.ndarray
    views: np.ndarray
    max_len: int

    @property
    def unit_cells(self) -> int:
        return self.max_len

    def units_of(self, name: str) -> np.ndarray:
        """(R,) int64 indices of the kept exposures of split `name`, ordered by (ts, user, file row)."""
        idx = np.flatnonzero(self.keep & (self.split == SPLITS.index(name)))
        return idx[stable_order(self.ts[idx], self.user[idx])]

    def frame_of(self, units: np.ndarray) -> pl.DataFrame:
        """One row per exposure in `units` (C,); event_ts is the exposure's time."""
        return pl.DataFrame({
            "user_id": self.user[units],
            "item_seq": pl.Series(gather_histories(self.click_item, self.end[units],
                                                   np.minimum(self.n_before[units], self.max_len), self.max_len)
                                  ).cast(pl.List(pl.Int32)),
            "item_id": self.item[units],
            "likes_level": self.likes[self.item[units]],
            "views_level": self.views[self.item[units]],
            "label": self.label[units],
            "event_ts": self.ts[units],
        })

    def summary(self, name: str) -> dict[str, float | int | None]:
        """rows, clicks (positive rows) and mean_history of `name`, as SplitRows.summary."""
        idx = self.units_of(name)
        n_hist = np.minimum(self.n_before[idx], self.max_len)
        return {"rows": len(idx), "clicks": int(self.label[idx].sum()),
                "mean_history": float(n_hist.mean()) if len(idx) else None}


def exposure_split(impressions: pl.DataFrame, split: SplitMethod, valid_frac: float, test_frac: float
                   ) -> np.ndarray:
    """(X,) int8 split codes of exposures (user, timestamp columns). leave_last works on requests (a user's
    exposures that share a timestamp): per user the last request is test, the one before valid; time cuts the
    exposures' timestamps as `assign_split` cuts clicks'."""
    if split == "time":
        return time_split_codes(impressions["timestamp"].to_numpy(), valid_frac, test_frac)
    if split != "leave_last":
        raise ValueError(f"unknown split method {split!r} (allowed: leave_last, time)")
    from_end = impressions.select(
        (pl.col("timestamp").rank("dense", descending=True).over("user") - 1).alias("from_end"))["from_end"]
    return codes_from_end(from_end.to_numpy().astype(np.int64))


def build_exposure_rows(
    pairs: pl.DataFrame, impressions: pl.DataFrame, item_features: pl.DataFrame, *, max_len: int, min_history: int,
    split: SplitMethod, valid_frac: float, test_frac: float,
) -> ExposureRows:
    """Raw clicks (user, item Int32; timestamp Int64: the histories), exposures (user, item, timestamp, click: the
    labelled rows) and the item table -> every exposure as a row whose history is its user's clicks strictly
    before it (module contract; no sampling)."""
    n_items = item_features.height - 1
    unknown = impressions.filter(pl.col("item") > n_items)
    if unknown.height:
        raise DataError(f"impressions: item {unknown['item'][0]} shown to user {unknown['user'][0]} is not a "
                        f"known item (items are 1..{n_items})")
    events = order_events(pairs)
    click_user = events["user"].to_numpy().astype(np.int64)
    user = impressions["user"].to_numpy().astype(np.int64)
    ts = impressions["timestamp"].to_numpy()
    n_before = count_before(click_user, events["timestamp"].to_numpy(), user, ts)
    keep = n_before >= min_history
    if not keep.any():
        raise DataError(f"no exposure has at least build_sequences.min_history={min_history} earlier clicks")
    likes = np.zeros(n_items + 1, dtype=np.int8)
    views = np.zeros(n_items + 1, dtype=np.int8)
    ids = item_features["item_id"].to_numpy()
    likes[ids] = item_features["likes_level"].to_numpy()
    views[ids] = item_features["views_level"].to_numpy()
    return ExposureRows(
        click_item=events["item"].to_numpy().astype(np.int32), user=user.astype(np.int32),
        item=impressions["item"].to_numpy().astype(np.int32), ts=ts.astype(np.int64),
        label=impressions["click"].to_numpy().astype(np.float32),
        end=np.searchsorted(click_user, user, side="left") + n_before, n_before=n_before,
        split=exposure_split(impressions, split, valid_frac, test_frac), keep=keep, likes=likes, views=views,
        max_len=max_len)


def exposure_rows_reference(
    pairs: pl.DataFrame, impressions: pl.DataFrame, item_features: pl.DataFrame, *, max_len: int, min_history: int,
    split: SplitMethod, valid_frac: float, test_frac: float,
) -> dict[str, list[tuple]]:
    """Plain-Python reference for `build_exposure_rows`: {split name: rows as tuples in ROW_SCHEMA column order},
    one exposure at a time."""
    levels = {i: (likes, views) for i, likes, views in
              item_features.select("item_id", "likes_level", "views_level").iter_rows()}
    clicks: dict[int, list[tuple[int, int, int]]] = {}
    for row, (user, item, ts) in enumerate(pairs.iter_rows()):
        clicks.setdefault(user, []).append((ts, row, item))
    shown = list(impressions.iter_rows())
    requests: dict[int, list[int]] = {}
    for user, _, ts, _ in shown:
        requests.setdefault(user, []).append(ts)
    all_ts = sorted(ts for _, _, ts, _ in shown)
    valid_start = all_ts[time_cut_index(1 - valid_frac - test_frac, len(all_ts))]
    test_start = all_ts[time_cut_index(1 - test_frac, len(all_ts))]
    out: dict[str, list[tuple]] = {name: [] for name in SPLITS}
    keyed: dict[str, list[tuple]] = {name: [] for name in SPLITS}
    for row, (user, item, ts, click) in enumerate(shown):
        if split == "leave_last":
            later = len({t for t in requests[user] if t > ts})
            name = SPLITS[max(0, 2 - later)]
        else:
            name = "test" if ts >= test_start else "valid" if ts >= valid_start else "train"
        past = [it for t, _, it in sorted(clicks.get(user, [])) if t < ts]
        if len(past) < min_history:
            continue
        seq = past[-max_len:]
        keyed[name].append(((ts, user, row), (user, [0] * (max_len - len(seq)) + seq, item, *levels[item],
                                              float(click), ts)))
    for name, rows in keyed.items():
        out[name] = [r for _, r in sorted(rows)]
    return out


def split_rows_reference(
    pairs: pl.DataFrame, item_features: pl.DataFrame, negatives: np.ndarray, *, max_len: int, min_history: int,
    split: SplitMethod, valid_frac: float, test_frac: float,
) -> dict[str, list[tuple]]:
    """Plain-Python reference for `build_split_rows`: {split name: rows as tuples in ROW_SCHEMA column order}.

    `negatives` (E, R) are the non-clicks of the events in (user, timestamp, file row) order, as
    `sample_negatives` returns them; everything else (order, histories, split, filter, side features, row order)
    is recomputed here one event at a time.
    """
    levels = {i: (likes, views) for i, likes, views in
              item_features.select("item_id", "likes_level", "views_level").iter_rows()}
    ordered = sorted((user, ts, row, item) for row, (user, item, ts) in enumerate(pairs.iter_rows()))
    by_user: dict[int, list[tuple[int, int]]] = {}
    for user, ts, _, item in ordered:
        by_user.setdefault(user, []).append((ts, item))
    all_ts = sorted(ts for _, ts, _, _ in ordered)

    valid_start = all_ts[time_cut_index(1 - valid_frac - test_frac, len(all_ts))]
    test_start = all_ts[time_cut_index(1 - test_frac, len(all_ts))]
    events: dict[str, list[tuple[int, int, int, int, list[int], list[int]]]] = {name: [] for name in SPLITS}
    e = 0
    for user, clicks in by_user.items():
        for pos, (ts, item) in enumerate(clicks):
            if split == "leave_last":
                name = SPLITS[max(0, 2 - (len(clicks) - 1 - pos))]
            else:
                name = "test" if ts >= test_start else "valid" if ts >= valid_start else "train"
            if pos >= min_history:
                past = [it for _, it in clicks[:pos]][-max_len:]
                events[name].append((ts, user, pos, item, [0] * (max_len - len(past)) + past, negatives[e].tolist()))
            e += 1
    out: dict[str, list[tuple]] = {}
    for name, evs in events.items():
        out[name] = []
        for ts, user, _, item, seq, negs in sorted(evs, key=lambda ev: ev[:3]):
            for target, label in [(item, 1.0)] + [(n, 0.0) for n in negs]:
                out[name].append((user, seq, target, *levels[target], label, ts))
    return out
