"""pipeline/sources/microlens.py: file discovery and the MicroLens raw readers on small files of every release
format written here (awkward cases included), the cover path guard, and the synthetic generator's output read back
with no special case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.core.config import MakeSyntheticConfig
from pipeline.core.io import DataError
from pipeline.sources import synthetic as syn
from pipeline.sources.items import item_cover_paths, item_titles
from pipeline.sources.microlens import (
    IMPRESSION_COLUMNS,
    MicroLensFiles,
    MicroLensItemFiles,
    check_known_items,
    cover_path,
    detect_cover_naming,
    find_microlens_files,
    find_microlens_item_files,
    item_ids,
    read_impressions,
    read_int_csv_reference,
    read_likes_views,
    read_pairs,
    read_pairs_csv_reference,
    read_tags,
    read_titles,
)

PAIRS_SCHEMA = pl.Schema({"user": pl.Int32, "item": pl.Int32, "timestamp": pl.Int64})


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def _error(fn, path: Path) -> str:
    with pytest.raises(DataError) as info:
        fn(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def _release(tmp_path: Path, names: list[str], covers: dict[str, list[str]] | None = None) -> Path:
    """A raw dir holding empty files `names` and cover folders {folder: [file names]}."""
    for name in names:
        _file(tmp_path, name, "")
    for folder, files in (covers or {}).items():
        for name in files:
            _file(tmp_path / folder, name, "")
    return tmp_path


# ---------------------------------------------------------------------------------------------- discovery


def test_find_synthetic_names(tmp_path: Path) -> None:
    raw = _release(tmp_path, ["pairs.csv", "title_en.csv", "likes_and_views.txt", "tags.csv", "planted.npz"],
                   {"covers": ["1.jpg", "2.jpg", "notes.txt"]})
    assert find_microlens_files(raw) == MicroLensFiles(
        pairs=raw / "pairs.csv", titles=raw / "title_en.csv", likes_views=raw / "likes_and_views.txt",
        tags=raw / "tags.csv", covers=raw / "covers", cover_naming="<id>.jpg")


def test_find_impressions_file(tmp_path: Path) -> None:
    raw = _release(tmp_path, ["pairs.csv", "title_en.csv", "likes_and_views.txt", "impressions.csv"])
    assert find_microlens_files(raw).impressions == raw / "impressions.csv"
    _file(tmp_path, "MicroLens-1M_impressions.csv", "")
    with pytest.raises(DataError, match="more than one impressions file"):
        find_microlens_files(raw)


def test_find_100k_release_names(tmp_path: Path) -> None:
    # The 100k release ships the pairs both as .csv and .tsv: the .csv wins, it has timestamps.
    raw = _release(tmp_path, ["MicroLens-100k_pairs.csv", "MicroLens-100k_pairs.tsv", "MicroLens-100k_title_en.csv",
                              "MicroLens-100k_likes_and_views.txt", "tags_to_summary.csv",
                              "MicroLens-100k_comment_en.txt"],
                   {"MicroLens-100k_Covers": ["image1.jpg", "image20.jpg"]})
    files = find_microlens_files(raw)
    assert files == MicroLensFiles(
        pairs=raw / "MicroLens-100k_pairs.csv", titles=raw / "MicroLens-100k_title_en.csv",
        likes_views=raw / "MicroLens-100k_likes_and_views.txt", tags=raw / "tags_to_summary.csv",
        covers=raw / "MicroLens-100k_Covers", cover_naming="image<id>.jpg")


def test_find_50k_tsv_without_optional_files(tmp_path: Path) -> None:
    raw = _release(tmp_path, ["MicroLens-50k_pairs.tsv", "MicroLens-50k_titles.csv",
                              "MicroLens-50k_likes_and_views.txt"])
    files = find_microlens_files(raw)
    assert (files.pairs, files.titles) == (raw / "MicroLens-50k_pairs.tsv", raw / "MicroLens-50k_titles.csv")
    assert (files.tags, files.covers, files.cover_naming) == (None, None, None)


def test_find_item_images_folder(tmp_path: Path) -> None:
    raw = _release(tmp_path, ["pairs.csv", "title_en.csv", "likes_and_views.txt"], {"item_images": ["7.jpg"]})
    files = find_microlens_files(raw)
    assert (files.covers, files.cover_naming) == (raw / "item_images", "<id>.jpg")


def test_items_alone_need_no_click_files(tmp_path: Path) -> None:
    """Extraction and `mmctr neighbours --raw-dir` read only titles and covers: a folder without pairs or likes
    (titles and covers copied out of a release) is enough for them, and still not for the click readers."""
    raw = _release(tmp_path, ["title_en.csv"], {"covers": ["2.jpg"]})
    (raw / "title_en.csv").write_text("item_id,title\n1,a cup\n2,a lamp\n")
    assert find_microlens_item_files(raw) == MicroLensItemFiles(titles=raw / "title_en.csv", covers=raw / "covers",
                                                                cover_naming="<id>.jpg")
    assert item_titles("microlens", raw).rows() == [(1, "a cup"), (2, "a lamp")]
    assert item_cover_paths("microlens", raw, np.array([2, 1])) == [raw / "covers" / "2.jpg", raw / "covers" / "1.jpg"]
    assert _error(find_microlens_files, raw).startswith(f"{raw}: no pairs file")
    (raw / "title_en.csv").unlink()
    assert _error(find_microlens_item_files, raw).startswith(f"{raw}: no titles file")


@pytest.mark.parametrize(("missing", "looked_for"), [
    ("pairs.csv", "pairs file (looked for pairs.csv, MicroLens-<size>_pairs.csv or MicroLens-<size>_pairs.tsv)"),
    ("title_en.csv",
     "titles file (looked for title_en.csv, MicroLens-<size>_title_en.csv or MicroLens-<size>_titles.csv)"),
    ("likes_and_views.txt",
     "likes_views file (looked for likes_and_views.txt or MicroLens-<size>_likes_and_views.txt)"),
])
def test_find_missing_required_file(tmp_path: Path, missing: str, looked_for: str) -> None:
    raw = _release(tmp_path, [n for n in ("pairs.csv", "title_en.csv", "likes_and_views.txt") if n != missing])
    assert _error(find_microlens_files, raw) == f"{raw}: no {looked_for}"


@pytest.mark.parametrize(("extra", "expected"), [
    (["MicroLens-100k_pairs.csv"], "more than one pairs file (MicroLens-100k_pairs.csv, pairs.csv); keep one"),
    (["MicroLens-50k_pairs.tsv"], "more than one pairs file (MicroLens-50k_pairs.tsv, pairs.csv); keep one"),
    (["MicroLens-50k_titles.csv"], "more than one titles file (MicroLens-50k_titles.csv, title_en.csv); keep one"),
    (["tags.csv", "tags_to_summary.csv"], "more than one tags file (tags.csv, tags_to_summary.csv); keep one"),
])
def test_find_two_candidates_for_one_role(tmp_path: Path, extra: list[str], expected: str) -> None:
    raw = _release(tmp_path, ["pairs.csv", "title_en.csv", "likes_and_views.txt", *extra])
    assert _error(find_microlens_files, raw) == f"{raw}: {expected}"


def test_find_two_cover_folders(tmp_path: Path) -> None:
    raw = _release(tmp_path, ["pairs.csv", "title_en.csv", "likes_and_views.txt"],
                   {"covers": ["1.jpg"], "item_images": ["1.jpg"]})
    assert _error(find_microlens_files, raw) == f"{raw}: more than one covers folder (covers, item_images); keep one"


def test_find_raw_dir_missing(tmp_path: Path) -> None:
    assert _error(find_microlens_files, tmp_path / "nope") == f"{tmp_path / 'nope'}: raw data directory not found"


def test_cover_naming_mixed_or_absent(tmp_path: Path) -> None:
    mixed = _release(tmp_path / "a", [], {"covers": ["1.jpg", "image2.jpg"]}) / "covers"
    message = _error(detect_cover_naming, mixed)
    assert message.startswith(f"{mixed}: covers use both namings '<id>.jpg' and 'image<id>.jpg' (e.g. ")
    empty = _release(tmp_path / "b", [], {"covers": ["readme.txt", "cover.jpg", "image.jpg"]}) / "covers"
    assert detect_cover_naming(empty) == "<id>.jpg"  # no cover of either naming: every item counts as missing


def test_cover_names_with_leading_zeros_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Item 7's cover is 7.jpg (or image7.jpg): 007.jpg is never looked up, so a folder of zero-padded names
    would count every such cover missing without a word; a warning counts them and shows one."""
    for naming, names, count, example in (("<id>.jpg", ["010.jpg", "007.jpg", "12.jpg", "0.jpg"], 2, "007.jpg"),
                                          ("image<id>.jpg", ["image007.jpg", "image12.jpg"], 1, "image007.jpg")):
        covers = _release(tmp_path / naming, [], {"covers": names}) / "covers"
        caplog.clear()
        assert detect_cover_naming(covers) == naming
        assert [r.getMessage() for r in caplog.records] == [
            f"{covers}: {count} cover names have ids with leading zeros (e.g. {example}); a cover is looked "
            "up by its id without them (item 7: 7.jpg), so these count as missing unless renamed"]
    plain = _release(tmp_path / "plain", [], {"covers": ["7.jpg", "10.jpg", "0.jpg"]}) / "covers"
    caplog.clear()
    detect_cover_naming(plain)
    assert not caplog.records


