"""Training loop, batching, checkpoints, optimiser, regularisers, lr schedule and validation interval: invariants,
hand-computed values and a learnable toy problem."""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch

from model.ensemble import SeedEnsemble
from model.transformer_dcn import TransformerDCN
from pipeline.core.config import ModelConfig, ParamsError
from pipeline.core.distributed import SINGLE, Dist
from pipeline.core.io import DataError
from pipeline.training import loop
from pipeline.training.checkpoint import (
    DIGEST_ROWS,
    FitState,
    digest_rows,
    load_checkpoint,
    resume_fingerprint,
    resume_path,
    save_checkpoint,
)
from pipeline.training.data import make_batch, trim_history
from pipeline.training.loop import (
    batch_loss,
    fit,
    fit_ensemble,
    lr_at,
    make_optimizer,
    member_processes,
    optimizer_step,
)
from pipeline.training.predict import evaluate_split, predict_logits
from tests.conftest import (
    SMALL,
    feature_map,
    item_tables,
    toy_split,
    train_cfg,
)

CPU = torch.device("cpu")


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


@pytest.mark.parametrize("rows", [5, 256 + 5])
def test_fit_takes_one_step_per_batch_when_the_split_does_not_fill_a_batch(rows):
    """A train split smaller than a batch is one short batch, not an empty one before it (which divided the loss
    by 0 rows); 261 rows, one whole batch and a short one, is the control."""
    train, valid = toy_split(rows, seed=1), toy_split(60, seed=2)
    history = fit(new_model(), train, valid, train_cfg(epochs=1, batch_size=256, max_steps=0), CPU)
    assert [r["step"] for r in history] == [-(-rows // 256)]


def test_fit_is_deterministic_for_a_seed():
    train, valid = toy_split(500, seed=1), toy_split(200, seed=2)
    runs = []
    for _ in range(2):
        model = new_model()
        runs.append(fit(model, train, valid, train_cfg(epochs=2), CPU))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resumed_run_continues_to_the_uninterrupted_result(tmp_path, ema_decay: float):
    """A run stopped after 2 epochs and resumed (train.resume) from its epoch state, into a differently initialised
    model, ends with the same history and weights as 4 uninterrupted epochs (with a weight average, the average
    is carried over too); a state written under other params is ignored."""
    train, valid = toy_split(400, seed=1), toy_split(150, seed=2)
    whole = new_model()
    ref = fit(whole, train, valid, train_cfg(epochs=4, patience=5, ema_decay=ema_decay), CPU,
              resume_file=tmp_path / "ref.pt")
    state = tmp_path / "state.pt"
    fit(new_model(), train, valid, train_cfg(epochs=2, patience=5, ema_decay=ema_decay), CPU, resume_file=state)
    torch.manual_seed(123)
    resumed = TransformerDCN(SMALL, feature_map(), *item_tables())
    got = fit(resumed, train, valid, train_cfg(epochs=4, patience=5, resume=True, ema_decay=ema_decay), CPU,
              resume_file=state)
    assert got == ref
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    afresh = fit(new_model(), train, valid, train_cfg(epochs=1, learning_rate=1e-3, resume=True), CPU,
                 resume_file=state)
    assert [r["epoch"] for r in afresh] == [0]


def test_a_resume_state_of_other_data_is_not_resumed(tmp_path, caplog):
    """The fingerprint holds a digest of the data: a state left by a run on other item tables (another fit_pca,
    same width) or on other splits of the same sizes (another split seed) starts afresh, where resuming would
    carry the old run's weights, and its item tables (buffers), into the new model without a word."""
    train, valid = toy_split(400, seed=1), toy_split(150, seed=2)
    cfg = train_cfg(epochs=2, patience=5)
    saved = tmp_path / "saved.pt"
    fit(new_model(), train, valid, cfg, CPU, resume_file=saved)
    resumed = dataclasses.replace(cfg, epochs=3, resume=True)
    tags, mm = item_tables()
    torch.manual_seed(0)
    other_tables = TransformerDCN(SMALL, feature_map(), tags, mm * 2)
    for model, splits, resumes in ((other_tables, (train, valid), False),
                                   (new_model(), (toy_split(400, seed=3), toy_split(150, seed=4)), False),
                                   (new_model(), (train, valid), True)):
        state = tmp_path / "state.pt"
        state.write_bytes(saved.read_bytes())
        caplog.clear()
        with caplog.at_level("INFO"):
            fit(model, *splits, resumed, CPU, resume_file=state)
        assert any(m.startswith("resuming after pass 1") for m in caplog.messages) == resumes
        assert any("written for other train params or data; starting afresh" in m for m in caplog.messages) != resumes
    assert torch.equal(other_tables.item_mm, mm * 2)  # its own item table, not the one the state was written with


@pytest.mark.parametrize("n", [1, 2, 4095, 4096, 4097, 16_777_220, 100_000_007, 2**31 + 5])
def test_digest_rows_are_in_range_and_spread_evenly(n: int) -> None:
    """The rows of a split the resume digest reads: in 0..n-1 for every size (a float32 linspace gave n past 2^24,
    and every run on such a split failed before its first step), first and last included, strictly increasing."""
    rows = digest_rows(n)
    assert len(rows) == min(n, DIGEST_ROWS) and int(rows[0]) == 0 and int(rows[-1]) == n - 1
    assert bool((rows[1:] > rows[:-1]).all()) and rows.dtype == torch.int64


def test_a_resume_state_that_does_not_fit_restores_nothing(tmp_path, caplog):
    """A state with the right fingerprint that cannot be restored (tampered: a weight missing, a generator state of
    another size, not a mapping) warns and starts afresh, with the model, optimiser and generators as they were:
    load_state_dict copies what fits before it raises, and that part is put back."""
    train, valid = toy_split(300, seed=1), toy_split(100, seed=2)
    cfg = train_cfg(epochs=1, patience=5)
    state = tmp_path / "state.pt"
    fit(new_model(), train, valid, cfg, CPU, resume_file=state)
    good = torch.load(state, weights_only=True)
    missing = {**good, "model": {k: v for k, v in good["model"].items() if k != "item_tags"}}
    for tampered in (missing, {**good, "generator": torch.zeros(3, dtype=torch.uint8)},
                     {k: v for k, v in good.items() if k != "torch_rng"}):
        torch.save(tampered, state)
        model, ref = new_model(), new_model()
        opt = torch.optim.Adam(model.parameters())
        gen = torch.Generator().manual_seed(5)
        rng = torch.get_rng_state()
        caplog.clear()
        assert FitState.load(state, good["fingerprint"], model, opt, gen) is None
        assert any("resume state does not fit this run, starting afresh" in m for m in caplog.messages)
        for k, v in ref.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
        assert torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())
        assert torch.equal(torch.get_rng_state(), rng) and not opt.state_dict()["state"]
    torch.save([1, 2], state)
    assert FitState.load(state, good["fingerprint"], new_model(), opt, gen) is None


def test_resume_with_eval_steps_carries_an_interval_across_passes(tmp_path, monkeypatch):
    """8 steps a pass, 3 passes, validations after steps 5, 10, 15, 20 and 24. A run killed at its 4th validation
    (in the third pass) resumes from the state saved at the end of the second pass, in the middle of the interval
    15-20 (the loss of step 16 is carried over), and ends with the uninterrupted run's records and weights."""
    train, valid = toy_split(500, seed=1), toy_split(150, seed=2)
    cfg = train_cfg(epochs=3, patience=10, eval_steps=5, lr_decay=0.5)
    whole = new_model()
    ref = fit(whole, train, valid, cfg, CPU)
    assert [r["step"] for r in ref] == [5, 10, 15, 20, 24]
    calls = []

    def killed_at_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return evaluate_split(*args, **kwargs)

    state = tmp_path / "state.pt"
    with monkeypatch.context() as m:
        m.setattr(loop, "evaluate_split", killed_at_the_fourth)
        with pytest.raises(RuntimeError, match="killed"):
            fit(new_model(), train, valid, cfg, CPU, resume_file=state)
    saved = torch.load(state, weights_only=True)
    assert (saved["epoch"], saved["step"], saved["interval_rows"]) == (2, 16, 500 - 7 * 64)
    assert saved["interval_loss"] > 0
    torch.manual_seed(123)
    resumed = TransformerDCN(SMALL, feature_map(), *item_tables())
    assert fit(resumed, train, valid, dataclasses.replace(cfg, resume=True), CPU, resume_file=state) == ref
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)


