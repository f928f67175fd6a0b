"""CTR metrics over (labels, probabilities): AUC, logloss, per-user gAUC, ROC/calibration curves, and the AUC lead
of one model over another with a bootstrap over users."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

from pipeline.core.io import DataError

EPS = 1e-7


# What each split's clicks and non-clicks are needed for, in the error that names a one-class split.
NEEDS_BOTH_CLASSES = {"train": "training a click model", "valid": "early stopping on valid AUC",
                      "test": "scoring the test split (AUC)"}


def require_both_classes(path: str | Path, labels: np.ndarray, split: str) -> None:
    """A DataError naming `path` when `labels` (n,) of split `split` (a NEEDS_BOTH_CLASSES key) are all 0 or all 1
    (nothing when n = 0). Every split a model trains, early-stops or is scored on goes through this, in whichever
    stage reads it first."""
    if labels.size and labels.min() == labels.max():
        raise DataError(f"{path}: every label is {labels.flat[0]:g}; {NEEDS_BOTH_CLASSES[split]} needs clicks and "
                        "non-clicks")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; a split with one class only is a DataError (AUC undefined)."""
    if np.unique(labels).size < 2:
        raise DataError("AUC is undefined: the labels hold one class only")
    return float(roc_auc_score(labels, scores))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities clipped to [EPS, 1-EPS], in float64 (scikit-learn clips float32
    input again, at float32's epsilon: float32 and float64 scores would be clipped differently)."""
    return float(log_loss(labels, np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS), labels=[0, 1]))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC averaged with weights = the user's row count, over users with both classes.

    Each user's AUC is the Mann-Whitney statistic from average ranks within the user (ties count 1/2), computed
    for all users at once in polars.
    """
    per_user = (
        pl.DataFrame({"u": users, "y": labels.astype(np.float64), "s": scores})
        .with_columns(r=pl.col("s").rank("average").over("u"))
        .group_by("u")
        .agg(n=pl.len(), pos=pl.col("y").sum(), rank_sum=(pl.col("r") * pl.col("y")).sum())
        .filter((pl.col("pos") > 0) & (pl.col("pos") < pl.col("n")))
        .with_columns(auc=(pl.col("rank_sum") - pl.col("pos") * (pl.col("pos") + 1) / 2)
                      / (pl.col("pos") * (pl.col("n") - pl.col("pos"))))
        .sort("u")  # group_by's order varies from run to run, and so would the last bits of the float sum
    )
    if per_user.height == 0:
        return float("nan")
    return float((per_user["auc"] * per_user["n"]).sum() / per_user["n"].sum())


def paired_auc_lead(users: np.ndarray, labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                    reps: int = 1000, seed: int = 0, margin: float = 0.0) -> dict[str, float]:
    """AUC(a) - AUC(b) over the same rows (n,), with its spread under a bootstrap over users.

    Each resample draws len(unique users) users with replacement and takes all their rows, so rows of one user
    stay together (a user's rows share the user's taste: a row bootstrap would understate the spread), and both
    models are scored on the very same resample (paired: the spread is the lead's, not each AUC's). Resamples
    that hold one class only are skipped. Returns {lead, sd, low, high (the 2.5% and 97.5% quantiles),
    at_least_margin (the share of resamples whose lead is >= margin), reps (resamples used)}; the same
    `seed` gives the same figures."""
    if not len(users) == len(labels) == len(scores_a) == len(scores_b):
        raise ValueError(f"paired_auc_lead: rows differ: {len(users)}, {len(labels)}, {len(scores_a)}, "
                         f"{len(scores_b)}")
    lead = auc(labels, scores_a) - auc(labels, scores_b)
    _, user_of_row = np.unique(users, return_inverse=True)
    order = np.argsort(user_of_row, kind="stable")  # rows grouped by user: user u's rows are order[start[u]:...]
    counts = np.bincount(user_of_row)
    starts = np.cumsum(counts) - counts
    rng = np.random.default_rng(seed)
    leads = []
    for _ in range(reps):
        picked = rng.integers(0, counts.size, counts.size)
        sizes = counts[picked]
        # position within the resample -> row: each picked user's start, plus 0..size-1
        first = np.repeat(starts[picked] - (np.cumsum(sizes) - sizes), sizes)
        rows = order[first + np.arange(sizes.sum())]
        y = labels[rows]
        if np.unique(y).size == 2:
            leads.append(roc_auc_score(y, scores_a[rows]) - roc_auc_score(y, scores_b[rows]))
    if not leads:
        raise DataError("paired_auc_lead: every resample held one class only")
    spread = np.asarray(leads)
    return {"lead": lead, "sd": float(spread.std()), "low": float(np.quantile(spread, 0.025)),
            "high": float(np.quantile(spread, 0.975)), "at_least_margin": float(np.mean(spread >= margin)),
            "reps": len(leads)}


# Slices of test rows by how often the target item was a train row's target: new items, rare ones, the rest.
EXPOSURE_SLICES: tuple[tuple[str, int, float], ...] = (("0", 0, 0), ("1-9", 1, 9), ("10+", 10, math.inf))


def exposure_counts(train_items: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(n,) int64: for each of `items`, the number of entries of `train_items` (the train split's target item ids,
    clicked or not) equal to it; 0 for an item the train split never shows."""
    ids, counts = np.unique(train_items, return_counts=True)
    if ids.size == 0:
        return np.zeros(len(items), dtype=np.int64)
    pos = np.minimum(np.searchsorted(ids, items), ids.size - 1)
    return np.where(ids[pos] == items, counts[pos], 0).astype(np.int64)


