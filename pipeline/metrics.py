"""CTR metrics over (labels, probabilities): AUC, logloss, per-user gAUC."""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.metrics import log_loss, roc_auc_score

from pipeline.io import DataError

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; a split with one class only is a DataError (AUC undefined)."""
    if np.unique(labels).size < 2:
        raise DataError("AUC is undefined: the labels hold one class only")
    return float(roc_auc_score(labels, scores))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities clipped to [EPS, 1-EPS]."""
    return float(log_loss(labels, np.clip(probs, EPS, 1 - EPS), labels=[0, 1]))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC averaged with weights = the user's row count, over users with both classes."""
    df = pl.DataFrame({"u": users, "y": labels, "s": scores})
    total, weight = 0.0, 0
    for _, g in df.group_by("u"):
        y = g["y"].to_numpy()
        if 0 < y.sum() < len(y):
            total += roc_auc_score(y, g["s"].to_numpy()) * len(y)
            weight += len(y)
    return total / weight if weight else float("nan")