def test_epochs_is_resume_neutral_only_when_it_shapes_nothing_before_the_end():
    train, valid = toy_split(50, seed=1), toy_split(20, seed=2)
    for kw, neutral in [({}, True), ({"lr_schedule": "cosine"}, False), ({"eval_steps": 3}, False),
                        ({"max_steps": 3}, False)]:
        short, long = train_cfg(epochs=2, **kw), train_cfg(epochs=4, **kw)
        model = new_model()
        assert (resume_fingerprint(short, model, train, valid) == resume_fingerprint(long, model, train, valid)
                ) == neutral, kw


def test_lr_at_matches_hand_values():
    # plateau: the plateau state itself, after a linear warm-up from base / warmup_steps
    assert [lr_at(s, 1e-3, "plateau", 1e-6, 100, 0) for s in (0, 50, 99)] == [1e-3, 1e-3, 1e-3]
    assert [lr_at(s, 1e-3, "plateau", 1e-6, 100, 4) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    # cosine: from base right after the warm-up to min_lr at the run's end; (1 + cos(0.2 pi)) / 2 = 0.9045085
    assert [lr_at(s, 1.0, "cosine", 0.0, 10, 0) for s in (0, 2, 5, 10)] == pytest.approx([1.0, 0.9045085, 0.5, 0.0])
    assert [lr_at(s, 1.0, "cosine", 0.1, 12, 2) for s in (0, 1, 2, 7, 12)] == pytest.approx([0.5, 1.0, 1.0, 0.55, 0.1])


def test_fit_takes_each_steps_lr_from_the_schedule():
    """Validating after every step, each record's lr is its step's: lr_at's cosine with warm-up over 2 passes of 5
    steps; under plateau, the previous lr times lr_decay after each validation without a better AUC."""
    train, valid = toy_split(300, seed=1), toy_split(150, seed=2)
    cfg = train_cfg(epochs=2, patience=100, eval_steps=1, lr_schedule="cosine", warmup_steps=3, min_lr=1e-4)
    history = fit(new_model(), train, valid, cfg, CPU)
    assert [r["lr"] for r in history] == [lr_at(s, 3e-3, "cosine", 1e-4, 10, 3) for s in range(10)]
    cfg = train_cfg(epochs=2, patience=100, eval_steps=1, lr_decay=0.5)
    history = fit(new_model(), train, valid, cfg, CPU)
    lr, best, expected = cfg.learning_rate, -math.inf, []
    for record in history:
        expected.append(lr)
        if record["valid_auc"] > best:
            best = record["valid_auc"]
        else:
            lr = max(lr * cfg.lr_decay, cfg.min_lr)
    assert [r["lr"] for r in history] == expected and expected[-1] < cfg.learning_rate


def test_eval_steps_validates_every_interval_and_the_last_partial_one():
    """500 rows in batches of 64: 8 steps a pass (the last of 52 rows), 16 in 2 passes. Every 5 steps means
    ceil(16 / 5) = 4 validations, after steps 5, 10, 15 and 16; each interval's train logloss weighted by its
    rows adds up to the per-pass values of the default run (no lr decay: both runs make the same updates)."""
    train, valid = toy_split(500, seed=1), toy_split(150, seed=2)
    stepped = fit(new_model(), train, valid, train_cfg(epochs=2, patience=10, lr_decay=1.0, eval_steps=5), CPU)
    assert len(stepped) == math.ceil(16 / 5)
    assert [(r["epoch"], r["step"]) for r in stepped] == [(0, 5), (1, 10), (1, 15), (1, 16)]
    passes = fit(new_model(), train, valid, train_cfg(epochs=2, patience=10, lr_decay=1.0), CPU)
    assert [(r["epoch"], r["step"]) for r in passes] == [(0, 8), (1, 16)]
    rows = {step: 52 if step % 8 == 0 else 64 for step in range(1, 17)}
    interval_rows = [sum(rows[s] for s in range(a + 1, b + 1)) for a, b in [(0, 5), (5, 10), (10, 15), (15, 16)]]
    assert sum(r["train_logloss"] * n for r, n in zip(stepped, interval_rows)) == pytest.approx(
        sum(r["train_logloss"] * 500 for r in passes), rel=1e-9)


def test_max_steps_ends_the_run_at_its_budget_mid_pass_and_validates_there():
    """500 rows in batches of 64 make 8 steps a pass: a budget of 11 steps stops in the second pass after
    step 11, validated there, whatever `epochs` allows; the first pass is the same as the unbudgeted run's."""
    train, valid = toy_split(500, seed=1), toy_split(150, seed=2)
    assert loop.run_steps(500, train_cfg(epochs=12, max_steps=11)) == 11
    assert loop.run_steps(500, train_cfg(epochs=2, max_steps=100)) == 16
    capped = fit(new_model(), train, valid, train_cfg(epochs=12, patience=10, max_steps=11), CPU)
    assert [(r["epoch"], r["step"]) for r in capped] == [(0, 8), (1, 11)]
    full = fit(new_model(), train, valid, train_cfg(epochs=2, patience=10), CPU)
    assert capped[0] == full[0]


def test_a_warm_up_longer_than_the_run_is_refused_naming_the_key():
    """With max_steps 0 the run's length is known from the train split only: a warm-up that does not end in it
    would keep the learning rate a fraction of its value all run (test AUC below chance, exit 0)."""
    loop.check_run_length(500, train_cfg(epochs=2, warmup_steps=16))  # 16 steps: the last one at learning_rate
    with pytest.raises(ParamsError, match=r"^train\.warmup_steps: a warm-up of 17 steps does not end within a run "
                                          r"of 16 steps \(2 passes over 500 train rows in batches of 64\)"):
        loop.check_run_length(500, train_cfg(epochs=2, warmup_steps=17))


def test_a_resumed_run_that_spent_its_step_budget_takes_no_more_steps(tmp_path):
    train, valid = toy_split(500, seed=1), toy_split(150, seed=2)
    cfg = train_cfg(epochs=12, patience=10, max_steps=11)
    state = tmp_path / "state.pt"
    ref = fit(new_model(), train, valid, cfg, CPU, resume_file=state)
    assert torch.load(state, weights_only=True)["step"] == 11
    again = fit(new_model(), train, valid, dataclasses.replace(cfg, resume=True), CPU, resume_file=state)
    assert again == ref


def large_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Every matrix N(0, 0.5) (padding rows kept at 0), so the embedding tables weigh in an L2 term as much as
    the rest."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for table in (model.item_emb, model.tag_emb, *model.context_emb.values()):
            table.weight[0] = 0.0
    return model.eval()  # no dropout: every loss below sees the same logits


EMBEDDING_TABLES = ("item_emb.", "tag_emb.", "context_emb.", "mm_proj.")


def test_regularizers_add_fuxictrs_l2_term_to_the_loss():
    """loss(with) - loss(without) = embedding_regularizer / 2 * sum of w^2 over the embedding tables (whole, with
    the frozen embedding's projection) + net_regularizer / 2 * sum of w^2 over every other parameter, biases
    included; the returned BCE sum (the reported train logloss) is unchanged."""
    model = large_weights(new_model())
    train, rows = toy_split(100, seed=1), torch.arange(64)
    plain, plain_sum = batch_loss(model, train, rows, train_cfg(), CPU)
    for emb, net in [(0.3, 0.0), (0.0, 0.05), (0.3, 0.05)]:
        loss, loss_sum = batch_loss(model, train, rows, train_cfg(embedding_regularizer=emb, net_regularizer=net), CPU)
        by_hand = sum((emb if n.startswith(EMBEDDING_TABLES) else net) / 2 * (p.detach().double() ** 2).sum().item()
                      for n, p in model.named_parameters())
        assert by_hand > 0.1
        assert (loss - plain).item() == pytest.approx(by_hand, rel=1e-5)
        assert loss_sum.item() == plain_sum.item()


def test_regularized_step_differs_by_lambda_times_the_weight():
    """One plain SGD step (lr 0.1, no clipping) from the same weights: the regularised update is the plain one
    minus 0.1 * lambda * w, lambda = 0.3 on the embedding tables and 0.05 elsewhere."""
    train, rows = toy_split(100, seed=1), torch.arange(64)
    after = {}
    for name, cfg in [("plain", train_cfg()), ("l2", train_cfg(embedding_regularizer=0.3, net_regularizer=0.05))]:
        model = large_weights(new_model())
        loss, _ = batch_loss(model, train, rows, cfg, CPU)
        optimizer_step(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, max_grad_norm=1e9)
        after[name] = {n: p.detach() for n, p in model.named_parameters()}
    for n, w in large_weights(new_model()).named_parameters():
        lam = 0.3 if n.startswith(EMBEDDING_TABLES) else 0.05
        torch.testing.assert_close(after["l2"][n], after["plain"][n] - 0.1 * lam * w.detach(), msg=n)


def test_adamw_step_decays_every_weight_beyond_the_adam_step():
    """Decoupled weight decay: from the same weights and gradient, one AdamW step is the Adam step minus
    lr * weight_decay * w."""
    train, rows = toy_split(100, seed=1), torch.arange(64)
    after = {}
    for name, cfg in [("adam", train_cfg()), ("adamw", train_cfg(optimizer="adamw", weight_decay=0.1))]:
        model = large_weights(new_model())
        loss, _ = batch_loss(model, train, rows, cfg, CPU)
        opt = make_optimizer(model, cfg)
        assert type(opt) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
        optimizer_step(model, opt, loss, cfg.max_grad_norm)
        after[name] = {n: p.detach() for n, p in model.named_parameters()}
    for n, w in large_weights(new_model()).named_parameters():
        torch.testing.assert_close(after["adamw"][n], after["adam"][n] - 3e-3 * 0.1 * w.detach(), msg=n)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_optimizer_step_equals_the_per_parameter_loop(optimizer: str):
    """The fused optimiser and the multi-tensor clip (optimizer_step) make the update of torch's plain
    per-parameter Adam/AdamW with the per-parameter clip, over three steps with clipping active."""
    train = toy_split(100, seed=1)
    cfg = train_cfg(optimizer=optimizer, weight_decay=0.1 if optimizer == "adamw" else 0.0, max_grad_norm=1e-3)
    plain_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
    fast, plain = large_weights(new_model()), large_weights(new_model())
    fast_opt = make_optimizer(fast, cfg)
    plain_opt = plain_cls(plain.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, foreach=False)
    assert fast_opt.defaults["fused"]
    for step in range(3):
        rows = torch.arange(32 * step, 32 * step + 32)
        optimizer_step(fast, fast_opt, batch_loss(fast, train, rows, cfg, CPU)[0], cfg.max_grad_norm)
        plain_opt.zero_grad()
        batch_loss(plain, train, rows, cfg, CPU)[0].backward()
        norm = torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.max_grad_norm, foreach=False)
        assert norm > 10 * cfg.max_grad_norm  # the clip acts
        plain_opt.step()
    for (n, w), v in zip(fast.named_parameters(), plain.parameters()):
        # within 1% of one step (lr 3e-3): elements with ~0 gradient round differently in the two kernels
        torch.testing.assert_close(w, v, rtol=0, atol=3e-5, msg=lambda m, n=n: f"{n}: {m}")


