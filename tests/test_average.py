"""train.ema_decay: the weight average against a plain per-step reference, its swap in and out of the model, and
what fit validates and keeps with it."""

from __future__ import annotations

import torch
from torch import nn

from model.transformer_dcn import TransformerDCN
from pipeline.training.average import WeightAverage
from pipeline.training.loop import fit
from pipeline.training.predict import evaluate_split
from tests.conftest import SMALL, feature_map, item_tables, toy_split, train_cfg

CPU = torch.device("cpu")


def test_average_follows_the_warmed_up_decay_of_a_plain_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(model, decay=0.9)
    ref = {k: p.detach().clone() for k, p in model.named_parameters()}
    for t in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        avg.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        for k, p in model.named_parameters():
            ref[k] = d * ref[k] + (1 - d) * p.detach()
    assert set(avg.shadow) == {"0.weight", "0.bias", "1.weight", "1.bias"}  # parameters only, not BN's buffers
    for k, v in ref.items():
        torch.testing.assert_close(avg.shadow[k], v)


def test_applied_swaps_the_average_in_and_restores_the_model_exactly():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    avg = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    avg.update(model)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 4)
    with avg.applied(model):
        torch.testing.assert_close(model.weight, avg.shadow["weight"], rtol=0, atol=0)
        inside = model(x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k])
    assert not torch.equal(inside, model(x))


def test_fit_validates_and_keeps_the_average():
    """Same seed and batches: with ema_decay the records differ from the raw run's, the kept weights score the best
    record's valid AUC, and they are not the raw weights that run reached."""
    train, valid = toy_split(800, seed=1), toy_split(200, seed=2)
    runs = {}
    for decay in (0.0, 0.95):
        torch.manual_seed(0)
        model = TransformerDCN(SMALL, feature_map(), *item_tables())
        history = fit(model, train, valid, train_cfg(epochs=3, patience=5, ema_decay=decay), CPU)
        best = max(r["valid_auc"] for r in history)
        assert evaluate_split(model, valid, 256, CPU)["auc"] == best
        runs[decay] = (history, model)
    raw, averaged = runs[0.0][0], runs[0.95][0]
    assert [r["train_logloss"] for r in raw] == [r["train_logloss"] for r in averaged]  # same updates
    assert [r["valid_auc"] for r in raw] != [r["valid_auc"] for r in averaged]  # other weights validated