# ---------------------------------------------------------------------------------------------- pairs.csv


def test_pairs_good_file_keeps_order_and_dtypes(tmp_path: Path) -> None:
    path = _file(tmp_path, "pairs.csv", "user,item,timestamp\n2,5,1700000000000\n1,3,20\n2,5,10\n")
    df = read_pairs(path)
    assert df.schema == PAIRS_SCHEMA
    assert df.rows() == [(2, 5, 1700000000000), (1, 3, 20), (2, 5, 10)]


def test_pairs_blank_lines_bom_and_crlf(tmp_path: Path) -> None:
    path = _file(tmp_path, "pairs.csv", "\ufeffuser,item,timestamp\r\n1,2,3\r\n\r\n4,5,6\r\n  \r\n\r\n")
    assert read_pairs(path).rows() == [(1, 2, 3), (4, 5, 6)]


@pytest.mark.parametrize("header", ["user,item,time", "item,user,timestamp", "1,2,3", ""])
def test_pairs_wrong_header_names_line_1(tmp_path: Path, header: str) -> None:
    path = _file(tmp_path, "pairs.csv", f"{header}\n1,2,3\n")
    assert _error(read_pairs, path) == f"{path}: line 1: expected header 'user,item,timestamp', got {header!r}"


@pytest.mark.parametrize(("row", "problem"), [
    ("1,x,4", "item 'x' is not an integer"),
    ("1.5,2,4", "user '1.5' is not an integer"),
    ("1,2,3.5", "timestamp '3.5' is not a 64-bit integer"),
    ("1,2,", "timestamp '' is not a 64-bit integer"),
    (",2,4", "user '' is not an integer"),
    ("1,,4", "item '' is not an integer"),
    ("0,2,4", "user 0 is outside 1..2147483647"),
    ("1,0,4", "item 0 is outside 1..2147483647"),
    ("-3,2,4", "user -3 is outside 1..2147483647"),
    ("1,3000000000,4", "item 3000000000 is outside 1..2147483647"),
    ("1,2", "expected 3 fields user,item,timestamp, got 2"),
    ("1,2,3,4", "expected 3 fields user,item,timestamp, got 4"),
    ("1\t2\t3", "expected 3 fields user,item,timestamp, got 1"),
])
def test_pairs_bad_row_names_its_physical_line(tmp_path: Path, row: str, problem: str) -> None:
    # A blank line before the bad row: line numbers count physical lines.
    path = _file(tmp_path, "pairs.csv", f"user,item,timestamp\n1,2,3\n\n{row}\n7,8,9\n")
    assert _error(read_pairs, path) == f"{path}: line 4: {problem}"


