"""Training and scoring of the CTR model over whole splits held as tensors.

Each split is loaded once into contiguous tensors (history matrix, ids, context features, labels); batches are
index slices, trimmed to the longest real history in the batch (never below first_k), which changes no output
because padded positions are masked. The loop lives here, not in the nn.Module, and so do the training-only
options of train params: the optimiser, the L2 regularisers, the embedding dropout rate, the lr schedule and how
often to validate.
"""

from __future__ import annotations

import copy
import json
import time
import logging
import math
import pickle
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn
from tqdm import tqdm

from model.config import ModelConfig
from model.factory import build_model
from model.layers import CTRBase
from pipeline.config import TrainConfig
from pipeline.distributed import SINGLE, Dist
from pipeline.feature_map import FeatureMap
from pipeline.io import DataError, atomic_path, check_finite, check_range, first_true, list_matrix, read_parquet
from pipeline.items import check_item_table
from pipeline.metrics import auc, logloss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitTensors:
    """One split on the CPU: item_seq (n, L) int64, item_id (n,) int64, context {name: (n,) int64},
    label (n,) float32, user_id (n,) int64."""

    item_seq: Tensor
    item_id: Tensor
    context: dict[str, Tensor]
    label: Tensor
    user_id: Tensor

    def __len__(self) -> int:
        return self.label.shape[0]

    def history_lengths(self) -> Tensor:
        """(n,) int64 real (non-padding) history items per row."""
        return (self.item_seq != 0).sum(dim=1)


def load_split(path: str | Path, feature_map: FeatureMap) -> SplitTensors:
    """Read a split parquet (sequences contract) into tensors. Every column that indexes an embedding table is
    range-checked against `feature_map` (item_id 1..N, item_seq 0..N of length max_len, each context feature
    0..vocab-1), and label must be 0 or 1: a bad value is a DataError naming the file, the first bad row and the
    column, before any training step (an id past a table would otherwise be an IndexError mid-run)."""
    names = [f.name for f in feature_map.context_features]
    df = read_parquet(path, {"user_id": pl.Int32, "item_seq": pl.List(pl.Int32), "item_id": pl.Int32,
                             "label": pl.Float32, **{n: pl.Int8 for n in names}})
    if df.height == 0:
        raise DataError(f"{path}: split has no rows")
    n_ids = feature_map["item_id"].vocab_size
    seq = list_matrix(path, df, "item_seq", feature_map["item_seq"].max_len, pl.Int64)  # (R, L)
    bad = first_true(((seq < 0) | (seq >= n_ids)).any(axis=1))
    if bad is not None:
        raise DataError(f"{path}: row {bad}: item_seq holds an item id outside 0..{n_ids - 1}")
    check_range(path, df, "user_id", 0, np.iinfo(np.int32).max)
    check_range(path, df, "item_id", 1, n_ids - 1)
    for n in names:
        check_range(path, df, n, 0, feature_map[n].vocab_size - 1)
    label = df["label"].to_numpy()
    bad = first_true(~np.isin(label, (0.0, 1.0)))
    if bad is not None:
        raise DataError(f"{path}: row {bad}: label {label[bad]} is not 0 or 1")
    def as_long(column: str) -> Tensor:
        return torch.from_numpy(df[column].to_numpy().astype(np.int64))

    return SplitTensors(torch.from_numpy(np.require(seq, requirements="W")), as_long("item_id"),
                        {n: as_long(n) for n in names}, torch.from_numpy(label.copy()), as_long("user_id"))