def test_fit_trains_with_the_embedding_dropout_rate():
    train, valid = toy_split(300, seed=1), toy_split(150, seed=2)
    plain = fit(new_model(), train, valid, train_cfg(epochs=1), CPU)
    model = new_model()
    dropped = fit(model, train, valid, train_cfg(epochs=1, embedding_dropout=0.25), CPU)
    assert model.embedding_dropout.p == 0.25 and dropped != plain


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


@pytest.mark.parametrize("field, value, key", [("embedding_dim", 0, "train.embedding_dim"),
                                               ("model", "mystery", "train.model"),
                                               ("dice", True, "train.dice")])
def test_a_checkpoint_config_is_validated_like_params(tmp_path, field, value, key):
    """A ModelConfig rebuilt from a checkpoint goes through the same checks as the train params: a tampered config
    is a one-line error naming the key, never a model built from impossible values."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, new_model(), feature_map())
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"][field] = value
    torch.save(ckpt, path)
    with pytest.raises(DataError, match=rf"model\.pt: not a valid mmctr checkpoint \({re.escape(key)}: "):
        load_checkpoint(path, CPU)


def build_small(arch: ModelConfig) -> TransformerDCN:
    """fit_ensemble's builder: one member over the toy tables (it seeds torch before each call)."""
    return TransformerDCN(arch, feature_map(), *item_tables())


