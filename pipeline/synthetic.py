"""A synthetic MicroLens-like raw dataset drawn from a planted model, and the Bayes oracle of that model.

The planted model (`PlantedModel`) has latent topics. Item i has a topic z_i, a unit latent vector v_i near its
topic's centroid, and a log-popularity pop_i; user u has a unit preference vector p_u mixed from 1-3 topic
centroids. A user's k-th click is drawn, without repeats, from

    P(i | u, history) = softmax_i( alpha * <p_u, v_i> + beta * pop_i + gamma * <mean v of the last w clicks, v_i> )

over the items not clicked yet (item 0 is padding and never clicked; the recency term is 0 for the first click).

With `make_synthetic.negatives: exposures` the log is instead an exposure log, as a recommender's impressions
are: each request of a user, a showing policy draws `slate_size` distinct unclicked items without replacement from
softmax_i(a_p * <p_u, v_i> + a_pop * pop_i) (the policy weights), and the user clicks each shown item
independently with

    P(click | u, i, history) = sigmoid( bias + alpha * <p_u, v_i> + beta * pop_i + gamma * <mean v of the last w
                                        clicks before the request, v_i> ),

so the unclicked exposures are the negatives and P(label = 1) of a row is exactly that sigmoid. Each user's number
of requests is drawn up front (as click counts are in the click log), never from the clicks, so no split or
filter selects on outcomes and the sigmoid stays exact on every split. The weights shape the data: gamma and w
how much the order of the history matters (0 = not at all); users/items, requests and the click bias how many
clicks each item gets and how long histories are.

Titles, tags and covers are driven by the item's topic, views by its popularity, so every modality carries
signal about the latent structure, and `oracle_scores` gives the best achievable P(click) of a labelled row.

`generate` writes the MicroLens raw layout into a directory, file for file:
    pairs.csv              header `user,item,timestamp`; ints, timestamp in Unix ms; sorted by (user, timestamp)
    impressions.csv        (exposures only) header `user,item,timestamp,click`: every exposure, its request's
                           time, click 0/1; sorted by (user, timestamp, slate position); the clicks are pairs.csv
    title_en.csv           no header; `item_id,title` per item in id order; titles may contain commas
    likes_and_views.txt    `item_id<TAB>likes<TAB>views`, no header, id order
    tags.csv               header `item_id,tags`; 1-4 `|`-joined tag names, id order
    covers/<item_id>.jpg   RGB JPEG, (cover_size*4//3) x cover_size (width x height)
    planted.npz            the PlantedModel (`PlantedModel.load`)
Ids are contiguous: items 1..n_items, users 1..n_users. Every draw comes from `cfg.seed`, one independent random
stream per part, and no file holds a clock time, so the same config gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import itertools
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw
from tqdm import tqdm

from pipeline.config import BuildSequencesConfig, MakeSyntheticConfig, require
from pipeline.io import DataError, atomic_dir, atomic_path
from pipeline.sequences import count_before

# Item latent = normalize(centroid + noise) with |noise| about ITEM_NOISE: cos(v_i, c_z) is about 0.9, while two
# random centroids in 16 dimensions have |cos| about 0.25, so topics are clear but items within one still differ.
ITEM_NOISE = 0.5
USER_NOISE = 0.3  # same for users, around their topic mixture
MEAN_LOG_VIEWS = math.log(2000.0)
VIEWS_NOISE = 0.5  # sd of the log-views noise beyond popularity
CLICK_COUNT_SIGMA = 0.8  # sd of the log-normal rate behind each user's extra clicks
START_MS = 1_609_459_200_000  # 2021-01-01 00:00:00 UTC
START_WINDOW_MS = 2 * 365 * 86_400_000  # users start uniformly within two years
MEAN_GAP_MS = 2 * 86_400_000  # mean gap between a user's clicks: two days
CLICK_CHUNK = 1024  # users per probability block: (1024, n_items+1) float64 is 25 MB at 3000 items
ORACLE_CHUNK_CELLS = 4_000_000  # events x (n_items+1) cells per oracle block (32 MB of float64)

_NPZ_ARRAYS = ("item_latent", "item_log_pop", "item_topic", "user_pref")
_NPZ_SCALARS = {"preference_weight": float, "popularity_weight": float, "recency_weight": float,
                "recency_window": int, "click_model": str, "click_bias": float}
CLICK_MODELS = ("softmax", "exposure")  # PlantedModel.click_model: next-click softmax, or per-exposure sigmoid


# --------------------------------------------------------------------------------------------------
# The planted model


@dataclass(frozen=True)
class PlantedModel:
    """The parameters every synthetic click was drawn from (N = n_items, U = n_users, d = latent_dim).

    item_latent (N+1, d) float64, unit rows, row 0 zeros (padding item); item_log_pop (N+1,) float64, row 0 = 0;
    item_topic (N+1,) int64 in 0..n_topics-1, row 0 = -1; user_pref (U+1, d) float64, unit rows, row 0 zeros.
    click_model says which of the module docstring's two click models drew the log.
    """

    item_latent: np.ndarray
    item_log_pop: np.ndarray
    item_topic: np.ndarray
    user_pref: np.ndarray
    preference_weight: float
    popularity_weight: float
    recency_weight: float
    recency_window: int
    click_model: str  # one of CLICK_MODELS (module docstring)
    click_bias: float  # the exposure model's intercept (unused by the softmax model)

    @property
    def n_items(self) -> int:
        """N, the number of real items (ids 1..N)."""
        return self.item_latent.shape[0] - 1

    def save(self, path: str | Path) -> None:
        """Write an npz (no pickles) atomically, byte-identical for identical parameters.

        np.savez stamps each zip member with the current time, so the zip is written here with a fixed date.
        """
        arrays = {name: np.asarray(getattr(self, name)) for name in (*_NPZ_ARRAYS, *_NPZ_SCALARS)}
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)

    @classmethod
    def load(cls, path: str | Path) -> PlantedModel:
        """Read a model written by `save`; a missing, corrupt or incomplete file is a DataError naming it."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in (*_NPZ_ARRAYS, *_NPZ_SCALARS) if k not in npz.files]
                if missing:
                    raise DataError(f"{path}: missing array {missing[0]!r} (has {', '.join(npz.files)})")
                arrays = {k: npz[k] for k in _NPZ_ARRAYS}
                scalars = {k: conv(npz[k]) for k, conv in _NPZ_SCALARS.items()}
        except DataError:
            raise
        except Exception as e:  # zipfile, numpy and OS errors all mean "not a readable npz"
            detail = str(e).splitlines()[0] if str(e) else ""
            raise DataError(f"{path}: not a readable planted-model npz ({type(e).__name__}: {detail})") from None
        if scalars["click_model"] not in CLICK_MODELS:
            raise DataError(f"{path}: click_model must be one of {', '.join(CLICK_MODELS)}, got "
                            f"{scalars['click_model']!r}")
        n_rows, d = arrays["item_latent"].shape if arrays["item_latent"].ndim == 2 else (-1, -1)
        if (arrays["item_log_pop"].shape != (n_rows,) or arrays["item_topic"].shape != (n_rows,)
                or arrays["user_pref"].ndim != 2 or arrays["user_pref"].shape[1] != d):
            raise DataError(f"{path}: inconsistent array shapes "
                            f"{ {k: a.shape for k, a in arrays.items()} }")
        return cls(item_latent=arrays["item_latent"].astype(np.float64),
                   item_log_pop=arrays["item_log_pop"].astype(np.float64),
                   item_topic=arrays["item_topic"].astype(np.int64),
                   user_pref=arrays["user_pref"].astype(np.float64), **scalars)


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian rows whose norm is about `scale` whatever the dimension."""
    return rng.standard_normal(shape) * (scale / math.sqrt(shape[1]))


def sample_item_topics(n_items: int, n_topics: int, rng: np.random.Generator) -> np.ndarray:
    """(n_items,) int64 topic per item (ids 1..n_items in order); every topic has >= 1 item, sizes unequal."""
    shares = rng.dirichlet(np.full(n_topics, 3.0))
    sizes = 1 + rng.multinomial(n_items - n_topics, shares)
    return rng.permutation(np.repeat(np.arange(n_topics, dtype=np.int64), sizes))


def sample_user_pref(centroids: np.ndarray, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """(n_users, d) unit preference vectors: Dirichlet mixtures of 1-3 random topic centroids plus noise."""
    n_topics, d = centroids.shape
    n_mix = rng.integers(1, min(3, n_topics) + 1, size=n_users)
    pref = np.empty((n_users, d))
    for u in range(n_users):
        chosen = rng.choice(n_topics, size=n_mix[u], replace=False)
        pref[u] = rng.dirichlet(np.ones(n_mix[u])) @ centroids[chosen]
    return _normalize_rows(pref + _noise(rng, pref.shape, USER_NOISE))


def sample_planted_model(cfg: MakeSyntheticConfig, rng: np.random.Generator) -> tuple[PlantedModel, np.ndarray]:
    """The planted model for `cfg`, and the (n_topics, latent_dim) unit topic centroids it was built around."""
    d = cfg.latent_dim
    centroids = _normalize_rows(rng.standard_normal((cfg.n_topics, d)))
    topic = sample_item_topics(cfg.n_items, cfg.n_topics, rng)
    latent = _normalize_rows(centroids[topic] + _noise(rng, (cfg.n_items, d), ITEM_NOISE))
    log_pop = rng.standard_normal(cfg.n_items)
    pref = sample_user_pref(centroids, cfg.n_users, rng)
    model = PlantedModel(
        item_latent=np.vstack([np.zeros((1, d)), latent]),
        item_log_pop=np.concatenate([[0.0], log_pop]),
        item_topic=np.concatenate([[-1], topic]).astype(np.int64),
        user_pref=np.vstack([np.zeros((1, d)), pref]),
        preference_weight=cfg.preference_weight, popularity_weight=cfg.popularity_weight,
        recency_weight=cfg.recency_weight, recency_window=cfg.recency_window,
        click_model="exposure" if cfg.negatives == "exposures" else "softmax", click_bias=cfg.click_bias,
    )
    return model, centroids


# --------------------------------------------------------------------------------------------------
# Click probabilities: the one core shared by the generator and the oracle


def _recent_latent(model: PlantedModel, windows: np.ndarray) -> np.ndarray:
    """(B, w) item ids of each user's last clicks, 0 = empty slot -> (B, d) mean latent of the non-empty slots.

    Item 0's latent row is zero, so empty slots add nothing to the sum; a row with no clicks gives zeros.
    """
    counts = np.maximum((windows > 0).sum(axis=1), 1)  # (B,)
    return model.item_latent[windows].sum(axis=1) / counts[:, None]


def _click_probs(model: PlantedModel, pref: np.ndarray, recent: np.ndarray, clicked: np.ndarray) -> np.ndarray:
    """The next-click distribution: (B, d) user preference vectors, (B, d) recent mean latent, (B, N+1) bool
    already-clicked mask (column 0 True) -> (B, N+1) float64 rows summing to 1, exactly 0 where masked."""
    query = model.preference_weight * pref + model.recency_weight * recent  # (B, d)
    logits = query @ model.item_latent.T + model.popularity_weight * model.item_log_pop  # (B, N+1)
    logits[clicked] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits, out=logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs


def _windows_and_mask(model: PlantedModel, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """B histories -> (B, recency_window) last-click ids left-padded with 0, (B, N+1) bool clicked mask."""
    w = model.recency_window
    windows = np.zeros((len(histories), w), dtype=np.int64)
    clicked = np.zeros((len(histories), model.n_items + 1), dtype=bool)
    clicked[:, 0] = True
    for b, hist in enumerate(histories):
        hist = np.asarray(hist, dtype=np.int64)
        tail = hist[-w:]
        windows[b, w - len(tail):] = tail
        clicked[b, hist] = True
    return windows, clicked


def next_click_probs(model: PlantedModel, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
    """(B,) user ids and B arrays of each user's earlier clicks in time order -> (B, n_items+1) float64
    probabilities of the next click; column 0 and already-clicked items are exactly 0; rows sum to 1."""
    users = np.asarray(users, dtype=np.int64)
    if users.shape != (len(histories),):
        raise ValueError(f"users has shape {users.shape} but {len(histories)} histories were given")
    windows, clicked = _windows_and_mask(model, histories)
    return _click_probs(model, model.user_pref[users], _recent_latent(model, windows), clicked)


def oracle_posterior(probs_of_item: np.ndarray, n_prior: np.ndarray, n_items: int, neg_ratio: int) -> np.ndarray:
    """Bayes-optimal P(label=1) for rows built as: each click event gives 1 positive (item ~ P(.|ctx)) and
    neg_ratio negatives drawn independently and uniformly from the items NOT clicked before the event and not
    equal to the positive item. With P = P(item|ctx) and M = n_items - n_prior (items not clicked before):
    posterior = P / (P + neg_ratio * (1 - P) / (M - 1)).

    A row's item j is the positive with probability P_j and each negative with probability
    sum_{i != j} P_i / (M - 1) = (1 - P_j) / (M - 1); the posterior is the positive's share. Needs M >= 2.
    Arrays broadcast; returns float64.
    """
    p = np.asarray(probs_of_item, dtype=np.float64)
    m = n_items - np.asarray(n_prior, dtype=np.int64)
    if np.any(m < 2):
        raise ValueError("oracle_posterior needs at least 2 unclicked items per event (n_items - n_prior >= 2)")
    return p / (p + neg_ratio * (1.0 - p) / (m - 1))


def history_preference(model: PlantedModel, item_seq: np.ndarray) -> np.ndarray:
    """(n, L) item histories (0 = padding) -> (n, d) float64 unit mean of their items' planted latents (zeros for
    an empty history): the user's preference as far as a history of that length reveals it."""
    seq = np.asarray(item_seq, dtype=np.int64)
    mean = model.item_latent[seq].sum(axis=1)  # item 0's latent is zero
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return np.divide(mean, norm, out=np.zeros_like(mean), where=norm > 0)