def load_item_tables(path: str | Path) -> tuple[Tensor, Tensor, int]:
    """item_info.parquet -> (tags (N+1, T) int64, frozen embeddings (N+1, M) float32, M), after checking that
    row i holds item i, that item_tags are lists of one length with ids >= 0, and that the one item_emb_d<M>
    column is a list of M finite numbers per row (first bad row named)."""
    df = read_parquet(path, {"item_id": pl.Int32, "item_tags": pl.List(pl.Int32)})
    check_item_table(df, str(path))
    emb_cols = [c for c in df.columns if c.startswith("item_emb_d")]
    if len(emb_cols) != 1:
        raise DataError(f"{path}: expected one item_emb_d<dim> column, found {emb_cols}")
    column, dtype = emb_cols[0], df.schema[emb_cols[0]]
    if not (isinstance(dtype, pl.List | pl.Array) and dtype.inner.is_numeric()):
        raise DataError(f"{path}: column {column!r} has dtype {dtype}, expected a list of numbers")
    mm = list_matrix(path, df, column, None, pl.Float32)  # (N+1, M)
    if mm.shape[1] == 0:
        raise DataError(f"{path}: column {column!r} holds empty lists")
    check_finite(path, column, mm)
    tags = list_matrix(path, df, "item_tags", None, pl.Int64)  # (N+1, T)
    bad = first_true((tags < 0).any(axis=1))
    if bad is not None:
        raise DataError(f"{path}: row {bad}: item_tags holds a negative tag id")
    # torch wants writable arrays; polars may hand out read-only views (np.require copies only then)
    return (torch.from_numpy(np.require(tags, requirements="W")),
            torch.from_numpy(np.require(mm, np.float32, ["C", "W"])), mm.shape[1])