def test_pairs_fast_path_equals_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = rng.integers(1, 2**31 - 1, size=(500, 3)).tolist()
    lines = [f"{u},{i},{t * 1000}" for u, i, t in rows]
    clean = _file(tmp_path, "clean.csv", "user,item,timestamp\n" + "\n".join(lines) + "\n")
    for k in sorted(rng.choice(len(lines), size=20, replace=False), reverse=True):
        lines.insert(int(k), "")
    blank = _file(tmp_path, "blank.csv", "user,item,timestamp\n" + "\n".join(lines) + "\n")
    expected = pl.DataFrame(rows, schema=["user", "item", "timestamp"], orient="row").with_columns(
        pl.col("user", "item").cast(pl.Int32), pl.col("timestamp") * 1000)
    for path in (clean, blank):
        assert read_pairs(path).equals(expected)
        assert read_pairs_csv_reference(path).equals(expected)


def test_pairs_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    assert _error(read_pairs, path) == f"{path}: file not found"


# ---------------------------------------------------------------------------------------------- impressions


def test_impressions_good_file_and_reference(tmp_path: Path) -> None:
    path = _file(tmp_path, "impressions.csv", "user,item,timestamp,click\n2,5,17,1\n2,6,17,0\n\n1,3,20,0\n")
    expected = pl.DataFrame({"user": [2, 2, 1], "item": [5, 6, 3], "timestamp": [17, 17, 20], "click": [1, 0, 0]},
                            schema={"user": pl.Int32, "item": pl.Int32, "timestamp": pl.Int64, "click": pl.Int8})
    assert read_impressions(path).equals(expected)
    assert read_int_csv_reference(path, IMPRESSION_COLUMNS).equals(expected)


