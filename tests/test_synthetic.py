"""The synthetic raw dataset: file formats, determinism, the click process against its planted model, the oracle
against plain references and Monte Carlo, modality signal, and the make_synthetic stage."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import roc_auc_score

from pipeline.core.config import BuildSequencesConfig, MakeSyntheticConfig
from pipeline.core.io import DataError
from pipeline.core.items import unit_rows
from pipeline.sequences.build import build_exposure_rows
from pipeline.sources import planted
from pipeline.sources import synthetic as syn
from pipeline.sources import synthetic_items as items_syn
from stages.make_synthetic import main as stage_main_cmd

TINY = MakeSyntheticConfig(seed=11, n_items=60, n_users=40, mean_clicks_per_user=8.0, min_clicks_per_user=3,
                           max_clicks_per_user=20, n_topics=5, latent_dim=8, cover_size=32)
# More users, so statistics over clicks are tight; still a second or two.
MEDIUM = replace(TINY, seed=5, n_items=80, n_users=300, n_topics=8)
TAG_RE = re.compile(r"^[a-z0-9_]+$")


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("synthetic") / "raw"
    return out, syn.generate(MEDIUM, out)


@pytest.fixture(scope="module")
def model(raw: tuple[Path, dict[str, int]]) -> planted.PlantedModel:
    return planted.PlantedModel.load(raw[0] / "planted.npz")


@pytest.fixture(scope="module")
def pairs(raw: tuple[Path, dict[str, int]]) -> pl.DataFrame:
    return pl.read_csv(raw[0] / "pairs.csv", schema={"user": pl.Int64, "item": pl.Int64, "timestamp": pl.Int64})


def _titles(raw_dir: Path) -> list[tuple[int, str]]:
    lines = (raw_dir / "title_en.csv").read_text(encoding="utf-8").splitlines()
    return [(int(head), title) for head, _, title in (line.partition(",") for line in lines)]


def _histories(pairs: pl.DataFrame) -> dict[int, np.ndarray]:
    return {u: g.sort("timestamp")["item"].to_numpy() for (u,), g in pairs.group_by("user")}


# --------------------------------------------------------------------------------------------------
# Files and formats


def test_layout_and_formats(raw: tuple[Path, dict[str, int]]) -> None:
    out, counts = raw
    n, u = MEDIUM.n_items, MEDIUM.n_users
    assert sorted(p.name for p in out.iterdir()) == [
        "covers", "likes_and_views.txt", "pairs.csv", "planted.npz", "tags.csv", "title_en.csv"]

    text = (out / "pairs.csv").read_text()
    assert text.splitlines()[0] == "user,item,timestamp"
    pairs = pl.read_csv(out / "pairs.csv")
    assert all(pairs.schema[c] == pl.Int64 for c in pairs.columns)
    assert pairs.height == counts["clicks"] and counts["items"] == n and counts["users"] == u
    assert pairs["user"].unique().sort().to_list() == list(range(1, u + 1))
    assert pairs["item"].min() >= 1 and pairs["item"].max() <= n
    assert pairs.equals(pairs.sort("user", "timestamp"))

    titles = _titles(out)
    assert [i for i, _ in titles] == list(range(1, n + 1))  # no header, id order
    assert all(4 <= len(t.replace(",", "").split()) <= 10 and '"' not in t for _, t in titles)
    with_comma = [t for _, t in titles if "," in t]
    assert 1 <= len(with_comma) <= 0.3 * n
    # Splitting at the first comma keeps the whole title, commas included.
    line = next(li for li in (out / "title_en.csv").read_text().splitlines() if li.count(",") >= 2)
    assert line.split(",", 1)[1] == dict(titles)[int(line.split(",", 1)[0])]

    lv = [li.split("\t") for li in (out / "likes_and_views.txt").read_text().splitlines()]
    assert all(len(f) == 3 and all(x.isdigit() for x in f) for f in lv)
    assert [int(f[0]) for f in lv] == list(range(1, n + 1))
    assert all(int(likes) <= int(views) for _, likes, views in lv)

    tag_lines = (out / "tags.csv").read_text().splitlines()
    assert tag_lines[0] == "item_id,tags"
    assert [int(li.split(",")[0]) for li in tag_lines[1:]] == list(range(1, n + 1))
    for li in tag_lines[1:]:
        _, field = li.split(",")  # exactly one comma: tags never contain one
        names = field.split("|")
        assert 1 <= len(names) <= 4 and len(set(names)) == len(names)
        assert all(TAG_RE.match(name) for name in names)

    covers = sorted((out / "covers").iterdir(), key=lambda p: int(p.stem))
    assert [p.name for p in covers] == [f"{i}.jpg" for i in range(1, n + 1)]
    for p in covers[:10]:
        with Image.open(p) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (MEDIUM.cover_size * 4 // 3, MEDIUM.cover_size))

    with np.load(out / "planted.npz", allow_pickle=False) as npz:
        assert npz["item_latent"].shape == (n + 1, MEDIUM.latent_dim)
        assert npz["user_pref"].shape == (u + 1, MEDIUM.latent_dim)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    syn.generate(TINY, tmp_path / "a")
    syn.generate(TINY, tmp_path / "b")
    syn.generate(replace(TINY, seed=TINY.seed + 1), tmp_path / "c")
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a.keys() == b.keys() == c.keys() and len(a) == 5 + TINY.n_items
    assert a == b
    assert all(a[name] != c[name] for name in ("pairs.csv", "title_en.csv", "tags.csv", "covers/1.jpg", "planted.npz"))


def test_regenerating_replaces_the_directory_whole(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    syn.generate(replace(TINY, n_items=70), out)
    syn.generate(TINY, out)
    assert len(list((out / "covers").iterdir())) == TINY.n_items  # no stale covers 61..70


# --------------------------------------------------------------------------------------------------
# Clicks


def test_click_invariants(pairs: pl.DataFrame) -> None:
    per_user = pairs.group_by("user").agg(
        n=pl.len(), distinct=pl.col("item").n_unique(),
        increasing=(pl.col("timestamp").diff().drop_nulls() > 0).all())
    assert (per_user["n"] == per_user["distinct"]).all()  # no repeat clicks
    assert per_user["increasing"].all()
    assert per_user["n"].min() >= MEDIUM.min_clicks_per_user and per_user["n"].max() <= MEDIUM.max_clicks_per_user
    expected = MEDIUM.n_users * MEDIUM.mean_clicks_per_user
    assert 0.85 * expected <= pairs.height <= 1.15 * expected
    assert pairs["timestamp"].min() >= syn.START_MS


def test_click_counts_default_total() -> None:
    counts = syn.sample_click_counts(MakeSyntheticConfig(n_items=3000, n_users=5000), np.random.default_rng(0))
    assert counts[0] == 0 and counts[1:].min() >= 5 and counts.max() <= 200
    assert abs(counts.sum() / 150_000 - 1) < 0.05


def _random_model(rng: np.random.Generator, n_items: int = 12, n_users: int = 4, d: int = 3,
                  click_model: str = "softmax") -> planted.PlantedModel:
    latent = unit_rows(rng.standard_normal((n_items, d)), np.float64)
    pref = unit_rows(rng.standard_normal((n_users, d)), np.float64)
    return planted.PlantedModel(
        item_latent=np.vstack([np.zeros((1, d)), latent]), item_log_pop=np.r_[0.0, rng.standard_normal(n_items)],
        item_topic=np.r_[-1, rng.integers(0, 3, n_items)], user_pref=np.vstack([np.zeros((1, d)), pref]),
        preference_weight=3.0, popularity_weight=1.0, recency_weight=2.0, recency_window=3,
        click_model=click_model, click_bias=-1.5)


def _reference_probs(m: planted.PlantedModel, user: int, hist: list[int]) -> list[float]:
    """The softmax formula item by item, in plain Python."""
    recent = hist[-m.recency_window:]
    d = m.item_latent.shape[1]
    mean_recent = [sum(m.item_latent[j][k] for j in recent) / len(recent) if recent else 0.0 for k in range(d)]
    logits = {}
    for i in range(1, m.n_items + 1):
        if i in hist:
            continue
        v = m.item_latent[i]
        logits[i] = (m.preference_weight * sum(m.user_pref[user][k] * v[k] for k in range(d))
                     + m.popularity_weight * m.item_log_pop[i]
                     + m.recency_weight * sum(mean_recent[k] * v[k] for k in range(d)))
    z = sum(math.exp(x) for x in logits.values())
    return [math.exp(logits[i]) / z if i in logits else 0.0 for i in range(m.n_items + 1)]


def test_next_click_probs_matches_plain_reference() -> None:
    m = _random_model(np.random.default_rng(1))
    users = np.array([1, 2, 3, 4, 2])
    histories = [np.array([], dtype=np.int64), np.array([5]), np.array([3, 9]), np.array([1, 7, 2, 11, 4, 8]),
                 np.array([12, 6, 10])]
    probs = planted.next_click_probs(m, users, histories)
    assert probs.shape == (5, m.n_items + 1) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    for b, (u, h) in enumerate(zip(users, histories, strict=True)):
        assert probs[b, 0] == 0 and (probs[b, h] == 0).all()
        np.testing.assert_allclose(probs[b], _reference_probs(m, int(u), h.tolist()), rtol=1e-10, atol=1e-15)


def test_simulate_clicks_matches_plain_sampler() -> None:
    """simulate_clicks against a per-user loop over next_click_probs that uses the same uniforms (one
    rng.random(n_active) per step while all active users fit in one block)."""
    m = _random_model(np.random.default_rng(4), n_items=40, n_users=25, d=4)
    n_clicks = np.r_[0, np.random.default_rng(5).integers(2, 15, size=25)]
    hist = syn.simulate_clicks(m, n_clicks, np.random.default_rng(6))

    rng = np.random.default_rng(6)
    expected: dict[int, list[int]] = {u: [] for u in range(1, 26)}
    for k in range(n_clicks.max()):
        active = [u for u in range(1, 26) if n_clicks[u] > k]
        uniforms = rng.random(len(active))
        for u, x in zip(active, uniforms, strict=True):
            cdf = np.cumsum(planted.next_click_probs(m, np.array([u]), [np.array(expected[u], dtype=np.int64)])[0])
            expected[u].append(int(np.argmax(cdf > x * cdf[-1])))
    for u in range(1, 26):
        assert hist[u, :n_clicks[u]].tolist() == expected[u]
        assert (hist[u, n_clicks[u]:] == 0).all()


def test_generator_samples_from_next_click_probs(model: planted.PlantedModel, pairs: pl.DataFrame) -> None:
    hist = _histories(pairs)
    users = np.array(sorted(hist))
    contexts = [(u, hist[u][:k], hist[u][k]) for u in users for k in range(len(hist[u]))]
    probs = planted.next_click_probs(model, np.array([c[0] for c in contexts]), [c[1] for c in contexts])
    p_actual = probs[np.arange(len(contexts)), [c[2] for c in contexts]]
    assert (p_actual > 0).all()

    # First clicks are far likelier under the planted model than under a uniform choice.
    first = np.array([len(c[1]) == 0 for c in contexts])
    assert np.log(p_actual[first]).mean() > math.log(1 / model.n_items) + 0.5

    # Exactness: if click k ~ probs[k], E[log p(click)] = sum p log p (minus the entropy) for every context, so
    # the mean gap between the two is ~0 within its standard error.
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
    neg_entropy = plogp.sum(axis=1)
    var = (np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)) ** 2, 0.0)).sum(axis=1) - neg_entropy**2
    z = (np.log(p_actual) - neg_entropy).sum() / math.sqrt(var.sum())
    assert abs(z) < 4, z
    # The same statistic sees a model without recency (the sequential part of the signal) as wrong.
    no_recency = replace(model, recency_weight=0.0)
    probs0 = planted.next_click_probs(no_recency, np.array([c[0] for c in contexts]), [c[1] for c in contexts])
    p0 = probs0[np.arange(len(contexts)), [c[2] for c in contexts]]
    assert np.log(p_actual).sum() - np.log(p0).sum() > 20


# --------------------------------------------------------------------------------------------------
# Oracle


def test_oracle_posterior_closed_form_and_monte_carlo() -> None:
    # 6 items, items 1 and 2 clicked before: M = 4 candidates with P = (.5, .3, .15, .05); 3 negatives per event.
    p = np.array([0.5, 0.3, 0.15, 0.05])
    post = planted.oracle_posterior(p, np.full(4, 2), n_items=6, neg_ratio=3)
    np.testing.assert_allclose(post[0], 0.5 / (0.5 + 3 * 0.5 / 3))
    rng = np.random.default_rng(0)
    n_events = 200_000
    pos = rng.choice(4, size=n_events, p=p)
    # Uniform over the 3 candidates other than the positive: shift by 1..3 modulo 4.
    neg = (pos[:, None] + rng.integers(1, 4, size=(n_events, 3))) % 4
    n_pos = np.bincount(pos, minlength=4)
    n_neg = np.bincount(neg.ravel(), minlength=4)
    np.testing.assert_allclose(post, n_pos / (n_pos + n_neg), atol=0.01)
    with pytest.raises(ValueError, match="at least 2 unclicked"):
        planted.oracle_posterior(np.array([0.5]), np.array([5]), n_items=6, neg_ratio=1)


def _labelled_rows(pairs: pl.DataFrame, n_items: int, neg_ratio: int, rng: np.random.Generator) -> pl.DataFrame:
    """1 positive + neg_ratio uniform negatives (unclicked before the event, not the positive) per click."""
    out = []
    for (u,), g in pairs.sort("user", "timestamp").group_by("user", maintain_order=True):
        items, times = g["item"].to_list(), g["timestamp"].to_list()
        for k, (item, ts) in enumerate(zip(items, times, strict=True)):
            candidates = sorted(set(range(1, n_items + 1)) - set(items[:k]) - {item})
            out.append((u, ts, item, 1))
            out.extend((u, ts, int(j), 0) for j in rng.choice(candidates, size=neg_ratio))
    return pl.DataFrame(out, schema=["user_id", "event_ts", "item_id", "label"], orient="row")


def test_oracle_scores_match_reference_and_separate_labels(
        model: planted.PlantedModel, pairs: pl.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    rows = _labelled_rows(pairs, model.n_items, neg_ratio=4, rng=rng)
    rows = rows[rng.permutation(rows.height)]  # rows in any order, events interleaved
    monkeypatch.setattr(planted, "ORACLE_CHUNK_CELLS", 50 * (model.n_items + 1))  # many event blocks
    scores = planted.oracle_scores(model, pairs.sample(fraction=1.0, shuffle=True, seed=1), rows, neg_ratio=4)
    assert scores.shape == (rows.height,) and scores.dtype == np.float64

    hist = _histories(pairs)
    times = {u: g.sort("timestamp")["timestamp"].to_numpy() for (u,), g in pairs.group_by("user")}
    check = rows.head(300)
    for r, (u, ts, item) in enumerate(check.select("user_id", "event_ts", "item_id").iter_rows()):
        prior = hist[u][times[u] < ts]
        p = planted.next_click_probs(model, np.array([u]), [prior])[0, item]
        assert scores[r] == pytest.approx(float(planted.oracle_posterior(p, len(prior), model.n_items, 4)), rel=1e-9)

    assert roc_auc_score(rows["label"].to_numpy(), scores) > 0.75
    # Calibrated: the mean posterior matches the positive share (1 in 5) closely.
    assert abs(scores.mean() - 0.2) < 0.02


def test_oracle_with_given_preferences_replaces_the_planted_ones(
        model: planted.PlantedModel, pairs: pl.DataFrame) -> None:
    """pref = each row's planted preference gives the default scores; other per-event vectors (here the history
    estimate) give what next_click_probs gives for a model holding that vector as the user's preference."""
    rng = np.random.default_rng(4)
    rows = _labelled_rows(pairs, model.n_items, neg_ratio=2, rng=rng)
    users = rows["user_id"].to_numpy()
    default = planted.oracle_scores(model, pairs, rows, neg_ratio=2)
    np.testing.assert_array_equal(planted.oracle_scores(model, pairs, rows, 2, pref=model.user_pref[users]), default)

    hist = _histories(pairs)
    times = {u: g.sort("timestamp")["timestamp"].to_numpy() for (u,), g in pairs.group_by("user")}
    priors = [hist[u][times[u] < ts] for u, ts in rows.select("user_id", "event_ts").iter_rows()]
    width = max(len(h) for h in priors)
    seq = np.array([np.pad(h, (width - len(h), 0)) for h in priors])
    pref = planted.history_preference(model, seq)
    assert np.allclose(np.linalg.norm(pref[[len(h) > 0 for h in priors]], axis=1), 1.0)
    scores = planted.oracle_scores(model, pairs, rows, 2, pref=pref)
    for r in range(0, rows.height, max(1, rows.height // 40)):
        u, item = int(users[r]), int(rows["item_id"][r])
        mean = model.item_latent[priors[r]].sum(0)
        swapped = model.user_pref.copy()
        swapped[u] = mean / np.linalg.norm(mean) if len(priors[r]) else 0.0
        p = planted.next_click_probs(dataclasses.replace(model, user_pref=swapped), np.array([u]), [priors[r]])[0, item]
        assert scores[r] == pytest.approx(float(planted.oracle_posterior(p, len(priors[r]), model.n_items, 2)),
                                          rel=1e-9)


# --------------------------------------------------------------------------------------------------
# Exposure logs

EXPOSURES = replace(MEDIUM, negatives="exposures", mean_requests_per_user=5.0, max_requests_per_user=8,
                    slate_size=6, click_bias=-1.5)


@pytest.fixture(scope="module")
def exposure_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exposures") / "raw"
    syn.generate(EXPOSURES, out)
    return out


def _impressions(raw_dir: Path) -> pl.DataFrame:
    return pl.read_csv(raw_dir / "impressions.csv",
                       schema={"user": pl.Int64, "item": pl.Int64, "timestamp": pl.Int64, "click": pl.Int64})


def test_exposure_log_layout_and_invariants(exposure_raw: Path) -> None:
    """Every request shows slate_size distinct items the user has not clicked before; pairs.csv is exactly the
    clicked exposures, in file order; each user's request count is the one drawn up front."""
    assert (exposure_raw / "impressions.csv").read_text().splitlines()[0] == "user,item,timestamp,click"
    shown = _impressions(exposure_raw)
    pairs = pl.read_csv(exposure_raw / "pairs.csv", schema={"user": pl.Int64, "item": pl.Int64,
                                                            "timestamp": pl.Int64})
    assert pairs.equals(shown.filter(pl.col("click") == 1).drop("click"))
    assert set(shown["click"].unique().to_list()) == {0, 1}
    slates = shown.group_by("user", "timestamp").agg(pl.len(), pl.col("item").n_unique().alias("distinct"))
    assert (slates["len"] == EXPOSURES.slate_size).all() and (slates["distinct"] == EXPOSURES.slate_size).all()
    rng = syn._streams(EXPOSURES.seed)["model"]
    planted.sample_planted_model(EXPOSURES, rng)
    n_requests = syn.sample_click_counts(EXPOSURES, rng)
    per_user = slates.group_by("user").len().sort("user")
    assert per_user["len"].to_list() == n_requests[per_user["user"].to_numpy()].tolist()
    assert 1 <= n_requests[1:].min() and n_requests.max() <= EXPOSURES.max_requests_per_user
    for user, rows in shown.sort("user", "timestamp", maintain_order=True).group_by("user", maintain_order=True):
        clicked_before: set[int] = set()
        for _, request in rows.group_by("timestamp", maintain_order=True):
            assert not clicked_before & set(request["item"].to_list()), user
            clicked_before |= set(request.filter(pl.col("click") == 1)["item"].to_list())


def test_exposure_click_probs_match_the_formula() -> None:
    m = _random_model(np.random.default_rng(7), click_model="exposure")
    pref, recent = m.user_pref[[1, 2]], np.array([[0.2, -0.1, 0.4], [0.0, 0.0, 0.0]])
    items = np.array([[3, 5, 1], [12, 2, 7]])
    got = planted.exposure_click_probs(m, pref, recent, items)
    for b in range(2):
        for k in range(3):
            v = m.item_latent[items[b, k]]
            logit = (m.click_bias + m.preference_weight * pref[b] @ v
                     + m.popularity_weight * m.item_log_pop[items[b, k]] + m.recency_weight * recent[b] @ v)
            assert got[b, k] == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-12)


def test_exposure_oracle_is_each_row_click_probability(exposure_raw: Path) -> None:
    """oracle_scores of exposure rows = the click sigmoid with the planted preference and the last w clicks of
    earlier requests (plain per-row reference); it is calibrated on every leave-last split (no split selects on
    clicks) and separates labels; a given preference replaces the planted one."""
    model = planted.PlantedModel.load(exposure_raw / "planted.npz")
    assert model.click_model == "exposure" and model.click_bias == EXPOSURES.click_bias
    shown = _impressions(exposure_raw)
    pairs = shown.filter(pl.col("click") == 1).drop("click")
    rows = shown.rename({"user": "user_id", "item": "item_id", "timestamp": "event_ts"})
    scores = planted.oracle_scores(model, pairs, rows, neg_ratio=0)
    for r, (u, item, ts) in enumerate(rows.select("user_id", "item_id", "event_ts").head(400).iter_rows()):
        before = pairs.filter((pl.col("user") == u) & (pl.col("timestamp") < ts))["item"].to_numpy()
        recent = model.item_latent[before[-model.recency_window:]].mean(0) if len(before) else 0.0
        logit = (model.click_bias + model.item_latent[item] @ (model.preference_weight * model.user_pref[u]
                 + model.recency_weight * recent) + model.popularity_weight * model.item_log_pop[item])
        assert scores[r] == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-9)
    labels = rows["click"].to_numpy()
    from_end = rows.select(pl.col("event_ts").rank("dense", descending=True).over("user_id"))["event_ts"].to_numpy()
    for part in (from_end == 1, from_end == 2, from_end > 2):  # test, valid, train under leave_last
        z = (labels[part] - scores[part]).sum() / math.sqrt((scores[part] * (1 - scores[part])).sum())
        assert abs(z) < 4, z
    assert roc_auc_score(labels, scores) > 0.7
    users = rows["user_id"].to_numpy()
    np.testing.assert_array_equal(planted.oracle_scores(model, pairs, rows, 0, pref=model.user_pref[users]), scores)
    zero = planted.oracle_scores(model, pairs, rows, 0, pref=np.zeros_like(model.user_pref[users]))
    assert roc_auc_score(labels, zero) < roc_auc_score(labels, scores)


