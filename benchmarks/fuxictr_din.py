"""Benchmark: FuxiCTR's DIN against this project's DIN on the same splits, trained one after the other.

    python benchmarks/fuxictr_din.py                  # default data (make repro first), params.yaml's train section
    python benchmarks/fuxictr_din.py --epochs 1 --threads 2 --work-dir /tmp/fuxictr_din   # keep the export
    python benchmarks/fuxictr_din.py --fuxictr-python /path/to/venv/bin/python
    python benchmarks/fuxictr_din.py --recipe challenge --sequences /tmp/variants/runs/stream-default/sequences \
        --item-info /tmp/variants/runs/stream-default/item_info.parquet --threads 2   # a variant, challenge recipe

FuxiCTR's side on a GPU machine: export here, run the worker there (FuxiCTR's python, the export folder copied
over), bring back its result.json and test_probs.npy, and score them here beside our DIN trained on the CPU:
    python benchmarks/fuxictr_din.py --recipe challenge ... --work-dir /tmp/fx --fuxictr-gpu 0 --export-only
    python benchmarks/fuxictr_din.py --fuxictr-worker /tmp/fx                      # there
    python benchmarks/fuxictr_din.py --recipe challenge ... --work-dir /tmp/fx --fuxictr-result /tmp/fx_back

FuxiCTR lives in its own virtual environment, outside the repository; this one reuses the project's torch:
    python3 -m venv /work/fuxictr-venv
    echo /work/main/.venv/lib/python3.11/site-packages \
        > /work/fuxictr-venv/lib/python3.11/site-packages/mmctr_venv_site.pth
    /work/fuxictr-venv/bin/pip install fuxictr          # 2.3.10; adds pandas, h5py and ray[data] there only

The DIN that `pip install fuxictr` ships is `model_zoo.LongCTR.DIN` (the WWW2025 MMCTR challenge's layout): each
split row carries `user_index`, `item_index`, `seq_len` and its context features; the history is
`user_info.parquet`'s `full_item_seq[user_index][:seq_len]`; the target and every history item are looked up in
`item_info.parquet` by row position, so both share the item features' embeddings. `export_fuxictr` writes that
layout from the pipeline's splits and item table (see its docstring), with the frozen PCA embedding as FuxiCTR's
`embedding` feature (a bias-free Linear to `mm_dim`, as ours) when `train.use_mm_emb` is set. A challenge_d128
table goes to FuxiCTR at the organisers' own scale, as the held-out check runs it: fit_pca divided it by its mean
row norm for our models and kept the factor (`scale`) in its transform, the pca.npz beside the item table.

The script (1) exports the splits, (2) runs FuxiCTR's DIN in a subprocess under the FuxiCTR venv's python (this
file again, with --fuxictr-worker) and (3) trains the project's DIN (`train` params with model=din) with
`pipeline.training.loop.fit`, on the CPU, with the same threads and epochs, one process at a time. It prints
test AUC and logloss (both scored here with `pipeline.core.metrics` from each model's test probabilities), train
samples/s and seconds per epoch (the wall time between validation passes, so validation is not counted), and the
settings that cannot be made equal. Ours runs without the weight average and the step budget (ema_decay 0,
max_steps 0), which FuxiCTR has not: the same algorithm on both sides.

--versus PREDICTIONS (evaluate's predictions.parquet, made on the same test split: e.g. the mmctr default's) adds
that model's test AUC and its lead over each of the two, with a 95% interval from a bootstrap over test users
(`pipeline.core.metrics.paired_auc_lead`) and the share of resamples where the lead reaches --margin (issue 13's
line: 0.03 over FuxiCTR's challenge recipe). --fuxictr-result and --versus together score a run made before;
add --no-stand-in to score it without training the project's DIN again:
    python benchmarks/fuxictr_din.py --recipe challenge ... --fuxictr-result /tmp/fx --versus PREDICTIONS --no-stand-in

--recipe params (the default) trains both with params.yaml's train section; --recipe challenge trains both as the
MicroLens MM-CTR challenge trains its DIN baseline (CHALLENGE_DIN, CHALLENGE_TRAIN): issue 13's "FuxiCTR DIN,
challenge recipe", to set beside benchmarks/variants.py's table of the same data.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import click
import numpy as np
import polars as pl
import torch
from torch import Tensor

if TYPE_CHECKING:
    from pipeline.core.config import TrainConfig
    from pipeline.core.feature_map import FeatureMap
    from pipeline.training.data import SplitTensors

DATASET_ID = "mmctr"
SPLITS = ("train", "valid", "test")
# Named here once: FuxiCTR's fit reduces the lr on plateau by its fixed factor and floor (BaseModel.lr_decay()).
FUXICTR_LR_DECAY, FUXICTR_MIN_LR = 0.1, 1e-6
# The challenge's DIN baseline: its config template (the challenge repository's config/din_config/model_config.yaml,
# DIN_default: embedding 64, attention [512, 256] ReLU with dropout 0.1, DNN [1024, 512, 256] with batch norm, up
# to 100 epochs, early_stop_patience 3) at the tuned point its README reports (embedding_regularizer 1e-6,
# net_regularizer 0, net_dropout 0.1, learning_rate 1e-3, batch_size 8192). The frozen 128-d embedding goes
# through FuxiCTR's learnt 128x128 map.
CHALLENGE_DIN = {"embedding_dim": 64, "attention_hidden_units": [512, 256], "attention_hidden_activations": "ReLU",
                 "attention_dropout": 0.1, "dnn_hidden_units": [1024, 512, 256], "dnn_activations": "ReLU",
                 "batch_norm": True, "net_dropout": 0.1, "embedding_regularizer": 1e-6, "net_regularizer": 0.0,
                 "learning_rate": 1e-3, "early_stop_patience": 3}
CHALLENGE_TRAIN = {"epochs": 100, "batch_size": 8192, "mm_dim": 128}
# Settings that stay different whatever the params; printed under the table.
FIXED_DIFFERENCES = (
    ("loss: FuxiCTR's DIN ends in a sigmoid and trains on F.binary_cross_entropy of probabilities; ours on "
     "BCEWithLogits of logits (the same loss, computed differently near 0 and 1)"),
    ("epoch order, dropout masks and initial weights: same schemes (N(0, 1e-4) embeddings with zero padding rows, "
     "xavier-normal Linear, zero bias) and seed, but each framework draws them in its own order"),
    ("batches: FuxiCTR collates each batch in Python from a pandas item table (iloc) and the user_info table, "
     "ours indexes tensors; both cut the history to the batch's longest (ours: at least first_k columns)"),
    ("early stopping: FuxiCTR counts an epoch as better only if valid AUC rises by more than 1e-6, ours by any "
     "amount; both multiply the lr by lr_decay on a plateau, stop after `patience` such epochs and keep the best"),
    "item tags: FuxiCTR's MaskedAveragePooling finds padding as all-zero tag vectors, ours as tag id 0",
)


def export_fuxictr(splits: dict[str, SplitTensors], item_tags: Tensor, item_mm: Tensor, fmap: FeatureMap,
                   cfg: TrainConfig, out_dir: Path) -> None:
    """Write the splits and item table in the layout of FuxiCTR's LongCTR DIN into `out_dir`:

    {split}.parquet   user_index Int64 (row of user_info), item_index Int32 (= item_id), seq_len Int32 (real
                      history length), each context feature Int8, label Int8 (0/1: FuxiCTR stacks all columns into
                      one matrix and indexes tables with them, so none may be a float)
    user_info.parquet full_item_seq List(Int32): one row per split row, over the splits in SPLITS order, holding
                      that row's real history oldest first. A row's history is its own, not a prefix of one
                      sequence per user, because the splits keep only the last max_len clicks of each history.
    item_info.parquet item_index Int64, item_id Int32, item_tags List(Int32), item_emb_d<M> List(Float32) (with
                      cfg.arch.use_mm_emb only); row i holds item i (FuxiCTR joins by position), as load_item_tables
                      has checked
    feature_map.json  FuxiCTR's feature map (dataset_id "mmctr"): meta columns, the context features, and the item
                      features of `fmap` with ours' widths and padding id 0

    `splits` come from pipeline.load_split, `item_tags` (N+1, T) and `item_mm` (N+1, M) from
    load_item_tables. Histories are left-padded (load_split refuses a 0 after a real item, naming the row), as
    FuxiCTR, which reads a history as a length, needs.
    """
    from pipeline.core.io import DataError

    out_dir.mkdir(parents=True, exist_ok=True)
    histories, offset = [], 0
    for name in SPLITS:
        split = splits[name]
        seq = split.item_seq.numpy()  # (n, L), left-padded (load_split refuses a 0 after a real item)
        lengths = (seq != 0).sum(axis=1)  # (n,)
        labels = split.label.numpy()
        if not np.isin(labels, (0.0, 1.0)).all():
            raise DataError(f"{name} split: labels must be 0 or 1 to export")
        padded = pl.DataFrame({"seq": pl.Series(seq.astype(np.int32)).arr.to_list(),
                               "n": pl.Series(lengths, dtype=pl.UInt32)})
        histories.append(padded.select(pl.col("seq").list.tail(pl.col("n")))["seq"])
        frame = pl.DataFrame({
            "user_index": pl.Series(np.arange(offset, offset + len(split)), dtype=pl.Int64),
            "item_index": pl.Series(split.item_id.numpy(), dtype=pl.Int32),
            "seq_len": pl.Series(lengths, dtype=pl.Int32),
            **{n: pl.Series(t.numpy(), dtype=pl.Int8) for n, t in split.context.items()},
            "label": pl.Series(labels, dtype=pl.Int8),
        })
        frame.write_parquet(out_dir / f"{name}.parquet")
        offset += len(split)
    pl.DataFrame({"full_item_seq": pl.concat(histories)}).write_parquet(out_dir / "user_info.parquet")

    mm = fmap.mm_feature
    items = pl.DataFrame({
        "item_index": pl.Series(np.arange(item_tags.shape[0]), dtype=pl.Int64),
        "item_id": pl.Series(np.arange(item_tags.shape[0]), dtype=pl.Int32),
        "item_tags": pl.Series(item_tags.numpy().astype(np.int32)).arr.to_list(),
    })
    if cfg.arch.use_mm_emb:
        items = items.with_columns(pl.Series(mm.name, item_mm.numpy()).arr.to_list())
    items.write_parquet(out_dir / "item_info.parquet")

    features: list[dict[str, Any]] = [{n: {"type": "meta"}} for n in ("user_index", "item_index", "seq_len")]
    features += [{f.name: {"type": "categorical", "source": "context", "vocab_size": f.vocab_size, "padding_idx": 0}}
                 for f in fmap.context_features]
    features += [
        {"item_id": {"type": "categorical", "source": "item", "vocab_size": fmap["item_id"].vocab_size,
                     "padding_idx": 0}},
        {"item_tags": {"type": "sequence", "source": "item", "vocab_size": fmap["item_tags"].vocab_size,
                       "max_len": item_tags.shape[1], "padding_idx": 0,
                       "feature_encoder": "layers.MaskedAveragePooling()"}},
    ]
    if cfg.arch.use_mm_emb:
        features.append({mm.name: {"type": "embedding", "source": "item", "pretrain_dim": mm.embedding_dim,
                                   "embedding_dim": cfg.arch.mm_dim or mm.embedding_dim}})
    feature_map = {"dataset_id": DATASET_ID, "labels": [fmap.label], "features": features}
    (out_dir / "feature_map.json").write_text(json.dumps(feature_map, indent=2) + "\n")


def challenge_overrides() -> dict[str, Any]:
    """`train` params that make our DIN the challenge recipe's twin (all but its batch norm and attention dropout,
    which our DIN has not)."""
    return {"embedding_dim": CHALLENGE_DIN["embedding_dim"], "mm_dim": CHALLENGE_TRAIN["mm_dim"],
            "din_attention_units": CHALLENGE_DIN["attention_hidden_units"], "dice": False,
            "dnn_hidden_units": CHALLENGE_DIN["dnn_hidden_units"], "net_dropout": CHALLENGE_DIN["net_dropout"],
            "embedding_regularizer": CHALLENGE_DIN["embedding_regularizer"],
            "net_regularizer": CHALLENGE_DIN["net_regularizer"], "learning_rate": CHALLENGE_DIN["learning_rate"],
            "patience": CHALLENGE_DIN["early_stop_patience"], "epochs": CHALLENGE_TRAIN["epochs"],
            "batch_size": CHALLENGE_TRAIN["batch_size"], "lr_decay": FUXICTR_LR_DECAY, "min_lr": FUXICTR_MIN_LR}


def fuxictr_settings(cfg: TrainConfig, max_len: int, threads: int, recipe: str = "params",
                     gpu: int = -1) -> dict[str, Any]:
    """What the worker needs: FuxiCTR DIN's constructor arguments matched to `cfg` (recipe "params") or the
    challenge's (recipe "challenge"), and the loop's settings; `gpu` is FuxiCTR's device index (-1: CPU)."""
    activation = "Dice" if cfg.arch.dice else "ReLU"
    din = {"model_id": "DIN", "gpu": gpu, "task": "binary_classification", "embedding_dim": cfg.arch.embedding_dim,
           "attention_hidden_units": list(cfg.arch.din_attention_units), "attention_hidden_activations": activation,
           "attention_output_activation": None, "attention_dropout": 0, "din_use_softmax": False,
           "dnn_hidden_units": list(cfg.arch.dnn_hidden_units), "dnn_activations": activation,
           "net_dropout": cfg.arch.net_dropout, "batch_norm": False, "accumulation_steps": 1,
           "embedding_regularizer": None, "net_regularizer": None, "optimizer": "adam", "loss": "binary_crossentropy",
           "learning_rate": cfg.learning_rate, "metrics": ["logloss", "AUC"], "monitor": "AUC",
           "monitor_mode": "max", "early_stop_patience": cfg.patience, "reduce_lr_on_plateau": True,
           "save_best_only": True, "eval_steps": None, "verbose": 0}
    if recipe == "challenge":
        din.update(CHALLENGE_DIN)
    return {"din": din, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "eval_batch_size": cfg.eval_batch_size,
            "max_gradient_norm": cfg.max_grad_norm, "max_len": max_len, "seed": cfg.seed, "threads": threads}


