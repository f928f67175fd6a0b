"""Stage fit_pca: normalise text and image embeddings, concatenate, PCA to fit_pca.dim; write item_info.

In:  --text, --image  embedding frames (pipeline/extract/store.py contract)
     --items          items.parquet from build_sequences (item table with item_tags)
     --raw-dir        the raw folder, read when data.item_embeddings takes the challenge's own embeddings:
                      challenge_bert_clip fits the PCA over its txt_emb_BERT + img_emb_CLIPRN50 instead of --text/
                      --image; challenge_d128 takes its item_emb_d128 (no PCA is fitted), divided by one factor so
                      that the items' mean row norm is 1 (the scale of our own PCA's rows)
Out: --out        item_info.parquet: item_id Int32 (row i = item i, row 0 = padding), item_tags List(Int32),
                  item_emb_d<dim> Array(Float32, dim) (zeros for row 0) -- the challenge's item_info format
     --transform  pca.npz (pipeline/itememb/pca.py FittedPCA, no pickle; with challenge_d128 a `given` marker
                  and the `scale` the table was divided by)
     --metrics    JSON: dim, explained variance (total and per modality input width); with challenge_d128
                  dim, items, given and scale (the given rows' mean norm)
     --plot       JSON list {component, explained_variance_ratio, cumulative} for `dvc plots`
Params: fit_pca.* (FitPCAConfig), data.item_embeddings
"""

import logging

import click
import numpy as np
import polars as pl

from pipeline.core.config import FitPCAConfig, load_section
from pipeline.core.feature_map import mm_column
from pipeline.core.io import (
    DataError,
    atomic_path,
    output_group,
    prepare_outputs,
    read_parquet,
    write_json,
    write_parquet,
)
from pipeline.core.items import check_item_table, mean_norm_rows, scatter_by_id
from pipeline.core.stage import data_section, file_options, params_option, raw_dir_option, readable, stage_main, summary
from pipeline.itememb.inputs import challenge_item_embeddings, pca_inputs
from pipeline.itememb.pca import fit_pca

log = logging.getLogger("fit_pca")


@click.command(help=summary(__doc__))
@file_options("--text", "--image", "--items")
@raw_dir_option
@file_options("--out", "--transform", "--metrics", "--plot")
@params_option
@stage_main
def main(text: str, image: str, items: str, raw_dir: str | None, out: str, transform: str, metrics: str, plot: str,
         params_path: str) -> None:
    cfg = load_section(params_path, "fit_pca", FitPCAConfig)
    data, raw_dir = data_section(params_path, raw_dir)
    prepare_outputs(out, transform, metrics, plot)
    table = read_parquet(items, {"item_id": pl.Int32, "item_tags": pl.List(pl.Int32)})
    check_item_table(table, items)
    with output_group():  # the table, transform, metrics and curve go in place together, or none of them
        if data.item_embeddings == "challenge_d128":
            # (N+1, 128), row i = item i, checked by the reader. The organisers' PCA scores come at whatever scale
            # their inputs had (mean row norm 5-20 on challenge-style data, against about 1 for our own PCA of
            # unit rows); at that scale the target * history products and the cross network's polynomial blew
            # single rows' logits up to 1e5 mid-training. One global factor puts them at our scale.
            scores, scale = mean_norm_rows(challenge_item_embeddings(raw_dir))
            with atomic_path(transform) as tmp, open(tmp, "wb") as f:
                np.savez(f, given=np.array("challenge_d128"), scale=np.array(scale))
            summary = {"dim": scores.shape[1], "items": table.height - 1, "given": "challenge_d128", "scale": scale}
            curve = []
        else:
            ids, text_x, image_x = pca_inputs(data.item_embeddings, raw_dir, text, image)
            fitted = fit_pca(text_x, image_x, dim=cfg.dim, normalize=cfg.normalize, seed=cfg.seed)
            scores = scatter_by_id(ids, fitted.transform(text_x, image_x), table.height)  # (N+1, dim), row 0 zeros
            fitted.save(transform)
            ratio = fitted.explained_variance_ratio
            summary = {"dim": cfg.dim, "explained_variance": float(ratio.sum()), "items": len(ids),
                       "input_dims": {"text": text_x.shape[1], "image": image_x.shape[1]}}
            curve = [{"component": i + 1, "explained_variance_ratio": float(r), "cumulative": float(c)}
                     for i, (r, c) in enumerate(zip(ratio, np.cumsum(ratio)))]
        if scores.shape[0] != table.height:
            raise DataError(f"{items}: {table.height} item rows, but the item embeddings have {scores.shape[0]}")
        dim = scores.shape[1]
        info = table.select("item_id", "item_tags").with_columns(
            pl.Series(mm_column(dim), scores, dtype=pl.Array(pl.Float32, dim)))
        write_parquet(info, out)
        write_json(summary, metrics)
        write_json(curve, plot)
    log.info("item embeddings (%s): %s", data.item_embeddings, readable(summary))

if __name__ == "__main__":
    main()
