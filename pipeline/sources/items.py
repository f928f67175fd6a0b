"""The item universe of the configured `data.source`, for the extraction stages.

- `synthetic` and `microlens`: a MicroLens raw release folder (microlens.py finds its files by name): titles from
  the titles file, covers from the covers folder under either naming;
- `mmctr`: the WWW2025 MMCTR challenge folder (challenge.py): titles from item_feature.parquet, covers from
  item_images/ (optional: without it every cover is `missing`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.sources.challenge import find_challenge_files, read_item_feature
from pipeline.sources.microlens import (
    COVER_NAMINGS,
    cover_path,
    find_microlens_item_files,
    read_item_universe,
)

log = logging.getLogger(__name__)


def item_titles(source: str, raw_dir: str | Path) -> pl.DataFrame:
    """The item universe with titles: item_id Int32 (unique), title Utf8."""
    if source == "mmctr":
        return read_item_feature(find_challenge_files(raw_dir).item_feature, embeddings=False).titles
    return read_item_universe(find_microlens_item_files(raw_dir).titles)


def item_cover_paths(source: str, raw_dir: str | Path, ids: np.ndarray) -> list[Path]:
    """The cover path of each id (a path may not exist: extraction marks it `missing`)."""
    if source == "mmctr":
        files = find_challenge_files(raw_dir)
        folder, naming = files.images, files.image_naming
    else:
        items = find_microlens_item_files(raw_dir)
        folder, naming = items.covers, items.cover_naming
    if folder is None:
        # The covers are a separate (large) download: without them every item is `missing`, never a stop.
        folder, naming = Path(raw_dir) / ("item_images" if source == "mmctr" else "covers"), COVER_NAMINGS[0]
        log.warning("%s: no covers folder; every cover counts as missing (looked for %s)", raw_dir, folder.name)
    return [cover_path(folder, int(i), naming) for i in ids]