def oracle_mismatch(click_model: str, sequences: BuildSequencesConfig) -> str | None:
    """Why `oracle_scores` is not exact for rows built with `sequences` from a log of `click_model`, or None
    when it is: the softmax posterior needs non-clicks drawn uniformly from the items not clicked before the
    event, the exposure model's click probability needs the exposures themselves as rows."""
    if click_model == "exposure":
        return None if sequences.negatives == "exposures" else (
            "the log is an exposure log; the oracle needs build_sequences.negatives: exposures")
    if sequences.negatives != "sampled":
        return "the log has no exposures (make_synthetic.negatives: sampled); use build_sequences.negatives: sampled"
    if sequences.neg_sampling != "uniform" or sequences.neg_exclude != "before":
        return "it is exact only for build_sequences.neg_sampling uniform, neg_exclude before"
    return None


def _windows_before(pair_item: np.ndarray, start: np.ndarray, n_prior: np.ndarray, w: int) -> np.ndarray:
    """(E, w) int64 ids of the last w clicks before each event, left-padded with 0: slot j holds click
    (n_prior - w + j) of the event's user, whose clicks start at index `start` of `pair_item`."""
    offs = n_prior[:, None] - w + np.arange(w)  # (E, w)
    return np.where(offs >= 0, pair_item[np.clip(start[:, None] + offs, 0, None)], 0)


