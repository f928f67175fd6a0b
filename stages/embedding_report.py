"""Stage embedding_report: neighbour agreement of the text-only, image-only and PCA item embeddings.

In:  --text, --image  embedding frames (pipeline/extract/store.py contract), placed by item_id
     --item-info      item_info.parquet from fit_pca (row i = item i; its item_emb_d<dim> is the PCA table)
     --items          items.parquet from build_sequences (item_tags, row i = item i)
     --raw-dir        the raw folder; on synthetic data its planted.npz gives each item's planted topic
Out: --metrics        JSON (pipeline/itememb/report.py): {text|image|pca: {tag_agreement, topic_agreement,
                      recall_at_k}, chance: {...}, index, k, queries, recall_at_k}
Params: embedding_report.* (EmbeddingReportConfig), data.source
"""

import logging
from pathlib import Path

import click
import polars as pl

from pipeline.core.config import EmbeddingReportConfig, load_section
from pipeline.core.io import read_parquet, write_json
from pipeline.core.items import item_info_table
from pipeline.core.stage import data_section, file_options, params_option, raw_dir_option, readable, stage_main, summary
from pipeline.itememb.report import embedding_report, frame_table, item_tag_sets
from pipeline.sources.planted import PlantedModel

log = logging.getLogger("embedding_report")


@click.command(help=summary(__doc__))
@file_options("--text", "--image", "--item-info", "--items")
@raw_dir_option
@file_options("--metrics")
@params_option
@stage_main
def main(text: str, image: str, item_info: str, items: str, raw_dir: str | None, metrics: str,
         params_path: str) -> None:
    cfg = load_section(params_path, "embedding_report", EmbeddingReportConfig)
    data, raw_dir = data_section(params_path, raw_dir)
    tags = item_tag_sets(read_parquet(items, {"item_id": pl.Int32, "item_tags": pl.List(pl.Int32)}), items)
    n_rows = len(tags)
    tables = {
        "text": frame_table(read_parquet(text, {"item_id": pl.Int32}), n_rows, text),
        "image": frame_table(read_parquet(image, {"item_id": pl.Int32}), n_rows, image),
        "pca": item_info_table(read_parquet(item_info, {"item_id": pl.Int32}), item_info),
    }
    planted = Path(raw_dir) / "planted.npz"
    topic = PlantedModel.load(planted).item_topic if data.source == "synthetic" and planted.is_file() else None
    report = embedding_report(tables, tags, topic, cfg)
    write_json(report, metrics)
    log.info("neighbour agreement over %d items (%s index): %s", report["queries"], cfg.index,
             readable(report))


if __name__ == "__main__":
    main()