@pytest.mark.parametrize(("row", "problem"), [
    ("1,2,3,2", "click must be 0 or 1, got '2'"),
    ("1,2,3,-1", "click must be 0 or 1, got '-1'"),
    ("1,2,3,yes", "click 'yes' is not a 64-bit integer"),
    ("1,2,3", "expected 4 fields user,item,timestamp,click, got 3"),
    ("0,2,3,1", "user 0 is outside 1..2147483647"),
])
def test_impressions_bad_row_names_its_physical_line(tmp_path: Path, row: str, problem: str) -> None:
    path = _file(tmp_path, "impressions.csv", f"user,item,timestamp,click\n1,2,3,0\n\n{row}\n")
    assert _error(read_impressions, path) == f"{path}: line 4: {problem}"


def test_impressions_wrong_header(tmp_path: Path) -> None:
    path = _file(tmp_path, "impressions.csv", "user,item,timestamp\n1,2,3\n")
    assert _error(read_impressions, path) == (f"{path}: line 1: expected header 'user,item,timestamp,click', "
                                              f"got 'user,item,timestamp'")


# ---------------------------------------------------------------------------------------------- pairs.tsv


def test_pairs_tsv_positions_are_timestamps(tmp_path: Path) -> None:
    path = _file(tmp_path, "MicroLens-50k_pairs.tsv", "3\t7 1 7 2\n\n1\t5\r\n2\t4  6 \n")
    df = read_pairs(path)
    assert df.schema == PAIRS_SCHEMA
    assert df.rows() == [(3, 7, 0), (3, 1, 1), (3, 7, 2), (3, 2, 3), (1, 5, 0), (2, 4, 0), (2, 6, 1)]


@pytest.mark.parametrize(("line", "problem"), [
    ("4 5 6", "expected 'user<TAB>item item ...', got '4 5 6'"),
    ("x\t5 6", "user 'x' is not an integer"),
    ("0\t5 6", "user 0 is outside 1..2147483647"),
    ("4\t5 six", "item 'six' is not an integer"),
    ("4\t5 3_0", "item '3_0' is not an integer"),  # int() would read 30
    ("4\t5 \u0663", "item '\u0663' is not an integer"),  # an Arabic-Indic 3, which int() would read as 3
    ("4\t5 0", "item 0 is outside 1..2147483647"),
    ("1\t8", "user 1 already has line 1"),
])
def test_pairs_tsv_bad_line(tmp_path: Path, line: str, problem: str) -> None:
    path = _file(tmp_path, "pairs.tsv", f"1\t2 3\n\n{line}\n")
    assert _error(read_pairs, path) == f"{path}: line 3: {problem}"