def test_exposure_log_is_deterministic_and_sampled_mode_writes_no_impressions(tmp_path: Path) -> None:
    small = replace(EXPOSURES, n_users=40)
    syn.generate(small, tmp_path / "a")
    syn.generate(small, tmp_path / "b")
    for name in ("pairs.csv", "impressions.csv", "planted.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    syn.generate(replace(small, negatives="sampled"), tmp_path / "c")
    assert not (tmp_path / "c" / "impressions.csv").exists()


def test_held_out_items_have_no_train_rows_and_a_calibrated_oracle(tmp_path: Path) -> None:
    """new_item_share: the held-out items are exactly n_new_items distinct ids, shown only in each user's last two
    requests, so leave_last puts none of their exposures in train but some in valid and test; the oracle (the
    click sigmoid) stays calibrated on them; share 0 draws exactly the log it drew before the option existed."""
    cfg = replace(EXPOSURES, new_item_share=0.25)
    syn.generate(cfg, tmp_path / "cold")
    new = syn.held_out_items(cfg, syn._streams(cfg.seed)["new_items"])
    assert new.sum() == cfg.n_new_items == 20 and not new[0]
    shown = _impressions(tmp_path / "cold")
    from_end = shown.select(pl.col("timestamp").rank("dense", descending=True).over("user"))["timestamp"]
    is_new = new[shown["item"].to_numpy()]
    assert not is_new[from_end.to_numpy() > 2].any()
    assert is_new[from_end.to_numpy() == 1].any() and is_new[from_end.to_numpy() == 2].any()
    pairs = shown.filter(pl.col("click") == 1).drop("click")
    table = pl.DataFrame({"item_id": np.arange(cfg.n_items + 1, dtype=np.int32),
                          "likes_level": np.zeros(cfg.n_items + 1, np.int8),
                          "views_level": np.zeros(cfg.n_items + 1, np.int8)})
    rows = build_exposure_rows(pairs.with_columns(pl.col("user", "item").cast(pl.Int32)),
                               shown.with_columns(pl.col("user", "item").cast(pl.Int32)), table, max_len=5,
                               min_history=0, split="leave_last", valid_frac=0.1, test_frac=0.1)
    assert not new[rows.collect("train")["item_id"].to_numpy()].any()
    test = rows.collect("test")
    test = test.filter(new[test["item_id"].to_numpy()])
    model = planted.PlantedModel.load(tmp_path / "cold" / "planted.npz")
    scores = planted.oracle_scores(model, pairs, test, 0)
    labels = test["label"].to_numpy()
    assert abs((labels - scores).sum()) < 4 * math.sqrt((scores * (1 - scores)).sum())
    syn.generate(replace(cfg, new_item_share=0.0), tmp_path / "none")
    syn.generate(EXPOSURES, tmp_path / "before")
    for name in ("pairs.csv", "impressions.csv"):
        assert (tmp_path / "none" / name).read_bytes() == (tmp_path / "before" / name).read_bytes()


@pytest.mark.parametrize(("changes", "message"), [
    ({"new_item_share": 0.6}, "new_item_share: must be in \\[0, 0.5\\]"),
    ({"new_item_share": 0.1, "negatives": "sampled"}, "new_item_share: held-out new items need negatives: exposures"),
    ({"new_item_share": 0.5, "max_requests_per_user": 5, "slate_size": 8}, "new_item_share: max_requests_per_user"),
])
def test_held_out_share_is_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(EXPOSURES, **changes)


def test_oracle_is_exact_only_for_matching_rows() -> None:
    sampled, exposures = BuildSequencesConfig(), BuildSequencesConfig(negatives="exposures")
    assert planted.oracle_mismatch("exposure", exposures) is None
    assert "build_sequences.negatives: exposures" in planted.oracle_mismatch("exposure", sampled)
    assert planted.oracle_mismatch("softmax", sampled) is None
    assert "negatives: sampled" in planted.oracle_mismatch("softmax", exposures)
    assert "uniform" in planted.oracle_mismatch("softmax", BuildSequencesConfig(neg_sampling="popularity"))


# --------------------------------------------------------------------------------------------------
# Modality signal


def test_titles_of_one_topic_share_words(raw: tuple[Path, dict[str, int]], model: planted.PlantedModel) -> None:
    words = [set(t.replace(",", " ").split()) for _, t in _titles(raw[0])]
    topic = model.item_topic[1:]
    same, other = [], []
    for i in range(len(words)):
        for j in range(i + 1, len(words)):
            jac = len(words[i] & words[j]) / len(words[i] | words[j])
            (same if topic[i] == topic[j] else other).append(jac)
    assert np.mean(same) > 3 * np.mean(other)


def test_reused_themes_get_distinct_qualifiers() -> None:
    n_topics = len(items_syn.THEMES) + 12
    texts = items_syn.topic_texts(n_topics, np.random.default_rng(0))
    pairs = [t.qualifiers for t in texts[len(items_syn.THEMES):]]
    assert len(set(pairs)) == len(pairs) and all(len(q) == 2 for q in pairs)
    vocabulary = {w for words, tags in items_syn.THEMES for w in (*words, *tags)} | set(items_syn.FILLER)
    assert not vocabulary & set(items_syn.QUALIFIERS)
    assert all(TAG_RE.match(tag) for t in texts for tag in t.tags)
    assert all(TAG_RE.match(tag) for tag in items_syn.GENERIC_TAGS)
    title = items_syn.make_title(texts[-1], ("noise",), np.random.default_rng(1))
    assert set(texts[-1].qualifiers) <= set(title.replace(",", " ").split())


def test_cover_colour_predicts_topic(raw: tuple[Path, dict[str, int]], model: planted.PlantedModel) -> None:
    mean_rgb = np.array([np.asarray(Image.open(raw[0] / "covers" / f"{i}.jpg"), dtype=np.float64).mean(axis=(0, 1))
                         for i in range(1, model.n_items + 1)])  # (N, 3)
    topic = model.item_topic[1:]
    train, test = np.arange(len(topic)) % 2 == 0, np.arange(len(topic)) % 2 == 1
    centroids = {t: mean_rgb[train & (topic == t)].mean(axis=0) for t in np.unique(topic[train])}
    names = np.array(list(centroids))
    dist = np.linalg.norm(mean_rgb[test][:, None, :] - np.array(list(centroids.values()))[None], axis=2)
    accuracy = (names[dist.argmin(axis=1)] == topic[test]).mean()
    assert accuracy > 3 / MEDIUM.n_topics


def test_views_follow_popularity(raw: tuple[Path, dict[str, int]], model: planted.PlantedModel) -> None:
    views = np.array([int(li.split("\t")[2]) for li in (raw[0] / "likes_and_views.txt").read_text().splitlines()])
    assert np.corrcoef(np.log(views), model.item_log_pop[1:])[0, 1] > 0.8


# --------------------------------------------------------------------------------------------------
# PlantedModel files


def test_planted_model_round_trip_and_bad_files(tmp_path: Path) -> None:
    m = _random_model(np.random.default_rng(2))
    path = tmp_path / "planted.npz"
    m.save(path)
    back = planted.PlantedModel.load(path)
    for name in ("item_latent", "item_log_pop", "item_topic", "user_pref"):
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name))
        assert getattr(back, name).dtype == getattr(m, name).dtype
    weights = (back.preference_weight, back.popularity_weight, back.recency_weight, back.recency_window)
    assert weights == (3.0, 1.0, 2.0, 3)
    assert type(back.recency_window) is int
    assert (back.click_model, back.click_bias) == ("softmax", -1.5)
    exposure = tmp_path / "exposure.npz"
    dataclasses.replace(m, click_model="exposure").save(exposure)
    assert planted.PlantedModel.load(exposure).click_model == "exposure"
    dataclasses.replace(m, click_model="bandit").save(tmp_path / "bad_model.npz")
    with pytest.raises(DataError, match="bad_model.npz: click_model must be one of softmax, exposure"):
        planted.PlantedModel.load(tmp_path / "bad_model.npz")

    with pytest.raises(DataError, match="missing.npz: file not found"):
        planted.PlantedModel.load(tmp_path / "missing.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt.npz: not a readable"):
        planted.PlantedModel.load(corrupt)
    partial = tmp_path / "partial.npz"
    np.savez(partial, item_latent=m.item_latent)
    with pytest.raises(DataError, match="partial.npz: missing array 'item_log_pop'"):
        planted.PlantedModel.load(partial)