def check_item_tables(path: str | Path, tags: Tensor, feature_map: FeatureMap) -> None:
    """The item table of `load_item_tables` fits the feature map of the splits: one row per item id (N+1) and tag
    ids below item_tags' vocabulary; else a DataError naming `path` (an index past a table fails mid-run)."""
    n_ids, n_tags = feature_map["item_id"].vocab_size, feature_map["item_tags"].vocab_size
    if tags.shape[0] != n_ids:
        raise DataError(f"{path}: {tags.shape[0] - 1} items, but the feature map has item ids 1..{n_ids - 1}")
    bad = first_true((tags >= n_tags).any(dim=1).numpy())
    if bad is not None:
        raise DataError(f"{path}: row {bad}: item_tags holds a tag id outside 0..{n_tags - 1}")


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The architecture part of the train params (ModelConfig's fields), as a plain ModelConfig."""
    return ModelConfig(**{k: getattr(cfg, k) for k in ModelConfig.__dataclass_fields__})


def trim_history(seq: Tensor, first_k: int) -> Tensor:
    """(B, L) left-padded histories -> (B, L') keeping the last max(longest real history, first_k) columns."""
    longest = int((seq != 0).sum(dim=1).max().item()) if seq.numel() else 0
    keep = min(seq.shape[1], max(longest, first_k))
    return seq[:, seq.shape[1] - keep:]


def make_batch(split: SplitTensors, idx: Tensor, first_k: int, device: torch.device) -> dict[str, Tensor]:
    """Rows `idx` of a split as the model's input dict on `device`."""
    batch = {"item_seq": trim_history(split.item_seq[idx], first_k), "item_id": split.item_id[idx],
             **{n: t[idx] for n, t in split.context.items()}}
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()


@torch.no_grad()
def predict_logits(model: nn.Module, split: SplitTensors, batch_size: int, device: torch.device,
                   amp: bool = False, dist: Dist = SINGLE) -> np.ndarray:
    """Logits (n,) float64 for every row of `split`, in row order, model in eval mode. Under torchrun each rank
    scores a contiguous slice and every rank gets the whole vector (so all ranks take the same decisions)."""
    model.eval()
    first_k = model.cfg.first_k
    rows = torch.arange(len(split)).tensor_split(dist.world)[dist.rank]
    # Rows in order of history length, so each batch is trimmed to about its own rows' length (in eval mode a row's
    # logit does not depend on the others in its batch); the logits go back to row order below.
    by_length = rows[torch.argsort(split.history_lengths()[rows], stable=True)]
    out = [torch.zeros(0)]
    for start in range(0, len(by_length), batch_size):
        idx = by_length[start:start + batch_size]
        with autocast(device, amp):
            out.append(model(make_batch(split, idx, first_k, device)).float().cpu())
    logits = torch.empty(len(rows), dtype=torch.float64)
    logits[by_length - (int(rows[0]) if len(rows) else 0)] = torch.cat(out).double()  # rows is one contiguous range
    return dist.gather_slices(logits, len(split), device).numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def evaluate_split(model: nn.Module, split: SplitTensors, batch_size: int, device: torch.device,
                   amp: bool = False, dist: Dist = SINGLE) -> dict[str, float]:
    """{"auc", "logloss"} of the model on a split."""
    probs = sigmoid(predict_logits(model, split, batch_size, device, amp, dist))
    labels = split.label.numpy()
    return {"auc": auc(labels, probs), "logloss": logloss(labels, probs)}


# The train params that do not change what training computes: a resume state written under other values of these
# is still valid (`epochs` only while the run's length shapes nothing before its end: resume_fingerprint).
RESUME_NEUTRAL = ("resume", "epochs", "device", "num_threads", "eval_batch_size")


def resume_path(model_path: str | Path) -> Path:
    """Where `fit` keeps the state of the last finished pass: `.<model name>.resume.pt` beside the checkpoint
    (outside what DVC caches, so it survives a failed or killed run)."""
    model_path = Path(model_path)
    return model_path.parent / f".{model_path.name}.resume.pt"


def resume_fingerprint(cfg: TrainConfig, train: SplitTensors, valid: SplitTensors) -> str:
    """What a resume state must match: the train params that shape the run and the split sizes. `epochs` counts
    when the run's planned length shapes its steps: the cosine schedule spans all of it, with eval_steps the
    last partial interval is validated at its end, and with max_steps it may decide where the run ends."""
    neutral = set(RESUME_NEUTRAL)
    if cfg.lr_schedule == "cosine" or cfg.eval_steps > 0 or cfg.max_steps > 0:
        neutral.discard("epochs")
    parts = {k: v for k, v in asdict(cfg).items() if k not in neutral}
    return json.dumps({"params": parts, "train_rows": len(train), "valid_rows": len(valid)}, sort_keys=True,
                      default=list)


@dataclass
class FitState:
    """Everything a run needs to continue after pass `epoch - 1`: weights, optimiser, the pass-order generator
    and torch's global RNG (dropout), the plateau lr, the best validation so far, the validation records, and the
    train loss of the validation interval under way (with eval_steps it can span passes). It is saved at the end of
    each pass only, so a resumed run repeats the steps of the pass it was stopped in."""

    lr: float  # the plateau state: learning_rate times lr_decay per plateau (floored at min_lr); see lr_at
    epoch: int = 0
    step: int = 0
    best_auc: float = -math.inf
    bad_validations: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None
    interval_loss: float = 0.0  # summed train BCE (all ranks) of the interval's finished passes
    interval_rows: int = 0  # train rows (all ranks) since the last validation

    def save(self, path: Path, fp: str, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
        """Write the state atomically (plain types and tensors only: loads with weights_only=True)."""
        blob = {"fingerprint": fp, **{f.name: getattr(self, f.name) for f in fields(self)},
                "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state()}
        save_atomic(blob, path)

    @classmethod
    def load(cls, path: Path, fp: str, model: nn.Module, opt: torch.optim.Optimizer,
             gen: torch.Generator) -> FitState | None:
        """The state in `path` restored into model/opt/gen, or None when there is none or it was written for other
        params or data (then training starts afresh)."""
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged state is ignored, never trusted
            log.warning("%s: unreadable resume state, starting afresh (%s)", path, str(e).splitlines()[0][:200])
            return None
        if blob.get("fingerprint") != fp:
            log.info("%s: written for other train params or data; starting afresh", path)
            return None
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        gen.set_state(blob["generator"])
        torch.set_rng_state(blob["torch_rng"])
        return cls(**{f.name: blob[f.name] for f in fields(cls)})


def log_validation(live: Any, record: dict[str, float]) -> None:
    """One validation's record as a dvclive step (its pass and optimizer step are the x axis, not metrics)."""
    for k, v in record.items():
        if k not in ("epoch", "step"):
            live.log_metric(k, v)
    live.next_step()


def lr_at(step: int, base_lr: float, schedule: str, min_lr: float, total_steps: int, warmup_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of a run of `total_steps` steps.

    `base_lr` is the plateau state: learning_rate, times lr_decay after each validation without a better valid AUC
    under `plateau` (fit keeps it), never decayed under `cosine`. Steps s < warmup_steps take
    base_lr * (s + 1) / warmup_steps (a linear ramp that reaches base_lr at s = warmup_steps - 1). Later steps take
    base_lr under `plateau`, and under `cosine` min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2 with
    p = (s - warmup_steps) / (total_steps - warmup_steps): base_lr right after the warm-up, min_lr at the run's end.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "plateau":
        return base_lr
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over every parameter, or AdamW (decoupled decay: each step first scales every parameter, embeddings and
    biases included, by 1 - lr * weight_decay)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)


def regularization_loss(model: CTRBase, embedding_lambda: float, net_lambda: float) -> Tensor:
    """FuxiCTR's L2 regularisers (BaseModel.regularization_loss of fuxictr 2.3.7, the version the winning
    solution pins, with float regularizers, i.e. p = 2), a scalar:

        embedding_lambda / 2 * sum_{w in E} ||w||_2^2  +  net_lambda / 2 * sum_{w not in E} ||w||_2^2

    over the trainable parameters, where E = model.embedding_parameters() (FuxiCTR's FeatureEmbeddingDict: the
    id, tag and context tables, whole, padding rows included, and the projection of the frozen embedding) and the
    second sum runs over every other parameter, biases, norms and attention projections included. Its gradient
    adds lambda * w to each parameter's gradient.
    """
    embedding = {id(p) for p in model.embedding_parameters()}
    terms = []
    for p in model.parameters():
        lam = embedding_lambda if id(p) in embedding else net_lambda
        if lam and p.requires_grad:
            terms.append(lam / 2 * p.square().sum())
    return torch.stack(terms).sum()


def batch_loss(net: nn.Module, split: SplitTensors, rows: Tensor, cfg: TrainConfig, device: torch.device,
               dist: Dist = SINGLE) -> tuple[Tensor, Tensor]:
    """This rank's part of the global batch `rows` (its contiguous slice of rows.tensor_split(world)) ->
    (loss to backpropagate, summed BCE of its rows). The loss is that sum * world / len(rows), so DDP's average of
    the ranks' gradients is the gradient of the global batch's mean BCE (in a world of 1: the mean BCE), plus
    regularization_loss when train.embedding_regularizer or train.net_regularizer is set."""
    idx = rows.tensor_split(dist.world)[dist.rank]
    batch = make_batch(split, idx, cfg.first_k, device)
    with autocast(device, cfg.amp):
        logits = net(batch).float()
    loss_sum = nn.functional.binary_cross_entropy_with_logits(logits, split.label[idx].to(device), reduction="sum")
    loss = loss_sum * (dist.world / len(rows))
    if cfg.embedding_regularizer or cfg.net_regularizer:
        # Every rank adds the whole term: DDP averages the ranks' gradients, so its gradient reaches the update once.
        model = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
        loss = loss + regularization_loss(model, cfg.embedding_regularizer, cfg.net_regularizer)
    return loss, loss_sum


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, loss: Tensor, max_grad_norm: float) -> None:
    """One update from `loss`: clear the gradients, backpropagate, clip their global norm to max_grad_norm, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()


def pass_batches(lengths: Tensor, batch_size: int, bucket_batches: int, gen: torch.Generator) -> list[Tensor]:
    """One pass's batches of row indices, each row once: a random order (from `gen`) cut into batches of
    batch_size (the last may be short). With bucket_batches > 0, each window of bucket_batches * batch_size
    consecutive rows of that order is sorted by history length (`lengths` (n,), stable) before it is cut, and the
    batches are then taken in a random order: a batch holds rows of similar length, so `trim_history` keeps few
    padding columns (most histories are far shorter than the longest), while which rows meet in a window and the
    order of the batches stay random."""
    order = torch.randperm(len(lengths), generator=gen)
    if not bucket_batches:
        return list(order.split(batch_size))
    batches = [b for window in order.split(bucket_batches * batch_size)
               for b in window[torch.argsort(lengths[window], stable=True)].split(batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen)]


def run_steps(train_rows: int, cfg: TrainConfig) -> int:
    """The optimizer steps of a run that is not stopped early: `epochs` passes of ceil(train_rows / batch_size)
    steps, capped at `max_steps` when that is > 0. A step budget sizes the run by updates rather than passes, so a
    small split gets many passes (early stopping ends it) and a large one is not trained for hours."""
    total = cfg.epochs * math.ceil(train_rows / cfg.batch_size)
    return min(total, cfg.max_steps) if cfg.max_steps else total


def fit(model: CTRBase, train: SplitTensors, valid: SplitTensors, cfg: TrainConfig, device: torch.device,
        live: Any = None, dist: Dist = SINGLE, resume_file: Path | None = None) -> list[dict[str, float]]:
    """Adam (or AdamW) on BCEWithLogits, plus the optional L2 regularisers (batch_loss), with early stopping on valid
    AUC; returns one record per validation and leaves the model holding the best validation's weights.

    The run makes at most `epochs` passes over the train split in a seeded order and at most `max_steps` optimizer
    steps (when > 0; run_steps). It validates after each pass, or
    with eval_steps > 0 every eval_steps optimizer steps and after the run's last step. Each validation gives a
    record {epoch (its pass), step (optimizer steps so far), train_logloss (mean BCE of the rows since the previous
    validation), valid_auc, valid_logloss, lr (of the last step)}, logged to `live` as one dvclive step. The lr of
    each step is lr_at's: under `plateau` it is multiplied by `lr_decay` after each validation without a better
    valid AUC (FuxiCTR's reduce-on-plateau). Training stops after `patience` such validations in a row. The item and
    context embeddings get dropout `embedding_dropout` in training. A NaN/inf loss stops with the step number.

    Under torchrun (dist.enabled) the model is wrapped in DistributedDataParallel; every rank draws the same pass
    order and takes its contiguous part of each global batch of `batch_size` rows. Each rank's loss is its rows'
    summed loss * world / global batch rows, so DDP's gradient average is exactly the gradient of the global
    batch's mean loss: one process and N ranks make the same updates (up to float summation order; dropout
    draws differ per rank). Only rank 0 logs to `live` and writes the resume state.

    With `resume_file`, the state at the end of each pass (and at an early stop) is written there (atomically), and
    when cfg.resume is set a state found there for the same params and data is restored and training continues
    with the next pass.
    """
    model.to(device)
    model.embedding_dropout.p = cfg.embedding_dropout
    net = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(cfg.seed + dist.rank)  # dropout draws differ per rank; weights came from rank 0
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    fp = resume_fingerprint(cfg, train, valid)
    state = None
    if resume_file is not None and cfg.resume:
        state = FitState.load(resume_file, fp, model, opt, gen)
        if state is not None:
            log.info("resuming after pass %d (best valid AUC %.5f)", state.epoch - 1, state.best_auc)
            if live is not None and dist.is_main:
                for record in state.history:
                    log_validation(live, record)
    state = state or FitState(lr=cfg.learning_rate)
    total_steps = run_steps(len(train), cfg)
    # A resumed run that had already stopped (early, or at its step budget) only restores its best weights.
    finished = state.bad_validations >= cfg.patience or state.step >= total_steps
    epochs = range(0) if finished else range(state.epoch, cfg.epochs)
    lengths = train.history_lengths()
    since = time.perf_counter()  # start of the interval the next validation line reports
    for epoch in epochs:
        net.train()
        batches = pass_batches(lengths, cfg.batch_size, cfg.bucket_batches, gen)
        pass_loss = 0.0  # this rank's summed BCE since the pass began or the last validation
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", mininterval=5, disable=not dist.is_main)
        for b, rows in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = lr_at(state.step, state.lr, cfg.lr_schedule, cfg.min_lr, total_steps, cfg.warmup_steps)
            loss, loss_sum = batch_loss(net, train, rows, cfg, device, dist)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"train: loss is {loss.item()} at step {state.step} (epoch {epoch})")
            optimizer_step(model, opt, loss, cfg.max_grad_norm)
            pass_loss += loss_sum.item()
            state.interval_rows += len(rows)
            state.step += 1
            due = state.step % cfg.eval_steps == 0 if cfg.eval_steps else b == len(batches) - 1
            if not (due or state.step == total_steps):
                continue
            scores = evaluate_split(model, valid, cfg.eval_batch_size, device, cfg.amp, dist)
            train_loss = state.interval_loss + dist.sum(pass_loss, device)
            record = {"epoch": epoch, "step": state.step, "train_logloss": train_loss / state.interval_rows,
                      "valid_auc": scores["auc"], "valid_logloss": scores["logloss"], "lr": opt.param_groups[0]["lr"]}
            state.history.append(record)
            seconds, rows_seen = time.perf_counter() - since, state.interval_rows * dist.world
            state.interval_loss, state.interval_rows, pass_loss = 0.0, 0, 0.0
            improved = scores["auc"] > state.best_auc
            if dist.is_main:
                log.info("pass %d, step %d: valid AUC %.4f%s, valid logloss %.4f, train logloss %.4f, lr %.3g; "
                         "%.0f s, %.0f rows/s", epoch, state.step, scores["auc"],
                         " (best so far)" if improved else f" (best {state.best_auc:.4f})", scores["logloss"],
                         record["train_logloss"], record["lr"], seconds, rows_seen / max(seconds, 1e-9))
                if live is not None:
                    log_validation(live, record)
            if improved:
                state.best_auc, state.bad_validations = scores["auc"], 0
                state.best_state = copy.deepcopy(model.state_dict())
            else:
                state.bad_validations += 1
                if cfg.lr_schedule == "plateau" and state.lr > cfg.min_lr:
                    state.lr = max(state.lr * cfg.lr_decay, cfg.min_lr)
                    if dist.is_main:
                        log.info("no better valid AUC: lr lowered to %.3g", state.lr)
            since = time.perf_counter()
            if state.bad_validations >= cfg.patience or state.step == total_steps:
                break
            net.train()
        state.interval_loss += dist.sum(pass_loss, device)
        state.epoch = epoch + 1
        if resume_file is not None and dist.is_main:
            state.save(resume_file, fp, model, opt, gen)
        if state.step == total_steps:
            break
        if state.bad_validations >= cfg.patience:
            log.info("early stop at step %d, pass %d (best valid AUC %.5f)", state.step, epoch, state.best_auc)
            break
    if state.best_state is None:
        raise DataError("train: no validation gave a valid AUC to keep (is the valid split all one label?)")
    model.load_state_dict(state.best_state)
    return state.history


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically, byte-identical for identical contents: torch names the archive's
    folder after the file it is given, so it is given a file object (folder `archive`), not the random temp name."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)


def save_checkpoint(path: str | Path, model: nn.Module, feature_map: FeatureMap) -> None:
    """Atomically write {"model": state_dict, "config": ModelConfig as dict, "feature_map": dict}; plain types
    only, so it loads with torch.load(weights_only=True)."""
    ckpt = {"model": {k: v.cpu() for k, v in model.state_dict().items()},
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model.cfg).items()},
            "feature_map": feature_map.to_dict()}
    save_atomic(ckpt, path)


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[nn.Module, FeatureMap]:
    """Rebuild the model from a checkpoint alone (no unpickling of code: weights_only=True)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg_dict = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()}
        fmap = FeatureMap.from_dict(ckpt["feature_map"], where=str(path))
        state = ckpt["model"]
        model = build_model(ModelConfig(**cfg_dict), fmap, state["item_tags"], state["item_mm"])
        model.load_state_dict(state)
    except FileNotFoundError:
        raise DataError(f"{path}: checkpoint not found") from None
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"{path}: not a valid mmctr checkpoint ({str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval(), fmap