# ---------------------------------------------------------------------------------------------- unknown items


def test_check_known_items_error_names_first_click(tmp_path: Path) -> None:
    pairs = pl.DataFrame({"user": [1, 2, 2, 3], "item": [1, 9, 2, 8], "timestamp": [1, 2, 3, 4]},
                         schema=PAIRS_SCHEMA)
    path = tmp_path / "pairs.csv"
    with pytest.raises(DataError) as info:
        check_known_items(pairs, np.array([1, 2, 3]), "error", path)
    assert str(info.value) == f"{path}: 2 clicks reference unknown items; first: user 2 item 9"


def test_check_known_items_drop_counts(tmp_path: Path) -> None:
    pairs = pl.DataFrame({"user": [1, 2, 2, 3], "item": [1, 9, 2, 8], "timestamp": [1, 2, 3, 4]},
                         schema=PAIRS_SCHEMA)
    kept, n_dropped = check_known_items(pairs, np.array([1, 2, 3]), "drop", tmp_path / "pairs.csv")
    assert n_dropped == 2 and kept.rows() == [(1, 1, 1), (2, 2, 3)] and kept.schema == PAIRS_SCHEMA
    same, none = check_known_items(kept, np.array([1, 2]), "error", tmp_path / "pairs.csv")
    assert none == 0 and same.equals(kept)
    with pytest.raises(ValueError, match="unknown policy 'skip'"):
        check_known_items(pairs, np.array([1]), "skip", tmp_path / "pairs.csv")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- titles


def test_titles_awkward_lines(tmp_path: Path) -> None:
    text = ("3,Hello, world, again\n"       # commas: split at the first one only
            "1,\n"                          # empty title
            "2,Café — 猫 ☕\n"               # non-ASCII
            "10,\"quoted\",x\n"             # starts with a quote but is no CSV field: literal
            "11,He said \"hi\", then left\n"  # quotes elsewhere: literal
            "12,\"A \"\"big\"\" day, part 1\"\n"  # CSV-quoted: commas and doubled quotes
            "13,\"two\n"                    # a quoted title over three physical lines
            "\n"
            "lines, \"\"ok\"\"\"\n"
            "14,\"never closed\n"           # no closing quote before the end of the file: literal
            "15,last\n")
    df = read_titles(_file(tmp_path, "MicroLens-100k_title_en.csv", text))
    assert df.schema == pl.Schema({"item_id": pl.Int32, "title": pl.Utf8})
    assert df.rows() == [(3, "Hello, world, again"), (1, ""), (2, "Café — 猫 ☕"), (10, '"quoted",x'),
                         (11, 'He said "hi", then left'), (12, 'A "big" day, part 1'), (13, 'two\n\nlines, "ok"'),
                         (14, '"never closed'), (15, "last")]


def test_titles_quoted_field_must_end_its_line(tmp_path: Path) -> None:
    # The quoted reading of line 1 would close at the quote on line 2, which text follows: so line 1 is literal.
    df = read_titles(_file(tmp_path, "title_en.csv", '1,"Best of\n2,the "year" show\n'))
    assert df.rows() == [(1, '"Best of'), (2, 'the "year" show')]


def test_titles_open_quote_does_not_swallow_the_rows_after_it(tmp_path: Path) -> None:
    # Read as one quoted field, line 2 would close at the end of line 4 and take items 3 and 4 with it (the item
    # universe silently one to three items short); a line that begins like a row ends that reading: all literal.
    df = read_titles(_file(tmp_path, "title_en.csv", '1,a\n2,"open quote title\n3,c\n4,ends with a quote"\n'))
    assert df.rows() == [(1, "a"), (2, '"open quote title'), (3, "c"), (4, 'ends with a quote"')]


