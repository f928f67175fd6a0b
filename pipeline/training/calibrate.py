"""The new-item offset (ModelConfig new_item_offset): one logit added to every target item the train split never had
as a target, fitted on the valid split after training.

Why: no train row shows how clickable such an item is. Its id embedding is still at its ~0 init, and the model
scores it from its content with a level that nothing fitted. Under a time split, new items fill a share of valid and
test. Where they differ from old items as a group, the model is off by about one constant for all of them. Example:
items released at the height of their buzz, which the data does not record. Ranking within new items and within old
items is fine; ranking one group against the other is not. Valid's rows of items new to the train split measure
that constant, and maximum likelihood fits it. On the held-out drift+buzz set (README "New-item offset") it came out
at +0.44 and test AUC rose by 0.015. Where new items are like the old ones it comes out near 0.

A N(0, PRIOR_SD^2) prior pulls the offset of a few valid rows toward 0. With fewer than MIN_ROWS such rows, or rows
of one class only, the offset stays 0.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from model.layers import CTRBase
from pipeline.core.distributed import SINGLE, Dist
from pipeline.core.metrics import sigmoid
from pipeline.training.data import SplitTensors
from pipeline.training.predict import predict_logits

log = logging.getLogger(__name__)

MIN_ROWS = 200  # valid rows of new items below which no offset is fitted
PRIOR_SD = 1.0  # sd of the offset's N(0, sd^2) prior, in logits


def fit_offset(logits: np.ndarray, labels: np.ndarray, rows: np.ndarray, prior_sd: float = PRIOR_SD,
               min_rows: int = MIN_ROWS) -> float:
    """logits (n,) float, labels (n,) 0/1, rows (n,) bool -> the offset d (float) that maximises
    sum over the selected rows of log sigmoid(+-(logit + d)) - d^2 / (2 prior_sd^2): their maximum a posteriori
    logit offset. 0.0 when fewer than `min_rows` rows are selected or they hold one class only.

    The objective is strictly concave in d, so Newton's method finds its one maximum; each step is clipped to one
    logit, which keeps it from overshooting where the log-likelihood is nearly linear."""
    z = np.asarray(logits, dtype=np.float64)[rows]
    y = np.asarray(labels, dtype=np.float64)[rows]
    if len(z) < min_rows or y.min() == y.max():
        return 0.0
    d = 0.0
    for _ in range(100):
        p = sigmoid(z + d)
        gradient = (p - y).sum() + d / prior_sd**2  # of the negative objective
        curvature = (p * (1 - p)).sum() + 1 / prior_sd**2
        step = float(np.clip(gradient / curvature, -1.0, 1.0))
        d -= step
        if abs(step) < 1e-9:
            break
    return d


def new_item_rows(model: nn.Module, split: SplitTensors) -> np.ndarray:
    """(n,) bool: whether row i's target item is new to the model's train split (its `item_new` table)."""
    base = next(m for m in model.modules() if isinstance(m, CTRBase))
    return base.item_new.cpu()[split.item_id].numpy()


def fit_new_item_offset(model: nn.Module, valid: SplitTensors, batch_size: int, device: torch.device,
                        amp: bool = False, dist: Dist = SINGLE) -> tuple[float, np.ndarray]:
    """Fit the offset of a trained model with new_item_offset on the valid split (`fit_offset` of its logits, the
    offset at 0) and set it in every model it holds (each member of a seed ensemble: the members' mean logit
    moves by the same offset). Returns (the offset, the valid logits (n,) float64 of the model with it, in row
    order).
    Every rank of a torchrun run gets the same logits, so it fits the same offset."""
    bases = [m for m in model.modules() if isinstance(m, CTRBase)]
    for base in bases:
        base.new_item_logit.zero_()
    logits = predict_logits(model, valid, batch_size, device, amp, dist)
    new = new_item_rows(model, valid)
    offset = float(np.float32(fit_offset(logits, valid.label.numpy(), new)))  # as the float32 buffer holds it
    for base in bases:
        base.new_item_logit.fill_(offset)
    log.info("new-item offset %+.4f logits, fitted on %d of %d valid rows (items the train split never had as a "
             "target)%s", offset, int(new.sum()), len(new),
             "" if new.sum() >= MIN_ROWS else f": fewer than {MIN_ROWS}, so it stays 0")
    return offset, logits + offset * new
