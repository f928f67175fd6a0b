"""Stage build_sequences: leakage-free user histories, train/valid/test split, sampled non-clicks, item side features.

In:  --raw-dir   the raw folder of data.source: a MicroLens release (pairs, titles, likes/views, tags), or the
                 MMCTR challenge folder, whose own splits are validated and passed through
Out: --out-dir   {train,valid,test}.parquet (contract in pipeline/sequences/build.py)
     --items     items.parquet: item table (item_id 0..N, item_tags, likes_level, views_level;
                 pipeline/sequences/item_features.py)
     --feature-map feature_map.json (pipeline/core/feature_map.py), --metrics JSON (rows, positives, history lengths)
Params: build_sequences.* (BuildSequencesConfig), data.source, data.unknown_items
"""

import logging
from pathlib import Path

import click

from pipeline.core.config import BuildSequencesConfig, load_section
from pipeline.core.io import atomic_path, output_group, prepare_outputs, write_json, write_parquet
from pipeline.core.stage import (
    PathArg,
    data_section,
    file_options,
    params_option,
    raw_dir_option,
    readable,
    stage_main,
    summary,
)
from pipeline.sequences.build import SPLITS
from pipeline.sequences.inputs import challenge_sequences, microlens_sequences

log = logging.getLogger("build_sequences")


@click.command(help=summary(__doc__))
@raw_dir_option
@click.option("--out-dir", required=True, type=PathArg(file_okay=False))
@file_options("--items:items_out", "--feature-map", "--metrics")
@params_option
@stage_main
def main(raw_dir: str | None, out_dir: str, items_out: str, feature_map: str, metrics: str, params_path: str) -> None:
    cfg = load_section(params_path, "build_sequences", BuildSequencesConfig)
    data, raw_dir = data_section(params_path, raw_dir)
    prepare_outputs(*(Path(out_dir) / f"{name}.parquet" for name in SPLITS), items_out, feature_map, metrics)
    if data.source == "mmctr":
        seqs = challenge_sequences(raw_dir, cfg)
    else:
        seqs = microlens_sequences(raw_dir, data.unknown_items, cfg)
    with output_group():  # the splits, items, feature map and metrics go in place together, or none of them
        for name in SPLITS:
            # Streamed a chunk of events at a time, and written a bounded row group at a time: at MicroLens-1M
            # scale a split does not fit in memory.
            with atomic_path(Path(out_dir) / f"{name}.parquet") as tmp:
                seqs.splits[name].sink_parquet(tmp, compression="zstd", row_group_size=seqs.row_group_size)
            log.info("%s: %s", name, readable(seqs.summary[name]))
        write_parquet(seqs.items, items_out)
        seqs.feature_map().save(feature_map)
        write_json(seqs.summary | {"items": seqs.items.height - 1, "tags": seqs.n_tags,
                                   "dropped_clicks": seqs.dropped_clicks, "repeated_events": seqs.repeated_events,
                                   "short_history": seqs.short_history},
                   metrics)


if __name__ == "__main__":
    main()
