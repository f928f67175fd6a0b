"""A synthetic MicroLens-like raw dataset drawn from the planted model of planted.py.

Clicks (or, with `make_synthetic.negatives: exposures`, a showing policy's exposures and the clicks among them) are
simulated from the planted model; titles, tags, likes/views and covers come from synthetic_items.py.

`generate` writes the MicroLens raw layout into a directory, file for file:
    pairs.csv              header `user,item,timestamp`; ints, timestamp in Unix ms; sorted by (user, timestamp)
    impressions.csv        (exposures only) header `user,item,timestamp,click`: every exposure, its request's
                           time, click 0/1; sorted by (user, timestamp, slate position); the clicks are pairs.csv
    title_en.csv           no header; `item_id,title` per item in id order; titles may contain commas
    likes_and_views.txt    `item_id<TAB>likes<TAB>views`, no header, id order
    tags.csv               header `item_id,tags`; 1-4 `|`-joined tag names, id order
    covers/<item_id>.jpg   RGB JPEG, (cover_size*4//3) x cover_size (width x height)
    planted.npz            the PlantedModel (`PlantedModel.load`)
With `new_item_share` > 0 (exposures only) that share of items is held out as new: the policy shows them only in
each user's last two requests, which build_sequences' leave_last split makes the valid and test requests, so they
have no train rows at all (neither clicks nor exposures), as a video published after the training period. Only
the policy changes, so the click sigmoid, and with it the oracle, stays exact.
Ids are contiguous: items 1..n_items, users 1..n_users. Every draw comes from `cfg.seed`, one independent random
stream per part, and no file holds a clock time, so the same config gives byte-identical files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from pipeline.core.config import MakeSyntheticConfig, require
from pipeline.core.io import atomic_dir
from pipeline.sources.planted import (
    CLICK_CHUNK,
    PlantedModel,
    click_probs,
    exposure_click_probs,
    recent_latent,
    sample_planted_model,
)
from pipeline.sources.synthetic_items import (
    MAX_TOPICS,
    make_likes_views,
    make_tags,
    make_titles,
    topic_styles,
    topic_texts,
    write_covers,
)

CLICK_COUNT_SIGMA = 0.8  # sd of the log-normal rate behind each user's extra clicks
START_MS = 1_609_459_200_000  # 2021-01-01 00:00:00 UTC
START_WINDOW_MS = 2 * 365 * 86_400_000  # users start uniformly within two years
MEAN_GAP_MS = 2 * 86_400_000  # mean gap between a user's clicks: two days


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

    Step k draws the k-th click of every user with more than k clicks from `click_probs`, the same distribution
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
                recent = recent_latent(model, hist[users, max(0, k - w):k])  # (B, d)
                items = _sample_from_rows(click_probs(model, model.user_pref[users], recent, clicked[users]), rng)
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


def held_out_items(cfg: MakeSyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """(n_items+1,) bool: True for the `cfg.n_new_items` items held out as new (module docstring), a uniform
    sample of ids 1..n_items; row 0 (padding) False. No draw at all when none are held out."""
    new = np.zeros(cfg.n_items + 1, dtype=bool)
    if cfg.n_new_items:
        new[1 + rng.choice(cfg.n_items, size=cfg.n_new_items, replace=False)] = True
    return new


def simulate_exposures(model: PlantedModel, n_requests: np.ndarray, cfg: MakeSyntheticConfig,
                       rng: np.random.Generator, new_items: np.ndarray | None = None) -> ExposureLog:
    """n_requests[u] requests of every user u (module docstring: the policy shows `cfg.slate_size` unclicked
    items, each clicked with `exposure_click_probs`). Clicks of one request share its history (the clicks of the
    user's earlier requests). `new_items` (N+1,) bool (`held_out_items`): items the policy shows only in a user's
    last two requests.

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
                if new_items is not None:
                    early = n_requests[users] - 2 > r  # (B,) requests before the user's valid and test ones
                    policy[np.ix_(early, new_items)] = -np.inf
                keys = policy + rng.gumbel(size=policy.shape)
                top = np.argpartition(-keys, k - 1, axis=1)[:, :k]  # (B, K), unordered
                shown = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)
                click = rng.random(shown.shape) < exposure_click_probs(model, pref, recent_latent(model, window),
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
# Writers and the whole dataset

# Appending a name keeps every earlier stream's draws (SeedSequence children are numbered).
_STREAMS = ("model", "clicks", "timestamps", "text", "titles", "tags", "likes_views", "styles", "covers", "new_items")


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
    """Write the raw files above into out_dir (whole directory written atomically via pipeline.core.io.atomic_dir)
    and return counts {"items":..., "users":..., "clicks":...}."""
    require(cfg.n_topics <= MAX_TOPICS, "make_synthetic.n_topics",
            f"at most {MAX_TOPICS} topics have distinguishable titles, got {cfg.n_topics}")
    rng = _streams(cfg.seed)
    model, centroids = sample_planted_model(cfg, rng["model"])
    n_clicks = sample_click_counts(cfg, rng["model"])  # requests per user in an exposure log
    impressions = None
    if cfg.negatives == "exposures":
        log = simulate_exposures(model, n_clicks, cfg, rng["clicks"], held_out_items(cfg, rng["new_items"]))
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