def test_titles_50k_header_form(tmp_path: Path) -> None:
    text = "\ufeffitem,title\r\n5,\"a, b\"\r\n6,plain, text\r\n7,\r\n"
    df = read_titles(_file(tmp_path, "MicroLens-50k_titles.csv", text))
    assert df.rows() == [(5, "a, b"), (6, "plain, text"), (7, "")]


def test_titles_crlf_and_blank_lines(tmp_path: Path) -> None:
    df = read_titles(_file(tmp_path, "title_en.csv", "1,a b\r\n\r\n2,c\r\n"))
    assert df.rows() == [(1, "a b"), (2, "c")]


def test_lone_cr_line_endings_are_line_endings(tmp_path: Path) -> None:
    """A classic Mac or Excel "CSV (Macintosh)" export ends its lines with a lone CR: read as lines, the same as LF,
    in every line-based reader (split at LF only, titles were one title and a .tsv one user). In a file of LF
    lines a lone CR is part of its line: a title may hold one."""
    assert read_titles(_file(tmp_path, "title_en.csv", "1,a b\r2,c\r3,\"d, e\"\r")).rows() == [
        (1, "a b"), (2, "c"), (3, "d, e")]
    assert read_titles(_file(tmp_path, "t2.csv", "1,Best of\r the week\r\n2,Top 10\r4 dogs\n")).rows() == [
        (1, "Best of\r the week"), (2, "Top 10\r4 dogs")]
    assert read_pairs(_file(tmp_path, "MicroLens-50k_pairs.tsv", "1\t3 1\r2\t2\r")).rows() == [
        (1, 3, 0), (1, 1, 1), (2, 2, 0)]
    path = _file(tmp_path, "pairs.csv", "user,item,timestamp\r1,2,3\r4,5,6\r")
    assert read_pairs(path).rows() == read_pairs_csv_reference(path).rows() == [(1, 2, 3), (4, 5, 6)]


def test_quoted_integer_fields_are_read_by_both_pairs_readers(tmp_path: Path) -> None:
    """pandas (QUOTE_ALL) and spreadsheets quote every field: the fast path and its reference read them the same,
    with or without the blank line that sends the fast path to the reference."""
    text = '"user","item","timestamp"\n"1","2","3"\n"4", "5" ,6\n'
    for name, body in (("quoted.csv", text), ("blank.csv", text + "\n")):
        path = _file(tmp_path, name, body)
        assert read_pairs(path).rows() == read_pairs_csv_reference(path).rows() == [(1, 2, 3), (4, 5, 6)]
    path = _file(tmp_path, "half.csv", 'user,item,timestamp\n"1,2,3\n')
    assert _error(read_pairs, path) == f"{path}: line 2: user '\"1' is not an integer"


def test_item_ids_are_sorted_from_titles(tmp_path: Path) -> None:
    df = read_titles(_file(tmp_path, "title_en.csv", "3,c\n1,a\n2,b\n"))
    ids = item_ids(df)
    assert ids.dtype == np.int64 and ids.tolist() == [1, 2, 3]


def test_titles_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = _file(tmp_path, "title_en.csv", "1,a\n7,\"b\nc\"\n2,c\n\n7,d\n")
    assert _error(read_titles, path) == f"{path}: line 6: duplicate item_id 7 (first on line 2)"


@pytest.mark.parametrize("bad", ["no comma here", "x,title", "-1,title", " ,title", "1.5,title", "item,title"])
def test_titles_bad_line_is_named(tmp_path: Path, bad: str) -> None:
    # line numbers count physical lines, blank ones and those of a multi-line title included
    path = _file(tmp_path, "title_en.csv", f"1,\"a\nb\"\n\n{bad}\n2,b\n")
    assert _error(read_titles, path) == f"{path}: line 4: expected 'item_id,title', got {bad!r}"


def test_titles_id_zero_is_rejected(tmp_path: Path) -> None:
    path = _file(tmp_path, "title_en.csv", "1,a\n0,padding\n")
    assert _error(read_titles, path) == f"{path}: line 2: item_id 0 is outside 1..2147483647"


