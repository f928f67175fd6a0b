"""`data` params and the source dispatch of item titles and covers (pipeline/sources/items.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.core.config import (
    BuildSequencesConfig,
    DataConfig,
    ParamsError,
    from_dict,
)
from pipeline.core.io import DataError
from pipeline.sequences.inputs import check_one_time_unit, microlens_sequences
from pipeline.sources.items import item_cover_paths, item_titles
from pipeline.sources.microlens import read_impressions, read_pairs
from tests.conftest import CHALLENGE_ITEMS, challenge_layout


@pytest.mark.parametrize("data, message", [
    ({"source": "synthetic", "raw_dir": "data/other"}, "data.raw_dir: the synthetic source is read from data/raw"),
    ({"source": "microlens", "raw_dir": "data/raw"}, "data.raw_dir: data/raw is rewritten by make_synthetic"),
    ({"source": "mmctr", "raw_dir": "./data/raw/"}, "data.raw_dir: data/raw is rewritten by make_synthetic"),
    ({"source": "kaggle"}, "data.source: must be one of 'synthetic', 'microlens', 'mmctr'"),
    ({"unknown_items": "skip"}, "data.unknown_items: must be one of 'error', 'drop'"),
    ({"item_embeddings": "challenge_d128"}, "data.item_embeddings: 'challenge_d128' uses the challenge's files"),
])
def test_data_section_errors_name_the_key(data, message):
    with pytest.raises(ParamsError) as info:
        from_dict(DataConfig, data, "data")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_data_section_accepts_real_sources_elsewhere():
    assert from_dict(DataConfig, {"source": "microlens", "raw_dir": "data/microlens"}, "data").source == "microlens"


def microlens_release(root: Path) -> Path:
    """A MicroLens-100k-style folder: release file names, covers named image<id>.jpg."""
    root.mkdir()
    (root / "MicroLens-100k_pairs.csv").write_text("user,item,timestamp\n1,2,10\n1,1,20\n")
    (root / "MicroLens-100k_title_en.csv").write_text("2,second, with a comma\n1,first\n")
    (root / "MicroLens-100k_likes_and_views.txt").write_text("1\t3\t30\n2\t4\t40\n")
    (root / "covers").mkdir()
    for i in (1, 2):
        (root / "covers" / f"image{i}.jpg").write_bytes(b"")
    return root


def test_microlens_titles_and_covers(tmp_path):
    raw = microlens_release(tmp_path / "ml")
    titles = item_titles("microlens", raw)
    assert dict(titles.iter_rows()) == {2: "second, with a comma", 1: "first"}
    paths = item_cover_paths("microlens", raw, np.array([1, 2]))
    assert paths == [raw / "covers" / "image1.jpg", raw / "covers" / "image2.jpg"]


def test_challenge_titles_and_covers(tmp_path):
    challenge_layout(tmp_path, tmp_path / "MicroLens_1M_x1", images=[f"{i}.jpg" for i in range(1, CHALLENGE_ITEMS + 1)])
    titles = item_titles("mmctr", tmp_path)
    assert titles["item_id"].to_list() == list(range(1, CHALLENGE_ITEMS + 1))
    assert titles["title"][0] == "title 1, with a comma"
    paths = item_cover_paths("mmctr", tmp_path, np.array([3]))
    assert paths == [tmp_path / "item_images" / "3.jpg"]


def test_exposure_negatives_need_an_impressions_file(tmp_path):
    raw = microlens_release(tmp_path / "ml")
    cfg = BuildSequencesConfig(max_len=3, negatives="exposures")
    with pytest.raises(DataError, match="build_sequences.negatives: 'exposures' needs an impressions file"):
        microlens_sequences(raw, "error", cfg)
    (raw / "impressions.csv").write_text(
        "user,item,timestamp,click\n1,1,5,0\n1,2,10,1\n1,1,15,0\n1,1,20,1\n1,2,30,0\n")
    seqs = microlens_sequences(raw, "error", cfg)
    rows = {name: frame.collect() for name, frame in seqs.splits.items()}
    # leave_last by request: the exposure at 30 is test, at 20 valid; those at 5 and 10 have no earlier click
    # (dropped), the one at 15 has the click at 10.
    assert rows["test"].select("item_id", "item_seq", "label").rows() == [(2, [0, 2, 1], 0.0)]
    assert rows["valid"].select("item_id", "item_seq", "label").rows() == [(1, [0, 0, 2], 1.0)]
    assert rows["train"].select("item_id", "item_seq", "label").rows() == [(1, [0, 0, 2], 0.0)]
    (raw / "impressions.csv").write_text("user,item,timestamp,click\n1,9,5,0\n1,2,12,0\n1,2,15,0\n1,2,30,0\n")
    with pytest.raises(DataError, match="impressions.csv: 1 exposures reference unknown items"):
        microlens_sequences(raw, "error", cfg)
    assert microlens_sequences(raw, "drop", cfg).dropped_clicks == 1


def _frames(seqs) -> dict:
    return {name: frame.collect() for name, frame in seqs.splits.items()}


def test_a_log_appended_to_itself_gives_the_clean_rows_and_counts_the_repeats(tmp_path):
    """Exact repeats of (user, item, timestamp) are one event logged twice: kept, each click's target would be its
    own latest history item with label 1. They are dropped and counted; the rows equal the clean log's."""
    raw = microlens_release(tmp_path / "ml")
    (raw / "MicroLens-100k_title_en.csv").write_text("".join(f"{i},title {i}\n" for i in range(1, 9)))
    (raw / "MicroLens-100k_likes_and_views.txt").write_text("".join(f"{i}\t{i}\t{10 * i}\n" for i in range(1, 9)))
    clicks = [(u, (u + k) % 8 + 1, 100 * k + u) for u in range(1, 5) for k in range(6)]
    pairs = "user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in clicks)
    (raw / "MicroLens-100k_pairs.csv").write_text(pairs)
    cfg = BuildSequencesConfig(max_len=4)
    clean = microlens_sequences(raw, "error", cfg)
    (raw / "MicroLens-100k_pairs.csv").write_text(pairs + pairs.split("\n", 1)[1])
    doubled = microlens_sequences(raw, "error", cfg)
    assert (clean.repeated_events, doubled.repeated_events) == (0, len(clicks))
    for name, rows in _frames(doubled).items():
        assert rows.equals(_frames(clean)[name])
        last = rows["item_seq"].list.last()
        assert not (rows["item_id"] == last).any(), f"{name}: a target is its own last history item"


