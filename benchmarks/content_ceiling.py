"""How much of a planted variant's item parameters its content reveals: the ceiling of any content-based model.

The history oracle (benchmarks/variants.py) knows every item's planted latent and popularity. A model learns them
from clicks, or, for an item without train rows, can only infer them from what it sees of the item: its 128-d
challenge embedding and its likes/views levels. This script re-draws a variant's planted model (the generator is
seeded), fits ridge regressions of each item's latent (on item_emb_d128) and log-popularity (on the embedding and
one-hot likes/views levels) over the items with train rows, and scores the test rows with the history oracle's
formula under three item tables:
    history oracle    the planted latent and popularity of every item (benchmarks/variants.py's column);
    content latent    the latent of the scored items replaced by its estimate, the popularity planted;
    content oracle    both replaced by their estimates.
"Scored items" are the held-out new items on a variant that has them (cold, cold-dense; fit on the others), so
the 0-exposure slice shows how far content alone can take a new item; on the others they are all items (an
in-sample fit), which says how much of the history oracle's edge is popularity a model must learn from clicks. It prints
test AUC per slice of train exposures (all, 0, 1-9, 10+) beside the R^2 of both estimates.

    python benchmarks/variants.py make --out /tmp/variants --only cold --only stream
    python benchmarks/content_ceiling.py --data /tmp/variants --only cold --only stream
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import numpy as np
import polars as pl
from variants import MAX_LEN, VARIANTS, Variant, draw_variant  # benchmarks/variants.py: the variants and their logs

from pipeline.core.metrics import auc
from pipeline.sources.planted import history_preference, oracle_scores

MIN_SLICE_ROWS = 100  # slices with fewer test rows are left out: their AUC is noise
RIDGE = 10.0  # ridge penalty of both regressions (the R^2 of the latent is flat from 0.1 to 10 on 3,000 items)


def ridge_fit(x: np.ndarray, y: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """x (N, F), y (N, ...) -> x @ w, w the ridge solution (penalty RIDGE, intercept unpenalised) on fit_rows."""
    design = np.hstack([x, np.ones((len(x), 1))])
    a = design[fit_rows]
    penalty = RIDGE * np.eye(a.shape[1])
    penalty[-1, -1] = 0.0
    return design @ np.linalg.solve(a.T @ a + penalty, a.T @ y[fit_rows])


def r2(est: np.ndarray, truth: np.ndarray) -> float:
    return float(1 - ((est - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum())


def ceiling(variant: Variant, folder: Path) -> list[dict[str, object]]:
    """One record per slice of at least MIN_SLICE_ROWS test rows: slice, rows, the AUC of each of the three oracles
    (module docstring; None when the slice has one class), and the fit: r2_latent, r2_log_pop over `items`."""
    drawn = draw_variant(variant)  # the very log, levels and rows that make_variant wrote
    model, new, pairs, test = drawn.model, drawn.new_items, drawn.pairs, drawn.rows.collect("test")
    n = model.n_items
    likes, views = (drawn.item_table[c].to_numpy().astype(np.int64) for c in ("likes_level", "views_level"))
    train_items = pl.read_parquet(folder / "data" / "train.parquet", glob=False,
                                  columns=["item_id"])["item_id"].to_numpy()
    exposures = np.bincount(train_items, minlength=n + 1)
    info = pl.read_parquet(folder / "data" / "item_info.parquet", glob=False).sort("item_id")
    emb = np.vstack(info["item_emb_d128"].to_numpy())  # (N+1, 128)

    # New items held out: estimate them from the others. Otherwise: every item, from all of them (in sample).
    scored = new.copy() if new.any() else np.arange(n + 1) > 0
    fit_rows = (np.arange(n + 1) > 0) & ~new if new.any() else scored
    latent = model.item_latent.copy()
    latent[scored] = ridge_fit(emb, model.item_latent, fit_rows)[scored]
    pop = model.item_log_pop.copy()
    pop[scored] = ridge_fit(np.hstack([emb, np.eye(11)[likes], np.eye(11)[views]]), model.item_log_pop,
                            fit_rows)[scored]
    tables = {"history oracle": model, "content latent": dataclasses.replace(model, item_latent=latent),
              "content oracle": dataclasses.replace(model, item_latent=latent, item_log_pop=pop)}
    seq = test["item_seq"].list.to_array(MAX_LEN).to_numpy()
    scores = {name: oracle_scores(m, pairs, test, 0, pref=history_preference(m, seq)) for name, m in tables.items()}
    labels, count = test["label"].to_numpy(), exposures[test["item_id"].to_numpy()]
    slices = {"all": np.ones(len(labels), bool), "0": count == 0, "1-9": (count > 0) & (count < 10),
              "10+": count >= 10}
    fit = {"r2_latent": r2(latent[scored], model.item_latent[scored]),
           "r2_log_pop": r2(pop[scored], model.item_log_pop[scored]), "items": int(scored.sum())}
    return [{"slice": name, "rows": int(rows.sum()), **fit,
             **{k: auc(labels[rows], v[rows]) if 0 < labels[rows].sum() < rows.sum() else None
                for k, v in scores.items()}}
            for name, rows in slices.items() if rows.sum() >= MIN_SLICE_ROWS]


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="benchmarks/variants.py make's --out folder")
@click.option("--only", multiple=True, help="variant name (repeatable; default: every variant made)")
def main(data: Path, only: tuple[str, ...]) -> None:
    click.echo("| variant | slice | test rows | history oracle | content latent | content oracle | item estimates |")
    click.echo("|---|---|---|---|---|---|---|")
    for variant in VARIANTS:
        folder = data / variant.name
        if (only and variant.name not in only) or not (folder / "truth.parquet").is_file():
            continue
        if variant.taste_model:  # its oracles are not oracle_scores of one preference vector
            click.echo(f"| {variant.name} | skipped: a taste click model (variants.py) | | | | | |")
            continue
        for rec in ceiling(variant, folder):
            cells = " | ".join("-" if rec[k] is None else f"{rec[k]:.4f}"
                               for k in ("history oracle", "content latent", "content oracle"))
            click.echo(f"| {variant.name} | {rec['slice']} | {rec['rows']} | {cells} | R^2 latent "
                       f"{rec['r2_latent']:.3f}, log-pop {rec['r2_log_pop']:.3f} on {rec['items']} items |")


if __name__ == "__main__":
    main()
