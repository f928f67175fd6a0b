"""benchmarks/variants.py: every train profile is a valid train section over the repository's params.yaml (a
baseline that kept the default's transformer_dcn-only switches would stop at load time), and the taste click
models (multi-interest, drifting, successor) draw what they claim and write their exact oracle."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from benchmarks import variants
from benchmarks.variants import (
    BASE,
    MAX_LEN,
    PROFILES,
    Variant,
    draw_variant,
    drifting_tastes,
    exposure_probs,
    make_variant,
    params_for,
    random_rotation,
    sample_interests,
    taste,
    taste_history_oracle,
    taste_log,
)
from pipeline.core.config import MakeSyntheticConfig, TrainConfig, load_section
from pipeline.core.items import unit_rows
from pipeline.core.metrics import auc
from pipeline.sources.planted import sample_planted_model


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_loads_as_a_train_section(tmp_path: Path, profile: str) -> None:
    params = params_for(tmp_path / "variant", PROFILES[profile])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_section(tmp_path / "params.yaml", "train", TrainConfig)
    assert cfg.arch.model == {"default": "transformer_dcn", "winner": "transformer_dcn",
                              "meanpool-recipe": "meanpool", "din-recipe": "din"}.get(profile, profile)
    assert (cfg.arch.exposure_levels > 0) == (profile == "default")  # the baselines are the plain architectures
    assert params["data"]["source"] == "mmctr" and params["build_sequences"]["max_len"] == 50


def test_the_readme_winner_command_sets_the_winner_profile() -> None:
    """The README's `dvc exp run -S ...` for the winning configuration and the `winner` profile give the same train
    section (the command had left the default's user bias and weight average on)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    command = readme[readme.index("dvc exp run -S fit_pca.dim=128"):]
    command = command[:command.index("```")]
    sets = dict(re.findall(r"-S '?train\.(\w+)=([^'\s]+)'?", command))
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    from_readme = {**params["train"], **{k: yaml.safe_load(v) for k, v in sets.items()}}
    from_profile = {**params["train"], **{k.removeprefix("train."): v for k, v in PROFILES["winner"].items()}}
    assert from_readme == from_profile


# --------------------------------------------------------------------------------------------------
# The multi-interest click model (a planted model that is not make_synthetic's)

SMALL_MULTI = {**BASE, "n_items": 300, "n_users": 500, "n_topics": 8, "mean_requests_per_user": 4.0,
               "max_requests_per_user": 12, "preference_weight": 4.0, "recency_weight": 1.0, "click_bias": -2.0,
               "policy_preference_weight": 2.0, "seed": 11}


def test_interests_are_unit_distinct_topics_with_spare_slots_copying_the_first() -> None:
    rng = np.random.default_rng(0)
    centroids = unit_rows(rng.standard_normal((6, 8)), np.float64)
    q = sample_interests(centroids, 200, 3, rng)
    assert q.shape == (201, 3, 8) and not q[0].any()
    np.testing.assert_allclose(np.linalg.norm(q[1:], axis=2), 1.0)
    distinct = [len({tuple(np.round(v, 12)) for v in user}) for user in q[1:]]
    assert set(distinct) == {1, 2, 3}  # 1..3 tastes; spare slots are exact copies of the first
    for user, n in zip(q[1:], distinct, strict=True):
        np.testing.assert_array_equal(user[n:], np.broadcast_to(user[0], user[n:].shape))
    latent = unit_rows(rng.standard_normal((30, 8)), np.float64)
    expect = [[max(float(v @ item) for v in user) for item in latent] for user in q[1:4]]
    np.testing.assert_allclose(taste(q[1:4], latent), expect)


def test_drifting_tastes_walk_in_unit_steps_of_the_given_size() -> None:
    rng = np.random.default_rng(1)
    pref = np.vstack([np.zeros((1, 16)), unit_rows(rng.standard_normal((400, 16)), np.float64)])
    walk = drifting_tastes(pref, 6, 0.5, rng)
    assert walk.shape == (401, 6, 1, 16) and not walk[0].any()
    np.testing.assert_array_equal(walk[:, 0, 0], pref)
    np.testing.assert_allclose(np.linalg.norm(walk[1:, :, 0], axis=2), 1.0)
    step = np.linalg.norm(np.diff(walk[1:, :, 0], axis=1), axis=2)
    assert 0.35 < step.mean() < 0.55  # a step of norm ~0.5, then renormalised
    # It wanders: the last taste is further from the start than one step.
    assert (walk[1:, 5, 0] * pref[1:]).sum(axis=1).mean() < (walk[1:, 1, 0] * pref[1:]).sum(axis=1).mean()


def test_random_rotation_is_a_proper_rotation_that_moves_every_direction() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        t = random_rotation(16, rng)
        np.testing.assert_allclose(t @ t.T, np.eye(16), atol=1e-12)
        assert np.linalg.det(t) == pytest.approx(1.0)
    v = unit_rows(rng.standard_normal((1000, 16)), np.float64)
    # Uniform over rotations: a direction's image is nearly orthogonal to it, on average (|cos| ~ 1/sqrt(d)).
    assert abs(np.einsum("nd,nd->n", v @ t.T, v).mean()) < 0.3


@pytest.mark.parametrize("kind", ["interests", "drift", "successor", "activity"])
def test_taste_log_replays_from_its_own_probabilities(kind: str) -> None:
    """Every slate shows distinct items the user has not clicked before, and each exposure's P(click) is the
    sigmoid recomputed one exposure at a time from that request's tastes, the user's clicks of earlier requests,
    (successor) the rotation of their recent mean and (activity) the user's own click bias (plain Python)."""
    cfg = MakeSyntheticConfig(**SMALL_MULTI)
    rng = np.random.default_rng(3)
    model, centroids = sample_planted_model(cfg, rng)
    n_requests = np.concatenate([[0], rng.integers(1, 6, size=cfg.n_users)])
    turn = random_rotation(cfg.latent_dim, rng) if kind == "successor" else None
    bias = np.concatenate([[0.0], rng.normal(0.0, 1.0, cfg.n_users)]) if kind == "activity" else None
    if kind == "interests":
        q = np.repeat(sample_interests(centroids, cfg.n_users, 3, rng)[:, None], 5, axis=1)
    elif kind == "drift":
        q = drifting_tastes(model.user_pref, 5, 0.6, rng)
    else:
        q = np.repeat(model.user_pref[:, None, None], 5, axis=1)
    log, prob = taste_log(model, q, n_requests, cfg, rng, block=64, turn=turn, user_bias=bias)
    assert len(log.item) == n_requests.sum() * cfg.slate_size
    clicks: dict[int, list[int]] = {}
    for (u, r), idx in _groups(log.user, log.request).items():
        before = clicks.get(u, [])
        items = log.item[idx]
        assert len(set(items)) == len(items) and not set(items) & set(before) and 0 not in items
        recent = model.item_latent[before[-model.recency_window:]].mean(axis=0) if before else np.zeros(cfg.latent_dim)
        if turn is not None:
            recent = turn @ recent
        for i, p in zip(items, prob[idx], strict=True):
            a = max(float(v @ model.item_latent[i]) for v in q[u, r])
            z = (model.click_bias + (0.0 if bias is None else bias[u]) + model.preference_weight * a
                 + model.popularity_weight * model.item_log_pop[i]
                 + model.recency_weight * float(recent @ model.item_latent[i]))
            assert p == pytest.approx(1 / (1 + math.exp(-z)), rel=1e-9)
        clicks[u] = before + [int(i) for i in items[log.click[idx] == 1]]
    assert abs(log.click.mean() - prob.mean()) < 4 * math.sqrt(prob.mean() / len(prob))  # calibrated draws


def _groups(user: np.ndarray, request: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """(user, request) -> indices of its exposures, in log order (the log is sorted by user, then request)."""
    out: dict[tuple[int, int], list[int]] = {}
    for k, key in enumerate(zip(user.tolist(), request.tolist(), strict=True)):
        out.setdefault(key, []).append(k)
    return {key: np.array(v) for key, v in out.items()}


@pytest.mark.parametrize("kind", ["interests", "successor", "activity"])
def test_taste_variant_truth_is_each_test_row_probability(tmp_path: Path, kind: str) -> None:
    kwargs: dict[str, Any] = {"interests": {"interests": 3}, "successor": {"successor": True},
                              "activity": {"activity": 1.0}}[kind]
    variant = Variant(f"small-{kind}", "test", SMALL_MULTI, **kwargs)
    counts = make_variant(variant, tmp_path)
    drawn = draw_variant(variant)
    test = drawn.rows.collect("test")
    truth = pl.read_parquet(tmp_path / variant.name / "truth.parquet")
    assert truth.height == test.height == counts["test_rows"]
    np.testing.assert_array_equal(truth["label"].to_numpy(), test["label"].to_numpy())
    # Each row's oracle is the probability the simulator drew its click with (found by its own key, by hand).
    prob = {(u, t, i): p for u, t, i, p in drawn.impressions.select("user", "timestamp", "item", "prob").iter_rows()}
    expect = [prob[(u, t, i)] for u, t, i in test.select("user_id", "event_ts", "item_id").iter_rows()]
    np.testing.assert_allclose(truth["oracle"].to_numpy(), expect)
    assert 0.5 < counts["history_oracle_auc"] < counts["oracle_auc"]
    with pytest.raises(ValueError, match="one to one"):
        exposure_probs(drawn.impressions.head(10), test)
    if kind == "successor":  # the plug-in reads the recency term through the drawn rotation
        assert drawn.turn is not None and counts["history_oracle_auc"] > auc(
            test["label"].to_numpy(), taste_history_oracle(drawn.model, test["item_seq"].list.to_array(
                MAX_LEN).to_numpy(), test["item_id"].to_numpy()))
    else:
        assert drawn.turn is None
    if kind == "activity":  # each user's own click bias, drawn N(0, 1); none for the padding user
        assert drawn.user_bias is not None and drawn.user_bias[0] == 0 and 0.8 < drawn.user_bias[1:].std() < 1.2
    else:
        assert drawn.user_bias is None


def test_variant_sets_at_most_one_click_model() -> None:
    for both in ({"interests": 2, "drift": 0.5}, {"interests": 2, "successor": True},
                 {"drift": 0.5, "successor": True}, {"successor": True, "activity": 1.0}):
        with pytest.raises(ValueError, match="at most one of interests, drift, successor and activity"):
            Variant("both", "test", SMALL_MULTI, **both)
    for bad in ({"activity": -1.0}, {"activity": math.inf}, {"drift": -0.5}):
        with pytest.raises(ValueError, match="finite and >= 0"):
            Variant("bad", "test", SMALL_MULTI, **bad)
    assert Variant("a", "test", SMALL_MULTI, activity=1.0).taste_model
    assert Variant("m", "test", SMALL_MULTI, interests=2).taste_model
    assert Variant("d", "test", SMALL_MULTI, drift=0.5).taste_model
    assert Variant("t", "test", SMALL_MULTI, successor=True).taste_model
    assert not Variant("s", "test", SMALL_MULTI).taste_model


def test_run_gives_the_stages_absolute_data_and_work_from_relative_ones(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --data data --work w` from another cwd: the stages (run with cwd = the repository) get absolute paths,
    in their arguments and in params.yaml's raw_dir."""
    folder = tmp_path / "data" / "v1"
    folder.mkdir(parents=True)
    pl.DataFrame({"label": [0, 1, 0, 1], "history_oracle": [0.1, 0.9, 0.2, 0.8],
                  "oracle": [0.1, 0.9, 0.2, 0.8]}).write_parquet(folder / "truth.parquet")
    seen = []

    def no_stages(folder: Path, work: Path, params: dict[str, Any], threads: int) -> dict[str, Any]:
        seen.append((folder, work, params))
        return {"test": {"rows": 4, "auc": 0.75, "logloss": 0.6}, "train": {"valid_auc": 0.7, "epochs_run": 1}}

    monkeypatch.setattr(variants, "run_stages", no_stages)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(variants.main, ["run", "--data", "data", "--work", "w"])
    assert result.exit_code == 0, result.output
    [(got_folder, work, params)] = seen
    assert got_folder == folder.resolve() and work == tmp_path.resolve() / "w" / "v1-default"
    assert params["data"]["raw_dir"] == str(folder.resolve() / "data")
