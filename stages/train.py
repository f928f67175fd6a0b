"""Stage train: the Transformer+DCNv2 CTR model, early-stopped on validation AUC.

In:  --train, --valid   split parquets (pipeline/sequences/build.py contract)
     --item-info        item_info.parquet from fit_pca (row i = item i)
     --feature-map      feature_map.json from build_sequences
     --semantic-ids     semantic_ids.parquet from quantize (row i = item i), read when train.item_repr uses codes
Out: --model     checkpoint {"model": state_dict, "config": ModelConfig, "feature_map": completed map}
     --live-dir  dvclive folder: metrics.json (final values) and plots/metrics/*.tsv (per-epoch curves)
     `.<model name>.resume.pt` beside --model while it runs: the last finished epoch's state (train.resume)
     `.<model name>.<split>-arrays.<rank>/` beside --model while it runs with train.data_loading: stream: the
     splits as memory-mapped .npy files (pipeline/training/stream.py), removed when the run ends
Params: train.* (TrainConfig)
Data-parallel: torchrun --standalone --nproc_per_node N -m stages.train ... (pipeline/core/distributed.py)
"""

import logging
from contextlib import ExitStack, nullcontext
from pathlib import Path

import click
import torch
from dvclive import Live

from model.factory import build_model
from pipeline.core.config import TrainConfig, load_section
from pipeline.core.distributed import distributed
from pipeline.core.feature_map import FeatureMap
from pipeline.core.stage import file_options, params_option, set_threads, stage_main, summary
from pipeline.training.checkpoint import resume_path, save_checkpoint
from pipeline.training.data import (
    check_item_tables,
    exposure_levels,
    load_item_tables,
    load_semantic_ids,
    load_split,
)
from pipeline.training.loop import fit
from pipeline.training.stream import streamed_split

log = logging.getLogger("train")


@click.command(help=summary(__doc__))
@file_options("--train:train_path", "--valid:valid_path", "--item-info", "--feature-map", "--semantic-ids",
              "--model:model_path")
@click.option("--live-dir", required=True, type=click.Path(file_okay=False))
@params_option
@stage_main
def main(train_path: str, valid_path: str, item_info: str, feature_map: str, semantic_ids: str, model_path: str,
         live_dir: str, params_path: str) -> None:
    cfg = load_section(params_path, "train", TrainConfig)
    set_threads(cfg.num_threads)
    tags, mm, mm_dim = load_item_tables(item_info)
    fmap = FeatureMap.load(feature_map).with_mm_embedding(mm_dim)
    check_item_tables(item_info, tags, fmap)
    codes = load_semantic_ids(semantic_ids, tags.shape[0]) if cfg.arch.item_repr != "id" else None
    with distributed(cfg.device, "train.device") as (dist, device), ExitStack() as stack:
        if cfg.data_loading == "stream":
            model_file = Path(model_path)
            train, valid = (stack.enter_context(streamed_split(
                path, fmap, model_file.parent / f".{model_file.name}.{name}-arrays.{dist.rank}"))
                for name, path in (("train", train_path), ("valid", valid_path)))
        else:
            train, valid = load_split(train_path, fmap), load_split(valid_path, fmap)
        exposure = exposure_levels(train.item_id, tags.shape[0], cfg.arch.exposure_levels) \
            if cfg.arch.exposure_levels else None
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch, fmap, tags, mm, codes, exposure)
        log.info("%d train / %d valid rows, %d parameters, device %s, rank %d of %d", len(train), len(valid),
                 sum(p.numel() for p in model.parameters()), device, dist.rank, dist.world)
        with Live(live_dir, save_dvc_exp=False, dvcyaml=False) if dist.is_main else nullcontext() as live:
            history = fit(model, train, valid, cfg, device, live, dist, resume_path(model_path))
            if dist.is_main:
                best = max(history, key=lambda r: r["valid_auc"])
                live.summary = {"best_epoch": best["epoch"], "valid_auc": best["valid_auc"],
                                "valid_logloss": best["valid_logloss"], "epochs_run": history[-1]["epoch"] + 1,
                                "steps_run": history[-1]["step"]}
        if dist.is_main:
            save_checkpoint(model_path, model, fmap)
            resume_path(model_path).unlink(missing_ok=True)  # the run finished: nothing left to resume
            log.info("wrote %s: the weights of pass %d (valid AUC %.4f), after %d steps", model_path,
                     best["epoch"], best["valid_auc"], history[-1]["step"])


if __name__ == "__main__":
    main()