def test_a_seed_ensemble_is_its_members_trained_apart_with_seed_plus_k():
    """Member 0 is exactly the single model (ensemble 1 returns that model itself), member k the single run at
    seed + k, and the ensemble scores the mean of its members' logits."""
    train, valid = toy_split(400, seed=1), toy_split(150, seed=2)
    single, [single_history] = fit_ensemble(build_small, train, valid, train_cfg(epochs=2), CPU)
    assert isinstance(single, TransformerDCN)
    shifted, [shifted_history] = fit_ensemble(build_small, train, valid, train_cfg(epochs=2, seed=2), CPU)
    ensemble, histories = fit_ensemble(build_small, train, valid, train_cfg(epochs=2, ensemble=2), CPU)
    assert isinstance(ensemble, SeedEnsemble) and ensemble.cfg.ensemble == 2
    assert histories == [single_history, shifted_history] and single_history != shifted_history
    for member, alone in zip(ensemble.members, (single, shifted)):
        assert member.cfg.ensemble == 1
        for k, v in alone.state_dict().items():
            torch.testing.assert_close(member.state_dict()[k], v, rtol=0, atol=0)
    split = toy_split(60, seed=5)
    members = [predict_logits(m, split, 16, CPU) for m in (single, shifted)]
    np.testing.assert_allclose(predict_logits(ensemble, split, 16, CPU), (members[0] + members[1]) / 2, rtol=1e-6)


