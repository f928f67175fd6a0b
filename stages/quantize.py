"""Stage quantize: semantic ids of the items, residual k-means codes of fit_pca's item embedding.

In:  --item-info  item_info.parquet from fit_pca (row i = item i; item_tags, item_emb_d<dim>)
Out: --out        semantic_ids.parquet: item_id Int32 (row i = item i, row 0 = padding), codes Array(Int16, levels)
                  (item i's codes, coarse to fine, each in 0..codebook_size-1; row 0 all -1: padding has none)
     --metrics    JSON (pipeline/itememb/quantize.py quantize_report): method, items, by_level {recon_error,
                  perplexity, used_codes, tag_agreement, items}, collisions, distinct_codes, chance_tag_agreement;
                  with rqvae the per-level errors are of the encoder's latent, plus decoder_recon_error and
                  final_loss; empty_items
Params: quantize.* (QuantizeConfig)

Items whose row is all zeros (no usable title or cover, or a release's missing embedding) are left out of the fit
and of the metrics (`items` counts the others, `empty_items` them): identical points at the origin drew every item
of a flat embedding into their cluster (level 1 used 2 of 64 codes on a data set with 5% of them). Each gets the
codes of the zero vector under the fitted codebooks, so they share one tuple.
"""

import logging

import click
import numpy as np
import polars as pl

from pipeline.core.config import QuantizeConfig, load_section
from pipeline.core.io import (
    DataError,
    list_matrix,
    output_group,
    prepare_outputs,
    read_parquet,
    write_json,
    write_parquet,
)
from pipeline.core.items import item_info_table
from pipeline.core.stage import file_options, params_option, readable, stage_main, summary
from pipeline.itememb.neighbours import usable_items
from pipeline.itememb.quantize import assign_codes, quantize_report, residual_kmeans
from pipeline.itememb.rqvae import train_rqvae

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
    content = usable_items(table)  # (M,) ids of the items with a non-zero row
    if len(content) < cfg.codebook_size:
        raise DataError(f"{item_info}: {len(content)} items with a non-zero embedding (of {len(table) - 1}), fewer "
                        f"than quantize.codebook_size ({cfg.codebook_size}) centroids")
    x, content_tags = table[content], tags[np.concatenate([[0], content])]  # (M, D), (M+1, T): row r = content[r]
    if cfg.method == "rqvae":
        fit = train_rqvae(x, cfg.levels, cfg.codebook_size, hidden=cfg.rqvae_hidden,
                          latent_dim=cfg.rqvae_latent_dim, epochs=cfg.rqvae_epochs,
                          learning_rate=cfg.rqvae_learning_rate, beta=cfg.rqvae_beta,
                          batch_size=cfg.rqvae_batch_size, seed=cfg.seed)
        fitted, zero_codes = fit.codes, fit.zero_codes
        # The codebooks quantise the encoder's latent, so the per-level errors are the latent's.
        report = {"method": "rqvae", **quantize_report(fit.latent, fitted, fit.codebooks, content_tags,
                                                       cfg.sample_items, cfg.seed),
                  "decoder_recon_error": fit.recon_error, "final_loss": fit.losses[-1]}
    else:
        fitted, codebooks = residual_kmeans(x, cfg.levels, cfg.codebook_size, cfg.iterations, cfg.seed)
        zero_codes = assign_codes(np.zeros((1, x.shape[1])), codebooks)[0]
        report = {"method": "kmeans", **quantize_report(x, fitted, codebooks, content_tags, cfg.sample_items,
                                                        cfg.seed)}
    report["empty_items"] = len(table) - 1 - len(content)
    padded = np.vstack([np.full((1, cfg.levels), -1, dtype=np.int16),
                        np.broadcast_to(zero_codes, (len(table) - 1, cfg.levels))])  # (N+1, L)
    padded[content] = fitted
    with output_group():
        write_parquet(pl.DataFrame({"item_id": info["item_id"],
                                    "codes": pl.Series(padded, dtype=pl.Array(pl.Int16, cfg.levels))}), out)
        write_json(report, metrics)
    log.info("%d items -> %d levels of %d codes: %s", report["items"], cfg.levels, cfg.codebook_size,
             readable({k: v for k, v in report.items() if k != "by_level"}))


if __name__ == "__main__":
    main()
