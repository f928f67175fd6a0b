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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn
from tqdm import tqdm

from model.config import ModelConfig
from model.factory import build_model
from pipeline.config import TrainConfig
from pipeline.distributed import SINGLE, Dist
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
    as_long = lambda c: torch.from_numpy(df[c].to_numpy().astype(np.int64))
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
                   amp: bool = False, dist: Dist = SINGLE) -> np.ndarray:
    """Logits (n,) float64 for every row of `split`, in row order, model in eval mode. Under torchrun each rank
    scores a contiguous slice and every rank gets the whole vector (so all ranks take the same decisions)."""
    model.eval()
    first_k = model.cfg.first_k
    rows = torch.arange(len(split)).tensor_split(dist.world)[dist.rank]
    out = [torch.zeros(0)]
    for start in range(0, len(rows), batch_size):
        idx = rows[start:start + batch_size]
        with autocast(device, amp):
            out.append(model(make_batch(split, idx, first_k, device)).float().cpu())
    return dist.gather_slices(torch.cat(out).double(), len(split), device).numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def evaluate_split(model: nn.Module, split: SplitTensors, batch_size: int, device: torch.device,
                   amp: bool = False, dist: Dist = SINGLE) -> dict[str, float]:
    """{"auc", "logloss"} of the model on a split."""
    probs = sigmoid(predict_logits(model, split, batch_size, device, amp, dist))
    labels = split.label.numpy()
    return {"auc": auc(labels, probs), "logloss": logloss(labels, probs)}


# The train params that do not change what training computes: a resume state written under other values of these
# is still valid.
RESUME_NEUTRAL = ("resume", "epochs", "device", "num_threads", "eval_batch_size")


def resume_path(model_path: str | Path) -> Path:
    """Where `fit` keeps the state of the last finished epoch: `.<model name>.resume.pt` beside the checkpoint
    (outside what DVC caches, so it survives a failed or killed run)."""
    model_path = Path(model_path)
    return model_path.parent / f".{model_path.name}.resume.pt"


def resume_fingerprint(cfg: TrainConfig, train: SplitTensors, valid: SplitTensors) -> str:
    """What a resume state must match: the train params that shape the run and the split sizes."""
    parts = {k: v for k, v in asdict(cfg).items() if k not in RESUME_NEUTRAL}
    return json.dumps({"params": parts, "train_rows": len(train), "valid_rows": len(valid)}, sort_keys=True,
                      default=list)


