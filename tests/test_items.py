"""pipeline/core/items.py: item tables are built by id, never by row position."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.core.io import DataError
from pipeline.core.items import check_item_table, scatter_by_id
from pipeline.sequences.item_features import (
    build_item_features,
    dense_tag_ids,
    quantile_levels,
    tag_vocabulary,
)

# ---------------------------------------------------------------------------------------------- scatter_by_id


def test_scatter_places_by_id_regardless_of_order() -> None:
    rng = np.random.default_rng(0)
    n = 50
    ids = np.arange(1, n + 1)
    values = rng.normal(size=(n, 3)).astype(np.float32)
    expected = np.zeros((n + 1, 3), dtype=np.float32)
    for i, v in zip(ids, values):
        expected[i] = v
    for _ in range(3):
        perm = rng.permutation(n)
        out = scatter_by_id(ids[perm], values[perm], n + 1)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, expected)


def test_scatter_leaves_missing_ids_and_row_0_zero() -> None:
    out = scatter_by_id(np.array([4, 2]), np.array([40, 20], dtype=np.int8), 6)
    assert out.tolist() == [0, 0, 20, 0, 40, 0]
    assert out.dtype == np.int8


def test_scatter_does_not_mutate_inputs() -> None:
    ids, values = np.array([2, 1]), np.array([5.0, 6.0])
    scatter_by_id(ids, values, 3)
    assert ids.tolist() == [2, 1] and values.tolist() == [5.0, 6.0]


@pytest.mark.parametrize(("ids", "match"), [
    ([1, 2, 2], "unique"),
    ([0, 1, 2], r"1\.\.4"),
    ([1, 5], r"1\.\.4"),
    ([-1, 2], r"1\.\.4"),
])
def test_scatter_rejects_duplicate_or_out_of_range_ids(ids: list[int], match: str) -> None:
    with pytest.raises(DataError, match=match):
        scatter_by_id(np.array(ids), np.ones(len(ids)), 5)


# ---------------------------------------------------------------------------------------------- check_item_table


def _table(ids: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"item_id": pl.Series(ids, dtype=pl.Int32), "x": pl.Series(range(len(ids)))})


def test_check_item_table_accepts_0_to_n() -> None:
    check_item_table(_table(list(range(6))), "t.parquet")


@pytest.mark.parametrize(("ids", "row", "holds"), [
    ([0, 1, 3, 2, 4], 2, "3"),  # shuffled rows
    ([1, 2, 3], 0, "1"),  # no padding row 0
    ([0, 1, 2, 2], 3, "2"),  # duplicate
    ([0, 1, 2, 4], 3, "4"),  # gap
])
def test_check_item_table_names_the_first_bad_row(ids: list[int], row: int, holds: str) -> None:
    with pytest.raises(DataError) as info:
        check_item_table(_table(ids), "t.parquet")
    assert str(info.value).startswith(f"t.parquet: row {row} holds item_id {holds};")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- quantile_levels


def test_quantile_levels_equal_mass_on_distinct_values() -> None:
    rng = np.random.default_rng(1)
    values = rng.permutation(np.arange(1000) ** 2)  # skewed, like view counts
    levels = quantile_levels(values, 10)
    assert levels.dtype == np.int8
    counts = np.bincount(levels, minlength=10)
    assert counts.size == 10
    assert (np.abs(counts - 100) <= 1).all(), counts


@pytest.mark.parametrize("n_levels", [2, 5, 11, 101])
def test_quantile_levels_range_and_monotone(n_levels: int) -> None:
    rng = np.random.default_rng(n_levels)
    values = rng.geometric(0.01, size=3000)  # many ties
    levels = quantile_levels(values, n_levels)
    assert levels.min() >= 0 and levels.max() <= n_levels - 1
    order = np.argsort(values, kind="stable")
    assert (np.diff(levels[order].astype(int)) >= 0).all()  # monotone in the value
    for v in np.unique(values)[:50]:
        assert np.unique(levels[values == v]).size == 1  # equal values share a level
    assert levels[np.argmin(values)] == 0 and levels[np.argmax(values)] == n_levels - 1


# ---------------------------------------------------------------------------------------------- dense_tag_ids


def test_dense_tag_ids_rank_the_distinct_ids_and_keep_the_padding() -> None:
    tags = pl.Series("item_tags", [[0, 0], [0, 2**31 - 1], [5, 7], [0, 5]], dtype=pl.List(pl.Int64))
    dense, k = dense_tag_ids(tags)
    assert k == 3 and dense.name == "item_tags" and dense.dtype == pl.List(pl.Int32)
    assert dense.to_list() == [[0, 0], [0, 3], [1, 2], [0, 1]]


@pytest.mark.parametrize("rows", [[[0, 0], [0, 1], [2, 3]], [[0, 0], [3, 1], [2, 2]], [[], []]])
def test_dense_tag_ids_leave_ids_that_are_already_one_to_k(rows: list) -> None:
    tags = pl.Series("item_tags", rows, dtype=pl.List(pl.Int32))
    dense, k = dense_tag_ids(tags)
    assert dense.equals(tags) and k == max((max(r) for r in rows if r), default=0)


# ---------------------------------------------------------------------------------------------- build_item_features


def _inputs() -> tuple[np.ndarray, pl.DataFrame, pl.DataFrame]:
    ids = np.array([3, 1, 5, 2, 4, 6])
    lv = pl.DataFrame({
        "item_id": pl.Series([1, 2, 3, 4, 5, 99], dtype=pl.Int32),  # 6 has no counts; 99 is not an item
        "likes": pl.Series([5, 50, 0, 500, 5000, 1], dtype=pl.Int64),
        "views": pl.Series([900, 10, 20, 30, 40, 1], dtype=pl.Int64),
    })
    tags = pl.DataFrame({
        "item_id": pl.Series([4, 2, 1, 3, 5, 6], dtype=pl.Int32),
        "tags": pl.Series([["d", "a"], ["b", "a"], [], ["a", "b", "c", "d", "e"], ["e"], ["c"]],
                          dtype=pl.List(pl.Utf8)),
    })
    return ids, lv, tags


def test_build_item_features_contract() -> None:
    ids, lv, tags = _inputs()
    frame, vocab = build_item_features(ids, lv, tags, max_tags=3, n_levels=4)
    assert frame.schema == pl.Schema({"item_id": pl.Int32, "item_tags": pl.List(pl.Int32),
                                      "likes_level": pl.Int8, "views_level": pl.Int8})
    assert frame["item_id"].to_list() == list(range(7))
    check_item_table(frame, "items")

    # first appearance over items sorted by id: item 2 -> b, a; item 3 -> c, d, e
    assert vocab == {"b": 1, "a": 2, "c": 3, "d": 4, "e": 5}
    assert frame["item_tags"].to_list() == [
        [0, 0, 0],  # padding
        [0, 0, 0],  # item 1: no tags
        [0, 1, 2],  # item 2: b, a left-padded
        [2, 1, 3],  # item 3: a, b, c, (d, e truncated)
        [0, 4, 2],  # item 4: d, a
        [0, 0, 5],  # item 5: e
        [0, 0, 3],  # item 6: c
    ]

    # levels are quantiles over the items with counts (1..5), scattered to their ids; 0 for row 0 and item 6
    known = lv.filter(pl.col("item_id") <= 6).sort("item_id")
    for col in ("likes", "views"):
        expected = [0, *quantile_levels(known[col].to_numpy(), 4).tolist(), 0]
        assert frame[f"{col}_level"].to_list() == expected
    assert frame.row(0) == (0, [0, 0, 0], 0, 0)


def test_build_item_features_ignores_input_row_order() -> None:
    ids, lv, tags = _inputs()
    reference, ref_vocab = build_item_features(ids, lv, tags, max_tags=3, n_levels=4)
    rng = np.random.default_rng(2)
    for _ in range(4):
        frame, vocab = build_item_features(
            rng.permutation(ids), lv.sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 30))),
            tags.sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 30))), max_tags=3, n_levels=4)
        assert frame.equals(reference)
        assert vocab == ref_vocab


def test_levels_follow_their_item_on_a_larger_table() -> None:
    rng = np.random.default_rng(3)
    n = 400
    likes = rng.integers(0, 10_000, size=n)
    lv = pl.DataFrame({"item_id": pl.Series(np.arange(1, n + 1), dtype=pl.Int32),
                       "likes": pl.Series(likes, dtype=pl.Int64), "views": pl.Series(likes * 3, dtype=pl.Int64)})
    tags = pl.DataFrame({"item_id": pl.Series([1], dtype=pl.Int32), "tags": pl.Series([["x"]])})
    ids = np.arange(1, n + 1)
    frame, _ = build_item_features(ids, lv.sample(fraction=1.0, shuffle=True, seed=5), tags,
                                   max_tags=2, n_levels=11)
    expected = quantile_levels(likes, 11)
    assert frame["likes_level"].to_list()[1:] == expected.tolist()
    assert frame["views_level"].to_list()[1:] == expected.tolist()  # views are a monotone function of likes


def test_tag_vocabulary_is_by_item_id_not_row_order() -> None:
    tags = pl.DataFrame({"item_id": pl.Series([2, 1], dtype=pl.Int32), "tags": pl.Series([["y"], ["x", "y"]])})
    assert tag_vocabulary(tags) == {"x": 1, "y": 2}


@pytest.mark.parametrize("ids", [[1, 2, 4], [2, 3, 4], [0, 1, 2]])
def test_non_contiguous_ids_are_rejected(ids: list[int]) -> None:
    _, lv, tags = _inputs()
    with pytest.raises(DataError, match="contiguous"):
        build_item_features(np.array(ids), lv, tags, max_tags=3, n_levels=4)