def exposure_click_probs(model: PlantedModel, pref: np.ndarray, recent: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The exposure model's P(click) (module docstring): (B, d) preferences, (B, d) recent mean latents, (B, K)
    shown item ids -> (B, K) float64."""
    latent = model.item_latent[items]  # (B, K, d)
    logits = (model.click_bias + model.popularity_weight * model.item_log_pop[items]
              + np.einsum("bkd,bd->bk", latent, model.preference_weight * pref + model.recency_weight * recent))
    return 1.0 / (1.0 + np.exp(-logits))


def oracle_scores(model: PlantedModel, pairs: pl.DataFrame, rows: pl.DataFrame, neg_ratio: int,
                  pref: np.ndarray | None = None) -> np.ndarray:
    """pairs: the raw clicks (user, item, timestamp: Int64 columns); rows: (user_id, event_ts, item_id) for labelled
    rows (event_ts = the timestamp of the click event, or of the request, the row belongs to). Returns (n_rows,)
    float64 Bayes-optimal P(label=1) using each row's FULL prior click history (clicks of that user with timestamp
    < event_ts, ties in file order).

    For the softmax click model the rows are a click and `neg_ratio` uniformly sampled non-clicks per event
    (`oracle_posterior`); for the exposure model they are exposures and the score is the click sigmoid itself
    (neg_ratio is unused).

    `pref` (n_rows, d), when given, replaces the planted user preference of each row (rows of one event must
    agree; the first is used), e.g. `history_preference` of what a model sees: the score of a model that knows
    every item's planted parameters but, like any model, not the user's hidden preference vector.

    Softmax rows are grouped into events (user_id, event_ts); one next-click distribution is computed per event,
    in blocks of events so memory stays at about ORACLE_CHUNK_CELLS floats.
    """
    pairs = pairs.select(pl.col("user", "item", "timestamp").cast(pl.Int64)).sort("user", "timestamp",
                                                                                   maintain_order=True)
    pair_user, pair_item, pair_ts = (pairs[c].to_numpy() for c in ("user", "item", "timestamp"))
    rows = rows.select(pl.col("user_id", "event_ts", "item_id").cast(pl.Int64)).with_row_index("_row")
    if model.click_model == "exposure":
        user, ts, item = (rows[c].to_numpy() for c in ("user_id", "event_ts", "item_id"))
        n_prior = count_before(pair_user, pair_ts, user, ts)
        windows = _windows_before(pair_item, np.searchsorted(pair_user, user, side="left"), n_prior,
                                  model.recency_window)
        row_pref = model.user_pref[user] if pref is None else np.asarray(pref, dtype=np.float64)
        return exposure_click_probs(model, row_pref, _recent_latent(model, windows), item[:, None])[:, 0]
    events = rows.select("user_id", "event_ts").unique().sort("user_id", "event_ts").with_row_index("_event")
    rows = rows.join(events, on=["user_id", "event_ts"], how="left").sort("_row")
    ev_user, ev_ts = events["user_id"].to_numpy(), events["event_ts"].to_numpy()
    row_event, row_item = rows["_event"].to_numpy().astype(np.int64), rows["item_id"].to_numpy()

    n_prior = count_before(pair_user, pair_ts, ev_user, ev_ts)  # (E,)
    if pref is None:
        ev_pref = model.user_pref[ev_user]  # (E, d)
    else:
        first_row = np.full(len(ev_user), -1, dtype=np.int64)
        first_row[row_event[::-1]] = np.arange(len(row_event))[::-1]  # the first row of each event
        ev_pref = np.asarray(pref, dtype=np.float64)[first_row]
    start = np.searchsorted(pair_user, ev_user, side="left")  # (E,) first click of each event's user
    n_items, w = model.n_items, model.recency_window
    prob_of_row = np.zeros(len(row_item))
    chunk = max(1, ORACLE_CHUNK_CELLS // (n_items + 1))
    row_order = np.argsort(row_event, kind="stable")
    row_bounds = np.searchsorted(row_event[row_order], np.arange(0, len(ev_user) + chunk, chunk))
    for c, lo in enumerate(range(0, len(ev_user), chunk)):
        hi = min(lo + chunk, len(ev_user))
        e_start, e_prior = start[lo:hi], n_prior[lo:hi]
        windows = _windows_before(pair_item, e_start, e_prior, w)
        clicked = np.zeros((hi - lo, n_items + 1), dtype=bool)
        clicked[:, 0] = True
        # All prior clicks of each event, flattened: event-local row k repeated n_prior[k] times.
        ev_rep = np.repeat(np.arange(hi - lo), e_prior)
        within = np.arange(len(ev_rep)) - np.repeat(np.cumsum(e_prior) - e_prior, e_prior)
        clicked[ev_rep, pair_item[np.repeat(e_start, e_prior) + within]] = True
        probs = _click_probs(model, ev_pref[lo:hi], _recent_latent(model, windows), clicked)  # (E_c, N+1)
        sel = row_order[row_bounds[c]:row_bounds[c + 1]]
        prob_of_row[sel] = probs[row_event[sel] - lo, row_item[sel]]
    return oracle_posterior(prob_of_row, n_prior[row_event], n_items, neg_ratio)


# --------------------------------------------------------------------------------------------------
# Clicks and timestamps


def sample_click_counts(cfg: MakeSyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """(n_users+1,) int64 clicks per user (row 0 = 0): min + Poisson(rate), the rate log-normal with mean
    (mean_clicks_per_user - min), clipped to [min, max]; the total is about n_users * mean_clicks_per_user.
    With negatives: exposures, the same law gives requests per user (mean/max_requests_per_user, min 1)."""
    if cfg.negatives == "exposures":
        low, mean, high = 1, cfg.mean_requests_per_user, cfg.max_requests_per_user
    else:
        low, mean, high = cfg.min_clicks_per_user, cfg.mean_clicks_per_user, cfg.max_clicks_per_user
    rate = (mean - low) * rng.lognormal(-CLICK_COUNT_SIGMA**2 / 2, CLICK_COUNT_SIGMA, size=cfg.n_users)
    counts = np.clip(low + rng.poisson(rate), low, high)
    return np.concatenate([[0], counts]).astype(np.int64)


def _sample_from_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column index per row of (B, C) probabilities by inverse CDF; zero-probability columns never come out
    (the CDF is flat there, so the first CDF value above the target is always a positive-probability column)."""
    cdf = np.cumsum(probs, axis=1)
    target = rng.random(len(probs)) * cdf[:, -1]  # < cdf[:, -1], so some column always exceeds it
    return (cdf <= target[:, None]).sum(axis=1)