@dataclass
class FitState:
    """Everything a run needs to continue after epoch `epoch - 1`: weights, optimiser, the epoch-order generator
    and torch's global RNG (dropout), the best epoch so far and the per-epoch records."""

    epoch: int = 0
    step: int = 0
    best_auc: float = -math.inf
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None

    def save(self, path: Path, fp: str, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
        """Write the state atomically (plain types and tensors only: loads with weights_only=True)."""
        blob = {"fingerprint": fp, "epoch": self.epoch, "step": self.step, "best_auc": self.best_auc,
                "bad_epochs": self.bad_epochs, "history": self.history, "best_state": self.best_state,
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
        return cls(blob["epoch"], blob["step"], blob["best_auc"], blob["bad_epochs"], blob["history"],
                   blob["best_state"])


def log_epoch(live: Any, record: dict[str, float]) -> None:
    """One epoch's record as a dvclive step."""
    for k, v in record.items():
        if k != "epoch":
            live.log_metric(k, v)
    live.next_step()


def batch_loss(net: nn.Module, split: SplitTensors, rows: Tensor, cfg: TrainConfig, device: torch.device,
               dist: Dist = SINGLE) -> tuple[Tensor, Tensor]:
    """This rank's part of the global batch `rows` (its contiguous slice of rows.tensor_split(world)) ->
    (loss to backpropagate, summed BCE of its rows). The loss is that sum * world / len(rows), so DDP's average of
    the ranks' gradients is the gradient of the global batch's mean BCE (in a world of 1: the mean BCE)."""
    idx = rows.tensor_split(dist.world)[dist.rank]
    batch = make_batch(split, idx, cfg.first_k, device)
    with autocast(device, cfg.amp):
        logits = net(batch).float()
    loss_sum = nn.functional.binary_cross_entropy_with_logits(logits, split.label[idx].to(device), reduction="sum")
    return loss_sum * (dist.world / len(rows)), loss_sum


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, loss: Tensor, max_grad_norm: float) -> None:
    """One update from `loss`: clear the gradients, backpropagate, clip their global norm to max_grad_norm, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()


def fit(model: nn.Module, train: SplitTensors, valid: SplitTensors, cfg: TrainConfig, device: torch.device,
        live: Any = None, dist: Dist = SINGLE, resume_file: Path | None = None) -> list[dict[str, float]]:
    """Adam on BCEWithLogits with early stopping on valid AUC; returns per-epoch metrics and leaves the model
    holding the best epoch's weights.

    After each epoch without a better valid AUC the learning rate is multiplied by `lr_decay` (FuxiCTR's
    reduce-on-plateau); training stops after `patience` such epochs. A NaN/inf loss stops with the step number.

    Under torchrun (dist.enabled) the model is wrapped in DistributedDataParallel; every rank draws the same epoch
    order and takes its contiguous part of each global batch of `batch_size` rows. Each rank's loss is its rows'
    summed loss * world / global batch rows, so DDP's gradient average is exactly the gradient of the global
    batch's mean loss: one process and N ranks make the same updates (up to float summation order; dropout
    draws differ per rank). Only rank 0 logs to `live` and writes the resume state.

    With `resume_file`, the state of each finished epoch is written there (atomically), and when cfg.resume is set
    a state found there for the same params and data is restored and training continues after its epoch.
    """
    model.to(device)
    net = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(cfg.seed + dist.rank)  # dropout draws differ per rank; weights came from rank 0
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(cfg.seed)
    fp = resume_fingerprint(cfg, train, valid)
    state = None
    if resume_file is not None and cfg.resume:
        state = FitState.load(resume_file, fp, model, opt, gen)
        if state is not None:
            log.info("resuming after epoch %d (best valid AUC %.5f)", state.epoch - 1, state.best_auc)
            if live is not None and dist.is_main:
                for record in state.history:
                    log_epoch(live, record)
    state = state or FitState()
    # A resumed run that had already stopped early only restores its best weights.
    epochs = range(state.epoch, cfg.epochs) if state.bad_epochs < cfg.patience else range(0)
    for epoch in epochs:
        net.train()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        bar = tqdm(range(0, len(train), cfg.batch_size), desc=f"epoch {epoch}", unit="batch", mininterval=5,
                   disable=not dist.is_main)
        for start in bar:
            loss, loss_sum = batch_loss(net, train, order[start:start + cfg.batch_size], cfg, device, dist)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"train: loss is {loss.item()} at step {state.step} (epoch {epoch})")
            optimizer_step(model, opt, loss, cfg.max_grad_norm)
            total += loss_sum.item()
            state.step += 1
        scores = evaluate_split(model, valid, cfg.eval_batch_size, device, cfg.amp, dist)
        record = {"epoch": epoch, "train_logloss": dist.sum(total, device) / len(train), "valid_auc": scores["auc"],
                  "valid_logloss": scores["logloss"], "lr": opt.param_groups[0]["lr"]}
        state.history.append(record)
        if dist.is_main:
            log.info("epoch %d: %s", epoch, json.dumps({k: round(v, 5) for k, v in record.items()}))
            if live is not None:
                log_epoch(live, record)
        if scores["auc"] > state.best_auc:
            state.best_auc, state.bad_epochs = scores["auc"], 0
            state.best_state = copy.deepcopy(model.state_dict())
        else:
            state.bad_epochs += 1
            for group in opt.param_groups:
                group["lr"] = max(group["lr"] * cfg.lr_decay, cfg.min_lr)
        state.epoch = epoch + 1
        if resume_file is not None and dist.is_main:
            state.save(resume_file, fp, model, opt, gen)
        if state.bad_epochs >= cfg.patience:
            log.info("early stop after epoch %d (best valid AUC %.5f)", epoch, state.best_auc)
            break
    if state.best_state is None:
        raise DataError("train: no epoch gave a valid AUC to keep (is the valid split all one label?)")
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
