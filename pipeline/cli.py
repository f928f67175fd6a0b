"""The `mmctr` command: tools around the pipeline's outputs (the stages themselves run through `dvc repro`)."""

from __future__ import annotations

import click
import polars as pl

from pipeline.io import DataError, read_parquet
from pipeline.items import check_item_table
from pipeline.neighbours import item_neighbours
from pipeline.raw import read_titles


@click.group()
def main() -> None:
    """mmctr: multimodal CTR pipeline tools."""


@main.command()
@click.option("--item", "item_id", required=True, type=int, help="query item id")
@click.option("-k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--item-info", default="data/features/item_info.parquet", show_default=True,
              type=click.Path(dir_okay=False), help="PCA item table written by fit_pca")
@click.option("--titles", default="data/raw/title_en.csv", show_default=True, type=click.Path(dir_okay=False))
def neighbours(item_id: int, k: int, item_info: str, titles: str) -> None:
    """Print ITEM's k nearest items (cosine over the PCA embedding, via faiss) with their titles."""
    try:
        info = read_parquet(item_info, {"item_id": pl.Int32})
        check_item_table(info, item_info)
        col = next((c for c in info.columns if c.startswith("item_emb_d")), None)
        if col is None:
            raise DataError(f"{item_info}: no item_emb_d<dim> column")
        table = info[col].to_numpy()
        names = dict(read_titles(titles).iter_rows())
        found = item_neighbours(table, item_id, k)
    except (DataError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"query {item_id}: {names.get(item_id, '')}")
    for rank, (other, score) in enumerate(found, start=1):
        click.echo(f"{rank:>3}  {other:>8}  {score:6.3f}  {names.get(other, '')}")