def simulate_clicks(model: PlantedModel, n_clicks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n_users+1,) clicks per user -> (n_users+1, max(n_clicks)) int64 click histories in time order
    (row u holds user u's n_clicks[u] items, then zeros).

    Step k draws the k-th click of every user with more than k clicks from `_click_probs`, the same distribution
    `next_click_probs` returns, in blocks of CLICK_CHUNK users.
    """
    n_users, max_clicks, w = len(n_clicks) - 1, int(n_clicks.max()), model.recency_window
    hist = np.zeros((n_users + 1, max_clicks), dtype=np.int64)
    clicked = np.zeros((n_users + 1, model.n_items + 1), dtype=bool)
    clicked[:, 0] = True
    with tqdm(total=int(n_clicks.sum()), desc="clicks", unit="click") as bar:
        for k in range(max_clicks):
            active = np.flatnonzero(n_clicks > k)
            for lo in range(0, len(active), CLICK_CHUNK):
                users = active[lo:lo + CLICK_CHUNK]
                recent = _recent_latent(model, hist[users, max(0, k - w):k])  # (B, d)
                items = _sample_from_rows(_click_probs(model, model.user_pref[users], recent, clicked[users]), rng)
                hist[users, k] = items
                clicked[users, items] = True
            bar.update(len(active))
    return hist


@dataclass(frozen=True)
class ExposureLog:
    """Every exposure of an exposure-model simulation, X of them, ordered by (user, request, slate position):
    user, request (the user's 0-based request number), item (X,) int64; click (X,) int8 (1 = clicked);
    n_requests (U+1,) int64 requests per user (row 0 = 0)."""

    user: np.ndarray
    request: np.ndarray
    item: np.ndarray
    click: np.ndarray
    n_requests: np.ndarray


def simulate_exposures(model: PlantedModel, n_requests: np.ndarray, cfg: MakeSyntheticConfig,
                       rng: np.random.Generator) -> ExposureLog:
    """n_requests[u] requests of every user u (module docstring: the policy shows `cfg.slate_size` unclicked
    items, each clicked with `exposure_click_probs`). Clicks of one request share its history (the clicks of the
    user's earlier requests).

    Round r makes request r of every user with more than r requests, in blocks of CLICK_CHUNK users; the slate is
    a Gumbel top-k draw (sampling without replacement from the policy's softmax), kept in draw order.
    """
    n_items, k, w = model.n_items, cfg.slate_size, model.recency_window
    policy_base = cfg.policy_popularity_weight * model.item_log_pop  # (N+1,)
    hist = np.zeros((len(n_requests), int(n_requests.max()) * k), dtype=np.int64)  # clicks in order, 0-padded
    n_done = np.zeros(len(n_requests), dtype=np.int64)  # clicks so far
    clicked = np.zeros((len(n_requests), n_items + 1), dtype=bool)
    clicked[:, 0] = True
    parts: list[tuple[np.ndarray, ...]] = []
    with tqdm(total=int(n_requests.sum()), desc="requests", unit="request") as bar:
        for r in range(int(n_requests.max())):
            active = np.flatnonzero(n_requests > r)
            for lo in range(0, len(active), CLICK_CHUNK):
                users = active[lo:lo + CLICK_CHUNK]  # (B,)
                pref = model.user_pref[users]  # (B, d)
                offs = n_done[users, None] - w + np.arange(w)  # (B, w)
                window = np.where(offs >= 0, hist[users[:, None], np.clip(offs, 0, None)], 0)
                policy = cfg.policy_preference_weight * pref @ model.item_latent.T + policy_base  # (B, N+1)
                policy[clicked[users]] = -np.inf
                keys = policy + rng.gumbel(size=policy.shape)
                top = np.argpartition(-keys, k - 1, axis=1)[:, :k]  # (B, K), unordered
                shown = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)
                click = rng.random(shown.shape) < exposure_click_probs(model, pref, _recent_latent(model, window),
                                                                       shown)  # (B, K)
                # Append each user's clicks in slate order after their earlier ones.
                slot = n_done[users, None] + np.cumsum(click, axis=1) - 1  # (B, K)
                rows = np.broadcast_to(users[:, None], shown.shape)
                hist[rows[click], slot[click]] = shown[click]
                clicked[rows[click], shown[click]] = True
                n_done[users] += click.sum(axis=1)
                parts.append((rows.reshape(-1), np.full(shown.size, r), shown.reshape(-1),
                              click.reshape(-1).astype(np.int8)))
            bar.update(len(active))
    user, request, item, click = (np.concatenate(a) for a in zip(*parts, strict=True))
    order = np.lexsort((request, user))  # stable: slate order kept within a request
    return ExposureLog(user[order], request[order], item[order], click[order], n_requests)


def sample_timestamps(n_clicks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n_users+1,) clicks (or requests) per user -> (n_users+1, max) int64 Unix-ms times, strictly increasing
    along each row's first n_clicks[u] entries: a uniform start in two years from 2021-01-01, then exponential gaps
    (>= 1 ms)."""
    start = START_MS + rng.integers(0, START_WINDOW_MS, size=len(n_clicks))
    gaps = np.floor(rng.exponential(MEAN_GAP_MS, size=(len(n_clicks), int(n_clicks.max())))).astype(np.int64) + 1
    gaps[:, 0] = 0
    return start[:, None] + np.cumsum(gaps, axis=1)


# --------------------------------------------------------------------------------------------------
# Text: themes, titles, tags

# Each theme: (title words, tag names). Real English words, since a pretrained sentence encoder embeds the titles.
THEMES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("recipe", "noodles", "spicy", "kitchen", "dumplings", "soup", "chef", "homemade", "delicious", "fried",
      "rice", "baking", "cake", "dinner", "sauce", "garlic"),
     ("food", "recipe", "cooking", "homemade", "chinese_food", "baking")),
    (("cat", "puppy", "kitten", "dog", "cute", "paws", "fluffy", "meow", "bark", "pet", "hamster", "adopted",
      "sleepy", "kitty", "furry"),
     ("pets", "cats", "dogs", "cute_animals", "puppy", "kitten")),
    (("gameplay", "boss", "level", "minecraft", "controller", "speedrun", "console", "multiplayer", "quest",
      "ranked", "victory", "gamer", "pixel", "arcade", "loot"),
     ("gaming", "games", "minecraft", "esports", "gameplay", "speedrun")),
    (("trip", "beach", "mountains", "hotel", "flight", "island", "backpacking", "sunset", "passport", "tourist",
      "journey", "hiking", "village", "explore", "destination"),
     ("travel", "vacation", "adventure", "beach", "wanderlust", "hiking")),
    (("workout", "gym", "squats", "abs", "cardio", "muscle", "training", "pushups", "stretching", "sweat",
      "protein", "reps", "treadmill", "strength", "yoga"),
     ("fitness", "workout", "gym", "health", "bodybuilding", "yoga")),
    (("lipstick", "foundation", "eyeliner", "makeup", "tutorial", "skincare", "blush", "glowy", "mascara",
      "contour", "beauty", "palette", "brows", "serum", "cosmetics"),
     ("makeup", "beauty", "skincare", "cosmetics", "tutorial", "glam")),
    (("song", "guitar", "piano", "cover", "melody", "concert", "singing", "drums", "lyrics", "band", "acoustic",
      "rhythm", "karaoke", "album", "violin"),
     ("music", "singing", "guitar", "piano", "cover_song", "live_music")),
    (("goal", "soccer", "striker", "penalty", "match", "stadium", "dribble", "league", "keeper", "freekick",
      "tackle", "champions", "referee", "midfielder", "fans"),
     ("football", "soccer", "goals", "premier_league", "sports", "highlights")),
    (("engine", "drift", "supercar", "racing", "turbo", "horsepower", "garage", "sedan", "exhaust", "wheels",
      "highway", "roadtrip", "motor", "tuning", "electric"),
     ("cars", "racing", "supercars", "automotive", "drift", "car_review")),
    (("choreography", "dancing", "hiphop", "moves", "ballet", "routine", "dancer", "steps", "breakdance",
      "groove", "shuffle", "salsa", "spin", "freestyle", "rehearsal"),
     ("dance", "choreography", "dancing", "hiphop", "ballet", "dance_challenge")),
    (("experiment", "chemistry", "physics", "rocket", "telescope", "planets", "atoms", "reaction", "laboratory",
      "microscope", "galaxy", "molecules", "scientist", "theory", "astronomy"),
     ("science", "experiment", "space", "physics", "chemistry", "education")),
    (("prank", "funny", "joke", "laugh", "improv", "hilarious", "parody", "standup", "skit", "bloopers", "meme",
      "awkward", "roast", "giggles", "comedian"),
     ("comedy", "prank", "memes", "standup", "jokes", "parody")),
    (("outfit", "dress", "sneakers", "streetwear", "jacket", "style", "haul", "jeans", "runway", "lookbook",
      "wardrobe", "designer", "boots", "thrift", "accessories"),
     ("fashion", "outfits", "style", "streetwear", "haul", "ootd")),
    (("plants", "garden", "flowers", "seeds", "soil", "tomatoes", "roses", "watering", "harvest", "greenhouse",
      "cactus", "succulents", "compost", "blossom", "orchard"),
     ("gardening", "plants", "garden", "flowers", "houseplants", "green_thumb")),
    (("painting", "drawing", "sketch", "watercolor", "canvas", "portrait", "brush", "acrylic", "illustration",
      "sculpture", "mural", "doodle", "artist", "gallery", "charcoal"),
     ("art", "painting", "drawing", "illustration", "watercolor", "artist")),
    (("smartphone", "laptop", "unboxing", "gadget", "review", "keyboard", "headphones", "camera", "processor",
      "battery", "charger", "tablet", "smartwatch", "wireless", "upgrade"),
     ("tech", "gadgets", "unboxing", "smartphone", "tech_review", "electronics")),
    (("dunk", "basketball", "hoops", "nba", "rebound", "layup", "court", "crossover", "buzzer", "playoffs",
      "slam", "assist", "jumpshot", "dribbling", "rookie"),
     ("basketball", "nba", "hoops", "dunks", "sports", "ballislife")),
    (("baby", "toddler", "newborn", "diaper", "crawling", "giggle", "nursery", "bottle", "lullaby", "stroller",
      "infant", "bedtime", "pacifier", "mommy", "cradle"),
     ("baby", "parenting", "toddler", "family", "newborn", "mom_life")),
    (("ancient", "empire", "castle", "pharaoh", "medieval", "knights", "pyramids", "dynasty", "emperor", "ruins",
      "kingdom", "battle", "archaeology", "samurai", "vikings"),
     ("history", "ancient", "medieval", "documentary", "archaeology", "empires")),
    (("wildlife", "forest", "lion", "elephant", "ocean", "whales", "jungle", "eagle", "waterfall", "safari",
      "wolves", "birds", "coral", "rainforest", "tiger"),
     ("nature", "wildlife", "animals", "ocean", "safari", "planet_earth")),
    (("crafts", "handmade", "woodworking", "tools", "glue", "repair", "build", "furniture", "sewing", "knitting",
      "upcycle", "hammer", "drill", "workshop", "carpentry"),
     ("diy", "crafts", "woodworking", "handmade", "home_improvement", "sewing")),
    (("anime", "manga", "cosplay", "ninja", "otaku", "episode", "kawaii", "character", "sword", "shonen",
      "villain", "figure", "opening", "naruto", "ghibli"),
     ("anime", "manga", "cosplay", "otaku", "japanese_animation", "weeb")),
    (("stocks", "investing", "money", "crypto", "budget", "savings", "bitcoin", "trading", "wealth", "income",
      "economy", "dividends", "market", "bank", "salary"),
     ("finance", "investing", "money", "crypto", "stocks", "personal_finance")),
    (("skateboard", "kickflip", "ramp", "skatepark", "ollie", "grind", "tricks", "helmet", "bmx", "bike",
      "cycling", "wheelie", "trail", "downhill", "scooter"),
     ("skateboarding", "bmx", "cycling", "extreme_sports", "tricks", "skatepark")),
    (("fishing", "lake", "bait", "trout", "boat", "catch", "river", "rod", "salmon", "reel", "angler", "pond",
      "bass", "hook", "fisherman"),
     ("fishing", "outdoors", "bass_fishing", "fly_fishing", "angling", "catch_and_release")),
    (("ghost", "haunted", "scary", "creepy", "horror", "midnight", "abandoned", "paranormal", "zombie", "monster",
      "nightmare", "spooky", "cemetery", "shadow", "legend"),
     ("horror", "scary", "paranormal", "ghost_stories", "haunted", "creepy")),
    (("exam", "study", "notes", "homework", "library", "lecture", "university", "math", "essay", "vocabulary",
      "classroom", "teacher", "grades", "revision", "textbook"),
     ("study", "education", "studytok", "students", "exam_prep", "school")),
)
# When topics outnumber themes, topic t reuses theme t % len(THEMES) with its own pair of qualifier words (the
# (t - len(THEMES))-th pair of QUALIFIERS), used in every title and as tags, so reused themes stay distinguishable.
QUALIFIERS = (
    "winter", "summer", "beginner", "extreme", "retro", "cheap", "kids", "luxury", "vintage", "tiny", "giant",
    "japanese", "korean", "french", "italian", "mexican", "indian", "classic", "modern", "urban", "rural", "epic",
    "relaxing", "rainy", "golden", "arctic", "desert", "tropical", "royal", "cozy", "neon", "underwater", "robot",
    "futuristic", "snowy", "autumn", "spring", "midsummer", "weekend", "hidden",
)
MAX_TOPICS = len(THEMES) + math.comb(len(QUALIFIERS), 2)
FILLER = ("my", "best", "new", "today", "vlog", "the", "with", "this", "first", "day", "ever", "amazing", "wow",
          "life", "challenge", "how", "to", "try", "part", "top", "2", "3", "10", "100", "2022", "2023", "official",
          "full", "video", "episode", "you", "must", "watch", "so", "good")
GENERIC_TAGS = ("funny", "daily", "trending", "vlog", "fyp", "viral", "life")
P_THEME_WORD, P_FILLER_WORD, P_NOISE_WORD = 0.65, 0.27, 0.08  # noise: a word of any theme
P_COMMA = 0.1
P_GENERIC_TAG = 0.15


@dataclass(frozen=True)
class TopicText:
    """A topic's vocabulary: title words (Zipf-weighted by position), qualifiers in every title, tag names."""

    words: tuple[str, ...]
    qualifiers: tuple[str, ...]
    tags: tuple[str, ...]


def topic_texts(n_topics: int, rng: np.random.Generator) -> list[TopicText]:
    """One TopicText per topic (n_topics <= MAX_TOPICS); topics past len(THEMES) reuse a theme with a distinct
    pair of qualifiers each."""
    pairs = itertools.islice(itertools.combinations(QUALIFIERS, 2), max(0, n_topics - len(THEMES)))
    qualifier_pairs = [()] * min(n_topics, len(THEMES)) + list(pairs)
    if len(qualifier_pairs) < n_topics:
        raise ValueError(f"n_topics={n_topics} exceeds the {MAX_TOPICS} distinguishable topics")
    out = []
    for t, qualifiers in enumerate(qualifier_pairs):
        words, tags = THEMES[t % len(THEMES)]
        words = tuple(rng.permutation(words))  # per-topic word frequencies (Zipf over this order)
        topic_tags = tuple(rng.choice(tags, size=rng.integers(3, 7), replace=False)) + qualifiers
        out.append(TopicText(words=words, qualifiers=qualifiers, tags=topic_tags))
    return out


def make_title(text: TopicText, all_words: tuple[str, ...], rng: np.random.Generator) -> str:
    """A 4-10 word title: >= 2 words of the topic's theme, filler, the odd word of another theme; 10% hold a
    comma. Never a newline or double quote."""
    n = int(rng.integers(4, 11)) - len(text.qualifiers)
    n_theme, n_filler, n_noise = (int(c) for c in rng.multinomial(n - 2, [P_THEME_WORD, P_FILLER_WORD, P_NOISE_WORD])
                                  + (2, 0, 0))
    zipf = 1.0 / np.arange(1, len(text.words) + 1) ** 0.7
    # Without replacement within a kind, so a title rarely repeats a word.
    words = ([text.words[j] for j in rng.choice(len(text.words), size=n_theme, replace=False, p=zipf / zipf.sum())]
             + [FILLER[j] for j in rng.choice(len(FILLER), size=n_filler, replace=False)]
             + [all_words[j] for j in rng.choice(len(all_words), size=n_noise, replace=False)])
    words = [words[j] for j in rng.permutation(len(words))]
    at = int(rng.integers(len(words) + 1))
    words[at:at] = text.qualifiers
    if rng.random() < P_COMMA:
        cut = int(rng.integers(1, len(words)))
        return " ".join(words[:cut]) + ", " + " ".join(words[cut:])
    return " ".join(words)


def make_titles(item_topic: np.ndarray, texts: list[TopicText], rng: np.random.Generator) -> list[str]:
    """(N,) topics of items 1..N -> their N titles."""
    all_words = tuple(w for words, _tags in THEMES for w in words)
    return [make_title(texts[t], all_words, rng) for t in item_topic]


def make_tags(item_topic: np.ndarray, texts: list[TopicText], rng: np.random.Generator) -> list[list[str]]:
    """(N,) topics -> N lists of 1-4 distinct tag names, each mostly from the topic, else generic."""
    out = []
    for t in item_topic:
        k = int(rng.integers(1, 5))
        tags = texts[t].tags
        n_topic = min(int(rng.binomial(k, 1 - P_GENERIC_TAG)), len(tags))
        chosen = [tags[j] for j in rng.choice(len(tags), size=n_topic, replace=False)]
        chosen += [GENERIC_TAGS[j] for j in rng.choice(len(GENERIC_TAGS), size=k - n_topic, replace=False)]
        out.append(chosen)
    return out


def make_likes_views(model: PlantedModel, n_topics: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 likes and views of items 1..N: log views = MEAN_LOG_VIEWS + pop + noise, likes ~ Binomial(views,
    a per-topic like rate)."""
    like_rate = rng.uniform(0.02, 0.15, size=n_topics)
    log_views = MEAN_LOG_VIEWS + model.item_log_pop[1:] + VIEWS_NOISE * rng.standard_normal(model.n_items)
    views = np.round(np.exp(log_views)).astype(np.int64)
    likes = rng.binomial(views, like_rate[model.item_topic[1:]]).astype(np.int64)
    return likes, views


# --------------------------------------------------------------------------------------------------
# Covers

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
TEXTURES = ("stripes", "dots", "checker", "gradient", "noise", "plain")
PIXEL_NOISE = 6.0  # sd of the per-pixel noise, in 0..255 units


@dataclass(frozen=True)
class TopicStyle:
    """A topic's cover look: background HSV, shape colour HSV, shape kind, texture kind, texture period scale."""

    background: tuple[float, float, float]
    foreground: tuple[float, float, float]
    shape: str
    texture: str
    period: float


def topic_styles(n_topics: int, rng: np.random.Generator) -> list[TopicStyle]:
    """One style per topic. Hues step by the golden ratio so any number of topics spreads around the wheel;
    shapes and textures cycle with coprime lengths (8, 6), giving 24 distinct combinations."""
    offset = rng.random()
    out = []
    for t in range(n_topics):
        hue = (offset + t * 0.6180339887) % 1.0
        val = rng.uniform(0.45, 0.95)
        out.append(TopicStyle(
            background=(hue, rng.uniform(0.45, 0.95), val),
            foreground=((hue + 0.5) % 1.0, rng.uniform(0.3, 0.9), min(1.0, max(0.25, 1.25 - val))),
            shape=SHAPES[t % len(SHAPES)], texture=TEXTURES[t % len(TEXTURES)], period=rng.uniform(0.08, 0.16)))
    return out


def _rgb(hsv: tuple[float, float, float]) -> np.ndarray:
    """(3,) float RGB in 0..255; hue wraps, saturation and value are clipped to [0, 1]."""
    h, s, v = hsv
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))) * 255.0