def test_repeated_exposures_are_dropped_and_a_conflicting_one_is_an_error(tmp_path):
    raw = microlens_release(tmp_path / "ml")
    cfg = BuildSequencesConfig(max_len=3, negatives="exposures")
    log = "user,item,timestamp,click\n1,1,5,0\n1,2,10,1\n1,1,15,0\n1,1,20,1\n1,2,30,0\n"
    (raw / "impressions.csv").write_text(log + "1,2,30,0\n1,1,20,1\n")
    assert microlens_sequences(raw, "error", cfg).repeated_events == 2
    (raw / "impressions.csv").write_text(log + "1,2,30,1\n")
    with pytest.raises(DataError, match=r"impressions.csv: lines 6 and 7: user 1 shown item 2 at timestamp 30 "
                                        r"with different click flags"):
        microlens_sequences(raw, "error", cfg)


def test_a_clicked_exposure_that_pairs_does_not_log_is_an_error(tmp_path):
    """Histories come from pairs, labels from the impressions: a click logged in pairs at another time than its
    exposure (here 1 later, as with a shifted clock or seconds against milliseconds) would be in its own exposure's
    history, the label leaked. Refused, naming both files and the first such exposure."""
    raw = microlens_release(tmp_path / "ml")
    cfg = BuildSequencesConfig(max_len=3, negatives="exposures")
    (raw / "impressions.csv").write_text("user,item,timestamp,click\n1,1,5,0\n1,2,10,1\n1,1,15,0\n1,1,20,1\n"
                                         "1,2,30,0\n")
    microlens_sequences(raw, "error", cfg)  # each click at its exposure's timestamp: fine
    (raw / "impressions.csv").write_text("user,item,timestamp,click\n1,1,5,0\n1,2,11,1\n1,1,15,0\n1,1,21,1\n"
                                         "1,2,30,0\n")
    with pytest.raises(DataError, match=r"impressions\.csv: 2 clicked exposures are not clicks of "
                                        r"MicroLens-100k_pairs\.csv at the same user, item and timestamp \(first: "
                                        r"user 1, item 2, timestamp 11\)"):
        microlens_sequences(raw, "error", cfg)


