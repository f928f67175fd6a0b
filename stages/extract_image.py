"""Stage extract_image: open_clip image-tower embeddings of item covers.

In:  --raw-dir  the raw folder of data.source: the item universe (its titles file) and its covers folder
Out: --out     parquet: item_id Int32, emb Array(Float32, D),
               status Utf8 (ok | missing | empty | corrupt | too_large; zero vector unless ok)
     --metrics JSON: item count, embedding width, counts per status, shards (total, reused), final batch size
Work in progress lives in `.<out name>.shards/` beside --out (finished shards, reused by a rerun after a crash
or kill); it is removed once --out is written. Test hook: MMCTR_FAULT_AFTER_SHARDS (pipeline/embeddings.py).
Params: extract_image.* (ExtractImageConfig), data.source
"""

import logging

import click

from pipeline.config import ExtractImageConfig, load_section
from pipeline.distributed import distributed
from pipeline.embeddings import (
    BatchSize,
    default_num_workers,
    extract_image_sharded,
    image_shard_store,
    load_image_encoder,
    write_extraction,
)
from pipeline.raw import item_ids
from pipeline.sources import item_cover_paths, item_titles
from pipeline.stage import data_section, params_option, raw_dir_option, set_threads, stage_main

log = logging.getLogger("extract_image")


@click.command()
@raw_dir_option
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--metrics", required=True, type=click.Path(dir_okay=False))
@params_option
@stage_main
def main(raw_dir: str | None, out: str, metrics: str, params_path: str) -> None:
    cfg = load_section(params_path, "extract_image", ExtractImageConfig)
    data, raw_dir = data_section(params_path, raw_dir)
    set_threads(cfg.num_threads)
    ids = item_ids(item_titles(data.source, raw_dir))
    paths = item_cover_paths(data.source, raw_dir, ids)
    with distributed(cfg.device, "extract_image.device") as (dist, device):
        store = image_shard_store(out, ids, paths, cfg, device)
        model, preprocess = load_image_encoder(cfg.model, cfg.pretrained, device)
        workers = default_num_workers(cfg.num_workers, device, dist.local_world)
        log.info("encoding %d covers with %s (%s) on %s in %d shards, %d loader workers (rank %d of %d)", len(ids),
                 cfg.model, cfg.pretrained, device, len(store), workers, dist.rank, dist.world)
        batch = BatchSize(cfg.batch_size)
        frame, shards = extract_image_sharded(store, ids, paths, model, preprocess, cfg, device, batch, workers,
                                              dist)
        if dist.is_main:
            write_extraction(frame, out, metrics, store, shards, batch)


if __name__ == "__main__":
    main()
