"""pipeline/sources/challenge.py: the MMCTR challenge readers on tiny parquet files in the challenge's layout, each bad
input with its message, and the submission zip round trip."""

from __future__ import annotations

import io
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import MAX_ITEM_TAGS, MAX_SEQ_LEN
from pipeline.core.io import DataError, reads_parquet
from pipeline.core.metrics import NEEDS_BOTH_CLASSES
from pipeline.itememb.inputs import pca_inputs
from pipeline.sources import challenge
from pipeline.sources.challenge import (
    ChallengeFiles,
    find_challenge_files,
    read_item_feature,
    read_item_info,
    read_split,
    write_challenge_dataset,
    write_submission,
)
from tests.conftest import (
    CHALLENGE_ITEMS,
    SEQ_LEN,
    SPLIT_SCHEMA,
    challenge_item_feature,
    challenge_item_info,
    challenge_layout,
    challenge_split,
    write_frame,
)


def _error(fn, path: Path, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(path, *args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


# ---------------------------------------------------------------------------------------------- discovery


def test_find_files_in_the_download_layout(tmp_path: Path) -> None:
    # As downloaded: splits and item_info in MicroLens_1M_x1/, item_feature and item_images beside it.
    sub = tmp_path / "MicroLens_1M_x1"
    challenge_layout(tmp_path, sub, images=["1.jpg", "2.jpg"])
    assert find_challenge_files(tmp_path) == ChallengeFiles(
        train=sub / "train.parquet", valid=sub / "valid.parquet", test=sub / "test.parquet",
        item_info=sub / "item_info.parquet", item_feature=tmp_path / "item_feature.parquet",
        images=tmp_path / "item_images", image_naming="<id>.jpg")


def test_find_files_flat_without_images(tmp_path: Path) -> None:
    challenge_layout(tmp_path, tmp_path)
    files = find_challenge_files(tmp_path)
    assert files.train == tmp_path / "train.parquet" and (files.images, files.image_naming) == (None, None)


def test_find_files_image_prefix_naming(tmp_path: Path) -> None:
    challenge_layout(tmp_path, tmp_path, images=["image1.jpg", "image2.jpg"])
    assert find_challenge_files(tmp_path).image_naming == "image<id>.jpg"


def test_find_files_missing_or_twice(tmp_path: Path) -> None:
    challenge_layout(tmp_path, tmp_path)
    (tmp_path / "valid.parquet").unlink()
    assert _error(find_challenge_files, tmp_path) == (
        f"{tmp_path}: no valid.parquet (looked in {tmp_path} and {tmp_path / 'MicroLens_1M_x1'})")
    write_frame(challenge_split(), tmp_path / "valid.parquet")
    write_frame(challenge_split(), tmp_path / "MicroLens_1M_x1" / "train.parquet")
    assert _error(find_challenge_files, tmp_path) == (
        f"{tmp_path}: both {tmp_path / 'train.parquet'} and {tmp_path / 'MicroLens_1M_x1' / 'train.parquet'} "
        "exist; keep one")


# ---------------------------------------------------------------------------------------------- splits


def test_read_split_casts_to_the_split_contract(tmp_path: Path) -> None:
    df = challenge_split().with_columns(extra=pl.lit("x"))
    split = read_split(write_frame(df, tmp_path / "train.parquet"), CHALLENGE_ITEMS)
    assert not split.labels_hidden
    assert split.rows.schema == SPLIT_SCHEMA
    assert split.rows.drop("event_ts").rows() == challenge_split().rows()
    assert split.rows["event_ts"].to_list() == [0, 1, 2, 3]  # the row index: file order is event order


def test_read_split_accepts_narrow_and_array_types(tmp_path: Path) -> None:
    df = challenge_split().with_columns(pl.col("user_id", "item_id").cast(pl.UInt32), pl.col("label").cast(pl.Int8),
                               pl.col("item_seq").cast(pl.Array(pl.Int16, SEQ_LEN)))
    split = read_split(write_frame(df, tmp_path / "valid.parquet"), CHALLENGE_ITEMS)
    assert split.rows.schema == SPLIT_SCHEMA and split.rows.drop("event_ts").rows() == challenge_split().rows()


@pytest.mark.parametrize(("labels", "hidden"), [(None, True), ([0.0] * 4, True), ([-1.0] * 4, True),
                                                ([1.0, None, 0.0, 1.0], True), ([None] * 4, True), (["?"] * 4, True),
                                                ([1.0, 0.0, 0.0, 1.0], False)])
def test_read_test_split_hidden_labels(tmp_path: Path, labels: list | None, hidden: bool) -> None:
    """A test split's labels are hidden when absent, not 0/1, constant, or not numbers at all (a column of nulls,
    written with the Null type, or of text): each is read, as 0.0 with labels_hidden."""
    df = challenge_split().drop("label") if labels is None else challenge_split(label=labels)
    split = read_split(write_frame(df, tmp_path / "test.parquet"), CHALLENGE_ITEMS, require_labels=False)
    assert split.labels_hidden is hidden
    assert split.rows.schema == SPLIT_SCHEMA
    expected = [0.0] * 4 if hidden else labels
    assert split.rows["label"].to_list() == expected


@pytest.mark.parametrize(("changes", "problem"), [
    ({"item_id": [2, 7, 1, 6]}, "row 1: item_id 7 is outside 1..6"),
    ({"item_id": [2, 3, 0, 6]}, "row 2: item_id 0 is outside 1..6"),
    ({"user_id": [1, None, 2, 3]}, "row 1: user_id is null"),
    ({"user_id": [1, 1, -2, 3]}, "row 2: user_id -2 is outside 0..2147483647"),
    ({"likes_level": [0, 11, 3, 5]}, "row 1: likes_level 11 is outside 0..10"),
    ({"views_level": [1, 2, 10, -1]}, "row 3: views_level -1 is outside 0..10"),
    ({"item_seq": [[0, 0, 0, 1], [0, 0, 1, 2], [4, 5, 6], [0, 0, 0, 0]]},
     "row 2: item_seq has length 3, expected 4 (as row 0)"),
    ({"item_seq": [[0, 0, 1], [0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 0]]},
     "row 1: item_seq has length 4, expected 3 (as row 0)"),
    ({"item_seq": [[0, 0, 0, 1], None, [3, 4, 5, 6], [0, 0, 0, 0]]}, "row 1: item_seq is null"),
    ({"item_seq": [[0, 0, 0, 1], [0, 0, None, 2], [3, 4, 5, 6], [0, 0, 0, 0]]}, "row 1: item_seq holds a null"),
    ({"item_seq": [[0, 0, 0, 1], [0, 0, 1, 2], [3, 4, 9, 6], [0, 0, 0, 0]]},
     "row 2: item_seq holds item id 9 outside 0..6"),
    ({"item_seq": [[0, 0, 0, 1], [0, 2, 0, 2], [3, 4, 5, 6], [0, 0, 0, 0]]},
     "row 1: item_seq is not left-padded (a 0 follows an item id)"),
    ({"item_seq": [[0, 0, 0, 1], [0, 0, 1, 2], [3, 4, 5, 6], [1, 0, 0, 0]]},
     "row 3: item_seq is not left-padded (a 0 follows an item id)"),
    ({"label": [1.0, 0.0, 2.0, 0.0]}, "row 2: label 2.0 is not 0 or 1"),
    ({"label": [1.0, None, 1.0, 0.0]}, "row 1: label is null"),
])
def test_read_split_bad_values_name_the_row(tmp_path: Path, changes: dict, problem: str) -> None:
    path = write_frame(challenge_split(**changes), tmp_path / "train.parquet")
    assert _error(read_split, path, CHALLENGE_ITEMS) == f"{path}: {problem}"


@pytest.mark.parametrize(("df", "problem"), [
    (challenge_split().drop("label"),
     "missing column 'label' (has user_id, item_seq, item_id, likes_level, views_level)"),
    (challenge_split().drop("item_seq"),
     "missing column 'item_seq' (has user_id, item_id, likes_level, views_level, label)"),
    (challenge_split().with_columns(pl.col("item_id").cast(pl.Float64)),
     "column 'item_id' has dtype Float64, expected an integer type"),
    (challenge_split().with_columns(pl.col("item_seq").cast(pl.List(pl.Utf8))),
     "column 'item_seq' has dtype List(String), expected a list of integers"),
    (challenge_split().with_columns(pl.col("label").cast(pl.Utf8)),
     "column 'label' has dtype String, expected a number type"),
    (challenge_split().head(0), "no rows"),
])
def test_read_split_bad_columns(tmp_path: Path, df: pl.DataFrame, problem: str) -> None:
    path = write_frame(df, tmp_path / "train.parquet")
    assert _error(read_split, path, CHALLENGE_ITEMS) == f"{path}: {problem}"


def test_read_split_missing_or_corrupt_file(tmp_path: Path) -> None:
    missing = tmp_path / "train.parquet"
    assert _error(read_split, missing, CHALLENGE_ITEMS) == f"{missing}: file not found"
    path = tmp_path / "valid.parquet"
    path.write_bytes(b"PAR1 not really")
    assert _error(read_split, path, CHALLENGE_ITEMS).startswith(f"{path}: not a readable parquet file (")


def _corrupt_pages(df: pl.DataFrame, path: Path) -> Path:
    """Write `df` uncompressed and overwrite 1,000 bytes of its data pages: the footer, and so the schema, still
    reads, the pages do not (bit rot, a bad copy)."""
    df.write_parquet(path, compression="uncompressed", statistics=False)
    data = bytearray(path.read_bytes())
    data[200:1200] = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_corrupt_data_pages_are_one_line_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    """Each reader, on a file whose schema reads but whose pages are corrupt: the file named, polars' reason."""
    rng = np.random.default_rng(1)
    n = 5000
    split = challenge_split(user_id=rng.integers(0, 99, n).tolist(),
                            item_seq=[[0, 0, 0, int(i)] for i in rng.integers(1, 7, n)],
                            item_id=rng.integers(1, 7, n).tolist(), likes_level=[1] * n, views_level=[1] * n,
                            label=rng.integers(0, 2, n).astype(float).tolist())
    for name, df, read in (("train", split, lambda p: read_split(p, CHALLENGE_ITEMS)),
                           ("item_info", challenge_item_info(), read_item_info),
                           ("item_feature", challenge_item_feature(), lambda p: read_item_feature(p, CHALLENGE_ITEMS))):
        path = _corrupt_pages(df, tmp_path / f"{name}.parquet")
        pl.read_parquet_schema(path)  # the footer is intact: only reading the pages fails
        with pytest.raises(DataError) as err:
            read(path)
        assert str(err.value).startswith(f"{path}: not a readable parquet file (ComputeError: "), str(err.value)
        assert "\n" not in str(err.value)
    # a split copied into smaller row groups first is read by pyarrow, whose errors are one line the same way
    monkeypatch.setattr(challenge, "ROW_GROUP_LIST_VALUES", 8)
    path = _corrupt_pages(split, tmp_path / "heavy.parquet")
    assert _error(read_split, path, CHALLENGE_ITEMS).startswith(f"{path}: not a readable parquet file (")


def test_unsigned_64_bit_ids_past_int64_name_the_row(tmp_path: Path) -> None:
    """UInt64 histories and tag ids are range-checked as they are, not cast to Int64 first (which refuses 2^63 and
    up with a traceback); in-range UInt64 values read as any other integer type."""
    huge = 2**64 - 1
    seq = pl.Series("item_seq", [[0, 0, 0, 1], [0, 0, 1, 2], [3, 4, 5, huge], [0, 0, 0, 0]], dtype=pl.List(pl.UInt64))
    path = write_frame(challenge_split().with_columns(seq), tmp_path / "train.parquet")
    assert _error(read_split, path, CHALLENGE_ITEMS) == f"{path}: row 2: item_seq holds item id {huge} outside 0..6"
    small = challenge_split().with_columns(pl.col("item_seq").cast(pl.List(pl.UInt64)))
    assert read_split(write_frame(small, path), CHALLENGE_ITEMS).rows.equals(
        read_split(write_frame(challenge_split(), path), CHALLENGE_ITEMS).rows)
    tags = pl.Series("item_tags", [[0] * 5] + [[0, 0, 0, 1, huge]] * CHALLENGE_ITEMS, dtype=pl.List(pl.UInt64))
    info = write_frame(challenge_item_info().with_columns(tags), tmp_path / "item_info.parquet")
    assert _error(read_item_info, info) == f"{info}: row 1: item_tags holds a tag id outside 0..2147483647"


# ---------------------------------------------------------------------------------------------- item_info


def test_read_item_info(tmp_path: Path) -> None:
    df = challenge_item_info()
    info = read_item_info(write_frame(df, tmp_path / "item_info.parquet"))
    assert info.n_items == CHALLENGE_ITEMS
    assert info.tags.schema == pl.Schema({"item_id": pl.Int32, "item_tags": pl.List(pl.Int32)})
    assert info.tags.rows() == df.select("item_id", "item_tags").rows()
    assert info.emb_d128.dtype == np.float32 and info.emb_d128.shape == (CHALLENGE_ITEMS + 1, 128)
    np.testing.assert_array_equal(info.emb_d128, np.array(df["item_emb_d128"].to_list(), dtype=np.float32))


def _emb_rows(n: int, row: int, value: list) -> list:
    rows = challenge_item_info(n)["item_emb_d128"].to_list()
    rows[row] = value
    return rows


@pytest.mark.parametrize(("df", "problem"), [
    (challenge_item_info(item_id=[0, 1, 3, 2, 4, 5, 6]),
     "row 2 holds item_id 3; an item table must hold item i at row i, from 0 (padding)"),
    (challenge_item_info(item_id=[1, 2, 3, 4, 5, 6, 7]),
     "row 0 holds item_id 1; an item table must hold item i at row i, from 0 (padding)"),
    (challenge_item_info(item_tags=[[0] * 5, [0, 0, 0, 0, 1], [0, 0, 1, 2], [1] * 5, [1] * 5, [1] * 5, [1] * 5]),
     "row 2: item_tags has length 4, expected length 5"),
    (challenge_item_info(item_tags=[[0] * 5, [0, 0, 0, 0, 1], [0, 0, 0, -1, 2], [1] * 5, [1] * 5, [1] * 5, [1] * 5]),
     "row 2: item_tags holds a tag id outside 0..2147483647"),
    (challenge_item_info(item_emb_d128=_emb_rows(CHALLENGE_ITEMS, 3, [0.5] * 127)),
     "row 3: item_emb_d128 has length 127, expected length 128"),
    (challenge_item_info(item_emb_d128=_emb_rows(CHALLENGE_ITEMS, 4, [float("nan")] * 128)),
     "row 4: item_emb_d128 holds a non-finite value"),
    (challenge_item_info(item_emb_d128=_emb_rows(CHALLENGE_ITEMS, 0, [0.5] * 128)),
     "row 0 (the padding item) must have all-zero item_tags and item_emb_d128"),
    (challenge_item_info().head(1), "1 rows; expected the padding row 0 and at least one item"),
])
def test_read_item_info_bad(tmp_path: Path, df: pl.DataFrame, problem: str) -> None:
    path = write_frame(df, tmp_path / "item_info.parquet")
    assert _error(read_item_info, path) == f"{path}: {problem}"


# ---------------------------------------------------------------------------------------------- item_feature


def test_read_item_feature_sorts_by_id(tmp_path: Path) -> None:
    df = challenge_item_feature().with_columns(item_title=pl.Series(["a, b", None, 'say "x"', "", "猫", "multi\nline"]))
    shuffled = df[[3, 0, 5, 1, 4, 2]]
    feature = read_item_feature(write_frame(shuffled, tmp_path / "item_feature.parquet"), n_items=CHALLENGE_ITEMS)
    assert feature.item_ids.tolist() == list(range(1, CHALLENGE_ITEMS + 1))
    assert feature.titles.schema == pl.Schema({"item_id": pl.Int32, "title": pl.Utf8})
    assert feature.titles.rows() == [(1, "a, b"), (2, ""), (3, 'say "x"'), (4, ""), (5, "猫"), (6, "multi\nline")]
    assert feature.levels.schema == pl.Schema({"item_id": pl.Int32, "likes_level": pl.Int8, "views_level": pl.Int8})
    assert feature.levels.rows() == df.select("item_id", "likes_level", "views_level").rows()
    for arr, column, dim in ((feature.text_emb, "txt_emb_BERT", 768), (feature.image_emb, "img_emb_CLIPRN50", 1024)):
        assert arr.dtype == np.float32 and arr.shape == (CHALLENGE_ITEMS, dim)
        np.testing.assert_array_equal(arr, np.array(df[column].to_list(), dtype=np.float32))


def test_read_item_feature_takes_categorical_titles(tmp_path: Path) -> None:
    """Titles stored as a dictionary-encoded (Categorical) column, as pandas' category dtype writes them."""
    df = challenge_item_feature()
    path = write_frame(df.with_columns(pl.col("item_title").cast(pl.Categorical)), tmp_path / "item_feature.parquet")
    titles = read_item_feature(path, CHALLENGE_ITEMS).titles
    assert titles.schema["title"] == pl.Utf8 and titles["title"].to_list() == df["item_title"].to_list()


def _vectors(n: int, dim: int, row: int, value: list) -> list:
    rows = np.zeros((n, dim)).tolist()
    rows[row] = value
    return rows


@pytest.mark.parametrize(("df", "n_items", "problem"), [
    (challenge_item_feature(item_id=[1, 2, 3, 2, 5, 6]), None, "item_id 2 appears twice (rows 1 and 3)"),
    (challenge_item_feature(item_id=[1, 2, 3, 4, 5, 7]), None, "row 5: item_id 7 is outside 1..6"),
    (challenge_item_feature(item_id=[1, 2, 3, 4, 5, 0]), None, "row 5: item_id 0 is outside 1..6"),
    (challenge_item_feature(), 7, "6 items, expected each of 1..7 once; item_id 7 is missing"),
    (challenge_item_feature(), 5, "row 5: item_id 6 is outside 1..5"),
    (challenge_item_feature(likes_level=[0, 1, 2, 11, 4, 5]), None, "row 3: likes_level 11 is outside 0..10"),
    (challenge_item_feature(views_level=[0, 1, None, 3, 4, 5]), None, "row 2: views_level is null"),
    (challenge_item_feature(txt_emb_BERT=_vectors(6, 768, 4, [0.0] * 512)), None,
     "row 4: txt_emb_BERT has length 512, expected length 768"),
    (challenge_item_feature(img_emb_CLIPRN50=_vectors(6, 1024, 1, [float("inf")] * 1024)), None,
     "row 1: img_emb_CLIPRN50 holds a non-finite value"),
    (challenge_item_feature().drop("txt_emb_BERT"), None,
     "missing column 'txt_emb_BERT' (has item_id, item_title, item_tags, likes_level, views_level, img_emb_CLIPRN50)"),
])
def test_read_item_feature_bad(tmp_path: Path, df: pl.DataFrame, n_items: int | None, problem: str) -> None:
    path = write_frame(df, tmp_path / "item_feature.parquet")
    assert _error(read_item_feature, path, n_items) == f"{path}: {problem}"


@pytest.mark.parametrize("change", ["dropped", "other widths"])
def test_item_feature_without_embeddings_gives_titles_and_levels(tmp_path: Path, change: str) -> None:
    """embeddings=False reads only ids, titles and levels: an item_feature whose embedding columns are absent or of
    other widths gives what the full read gives, and only the full read refuses it; ids and levels are still
    checked."""
    df = challenge_item_feature()
    full = read_item_feature(write_frame(df, tmp_path / "full.parquet"))
    if change == "dropped":
        other = df.drop("txt_emb_BERT", "img_emb_CLIPRN50")
        refusal = "missing column 'txt_emb_BERT'"
    else:
        other = df.with_columns(txt_emb_BERT=pl.col("txt_emb_BERT").list.head(384))
        refusal = "row 0: txt_emb_BERT has length 384, expected length 768"
    path = write_frame(other[[4, 0, 3, 1, 5, 2]], tmp_path / "item_feature.parquet")
    lean = read_item_feature(path, CHALLENGE_ITEMS, embeddings=False)
    assert lean.titles.equals(full.titles) and lean.levels.equals(full.levels)
    assert lean.item_ids.tolist() == full.item_ids.tolist() and lean.text_emb is None and lean.image_emb is None
    assert refusal in _error(read_item_feature, path)
    write_frame(other.with_columns(likes_level=pl.lit(12)), path)
    assert _error(read_item_feature, path, embeddings=False) == f"{path}: row 0: likes_level 12 is outside 0..10"


def test_challenge_sequences_and_titles_need_no_item_feature_embeddings(tmp_path: Path) -> None:
    """build_sequences and the text extraction's titles read a challenge folder whose item_feature.parquet has no
    embedding columns, the same as one that has them (only challenge_bert_clip's PCA needs the vectors)."""
    from pipeline.core.config import BuildSequencesConfig
    from pipeline.sequences.inputs import challenge_sequences
    from pipeline.sources.items import item_titles

    challenge_layout(tmp_path, tmp_path / "MicroLens_1M_x1")
    cfg = BuildSequencesConfig(max_len=SEQ_LEN)
    before, titles = challenge_sequences(tmp_path, cfg), item_titles("mmctr", tmp_path)
    feature = tmp_path / "item_feature.parquet"
    pl.read_parquet(feature).drop("txt_emb_BERT", "img_emb_CLIPRN50").write_parquet(feature)
    after = challenge_sequences(tmp_path, cfg)
    assert after.items.equals(before.items) and after.summary == before.summary
    for name in ("train", "valid", "test"):
        assert after.splits[name].collect().equals(before.splits[name].collect())
    assert item_titles("mmctr", tmp_path).equals(titles)
    with pytest.raises(DataError, match="missing column 'txt_emb_BERT'"):  # the one reader that needs them
        pca_inputs("challenge_bert_clip", tmp_path, "-", "-")


@pytest.mark.parametrize("name", ["mm[1]", "mm*", "mm?"])
def test_folder_names_that_look_like_patterns_are_read_as_names(tmp_path: Path, name: str) -> None:
    """polars expands `[`, `*` and `?` in a path unless told not to: a folder `mm[1]` read its sibling `mm1`'s
    files, and `mm*` every match's rows joined. A folder is read by its name, whatever siblings it has."""
    from pipeline.core.config import BuildSequencesConfig
    from pipeline.sequences.inputs import challenge_sequences
    from pipeline.sources.items import item_titles

    cfg = BuildSequencesConfig(max_len=SEQ_LEN)
    challenge_layout(tmp_path / "clean", tmp_path / "clean")
    challenge_layout(tmp_path / name, tmp_path / name)
    for sibling in ("mm1", "mm_", "mmx"):  # a match of each pattern, with every label and title changed
        challenge_layout(tmp_path / sibling, tmp_path / sibling)
        for split in ("train", "valid", "test"):
            path = tmp_path / sibling / f"{split}.parquet"
            write_frame(pl.read_parquet(path).with_columns(label=1 - pl.col("label")), path)
        feature = tmp_path / sibling / "item_feature.parquet"
        write_frame(pl.read_parquet(feature).with_columns(item_title=pl.lit("other")), feature)
    clean, read = challenge_sequences(tmp_path / "clean", cfg), challenge_sequences(tmp_path / name, cfg)
    assert read.summary == clean.summary and read.items.equals(clean.items)
    for split in ("train", "valid", "test"):
        assert read.splits[split].collect().equals(clean.splits[split].collect())
    assert item_titles("mmctr", tmp_path / name).equals(item_titles("mmctr", tmp_path / "clean"))


def test_other_columns_of_a_split_may_have_any_name_and_a_partitioned_folder_is_named(tmp_path: Path) -> None:
    plain = read_split(write_frame(challenge_split(), tmp_path / "plain.parquet"), CHALLENGE_ITEMS).rows
    extra = write_frame(challenge_split().with_columns(_row=pl.lit(7), ID=pl.lit(3)), tmp_path / "extra.parquet")
    assert read_split(extra, CHALLENGE_ITEMS).rows.equals(plain)  # `_row` is the reader's own row index's name
    challenge_layout(tmp_path / "spark", tmp_path / "spark")
    (tmp_path / "spark" / "train.parquet").unlink()
    (tmp_path / "spark" / "train.parquet").mkdir()
    write_frame(challenge_split(), tmp_path / "spark" / "train.parquet" / "part-00000.parquet")
    with pytest.raises(DataError, match=r"spark/train\.parquet: a folder, not a file \(a partitioned dataset"):
        find_challenge_files(tmp_path / "spark")


def test_a_test_id_column_must_be_the_row_position(tmp_path: Path) -> None:
    """The submission's ID is the test row's position: a test file whose own ID column says otherwise (shuffled, a
    gap, a duplicate) would be scored against the wrong rows by a scorer that joins on it. Refused, naming the row;
    an ID column that is the position is read (and dropped) as before."""
    path = tmp_path / "test.parquet"
    write_frame(challenge_split(ID=[0, 1, 2, 3]), path)
    assert read_split(path, CHALLENGE_ITEMS, require_labels=False).rows.equals(
        read_split(write_frame(challenge_split(), tmp_path / "plain.parquet"), CHALLENGE_ITEMS,
                   require_labels=False).rows)
    for ids, row, value in (([0, 2, 1, 3], 1, 2), ([0, 1, 1, 3], 2, 1), ([10, 11, 12, 13], 0, 10)):
        write_frame(challenge_split(ID=ids), path)
        assert _error(read_split, path, CHALLENGE_ITEMS, require_labels=False) == (
            f"{path}: row {row}: ID {value} is not the row's position; the submission's IDs are the test rows' "
            "positions 0..n-1, so sort the file by ID (or drop the column)")
    write_frame(challenge_split(ID=[5, 5, 5, 5]), tmp_path / "train.parquet")  # only the test split's IDs count
    read_split(tmp_path / "train.parquet", CHALLENGE_ITEMS)


def test_challenge_sequences_refuse_empty_histories_and_cut_before_comparing_lengths(tmp_path: Path) -> None:
    """Every train history empty is refused as on the MicroLens path (a sequence model would learn from none); and
    splits padded to different lengths that agree once cut to max_len are read, as the challenge's loader does."""
    from pipeline.core.config import BuildSequencesConfig
    from pipeline.sequences.inputs import challenge_sequences

    challenge_layout(tmp_path, tmp_path)
    write_frame(challenge_split(item_seq=[[0, 0, 0, 0]] * 4), tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"train\.parquet: every train history is empty"):
        challenge_sequences(tmp_path, BuildSequencesConfig(max_len=SEQ_LEN))
    challenge_layout(tmp_path, tmp_path)
    write_frame(challenge_split(item_seq=[[0, 0, 0, 0, 1], [0, 0, 0, 1, 2], [3, 3, 4, 5, 6], [0] * 5]),
                tmp_path / "valid.parquet")
    data = challenge_sequences(tmp_path, BuildSequencesConfig(max_len=3))
    assert data.splits["valid"].collect()["item_seq"].to_list()[2] == [4, 5, 6]
    with pytest.raises(DataError, match=r"valid\.parquet: item_seq keeps 5 items \(of 5, build_sequences\.max_len "
                                        r"50\), but \{'train': 4, 'valid': 5\} across the splits"):
        challenge_sequences(tmp_path, BuildSequencesConfig(max_len=50))



def test_read_split_keeps_the_last_max_len_items_of_each_history(tmp_path: Path) -> None:
    # read cut, the rows are the whole read's with each history's most recent max_len items; the checks still see
    # the whole history (row 2's item before a 0 is dropped by the cut, yet named) and the file's length
    path = write_frame(challenge_split(), tmp_path / "train.parquet")
    whole = read_split(path, CHALLENGE_ITEMS).rows
    for max_len in (1, 3, SEQ_LEN, 50):
        split = read_split(path, CHALLENGE_ITEMS, max_len=max_len)
        assert split.seq_len == SEQ_LEN
        assert split.rows.equals(whole.with_columns(pl.col("item_seq").list.tail(max_len)))
    bad = write_frame(challenge_split(item_seq=[[0, 0, 0, 1], [0, 0, 1, 2], [3, 0, 5, 6], [0, 0, 0, 0]]),
                      tmp_path / "bad.parquet")
    assert _error(read_split, bad, CHALLENGE_ITEMS, max_len=2) == (
        f"{bad}: row 2: item_seq is not left-padded (a 0 follows an item id)")


def test_read_split_refuses_histories_longer_than_any_max_len_from_the_footer(tmp_path: Path) -> None:
    # rows 3 and 4 hold 300,000-long histories (of zeros: a 2 KB file); in row groups of 2 rows, the second
    # group's footer counts 150,005 values a row, so it is scanned and row 3 named, before any other check
    long = [0] * (3 * MAX_SEQ_LEN - 1) + [1]
    df = challenge_split(item_seq=[[0, 0, 0, 1], [0, 0, 1, 2], [0, 0, 1, 2], long], user_id=[1, 1, 2, 3])
    path = tmp_path / "train.parquet"
    pl.concat([df, df.tail(1)]).write_parquet(path, row_group_size=2)
    assert _error(read_split, path, CHALLENGE_ITEMS) == (
        f"{path}: row 3: item_seq has length {3 * MAX_SEQ_LEN}, longer than {MAX_SEQ_LEN} (the longest history "
        "build_sequences.max_len may keep)")
    # at the bound, the file is read (and cut)
    at_bound = challenge_split(item_seq=[[0] * (MAX_SEQ_LEN - 1) + [i] for i in (1, 2, 3, 4)])
    split = read_split(write_frame(at_bound, tmp_path / "valid.parquet"), CHALLENGE_ITEMS, max_len=2)
    assert split.seq_len == MAX_SEQ_LEN and split.rows["item_seq"].to_list() == [[0, i] for i in (1, 2, 3, 4)]

def test_pyarrow_errors_of_a_reader_are_one_line_naming_the_file(tmp_path: Path) -> None:
    """A reader that scans or copies pages with pyarrow (too-long lists, heavy row groups) raises its errors."""
    @reads_parquet
    def reader(path: Path) -> None:
        raise pa.ArrowInvalid("Couldn't decode page")

    assert _error(reader, tmp_path / "x.parquet") == (
        f"{tmp_path / 'x.parquet'}: not a readable parquet file (ArrowInvalid: Couldn't decode page)")


def test_heavy_row_groups_are_read_from_a_copy_in_smaller_ones(tmp_path: Path, monkeypatch) -> None:
    # polars decodes whole row groups, so one of many long histories (a small file of zeros) is read from a copy in
    # smaller row groups; the bound is lowered here to what a small file crosses: 3 rows of SEQ_LEN values do
    monkeypatch.setattr(challenge, "ROW_GROUP_LIST_VALUES", 2 * SEQ_LEN)
    split = challenge_split(item_seq=[[0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4]])
    light, heavy = tmp_path / "light.parquet", tmp_path / "heavy.parquet"
    split.write_parquet(light, row_group_size=2)
    split.write_parquet(heavy, row_group_size=4)
    copies = []
    real_copy = challenge._bounded_row_groups

    def spy(path, column):
        with real_copy(path, column) as source:
            copies.append((source, pq.ParquetFile(source).metadata.num_row_groups))
            yield source

    monkeypatch.setattr(challenge, "_bounded_row_groups", contextmanager(spy))
    for max_len in (None, 2):
        assert read_split(heavy, CHALLENGE_ITEMS, max_len=max_len).rows.equals(
            read_split(light, CHALLENGE_ITEMS, max_len=max_len).rows)
    assert copies[0][0] != heavy and copies[0][1] == 4 and not copies[0][0].exists()  # a row a row group, removed
    assert copies[1][0] == light
    # errors name the file read and its row, not the copy
    bad = split.with_columns(item_id=pl.Series([1, 2, CHALLENGE_ITEMS + 1, 1]))
    bad.write_parquet(heavy, row_group_size=4)
    assert _error(read_split, heavy, CHALLENGE_ITEMS) == (
        f"{heavy}: row 2: item_id {CHALLENGE_ITEMS + 1} is outside 1..{CHALLENGE_ITEMS}")


def test_item_vectors_longer_than_their_width_are_refused_from_the_footer(tmp_path: Path) -> None:
    # a row of 10M zeros is a few KB of file; the footer's count finds it before any page is read
    info = challenge_item_info()
    rows = info["item_emb_d128"].to_list()
    rows[3] = [0.0] * 10_000_000
    path = write_frame(info.with_columns(item_emb_d128=pl.Series(rows)), tmp_path / "item_info.parquet")
    assert _error(read_item_info, path) == f"{path}: row 3: item_emb_d128 has length 10000000, longer than 128"
    feature = challenge_item_feature()
    rows = feature["img_emb_CLIPRN50"].to_list()
    rows[2] = [0.0] * 2000
    path = write_frame(feature.with_columns(img_emb_CLIPRN50=pl.Series(rows)), tmp_path / "item_feature.parquet")
    assert _error(read_item_feature, path) == f"{path}: row 2: img_emb_CLIPRN50 has length 2000, longer than 1024"
    assert read_item_feature(path, embeddings=False).titles.height == CHALLENGE_ITEMS


def test_tag_lists_wider_than_max_tags_are_refused_from_the_footer(tmp_path: Path) -> None:
    # item_tags has no fixed width; lists of one width past the bound compress to little and would be embedded whole
    info = challenge_item_info()
    wide = MAX_ITEM_TAGS + 1
    tags = [[0] * wide] + [[0] * (wide - 1) + [3]] * (info.height - 1)
    path = write_frame(info.with_columns(item_tags=pl.Series(tags)), tmp_path / "item_info.parquet")
    assert _error(read_item_info, path) == (f"{path}: row 0: item_tags has length {wide}, longer than {MAX_ITEM_TAGS} "
                                            "(the most tags an item may carry, as build_sequences.max_tags)")
    # at the bound they are read
    tags = [[0] * MAX_ITEM_TAGS] + [[0] * (MAX_ITEM_TAGS - 1) + [3]] * (info.height - 1)
    path = write_frame(info.with_columns(item_tags=pl.Series(tags)), tmp_path / "item_info.parquet")
    assert read_item_info(path).tags["item_tags"].list.len().unique().to_list() == [MAX_ITEM_TAGS]


def test_embeddings_too_large_for_float32_distances_are_refused(tmp_path: Path) -> None:
    """Finite values past 1e15 overflow float32 squared distances (faiss's k-means aborted the process): the item
    table reader names the row."""
    emb = np.random.default_rng(0).standard_normal((CHALLENGE_ITEMS + 1, 128)).astype(np.float32)
    emb[0] = 0
    emb[3, 5] = 1e19
    path = write_frame(challenge_item_info(item_emb_d128=emb.tolist()), tmp_path / "item_info.parquet")
    assert _error(read_item_info, path) == (f"{path}: row 3: item_emb_d128 holds a value beyond +-1e+15 (squared "
                                            "distances would overflow float32)")


def test_challenge_sequences_size_the_tag_table_by_distinct_tags(tmp_path: Path) -> None:
    """item_info's tag ids index the model's tag table: one id of 2^31-1 among 3 distinct tags gives a vocabulary
    of 4 rows (padding + 3) in the feature map, not 2^31, and each item keeps its own tags (by rank)."""
    from pipeline.core.config import BuildSequencesConfig
    from pipeline.sequences.inputs import challenge_sequences

    challenge_layout(tmp_path, tmp_path)
    raw = [[0] * 5, [0, 0, 0, 0, 9], [0, 0, 0, 9, 2**31 - 1], [0] * 5, [0, 0, 0, 0, 40], [0] * 5, [0, 0, 0, 9, 40]]
    write_frame(challenge_item_info(item_tags=raw), tmp_path / "item_info.parquet")
    data = challenge_sequences(tmp_path, BuildSequencesConfig(max_len=SEQ_LEN))
    assert data.feature_map()["item_tags"].vocab_size == 4
    rank = {0: 0, 9: 1, 40: 2, 2**31 - 1: 3}
    assert data.items["item_tags"].to_list() == [[rank[t] for t in row] for row in raw]


def test_challenge_bert_clip_inputs_are_the_file_vectors_by_item_id(tmp_path: Path) -> None:
    """fit_pca's challenge_bert_clip inputs: ids 1..N and each item's own txt_emb_BERT / img_emb_CLIPRN50 row,
    whatever the file's row order."""
    challenge_layout(tmp_path, tmp_path)
    df = challenge_item_feature()
    write_frame(df[[2, 5, 0, 4, 1, 3]], tmp_path / "item_feature.parquet")
    ids, text, image = pca_inputs("challenge_bert_clip", tmp_path, "-", "-")
    assert ids.tolist() == df["item_id"].to_list()
    np.testing.assert_array_equal(text, np.array(df["txt_emb_BERT"].to_list(), dtype=np.float32))
    np.testing.assert_array_equal(image, np.array(df["img_emb_CLIPRN50"].to_list(), dtype=np.float32))


@pytest.mark.parametrize(("split", "label"), [("train", 1.0), ("valid", 0.0)])
def test_challenge_train_or_valid_split_of_one_class_names_the_file(tmp_path: Path, split: str, label: float
                                                                    ) -> None:
    """A train or valid split whose labels are all one value cannot train or early-stop: build_sequences names the
    challenge file itself, not our copy that train would read later. A one-class test split is hidden labels."""
    from pipeline.core.config import BuildSequencesConfig
    from pipeline.sequences.inputs import challenge_sequences

    challenge_layout(tmp_path, tmp_path)
    path = tmp_path / f"{split}.parquet"
    write_frame(challenge_split().with_columns(label=pl.lit(label)), path)
    write_frame(challenge_split().with_columns(label=pl.lit(0)), tmp_path / "test.parquet")
    assert _error(challenge_sequences, tmp_path, BuildSequencesConfig(max_len=SEQ_LEN)) == (
        f"{path}: every label is {int(label)}; {NEEDS_BOTH_CLASSES[split]} needs clicks and non-clicks")


# ---------------------------------------------------------------------------------------------- submission


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_submission_round_trips(tmp_path: Path) -> None:
    scores = np.concatenate([np.random.default_rng(0).random(997), [0.0, 1.0, 1e-300]])
    out = tmp_path / "sub" / "prediction.zip"
    write_submission(scores, out)
    members = _members(out)
    assert list(members) == ["prediction.csv"]
    table = pl.read_csv(io.BytesIO(members["prediction.csv"]))
    assert table.columns == ["ID", "Task1"]
    assert table["ID"].to_list() == list(range(scores.size))
    np.testing.assert_array_equal(table["Task1"].to_numpy(), scores)  # exact: shortest round-trip floats
    assert [p.name for p in out.parent.iterdir()] == ["prediction.zip"]  # no temporary file left

    again = tmp_path / "again.zip"
    write_submission(scores.astype(np.float32).astype(np.float64), again)
    write_submission(scores, again)
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(("scores", "problem"), [
    (np.array([0.5, np.nan]), "score 1 is nan, not a probability in [0, 1]"),
    (np.array([0.5, 0.2, 1.5]), "score 2 is 1.5, not a probability in [0, 1]"),
    (np.array([-0.1]), "score 0 is -0.1, not a probability in [0, 1]"),
    (np.zeros((2, 2)), "scores must be one probability per test row, got shape (2, 2)"),
])
def test_submission_rejects_non_probabilities(tmp_path: Path, scores: np.ndarray, problem: str) -> None:
    out = tmp_path / "prediction.zip"
    with pytest.raises(ValueError) as info:
        write_submission(scores, out)
    assert str(info.value) == problem
    assert not list(tmp_path.iterdir())


def test_written_dataset_reads_back_through_the_readers(tmp_path: Path) -> None:
    """write_challenge_dataset writes what the readers accept and give back: splits without event_ts, item_info
    indexed by item id, item_feature with the levels the splits carry."""
    rng = np.random.default_rng(0)
    splits = {name: challenge_split().with_columns(pl.col("label").cast(pl.Float32), event_ts=pl.lit(7, pl.Int64))
              for name in ("train", "valid", "test")}
    info = challenge_item_info()
    tags = np.array(info["item_tags"].to_list())
    emb = np.array(info["item_emb_d128"].to_list(), dtype=np.float32)
    text, image = rng.standard_normal((CHALLENGE_ITEMS, 768)), rng.standard_normal((CHALLENGE_ITEMS, 1024))
    titles = [f"title {i}" for i in range(1, CHALLENGE_ITEMS + 1)]
    write_challenge_dataset(tmp_path, splits, item_tags=tags, item_emb=emb, titles=titles, text_emb=text,
                            image_emb=image)
    files = find_challenge_files(tmp_path)
    for name in ("train", "valid", "test"):
        back = read_split(getattr(files, name), CHALLENGE_ITEMS).rows
        assert back.drop("event_ts").equals(splits[name].drop("event_ts"))
        assert "event_ts" not in pl.read_parquet(getattr(files, name)).columns
    got = read_item_info(files.item_info)
    np.testing.assert_array_equal(got.emb_d128, emb)
    assert got.tags["item_tags"].to_list() == info["item_tags"].to_list()
    feat = read_item_feature(files.item_feature, CHALLENGE_ITEMS)
    assert feat.titles["title"].to_list() == titles
    np.testing.assert_allclose(feat.text_emb, text, rtol=1e-6)
    levels = dict(zip(splits["train"]["item_id"].to_list(), splits["train"]["likes_level"].to_list(), strict=True))
    assert {i: lv for i, lv in feat.levels.select("item_id", "likes_level").iter_rows() if i in levels} == levels
    with pytest.raises(ValueError, match="text/image embeddings"):
        write_challenge_dataset(tmp_path, splits, item_tags=tags, item_emb=emb, titles=titles, text_emb=text[1:],
                                image_emb=image)
