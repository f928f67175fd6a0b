"""Training loop, batching, checkpoints: invariants and a learnable toy problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.transformer_dcn import TransformerDCN
from pipeline.config import TrainConfig
from pipeline.io import DataError
from pipeline.training import (
    SplitTensors,
    evaluate_split,
    fit,
    load_checkpoint,
    make_batch,
    predict_logits,
    save_checkpoint,
    trim_history,
)
from tests.test_model import N_ITEMS, SMALL, feature_map, item_tables, random_histories

CPU = torch.device("cpu")


def toy_split(n: int, seed: int) -> SplitTensors:
    """Label = 1 when the target item's frozen embedding has the same sign in dimension 0 as the most recent
    history item's: learnable only by reading the history."""
    g = torch.Generator().manual_seed(seed)
    seq = random_histories(n, 20, seed=seed)
    seq[:, -1] = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    target = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    group = item_tables()[1][:, 0] > 0  # (N+1,) the same tables the models below are built with
    label = (group[target] == group[seq[:, -1]]).float()
    ctx = {k: torch.randint(0, 11, (n,), generator=g) for k in ("likes_level", "views_level")}
    return SplitTensors(seq, target, ctx, label, torch.arange(n) % 7)


def train_cfg(**kw) -> TrainConfig:
    base = dict(embedding_dim=8, transformer_layers=2, num_heads=2, dim_feedforward=16, first_k=4,
                cross_layers=2, dnn_hidden_units=(32, 16), mlp_hidden_units=(8,), transformer_dropout=0.0,
                net_dropout=0.0, learning_rate=3e-3, batch_size=64, eval_batch_size=256, epochs=12,
                patience=3, seed=1, device="cpu")
    return TrainConfig(**(base | kw))


def new_model() -> TransformerDCN:
    torch.manual_seed(0)
    return TransformerDCN(SMALL, feature_map(), *item_tables())


def test_trim_history_keeps_longest_real_history_and_first_k():
    seq = torch.tensor([[0, 0, 0, 0, 5, 6], [0, 0, 0, 0, 0, 7]])
    assert trim_history(seq, 1).tolist() == [[5, 6], [0, 7]]
    assert trim_history(seq, 3).tolist() == [[0, 5, 6], [0, 0, 7]]
    assert trim_history(seq, 10).shape == (2, 6)


def test_trimmed_batches_score_like_full_histories():
    model = new_model().eval()
    split = toy_split(50, seed=3)
    idx = torch.arange(50)
    full = {"item_seq": split.item_seq, "item_id": split.item_id, **split.context}
    torch.testing.assert_close(model(make_batch(split, idx, 4, CPU)), model(full), rtol=1e-5, atol=1e-6)


def test_fit_learns_history_dependent_labels_and_restores_best_epoch():
    train, valid = toy_split(3000, seed=1), toy_split(600, seed=2)
    model = new_model()
    history = fit(model, train, valid, train_cfg(), CPU)
    best = max(r["valid_auc"] for r in history)
    assert best > 0.8
    assert evaluate_split(model, valid, 256, CPU)["auc"] == pytest.approx(best, abs=1e-9)


def test_fit_is_deterministic_for_a_seed():
    train, valid = toy_split(500, seed=1), toy_split(200, seed=2)
    runs = []
    for _ in range(2):
        model = new_model()
        runs.append(fit(model, train, valid, train_cfg(epochs=2), CPU))
    assert runs[0] == runs[1]


def test_resumed_run_continues_to_the_uninterrupted_result(tmp_path):
    """A run stopped after 2 epochs and resumed (train.resume) from its epoch state, into a differently initialised
    model, ends with the same history and weights as 4 uninterrupted epochs; a state written under other params
    is ignored."""
    train, valid = toy_split(400, seed=1), toy_split(150, seed=2)
    whole = new_model()
    ref = fit(whole, train, valid, train_cfg(epochs=4, patience=5), CPU, resume_file=tmp_path / "ref.pt")
    state = tmp_path / "state.pt"
    fit(new_model(), train, valid, train_cfg(epochs=2, patience=5), CPU, resume_file=state)
    torch.manual_seed(123)
    resumed = TransformerDCN(SMALL, feature_map(), *item_tables())
    got = fit(resumed, train, valid, train_cfg(epochs=4, patience=5, resume=True), CPU, resume_file=state)
    assert got == ref
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    afresh = fit(new_model(), train, valid, train_cfg(epochs=1, learning_rate=1e-3, resume=True), CPU,
                 resume_file=state)
    assert [r["epoch"] for r in afresh] == [0]


def test_nan_loss_stops_with_the_step():
    train, valid = toy_split(200, seed=1), toy_split(100, seed=2)
    model = new_model()
    with torch.no_grad():
        model.head[-1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 0"):
        fit(model, train, valid, train_cfg(epochs=1), CPU)


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    model = new_model().eval()
    fmap = feature_map()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, fmap)
    raw = torch.load(path, weights_only=True)  # plain types only: loads without unpickling code
    assert set(raw) == {"model", "config", "feature_map"}
    loaded, fmap2 = load_checkpoint(path, CPU)
    split = toy_split(40, seed=5)
    np.testing.assert_array_equal(predict_logits(loaded, split, 16, CPU), predict_logits(model, split, 16, CPU))
    assert fmap2 == fmap


def test_bad_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"bad\.pt: not a valid mmctr checkpoint"):
        load_checkpoint(bad, CPU)
    with pytest.raises(DataError, match=r"checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt", CPU)
