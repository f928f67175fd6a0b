"""Stage evaluate: score the test split with the model rebuilt from its checkpoint alone.

In:  --model        checkpoint from train
     --test         test split parquet
     --pairs, --planted  (optional, synthetic data only) raw clicks and the generator's planted model, for the
                    Bayes-optimal (oracle) score of every test row
Out: --metrics      JSON: test AUC, logloss, gAUC, rows (and oracle_auc / oracle_logloss with --planted)
     --roc, --calibration  plot JSONs: [{fpr, tpr}] at 201 points, [{prob_pred, prob_true, count}] per bin
     --predictions  parquet: user_id, item_id, event_ts, label, score (model probability) [, oracle]
Params: evaluate.*, build_sequences.neg_ratio (the oracle needs the sampling ratio)
"""

import logging

import click
import polars as pl

from pipeline.config import BuildSequencesConfig, EvaluateConfig, load_section
from pipeline.io import write_json, write_parquet
from pipeline.metrics import auc, calibration_points, gauc, logloss, roc_points
from pipeline.raw import read_pairs
from pipeline.stage import params_option, pick_device, stage_main
from pipeline.synthetic import PlantedModel, oracle_scores
from pipeline.training import load_checkpoint, load_split, predict_logits, sigmoid

log = logging.getLogger("evaluate")


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False))
@click.option("--test", "test_path", required=True, type=click.Path(dir_okay=False))
@click.option("--pairs", type=click.Path(dir_okay=False), help="raw clicks, for the oracle")
@click.option("--planted", type=click.Path(dir_okay=False), help="planted.npz of the synthetic generator")
@click.option("--metrics", required=True, type=click.Path(dir_okay=False))
@click.option("--roc", required=True, type=click.Path(dir_okay=False))
@click.option("--calibration", required=True, type=click.Path(dir_okay=False))
@click.option("--predictions", required=True, type=click.Path(dir_okay=False))
@params_option
@stage_main
def main(model_path: str, test_path: str, pairs: str | None, planted: str | None, metrics: str, roc: str,
         calibration: str, predictions: str, params_path: str) -> None:
    cfg = load_section(params_path, "evaluate", EvaluateConfig)
    if (pairs is None) != (planted is None):
        raise click.UsageError("--pairs and --planted go together (both for the oracle, or neither)")
    device = pick_device(cfg.device, "evaluate.device")
    model, fmap = load_checkpoint(model_path, device)
    test = load_split(test_path, fmap)
    probs = sigmoid(predict_logits(model, test, cfg.batch_size, device))
    labels = test.label.numpy()
    rows = pl.read_parquet(test_path, columns=["user_id", "item_id", "event_ts", "label"])
    out = {"rows": len(test), "auc": auc(labels, probs), "logloss": logloss(labels, probs),
           "gauc": gauc(test.user_id.numpy(), labels, probs)}
    preds = rows.with_columns(score=pl.Series(probs))
    if planted is not None:
        neg_ratio = load_section(params_path, "build_sequences", BuildSequencesConfig).neg_ratio
        oracle = oracle_scores(PlantedModel.load(planted), read_pairs(pairs), rows, neg_ratio)
        out |= {"oracle_auc": auc(labels, oracle), "oracle_logloss": logloss(labels, oracle)}
        preds = preds.with_columns(oracle=pl.Series(oracle))
    write_json(roc_points(labels, probs), roc)
    write_json(calibration_points(labels, probs, cfg.calibration_bins), calibration)
    write_parquet(preds, predictions)
    write_json(out, metrics)
    log.info("test: %s", out)


if __name__ == "__main__":
    main()
