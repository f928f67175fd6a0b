"""Scoring whole splits: logits in row order (split across ranks under torchrun), and the
validation record (AUC, logloss) the training loop and evaluate share."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.core.distributed import SINGLE, Dist, autocast
from pipeline.core.metrics import auc, logloss, sigmoid
from pipeline.training.data import RELEASE_BATCHES, SplitTensors, make_batch


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
    for b, start in enumerate(range(0, len(by_length), batch_size)):
        idx = by_length[start:start + batch_size]
        with autocast(device, amp):
            out.append(model(make_batch(split, idx, first_k, device)).float().cpu())
        if b % RELEASE_BATCHES == RELEASE_BATCHES - 1:
            split.release()
    split.release()
    logits = torch.empty(len(rows), dtype=torch.float64)
    logits[by_length - (int(rows[0]) if len(rows) else 0)] = torch.cat(out).double()  # rows is one contiguous range
    return dist.gather_slices(logits, len(split), device).numpy()


def evaluate_split(model: nn.Module, split: SplitTensors, batch_size: int, device: torch.device,
                   amp: bool = False, dist: Dist = SINGLE) -> dict[str, float]:
    """{"auc", "logloss"} of the model on a split."""
    return logit_scores(split.label.numpy(), predict_logits(model, split, batch_size, device, amp, dist))


def logit_scores(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """{"auc", "logloss"} of logits (n,) against labels (n,) 0/1."""
    probs = sigmoid(logits)
    return {"auc": auc(labels, probs), "logloss": logloss(labels, probs)}
