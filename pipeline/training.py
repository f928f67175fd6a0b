"""Training and scoring of the CTR model over whole splits held as tensors.

Each split is loaded once into contiguous tensors (history matrix, ids, context features, labels); batches are
index slices, trimmed to the longest real history in the batch (never below first_k), which changes no output
because padded positions are masked. The loop lives here, not in the nn.Module.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import pickle
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn
from tqdm import tqdm

from model.config import ModelConfig
from model.transformer_dcn import TransformerDCN
from pipeline.config import TrainConfig
from pipeline.feature_map import FeatureMap
from pipeline.io import DataError, atomic_path, read_parquet
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


def load_split(path: str | Path, feature_map: FeatureMap) -> SplitTensors:
    """Read a split parquet (sequences contract) into tensors, checking columns and history length."""
    names = [f.name for f in feature_map.context_features]
    df = read_parquet(path, {"user_id": pl.Int32, "item_seq": pl.List(pl.Int32), "item_id": pl.Int32,
                             "label": pl.Float32, **{n: pl.Int8 for n in names}})
    if df.height == 0:
        raise DataError(f"{path}: split has no rows")
    max_len = feature_map["item_seq"].max_len
    lengths = df["item_seq"].list.len()
    if (lengths != max_len).any():
        raise DataError(f"{path}: row {int((lengths != max_len).arg_true()[0])} has an item_seq of length "
                        f"{int(lengths[int((lengths != max_len).arg_true()[0])])}, expected {max_len}")
    seq = df["item_seq"].list.to_array(max_len).to_numpy()
    as_long = lambda c: torch.from_numpy(df[c].to_numpy().astype(np.int64))  # noqa: E731
    return SplitTensors(torch.from_numpy(seq.astype(np.int64)), as_long("item_id"),
                        {n: as_long(n) for n in names}, torch.from_numpy(df["label"].to_numpy().copy()),
                        as_long("user_id"))


def load_item_tables(path: str | Path) -> tuple[Tensor, Tensor, int]:
    """item_info.parquet -> (tags (N+1, T) int64, frozen embeddings (N+1, M) float32, M), after checking that
    row i holds item i."""
    df = read_parquet(path, {"item_id": pl.Int32, "item_tags": pl.List(pl.Int32)})
    check_item_table(df, str(path))
    emb_cols = [c for c in df.columns if c.startswith("item_emb_d")]
    if len(emb_cols) != 1:
        raise DataError(f"{path}: expected one item_emb_d<dim> column, found {emb_cols}")
    mm = df[emb_cols[0]].to_numpy().astype(np.float32)
    if not np.isfinite(mm).all():
        raise DataError(f"{path}: column {emb_cols[0]} holds NaN or inf")
    tags = df["item_tags"].list.to_array(int(df["item_tags"].list.len().max())).to_numpy()
    return torch.from_numpy(tags.astype(np.int64)), torch.from_numpy(mm), mm.shape[1]


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
                   amp: bool = False) -> np.ndarray:
    """Logits (n,) float64 for every row of `split`, in row order, model in eval mode."""
    model.eval()
    first_k = model.cfg.first_k
    out = []
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        with autocast(device, amp):
            out.append(model(make_batch(split, idx, first_k, device)).float().cpu())
    return torch.cat(out).double().numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def evaluate_split(model: nn.Module, split: SplitTensors, batch_size: int, device: torch.device,
                   amp: bool = False) -> dict[str, float]:
    """{"auc", "logloss"} of the model on a split."""
    probs = sigmoid(predict_logits(model, split, batch_size, device, amp))
    labels = split.label.numpy()
    return {"auc": auc(labels, probs), "logloss": logloss(labels, probs)}


def fit(model: nn.Module, train: SplitTensors, valid: SplitTensors, cfg: TrainConfig, device: torch.device,
        live: Any = None) -> list[dict[str, float]]:
    """Adam on BCEWithLogits with early stopping on valid AUC; returns per-epoch metrics and leaves the model
    holding the best epoch's weights.

    After each epoch without a better valid AUC the learning rate is multiplied by `lr_decay` (FuxiCTR's
    reduce-on-plateau); training stops after `patience` such epochs. A NaN/inf loss stops with the step number.
    """
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    best_auc, best_state, bad_epochs, history, step = -math.inf, None, 0, [], 0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        bar = tqdm(range(0, len(train), cfg.batch_size), desc=f"epoch {epoch}", unit="batch", mininterval=5)
        for start in bar:
            idx = order[start:start + cfg.batch_size]
            batch = make_batch(train, idx, cfg.first_k, device)
            with autocast(device, cfg.amp):
                loss = loss_fn(model(batch).float(), train.label[idx].to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"train: loss is {loss.item()} at step {step} (epoch {epoch})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            total += loss.item() * len(idx)
            step += 1
        scores = evaluate_split(model, valid, cfg.eval_batch_size, device, cfg.amp)
        record = {"epoch": epoch, "train_logloss": total / len(train), "valid_auc": scores["auc"],
                  "valid_logloss": scores["logloss"], "lr": opt.param_groups[0]["lr"]}
        history.append(record)
        log.info("epoch %d: %s", epoch, json.dumps({k: round(v, 5) for k, v in record.items()}))
        if live is not None:
            for k, v in record.items():
                if k != "epoch":
                    live.log_metric(k, v)
            live.next_step()
        if scores["auc"] > best_auc:
            best_auc, bad_epochs = scores["auc"], 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            for group in opt.param_groups:
                group["lr"] = max(group["lr"] * cfg.lr_decay, cfg.min_lr)
            if bad_epochs >= cfg.patience:
                log.info("early stop after epoch %d (best valid AUC %.5f)", epoch, best_auc)
                break
    model.load_state_dict(best_state)
    return history


def save_checkpoint(path: str | Path, model: TransformerDCN, feature_map: FeatureMap) -> None:
    """Atomically write {"model": state_dict, "config": ModelConfig as dict, "feature_map": dict}; plain types
    only, so it loads with torch.load(weights_only=True)."""
    ckpt = {"model": {k: v.cpu() for k, v in model.state_dict().items()},
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model.cfg).items()},
            "feature_map": feature_map.to_dict()}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[TransformerDCN, FeatureMap]:
    """Rebuild the model from a checkpoint alone (no unpickling of code: weights_only=True)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg_dict = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()}
        fmap = FeatureMap.from_dict(ckpt["feature_map"], where=str(path))
        state = ckpt["model"]
        model = TransformerDCN(ModelConfig(**cfg_dict), fmap, state["item_tags"], state["item_mm"])
        model.load_state_dict(state)
    except FileNotFoundError:
        raise DataError(f"{path}: checkpoint not found") from None
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"{path}: not a valid mmctr checkpoint ({str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval(), fmap
