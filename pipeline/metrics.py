"""CTR metrics over (labels, probabilities): AUC, logloss, per-user gAUC, and ROC/calibration curves."""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

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



def roc_points(labels: np.ndarray, scores: np.ndarray, n_points: int = 201) -> list[dict[str, float]]:
    """ROC curve resampled at `n_points` evenly spaced false-positive rates (small enough to keep in git):
    [{fpr, tpr}], tpr the highest true-positive rate reached at a false-positive rate at or below fpr."""
    fpr, tpr, _ = roc_curve(labels, scores)  # both non-decreasing, fpr[0] == 0
    grid = np.linspace(0.0, 1.0, n_points)
    reached = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    return [{"fpr": float(f), "tpr": float(t)} for f, t in zip(grid, reached)]


def calibration_points(labels: np.ndarray, probs: np.ndarray, bins: int) -> list[dict[str, float]]:
    """Equal-width probability bins -> [{prob_pred, prob_true, count}] for the non-empty bins."""
    which = np.minimum((probs * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            rows.append({"prob_pred": float(probs[sel].mean()), "prob_true": float(labels[sel].mean()),
                         "count": int(sel.sum())})
    return rows