def train_seconds(fit_start: float, valid_spans: list[tuple[float, float]]) -> list[float]:
    """Per-epoch training seconds: from the end of the previous validation pass (or the start of fit) to the start
    of the next one."""
    ends = [fit_start] + [end for _, end in valid_spans[:-1]]
    return [start - end for (start, _), end in zip(valid_spans, ends)]


def run_fuxictr_worker(work_dir: Path) -> None:
    """Train FuxiCTR's DIN on the export in `work_dir` as `run.json` says; write `result.json` and
    `test_probs.npy` (test probabilities in row order). Runs under the FuxiCTR venv's python."""
    import fuxictr
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.torch_utils import seed_everything
    from model_zoo.LongCTR.DIN import DIN
    from model_zoo.LongCTR.longctr_dataloader import LongCTRDataLoader

    # Subclassed only to read clocks and valid AUCs: FuxiCTR validates inside train_epoch.
    class ClockedDIN(DIN):
        def __init__(self, feature_map, **kwargs):
            super().__init__(feature_map, **kwargs)
            self.valid_spans: list[tuple[float, float]] = []
            self.valid_auc: list[float] = []

        def eval_step(self):
            start = time.perf_counter()
            super().eval_step()
            self.valid_spans.append((start, time.perf_counter()))

        def checkpoint_and_earlystop(self, logs, min_delta=1e-6):
            self.valid_auc.append(float(logs["AUC"]))
            super().checkpoint_and_earlystop(logs, min_delta)

    run = json.loads((work_dir / "run.json").read_text())
    torch.set_num_threads(run["threads"])
    seed_everything(run["seed"])
    feature_map = FeatureMap(DATASET_ID, str(work_dir))
    feature_map.load(str(work_dir / "feature_map.json"), {"embedding_dim": run["din"]["embedding_dim"]})
    model_root = work_dir / "checkpoints"
    (model_root / DATASET_ID).mkdir(parents=True, exist_ok=True)
    model = ClockedDIN(feature_map, model_root=str(model_root), **run["din"])

    def loader(split: str, batch_size: int, shuffle: bool) -> LongCTRDataLoader:
        # num_workers=0: batches are built in this process, as ours are, so both use the same threads
        return LongCTRDataLoader(feature_map, str(work_dir / f"{split}.parquet"), str(work_dir / "user_info.parquet"),
                                 str(work_dir / "item_info.parquet"), batch_size=batch_size, shuffle=shuffle,
                                 num_workers=0, max_len=run["max_len"])

    train_gen = loader("train", run["batch_size"], True)
    valid_gen = loader("valid", run["eval_batch_size"], False)
    fit_start = time.perf_counter()
    model.fit(train_gen, epochs=run["epochs"], validation_data=valid_gen, max_gradient_norm=run["max_gradient_norm"])
    np.save(work_dir / "test_probs.npy", model.predict(loader("test", run["eval_batch_size"], False)))
    result = {"train_rows": train_gen.num_samples, "train_seconds": train_seconds(fit_start, model.valid_spans),
              "valid_seconds": [end - start for start, end in model.valid_spans], "valid_auc": model.valid_auc,
              "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "threads": torch.get_num_threads(), "version": fuxictr.__version__, "device": str(model.device)}
    (work_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")


def read_fuxictr_result(result_dir: Path, test_rows: int) -> tuple[dict[str, Any], np.ndarray]:
    """The worker's `result.json` and test probabilities (float, [test_rows]) from `result_dir`; a missing file or a
    row count that is not the test split's fails naming the file."""
    files = (result_dir / "result.json", result_dir / "test_probs.npy")
    for path in files:
        if not path.is_file():
            raise click.ClickException(f"{path}: missing (run the FuxiCTR worker on this export first)")
    try:
        result, probs = json.loads(files[0].read_text()), np.load(files[1])
    except ValueError as err:  # json's decode error and np.load's "not a .npy file" are both ValueErrors
        raise click.ClickException(f"{result_dir}: unreadable worker output ({err})") from err
    if probs.shape != (test_rows,):
        raise click.ClickException(f"{files[1]}: probabilities of shape {probs.shape} for {test_rows} test rows "
                                   "(a run on another export?)")
    return result, probs


def read_versus(path: Path, test: SplitTensors) -> np.ndarray:
    """--versus: the scores (float64, [n]) of an evaluate stage's predictions.parquet (user_id, item_id, label,
    score) made on the `test` split, whose rows (user_id, item_id, label) it must repeat in order; anything else
    fails naming the file (and the first row that differs)."""
    keys = ["user_id", "item_id", "label"]
    try:
        preds = pl.read_parquet(path, glob=False, columns=[*keys, "score"])
    except (pl.exceptions.PolarsError, OSError) as err:
        raise click.ClickException(f"{path}: not an evaluate predictions file ({str(err).splitlines()[0]})") from err
    if preds.height != len(test):
        raise click.ClickException(f"{path}: {preds.height} rows for {len(test)} test rows (another test split?)")
    want = np.stack([test.user_id.numpy(), test.item_id.numpy(), test.label.numpy()], axis=1).astype(np.float64)
    got = preds.select(pl.col(keys).cast(pl.Float64)).to_numpy()
    differ = np.flatnonzero((got != want).any(axis=1))
    if differ.size:
        row = int(differ[0])
        raise click.ClickException(f"{path}: row {row} is {preds.row(row)[:3]} where the test split has "
                                   f"{tuple(want[row].tolist())} (another test split?)")
    scores = preds["score"].cast(pl.Float64).to_numpy()
    if not np.isfinite(scores).all():
        raise click.ClickException(f"{path}: score of row {int(np.argmin(np.isfinite(scores)))} is not finite")
    return scores


def given_scale(transform: Path) -> float:
    """The factor fit_pca divided a given (challenge_d128) item table by, from its transform file (`scale`); 1.0
    when there is no such file or the table was fitted here (a PCA's transform has no `scale`)."""
    if not transform.is_file():
        return 1.0
    with np.load(transform, allow_pickle=False) as z:
        return float(z["scale"]) if "scale" in z.files else 1.0


def compare(sequences: Path, item_info: Path, params_path: str, recipe: str, epochs: int | None, threads: int,
            fuxictr_python: str, work_dir: Path, fuxictr_gpu: int = -1, export_only: bool = False,
            fuxictr_result: Path | None = None, versus: Path | None = None, margin: float = 0.03,
            stand_in: bool = True) -> None:
    """Export, run FuxiCTR's DIN in its venv (or read a run made elsewhere from `fuxictr_result`), train ours
    (unless not `stand_in`), print the table (module docstring), and with `versus` that model's lead over each.
    `export_only` stops after the export and the worker's run.json."""
    # The project is imported here, not at the top: the FuxiCTR worker imports this file without it.
    from pipeline.core.config import PLAIN_SWITCHES, TrainConfig, from_dict, load_section, params_dict
    from pipeline.core.feature_map import FeatureMap
    from pipeline.core.stage import set_threads
    from pipeline.training.data import load_item_tables, load_split

    params = params_dict(load_section(params_path, "train", TrainConfig))
    # The same algorithm on both sides: FuxiCTR validates and keeps the raw weights (ema_decay 0), has no step
    # budget (max_steps 0: epochs and early stopping decide) and, as its settings below, no L2 terms
    overrides = {"model": "din", **PLAIN_SWITCHES, "ema_decay": 0.0, "max_steps": 0, "device": "cpu",
                 "num_threads": threads, "resume": False, "embedding_regularizer": 0.0, "net_regularizer": 0.0,
                 **(challenge_overrides() if recipe == "challenge" else {})}
    cfg = from_dict(TrainConfig, {**params, **overrides, "epochs": epochs or overrides.get("epochs", params["epochs"])},
                    "train")
    set_threads(threads)
    device = torch.device("cpu")
    tags, mm, mm_dim = load_item_tables(str(item_info))
    fmap = FeatureMap.load(str(sequences / "feature_map.json")).with_mm_embedding(mm_dim)
    splits = {s: load_split(str(sequences / f"{s}.parquet"), fmap) for s in SPLITS}
    test_labels = splits["test"].label.numpy()
    # read before any training, so a wrong file fails in seconds, not after both models have trained
    versus_scores = None if versus is None else read_versus(versus, splits["test"])
    # FuxiCTR gets the organisers' item_emb_d128 at its own scale, as the held-out check runs it; fit_pca divided
    # it by its mean row norm for our models, and kept that factor in the transform beside the item table.
    export_fuxictr(splits, tags, mm * given_scale(item_info.with_name("pca.npz")), fmap, cfg, work_dir)
    settings = fuxictr_settings(cfg, fmap["item_seq"].max_len, threads, recipe, fuxictr_gpu)
    (work_dir / "run.json").write_text(json.dumps(settings, indent=2) + "\n")
    if export_only:
        print(f"exported to {work_dir}; run FuxiCTR there with: python {Path(__file__).name} --fuxictr-worker "
              f"{work_dir}, then score with --fuxictr-result {work_dir}")
        return
    if fuxictr_result is None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        subprocess.run([fuxictr_python, __file__, "--fuxictr-worker", str(work_dir)], env=env, check=True)
    fux, fux_probs = read_fuxictr_result(fuxictr_result or work_dir, len(test_labels))
    runs = [(f"FuxiCTR {fux['version']}", fux, fux_probs)]
    if stand_in:
        runs.append(("mmctr", *train_stand_in(cfg, fmap, tags, mm, splits, device)))
    report(runs, cfg, mm_dim, recipe, splits, test_labels, versus, versus_scores, margin)


def train_stand_in(cfg: TrainConfig, fmap: FeatureMap, tags: Tensor, mm: Tensor,
                   splits: dict[str, SplitTensors], device: torch.device) -> tuple[dict[str, Any], np.ndarray]:
    """Our DIN trained with `cfg` on `splits`: (its run record, as the worker's result.json; its test
    probabilities, float [test rows])."""
    from model.factory import build_model
    from pipeline.core.metrics import sigmoid
    from pipeline.training import loop
    from pipeline.training.loop import fit
    from pipeline.training.predict import evaluate_split, predict_logits

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, fmap, tags, mm)
    valid_spans: list[tuple[float, float]] = []

    def clocked_evaluate(*args: Any, **kwargs: Any) -> dict[str, float]:
        start = time.perf_counter()
        scores = evaluate_split(*args, **kwargs)
        valid_spans.append((start, time.perf_counter()))
        return scores

    # fit validates after every epoch through this module attribute; wrapping it times the epochs without it
    with mock.patch.object(loop, "evaluate_split", clocked_evaluate):
        fit_start = time.perf_counter()
        history = fit(model, splits["train"], splits["valid"], cfg, device)
    ours_probs = sigmoid(predict_logits(model, splits["test"], cfg.eval_batch_size, device))
    ours = {"train_rows": len(splits["train"]), "train_seconds": train_seconds(fit_start, valid_spans),
            "valid_seconds": [end - start for start, end in valid_spans],
            "valid_auc": [r["valid_auc"] for r in history],
            "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "threads": torch.get_num_threads()}
    return ours, ours_probs


def report(runs: list[tuple[str, dict[str, Any], np.ndarray]], cfg: TrainConfig, mm_dim: int, recipe: str,
           splits: dict[str, SplitTensors], test_labels: np.ndarray, versus: Path | None,
           versus_scores: np.ndarray | None, margin: float) -> None:
    """Print each run's row (name, its record, its test probabilities), the settings that differ, and with
    `versus_scores` that model's lead over each run."""
    from pipeline.core.metrics import auc, logloss, paired_auc_lead

    arch, fux = cfg.arch, runs[0][1]
    if recipe == "challenge":
        print(f"\nrecipe: the challenge's DIN; FuxiCTR {json.dumps(CHALLENGE_DIN)} {json.dumps(CHALLENGE_TRAIN)}")
    ours = "ours on the CPU, " if any(name == "mmctr" for name, _, _ in runs) else ""  # --no-stand-in: FuxiCTR only
    print(f"\n{len(splits['train'])} train / {len(splits['valid'])} valid / {len(splits['test'])} test rows, {ours}"
          f"FuxiCTR on {fux.get('device', 'cpu')}, "
          f"epochs <= {cfg.epochs} (patience {cfg.patience}), batch {cfg.batch_size}, lr {cfg.learning_rate}, "
          f"embedding {arch.embedding_dim}, mm {'off' if not arch.use_mm_emb else arch.mm_dim or mm_dim}, attention "
          f"{list(arch.din_attention_units)}, DNN {list(arch.dnn_hidden_units)}, dropout {arch.net_dropout}")
    header = (f"{'framework':16s} {'test AUC':>9s} {'logloss':>8s} {'best val':>9s} {'samples/s':>10s} "
              f"{'epoch s':>8s} {'valid s':>8s} {'epochs':>6s} {'threads':>7s} {'params':>8s}")
    print(header)
    for name, run, probs in runs:
        epoch_s = float(np.mean(run["train_seconds"]))
        print(f"{name:16s} {auc(test_labels, probs):9.5f} {logloss(test_labels, probs):8.5f} "
              f"{max(run['valid_auc']):9.5f} {run['train_rows'] / epoch_s:10.0f} {epoch_s:8.1f} "
              f"{np.mean(run['valid_seconds']):8.2f} {len(run['train_seconds']):6d} {run['threads']:7d} "
              f"{run['parameters']:8d}")
    print("epoch s: training only (mean over the epochs run); valid s: one validation pass. Differences that stay:")
    notes = list(FIXED_DIFFERENCES)
    if recipe == "challenge":
        notes.append("the challenge recipe's batch norm (DNN) and attention dropout: FuxiCTR only; our DIN has neither")
    if (cfg.lr_decay, cfg.min_lr) != (FUXICTR_LR_DECAY, FUXICTR_MIN_LR):
        notes.append(f"lr on plateau: FuxiCTR x{FUXICTR_LR_DECAY} down to {FUXICTR_MIN_LR} (fixed), ours "
                     f"x{cfg.lr_decay} down to {cfg.min_lr}")
    if cfg.arch.dice:
        notes.append("Dice: FuxiCTR's attention MLP normalises over padded history positions too, ours over real "
                     "ones only")
    for note in notes:
        print(f"  - {note}")
    if versus_scores is not None:
        users = splits["test"].user_id.numpy()
        print(f"\n{versus}: test AUC {auc(test_labels, versus_scores):.5f}; its lead, with a bootstrap over the "
              f"{np.unique(users).size} test users (95% interval; share of resamples with a lead >= {margin}):")
        for name, _, probs in runs:
            lead = paired_auc_lead(users, test_labels, versus_scores, probs, margin=margin)
            print(f"  over {name:16s} {lead['lead']:+.4f} (sd {lead['sd']:.4f}, [{lead['low']:+.4f}, "
                  f"{lead['high']:+.4f}]; {lead['at_least_margin']:.0%} of {lead['reps']})")


@click.command()
@click.option("--data", default="data", show_default=True,
              help="the pipeline's data folder: <data>/sequences and <data>/features/item_info.parquet")
@click.option("--sequences", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="build_sequences' output folder (splits, feature_map.json); default <data>/sequences")
@click.option("--item-info", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="fit_pca's item_info.parquet; default <data>/features/item_info.parquet")
@click.option("--params", "params_path", default="params.yaml", show_default=True)
@click.option("--recipe", type=click.Choice(["params", "challenge"]), default="params", show_default=True,
              help="params: both train with params.yaml's train section; challenge: the MM-CTR challenge's DIN")
@click.option("--epochs", type=int, default=None, help="override train.epochs for both models")
@click.option("--threads", default=1, show_default=True, help="torch threads of each model's process")
@click.option("--fuxictr-python", default="/work/fuxictr-venv/bin/python", show_default=True,
              help="python of the virtual environment holding fuxictr")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the export and FuxiCTR's checkpoint go (kept); default: a temporary folder")
@click.option("--fuxictr-gpu", default=-1, show_default=True,
              help="GPU index for FuxiCTR's worker (its run.json's gpu); -1: the CPU")
@click.option("--export-only", is_flag=True,
              help="write the export and run.json to --work-dir and stop (to run the worker on another machine)")
@click.option("--fuxictr-result", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="a folder with a worker run's result.json and test_probs.npy: score it instead of running one")
@click.option("--versus", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="an evaluate stage's predictions.parquet on the same test split: print its lead over both models")
@click.option("--margin", default=0.03, show_default=True,
              help="with --versus: report the share of bootstrap resamples where the lead reaches this")
@click.option("--stand-in/--no-stand-in", default=True, show_default=True,
              help="also train the project's DIN; --no-stand-in scores FuxiCTR's run (and --versus's lead) alone")
@click.option("--fuxictr-worker", type=click.Path(file_okay=False, path_type=Path), default=None, hidden=True)
def main(data: str, sequences: Path | None, item_info: Path | None, params_path: str, recipe: str,
         epochs: int | None, threads: int, fuxictr_python: str, work_dir: Path | None, fuxictr_gpu: int,
         export_only: bool, fuxictr_result: Path | None, versus: Path | None, margin: float, stand_in: bool,
         fuxictr_worker: Path | None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    if fuxictr_worker is not None:
        run_fuxictr_worker(fuxictr_worker)
        return
    paths = (sequences or Path(data) / "sequences", item_info or Path(data) / "features" / "item_info.parquet")
    if export_only and work_dir is None:
        raise click.UsageError("--export-only needs --work-dir (the export would go to a deleted temporary folder)")
    if export_only and (fuxictr_result is not None or versus is not None):
        raise click.UsageError("--export-only excludes --fuxictr-result and --versus (export, or score a run)")
    options = (params_path, recipe, epochs, threads, fuxictr_python)
    if work_dir is not None:
        compare(*paths, *options, work_dir, fuxictr_gpu, export_only, fuxictr_result, versus, margin, stand_in)
    else:
        with tempfile.TemporaryDirectory(prefix="fuxictr_din.") as tmp:
            compare(*paths, *options, Path(tmp), fuxictr_gpu, export_only, fuxictr_result, versus, margin, stand_in)


if __name__ == "__main__":
    main()