def _texture(kind: str, base: np.ndarray, yy: np.ndarray, xx: np.ndarray, period: float,
             rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float background with texture `kind` applied; yy, xx (H, W) pixel coordinates; period in px."""
    phase = rng.uniform(0, period)
    if kind == "stripes":
        return base * (1 - 0.35 * (((xx + yy + phase) // (period / 2)) % 2))[..., None]
    if kind == "dots":
        dy, dx = (yy + phase) % period - period / 2, (xx + phase) % period - period / 2
        return base + 90.0 * (dy**2 + dx**2 < (period / 4) ** 2)[..., None]
    if kind == "checker":
        return base * (1 - 0.3 * (((xx + phase) // period + (yy + phase) // period) % 2))[..., None]
    if kind == "gradient":
        return base * (0.45 + 0.65 * xx / xx.max())[..., None]
    if kind == "noise":  # coarse blotches: an 8x6 random grid blown up to the cover
        h, w = yy.shape
        blotch = rng.uniform(-50, 50, size=(6, 8))
        return base + np.kron(blotch, np.ones((-(-h // 6), -(-w // 8))))[:h, :w, None]
    if kind == "plain":
        return base
    raise ValueError(f"unknown texture {kind!r} (known: {', '.join(TEXTURES)})")


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None) -> list[tuple]:
    """Vertices of a regular n-gon (or an n-pointed star when `inner` radius is given) around (cx, cy)."""
    radii = [r, inner] * n if inner is not None else [r] * n
    k = len(radii)
    return [(cx + rad * math.cos(rot + 2 * math.pi * j / k), cy + rad * math.sin(rot + 2 * math.pi * j / k))
            for j, rad in enumerate(radii)]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, rot: float,
                fill: tuple[int, int, int]) -> None:
    """One `kind` shape of radius r (px) centred at (cx, cy), rotated by `rot` radians where that shows."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rot), fill=fill)
    elif kind == "star":
        draw.polygon(_polygon(cx, cy, r, 5, rot, inner=r * 0.45), fill=fill)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif kind == "cross":
        t = r / 3
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    elif kind == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0.0), fill=fill)
    elif kind == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, rot), fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r} (known: {', '.join(SHAPES)})")


