"""pipeline/raw.py: the MicroLens raw-file readers, on small files written here, and the cover path guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.io import DataError
from pipeline.raw import cover_path, item_ids, read_likes_views, read_pairs, read_tags, read_titles


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def _error(fn, path: Path) -> str:
    with pytest.raises(DataError) as info:
        fn(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


# ---------------------------------------------------------------------------------------------- pairs.csv


def test_pairs_good_file_keeps_order_and_dtypes(tmp_path: Path) -> None:
    path = _file(tmp_path, "pairs.csv", "user,item,timestamp\n2,5,1700000000000\n1,3,20\n2,5,10\n")
    df = read_pairs(path)
    assert df.schema == pl.Schema({"user": pl.Int32, "item": pl.Int32, "timestamp": pl.Int64})
    assert df.rows() == [(2, 5, 1700000000000), (1, 3, 20), (2, 5, 10)]


@pytest.mark.parametrize("header", ["user,item,time", "item,user,timestamp", "1,2,3", ""])
def test_pairs_wrong_header_names_line_1(tmp_path: Path, header: str) -> None:
    path = _file(tmp_path, "pairs.csv", f"{header}\n1,2,3\n")
    message = _error(read_pairs, path)
    assert message.startswith(f"{path}: line 1: expected header 'user,item,timestamp'")


@pytest.mark.parametrize("row", ["1,x,4", "1.5,2,4", "1,2,3.5"])
def test_pairs_non_integer_value_is_an_error(tmp_path: Path, row: str) -> None:
    path = _file(tmp_path, "pairs.csv", f"user,item,timestamp\n1,2,3\n{row}\n")
    assert "not integer" in _error(read_pairs, path)


@pytest.mark.parametrize("row", [",2,4", "1,,4", "0,2,4", "1,0,4", "-3,2,4", "1,-2,4", "1,2,"])
def test_pairs_empty_or_non_positive_id_names_the_line(tmp_path: Path, row: str) -> None:
    path = _file(tmp_path, "pairs.csv", f"user,item,timestamp\n1,2,3\n4,5,6\n{row}\n7,8,9\n")
    assert _error(read_pairs, path) == f"{path}: line 4: empty or non-positive user/item id"


def test_pairs_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    assert _error(read_pairs, path) == f"{path}: file not found"


# ---------------------------------------------------------------------------------------------- title_en.csv


def test_titles_split_at_the_first_comma(tmp_path: Path) -> None:
    text = "3,Hello, world, again\n1,\n2,Café — 猫 ☕\n10,\"quoted\",x\n"
    df = read_titles(_file(tmp_path, "title_en.csv", text))
    assert df.schema == pl.Schema({"item_id": pl.Int32, "title": pl.Utf8})
    assert df.rows() == [(3, "Hello, world, again"), (1, ""), (2, "Café — 猫 ☕"), (10, '"quoted",x')]


def test_titles_crlf_and_blank_lines(tmp_path: Path) -> None:
    df = read_titles(_file(tmp_path, "title_en.csv", "1,a b\r\n\r\n2,c\r\n"))
    assert df.rows() == [(1, "a b"), (2, "c")]


def test_item_ids_are_sorted_from_titles(tmp_path: Path) -> None:
    df = read_titles(_file(tmp_path, "title_en.csv", "3,c\n1,a\n2,b\n"))
    ids = item_ids(df)
    assert ids.dtype == np.int64 and ids.tolist() == [1, 2, 3]


def test_titles_duplicate_id_is_named(tmp_path: Path) -> None:
    path = _file(tmp_path, "title_en.csv", "1,a\n7,b\n2,c\n7,d\n")
    assert _error(read_titles, path) == f"{path}: duplicate item_id 7"


@pytest.mark.parametrize("bad", ["no comma here", "x,title", "-1,title", " ,title", "1.5,title"])
def test_titles_bad_line_is_named(tmp_path: Path, bad: str) -> None:
    # line numbers count physical lines, blank ones included
    path = _file(tmp_path, "title_en.csv", f"1,a\n\n{bad}\n2,b\n")
    assert _error(read_titles, path).startswith(f"{path}: line 3: expected 'item_id,title'")


def test_titles_id_zero_is_rejected(tmp_path: Path) -> None:
    path = _file(tmp_path, "title_en.csv", "1,a\n0,padding\n")
    assert "item ids must be >= 1" in _error(read_titles, path)


# ---------------------------------------------------------------------------------------------- likes_and_views


def test_likes_views_good_file(tmp_path: Path) -> None:
    df = read_likes_views(_file(tmp_path, "likes_and_views.txt", "2\t10\t300\n1\t0\t5\n3\t7\t123456789012\n"))
    assert df.schema == pl.Schema({"item_id": pl.Int32, "likes": pl.Int64, "views": pl.Int64})
    assert df.rows() == [(2, 10, 300), (1, 0, 5), (3, 7, 123456789012)]


def test_likes_views_too_few_columns_names_the_line(tmp_path: Path) -> None:
    path = _file(tmp_path, "likes_and_views.txt", "1\t2\t3\n2\t3\n3\t4\t5\n")
    assert _error(read_likes_views, path) == f"{path}: line 2: missing value"


@pytest.mark.parametrize("text", ["1\t2\t3\n2\t3\t4\t5\n", "1,2,3\n2,3,4\n", "1\t2\tmany\n"])
def test_likes_views_wrong_columns_is_an_error(tmp_path: Path, text: str) -> None:
    path = _file(tmp_path, "likes_and_views.txt", text)
    assert "expected 3 integer tab-separated columns" in _error(read_likes_views, path)


def test_likes_views_duplicate_id(tmp_path: Path) -> None:
    path = _file(tmp_path, "likes_and_views.txt", "1\t2\t3\n4\t3\t4\n4\t5\t6\n")
    assert _error(read_likes_views, path) == f"{path}: duplicate item_id 4"


# ---------------------------------------------------------------------------------------------- tags.csv


def test_tags_split_on_pipe(tmp_path: Path) -> None:
    path = _file(tmp_path, "tags.csv", "item_id,tags\n3,music|live show\n1,\n2, a | |b \n4,solo\n")
    df = read_tags(path)
    assert df.schema == pl.Schema({"item_id": pl.Int32, "tags": pl.List(pl.Utf8)})
    assert df.rows() == [(3, ["music", "live show"]), (1, []), (2, ["a", "b"]), (4, ["solo"])]


def test_tags_duplicate_id(tmp_path: Path) -> None:
    path = _file(tmp_path, "tags.csv", "item_id,tags\n1,a\n2,b\n2,c\n")
    assert _error(read_tags, path) == f"{path}: duplicate item_id 2"


@pytest.mark.parametrize("text", ["id,tags\n1,a\n", "item_id,tags\nx,a\n"])
def test_tags_bad_header_or_id(tmp_path: Path, text: str) -> None:
    assert "expected columns item_id,tags" in _error(read_tags, _file(tmp_path, "tags.csv", text))


def test_tags_empty_id(tmp_path: Path) -> None:
    path = _file(tmp_path, "tags.csv", "item_id,tags\n1,a\n,b\n")
    assert _error(read_tags, path) == f"{path}: empty item_id"


# ---------------------------------------------------------------------------------------------- cover_path


@pytest.mark.parametrize("bad", [0, -1, -100, "../etc/passwd", "1", "1/../../x", True, False, 1.0, None])
def test_cover_path_rejects_non_positive_or_non_int(tmp_path: Path, bad: object) -> None:
    with pytest.raises(DataError, match="invalid item id"):
        cover_path(tmp_path / "covers", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [1, 42, np.int32(7), np.int64(123456), np.uint16(9)])
def test_cover_path_stays_inside_the_covers_dir(tmp_path: Path, good: int) -> None:
    covers = tmp_path / "covers"
    path = cover_path(covers, good)
    assert path.name == f"{int(good)}.jpg"
    assert path.resolve().parent == covers.resolve()
