"""Held-out style checks: challenge-format datasets from several planted exposure models, and the pipeline's
train profiles run on each exactly as a user with challenge files would run them.

    python benchmarks/variants.py make --out /tmp/variants            # write every variant's challenge folder
    python benchmarks/variants.py run --data /tmp/variants            # default train profile on each variant
    python benchmarks/variants.py run --data /tmp/variants --profile din --profile meanpool \\
        --set train.learning_rate=0.001 ...                           # other profiles, params overrides

`make` draws each variant's planted model and exposure log (pipeline/sources/synthetic.py, negatives: exposures), builds
its rows with the pipeline's exposure builder, and writes the WWW2025 MMCTR layout (pipeline/sources/challenge.py
`write_challenge_dataset`): train/valid/test.parquet without timestamps, item_info.parquet whose item_emb_d128 is a
PCA of two noisy "modality" views of each item's latent (as the organisers' PCA of BERT + CLIP), and
item_feature.parquet with those two views as txt_emb_BERT / img_emb_CLIPRN50. Beside the folder it keeps
truth.parquet: the oracle and history-oracle P(click) of every test row (same order), which the challenge files
cannot carry.

`run` runs the build_sequences, fit_pca, train and evaluate stages (the same commands dvc.yaml runs) with the
repository's params.yaml plus `data.source: mmctr`, `data.item_embeddings: challenge_d128`,
`build_sequences.max_len: 50` (the settings of issue 13's held-out check), one profile's overrides and any --set,
and prints test AUC / logloss next to the oracles. A profile is a named set of train overrides (PROFILES); the
default profile is params.yaml as it is.

The variants differ in what shapes the data, not only its size: the showing policy, how much history order matters
(recency weight and window), popularity, click rate, how informative the item embedding is, history length and
split, and, in `multi`, `drift`, `successor` and `activity`, the click model itself (several tastes per user, one
that drifts, an order that is not similarity, or users who click at very different rates, not make_synthetic's;
their history oracle is a plug-in, see taste_history_oracle). Sizes follow
the held-out sets: about 3,000 items and 110-120K train rows (one variant at about 1M). The `h-` variants are
held out from every choice: written after the default was fixed, with shapes no other variant has, and only run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import polars as pl
import yaml

from pipeline.core.config import PLAIN_SWITCHES, MakeSyntheticConfig
from pipeline.core.items import unit_rows
from pipeline.core.metrics import auc
from pipeline.itememb.pca import fit_pca
from pipeline.sequences.build import SPLITS, build_exposure_rows
from pipeline.sources.challenge import write_challenge_dataset
from pipeline.sources.planted import (
    USER_NOISE,
    PlantedModel,
    history_preference,
    oracle_scores,
    recent_latent,
    sample_planted_model,
)
from pipeline.sources.synthetic import (
    ExposureLog,
    _streams,
    exposure_frame,
    held_out_items,
    sample_click_counts,
    sample_timestamps,
    simulate_exposures,
)

ROOT = Path(__file__).resolve().parents[1]
MAX_LEN = 50  # history width written to the split files (the held-out check's build_sequences.max_len)
N_TAGS = 5  # item_tags width


@dataclass(frozen=True)
class Variant:
    """One planted data set: make_synthetic overrides (exposure log), the item-embedding views and the split."""

    name: str
    about: str
    synthetic: dict[str, Any]
    text_noise: float = 0.5  # noise of the "text" view around [topic centroid || latent], relative to its norm
    image_noise: float = 1.0  # same for the "image" view
    topic_share: float = 0.6  # weight of the topic centroid vs the item's own latent in both views
    split: str = "time"  # time (global cut) or leave_last (per user, by request)
    valid_frac: float = 0.1
    test_frac: float = 0.1
    # > 0: not make_synthetic's click model but the taste model (taste_log): each user has 1 to
    # this many separate tastes and likes an item as much as the closest of them.
    interests: int = 0
    # > 0 (with interests 0): the drifting-taste click model, a random step of about this norm every request.
    drift: float = 0.0
    # True: the successor click model, one fixed taste per user and a recency term read through a fixed random
    # rotation of the latent space, so what a click makes likely next is not what resembles it.
    successor: bool = False
    # > 0: the activity click model, one fixed taste per user and each user's own click bias b_u ~ N(0, activity^2)
    # added to the click logit, so some users click far more than others.
    activity: float = 0.0

    def __post_init__(self) -> None:
        models = (self.interests, self.drift, self.successor, self.activity)
        if not (self.interests >= 0 and 0 <= self.drift < math.inf and 0 <= self.activity < math.inf):
            raise ValueError(f"variant {self.name}: interests, drift and activity must be finite and >= 0")
        if sum(map(bool, models)) > 1:
            raise ValueError(f"variant {self.name}: at most one of interests, drift, successor and activity is set")

    @property
    def taste_model(self) -> bool:
        """Whether clicks come from taste_log (interests, drift, successor or activity), not make_synthetic's click
        model."""
        return bool(self.interests or self.drift or self.successor or self.activity)


BASE = {"negatives": "exposures", "n_items": 3000, "n_topics": 20, "latent_dim": 16, "cover_size": 32}
VARIANTS: tuple[Variant, ...] = (
    Variant("stream", "personalised impression stream, recency over the last 3 clicks",
            {**BASE, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "click_bias": -2.5, "seed": 101}),
    Variant("sessions", "order matters: the last click dominates, weak long-term taste, leave-last split",
            {**BASE, "n_users": 4000, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "preference_weight": 1.5, "recency_weight": 4.0, "recency_window": 1, "seed": 102},
            split="leave_last"),
    Variant("popular", "mostly popularity-driven showing and clicking, low click rate, many short users",
            {**BASE, "n_users": 4500, "mean_requests_per_user": 4.0, "max_requests_per_user": 30,
             "popularity_weight": 2.0, "policy_preference_weight": 0.3, "policy_popularity_weight": 1.5,
             "click_bias": -4.0, "seed": 103}),
    Variant("noisy-emb", "item embeddings that barely show the latent: ids must be learned",
            {**BASE, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "click_bias": -2.5, "seed": 104},
            text_noise=2.0, image_noise=3.0, topic_share=0.8),
    Variant("cold", "a fifth of the items are new: shown only in each user's valid and test requests",
            {**BASE, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "click_bias": -2.5, "new_item_share": 0.2, "seed": 106},
            split="leave_last"),
    Variant("cold-dense", "the cold variant with a third of the items, so the old ones have ~3x the clicks",
            {**BASE, "n_items": 1000, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "click_bias": -2.5, "new_item_share": 0.2, "seed": 107},
            split="leave_last"),
    Variant("stream-sharp", "the stream model with a sharper taste: more room below the oracle",
            {**BASE, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "preference_weight": 5.0, "click_bias": -3.0, "seed": 108}),
    Variant("multi", "a click model that is not make_synthetic's: 1-3 separate tastes per user, each item liked as "
            "much as the closest one (made after the default was chosen)",
            {**BASE, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "preference_weight": 4.0, "recency_weight": 1.0, "click_bias": -3.5, "policy_preference_weight": 2.0,
             "seed": 109}, interests=3),
    Variant("drift", "a click model that is not make_synthetic's: each user's taste takes a random step every "
            "request, so older clicks tell less (made after the default was chosen)",
            {**BASE, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "preference_weight": 4.0, "recency_weight": 0.5, "click_bias": -3.0, "policy_preference_weight": 1.5,
             "seed": 110}, drift=0.6),
    Variant("successor", "a click model that is not make_synthetic's: a click makes likely next what a fixed "
            "rotation of its latent points to, not what resembles it (made after the default was chosen)",
            {**BASE, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "preference_weight": 4.0, "recency_weight": 4.0, "recency_window": 1, "click_bias": -3.0,
             "seed": 111}, successor=True),
    Variant("activity", "a click model that is not make_synthetic's: users click at very different rates, each with "
            "its own click bias (made after the default was chosen)",
            {**BASE, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "click_bias": -3.0, "seed": 112}, activity=1.0),
    Variant("activity-ll", "the activity variant with a leave-last split, so every test user is a train user",
            {**BASE, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "click_bias": -3.0, "seed": 112}, split="leave_last", activity=1.0),
    Variant("stream-1m", "the stream variant at about 1M train rows",
            {**BASE, "n_users": 30000, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "click_bias": -2.5, "seed": 105}),
    # Held out: written on 2026-12-05 after the default was fixed, with seeds and shapes (topics, latent width,
    # slate size, recency window) no earlier variant has, and run once per profile. Nothing is chosen on them.
    Variant("h-stream", "held out: the stream model with 40 topics, a 24-d latent, slates of 12 and recency over "
            "the last 5 clicks",
            {**BASE, "n_topics": 40, "latent_dim": 24, "slate_size": 12, "n_users": 3000,
             "mean_requests_per_user": 5.0, "max_requests_per_user": 40, "preference_weight": 4.0,
             "recency_weight": 2.0, "recency_window": 5, "click_bias": -2.8, "seed": 201}),
    Variant("h-sessions", "held out: the last two clicks dominate, 30 topics, slates of 8, leave-last split",
            {**BASE, "n_topics": 30, "slate_size": 8, "n_users": 5600, "mean_requests_per_user": 5.0,
             "max_requests_per_user": 40, "preference_weight": 2.0, "recency_weight": 3.5, "recency_window": 2,
             "click_bias": -2.2, "seed": 202},
            split="leave_last"),
    Variant("h-multi", "held out: the multi-taste click model with up to 2 tastes, a 12-d latent and noisier "
            "image views",
            {**BASE, "latent_dim": 12, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "preference_weight": 3.0, "recency_weight": 1.5, "click_bias": -3.0, "seed": 203},
            image_noise=1.5, interests=2),
    Variant("h-drift", "held out: a sharp taste that drifts slowly (a step of 0.3 every request)",
            {**BASE, "n_users": 3300, "mean_requests_per_user": 5.0, "max_requests_per_user": 40,
             "preference_weight": 5.0, "recency_weight": 1.0, "click_bias": -3.2, "seed": 204},
            drift=0.3),
)

# Named train overrides; "default" is params.yaml unchanged. The baselines switch off the default's additions
# (PLAIN_SWITCHES) and keep its optimisation settings.
_BASELINE = {f"train.{k}": v for k, v in PLAIN_SWITCHES.items()}
# What both of the held-out check's recipes train with, whatever params.yaml adds: Adam 1e-3 over whole epochs, no
# step budget, no weight average, no L2.
_RECIPE = {**_BASELINE, "train.learning_rate": 1e-3, "train.max_steps": 0, "train.ema_decay": 0.0,
           "train.embedding_regularizer": 0.0, "train.net_regularizer": 0.0}
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "din": {"train.model": "din", **_BASELINE},
    "meanpool": {"train.model": "meanpool", **_BASELINE},
    # The held-out check's 40-line mean-pool MLP as issue 13 states its recipe: Adam 1e-3, batch 512, 6 epochs
    # (no step budget, no early stop before them, no weight average, no L2), with the embedding width and dropout
    # the table's earlier runs of it had, so that it stays one fixed recipe when params.yaml's profile moves.
    "meanpool-recipe": {"train.model": "meanpool", **_RECIPE, "train.batch_size": 512, "train.epochs": 6,
                        "train.patience": 6, "train.embedding_dim": 16, "train.net_dropout": 0.1},
    # DIN as a MicroLens MM-CTR challenge DIN config trains it (FuxiCTR: Adam 1e-3, batch 4096, embedding 64, the
    # 128-d frozen embedding through a learnt 128x128 map, DNN [1024, 512, 256], attention [512, 256], no dropout,
    # no L2, up to 100 epochs, patience 2, lr x0.1 on plateau), less its batch norm, which our DIN has not: the
    # held-out check's "FuxiCTR DIN, challenge recipe" in this code path, fixed whatever params.yaml's profile is.
    "din-recipe": {"train.model": "din", **_RECIPE, "train.batch_size": 4096, "train.embedding_dim": 64,
                   "train.mm_dim": 128, "train.dnn_hidden_units": [1024, 512, 256],
                   "train.din_attention_units": [512, 256], "train.net_dropout": 0.0, "train.epochs": 100,
                   "train.patience": 2, "train.lr_decay": 0.1},
    # The 1st-place solution's own configuration (its paper and code; shared/reference/winner-and-data-formats.md):
    # FuxiCTR's training too (raw weights, no average; whole epochs, patience 5; fp32). The README's command for it
    # sets the same train values (tests/test_variants.py).
    "winner": {**_BASELINE, "train.embedding_dim": 64, "train.mm_dim": 0, "train.transformer_layers": 2,
               "train.dim_feedforward": 256, "train.transformer_dropout": 0.2, "train.first_k": 16,
               "train.dnn_hidden_units": [1024, 512, 256], "train.net_dropout": 0.2, "train.learning_rate": 5e-4,
               "train.batch_size": 128, "train.embedding_regularizer": 0.0, "train.net_regularizer": 0.0,
               "train.ema_decay": 0.0, "train.max_steps": 0, "train.epochs": 100, "train.patience": 5,
               "train.amp": False},
}


# --------------------------------------------------------------------------------------------------
# make


def modality_views(model: PlantedModel, centroids: np.ndarray, variant: Variant, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 768) "text" and (N, 1024) "image" vectors of items 1..N: fixed random projections of
    [topic_share * centroid || (1 - topic_share) * latent] plus isotropic noise of the view's relative size."""
    topic = model.item_topic[1:]
    base = np.hstack([variant.topic_share * centroids[topic], (1 - variant.topic_share) * model.item_latent[1:]])
    scale = np.linalg.norm(base, axis=1).mean()
    views = []
    for width, noise in ((768, variant.text_noise), (1024, variant.image_noise)):
        proj = rng.standard_normal((base.shape[1], width)) / math.sqrt(base.shape[1])
        clean = base @ proj
        views.append(clean + rng.standard_normal(clean.shape) * noise * scale / math.sqrt(base.shape[1]))
    return views[0].astype(np.float32), views[1].astype(np.float32)