def draw_cover(style: TopicStyle, latent_offset: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """An RGB cover, (size*4//3) x size: the topic's background with per-item jitter, its texture, 2-5 of its
    shapes at random positions and sizes, then pixel noise. `latent_offset` (>= 2,) = the item's latent minus
    its topic centroid; its first two coordinates nudge hue and brightness, so covers carry a little item signal.
    """
    h, w = size, size * 4 // 3
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    bh, bs, bv = style.background
    bg = _rgb((bh + 0.02 * rng.standard_normal() + 0.1 * latent_offset[0], bs + 0.05 * rng.standard_normal(),
               bv + 0.05 * rng.standard_normal() + 0.1 * latent_offset[1]))
    pixels = _texture(style.texture, np.broadcast_to(bg, (h, w, 3)), yy, xx, style.period * size, rng)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    fh, fs, fv = style.foreground
    for _ in range(int(rng.integers(2, 6))):
        fill = _rgb((fh + 0.03 * rng.standard_normal(), fs, fv + 0.05 * rng.standard_normal()))
        _draw_shape(draw, style.shape, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.25) * h,
                    rng.uniform(0, 2 * math.pi), tuple(int(c) for c in fill))
    noisy = np.asarray(img, dtype=np.float32) + rng.standard_normal((h, w, 3), dtype=np.float32) * PIXEL_NOISE
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def write_covers(covers_dir: Path, model: PlantedModel, centroids: np.ndarray, styles: list[TopicStyle],
                 size: int, rng: np.random.Generator) -> None:
    """covers_dir/<i>.jpg for items 1..N (quality 90; PIL's JPEG output is deterministic for identical pixels)."""
    covers_dir.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(1, model.n_items + 1), desc="covers", unit="cover"):
        t = model.item_topic[i]
        img = draw_cover(styles[t], model.item_latent[i] - centroids[t], size, rng)
        img.save(covers_dir / f"{i}.jpg", format="JPEG", quality=90)