def test_an_empty_valid_split_is_named_by_build_sequences(tmp_path):
    """Under split: time both cuts can land on one timestamp shared by many events (here the last quarter of the
    clicks): valid then held no row, and train stopped later on its file. build_sequences names the params."""
    raw = microlens_release(tmp_path / "ml")
    (raw / "MicroLens-100k_title_en.csv").write_text("".join(f"{i},title {i}\n" for i in range(1, 31)))
    (raw / "MicroLens-100k_likes_and_views.txt").write_text("".join(f"{i}\t{i}\t{10 * i}\n" for i in range(1, 31)))
    clicks = [(u, 1 + (3 * u + t) % 30, t) for u in range(1, 11) for t in (1, 2, 3)] + [
        (u, 1 + (7 * u) % 30, 100) for u in range(1, 11)]
    (raw / "MicroLens-100k_pairs.csv").write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n"
                                                                                   for u, i, t in clicks))
    cfg = BuildSequencesConfig(max_len=3, split="time", valid_frac=0.1, test_frac=0.1, min_history=1)
    with pytest.raises(DataError, match=r"^build_sequences\.split: no valid rows from .* under split 'time' "
                                        r"\(valid_frac 0\.1, test_frac 0\.1, min_history 1\)"):
        microlens_sequences(raw, "error", cfg)


def test_a_huge_header_line_is_not_read_nor_quoted_whole(tmp_path):
    """A malformed pairs or impressions file of one long line (no newline: a sparse file of NULs) used to be read
    whole into the header check and quoted whole in the error (a 33-million-character line for 8 MiB)."""
    path = tmp_path / "impressions.csv"
    path.write_text("x" * 5_000_000)
    with pytest.raises(DataError) as err:
        read_impressions(path)
    assert str(err.value) == f"{path}: line 1: expected header 'user,item,timestamp,click', got {'x' * 60!r} ..."


def test_an_item_id_far_beyond_the_titles_is_named_before_anything_is_allocated(tmp_path):
    raw = microlens_release(tmp_path / "ml")
    (raw / "MicroLens-100k_title_en.csv").write_text("2,second\n2000000000,huge\n")
    for read in (lambda: item_titles("microlens", raw), lambda: microlens_sequences(raw, "error",
                                                                                   BuildSequencesConfig(max_len=3))):
        with pytest.raises(DataError, match=r"MicroLens-100k_title_en.csv: item_id 2000000000 is beyond the 2 "
                                            r"titles; item ids must be 1..2"):
            read()


@pytest.mark.parametrize("negatives", ["sampled", "exposures"])
def test_events_without_min_history_earlier_clicks_are_counted(tmp_path, negatives):
    """Clicks (a click log) or exposures (an exposure log) with fewer than min_history earlier clicks of their user
    give no row; build_sequences.json counts them, so a user sees how much of the log was left out."""
    raw = microlens_release(tmp_path / "ml")
    (raw / "MicroLens-100k_title_en.csv").write_text("".join(f"{i},title {i}\n" for i in range(1, 9)))
    (raw / "MicroLens-100k_likes_and_views.txt").write_text("".join(f"{i}\t{i}\t{10 * i}\n" for i in range(1, 9)))
    clicks = [(u, (u + k) % 8 + 1, 100 * k + u) for u in range(1, 5) for k in range(6)]  # click k: k earlier ones
    (raw / "MicroLens-100k_pairs.csv").write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n"
                                                                                    for u, i, t in clicks))
    # each click is a clicked exposure, and one unclicked exposure follows it (with k + 1 earlier clicks)
    (raw / "impressions.csv").write_text("user,item,timestamp,click\n" + "".join(
        f"{u},{i},{t},1\n{u},{i % 8 + 1},{t + 1},0\n" for u, i, t in clicks))
    for m in (0, 1, 2):
        seqs = microlens_sequences(raw, "error", BuildSequencesConfig(max_len=3, negatives=negatives, min_history=m))
        short = 4 * (m + max(m - 1, 0)) if negatives == "exposures" else 4 * m  # 4 users
        assert seqs.short_history == short, m
        if negatives == "exposures":
            assert sum(v["rows"] for v in seqs.summary.values()) + short == 2 * len(clicks)
        else:
            assert sum(v["clicks"] for v in seqs.summary.values()) + short == len(clicks)


def test_a_raw_folder_named_like_a_pattern_is_read_by_its_name(tmp_path):
    """polars' CSV reader expands `[...]` in a path by default: `ml[1]`'s pairs were read from a sibling `ml1`."""
    raw = microlens_release(tmp_path / "ml[1]")
    other = microlens_release(tmp_path / "ml1")
    (other / "MicroLens-100k_pairs.csv").write_text("user,item,timestamp\n7,1,10\n7,2,20\n")
    assert read_pairs(raw / "MicroLens-100k_pairs.csv")["user"].to_list() == [1, 1]