def item_tags(model: PlantedModel, rng: np.random.Generator) -> np.ndarray:
    """(N+1, N_TAGS) int64 tag ids left-padded with 0 (row 0 zeros): 1-3 tags of the item's topic (3 per topic)
    and sometimes one of 5 generic tags."""
    n = model.n_items
    n_topics = int(model.item_topic.max()) + 1
    tags = np.zeros((n + 1, N_TAGS), dtype=np.int64)
    for i in range(1, n + 1):
        k = int(rng.integers(1, 4))
        own = 1 + 3 * model.item_topic[i] + rng.choice(3, size=k, replace=False)
        extra = [1 + 3 * n_topics + int(rng.integers(5))] if rng.random() < 0.2 else []
        chosen = [*own.tolist(), *extra]
        tags[i, N_TAGS - len(chosen):] = chosen
    return tags


def levels(values: np.ndarray, n_levels: int = 11) -> np.ndarray:
    """(N,) values -> int8 levels 0..n_levels-1 by quantile."""
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return (ranks * n_levels // len(values)).astype(np.int8)


# --------------------------------------------------------------------------------------------------
# Click models that are not make_synthetic's: several tastes per user, a taste that drifts, or an order that is
# not similarity
#
# make_synthetic's user is one fixed preference vector p_u, so <p_u, v_i> is linear in the item latent and a mean of
# the history's items estimates it. Here user u at request r has M unit taste vectors q_urm and likes item i as much
# as the closest: a(u, r, i) = max_m <q_urm, v_i>. `interests` gives each user 1..M fixed tastes (distinct topic
# centroids plus noise); `drift` gives one (M = 1) that takes a random step every request, so older clicks tell
# less about today's taste. Policy and click are otherwise make_synthetic's exposure model with a(u, r, i) in place
# of <p_u, v_i>:
#     policy softmax_i(a_p * a(u, r, i) + a_pop * pop_i), Gumbel top-k of the items not clicked yet;
#     P(click) = sigmoid(bias + b_u + alpha * a(u, r, i) + beta * pop_i + gamma * <T m, v_i>),
# with m the mean v of the last w clicks and T the identity, except in `successor` (one fixed taste, M = 1), where T
# is a fixed random rotation: a click on an item makes likely next the items along T v, not those near v, an order
# that is asymmetric (i -> j does not make j -> i likely) and that no similarity of item embeddings shows. b_u is 0
# except in `activity` (one fixed taste), where each user has its own click bias b_u ~ N(0, s^2): how often a user
# clicks at all, which the challenge's rows show only through how many clicks the history holds.


def sample_interests(centroids: np.ndarray, n_users: int, max_interests: int, rng: np.random.Generator
                     ) -> np.ndarray:
    """(n_users+1, M, d) float64 unit interest vectors, M = max_interests; row 0 (no user) zeros. User u has 1..M
    distinct random topics, each centroid plus USER_NOISE noise; a user with m < M fills its spare slots with its
    first interest, so the max over slots is its max over its m interests."""
    n_topics, d = centroids.shape
    n_own = rng.integers(1, min(max_interests, n_topics) + 1, size=n_users)
    topics = np.stack([rng.permutation(n_topics)[:max_interests] for _ in range(n_users)])  # (U, M)
    topics = np.where(np.arange(max_interests)[None, :] < n_own[:, None], topics, topics[:, :1])
    own = centroids[topics] + rng.standard_normal((n_users, max_interests, d)) * (USER_NOISE / math.sqrt(d))
    own = np.where((np.arange(max_interests) < n_own[:, None])[..., None], own, own[:, :1])
    out = np.zeros((n_users + 1, max_interests, d))
    out[1:] = unit_rows(own.reshape(-1, d), np.float64).reshape(n_users, max_interests, d)
    return out


def drifting_tastes(pref: np.ndarray, n_rounds: int, step: float, rng: np.random.Generator) -> np.ndarray:
    """(U+1, d) starting preferences -> (U+1, n_rounds, 1, d) float64 unit tastes: request 0's is the start, each
    later one the last plus a Gaussian step of norm about `step`, renormalised; row 0 (no user) zeros."""
    d = pref.shape[1]
    walk = np.zeros((len(pref), n_rounds, d))
    walk[:, 0] = pref
    for r in range(1, n_rounds):
        walk[1:, r] = unit_rows(walk[1:, r - 1] + rng.standard_normal((len(pref) - 1, d)) * (step / math.sqrt(d)),
                                np.float64)
    return walk[:, :, None, :]


def taste(interests: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """(B, M, d) interests, (N+1, d) item latents -> (B, N+1) float64 a(u, i) = max_m <q_um, v_i>."""
    return np.einsum("bmd,nd->bmn", interests, latent).max(axis=1)


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """(d, d) float64 orthogonal matrix with determinant +1, drawn uniformly (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def taste_click_probs(model: PlantedModel, affinity: np.ndarray, recent: np.ndarray, items: np.ndarray,
                      turn: np.ndarray | None = None, user_bias: np.ndarray | float = 0.0) -> np.ndarray:
    """(B, K) a(u, i) of the shown items, (B, d) recent mean latents, (B, K) item ids -> (B, K) P(click); `turn`
    (d, d), when given, is T of the section comment (the recency term reads T m); `user_bias` (B,) is each row's
    b_u."""
    recent = recent if turn is None else recent @ turn.T
    logits = (model.click_bias + np.reshape(user_bias, (-1, 1)) + model.preference_weight * affinity
              + model.popularity_weight * model.item_log_pop[items]
              + model.recency_weight * np.einsum("bkd,bd->bk", model.item_latent[items], recent))
    return 1.0 / (1.0 + np.exp(-logits))


def taste_log(model: PlantedModel, tastes: np.ndarray, n_requests: np.ndarray, cfg: MakeSyntheticConfig,
              rng: np.random.Generator, block: int = 1024, turn: np.ndarray | None = None,
              user_bias: np.ndarray | None = None) -> tuple[ExposureLog, np.ndarray]:
    """The taste model's exposure log (section comment) for n_requests[u] requests of user u, with tastes
    (U+1, R >= max requests, M, d) (request r of user u: tastes[u, r]), the recency term's rotation `turn`
    (None: the identity) and the users' click biases `user_bias` (U+1,) (None: 0), in blocks of `block` users
    per round, and the (X,) float64 P(click) of each of its exposures (the Bayes oracle), in the log's order.
    `model` gives the items, weights and click bias; its user_pref is not used."""
    n_items, k, w = model.n_items, cfg.slate_size, model.recency_window
    hist = np.zeros((len(n_requests), int(n_requests.max()) * k), dtype=np.int64)  # clicks in order, 0-padded
    n_done = np.zeros(len(n_requests), dtype=np.int64)
    clicked = np.zeros((len(n_requests), n_items + 1), dtype=bool)
    clicked[:, 0] = True
    parts: list[tuple[np.ndarray, ...]] = []
    for r in range(int(n_requests.max())):
        active = np.flatnonzero(n_requests > r)
        for users in np.array_split(active, max(1, math.ceil(len(active) / block))):
            aff = taste(tastes[users, r], model.item_latent)  # (B, N+1)
            keys = cfg.policy_preference_weight * aff + cfg.policy_popularity_weight * model.item_log_pop
            keys[clicked[users]] = -np.inf
            shown = np.argsort(-(keys + rng.gumbel(size=keys.shape)), axis=1)[:, :k]  # (B, K) in draw order
            offs = n_done[users, None] - w + np.arange(w)
            window = np.where(offs >= 0, hist[users[:, None], np.clip(offs, 0, None)], 0)  # (B, w)
            prob = taste_click_probs(model, np.take_along_axis(aff, shown, 1), recent_latent(model, window), shown,
                                     turn, 0.0 if user_bias is None else user_bias[users])
            click = rng.random(shown.shape) < prob
            # Each user's clicks go after their earlier ones, in slate order.
            slot = n_done[users, None] + np.cumsum(click, axis=1) - 1
            rows = np.broadcast_to(users[:, None], shown.shape)
            hist[rows[click], slot[click]] = shown[click]
            clicked[rows[click], shown[click]] = True
            n_done[users] += click.sum(axis=1)
            parts.append((rows.reshape(-1), np.full(shown.size, r), shown.reshape(-1),
                          click.reshape(-1).astype(np.int8), prob.reshape(-1)))
    user, request, item, click, prob = (np.concatenate(a) for a in zip(*parts, strict=True))
    order = np.lexsort((request, user))
    return ExposureLog(user[order], request[order], item[order], click[order], n_requests), prob[order]


def exposure_probs(impressions: pl.DataFrame, rows: pl.DataFrame) -> np.ndarray:
    """(n,) float64 `prob` of each row's exposure: rows (user_id, event_ts, item_id) matched to impressions (user,
    timestamp, item, prob), where a slate never shows an item twice, so each row has exactly one."""
    key = ["user", "timestamp", "item"]
    found = rows.select(user=pl.col("user_id").cast(pl.Int64), timestamp=pl.col("event_ts").cast(pl.Int64),
                        item=pl.col("item_id").cast(pl.Int64)).join(
        impressions.select(pl.col(key).cast(pl.Int64), "prob"), on=key, how="left", maintain_order="left")
    if found.height != rows.height or found["prob"].null_count():
        raise ValueError("rows do not match the exposure log one to one")
    return found["prob"].to_numpy()


def taste_history_oracle(model: PlantedModel, item_seq: np.ndarray, items: np.ndarray,
                         turn: np.ndarray | None = None) -> np.ndarray:
    """(n, L) histories (0 = padding, latest last), (n,) target items -> (n,) float64 plug-in P(click): the click
    sigmoid with a(u, i) read as <unit mean latent of the history, v_i> (`history_preference`, as the other
    variants' history oracle) and the recency term from the history's last w items (through `turn`, as drawn);
    b_u = 0, since a history does not hold the user's click bias (in `activity` a model that reads it from how
    many clicks the history holds may beat this plug-in).
    One taste per topic of the history, max over them, scored lower (test AUC 0.777 against 0.800 on `multi`):
    clicks that popularity drew make spurious tastes. A plug-in, not the Bayes posterior, so a model may beat it."""
    seq = np.asarray(item_seq, dtype=np.int64)
    affinity = np.einsum("nd,nd->n", history_preference(model, seq), model.item_latent[items])
    windows = seq[:, -model.recency_window:]  # left-padded histories end with their latest clicks
    return taste_click_probs(model, affinity[:, None], recent_latent(model, windows),
                             np.asarray(items, np.int64)[:, None], turn)[:, 0]


@dataclass(frozen=True)
class PlantedLog:
    """A variant's planted model and its exposure log, as make_variant writes them (module docstring).

    centroids: the topic centroids of the item views; new_items (N+1,) bool, the held-out items; impressions
    (user, item Int32, timestamp, click; with a taste model also prob, each exposure's P(click)) and
    pairs (its clicks); item_table (item_id, likes_level, views_level); rows, the labelled rows
    (build_exposure_rows); side, the side stream after the levels (tags, views next); turn, the successor
    model's rotation, and user_bias (U+1,), the activity model's b_u (None for the others)."""

    model: PlantedModel
    centroids: np.ndarray
    new_items: np.ndarray
    impressions: pl.DataFrame
    pairs: pl.DataFrame
    item_table: pl.DataFrame
    rows: Any
    side: np.random.Generator
    turn: np.ndarray | None = None
    user_bias: np.ndarray | None = None


def draw_variant(variant: Variant) -> PlantedLog:
    """Draw the variant's planted model, its exposure log, the items' likes/views levels and its rows; seeded, so
    benchmarks/content_ceiling.py gets the very log that make_variant wrote."""
    cfg = MakeSyntheticConfig(**variant.synthetic)
    rng = _streams(cfg.seed)
    model, centroids = sample_planted_model(cfg, rng["model"])
    n_requests = sample_click_counts(cfg, rng["model"])
    new_items = held_out_items(cfg, rng["new_items"])
    rounds = int(n_requests.max())
    turn = user_bias = None
    if variant.interests:
        interests = sample_interests(centroids, cfg.n_users, variant.interests, rng["model"])
        fixed = np.broadcast_to(interests[:, None], (len(interests), rounds, *interests.shape[1:]))
        log, prob = taste_log(model, fixed, n_requests, cfg, rng["clicks"])
    elif variant.drift:
        log, prob = taste_log(model, drifting_tastes(model.user_pref, rounds, variant.drift, rng["model"]),
                              n_requests, cfg, rng["clicks"])
    elif variant.successor or variant.activity:
        if variant.successor:
            turn = random_rotation(cfg.latent_dim, rng["model"])
        else:
            user_bias = np.concatenate([[0.0], rng["model"].normal(0.0, variant.activity, cfg.n_users)])
        fixed = np.broadcast_to(model.user_pref[:, None, None], (len(model.user_pref), rounds, 1, cfg.latent_dim))
        log, prob = taste_log(model, fixed, n_requests, cfg, rng["clicks"], turn=turn, user_bias=user_bias)
    else:
        log, prob = simulate_exposures(model, n_requests, cfg, rng["clicks"], new_items), None
    impressions = exposure_frame(log, sample_timestamps(n_requests, rng["timestamps"])).with_columns(
        pl.col("user", "item").cast(pl.Int32))
    if prob is not None:
        impressions = impressions.with_columns(prob=pl.Series(prob))
    pairs = impressions.filter(pl.col("click") == 1).select("user", "item", "timestamp")
    n = model.n_items
    side = np.random.default_rng(cfg.seed + 1)
    likes = np.zeros(n + 1, np.int8)
    views = np.zeros(n + 1, np.int8)
    views[1:] = levels(model.item_log_pop[1:] + 0.5 * side.standard_normal(n))
    likes[1:] = levels(model.item_log_pop[1:] + 1.5 * side.standard_normal(n))
    item_table = pl.DataFrame({"item_id": np.arange(n + 1, dtype=np.int32), "likes_level": likes,
                               "views_level": views})
    rows = build_exposure_rows(pairs, impressions, item_table, max_len=MAX_LEN, min_history=1, split=variant.split,
                               valid_frac=variant.valid_frac, test_frac=variant.test_frac)
    return PlantedLog(model, centroids, new_items, impressions, pairs, item_table, rows, side, turn, user_bias)


def make_variant(variant: Variant, out: Path) -> dict[str, Any]:
    """Write variant's challenge folder to out/<name>/data and its truth.parquet to out/<name>; return counts."""
    cfg = MakeSyntheticConfig(**variant.synthetic)
    drawn = draw_variant(variant)
    model, centroids, pairs, side = drawn.model, drawn.centroids, drawn.pairs, drawn.side
    n = model.n_items
    tags = item_tags(model, side)
    splits = {name: drawn.rows.collect(name) for name in SPLITS}
    text, image = modality_views(model, centroids, variant, side)
    emb = np.zeros((n + 1, 128), np.float32)
    emb[1:] = fit_pca(text, image, dim=128, normalize="none", seed=0).transform(text, image)
    folder = out / variant.name
    write_challenge_dataset(folder / "data", splits, item_tags=tags, item_emb=emb,
                            titles=[f"item {i} of topic {t}" for i, t in enumerate(model.item_topic[1:], 1)],
                            text_emb=text, image_emb=image)
    test = splits["test"]
    seq = test["item_seq"].list.to_array(MAX_LEN).to_numpy()
    if variant.taste_model:  # the exposures' own P(click), and the plug-in from the history
        truth = {"oracle": exposure_probs(drawn.impressions, test),
                 "history_oracle": taste_history_oracle(model, seq, test["item_id"].to_numpy(), drawn.turn)}
    else:
        truth = {"oracle": oracle_scores(model, pairs, test, 0),
                 "history_oracle": oracle_scores(model, pairs, test, 0, pref=history_preference(model, seq))}
    pl.DataFrame({"label": test["label"], **truth}).write_parquet(folder / "truth.parquet")
    hist = (splits["train"]["item_seq"].list.eval(pl.element() != 0).list.sum()).to_numpy()
    counts = {"items": n, "users": cfg.n_users, **{f"{s}_rows": splits[s].height for s in SPLITS},
              "ctr": float(drawn.impressions["click"].mean()), "median_history": float(np.median(hist)),
              "max_history": int(hist.max()), "clicks_per_item": pairs.height / n,
              "oracle_auc": auc(test["label"].to_numpy(), truth["oracle"]),
              "history_oracle_auc": auc(test["label"].to_numpy(), truth["history_oracle"])}
    (folder / "about.json").write_text(json.dumps({"variant": asdict(variant), "counts": counts}, indent=1))
    return counts


# --------------------------------------------------------------------------------------------------
# run


def params_for(folder: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The repository's params.yaml with the held-out check's data settings and `overrides` ("section.key")."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="mmctr", raw_dir=str(folder / "data"), item_embeddings="challenge_d128")
    params["build_sequences"]["max_len"] = MAX_LEN
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        if name not in params.get(section, {}) and section != "train":
            raise click.BadParameter(f"{key}: not a key of params.yaml")
        params[section][name] = value
    return params


def run_stages(folder: Path, work: Path, params: dict[str, Any], threads: int) -> dict[str, Any]:
    """build_sequences, fit_pca, train, evaluate on `folder`'s data with `params`, outputs under `work`; returns
    evaluate's and train's metrics and the test predictions."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    raw, seq, p = str(folder / "data"), work / "sequences", ["--params", str(work / "params.yaml")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")

    def stage(name: str, *args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", f"stages.{name}", *args, *p], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            raise click.ClickException(f"{name} failed on {folder.name}:\n{proc.stderr[-2000:]}")
        (work / f"{name}.log").write_text(proc.stderr)

    stage("build_sequences", "--raw-dir", raw, "--out-dir", str(seq), "--items", str(seq / "items.parquet"),
          "--feature-map", str(seq / "feature_map.json"), "--metrics", str(work / "build_sequences.json"))
    stage("fit_pca", "--text", "-", "--image", "-", "--items", str(seq / "items.parquet"), "--raw-dir", raw,
          "--out", str(work / "item_info.parquet"), "--transform", str(work / "pca.npz"),
          "--metrics", str(work / "fit_pca.json"), "--plot", str(work / "pca_plot.json"))
    stage("quantize", "--item-info", str(work / "item_info.parquet"), "--out", str(work / "semantic_ids.parquet"),
          "--metrics", str(work / "quantize.json"))
    stage("train", "--train", str(seq / "train.parquet"), "--valid", str(seq / "valid.parquet"),
          "--item-info", str(work / "item_info.parquet"), "--feature-map", str(seq / "feature_map.json"),
          "--semantic-ids", str(work / "semantic_ids.parquet"),
          "--model", str(work / "model.pt"), "--live-dir", str(work / "live"))
    stage("evaluate", "--model", str(work / "model.pt"), "--test", str(seq / "test.parquet"),
          "--train", str(seq / "train.parquet"), "--raw-dir", raw, "--metrics", str(work / "evaluate.json"),
          "--roc", str(work / "roc.json"),
          "--calibration", str(work / "calibration.json"), "--predictions", str(work / "predictions.parquet"),
          "--submission", str(work / "submission.zip"))
    return {"test": json.loads((work / "evaluate.json").read_text()),
            "train": json.loads((work / "live" / "metrics.json").read_text()),
            "scores": pl.read_parquet(work / "predictions.parquet", glob=False)["score"].to_numpy()}


def parse_sets(sets: tuple[str, ...]) -> dict[str, Any]:
    """`section.key=value` strings (values parsed as YAML) -> {"section.key": value}."""
    out = {}
    for s in sets:
        key, sep, value = s.partition("=")
        if not sep or "." not in key:
            raise click.BadParameter(f"{s!r}: expected section.key=value")
        out[key] = yaml.safe_load(value)
    return out


@click.group()
def main() -> None:
    """Challenge-format variants from planted exposure models, and train profiles run on them."""


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--only", multiple=True, help="variant names (default: all)")
def make(out: Path, only: tuple[str, ...]) -> None:
    """Write each variant's challenge folder and truth."""
    for variant in VARIANTS:
        if only and variant.name not in only:
            continue
        start = time.perf_counter()
        counts = make_variant(variant, out)
        click.echo(f"{variant.name}: {json.dumps(counts)} ({time.perf_counter() - start:.0f} s)")


@main.command()
@click.option("--data", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path,
                                                     resolve_path=True))
@click.option("--profile", "profiles", multiple=True, default=("default",), show_default=True,
              type=click.Choice(list(PROFILES)))
@click.option("--set", "sets", multiple=True, help="extra params override section.key=value (every profile)")
@click.option("--only", multiple=True, help="variant names (default: every folder under --data)")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path, resolve_path=True), default=None,
              help="where stage outputs go (default: <data>/runs)")
