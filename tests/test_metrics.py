"""pipeline/core/metrics.py against brute-force and hand-computed references."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from pipeline.core.io import DataError
from pipeline.core.metrics import (
    EPS,
    auc,
    exposure_counts,
    gauc,
    logloss,
    paired_auc_lead,
    require_both_classes,
    sliced_metrics,
)


def brute_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(400) < 0.3).astype(np.float32)
    scores = np.round(rng.random(400) + 0.3 * labels, 1)  # rounding creates many ties
    assert auc(labels, scores) == pytest.approx(brute_auc(labels, scores), abs=1e-12)


def test_auc_extremes() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(labels, np.full(4, 0.5)) == 0.5


@pytest.mark.parametrize("labels", [np.ones(5), np.zeros(5), np.array([1.0])])
def test_auc_with_one_class_is_a_data_error(labels: np.ndarray) -> None:
    with pytest.raises(DataError, match="one class"):
        auc(labels, np.linspace(0, 1, labels.size))


@pytest.mark.parametrize(("labels", "split", "message"), [
    (np.zeros(4, np.float32), "valid", "v.parquet: every label is 0; early stopping on valid AUC needs clicks and "
     "non-clicks"),
    (np.ones(3, np.int64), "train", "v.parquet: every label is 1; training a click model needs clicks and non-clicks"),
    (np.array([1.0]), "test", "v.parquet: every label is 1; scoring the test split (AUC) needs clicks and "
     "non-clicks"),
])
def test_require_both_classes_names_the_file_and_the_use(labels: np.ndarray, split: str, message: str) -> None:
    with pytest.raises(DataError) as err:
        require_both_classes("v.parquet", labels, split)
    assert str(err.value) == message


def test_require_both_classes_passes_two_classes_and_no_rows() -> None:
    require_both_classes("v.parquet", np.array([0.0, 1.0, 0.0]), "train")
    require_both_classes("v.parquet", np.zeros(0, np.float32), "valid")


@pytest.mark.parametrize("seed", range(3))
def test_logloss_matches_the_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.4).astype(np.float64)
    probs = rng.random(300)
    probs[:3] = [0.0, 1.0, 1.0]  # clipped, so the loss stays finite
    labels[:3] = [1.0, 0.0, 1.0]
    p = np.clip(probs, EPS, 1 - EPS)
    expected = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    got = logloss(labels, probs)
    assert math.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-9)


def test_logloss_of_one_class_labels_is_defined() -> None:
    assert logloss(np.ones(4), np.full(4, 0.5)) == pytest.approx(math.log(2))


def test_gauc_hand_computed() -> None:
    users = np.array([1, 1, 1, 2, 2, 3, 3, 4, 5, 5])
    labels = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0])
    scores = np.array([0.9, 0.5, 0.95, 0.2, 0.1, 0.3, 0.4, 0.7, 0.3, 0.3])
    # user 1: 0.9 beats 0.5, loses to 0.95 -> 0.5 (3 rows); user 2: 1.0 (2 rows); user 5: tie -> 0.5 (2 rows);
    # users 3 (clicks only) and 4 (no click) are skipped
    assert gauc(users, labels, scores) == pytest.approx((0.5 * 3 + 1.0 * 2 + 0.5 * 2) / 7)


def test_gauc_equals_weighted_brute_force_and_ignores_row_order() -> None:
    rng = np.random.default_rng(7)
    users = rng.integers(0, 30, 600)
    labels = (rng.random(600) < 0.25).astype(np.float32)
    scores = np.round(rng.random(600), 2)
    total = weight = 0.0
    for u in np.unique(users):
        m = users == u
        if 0 < labels[m].sum() < m.sum():
            total += brute_auc(labels[m], scores[m]) * m.sum()
            weight += m.sum()
    assert gauc(users, labels, scores) == pytest.approx(total / weight, abs=1e-12)
    perm = rng.permutation(600)
    assert gauc(users[perm], labels[perm], scores[perm]) == pytest.approx(total / weight, abs=1e-12)


def test_gauc_is_the_same_bits_whatever_the_row_order() -> None:
    """Many users, so that polars spreads the groups over threads (their order then varies from call to call)."""
    rng = np.random.default_rng(3)
    users = rng.integers(0, 20_000, 200_000)
    labels = (rng.random(200_000) < 0.3).astype(np.float32)
    scores = rng.random(200_000)
    values = set()
    for seed in range(4):
        perm = np.random.default_rng(seed).permutation(len(users))
        values |= {gauc(users, labels, scores), gauc(users[perm], labels[perm], scores[perm])}
    assert len(values) == 1


def test_exposure_counts_match_a_plain_count() -> None:
    rng = np.random.default_rng(5)
    train = rng.integers(1, 40, 500)
    items = rng.integers(0, 60, 300)  # some never in train, some past every train id
    counts = Counter(train.tolist())
    assert exposure_counts(train, items).tolist() == [counts.get(i, 0) for i in items.tolist()]
    assert exposure_counts(np.array([], dtype=np.int64), items).tolist() == [0] * 300


def test_sliced_metrics_match_a_plain_reference() -> None:
    rng = np.random.default_rng(9)
    n = 900
    exposures = rng.choice([0, 0, 1, 3, 9, 10, 50], n)
    users = rng.integers(0, 40, n)
    labels = (rng.random(n) < 0.3).astype(np.float32)
    probs = np.clip(rng.random(n) * 0.6 + 0.4 * labels, 0.01, 0.99)
    got = sliced_metrics(exposures, users, labels, probs)
    assert list(got) == ["0", "1-9", "10+"]
    for name, members in (("0", {0}), ("1-9", {1, 3, 9}), ("10+", {10, 50})):
        rows = [i for i in range(n) if exposures[i] in members]
        y, p = labels[rows], probs[rows]
        expected_logloss = -np.mean([np.log(q) if t else np.log(1 - q) for t, q in zip(y, p)])
        assert got[name]["rows"] == len(rows)
        assert got[name]["auc"] == pytest.approx(brute_auc(y, p), abs=1e-12)
        assert got[name]["logloss"] == pytest.approx(expected_logloss, rel=1e-9)
        assert got[name]["gauc"] == pytest.approx(gauc(users[rows], y, p), abs=1e-15)


def test_a_slice_without_both_classes_reports_what_is_defined() -> None:
    exposures = np.array([0, 0, 5, 5, 20])
    labels = np.array([1.0, 1.0, 0.0, 1.0, 0.0])
    got = sliced_metrics(exposures, np.array([1, 2, 1, 1, 3]), labels, np.array([0.9, 0.8, 0.2, 0.7, 0.1]))
    assert set(got["0"]) == {"rows", "logloss"} and got["0"]["rows"] == 2  # clicks only: no AUC
    assert set(got["1-9"]) == {"rows", "logloss", "auc", "gauc"} and got["1-9"]["auc"] == 1.0
    assert set(sliced_metrics(np.array([3]), np.array([1]), np.array([1.0]), np.array([0.5]))["10+"]) == {"rows"}


def test_roc_points_follow_the_exact_curve() -> None:
    from sklearn.metrics import roc_curve

    from pipeline.core.metrics import roc_points

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 3000)
    scores = labels * 0.7 + rng.random(3000)
    points = roc_points(labels, scores, n_points=101)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert len(points) == 101 and points[0]["fpr"] == 0.0 and points[-1] == {"fpr": 1.0, "tpr": 1.0, "chance": 1.0}
    for p in points:  # each point is the exact curve's highest tpr at fpr <= p["fpr"]
        assert p["tpr"] == pytest.approx(tpr[fpr <= p["fpr"]].max())
    area = np.trapezoid([p["tpr"] for p in points], [p["fpr"] for p in points])
    assert area == pytest.approx(auc(labels, scores), abs=0.01)


@pytest.mark.parametrize("values", [[0.5], [0.2, 0.8], [0.1, 0.3, 0.3000001]])
def test_roc_points_of_tied_scores_draw_the_area_auc_counts(values: list[float]) -> None:
    """A group of tied scores is one diagonal segment of the curve: drawn as a flat run and a jump, the plot of
    all-equal scores showed an area of 0.0025 beside an AUC of 0.5."""
    from pipeline.core.metrics import roc_points

    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 100)
    scores = rng.choice(values, 200) + 0.02 * labels * (len(values) > 2)
    points = roc_points(labels, scores)
    area = np.trapezoid([p["tpr"] for p in points], [p["fpr"] for p in points])
    assert area == pytest.approx(auc(labels, scores), abs=1e-3)


def test_logloss_clips_float32_as_float64() -> None:
    labels, probs = np.array([1, 0, 1, 0]), np.array([1, 0, 0, 1])
    assert logloss(labels, probs.astype(np.float32)) == logloss(labels, probs.astype(np.float64))
    assert logloss(labels, probs) == pytest.approx(-math.log(EPS) / 2)


def test_calibration_bins_put_a_score_on_an_edge_in_the_bin_above() -> None:
    """[i/bins, (i+1)/bins): 0.3 * 10 rounds to 3.0000000000000004 and 0.6 * 10 to 6.0 in float64, but which side an
    edge lands on must not depend on that."""
    from pipeline.core.metrics import calibration_points

    for bins in (10, 100, 1000):
        edges = np.linspace(0.0, 1.0, bins + 1)
        probs = np.concatenate([edges, np.nextafter(edges[1:], 0.0)])
        counts = {round(r["prob_pred"] * bins - 0.5): r["count"] for r in calibration_points(np.ones(len(probs)),
                                                                                           probs, bins)}
        # each bin holds its lower edge and the value just below its upper edge; the last one also 1.0 itself
        assert counts == {b: 2 + (b == bins - 1) for b in range(bins)}


def test_calibration_points_bin_means_and_counts() -> None:
    from pipeline.core.metrics import calibration_points

    labels = np.array([0, 1, 0, 1, 1, 1])
    probs = np.array([0.05, 0.15, 0.55, 0.6, 0.95, 0.99])
    bins = calibration_points(labels, probs, 2)
    assert bins == [{"prob_pred": pytest.approx(0.1), "prob_true": 0.5, "count": 2, "perfect": pytest.approx(0.1)},
                    {"prob_pred": pytest.approx((0.55 + 0.6 + 0.95 + 0.99) / 4), "prob_true": 0.75, "count": 4,
                     "perfect": pytest.approx((0.55 + 0.6 + 0.95 + 0.99) / 4)}]


def plain_paired_lead(users, labels, a, b, reps, seed, margin):
    """paired_auc_lead's reference: each resample's rows gathered user by user in a Python loop."""
    ids = sorted(set(users.tolist()))
    rows_of = {u: [i for i in range(len(users)) if users[i] == u] for u in ids}
    rng = np.random.default_rng(seed)
    leads = []
    for _ in range(reps):
        rows = [i for k in rng.integers(0, len(ids), len(ids)) for i in rows_of[ids[k]]]
        if len(set(labels[rows].tolist())) == 2:
            leads.append(auc(labels[rows], a[rows]) - auc(labels[rows], b[rows]))
    leads = np.array(leads)
    return {"lead": auc(labels, a) - auc(labels, b), "sd": leads.std(), "low": np.quantile(leads, 0.025),
            "high": np.quantile(leads, 0.975), "at_least_margin": np.mean(leads >= margin), "reps": len(leads)}


@pytest.mark.parametrize("n_users", [3, 40])
def test_paired_auc_lead_matches_a_plain_user_bootstrap(n_users: int) -> None:
    """The vectorised resampling takes the same users' rows as a loop over users; with 3 users some resamples
    hold one class only and are skipped by both."""
    rng = np.random.default_rng(n_users)
    users = rng.permutation(np.repeat(np.arange(n_users) * 7 + 100, rng.integers(1, 9, n_users)))
    labels = np.where(users == 100, 1.0, rng.integers(0, 2, len(users)).astype(float))  # user 100: clicks only
    labels[users == 107] = 0.0
    a, b = rng.random(len(users)) + labels * 0.3, rng.random(len(users))
    got = paired_auc_lead(users, labels, a, b, reps=200, seed=5, margin=0.1)
    want = plain_paired_lead(users, labels, a, b, 200, 5, 0.1)
    assert got == pytest.approx(want, abs=1e-12)
    assert want["reps"] < 200 if n_users == 3 else want["reps"] == 200
    assert got["low"] <= got["lead"] <= got["high"] and got["lead"] > 0


def test_paired_auc_lead_of_a_model_over_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    users, labels, s = rng.integers(0, 30, 300), rng.integers(0, 2, 300).astype(float), rng.random(300)
    got = paired_auc_lead(users, labels, s, s.copy(), reps=50, margin=0.0)
    assert got == {"lead": 0.0, "sd": 0.0, "low": 0.0, "high": 0.0, "at_least_margin": 1.0, "reps": 50}


def test_paired_auc_lead_refuses_unpaired_rows_and_one_class() -> None:
    with pytest.raises(ValueError, match="rows differ: 3, 3, 3, 2"):
        paired_auc_lead(np.arange(3), np.array([0.0, 1.0, 1.0]), np.zeros(3), np.zeros(2))
    with pytest.raises(DataError, match="one class only"):
        paired_auc_lead(np.arange(3), np.ones(3), np.zeros(3), np.zeros(3))
