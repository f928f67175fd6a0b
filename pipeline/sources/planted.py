"""The planted click model behind the synthetic dataset, and its Bayes oracle (evaluate's upper bound).

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
signal about the latent structure, and `oracle_scores` gives the best achievable P(click) of a labelled row."""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.config import BuildSequencesConfig, MakeSyntheticConfig
from pipeline.core.io import DataError, atomic_path, error_summary
from pipeline.core.items import unit_rows
from pipeline.sources.microlens import count_before

# Item latent = normalize(centroid + noise) with |noise| about ITEM_NOISE: cos(v_i, c_z) is about 0.9, while two
# random centroids in 16 dimensions have |cos| about 0.25, so topics are clear but items within one still differ.
ITEM_NOISE = 0.5
USER_NOISE = 0.3  # same for users, around their topic mixture
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
            raise DataError(f"{path}: not a readable planted-model npz ({error_summary(e)})") from None
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
    return unit_rows(pref + _noise(rng, pref.shape, USER_NOISE), np.float64)


def sample_planted_model(cfg: MakeSyntheticConfig, rng: np.random.Generator) -> tuple[PlantedModel, np.ndarray]:
    """The planted model for `cfg`, and the (n_topics, latent_dim) unit topic centroids it was built around."""
    d = cfg.latent_dim
    centroids = unit_rows(rng.standard_normal((cfg.n_topics, d)), np.float64)
    topic = sample_item_topics(cfg.n_items, cfg.n_topics, rng)
    latent = unit_rows(centroids[topic] + _noise(rng, (cfg.n_items, d), ITEM_NOISE), np.float64)
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


def recent_latent(model: PlantedModel, windows: np.ndarray) -> np.ndarray:
    """(B, w) item ids of each user's last clicks, 0 = empty slot -> (B, d) mean latent of the non-empty slots.

    Item 0's latent row is zero, so empty slots add nothing to the sum; a row with no clicks gives zeros.
    """
    counts = np.maximum((windows > 0).sum(axis=1), 1)  # (B,)
    return model.item_latent[windows].sum(axis=1) / counts[:, None]


def click_probs(model: PlantedModel, pref: np.ndarray, recent: np.ndarray, clicked: np.ndarray) -> np.ndarray:
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
    return click_probs(model, model.user_pref[users], recent_latent(model, windows), clicked)


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
        return exposure_click_probs(model, row_pref, recent_latent(model, windows), item[:, None])[:, 0]
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
        probs = click_probs(model, ev_pref[lo:hi], recent_latent(model, windows), clicked)  # (E_c, N+1)
        sel = row_order[row_bounds[c]:row_bounds[c + 1]]
        prob_of_row[sel] = probs[row_event[sel] - lo, row_item[sel]]
    return oracle_posterior(prob_of_row, n_prior[row_event], n_items, neg_ratio)