@click.option("--tag", default="", help="suffix of the run folders, to keep runs with different --set apart")
@click.option("--threads", default=2, show_default=True)
def run(data: Path, profiles: tuple[str, ...], sets: tuple[str, ...], only: tuple[str, ...], work: Path | None,
        tag: str, threads: int) -> None:
    """Run the profiles on each variant and print the table (test AUC / logloss vs the oracles)."""
    extra = parse_sets(sets)
    folders = sorted(p for p in data.iterdir() if (p / "truth.parquet").is_file() and (not only or p.name in only))
    click.echo("| variant | profile | valid AUC | test AUC | test logloss | history oracle AUC | oracle AUC "
               "| gap to history oracle | epochs | s |")
    click.echo("|---|---|---|---|---|---|---|---|---|---|")
    for folder in folders:
        truth = pl.read_parquet(folder / "truth.parquet", glob=False)
        labels = truth["label"].to_numpy()
        h_auc, o_auc = auc(labels, truth["history_oracle"].to_numpy()), auc(labels, truth["oracle"].to_numpy())
        for profile in profiles:
            start = time.perf_counter()
            out = run_stages(folder, (work or data / "runs") / f"{folder.name}-{profile}{tag}",
                             params_for(folder, {**PROFILES[profile], **extra}), threads)
            if not np.array_equal(out["test"].get("rows"), len(labels)):
                raise click.ClickException(f"{folder.name}: test has {out['test'].get('rows')} rows, truth "
                                           f"{len(labels)}")
            test_auc = out["test"]["auc"]
            click.echo(f"| {folder.name} | {profile}{tag} | {out['train']['valid_auc']:.4f} | {test_auc:.4f} | "
                       f"{out['test']['logloss']:.4f} | {h_auc:.4f} | {o_auc:.4f} | {h_auc - test_auc:+.4f} | "
                       f"{out['train']['epochs_run']} | {time.perf_counter() - start:.0f} |")


if __name__ == "__main__":
    main()
