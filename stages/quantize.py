"""Stage quantize: semantic ids of the items, residual k-means codes of fit_pca's item embedding.

In:  --item-info  item_info.parquet from fit_pca (row i = item i; item_tags, item_emb_d<dim>)
Out: --out        semantic_ids.parquet: item_id Int32 (row i = item i, row 0 = padding), codes Array(Int16, levels)
                  (item i's codes, coarse to fine, each in 0..codebook_size-1; row 0 all -1: padding has none)
     --metrics    JSON (pipeline/itememb/quantize.py quantize_report): method, items, by_level {recon_error,
                  perplexity, used_codes, tag_agreement, items}, collisions, distinct_codes, chance_tag_agreement;
                  with rqvae the per-level errors are of the encoder's latent, plus decoder_recon_error and
                  final_loss; empty_items
Params: quantize.* (QuantizeConfig)

Items whose row is all zeros are left out of the fit and of the metrics (`items` counts the others, `empty_items`
them) and get the zero vector's codes (pipeline/itememb/semantic.py says why).
"""

import logging

import click
import polars as pl

from pipeline.core.config import QuantizeConfig, load_section
from pipeline.core.io import (
    list_matrix,
    output_group,
    prepare_outputs,
    read_parquet,
    write_json,
    write_parquet,
)
from pipeline.core.items import item_info_table
from pipeline.core.stage import file_options, params_option, readable, stage_main, summary
from pipeline.itememb.semantic import semantic_ids

log = logging.getLogger("quantize")


@click.command(help=summary(__doc__))
@file_options("--item-info", "--out", "--metrics")
@params_option
@stage_main
def main(item_info: str, out: str, metrics: str, params_path: str) -> None:
    cfg = load_section(params_path, "quantize", QuantizeConfig)
    prepare_outputs(out, metrics)
    info = read_parquet(item_info, {"item_id": pl.Int32, "item_tags": pl.List(pl.Int32)})
    table = item_info_table(info, item_info)  # (N+1, D), checked: row i = item i
    tags = list_matrix(item_info, info, "item_tags", None, pl.Int64)  # (N+1, T), 0 = no tag
    codes, report = semantic_ids(table, tags, cfg, item_info)  # (N+1, L) int16
    with output_group():
        write_parquet(pl.DataFrame({"item_id": info["item_id"],
                                    "codes": pl.Series(codes, dtype=pl.Array(pl.Int16, cfg.levels))}), out)
        write_json(report, metrics)
    log.info("%d items -> %d levels of %d codes: %s", report["items"], cfg.levels, cfg.codebook_size,
             readable({k: v for k, v in report.items() if k != "by_level"}))


if __name__ == "__main__":
    main()
