"""Stage make_synthetic: a synthetic MicroLens-like raw dataset drawn from a planted click model.

In:  nothing but params.
Out: --out  directory in the MicroLens raw layout, rewritten whole:
            pairs.csv (user,item,timestamp), title_en.csv (item_id,title; no header),
            likes_and_views.txt (item_id, likes, views; tab-separated), tags.csv (item_id,tags),
            covers/<item_id>.jpg, planted.npz (the planted model, for the oracle)
Params: make_synthetic.* (MakeSyntheticConfig)
"""

import logging
from pathlib import Path

import click

from pipeline.core.config import MakeSyntheticConfig, load_section
from pipeline.core.stage import PathArg, params_option, stage_main, summary
from pipeline.sources.synthetic import generate

log = logging.getLogger("make_synthetic")


@click.command(help=summary(__doc__))
@click.option("--out", required=True, type=PathArg(file_okay=False), help="raw dataset directory to write")
@params_option
@stage_main
def main(out: str, params_path: str) -> None:
    cfg = load_section(params_path, "make_synthetic", MakeSyntheticConfig)
    log.info("generating %d items, %d users, ~%.0f clicks (seed %d)", cfg.n_items, cfg.n_users,
             cfg.n_users * cfg.mean_clicks_per_user, cfg.seed)
    counts = generate(cfg, Path(out))
    log.info("wrote %s: %d items, %d users, %d clicks", out, counts["items"], counts["users"], counts["clicks"])


if __name__ == "__main__":
    main()
