"""Stage train: the Transformer+DCNv2 CTR model, early-stopped on validation AUC; then, with train.new_item_offset,
the logit offset of items new to the train split fitted on the valid split (pipeline/training/calibrate.py).

In:  --train, --valid   split parquets (pipeline/sequences/build.py contract)
     --item-info        item_info.parquet from fit_pca (row i = item i)
     --feature-map      feature_map.json from build_sequences
     --semantic-ids     semantic_ids.parquet from quantize (row i = item i), read when train.item_repr uses codes
Out: --model     checkpoint {"model": state_dict, "config": ModelConfig, "feature_map": completed map}; with
                 train.ensemble > 1 the state of a SeedEnsemble (members.<k>.*)
     --live-dir  dvclive folder: metrics.json (final values) and plots/metrics/*.tsv (per-epoch curves; member 0's
                 under an ensemble, whose valid_auc/valid_logloss are then the ensemble's and epochs_run/steps_run
                 the members' sums; with train.new_item_offset, valid_auc/valid_logloss are the model's with the
                 offset, and new_item_offset is the offset fitted on valid); written beside it and put in place
                 whole after the checkpoint
     `.<model name>.resume[.<k>].pt` beside --model while it runs: the last finished epoch's state of the model
     (of each ensemble member k) (train.resume)
     `.<model name>.<split>-arrays.<rank>/` beside --model while it runs with train.data_loading: stream: the
     splits as memory-mapped .npy files (pipeline/training/stream.py), removed when the run ends
Params: train.* (TrainConfig)
Data-parallel: torchrun --standalone --nproc_per_node N -m stages.train ... (pipeline/core/distributed.py)
"""

import logging
from contextlib import ExitStack, nullcontext
from functools import partial
from pathlib import Path

import click
from dvclive import Live

from model.factory import build_model
from pipeline.core.config import TrainConfig, load_section
from pipeline.core.distributed import distributed
from pipeline.core.feature_map import FeatureMap
from pipeline.core.io import atomic_dir, prepare_outputs
from pipeline.core.metrics import require_both_classes
from pipeline.core.stage import PathArg, file_options, params_option, set_threads, stage_main, summary
from pipeline.training.calibrate import fit_new_item_offset
from pipeline.training.checkpoint import resume_path, save_checkpoint
from pipeline.training.data import (
    check_item_tables,
    load_item_tables,
    load_semantic_ids,
    load_split,
    split_tables,
)
from pipeline.training.loop import check_run_length, fit_ensemble
from pipeline.training.predict import evaluate_split, logit_scores
from pipeline.training.stream import streamed_split

log = logging.getLogger("train")


@click.command(help=summary(__doc__))
@file_options("--train:train_path", "--valid:valid_path", "--item-info", "--feature-map", "--semantic-ids",
              "--model:model_path")
@click.option("--live-dir", required=True, type=PathArg(file_okay=False))
@params_option
@stage_main
def main(train_path: str, valid_path: str, item_info: str, feature_map: str, semantic_ids: str, model_path: str,
         live_dir: str, params_path: str) -> None:
    cfg = load_section(params_path, "train", TrainConfig)
    prepare_outputs(model_path, Path(live_dir) / "metrics.json")  # a training run is long: fail before it
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
        require_both_classes(train_path, train.label.numpy(), "train")
        require_both_classes(valid_path, valid.label.numpy(), "valid")
        check_run_length(len(train), cfg)
        tables = split_tables(train, tags.shape[0], cfg.arch)
        log.info("%d train / %d valid rows, device %s, rank %d of %d", len(train), len(valid), device, dist.rank,
                 dist.world)
        # dvclive writes into a temp folder beside --live-dir, which replaces the old folder only after the
        # checkpoint: a killed or failed run leaves the old model and its old curves, never a new half of either.
        live_tmp = stack.enter_context(atomic_dir(live_dir)) if dist.is_main else None
        with Live(live_tmp, save_dvc_exp=False, dvcyaml=False) if dist.is_main else nullcontext() as live:
            # a partial, not a lambda: members trained in other processes get the builder pickled
            build = partial(build_model, feature_map=fmap, item_tags=tags, item_mm=mm, item_codes=codes, **tables)
            model, histories = fit_ensemble(build, train, valid, cfg, device, live, dist, Path(model_path))
            best = max(histories[0], key=lambda r: r["valid_auc"])
            offset = {}
            if cfg.arch.new_item_offset:  # every rank scores, so every rank fits the same offset
                offset["new_item_offset"], logits = fit_new_item_offset(model, valid, cfg.eval_batch_size, device,
                                                                        cfg.amp, dist)
                scores = logit_scores(valid.label.numpy(), logits)
            elif len(histories) == 1:
                scores = {"auc": best["valid_auc"], "logloss": best["valid_logloss"]}
            else:
                scores = evaluate_split(model, valid, cfg.eval_batch_size, device, cfg.amp, dist)
            if dist.is_main:
                live.summary = {"best_epoch": best["epoch"], "valid_auc": scores["auc"],
                                "valid_logloss": scores["logloss"],
                                "epochs_run": sum(h[-1]["epoch"] + 1 for h in histories),
                                "steps_run": sum(h[-1]["step"] for h in histories), **offset}
                if len(histories) > 1:
                    log.info("ensemble of %d: valid AUC %.5f (members %s)", len(histories), scores["auc"],
                             ", ".join(f"{max(r['valid_auc'] for r in h):.5f}" for h in histories))
        if dist.is_main:
            save_checkpoint(model_path, model, fmap)  # then the ExitStack's end puts the dvclive folder in place
            for k in range(cfg.arch.ensemble):  # the run finished: nothing left to resume
                resume_path(model_path, k).unlink(missing_ok=True)
            log.info("wrote %s: %d parameters, valid AUC %.4f, %d steps in all", model_path,
                     sum(p.numel() for p in model.parameters()), scores["auc"], sum(h[-1]["step"] for h in histories))


if __name__ == "__main__":
    main()
