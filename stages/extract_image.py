"""Stage extract_image: open_clip image-tower embeddings of item covers.

In:  --raw-dir  the raw folder of data.source: the item universe (its titles file) and its covers folder
Out: --out     parquet: item_id Int32, emb Array(Float32, D), status Utf8 (ok | missing | corrupt)
     --metrics JSON: item count, embedding width, counts per status
Params: extract_image.* (ExtractImageConfig), data.source
"""

import logging

import click

from pipeline.config import DataConfig, ExtractImageConfig, load_section
from pipeline.embeddings import extract_image_embeddings, load_image_encoder, status_counts
from pipeline.io import write_json, write_parquet
from pipeline.raw import item_ids
from pipeline.sources import item_cover_paths, item_titles
from pipeline.stage import params_option, pick_device, set_threads, stage_main

log = logging.getLogger("extract_image")


@click.command()
@click.option("--raw-dir", required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--metrics", required=True, type=click.Path(dir_okay=False))
@params_option
@stage_main
def main(raw_dir: str, out: str, metrics: str, params_path: str) -> None:
    cfg = load_section(params_path, "extract_image", ExtractImageConfig)
    data = load_section(params_path, "data", DataConfig)
    set_threads(cfg.num_threads)
    device = pick_device(cfg.device, "extract_image.device")
    ids = item_ids(item_titles(data.source, raw_dir))
    model, preprocess = load_image_encoder(cfg.model, cfg.pretrained, device)
    log.info("encoding %d covers with %s (%s) on %s", len(ids), cfg.model, cfg.pretrained, device)
    frame = extract_image_embeddings(ids, item_cover_paths(data.source, raw_dir, ids), model, preprocess,
                                     batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=device,
                                     amp=cfg.amp)
    write_parquet(frame, out)
    counts = status_counts(frame)
    write_json({"items": frame.height, "dim": frame["emb"].dtype.size, "status": counts}, metrics)
    log.info("wrote %s: %d x %d, status %s", out, frame.height, frame["emb"].dtype.size, counts)


if __name__ == "__main__":
    main()