def sliced_metrics(exposures: np.ndarray, users: np.ndarray, labels: np.ndarray,
                   probs: np.ndarray) -> dict[str, dict[str, float]]:
    """{slice name: {rows, auc, logloss, gauc}} over the rows whose target item's train exposures fall in each of
    EXPOSURE_SLICES. A slice whose rows hold one class only reports rows (and logloss when it has rows); gauc is
    left out when no user in it has both classes."""
    out: dict[str, dict[str, float]] = {}
    for name, low, high in EXPOSURE_SLICES:
        m = (exposures >= low) & (exposures <= high)
        part: dict[str, float] = {"rows": int(m.sum())}
        if m.any():
            part["logloss"] = logloss(labels[m], probs[m])
        if np.unique(labels[m]).size == 2:
            part["auc"] = auc(labels[m], probs[m])
            per_user = gauc(users[m], labels[m], probs[m])
            if math.isfinite(per_user):
                part["gauc"] = per_user
        out[name] = part
    return out


def roc_points(labels: np.ndarray, scores: np.ndarray, n_points: int = 201) -> list[dict[str, float]]:
    """ROC curve resampled at `n_points` evenly spaced false-positive rates (small enough to keep in git):
    [{fpr, tpr, chance}], tpr the curve's true-positive rate at fpr: linear between its corners, so a group of
    tied scores is one straight segment, as AUC counts it (a step drawn there would fall below the AUC), and at a
    vertical jump its top; chance = fpr, the diagonal of a random ranking, drawn beside the curve."""
    fpr, tpr, _ = roc_curve(labels, scores)  # both non-decreasing, fpr[0] == 0
    grid = np.linspace(0.0, 1.0, n_points)
    reached = np.interp(grid, fpr, tpr)
    return [{"fpr": float(f), "tpr": float(t), "chance": float(f)} for f, t in zip(grid, reached)]


def calibration_points(labels: np.ndarray, probs: np.ndarray, bins: int) -> list[dict[str, float]]:
    """Equal-width probability bins [i/bins, (i+1)/bins) (the last one closed) -> [{prob_pred, prob_true, count,
    perfect}] for the non-empty bins; perfect = prob_pred, the diagonal a calibrated model lies on, drawn beside the
    curve. A score on an edge goes to the bin above it, whatever the float rounding of score * bins."""
    which = np.clip(np.searchsorted(np.linspace(0.0, 1.0, bins + 1), probs, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            pred = float(probs[sel].mean())
            rows.append({"prob_pred": pred, "prob_true": float(labels[sel].mean()), "count": int(sel.sum()),
                         "perfect": pred})
    return rows


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise logistic function: logits -> probabilities (same shape)."""
    return 1.0 / (1.0 + np.exp(-x))
