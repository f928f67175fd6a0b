"""Labelled rows of each source for build_sequences, by `data.source`.

- `synthetic` and `microlens`: clicks (and impressions, when the folder has them) of a MicroLens raw release folder
  become histories, splits and negatives (build.py), with item features from likes/views and tags;
- `mmctr`: the challenge's train/valid/test parquet files already hold the rows; they are checked and re-labelled
  into the same split contract."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.core.config import BuildSequencesConfig
from pipeline.core.feature_map import Feature, FeatureMap
from pipeline.core.io import DataError
from pipeline.core.items import scatter_by_id
from pipeline.core.metrics import require_both_classes
from pipeline.sequences.build import CHUNK_CELLS, SPLITS, RowSource, build_exposure_rows, build_split_rows
from pipeline.sequences.item_features import build_item_features, dense_tag_ids
from pipeline.sources.challenge import N_LEVELS, find_challenge_files, read_item_feature, read_item_info, read_split
from pipeline.sources.microlens import (
    check_known_items,
    drop_repeated_events,
    find_microlens_files,
    item_ids,
    read_impressions,
    read_item_universe,
    read_likes_views,
    read_pairs,
    read_tags,
)

log = logging.getLogger(__name__)
# Rows at which polars' sink_parquet (pinned) closes a row group when not given a size: it holds that many rows
# before writing them, 32 GB at max_len 100,000.
SINK_GROUP_ROWS = 81_920


@dataclass(frozen=True)
class SequenceData:
    """What build_sequences writes, whatever the source: per-split row frames (or lazy frames) in the split
    contract, the item table (pipeline/sequences/item_features.py contract) and the counts its feature map needs."""

    splits: dict[str, pl.LazyFrame]
    summary: dict[str, dict[str, float]]
    items: pl.DataFrame
    n_tags: int  # tag ids are 1..n_tags
    max_tags: int  # length of item_tags
    max_len: int  # length of item_seq
    n_levels: int  # likes/views levels are 0..n_levels-1
    dropped_clicks: int  # clicks on unknown items dropped under data.unknown_items: drop
    repeated_events: int  # click and exposure rows that repeated an earlier row exactly, dropped
    short_history: int  # clicks (a click log) or exposures (an exposure log) with fewer than min_history earlier
    #                     clicks: no row, in any split

    @property
    def row_group_size(self) -> int | None:
        """Rows per row group of the split files (sink_parquet's `row_group_size`): None (polars' own grouping)
        while its SINK_GROUP_ROWS rows hold at most CHUNK_CELLS item_seq cells, else as many rows as do."""
        return None if SINK_GROUP_ROWS * self.max_len <= CHUNK_CELLS else max(1, CHUNK_CELLS // self.max_len)

    def feature_map(self) -> FeatureMap:
        """The feature map of these splits (the frozen item embedding is added by train)."""
        n_item_ids = self.items.height
        return FeatureMap((
            Feature("item_id", "categorical", "item", vocab_size=n_item_ids),
            Feature("item_tags", "sequence", "item", vocab_size=self.n_tags + 1, max_len=self.max_tags),
            Feature("item_seq", "sequence", "history", vocab_size=n_item_ids, max_len=self.max_len,
                    share_embedding="item_id"),
            Feature("likes_level", "categorical", "context", vocab_size=self.n_levels),
            Feature("views_level", "categorical", "context", vocab_size=self.n_levels),
        ))


SECONDS = (10**9, 10**10)  # Unix seconds of 2001 to 2286
MILLISECONDS = (10**12, 10**13)  # the same span in milliseconds


def check_one_time_unit(events: pl.DataFrame, path: Path) -> None:
    """The timestamps of `events` (user, item, timestamp) are not Unix seconds and milliseconds at once (a log
    joined from two exports): ordered together, the seconds would all come before the milliseconds, reordering
    every history and the time split. DataError naming the file and one event of each. Such a log has times in
    both spans and none between them (1e10..1e12); one unit's times that run through the spans (a relative clock
    in milliseconds or microseconds) do not."""
    ts = pl.col("timestamp")
    first = {unit: events.filter(ts.is_between(low, high, closed="left")).head(1)
             for unit, (low, high) in (("seconds", SECONDS), ("milliseconds", MILLISECONDS))}
    between = events.filter(ts.is_between(SECONDS[1], MILLISECONDS[0], closed="left")).height
    if all(frame.height for frame in first.values()) and not between:
        seen = [f"user {f['user'][0]}, item {f['item'][0]} at {f['timestamp'][0]} reads as {unit}"
                for unit, f in first.items()]
        raise DataError(f"{path}: timestamps in two units ({'; '.join(seen)}); convert the file to one unit")


def check_clicks_logged(impressions: pl.DataFrame, pairs: pl.DataFrame, impressions_path: Path, pairs_path: Path
                        ) -> None:
    """Every clicked exposure (click 1) is one of the clicks (user, item, timestamp) of pairs: the histories are
    read from pairs, so a click logged there at another time than its exposure (a shifted clock, seconds against
    milliseconds) would sit in the history of its own exposure, the label leaked into the input. DataError naming
    both files and the first such exposure."""
    unlogged = impressions.filter(pl.col("click") == 1).join(pairs, on=["user", "item", "timestamp"], how="anti")
    if unlogged.height:
        first = unlogged.row(0, named=True)
        raise DataError(f"{impressions_path}: {unlogged.height} clicked exposures are not clicks of {pairs_path.name} "
                        f"at the same user, item and timestamp (first: user {first['user']}, item {first['item']}, "
                        f"timestamp {first['timestamp']}); the histories come from {pairs_path.name}, so such a click "
                        "would be in its own exposure's history")


def microlens_sequences(raw_dir: str | Path, unknown_items: str, cfg: BuildSequencesConfig) -> SequenceData:
    """A MicroLens raw release (or the synthetic one) -> histories, split and sampled non-clicks."""
    files = find_microlens_files(raw_dir)
    ids = item_ids(read_item_universe(files.titles))
    tags = read_tags(files.tags) if files.tags else pl.DataFrame(
        {"item_id": pl.Series([], dtype=pl.Int32), "tags": pl.Series([], dtype=pl.List(pl.Utf8))})
    likes_views = read_likes_views(files.likes_views)
    if not likes_views["item_id"].is_in(ids.tolist()).any():  # items without counts get level 0, but not all
        raise DataError(f"{files.likes_views}: no counts for any of the {ids.size} items of {files.titles.name}")
    items, vocab = build_item_features(ids, likes_views, tags, max_tags=cfg.max_tags, n_levels=cfg.n_levels)
    if files.pairs.suffix == ".tsv":  # a .tsv holds no times: each click's "timestamp" is its place in its line
        if cfg.split == "time":
            raise DataError(f"build_sequences.split: 'time' needs timestamps, and {files.pairs.name} has none (a "
                            "click's place in its user's line stands in for its time); use 'leave_last'")
        if cfg.negatives == "exposures":
            raise DataError(f"build_sequences.negatives: 'exposures' matches each clicked exposure to a click of the "
                            f"pairs file at its timestamp, and {files.pairs.name} has none; use a pairs.csv with "
                            "timestamps")
    pairs, repeated = drop_repeated_events(read_pairs(files.pairs), files.pairs)
    check_one_time_unit(pairs, files.pairs)
    pairs, dropped = check_known_items(pairs, ids, unknown_items, files.pairs)
    split = dict(max_len=cfg.max_len, min_history=cfg.min_history, split=cfg.split, valid_frac=cfg.valid_frac,
                 test_frac=cfg.test_frac)
    if cfg.negatives == "exposures":
        if files.impressions is None:
            raise DataError(f"build_sequences.negatives: 'exposures' needs an impressions file in {raw_dir} "
                            f"(looked for impressions.csv or MicroLens-<size>_impressions.csv)")
        impressions, n_repeated = drop_repeated_events(read_impressions(files.impressions), files.impressions)
        check_one_time_unit(impressions, files.impressions)
        impressions, n_unknown = check_known_items(impressions, ids, unknown_items, files.impressions)
        check_clicks_logged(impressions, pairs, files.impressions, files.pairs)
        repeated += n_repeated
        rows: RowSource = build_exposure_rows(pairs, impressions, items, **split)
        dropped += n_unknown
    else:
        rows = build_split_rows(pairs, items, **split, neg_ratio=cfg.neg_ratio, neg_sampling=cfg.neg_sampling,
                                neg_exclude=cfg.neg_exclude, seed=cfg.seed)
    summary = {name: rows.summary(name) for name in SPLITS}
    if not summary["train"]["mean_history"]:  # no train row at all, or none with a history
        # A history holds strictly earlier clicks: when every click of a user shares one timestamp there are none,
        # and a sequence model would be trained on empty histories without a word.
        raise DataError(f"{files.pairs}: no train row has an earlier click in its history (clicks of a user that "
                        "share a timestamp are not each other's history); check the timestamp column")
    for name in ("valid", "test"):  # train would stop on an empty valid split, evaluate on an empty test split
        if not summary[name]["rows"]:
            raise DataError(f"build_sequences.split: no {name} rows from {raw_dir} under split {cfg.split!r} "
                            f"(valid_frac {cfg.valid_frac}, test_frac {cfg.test_frac}, min_history "
                            f"{cfg.min_history}): events that share a cut's timestamp all fall on one side of it")
    return SequenceData({name: rows.lazy(name) for name in SPLITS}, summary, items, len(vocab), cfg.max_tags,
                        cfg.max_len, cfg.n_levels, dropped, repeated, int(rows.keep.size - rows.keep.sum()))


def challenge_sequences(raw_dir: str | Path, cfg: BuildSequencesConfig) -> SequenceData:
    """The MMCTR challenge's own splits, validated and passed through (the challenge fixes histories, labels and
    split). Histories longer than build_sequences.max_len keep their most recent max_len items, as the
    challenge's data loader does; the other build_sequences keys do not apply."""
    files = find_challenge_files(raw_dir)
    info = read_item_info(files.item_info)
    levels = read_item_feature(files.item_feature, info.n_items, embeddings=False).levels
    n_rows = info.n_items + 1
    item_tags, n_tags = dense_tag_ids(info.tags["item_tags"])  # the file's tag ids may be any in 0..2^31-1
    items = info.tags.with_columns(item_tags, **{
        col: pl.Series(scatter_by_id(levels["item_id"].to_numpy(), levels[col].to_numpy(), n_rows), dtype=pl.Int8)
        for col in ("likes_level", "views_level")})
    splits, summary, lengths = {}, {}, {}
    for name in SPLITS:
        path = getattr(files, name)
        split = read_split(path, info.n_items, require_labels=name != "test", max_len=cfg.max_len)
        rows, length = split.rows, split.seq_len
        lengths[name] = min(length, cfg.max_len)  # what is kept: splits padded to other lengths past it still agree
        if len(set(lengths.values())) > 1:
            raise DataError(f"{path}: item_seq keeps {lengths[name]} items (of {length}, build_sequences.max_len "
                            f"{cfg.max_len}), but {lengths} across the splits")
        splits[name] = rows.lazy()
        summary[name] = {"rows": rows.height, "clicks": int(rows["label"].sum()), "mean_history": float(
            rows["item_seq"].list.eval(pl.element() != 0).list.sum().mean())}
        if name != "test":  # train would stop on it after the extraction stages, naming our copy, not this file
            require_both_classes(path, rows["label"].to_numpy(), name)
    if not summary["train"]["mean_history"]:  # as microlens_sequences: no model of the history could learn one
        raise DataError(f"{files.train}: every train history is empty (item_seq all padding); a sequence model "
                        "would be trained on no history at all")
    max_tags = int(items["item_tags"].list.len().max())
    return SequenceData(splits, summary, items, n_tags, max_tags, min(length, cfg.max_len), N_LEVELS, 0, 0, 0)
