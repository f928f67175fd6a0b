"""Stage extract_text: BERT-family embeddings of item titles.

In:  --raw-dir  the raw folder of data.source (MicroLens titles file, or the challenge's item_feature.parquet)
Out: --out     parquet: item_id Int32, emb Array(Float32, H), status Utf8 (ok | empty); one row per item
     --metrics JSON: item count, embedding width, counts per status, shards (total, reused), final batch size
Work in progress lives in `.<out name>.shards/` beside --out (finished shards, reused by a rerun after a crash
or kill); it is removed once --out is written. Test hook: MMCTR_FAULT_AFTER_SHARDS (pipeline/embeddings.py).
Params: extract_text.* (ExtractTextConfig), data.source
"""

import logging

import click

from pipeline.config import ExtractTextConfig, load_section
from pipeline.distributed import distributed
from pipeline.embeddings import (
    BatchSize,
    extract_text_sharded,
    load_text_encoder,
    text_shard_store,
    write_extraction,
)
from pipeline.sources import item_titles
from pipeline.stage import data_section, params_option, raw_dir_option, set_threads, stage_main

log = logging.getLogger("extract_text")


@click.command()
@raw_dir_option
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--metrics", required=True, type=click.Path(dir_okay=False))
@params_option
@stage_main
def main(raw_dir: str | None, out: str, metrics: str, params_path: str) -> None:
    cfg = load_section(params_path, "extract_text", ExtractTextConfig)
    data, raw_dir = data_section(params_path, raw_dir)
    set_threads(cfg.num_threads)
    items = item_titles(data.source, raw_dir)
    with distributed(cfg.device, "extract_text.device") as (dist, device):
        store = text_shard_store(out, items, cfg, device)
        tokenizer, model = load_text_encoder(cfg.model, cfg.trust_remote_code)
        log.info("encoding %d titles with %s on %s in %d shards (rank %d of %d)", items.height, cfg.model, device,
                 len(store), dist.rank, dist.world)
        batch = BatchSize(cfg.batch_size)
        frame, shards = extract_text_sharded(store, items, tokenizer, model, cfg, device, batch, dist)
        if dist.is_main:
            write_extraction(frame, out, metrics, store, shards, batch)


if __name__ == "__main__":
    main()
