"""Stage fit_pca: normalise text and image embeddings, concatenate, PCA to fit_pca.dim; write item_info.

In:  --text, --image  embedding frames (pipeline/embeddings.py contract)
     --items          items.parquet from build_sequences (item table with item_tags)
Out: --out        item_info.parquet: item_id Int32 (row i = item i, row 0 = padding), item_tags List(Int32),
                  item_emb_d<dim> Array(Float32, dim) (zeros for row 0) -- the challenge's item_info format
     --transform  pca.npz (pipeline/pca.py FittedPCA, no pickle)
     --metrics    JSON: dim, explained variance (total and per modality input width)
     --plot       JSON list {component, explained_variance_ratio, cumulative} for `dvc plots`
Params: fit_pca.* (FitPCAConfig)
"""

import logging

import click
import numpy as np
import polars as pl

from pipeline.config import FitPCAConfig, load_section
from pipeline.io import read_parquet, write_json, write_parquet
from pipeline.items import check_item_table, scatter_by_id
from pipeline.pca import aligned_matrices, fit_pca
from pipeline.stage import params_option, stage_main

log = logging.getLogger("fit_pca")


@click.command()
@click.option("--text", required=True, type=click.Path(dir_okay=False))
@click.option("--image", required=True, type=click.Path(dir_okay=False))
@click.option("--items", required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--transform", required=True, type=click.Path(dir_okay=False))
@click.option("--metrics", required=True, type=click.Path(dir_okay=False))
@click.option("--plot", required=True, type=click.Path(dir_okay=False))
@params_option
@stage_main
def main(text: str, image: str, items: str, out: str, transform: str, metrics: str, plot: str,
         params_path: str) -> None:
    cfg = load_section(params_path, "fit_pca", FitPCAConfig)
    ids, text_x, image_x = aligned_matrices(read_parquet(text, {"item_id": pl.Int32}),
                                            read_parquet(image, {"item_id": pl.Int32}))
    table = read_parquet(items, {"item_id": pl.Int32, "item_tags": pl.List(pl.Int32)})
    check_item_table(table, items)
    fitted = fit_pca(text_x, image_x, dim=cfg.dim, normalize=cfg.normalize, seed=cfg.seed)
    scores = scatter_by_id(ids, fitted.transform(text_x, image_x), table.height)  # (N+1, dim), row 0 zeros
    info = table.select("item_id", "item_tags").with_columns(
        pl.Series(f"item_emb_d{cfg.dim}", scores, dtype=pl.Array(pl.Float32, cfg.dim)))
    write_parquet(info, out)
    fitted.save(transform)
    ratio = fitted.explained_variance_ratio
    write_json({"dim": cfg.dim, "explained_variance": float(ratio.sum()), "items": len(ids),
                "input_dims": {"text": text_x.shape[1], "image": image_x.shape[1]}}, metrics)
    write_json([{"component": i + 1, "explained_variance_ratio": float(r), "cumulative": float(c)}
                for i, (r, c) in enumerate(zip(ratio, np.cumsum(ratio)))], plot)
    log.info("PCA %d -> %d over %d items, explained variance %.3f", text_x.shape[1] + image_x.shape[1],
             cfg.dim, len(ids), ratio.sum())


if __name__ == "__main__":
    main()