def test_every_polars_read_of_a_path_turns_globbing_off():
    """The guard for the test above, for every reader: a polars read or scan without glob=False would expand a
    user's folder name as a pattern."""
    import re

    root = Path(__file__).resolve().parents[1]
    calls = re.compile(r"pl\.(read|scan)_(parquet|csv|ipc|ndjson|parquet_schema)\(")
    for path in sorted((root / "pipeline").rglob("*.py")) + sorted((root / "stages").rglob("*.py")):
        text = path.read_text()
        for match in calls.finditer(text):
            call = text[match.start():text.index(")", match.end()) + 1]
            assert "glob=False" in call, f"{path.relative_to(root)}: {call}"


@pytest.mark.parametrize("log", ["pairs", "impressions"])
def test_timestamps_in_seconds_and_milliseconds_at_once_are_refused(tmp_path, log):
    """Two exports joined, one in Unix seconds and one in milliseconds: ordered together every second comes before
    every millisecond, reordering the histories and the time split without a word."""
    raw = microlens_release(tmp_path / "ml")
    (raw / "MicroLens-100k_pairs.csv").write_text("user,item,timestamp\n1,2,1600000000000\n1,1,1600000001000\n"
                                                  "2,1,1600000005\n2,2,1600000009\n")
    (raw / "impressions.csv").write_text("user,item,timestamp,click\n1,2,1600000000000,1\n1,1,1600000001000,1\n"
                                         "2,1,1600000005,1\n2,2,1600000009,1\n")
    if log == "impressions":  # the clicks in milliseconds throughout, an unclicked exposure in seconds
        (raw / "MicroLens-100k_pairs.csv").write_text("user,item,timestamp\n1,2,1600000000000\n1,1,1600000001000\n")
        (raw / "impressions.csv").write_text("user,item,timestamp,click\n1,2,1600000000000,1\n1,1,1600000000500,0\n"
                                             "1,1,1600000001000,1\n1,2,1600000002,0\n")
    cfg = BuildSequencesConfig(max_len=3, negatives="exposures" if log == "impressions" else "sampled")
    name = "impressions.csv" if log == "impressions" else "MicroLens-100k_pairs.csv"
    # one unit whose times run through both spans (relative milliseconds over 40 years) is fine
    check_one_time_unit(pl.DataFrame({"user": [1, 1, 2, 2], "item": [2, 1, 1, 2],
                                      "timestamp": [5 * 10**9, 6 * 10**10, 7 * 10**11, 13 * 10**11]}), Path("p.csv"))
    with pytest.raises(DataError, match=rf"{name}: timestamps in two units \(user \d, item \d at 16\d+ reads as "
                                        r"seconds; user \d, item \d at 16\d+ reads as milliseconds\)"):
        microlens_sequences(raw, "error", cfg)


@pytest.mark.parametrize(("change", "key"), [({"split": "time"}, "build_sequences.split"),
                                             ({"negatives": "exposures"}, "build_sequences.negatives")])
def test_a_tsv_pairs_file_has_no_times_for_a_time_split_or_an_exposure_log(tmp_path, change, key):
    """A .tsv's "timestamps" are places in a user's line: a global time cut on them splits by click count (every
    test user one with many clicks, without a word), and no exposure's time can match them."""
    raw = microlens_release(tmp_path / "ml")
    (raw / "MicroLens-100k_pairs.csv").unlink()
    (raw / "MicroLens-100k_title_en.csv").write_text("".join(f"{i},title {i}\n" for i in range(1, 9)))
    (raw / "MicroLens-100k_likes_and_views.txt").write_text("".join(f"{i}\t{i}\t{10 * i}\n" for i in range(1, 9)))
    (raw / "MicroLens-50k_pairs.tsv").write_text("1\t2 1 3 4\n2\t1 2 5\n")
    (raw / "impressions.csv").write_text("user,item,timestamp,click\n1,2,0,1\n")
    microlens_sequences(raw, "error", BuildSequencesConfig(max_len=3, neg_ratio=1))  # leave_last, sampled: fine
    with pytest.raises(DataError, match=rf"^{key}: .* MicroLens-50k_pairs\.tsv has none"):
        microlens_sequences(raw, "error", BuildSequencesConfig(max_len=3, **change))