# --------------------------------------------------------------------------------------------------
# Writers and the whole dataset

_STREAMS = ("model", "clicks", "timestamps", "text", "titles", "tags", "likes_views", "styles", "covers")


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """One independent generator per part, so changing how one part draws leaves the others unchanged."""
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(_STREAMS, children, strict=True)}


def click_frame(hist: np.ndarray, times: np.ndarray, n_clicks: np.ndarray) -> pl.DataFrame:
    """The pairs.csv rows (user, item, timestamp) of (U+1, L) histories and times, by (user, time): row-major
    order is exactly that."""
    valid = np.arange(hist.shape[1])[None, :] < n_clicks[:, None]  # (U+1, L)
    users = np.broadcast_to(np.arange(len(n_clicks))[:, None], hist.shape)
    return pl.DataFrame({"user": users[valid], "item": hist[valid], "timestamp": times[valid]})


def exposure_frame(log: ExposureLog, times: np.ndarray) -> pl.DataFrame:
    """The impressions.csv rows (user, item, timestamp, click) of an exposure log, each exposure at its request's
    time times[user, request], in the log's order."""
    return pl.DataFrame({"user": log.user, "item": log.item, "timestamp": times[log.user, log.request],
                         "click": log.click})


def write_titles(path: Path, titles: list[str]) -> None:
    """title_en.csv: `item_id,title` lines, unquoted (readers split at the first comma), no header."""
    path.write_text("".join(f"{i},{title}\n" for i, title in enumerate(titles, start=1)), encoding="utf-8")