@pytest.fixture
def torch_threads():
    """torch.set_num_threads, with torch's thread count put back after the test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_members_trained_side_by_side_equal_those_trained_one_after_another(tmp_path, torch_threads):
    """parallel_members on 2 threads: three members in two processes (this one trains 0 and 2, a spawned one 1,
    1 thread each) are, weight for weight and record for record, the members trained one after another at 1
    thread; each member keeps its own resume state."""
    train, valid = toy_split(400, seed=1), toy_split(150, seed=2)
    cfg = train_cfg(epochs=2, ensemble=3, ensemble_mix="recent_map", recent_interest=2, parallel_members=True,
                    transformer_dropout=0.1, net_dropout=0.1)
    torch_threads(2)
    assert member_processes(cfg, CPU, SINGLE) == 2
    side, side_histories = fit_ensemble(build_small, train, valid, cfg, CPU, model_path=tmp_path / "m.pt")
    assert torch.get_num_threads() == 2
    torch_threads(1)
    assert member_processes(cfg, CPU, SINGLE) == 1
    one_by_one = dataclasses.replace(cfg, parallel_members=False)
    alone, alone_histories = fit_ensemble(build_small, train, valid, one_by_one, CPU)
    assert side_histories == alone_histories and len({str(h) for h in side_histories}) == 3
    assert [m.cfg.recent_map for m in side.members] == [False, True, False]
    for a, b in zip(side.members, alone.members):
        for k, v in b.state_dict().items():
            torch.testing.assert_close(a.state_dict()[k], v, rtol=0, atol=0)
    assert all(resume_path(tmp_path / "m.pt", k).exists() for k in range(3))


def test_member_log_lines_tag_every_root_handler_and_put_its_formatter_back():
    """Inside member_log_lines([0, 2]) a line says "(member 1, 3)" after the logger's name, through every root
    handler; afterwards each handler formats as before (its own formatter, or none)."""
    own, bare = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(own), logging.StreamHandler(bare)]
    handlers[0].setFormatter(logging.Formatter("%(name)s| %(message)s"))
    logger = logging.getLogger("test_member_log_lines")
    logger.setLevel(logging.INFO)
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
    try:
        with loop.member_log_lines([0, 2]):
            logger.info("inside")
        logger.info("after")
    finally:
        for handler in handlers:
            root.removeHandler(handler)
    inside, after = own.getvalue().splitlines()
    assert re.fullmatch(r"\S+ \S+ test_member_log_lines \(member 1, 3\): inside", inside)
    assert after == "test_member_log_lines| after"
    assert bare.getvalue().splitlines()[0].endswith("test_member_log_lines (member 1, 3): inside")
    assert bare.getvalue().splitlines()[1] == "after"
    assert handlers[1].formatter is None


def test_member_processes_only_side_by_side_on_one_cpu_process_with_splits_in_memory(torch_threads):
    """One process per member up to torch's threads, and 1 (one after another) for a single model, with
    parallel_members off, on a GPU, under torchrun, or with streamed splits."""
    cfg = train_cfg(ensemble=3, parallel_members=True)
    torch_threads(16)
    assert member_processes(cfg, CPU, SINGLE) == 3
    assert member_processes(train_cfg(ensemble=1, parallel_members=True), CPU, SINGLE) == 1
    for key, value in (("parallel_members", False), ("data_loading", "stream")):
        assert member_processes(dataclasses.replace(cfg, **{key: value}), CPU, SINGLE) == 1
    assert member_processes(cfg, torch.device("cuda"), SINGLE) == 1
    assert member_processes(cfg, CPU, Dist(rank=0, world=2)) == 1


def test_members_train_one_after_another_when_shared_memory_is_too_small(tmp_path, monkeypatch, caplog, torch_threads):
    """With less free room in /dev/shm than the splits need (a container's 64 MiB), the members are not shared
    with other processes: a warning, then the same members one after another."""
    train, valid = toy_split(200, seed=1), toy_split(100, seed=2)
    monkeypatch.setattr(loop, "SHARED_MEMORY", tmp_path)
    assert loop.shared_memory_room(train, valid)  # a disk holds a toy split
    monkeypatch.setattr(loop, "SHARED_MEMORY", tmp_path / "none")
    assert loop.shared_memory_room(train, valid)  # no such folder: torch shares another way
    monkeypatch.setattr(loop, "SHARED_MEMORY", tmp_path)
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(64 << 20, 64 << 20, 0))
    assert not loop.shared_memory_room(train, valid)
    cfg = train_cfg(epochs=1, ensemble=2, parallel_members=True)
    monkeypatch.setattr(loop, "fit_members_side_by_side", None)  # would fail if called
    torch_threads(2)
    with caplog.at_level("WARNING"):
        ensemble, histories = fit_ensemble(build_small, train, valid, cfg, CPU)
    assert len(histories) == 2 and "too little room" in caplog.text


def build_failing_in_member_one(arch: ModelConfig) -> TransformerDCN:
    """A builder whose member 1 (recent_map under ensemble_mix) fails with a ValueError."""
    if arch.recent_map:
        raise ValueError("member 1 cannot be built")
    return build_small(arch)


def build_dying_in_member_one(arch: ModelConfig) -> TransformerDCN:
    """A builder whose member 1 ends its process at once with exit code 9, as if killed."""
    if arch.recent_map:
        os._exit(9)
    return build_small(arch)


@pytest.mark.parametrize("build, error, message", [
    (build_failing_in_member_one, ValueError, "member 1 cannot be built"),
    (build_dying_in_member_one, DataError, r"ensemble member\(s\) 1 ended without a result \(exit code 9"),
])
def test_a_member_failing_in_its_own_process_fails_the_run_here(build, error, message, torch_threads):
    """The error of a member trained in a spawned process is raised in this one (its own type and message); a
    process that dies without a result is a one-line DataError with its exit code."""
    cfg = train_cfg(epochs=1, ensemble=2, ensemble_mix="recent_map", recent_interest=2, parallel_members=True)
    torch_threads(2)
    with pytest.raises(error, match=message):
        fit_ensemble(build, toy_split(200, seed=1), toy_split(100, seed=2), cfg, CPU)


def test_a_seed_ensemble_checkpoint_round_trips(tmp_path):
    """The checkpoint records ensemble: 2 and every member's weights; load_checkpoint rebuilds the same scores."""
    torch.manual_seed(0)
    ensemble = SeedEnsemble(dataclasses.replace(SMALL, ensemble=2), [build_small(SMALL), build_small(SMALL)])
    path = tmp_path / "model.pt"
    save_checkpoint(path, ensemble, feature_map())
    assert torch.load(path, weights_only=True)["config"]["ensemble"] == 2
    loaded, _ = load_checkpoint(path, CPU)
    assert isinstance(loaded, SeedEnsemble) and len(loaded.members) == 2
    split = toy_split(40, seed=5)
    np.testing.assert_array_equal(predict_logits(loaded, split, 16, CPU), predict_logits(ensemble, split, 16, CPU))


def test_each_ensemble_member_resumes_from_its_own_state(tmp_path):
    """Member k keeps its state in resume_path(model, k); a rerun with train.resume finds both members finished
    and restores their best weights without a step, to the same scores."""
    train, valid = toy_split(400, seed=1), toy_split(150, seed=2)
    model_path = tmp_path / "model.pt"
    cfg = train_cfg(epochs=2, ensemble=2, resume=True)
    first, histories = fit_ensemble(build_small, train, valid, cfg, CPU, model_path=model_path)
    assert [p.name for p in (resume_path(model_path, 0), resume_path(model_path, 1))] == [
        ".model.pt.resume.pt", ".model.pt.resume.1.pt"]
    assert all(resume_path(model_path, k).is_file() for k in range(2))
    steps = []
    original = loop.optimizer_step
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "optimizer_step", lambda *a, **kw: steps.append(1) or original(*a, **kw))
        again, histories_again = fit_ensemble(build_small, train, valid, cfg, CPU, model_path=model_path)
    split = toy_split(40, seed=5)
    assert histories_again == histories and not steps
    np.testing.assert_array_equal(predict_logits(again, split, 16, CPU), predict_logits(first, split, 16, CPU))


