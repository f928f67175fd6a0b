"""The `mmctr` command: tools around the pipeline's outputs (the stages themselves run through `dvc repro`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import click
import numpy as np
import polars as pl

from pipeline.compare import comparison_table, experiment_records, queue_commands
from pipeline.config import DataConfig, ParamsError, load_section
from pipeline.io import DataError, read_parquet
from pipeline.items import check_item_table
from pipeline.neighbours import draw_gallery, item_neighbours
from pipeline.raw import read_titles
from pipeline.sources import item_cover_paths, item_titles


@click.group()
def main() -> None:
    """mmctr: multimodal CTR pipeline tools."""


@main.command()
@click.option("--item", "item_id", required=True, type=int, help="query item id")
@click.option("-k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--item-info", default="data/features/item_info.parquet", show_default=True,
              type=click.Path(dir_okay=False), help="PCA item table written by fit_pca")
@click.option("--gallery", default=None, type=click.Path(dir_okay=False),
              help="also draw the query's and the neighbours' covers, ids, titles and scores into this PNG")
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="its data section (source, raw_dir) says where titles and covers are; defaults if absent")
@click.option("--raw-dir", default=None, type=click.Path(file_okay=False), help="overrides data.raw_dir")
@click.option("--titles", default=None, type=click.Path(dir_okay=False),
              help="a MicroLens titles file, instead of the titles of data.source in the raw folder")
def neighbours(item_id: int, k: int, item_info: str, gallery: str | None, params_path: str, raw_dir: str | None,
               titles: str | None) -> None:
    """Print ITEM's k nearest items (cosine over the PCA embedding, via faiss) with their titles; with
    --gallery, also draw their covers in a PNG grid (query first; missing covers are drawn grey)."""
    try:
        data = load_section(params_path, "data", DataConfig) if Path(params_path).is_file() else DataConfig()
        raw_dir = raw_dir or data.raw_dir
        info = read_parquet(item_info, {"item_id": pl.Int32})
        check_item_table(info, item_info)
        col = next((c for c in info.columns if c.startswith("item_emb_d")), None)
        if col is None:
            raise DataError(f"{item_info}: no item_emb_d<dim> column")
        table = info[col].to_numpy()
        names = dict((read_titles(titles) if titles else item_titles(data.source, raw_dir)).iter_rows())
        found = item_neighbours(table, item_id, k)
        if gallery is not None:
            shown = [(item_id, None), *found]
            covers = item_cover_paths(data.source, raw_dir, np.array([i for i, _ in shown]))
            draw_gallery([(i, names.get(i, ""), score, cover) for (i, score), cover in zip(shown, covers)], gallery)
    except (DataError, ParamsError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"query {item_id}: {names.get(item_id, '')}")
    for rank, (other, score) in enumerate(found, start=1):
        click.echo(f"{rank:>3}  {other:>8}  {score:6.3f}  {names.get(other, '')}")
    if gallery is not None:
        click.echo(f"gallery: {gallery}")


@main.command()
@click.option("--queue/--show", "queue", default=False,
              help="--queue: add the 10 experiments to DVC's queue (then `dvc queue start`); "
                   "--show (default): print the table from `dvc exp show --json`")
@click.option("--dry-run", is_flag=True, help="with --queue: print the commands instead of running them")
def compare(queue: bool, dry_run: bool) -> None:
    """The paper's Table 2 on the current data: DIN, DIN+Dice, Transformer+DCNv2 and its two ablations, each
    without and with the frozen multimodal embedding, as DVC experiments named cmp-<variant>-<id|mm>."""
    if queue:
        for cmd in queue_commands():
            click.echo(" ".join(cmd))
            if not dry_run:
                subprocess.run(cmd, check=True)
        if not dry_run:
            click.echo("queued; run them with `dvc queue start` (one at a time) and watch `dvc queue status`")
        return
    out = subprocess.run(["dvc", "exp", "show", "--json", "--all-commits"], check=True, capture_output=True,
                         text=True).stdout
    click.echo(comparison_table(experiment_records(json.loads(out))))