def test_titles_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "title_en.csv"
    path.write_bytes(b"1,a\n2,caf\xe9\n")
    assert _error(read_titles, path) == f"{path}: line 2: not UTF-8 text (byte 5)"


# ---------------------------------------------------------------------------------------------- likes_and_views


def test_likes_views_good_file(tmp_path: Path) -> None:
    text = "2\t10\t300\n1\t0\t5\n\n3\t7\t123456789012\r\n"
    df = read_likes_views(_file(tmp_path, "MicroLens-100k_likes_and_views.txt", text))
    assert df.schema == pl.Schema({"item_id": pl.Int32, "likes": pl.Int64, "views": pl.Int64})
    assert df.rows() == [(2, 10, 300), (1, 0, 5), (3, 7, 123456789012)]


@pytest.mark.parametrize(("row", "problem"), [
    ("2\t3", "expected 3 tab-separated fields item_id,likes,views, got 2"),
    ("2\t3\t4\t5", "expected 3 tab-separated fields item_id,likes,views, got 4"),
    ("2,3,4", "expected 3 tab-separated fields item_id,likes,views, got 1"),
    ("x\t3\t4", "item_id 'x' is not an integer"),
    ("2\t3\tmany", "views 'many' is not a non-negative 64-bit integer"),
    ("2\t-3\t4", "likes '-3' is not a non-negative 64-bit integer"),
    ("1\t5\t6", "duplicate item_id 1 (first on line 1)"),
])
def test_likes_views_bad_line(tmp_path: Path, row: str, problem: str) -> None:
    path = _file(tmp_path, "likes_and_views.txt", f"1\t2\t3\n\n{row}\n")
    assert _error(read_likes_views, path) == f"{path}: line 3: {problem}"


# ---------------------------------------------------------------------------------------------- tags


def test_tags_header_and_pipes(tmp_path: Path) -> None:
    path = _file(tmp_path, "tags.csv", "item_id,tags\n3,music|live show\n1,\n2, a | |b \n4,solo\n")
    df = read_tags(path)
    assert df.schema == pl.Schema({"item_id": pl.Int32, "tags": pl.List(pl.Utf8)})
    assert df.rows() == [(3, ["music", "live show"]), (1, []), (2, ["a", "b"]), (4, ["solo"])]


def test_tags_to_summary_variants(tmp_path: Path) -> None:
    # No header: line 1 is data. Separators |, ; and , inside a (quoted) field, or commas between fields.
    text = ("1,Food & Drink\n"
            "2,\"Pets, Animals\"\n"
            "3,a;b; c\n"
            "4,x,y\n"
            "\n"
            "5,\"multi\nline|tag\"\n"
            "6,\"\"\n")
    df = read_tags(_file(tmp_path, "tags_to_summary.csv", text))
    assert df.rows() == [(1, ["Food & Drink"]), (2, ["Pets", "Animals"]), (3, ["a", "b", "c"]), (4, ["x", "y"]),
                         (5, ["multi\nline", "tag"]), (6, [])]


@pytest.mark.parametrize(("text", "problem"), [
    # a quote opened on line 3 and closed at the end of line 5: rows 3 and 4 would be item 2's tags
    ("item_id,tags\n1,a\n2,\"b|c\n3,d\n4,e\"\n5,f\n",
     "line 3: a quoted field runs on over a line that begins like a row ('3,d'); is a quote left open?"),
    # a quote opened on line 3 and never closed: every later row would be item 2's tags (csv names the last line)
    ("item_id,tags\n1,a\n2,\"b|c\n3,d\n", "line 4: unexpected end of data"),
])
def test_tags_quote_left_open_is_named(tmp_path: Path, text: str, problem: str) -> None:
    path = _file(tmp_path, "tags.csv", text)
    assert _error(read_tags, path) == f"{path}: {problem}"


def test_tags_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tags.csv"
    path.write_bytes(("item_id,tags\n" + "".join(f"{i},tag {i}\r\n" for i in range(1, 3001))).encode() + b"3001,\xff\n")
    assert _error(read_tags, path) == f"{path}: line 3002: not UTF-8 text"


