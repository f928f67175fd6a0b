"""pipeline/training/calibrate.py and ModelConfig new_item_offset: the logit offset of items new to the train split,
fitted on valid by maximum a posteriori, added to exactly those items' logits, kept in the checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from model.factory import build_model
from pipeline.core.metrics import sigmoid
from pipeline.training.calibrate import MIN_ROWS, PRIOR_SD, fit_new_item_offset, fit_offset, new_item_rows
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training.data import SplitTensors, new_items
from pipeline.training.predict import predict_logits
from tests.conftest import N_ITEMS, SMALL, feature_map, item_tables, random_histories

OFFSET = dataclasses.replace(SMALL, new_item_offset=True)
NEW = new_items(torch.arange(1, N_ITEMS // 2 + 1), N_ITEMS + 1)  # items above N/2 are new


def objective(z: np.ndarray, y: np.ndarray, d: float, prior_sd: float = PRIOR_SD) -> float:
    """The log posterior fit_offset maximises, written out: sum of log-likelihoods at logit z + d, minus the prior."""
    p = 1.0 / (1.0 + np.exp(-(z + d)))
    return float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)) - d**2 / (2 * prior_sd**2))


def test_fit_offset_is_the_maximum_of_the_log_posterior_against_a_grid_search() -> None:
    rng = np.random.default_rng(0)
    for planted, n in ((0.8, 3000), (-1.5, 500), (0.0, 1000), (4.0, 400)):
        z = rng.normal(-1.0, 1.2, n)
        y = (rng.random(n) < sigmoid(z + planted)).astype(np.float32)
        rows = rng.random(n) < 0.7
        d = fit_offset(z, y, rows, min_rows=10)
        grid = np.arange(-6, 6, 1e-3)
        best = grid[np.argmax([objective(z[rows], y[rows], g) for g in grid])]
        assert abs(d - best) <= 1e-3, (planted, d, best)


def test_fit_offset_recovers_a_planted_offset_and_the_prior_pulls_a_small_sample_toward_zero() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(-1.0, 1.0, 200_000)
    y = (rng.random(len(z)) < sigmoid(z + 0.6)).astype(np.float32)
    everything = np.ones(len(z), dtype=bool)
    assert fit_offset(z, y, everything) == pytest.approx(0.6, abs=0.02)
    few = np.zeros(len(z), dtype=bool)
    few[:300] = True
    assert 0 < fit_offset(z, y, few, prior_sd=0.05) < 0.5 * fit_offset(z, y, few, prior_sd=100.0)


def test_fit_offset_is_zero_for_too_few_rows_or_one_class() -> None:
    rng = np.random.default_rng(2)
    z, y = rng.normal(0, 1, 1000), (rng.random(1000) < 0.9).astype(np.float32)
    rows = np.zeros(1000, dtype=bool)
    rows[:MIN_ROWS - 1] = True
    assert fit_offset(z, y, rows) == 0.0
    rows[:MIN_ROWS] = True
    assert fit_offset(z, y, rows) != 0.0
    assert fit_offset(z, np.ones(1000), np.ones(1000, dtype=bool)) == 0.0


def split(n: int, seed: int) -> SplitTensors:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    ctx = {k: torch.randint(0, 11, (n,), generator=g) for k in ("likes_level", "views_level")}
    return SplitTensors(random_histories(n, 20, seed=seed), target, ctx, (torch.rand(n, generator=g) < 0.3).float(),
                        torch.arange(n) % 7)


def model_with_offset(cfg=OFFSET) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg, feature_map(), *item_tables(), item_new=NEW).eval()


@pytest.mark.parametrize("ensemble", [1, 3])
def test_the_offset_moves_exactly_the_logits_of_rows_whose_target_is_new(ensemble: int) -> None:
    model = model_with_offset(dataclasses.replace(OFFSET, ensemble=ensemble))
    rows = split(300, 0)
    before = predict_logits(model, rows, 64, torch.device("cpu"))
    for m in model.modules():
        if hasattr(m, "new_item_logit"):
            m.new_item_logit.fill_(0.75)
    after = predict_logits(model, rows, 64, torch.device("cpu"))
    new = NEW[rows.item_id].numpy()
    assert 0 < new.sum() < len(new)
    np.testing.assert_allclose(after - before, 0.75 * new, atol=1e-5)
    assert new_item_rows(model, rows).tolist() == new.tolist()


def test_fit_new_item_offset_sets_every_member_and_returns_the_valid_logits_of_the_model_with_it() -> None:
    model = model_with_offset(dataclasses.replace(OFFSET, ensemble=2))
    valid = split(2000, 1)
    new = NEW[valid.item_id].numpy()
    # the model says 0.5 for every row; new items are clicked more often: the offset is their log-odds, shrunk
    clicked = np.where(new, np.arange(len(new)) % 5 < 3, np.arange(len(new)) % 5 < 1)
    valid = dataclasses.replace(valid, label=torch.from_numpy(clicked).float())
    for member in model.members:
        member.head[-1].weight.data.zero_()
        member.head[-1].bias.data.zero_()
    offset, logits = fit_new_item_offset(model, valid, 256, torch.device("cpu"))
    assert offset == float(np.float32(fit_offset(np.zeros(len(new)), valid.label.numpy(), new)))
    assert offset > 0.3
    assert [float(m.new_item_logit) for m in model.members] == [offset, offset]
    np.testing.assert_allclose(logits, predict_logits(model, valid, 256, torch.device("cpu")), atol=1e-6)
    # fitted again, it starts from 0, not from the offset already set
    assert fit_new_item_offset(model, valid, 256, torch.device("cpu"))[0] == pytest.approx(offset)


def test_checkpoint_keeps_the_new_item_table_and_offset(tmp_path: Path) -> None:
    model = model_with_offset()
    model.new_item_logit.fill_(-0.4)
    save_checkpoint(tmp_path / "model.pt", model, feature_map())
    loaded, _ = load_checkpoint(tmp_path / "model.pt", torch.device("cpu"))
    assert torch.equal(loaded.item_new, NEW) and float(loaded.new_item_logit) == pytest.approx(-0.4)
    rows = split(200, 3)
    np.testing.assert_allclose(predict_logits(loaded, rows, 64, torch.device("cpu")),
                               predict_logits(model, rows, 64, torch.device("cpu")))


def test_a_checkpoint_from_before_the_switch_loads_without_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    old = build_model(SMALL, feature_map(), *item_tables()).eval()
    save_checkpoint(tmp_path / "model.pt", old, feature_map())
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    del ckpt["config"]["new_item_offset"]
    torch.save(ckpt, tmp_path / "old.pt")
    loaded, _ = load_checkpoint(tmp_path / "old.pt", torch.device("cpu"))
    assert not loaded.cfg.new_item_offset and not hasattr(loaded, "item_new")


def test_the_switch_needs_a_bool_table_of_every_item_row() -> None:
    for table, got in ((None, "got none"), (NEW[:5], r"got a \(5,\) torch.bool table"),
                       (NEW.long(), r"got a \(61,\) torch.int64 table")):
        with pytest.raises(ValueError, match=rf"^train.new_item_offset needs a bool table of new items for 61 item "
                                             rf"rows, {got}$"):
            build_model(OFFSET, feature_map(), *item_tables(), item_new=table)


def test_new_items_are_the_items_no_train_row_has_as_its_target() -> None:
    got = new_items(np.array([3, 3, 1, 0]), 6)  # a padding id 0 among the targets does not make row 0 old or new
    assert got.tolist() == [False, False, True, False, True, True]
    with pytest.raises(ValueError, match="item ids reach 6, the item table has 6 rows"):
        new_items(np.array([6]), 6)