def test_a_mixed_ensemble_gives_recent_map_to_every_second_member(tmp_path):
    """ensemble_mix: recent_map -> member k has recent_map exactly when k is odd and is otherwise the seed
    ensemble's member k (seed + k, trained alone); the checkpoint rebuilds each member's own architecture."""
    cfg = train_cfg(epochs=2, ensemble=2, recent_interest=2, ensemble_mix="recent_map")
    assert [cfg.arch.member(k).recent_map for k in range(4)] == [False, True, False, True]
    assert {(m.ensemble, m.ensemble_mix) for m in map(cfg.arch.member, range(4))} == {(1, "none")}
    train, valid = toy_split(400, seed=1), toy_split(150, seed=2)
    mixed, histories = fit_ensemble(build_small, train, valid, cfg, CPU)
    plain, mapped = mixed.members
    assert plain.recent_delta is None and mapped.recent_delta is not None
    assert mapped.recent_delta.weight.abs().sum() > 0  # A left zero: the map did not train
    alone, [alone_history] = fit_ensemble(build_small, train, valid, train_cfg(
        epochs=2, seed=2, recent_interest=2, recent_map=True), CPU)
    assert histories[1] == alone_history
    for k, v in alone.state_dict().items():
        torch.testing.assert_close(mapped.state_dict()[k], v, rtol=0, atol=0)
    path = tmp_path / "model.pt"
    save_checkpoint(path, mixed, feature_map())
    loaded, _ = load_checkpoint(path, CPU)
    assert loaded.cfg.ensemble_mix == "recent_map" and [m.cfg.recent_map for m in loaded.members] == [False, True]
    split = toy_split(40, seed=5)
    np.testing.assert_array_equal(predict_logits(loaded, split, 16, CPU), predict_logits(mixed, split, 16, CPU))