# --------------------------------------------------------------------------------------------------
# The stage


def _params(path: Path, section: dict) -> Path:
    path.write_text(yaml.safe_dump({"make_synthetic": section, "fit_pca": {"dim": 8}}))
    return path


def test_stage_writes_raw_dir(tmp_path: Path) -> None:
    section = {"seed": 4, "n_items": 30, "n_users": 12, "mean_clicks_per_user": 6.0, "min_clicks_per_user": 3,
               "max_clicks_per_user": 10, "n_topics": 3, "latent_dim": 4, "cover_size": 32}
    params = _params(tmp_path / "params.yaml", section)
    result = CliRunner().invoke(stage_main_cmd, ["--out", str(tmp_path / "raw"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "raw" / "covers").glob("*.jpg"))) == 30
    assert pl.read_csv(tmp_path / "raw" / "pairs.csv")["user"].n_unique() == 12


def test_stage_unknown_key_is_one_line_error(tmp_path: Path) -> None:
    params = _params(tmp_path / "params.yaml", {"n_items": 30, "n_itemz": 5})
    result = CliRunner().invoke(stage_main_cmd, ["--out", str(tmp_path / "raw"), "--params", str(params)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "make_synthetic.n_itemz" in lines[0]
    assert not (tmp_path / "raw").exists()