def test_tags_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = _file(tmp_path, "tags.csv", "item_id,tags\n1,a\n2,\"b\nc\"\n2,c\n")
    assert _error(read_tags, path) == f"{path}: line 5: duplicate item_id 2 (first on line 3)"


@pytest.mark.parametrize(("text", "problem"), [
    ("id,tags\n1,a\n", "line 1: expected header 'item_id,tags' or an item_id,tags row, got 'id,tags'"),
    ("item_id,tags\nx,a\n", "line 2: item_id 'x' is not an integer"),
    ("item_id,tags\n1,a\n,b\n", "line 3: item_id '' is not an integer"),
    ("1,a\n\n0,b\n", "line 3: item_id 0 is outside 1..2147483647"),
    ("1,a\n2\n", "line 2: expected 'item_id,tags', got '2'"),
])
def test_tags_bad_lines(tmp_path: Path, text: str, problem: str) -> None:
    path = _file(tmp_path, "tags.csv", text)
    assert _error(read_tags, path) == f"{path}: {problem}"


# ---------------------------------------------------------------------------------------------- cover_path


@pytest.mark.parametrize("bad", [0, -1, -100, "../etc/passwd", "1", "1/../../x", True, False, 1.0, None])
@pytest.mark.parametrize("naming", ["<id>.jpg", "image<id>.jpg"])
def test_cover_path_rejects_non_positive_or_non_int(tmp_path: Path, bad: object, naming: str) -> None:
    with pytest.raises(DataError, match="invalid item id"):
        cover_path(tmp_path / "covers", bad, naming)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [1, 42, np.int32(7), np.int64(123456), np.uint16(9)])
def test_cover_path_stays_inside_the_covers_dir(tmp_path: Path, good: int) -> None:
    covers = tmp_path / "covers"
    for naming, name in (("<id>.jpg", f"{int(good)}.jpg"), ("image<id>.jpg", f"image{int(good)}.jpg")):
        path = cover_path(covers, good, naming)
        assert path.name == name
        assert path.resolve().parent == covers.resolve()
    assert cover_path(covers, good) == covers / f"{int(good)}.jpg"


def test_cover_path_unknown_naming(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown cover naming 'cover<id>.png'"):
        cover_path(tmp_path, 1, "cover<id>.png")


# ---------------------------------------------------------------------------------------------- the generator


def test_generator_output_reads_with_no_special_case(tmp_path: Path) -> None:
    cfg = MakeSyntheticConfig(seed=3, n_items=25, n_users=15, mean_clicks_per_user=6.0, min_clicks_per_user=3,
                              max_clicks_per_user=12, n_topics=4, latent_dim=4, cover_size=32)
    counts = syn.generate(cfg, tmp_path / "raw")
    files = find_microlens_files(tmp_path / "raw")
    assert files.tags is not None and files.covers is not None and files.cover_naming == "<id>.jpg"

    titles = read_titles(files.titles)
    ids = item_ids(titles)
    assert ids.tolist() == list(range(1, cfg.n_items + 1))
    # Titles are written unquoted, some with commas: the reader keeps everything after the first comma.
    lines = files.titles.read_text(encoding="utf-8").splitlines()
    assert titles["title"].to_list() == [line.partition(",")[2] for line in lines]
    assert any("," in t for t in titles["title"])

    pairs = read_pairs(files.pairs)
    assert pairs.height == counts["clicks"]
    assert pairs.equals(pl.read_csv(files.pairs, schema=dict(PAIRS_SCHEMA)))
    kept, n_unknown = check_known_items(pairs, ids, "error", files.pairs)
    assert n_unknown == 0 and kept.equals(pairs)

    likes_views = read_likes_views(files.likes_views)
    tags = read_tags(files.tags)
    for frame in (likes_views, tags):
        assert frame["item_id"].to_list() == list(range(1, cfg.n_items + 1))
    assert all(1 <= len(t) <= 4 for t in tags["tags"].to_list())
    assert all(cover_path(files.covers, int(i), files.cover_naming).is_file() for i in ids)