@pytest.mark.parametrize("kw, message", [
    ({"ensemble_mix": "mystery"}, "got 'mystery'"),
    ({"ensemble_mix": "recent_map", "recent_interest": 0}, "recent_interest, which is 0"),
    ({"ensemble_mix": "recent_map", "recent_interest": 2, "recent_map": True}, "already gives it to all"),
    ({"ensemble_mix": "recent_map", "model": "din"}, "model 'din' has none")])
def test_a_mixed_ensemble_that_cannot_be_built_names_the_key(kw, message):
    """...and only an ensemble has a second member: with ensemble 1 the mix leaves member 0, the model alone."""
    with pytest.raises(ParamsError, match=rf"train\.ensemble_mix: .*{re.escape(message)}"):
        train_cfg(ensemble=2, **kw)
    if kw["ensemble_mix"] == "recent_map":
        alone = train_cfg(ensemble=1, **{**kw, "ensemble_mix": "none"}).arch
        assert train_cfg(ensemble=1, **kw).arch.member(0) == alone


@pytest.mark.parametrize("value", [0, 17])
def test_an_ensemble_size_out_of_range_names_the_key(value):
    with pytest.raises(ParamsError, match=rf"train\.ensemble: must be in \[1, 16\], got {value}"):
        train_cfg(ensemble=value)
