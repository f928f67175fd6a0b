"""Stage build_sequences: leakage-free user histories, time split, sampled non-clicks, item side features.

In:  --pairs pairs.csv, --titles title_en.csv (item universe), --likes-views likes_and_views.txt, --tags tags.csv
Out: --out-dir   {train,valid,test}.parquet (contract in pipeline/sequences.py)
     --items     items.parquet: item table (item_id 0..N, item_tags, likes_level, views_level; pipeline/items.py)
     --feature-map feature_map.json (pipeline/feature_map.py), --metrics JSON (rows, positives, history lengths)
Params: build_sequences.* (BuildSequencesConfig)
"""

import logging
from pathlib import Path

import click
import polars as pl

from pipeline.config import BuildSequencesConfig, load_section
from pipeline.feature_map import Feature, FeatureMap
from pipeline.io import write_json, write_parquet
from pipeline.items import build_item_features
from pipeline.raw import item_ids, read_likes_views, read_pairs, read_tags, read_titles
from pipeline.sequences import build_split_rows
from pipeline.stage import params_option, stage_main

log = logging.getLogger("build_sequences")


@click.command()
@click.option("--pairs", required=True, type=click.Path(dir_okay=False))
@click.option("--titles", required=True, type=click.Path(dir_okay=False))
@click.option("--likes-views", required=True, type=click.Path(dir_okay=False))
@click.option("--tags", required=True, type=click.Path(dir_okay=False))
@click.option("--out-dir", required=True, type=click.Path(file_okay=False))
@click.option("--items", "items_out", required=True, type=click.Path(dir_okay=False))
@click.option("--feature-map", required=True, type=click.Path(dir_okay=False))
@click.option("--metrics", required=True, type=click.Path(dir_okay=False))
@params_option
@stage_main
def main(pairs: str, titles: str, likes_views: str, tags: str, out_dir: str, items_out: str, feature_map: str,
         metrics: str, params_path: str) -> None:
    cfg = load_section(params_path, "build_sequences", BuildSequencesConfig)
    items, vocab = build_item_features(item_ids(read_titles(titles)), read_likes_views(likes_views),
                                       read_tags(tags), max_tags=cfg.max_tags, n_levels=cfg.n_levels)
    rows = build_split_rows(read_pairs(pairs), items, max_len=cfg.max_len, min_history=cfg.min_history,
                            valid_frac=cfg.valid_frac, test_frac=cfg.test_frac, neg_ratio=cfg.neg_ratio,
                            seed=cfg.seed)
    summary = {}
    for name in ("train", "valid", "test"):
        part = rows.filter(pl.col("split") == name).drop("split")
        write_parquet(part, Path(out_dir) / f"{name}.parquet")
        summary[name] = {"rows": part.height, "clicks": int(part["label"].sum()),
                         "mean_history": float(part["item_seq"].list.eval(pl.element() != 0).list.sum().mean())}
        log.info("%s: %s", name, summary[name])
    write_parquet(items, items_out)
    n_item_ids = items.height
    FeatureMap((
        Feature("item_id", "categorical", "item", vocab_size=n_item_ids),
        Feature("item_tags", "sequence", "item", vocab_size=len(vocab) + 1, max_len=cfg.max_tags),
        Feature("item_seq", "sequence", "history", vocab_size=n_item_ids, max_len=cfg.max_len,
                share_embedding="item_id"),
        Feature("likes_level", "categorical", "context", vocab_size=cfg.n_levels),
        Feature("views_level", "categorical", "context", vocab_size=cfg.n_levels),
    )).save(feature_map)
    write_json(summary | {"items": n_item_ids - 1, "tags": len(vocab)}, metrics)


if __name__ == "__main__":
    main()