def write_likes_views(path: Path, likes: np.ndarray, views: np.ndarray) -> None:
    """likes_and_views.txt: `item_id<TAB>likes<TAB>views` lines for items 1..N, no header."""
    path.write_text("".join(f"{i}\t{lk}\t{v}\n" for i, (lk, v) in enumerate(zip(likes, views, strict=True), 1)))


def write_tags(path: Path, tags: list[list[str]]) -> None:
    """tags.csv: header `item_id,tags`, then `item_id,a|b|c` for items 1..N (tag names hold no commas)."""
    path.write_text("item_id,tags\n" + "".join(f"{i},{'|'.join(t)}\n" for i, t in enumerate(tags, start=1)))


def generate(cfg: MakeSyntheticConfig, out_dir: Path) -> dict[str, int]:
    """Write the raw files above into out_dir (whole directory written atomically via pipeline.io.atomic_dir)
    and return counts {"items":..., "users":..., "clicks":...}."""
    require(cfg.n_topics <= MAX_TOPICS, "make_synthetic.n_topics",
            f"at most {MAX_TOPICS} topics have distinguishable titles, got {cfg.n_topics}")
    rng = _streams(cfg.seed)
    model, centroids = sample_planted_model(cfg, rng["model"])
    n_clicks = sample_click_counts(cfg, rng["model"])  # requests per user in an exposure log
    impressions = None
    if cfg.negatives == "exposures":
        log = simulate_exposures(model, n_clicks, cfg, rng["clicks"])
        impressions = exposure_frame(log, sample_timestamps(n_clicks, rng["timestamps"]))
        pairs = impressions.filter(pl.col("click") == 1).drop("click")
    else:
        pairs = click_frame(simulate_clicks(model, n_clicks, rng["clicks"]),
                            sample_timestamps(n_clicks, rng["timestamps"]), n_clicks)
    texts = topic_texts(cfg.n_topics, rng["text"])
    item_topic = model.item_topic[1:]
    titles = make_titles(item_topic, texts, rng["titles"])
    tags = make_tags(item_topic, texts, rng["tags"])
    likes, views = make_likes_views(model, cfg.n_topics, rng["likes_views"])
    styles = topic_styles(cfg.n_topics, rng["styles"])
    with atomic_dir(out_dir) as tmp:
        pairs.write_csv(tmp / "pairs.csv")
        if impressions is not None:
            impressions.write_csv(tmp / "impressions.csv")
        write_titles(tmp / "title_en.csv", titles)
        write_likes_views(tmp / "likes_and_views.txt", likes, views)
        write_tags(tmp / "tags.csv", tags)
        model.save(tmp / "planted.npz")
        write_covers(tmp / "covers", model, centroids, styles, cfg.cover_size, rng["covers"])
    return {"items": cfg.n_items, "users": cfg.n_users, "clicks": pairs.height,
            "exposures": pairs.height if impressions is None else impressions.height}
