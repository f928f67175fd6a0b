"""The one body of both extraction stages: read the stage's params and data.source, set threads, join the ranks
(`distributed`), run the modality's sharded extraction, and on rank 0 write the outputs (`write_extraction`).

A modality is an `Extraction`: (cfg, data.source, raw folder, output path, device, ranks) -> (embedding frame, or
None off rank 0; its shard store; shard counts; the batch size after any halving). text.extract_titles and
image.extract_covers are the two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import polars as pl
import torch

from pipeline.core.config import load_section
from pipeline.core.distributed import Dist, distributed
from pipeline.core.io import prepare_outputs
from pipeline.core.stage import (
    data_section,
    file_options,
    params_option,
    raw_dir_option,
    set_threads,
    stage_main,
    summary,
)
from pipeline.extract.batching import BatchSize
from pipeline.extract.store import ShardStore, write_extraction

Extraction = Callable[[Any, str, str, str, torch.device, Dist],
                      tuple[pl.DataFrame | None, ShardStore, dict[str, int], BatchSize]]


def extraction_command(section: str, config_type: type, extract: Extraction, doc: str) -> click.Command:
    """The click command of extraction stage `section` (params section and stage name), whose params load into
    `config_type` and whose work is `extract`; `doc` is its --help text."""

    def main(raw_dir: str | None, out: str, metrics: str, params_path: str) -> None:
        cfg = load_section(params_path, section, config_type)
        data, raw_dir = data_section(params_path, raw_dir)
        prepare_outputs(out, metrics)
        set_threads(cfg.num_threads)
        with distributed(cfg.device, f"{section}.device") as (dist, device):
            frame, store, shards, batch = extract(cfg, data.source, raw_dir, out, device, dist)
            if dist.is_main:
                write_extraction(frame, out, metrics, store, shards, batch, section)

    main = stage_main(main, section)
    main = raw_dir_option(file_options("--out", "--metrics")(params_option(main)))
    return click.command(name=section, help=summary(doc))(main)
