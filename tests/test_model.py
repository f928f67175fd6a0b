"""The CTR models: Transformer+DCNv2 (widths from the feature map, padding masking, the winning configuration),
its ablations, DIN and the mean-pool MLP (against per-row references), through build_model; embedding dropout."""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np
import pytest
import torch

from model.din import DIN
from model.factory import MODELS, build_model
from model.layers import (
    COUNT_WINDOW_SIZES,
    COUNT_WINDOWS,
    HISTORY_LENGTH_CAP,
    LENGTH_BUCKETS,
    SIMILARITY_STEPS,
    CrossNetV2,
    Dice,
    Dropout,
    Encoder,
    history_cosines,
    inverse_norms,
    keep_mask,
    keep_mask_reference,
    length_buckets,
    masked_mean,
    max_history_cosine,
    repeat_counts,
    similarity_buckets,
    similarity_counts,
    target_attention,
)
from model.meanpool import MeanPool
from model.transformer_dcn import TransformerDCN
from pipeline.core.config import (
    PLAIN_SWITCHES,
    ModelConfig,
    ParamsError,
    TrainConfig,
    from_dict,
)
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training.data import (
    SplitTensors,
    exposure_levels,
    split_tables,
    user_keys,
)
from pipeline.training.loop import regularization_loss
from tests.conftest import (
    MM,
    N_ITEMS,
    N_TAGS,
    SMALL,
    check_training_dropout,
    feature_map,
    item_tables,
    random_histories,
    small_model,
)


def batch(seq: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = seq.shape[0]
    return {"item_seq": seq, "item_id": torch.randint(1, N_ITEMS + 1, (b,), generator=g),
            "likes_level": torch.randint(0, 11, (b,), generator=g),
            "views_level": torch.randint(0, 11, (b,), generator=g),
            "user_id": torch.randint(0, 60, (b,), generator=g)}


def test_output_is_one_logit_per_row_and_dcn_width_follows_feature_map():
    model = small_model()
    out = model(batch(random_histories(5, 20)))
    assert out.shape == (5,) and out.dtype == torch.float32
    item_dim = 2 * 8 + MM
    assert model.cross.layers[0].in_features == 2 * 8 + item_dim + (4 + 1) * 2 * item_dim


def test_padded_positions_change_nothing():
    """Extra left padding, or garbage embeddings for the padding item, leave every output unchanged."""
    model = small_model()
    seq = random_histories(6, 10)
    b = batch(seq)
    ref = model(b)
    padded = dict(b, item_seq=torch.nn.functional.pad(seq, (15, 0)))
    torch.testing.assert_close(model(padded), ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # what a padding row would carry if padding leaked into attention or pooling
        model.item_emb.weight[0] = 5.0
        model.item_mm[0] = 3.0
    # the padding item's own embedding only matters through masked positions, so outputs must not move
    torch.testing.assert_close(model(padded), ref, rtol=1e-5, atol=1e-6)


def test_history_content_matters():
    """With the correct mask the model reads the history (the published inverted mask did not)."""
    model = small_model()
    seq = random_histories(4, 12, seed=3)
    seq[:, -5:] = torch.arange(1, 6)
    other = seq.clone()
    other[:, -5:] = torch.arange(30, 35)
    assert not torch.allclose(model(batch(seq)), model(batch(other)))


def test_empty_history_is_finite_and_batch_independent():
    model = small_model()
    seq = random_histories(4, 10)
    seq[0] = 0
    full = model(batch(seq))
    alone = model({k: v[:1] for k, v in batch(seq).items()})
    assert torch.isfinite(full).all()
    torch.testing.assert_close(full[:1], alone, rtol=1e-5, atol=1e-6)


def test_padding_item_embeds_to_zero():
    model = small_model()
    assert not model.embed_items(torch.tensor([0])).any()


def test_cross_net_matches_formula():
    torch.manual_seed(0)
    net = CrossNetV2(6, 2)
    x0 = torch.randn(3, 6)
    x = x0
    for layer in net.layers:
        x = x0 * (x @ layer.weight.T + layer.bias) + x
    torch.testing.assert_close(net(x0), x)


def test_low_rank_cross_net_is_the_full_formula_with_w_equal_u_v():
    torch.manual_seed(0)
    net = CrossNetV2(6, 2, rank=2)
    assert sum(p.numel() for p in net.parameters()) == 2 * (6 * 2 + 2 * 6 + 6)
    x0 = torch.randn(3, 6)
    x = x0
    for down, up in net.layers:
        w = up.weight @ down.weight  # (6, 6) of rank 2
        assert torch.linalg.matrix_rank(w) == 2
        x = x0 * (x @ w.T + up.bias) + x
    torch.testing.assert_close(net(x0), x)


def test_masked_mean_ignores_padding():
    emb = torch.tensor([[[1.0], [3.0], [100.0]]])
    ids = torch.tensor([[4, 7, 0]])
    torch.testing.assert_close(masked_mean(emb, ids), torch.tensor([[2.0]]))


def test_winning_configuration_forward_backward():
    """The 1st-place configuration: embedding 64, 128-d frozen embedding, first_k 16 -> DCN input 9,088 wide."""
    cfg = ModelConfig(embedding_dim=64, mm_dim=0, transformer_layers=2, dim_feedforward=256, transformer_dropout=0.2,
                      first_k=16, mean_interest=False, recent_interest=0, cross_rank=0,
                      dnn_hidden_units=(1024, 512, 256), net_dropout=0.2, exposure_levels=0, user_bias=False,
                      user_interest=False, history_length=False, history_similarity=False, similarity_count=False,
                      repeat_count=False, new_item_offset=False, ensemble=1)
    n_items = 50
    fmap = feature_map(max_len=100, mm=128, n_items=n_items)
    g = torch.Generator().manual_seed(0)
    tags = torch.randint(0, N_TAGS + 1, (n_items + 1, 3), generator=g)
    emb = torch.randn(n_items + 1, 128, generator=g)
    torch.manual_seed(0)
    model = TransformerDCN(cfg, fmap, tags, emb)
    assert model.cross.layers[0].in_features == 9088
    assert sum(p.numel() for p in model.cross.parameters()) == 3 * (9088 * 9088 + 9088)
    seq = torch.randint(1, n_items + 1, (2, 100))
    seq[1, :90] = 0
    b = {"item_seq": seq, "item_id": torch.tensor([3, 4]), "likes_level": torch.tensor([1, 2]),
         "views_level": torch.tensor([3, 4])}
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), torch.tensor([1.0, 0.0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.item_emb.weight.grad is not None and model.cross.layers[0].weight.grad.abs().sum() > 0
    assert not model.item_emb.weight.grad[0].any()  # padding row gets no gradient


def test_item_table_size_must_match_feature_map():
    tags, emb = item_tables(n_items=10)
    with pytest.raises(ValueError, match="item tables have 11/11 rows"):
        TransformerDCN(SMALL, feature_map(), tags, emb)


# --------------------------------------------------------------------------------------------------
# Ablations and DIN: every variant goes through build_model, as training and load_checkpoint do.

VARIANTS = {
    "transformer_dcn": SMALL,
    "no_transformer": dataclasses.replace(SMALL, use_transformer=False),
    "no_dcn": dataclasses.replace(SMALL, use_dcn=False),
    "low_rank_dcn": dataclasses.replace(SMALL, cross_rank=3),
    "mean_interest": dataclasses.replace(SMALL, mean_interest=True),
    "no_mm_emb": dataclasses.replace(SMALL, use_mm_emb=False),
    "din": dataclasses.replace(SMALL, model="din", din_attention_units=(6, 5)),
    "din_dice": dataclasses.replace(SMALL, model="din", din_attention_units=(6, 5), dice=True),
    "din_no_mm_emb": dataclasses.replace(SMALL, model="din", use_mm_emb=False, dice=True),
    "meanpool": dataclasses.replace(SMALL, model="meanpool"),
    "meanpool_no_mm_emb": dataclasses.replace(SMALL, model="meanpool", use_mm_emb=False),
}


def built(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg, feature_map(), *item_tables())


def nonzero_dice_stats(model: torch.nn.Module) -> None:
    """Give every Dice non-trivial running statistics and alpha, as after training, so eval-mode tests see them."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Dice):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.alpha.copy_(torch.randn(m.alpha.shape, generator=g))


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_forward_backward(name: str):
    cfg = VARIANTS[name]
    model = built(cfg).train()
    assert model.cfg == cfg and {"item_tags", "item_mm"} <= dict(model.named_buffers()).keys()
    seq = random_histories(6, 10)
    seq[0] = 0  # an empty history in a training batch
    out = model(batch(seq))
    assert out.shape == (6,) and out.dtype == torch.float32
    torch.nn.functional.binary_cross_entropy_with_logits(out, torch.tensor([1.0, 0, 1, 0, 1, 0])).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
    assert grads["item_emb.weight"][1:].abs().sum() > 0 and not grads["item_emb.weight"][0].any()
    # short batches (L < first_k) are accepted
    assert model.eval()(batch(seq[:, -2:])).shape == (6,)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_padding_invariance(name: str):
    """Extra left padding and a garbage padding-item embedding change no output, and in eval mode a row's logit
    does not depend on the other rows of its batch (their lengths set how far it is padded)."""
    model = built(VARIANTS[name]).eval()
    nonzero_dice_stats(model)
    seq = random_histories(6, 10)
    seq[2] = 0
    b = batch(seq)
    with torch.no_grad():
        ref = model(b)
        padded = dict(b, item_seq=torch.nn.functional.pad(seq, (15, 0)))
        torch.testing.assert_close(model(padded), ref, rtol=1e-5, atol=1e-6)
        model.item_emb.weight[0] = 5.0
        model.item_mm[0] = 3.0
        torch.testing.assert_close(model(padded), ref, rtol=1e-5, atol=1e-6)
        for row in range(6):
            length = max(int((seq[row] != 0).sum()), 1)
            alone = {k: v[row:row + 1] for k, v in b.items()} | {"item_seq": seq[row:row + 1, -length:]}
            torch.testing.assert_close(model(alone), ref[row:row + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["din", "din_dice"])
def test_din_padding_invariance_in_training_mode(name: str):
    """Only real positions feed DIN's attention MLP, so padding does not enter Dice's batch statistics."""
    model = built(dataclasses.replace(VARIANTS[name], net_dropout=0.0)).train()
    seq = random_histories(6, 10)
    b = batch(seq)
    ref = model(b)
    torch.testing.assert_close(model(dict(b, item_seq=torch.nn.functional.pad(seq, (7, 0)))), ref,
                               rtol=1e-5, atol=1e-6)


def test_ablations_remove_their_part():
    fmap, (tags, mm) = feature_map(), item_tables()
    plain = built(SMALL)
    assert isinstance(plain, TransformerDCN) and plain.encoder is not None and plain.cross is not None
    no_tf = built(VARIANTS["no_transformer"])
    assert no_tf.encoder is None and not any("encoder" in n for n, _ in no_tf.named_parameters())
    # only the encoder goes: the sequence output keeps its width
    assert no_tf.dnn[0].in_features == plain.dnn[0].in_features
    no_dcn = built(VARIANTS["no_dcn"])
    assert no_dcn.cross is None and no_dcn.head[0][0].in_features == SMALL.dnn_hidden_units[-1]
    no_mm = built(VARIANTS["no_mm_emb"]).eval()
    assert no_mm.mm_proj is None and no_mm.item_dim == 2 * SMALL.embedding_dim
    assert no_mm.embed_items(torch.tensor([3])).shape == (1, 2 * SMALL.embedding_dim)
    with torch.no_grad():  # the frozen embedding is not read at all
        before = no_mm(batch(random_histories(4, 10)))
        no_mm.item_mm.normal_()
        torch.testing.assert_close(no_mm(batch(random_histories(4, 10))), before)
    din = build_model(VARIANTS["din"], fmap, tags, mm)
    assert isinstance(din, DIN) and din.item_dim == 2 * SMALL.embedding_dim + MM


def test_no_transformer_sequence_output_is_the_zeroed_tokens():
    """Without the encoder the k most recent slots hold [e_item_i || e_target] at real positions, 0 at padding."""
    model = built(dataclasses.replace(SMALL, use_transformer=False, concat_max_pool=False)).eval()
    seq = torch.tensor([[0, 0, 0, 5, 9], [0, 0, 0, 0, 0]])
    target_id = torch.tensor([3, 4])
    with torch.no_grad():
        history, target = model.embed_items(seq), model.embed_items(target_id)
        out = model.sequence_output(history, target, seq == 0).view(2, SMALL.first_k, -1)
    expected = torch.zeros_like(out)
    expected[0, -2:] = torch.cat([history[0, -2:], target[0].expand(2, -1)], dim=-1)
    torch.testing.assert_close(out, expected)


def din_reference(model: DIN, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row and per real position, one attention-MLP call each: (pooled (B, I), logits (B,))."""
    pooled, logits = [], []
    for row in range(b["item_id"].shape[0]):
        t = model.embed_items(b["item_id"][row])  # (I,)
        acc = torch.zeros_like(t)
        for item in b["item_seq"][row].tolist():
            if item != 0:
                h = model.embed_items(torch.tensor(item))
                acc = acc + model.attention(torch.cat([t, h, t - h, t * h])[None])[0, 0] * h
        context = [model.context_emb[n](b[n][row]) for n in model.context_names]
        pooled.append(acc)
        logits.append(model.dnn(torch.cat([*context, t, acc])[None])[0, 0])
    return torch.stack(pooled), torch.stack(logits)


def spread_weights(model: torch.nn.Module) -> None:
    """Every matrix drawn from N(0, 0.5) (call under no_grad), the item and tag padding rows kept at zero."""
    for p in model.parameters():
        if p.dim() == 2:
            p.normal_(0, 0.5)
    model.item_emb.weight[0] = 0.0
    model.tag_emb.weight[0] = 0.0


@pytest.mark.parametrize("name", ["din", "din_dice", "din_no_mm_emb"])
def test_din_matches_per_row_reference(name: str):
    model = built(VARIANTS[name]).eval()
    nonzero_dice_stats(model)
    with torch.no_grad():  # larger embeddings than the 1e-4 init so attention weights are far from constant
        spread_weights(model)
        seq = random_histories(5, 9)
        seq[1] = 0
        b = batch(seq)
        ref_pooled, ref_logits = din_reference(model, b)
        row, col = (seq != 0).nonzero(as_tuple=True)
        pooled = model.attend(model.embed_items(seq[row, col]), row, model.embed_items(b["item_id"]))
        assert ref_pooled.abs().max() > 1e-2 and not pooled[1].any()
        torch.testing.assert_close(pooled, ref_pooled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(b), ref_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["din", "din_dice", "din_no_mm_emb"])
def test_din_factored_attention_matches_the_concatenated_form_in_training(name: str):
    """attention_scores (first Linear split by input block) gives attention_reference's scores and the same
    gradients for every parameter, in training mode (Dice on batch statistics)."""
    model = built(VARIANTS[name]).train()
    with torch.no_grad():
        spread_weights(model)
    g = torch.Generator().manual_seed(5)
    t, h = torch.randn(4, model.item_dim, generator=g), torch.randn(11, model.item_dim, generator=g)
    row = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 3, 3, 3])  # row 2 has no history
    results = []
    for scores in (model.attention_scores, model.attention_reference):
        model.zero_grad()
        out = scores(t, h, row)
        (out * torch.linspace(-1, 1, out.shape[0])).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.attention.named_parameters()}))
    (out, grads), (ref, ref_grads) = results
    assert out.shape == (11,) and ref.std() > 1e-2
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("rows", [3, 7])  # 36 ids: the distinct ones embedded; 84 > 61 item rows: the whole table
@pytest.mark.parametrize("name", ["transformer_dcn", "din", "meanpool", "no_mm_emb"])
def test_embed_items_once_per_item_matches_per_occurrence(name: str, rows: int):
    """embed_items (each item's vector computed once, then gathered) equals item_vectors of every occurrence,
    values and the gradients of every embedding parameter; with exposure levels too."""
    cfg = dataclasses.replace(VARIANTS[name], exposure_levels=3)
    torch.manual_seed(0)
    exposure = exposure_levels(torch.randint(1, N_ITEMS + 1, (200,)), N_ITEMS + 1, 3)
    model = build_model(cfg, feature_map(), *item_tables(), None, exposure).train()
    with torch.no_grad():
        spread_weights(model)
    ids = random_histories(rows, 12)
    ids[2] = 0
    assert (ids.numel() >= N_ITEMS + 1) == (rows == 7)
    weight = torch.randn(*ids.shape, model.item_dim)
    results = []
    for embed in (model.embed_items, model.item_vectors):
        model.zero_grad()
        out = embed(ids)
        (out * weight).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out, grads), (ref, ref_grads) = results
    assert out.shape == (rows, 12, model.item_dim)
    torch.testing.assert_close(out, ref)
    assert grads.keys() == ref_grads.keys() and "item_emb.weight" in grads
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-4, msg=n)  # float order


@pytest.mark.parametrize("name", ["transformer_dcn", "din"])
def test_gradients_are_the_same_bits_on_every_run_with_threads(name: str):
    """With 2 threads and a batch past torch's parallel grain, a forward + backward gives bit-identical gradients
    every time: no op on the path sums with atomics (float advanced indexing's backward does on the CPU), so a
    resumed or repeated training run reproduces its weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = built(VARIANTS[name]).eval()
        b = batch(torch.randint(1, N_ITEMS + 1, (256, 40), generator=torch.Generator().manual_seed(4)))
        grads = []
        for _ in range(5):
            model.zero_grad()
            model(b).sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def meanpool_reference(model: MeanPool, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: u = plain average of the real history items' embeddings (zeros without any), then the deep MLP over
    [context || t || u || t * u]: (u (B, I), logits (B,))."""
    users, logits = [], []
    for row in range(b["item_id"].shape[0]):
        t = model.embed_items(b["item_id"][row])  # (I,)
        real = [model.embed_items(torch.tensor(item)) for item in b["item_seq"][row].tolist() if item != 0]
        u = sum(real) / len(real) if real else torch.zeros_like(t)
        context = [model.context_emb[n](b[n][row]) for n in model.context_names]
        users.append(u)
        logits.append(model.dnn(torch.cat([*context, t, u, t * u])[None])[0, 0])
    return torch.stack(users), torch.stack(logits)


@pytest.mark.parametrize("name", ["meanpool", "meanpool_no_mm_emb"])
def test_meanpool_matches_per_row_reference(name: str):
    """u, read off the deep MLP's input, is the masked mean of the history's item embeddings, and the logit is the
    MLP over [context || t || u || t * u]."""
    model = built(VARIANTS[name]).eval()
    assert isinstance(model, MeanPool)
    inputs = []
    model.dnn.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    with torch.no_grad():  # larger embeddings than the 1e-4 init so the vectors are far from zero
        spread_weights(model)
        seq = random_histories(5, 9)
        seq[1] = 0
        b = batch(seq)
        logits = model(b)
        ref_users, ref_logits = meanpool_reference(model, b)
    i, c = model.item_dim, model.context_dim
    users = inputs[0][:, c + i:c + 2 * i]  # (B, I): the u block of [context || t || u || t * u]
    assert inputs[0].shape == (5, c + 3 * i) and logits.shape == (5,)
    assert ref_users.abs().max() > 1e-2 and not users[1].any()
    torch.testing.assert_close(users, ref_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)


def dcn_inputs(cfg: ModelConfig, seq: torch.Tensor) -> tuple[torch.nn.Module, dict, torch.Tensor, torch.Tensor]:
    """The DCN input (x0) of a model built from `cfg` and of SMALL given the same weights where the two share a
    parameter, on batch(seq): (the model (eval, spread weights), the batch, its x0, SMALL's x0)."""
    model, plain = built(cfg).eval(), built(SMALL).eval()
    inputs = []
    for net in (model, plain):
        net.dnn.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    b = batch(seq)
    with torch.no_grad():
        spread_weights(model)
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()
                               and v.shape == plain.state_dict()[k].shape}, strict=False)
        model(b)
        plain(b)
    return model, b, inputs[0], inputs[1]


def test_mean_interest_appends_u_and_t_times_u_to_the_dcn_input():
    """With mean_interest the DCN input ends with [u || t * u], u the masked history mean (the meanpool reference);
    without it those 2I columns are absent and the rest of the input is the same."""
    seq = random_histories(5, 9)
    seq[1] = 0
    model, b, x0, plain_x0 = dcn_inputs(VARIANTS["mean_interest"], seq)
    with torch.no_grad():
        t = model.embed_items(b["item_id"])
        ref_users = torch.stack([
            sum(model.embed_items(torch.tensor(j)) for j in row if j) / max(1, sum(j != 0 for j in row))
            if any(row) else torch.zeros(model.item_dim) for row in seq.tolist()])
    i = model.item_dim
    assert x0.shape[1] == plain_x0.shape[1] + 2 * i
    torch.testing.assert_close(x0[:, -2 * i:-i], ref_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0[:, -i:], t * ref_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0[:, :-2 * i], plain_x0)


def test_recent_interest_appends_t_times_each_recent_item_to_the_dcn_input():
    """With recent_interest r the DCN input ends with [t * h_{L-r} || ... || t * h_{L-1}] (the r most recent
    positions, zeros where a short history has padding); the columns before are the model without it."""
    seq = random_histories(5, 9)
    seq[1] = 0
    seq[2, :-2] = 0  # two real items: the oldest of the three recent slots is padding
    model, b, x0, plain_x0 = dcn_inputs(dataclasses.replace(SMALL, recent_interest=3), seq)
    with torch.no_grad():
        t = model.embed_items(b["item_id"])
        ref = torch.stack([torch.cat([t[r] * model.embed_items(torch.tensor(j)) if j else torch.zeros(model.item_dim)
                                      for j in seq[r, -3:].tolist()]) for r in range(5)])
    i = model.item_dim
    assert x0.shape[1] == plain_x0.shape[1] + 3 * i and ref[1].abs().sum() == 0 and ref[2, :i].abs().sum() == 0
    torch.testing.assert_close(x0[:, -3 * i:], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0[:, :-3 * i], plain_x0)
    with pytest.raises(ParamsError, match="train.recent_interest"):
        dataclasses.replace(SMALL, recent_interest=SMALL.first_k + 1)
    with pytest.raises(ParamsError, match="train.recent_interest"):
        dataclasses.replace(SMALL, model="din", mean_interest=False, recent_interest=1)


def test_recent_map_starts_as_the_identity_and_feeds_t_times_m_h_to_the_dcn_input():
    """With recent_map the recent columns of the DCN input are t * (M h_i) (zeros at padding), M = I + A the learnt
    map; freshly built, A is zero, so the model scores as the one without it; invalid settings name the key."""
    seq = random_histories(5, 9)
    seq[2, :-2] = 0  # the oldest of the three recent slots is padding
    cfg = dataclasses.replace(SMALL, recent_interest=3)
    mapped = dataclasses.replace(cfg, recent_map=True)
    fresh, plain = built(mapped).eval(), built(cfg).eval()
    torch.testing.assert_close(fresh.recent_delta.weight, torch.zeros(fresh.item_dim, fresh.item_dim))
    plain.load_state_dict({k: v for k, v in fresh.state_dict().items() if not k.startswith("recent_delta")})
    b = batch(seq)
    with torch.no_grad():
        torch.testing.assert_close(fresh(b), plain(b))
    model, b, x0, _ = dcn_inputs(mapped, seq)  # spread weights: M is no longer the identity
    i = model.item_dim
    with torch.no_grad():
        t = model.embed_items(b["item_id"])
        m = torch.eye(model.item_dim) + model.recent_delta.weight
        ref = torch.stack([torch.cat([t[r] * (m @ model.embed_items(torch.tensor(j))) if j else torch.zeros(i)
                                      for j in seq[r, -3:].tolist()]) for r in range(5)])
    assert not torch.allclose(m, torch.eye(i)) and ref[2, :i].abs().sum() == 0
    torch.testing.assert_close(x0[:, -3 * i:], ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ParamsError, match="train.recent_map"):
        dataclasses.replace(SMALL, recent_interest=0, recent_map=True)
    with pytest.raises(ParamsError, match="train.recent_map"):
        dataclasses.replace(SMALL, model="meanpool", mean_interest=False, recent_interest=0, recent_map=True)


def test_recent_maps_l2_pulls_it_toward_the_identity_and_its_old_checkpoints_load(tmp_path):
    """The net L2 adds net_regularizer / 2 * ||M - I||^2 for recent_map (A = M - I is the parameter), so it pulls
    the map toward the model without it, not toward zero; a checkpoint that stored M itself (`recent_map.weight`,
    2026-12-05) loads as the same model."""
    cfg = dataclasses.replace(SMALL, recent_interest=3, recent_map=True)
    model, _, _, _ = dcn_inputs(cfg, random_histories(5, 9))  # spread weights: M is no longer the identity
    plain = built(dataclasses.replace(cfg, recent_map=False))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("recent_delta")})
    m = torch.eye(model.item_dim) + model.recent_delta.weight.detach()
    extra = regularization_loss(model, 0.0, 0.2) - regularization_loss(plain, 0.0, 0.2)
    assert extra.item() == pytest.approx(0.1 * (m - torch.eye(model.item_dim)).square().sum().item(), rel=1e-4)
    path = tmp_path / "old_map.pt"
    save_checkpoint(path, model, feature_map())
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["recent_map.weight"] = ckpt["model"].pop("recent_delta.weight") + torch.eye(model.item_dim)
    torch.save(ckpt, path)
    loaded, _ = load_checkpoint(path, torch.device("cpu"))
    b = batch(random_histories(6, 9))
    torch.testing.assert_close(loaded.recent_delta.weight, model.recent_delta.weight)
    torch.testing.assert_close(loaded(b), model(b))


def test_target_attention_is_a_softmax_weighted_sum_over_real_positions():
    """target_attention against a per-row loop: weights softmax(q . k_i / sqrt(I)) over the unpadded positions
    only; an all-padding row gives zeros, with finite gradients."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, generator=g, requires_grad=True)
    k = torch.randn(3, 5, 4, generator=g, requires_grad=True)
    pad = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    out = target_attention(q, k, pad)
    with torch.no_grad():
        for row in range(3):
            real = [i for i in range(5) if not pad[row, i]]
            if not real:
                assert not out[row].any()
                continue
            w = torch.softmax(torch.stack([q[row] @ k[row, i] / 2.0 for i in real]), 0)
            torch.testing.assert_close(out[row], sum(w[j] * k[row, i] for j, i in enumerate(real)))
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and not k.grad[1].any()


def test_target_interest_appends_the_attended_history_and_its_product_with_the_target():
    """With target_interest the DCN input ends with [v || t * v], v = target_attention(W t, h, pad) (zeros for an
    empty history); the columns before are the model without it; other models reject the switch."""
    seq = random_histories(5, 9)
    seq[1] = 0
    model, b, x0, plain_x0 = dcn_inputs(dataclasses.replace(SMALL, target_interest=True), seq)
    with torch.no_grad():
        t = model.embed_items(b["item_id"])
        v = target_attention(model.interest_query(t), model.embed_items(seq), seq == 0)
    i = model.item_dim
    assert x0.shape[1] == plain_x0.shape[1] + 2 * i and not v[1].any() and v[0].abs().sum() > 0
    torch.testing.assert_close(x0[:, -2 * i:-i], v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0[:, -i:], t * v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0[:, :-2 * i], plain_x0)
    with pytest.raises(ParamsError, match="train.target_interest"):
        dataclasses.replace(SMALL, model="meanpool", target_interest=True)


@pytest.mark.parametrize("shape, p", [((7,), 0.1), ((3, 5, 9), 0.3), ((4, 4), 0.5), ((2, 1), 0.9)])
def test_keep_mask_equals_the_plain_reference(shape: tuple[int, ...], p: float):
    """keep_mask (int16 lanes of one int64 draw, compared in place) keeps exactly the entries the plain per-lane
    reference keeps from the same draw: lane order, the tail of a last partial word and the threshold agree."""
    torch.manual_seed(11)
    mask = keep_mask(shape, p, "cpu")
    torch.manual_seed(11)
    assert mask.dtype == torch.bool and mask.shape == shape
    assert torch.equal(mask, keep_mask_reference(shape, p))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_each_lane_with_probability_one_minus_p(p: float):
    """Each of an int64's four 16-bit lanes is kept with probability 1 - p (the top lane too: random_ without its
    full range keeps the sign bit 0, which would keep that lane almost always at p = 0.5), and the entries are
    not correlated with their neighbours."""
    torch.manual_seed(3)
    mask = keep_mask((200_000, 4), p, "cpu").float()  # column k = lane k of each word
    # 4 standard errors of a mean of 200,000 Bernoulli(1 - p) draws is at most 0.0045
    torch.testing.assert_close(mask.mean(0), torch.full((4,), 1 - p), rtol=0, atol=0.0045)
    both = (mask[:, :-1] * mask[:, 1:]).mean()
    assert abs(both.item() - (1 - p) ** 2) < 0.003


def test_dropout_is_nn_dropouts_function():
    """model.layers.Dropout: in training ~p of the entries zeroed, survivors (and their gradients) scaled by
    1 / (1 - p); in eval or at p = 0 the input itself, with no random draw."""
    drop = Dropout(0.3).train()
    x = torch.ones(400, 250, requires_grad=True)
    torch.manual_seed(0)
    out = drop(x)
    kept = out != 0
    assert 0.69 < kept.float().mean() < 0.71
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.7))
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach())
    assert drop.eval()(x) is x
    state = torch.get_rng_state()
    assert Dropout(0.0).train()(x) is x and torch.equal(torch.get_rng_state(), state)


def torch_encoder(d: int, heads: int, ff: int, p: float, layers: int) -> torch.nn.TransformerEncoder:
    """The reference: torch's encoder as transformer_dcn built it before model.layers.Encoder."""
    return torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(d, heads, ff, p, batch_first=True), layers,
                                       enable_nested_tensor=False)


@pytest.mark.parametrize("heads,layers", [(1, 1), (2, 2), (4, 3)])
def test_encoder_is_torchs_transformer_encoder(heads: int, layers: int):
    """model.layers.Encoder against nn.TransformerEncoder(nn.TransformerEncoderLayer(batch_first=True)): built
    from the same seed, the same state dict (keys and values, so old checkpoints load); with a key padding mask,
    the same outputs in eval, and in training at dropout 0 the same outputs and gradients (input and weights)."""
    d, ff, b, length = 24, 40, 16, 12
    torch.manual_seed(5)
    ref = torch_encoder(d, heads, ff, 0.0, layers)
    torch.manual_seed(5)
    ours = Encoder(d, heads, ff, 0.0, layers)
    theirs, mine = ref.state_dict(), ours.state_dict()
    assert list(mine) == list(theirs)
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0)
    x = torch.randn(b, length, d)
    lengths = torch.randint(1, length + 1, (b,))
    pad = torch.arange(length) < length - lengths[:, None]  # left padding, at least one real key per row
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x, pad), ref.eval()(x, src_key_padding_mask=pad), rtol=1e-5,
                                   atol=1e-5)
    outs, grads = [], []
    for model, call in ((ref, lambda xi: ref(xi, src_key_padding_mask=pad)), (ours, lambda xi: ours(xi, pad))):
        model.train()
        xi = x.clone().requires_grad_()
        out = call(xi)
        (out * torch.linspace(-1, 1, d)).sum().backward()  # unequal weights: a plain sum's gradient is ~0 (LayerNorm)
        outs.append(out.detach())
        grads.append([xi.grad, *(p.grad for p in model.parameters())])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for mine_grad, ref_grad in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(mine_grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_heads_that_do_not_divide_the_token_width_are_a_params_error_naming_the_key():
    """The encoder's token width is 2 x item_dim, known only once the frozen embedding's width is (mm_dim 0 keeps
    the data's): heads that do not divide it stop the build with one line naming train.num_heads."""
    width = 2 * (2 * SMALL.embedding_dim + MM)
    assert width % 5
    with pytest.raises(ParamsError, match=rf"train.num_heads: 5 heads do not divide .* width {width}"):
        built(dataclasses.replace(SMALL, num_heads=5))
    built(dataclasses.replace(SMALL, num_heads=5, use_transformer=False))  # no encoder, no constraint


WIDTH_CASES = {**VARIANTS,
               "every_interest": dataclasses.replace(SMALL, mean_interest=True, recent_interest=2, recent_map=True,
                                                     target_interest=True, concat_max_pool=False, mm_dim=5),
               "item_repr_both": dataclasses.replace(SMALL, item_repr="id+semantic", exposure_levels=3, item_bias=True)}


@pytest.mark.parametrize("name", WIDTH_CASES)
def test_matrix_weights_counts_the_layer_matrices_each_model_builds(name):
    """ModelConfig.matrix_weights, which check_params uses to refuse a model of many GiB before train runs, is the
    count of the weights in the built model's layer matrices (Linear weights and the attention's in_proj_weight),
    part by part summed: the arithmetic follows the layers, for every model and switch."""
    cfg = WIDTH_CASES[name]
    model = built(cfg) if cfg.item_repr == "id" else MODELS[cfg.model](
        cfg, feature_map(), *item_tables(), item_codes=torch.randint(0, 4, (N_ITEMS + 1, 2)).index_fill(0,
        torch.tensor([0]), -1), item_exposure=torch.randint(1, 4, (N_ITEMS + 1,)).index_fill(0, torch.tensor([0]), 0))
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    counted = sum(p.numel() for p in model.parameters() if p.ndim == 2 and id(p) not in embeddings)
    assert sum(cfg.matrix_weights(MM, len(feature_map().context_features)).values()) == counted


def test_a_model_of_many_gib_is_a_params_error_before_any_layer_is_built():
    """embedding_dim 4096 with a full-rank cross network asks for 8 x 10^10 weights (300 GiB): the build
    stops with one line naming the part's key and the count, before allocating anything; the same model with a
    low-rank cross network and a narrow encoder fits."""
    big = dataclasses.replace(SMALL, embedding_dim=4096, first_k=8, cross_layers=3, cross_rank=0)
    with pytest.raises(ParamsError, match=r"^train.cross_rank: the model's layers would hold [\d,]+ weights .*: set a "
                                          r"low rank \(e\.g\. 8\) instead of 0 \(full rank\)$"):
        built(big)
    parts = big.matrix_weights(MM, 2)
    assert sum(parts.values()) > 8 * 10 ** 10 and max(parts, key=parts.__getitem__) == "cross_rank"
    fits = dataclasses.replace(big, embedding_dim=64, cross_rank=8)
    assert sum(fits.matrix_weights(MM, 2).values()) < 1 << 30
    built(fits)
    # members train one after another: the cap is per member, so an ensemble of models that fit alone fits too
    # (the README's winner, 254M weights a member, in an ensemble of 5)
    winner = dataclasses.replace(SMALL, embedding_dim=64, first_k=16, cross_layers=3, cross_rank=0,
                                 dnn_hidden_units=(1024, 512, 256), mlp_hidden_units=(64, 32))
    assert 2e8 < sum(winner.matrix_weights(128, 2).values()) < 1 << 30
    dataclasses.replace(winner, ensemble=5).check_widths(128, 2)
    with pytest.raises(ParamsError, match=r"^train\.mm_dim: .* project the frozen embedding to a small width"):
        dataclasses.replace(SMALL, model="meanpool", mm_dim=0).check_widths(40_000, 2)  # mm_proj: 40000^2 weights


def test_encoder_dropout_draws_model_layers_dropout_only_in_training():
    """Every dropout of the encoder (attention weights, both residual branches, feed-forward) is model.layers.Dropout
    at transformer_dropout, none torch's (whose CPU bernoulli_ it replaces): training output is random and seeded,
    eval output is the dropout-free one."""
    model = built(VARIANTS["transformer_dcn"])
    drops = [m for m in model.encoder.modules() if isinstance(m, (Dropout, torch.nn.Dropout))]
    assert drops and all(type(m) is Dropout and m.p == SMALL.transformer_dropout for m in drops)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    x = torch.randn(8, 6, model.encoder.layers[0].linear1.in_features)
    pad = torch.zeros(8, 6, dtype=torch.bool)
    model.encoder.train()
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(model.encoder(x, pad))
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)
    assert not torch.allclose(draws[0], draws[2])
    with torch.no_grad():
        clean = model.encoder.eval()(x, pad)
        for m in drops:
            m.p = 0.0
        torch.testing.assert_close(model.encoder.train()(x, pad), clean, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["transformer_dcn", "din", "meanpool"])
def test_embedding_dropout_acts_in_training_only(name: str):
    """CTRBase drops item and context embedding entries in training (survivors scaled by 1/(1-p)); in eval the
    model scores exactly as with rate 0."""
    model = built(VARIANTS[name]).eval()
    b = batch(random_histories(64, 10))
    with torch.no_grad():
        ref = model(b)
        items, context = model.embed_items(b["item_seq"]), model.embed_context(b)
        model.embedding_dropout.p = 0.5
        torch.testing.assert_close(model(b), ref, rtol=0, atol=0)
        model.train()
        torch.manual_seed(3)
        dropped_items, dropped_context = model.embed_items(b["item_seq"]), model.embed_context(b)
    for full, dropped in [(items, dropped_items), *zip(context, dropped_context)]:
        real = full != 0
        kept = dropped[real] != 0
        assert 0.4 < kept.float().mean() < 0.6
        torch.testing.assert_close(dropped[real][kept], 2 * full[real][kept])
    assert not dropped_items[b["item_seq"] == 0].any()  # padding stays zero


def test_embedding_parameters_are_fuxictrs_embedding_dict():
    """The id, tag and context tables and the frozen embedding's projection; nothing else."""
    for cfg in (SMALL, VARIANTS["no_mm_emb"]):
        model = built(cfg)
        names = {n for n, p in model.named_parameters() if any(p is q for q in model.embedding_parameters())}
        expected = {"item_emb.weight", "tag_emb.weight", "context_emb.likes_level.weight",
                    "context_emb.views_level.weight"} | ({"mm_proj.weight"} if cfg.use_mm_emb else set())
        assert names == expected and len(model.embedding_parameters()) == len(expected)


def test_dice_matches_formula_in_eval_and_batch_statistics_in_training():
    torch.manual_seed(0)
    dice = Dice(4)
    nonzero_dice_stats(dice)
    x = torch.randn(3, 5, 4)  # (B, L, U): each unit normalised over all B*L positions
    dice.eval()
    p = torch.sigmoid((x - dice.running_mean) / torch.sqrt(dice.running_var + 1e-9))
    torch.testing.assert_close(dice(x), p * x + (1 - p) * dice.alpha * x)
    dice.train()
    flat = x.reshape(-1, 4)
    p = torch.sigmoid((x - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-9))
    mean_before = dice.running_mean.clone()
    torch.testing.assert_close(dice(x), p * x + (1 - p) * dice.alpha * x)
    torch.testing.assert_close(dice.running_mean, 0.99 * mean_before + 0.01 * flat.mean(0))
    # one row has no batch variance: the running statistics normalise it, as in eval
    one = torch.randn(1, 4)
    p = torch.sigmoid((one - dice.running_mean) / torch.sqrt(dice.running_var + 1e-9))
    torch.testing.assert_close(dice(one), p * one + (1 - p) * dice.alpha * one)


def test_unknown_model_is_rejected_when_its_config_is_made():
    """ModelConfig checks `model` itself (from params or a checkpoint), against the models the factory builds."""
    with pytest.raises(ParamsError, match="train.model: must be one of transformer_dcn, din, meanpool, got 'dien'"):
        dataclasses.replace(SMALL, model="dien")
    assert list(MODELS) == list(typing.get_args(typing.get_type_hints(ModelConfig)["model"]))


@pytest.mark.parametrize(("values", "key"), [
    ({"model": "din", "dice": False, "use_transformer": False}, "train.use_transformer"),
    ({"model": "din", "use_dcn": False}, "train.use_dcn"),
    ({"model": "transformer_dcn", "dice": True}, "train.dice"),
    ({"model": "meanpool", "use_transformer": False}, "train.use_transformer"),
    ({"model": "meanpool", "use_dcn": False}, "train.use_dcn"),
    ({"model": "meanpool", "dice": True}, "train.dice"),
    ({"model": "dien"}, "train.model"),
    ({"model": "din", "din_attention_units": [8, 0]}, "train.din_attention_units"),
    ({"use_mm_emb": "no"}, "train.use_mm_emb"),
])
def test_config_errors_name_the_key(values: dict, key: str):
    with pytest.raises(ParamsError) as info:
        # the default's transformer_dcn-only parts off, so the case's own key is the one at fault
        from_dict(TrainConfig, {**PLAIN_SWITCHES, **values}, "train")
    assert str(info.value).startswith(f"{key}: ")


def test_config_accepts_every_variant():
    for cfg in VARIANTS.values():
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
        train = from_dict(TrainConfig, values, "train")
        assert train.arch == cfg


@pytest.mark.parametrize("name", ["transformer_dcn", "din", "meanpool"])
def test_item_bias_adds_the_target_items_scalar_to_the_logit(name: str):
    """With item_bias every model's logit is the same network's logit plus the target item's own learnt scalar
    (row 0, padding, stays 0); the table counts as an embedding (embedding_regularizer); without it there is no
    table and the logits are the network's alone."""
    extra = {"model": name, "item_repr": "id"} | (
        {"mean_interest": False, "recent_interest": 0} if name != "transformer_dcn" else {})
    cfg = dataclasses.replace(SMALL, **extra, item_bias=True)
    torch.manual_seed(0)
    model = build_model(cfg, feature_map(), *item_tables()).eval()
    b = batch(random_histories(6, 20))
    with torch.no_grad():
        model.item_bias.weight.zero_()
        plain = model(b)
        model.item_bias.weight[1:, 0] = torch.arange(1, N_ITEMS + 1, dtype=torch.float32) / 10
        torch.testing.assert_close(model(b), plain + b["item_id"].float() / 10)
    assert model.item_bias.weight[0].item() == 0.0
    assert any(p is model.item_bias.weight for p in model.embedding_parameters())
    torch.manual_seed(0)
    without = build_model(dataclasses.replace(cfg, item_bias=False), feature_map(), *item_tables()).eval()
    assert without.item_bias is None and not any(n.startswith("item_bias") for n, _ in without.named_parameters())


USER_KEYS = torch.tensor([3, 17, 40, 41, 2**31 - 1])  # sparse train user ids, the largest int32 among them


def test_user_rows_follow_the_index_of_train_user_ids_and_unseen_users_get_row_0():
    """user id -> 1 + its position among the sorted train user ids (a dict, by hand); an id not among them (below,
    between, above) -> 0; the table has one row per train user plus row 0, whatever the largest id."""
    cfg = dataclasses.replace(SMALL, user_bias=True)
    model = build_model(cfg, feature_map(), *item_tables(), None, None, USER_KEYS)
    ids = torch.tensor([0, 3, 4, 17, 39, 40, 41, 42, 2**31 - 2, 2**31 - 1])
    index = {k: r for r, k in enumerate(USER_KEYS.tolist(), 1)}
    assert model.user_rows(ids).tolist() == [index.get(k, 0) for k in ids.tolist()]
    assert model.user_bias.weight.shape == (len(USER_KEYS) + 1, 1)
    assert user_keys(np.array([41, 3, 3, 2**31 - 1, 17, 40, 41], dtype=np.int32)).tolist() == USER_KEYS.tolist()


@pytest.mark.parametrize("name", ["transformer_dcn", "din", "meanpool"])
def test_user_bias_adds_the_users_scalar_to_the_logit(name: str, tmp_path):
    """With user_bias every model's logit is the same network's logit plus its user's learnt scalar, 0 for a
    user the train split never had (row 0 stays 0); the table counts as an embedding; a checkpoint keeps the
    index; without the train user ids, or with them unsorted, the model is not built."""
    extra = {"model": name, "item_repr": "id"} | (
        {"mean_interest": False, "recent_interest": 0} if name != "transformer_dcn" else {})
    cfg = dataclasses.replace(SMALL, **extra, user_bias=True)
    torch.manual_seed(0)
    model = build_model(cfg, feature_map(), *item_tables(), None, None, USER_KEYS).eval()
    b = batch(random_histories(6, 20))
    b["user_id"] = torch.tensor([3, 5, 40, 2**31 - 1, 0, 17])
    with torch.no_grad():
        model.user_bias.weight.zero_()
        plain = model(b)
        model.user_bias.weight[1:, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
        torch.testing.assert_close(model(b), plain + torch.tensor([0.1, 0.0, 0.3, 0.5, 0.0, 0.2]))
    assert model.user_bias.weight[0].item() == 0.0
    assert any(p is model.user_bias.weight for p in model.embedding_parameters())
    path = tmp_path / "user.pt"
    save_checkpoint(path, model, feature_map())
    loaded, _ = load_checkpoint(path, torch.device("cpu"))
    torch.testing.assert_close(loaded.user_keys, USER_KEYS)
    torch.testing.assert_close(loaded(b), model(b))
    for keys in (None, torch.tensor([3, 17, 17]), torch.tensor([17, 3]), torch.zeros(0, dtype=torch.long)):
        with pytest.raises(ValueError, match="train.user_bias needs"):
            build_model(cfg, feature_map(), *item_tables(), None, None, keys)


def test_user_interest_gives_the_dcn_the_users_vector_and_its_product_with_the_target(tmp_path):
    """With user_interest the DCN input ends in [w_u || t * w_u], w_u the user's row of an item_dim-wide table
    (through the same index as the bias; row 0, a user the train split never had, stays 0); with user_bias off
    the index is still built; the table counts as an embedding; the checkpoint scores the same; without the
    train user ids the model is not built, and only transformer_dcn has the part."""
    cfg = dataclasses.replace(SMALL, user_interest=True, user_bias=False)
    torch.manual_seed(0)
    model = build_model(cfg, feature_map(), *item_tables(), None, None, USER_KEYS).eval()
    i = model.item_dim
    assert model.user_emb.weight.shape == (len(USER_KEYS) + 1, i) and model.user_bias is None
    assert any(p is model.user_emb.weight for p in model.embedding_parameters())
    assert cfg.dcn_input_dim(i, model.context_dim) == dataclasses.replace(cfg, user_interest=False).dcn_input_dim(
        i, model.context_dim) + 2 * i
    b = batch(random_histories(6, 20))
    b["user_id"] = torch.tensor([3, 5, 40, 2**31 - 1, 0, 17])
    seen = []
    hook = model.dnn.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model.user_emb.weight[1:] = torch.randn(len(USER_KEYS), i)
        model(b)
    hook.remove()
    x0, rows = seen[0], torch.tensor([1, 0, 3, 5, 0, 2])
    taste = model.user_emb.weight[rows]
    torch.testing.assert_close(x0[:, -2 * i:], torch.cat([taste, model.embed_items(b["item_id"]) * taste], dim=1))
    assert not x0[[1, 4], -2 * i:].any() and not model.user_emb.weight[0].any()
    path = tmp_path / "user.pt"
    save_checkpoint(path, model, feature_map())
    loaded, _ = load_checkpoint(path, torch.device("cpu"))
    torch.testing.assert_close(loaded(b), model(b))
    with pytest.raises(ValueError, match="train.user_interest needs"):
        build_model(cfg, feature_map(), *item_tables())
    with pytest.raises(ParamsError, match="train.user_interest"):
        dataclasses.replace(cfg, model="din", mean_interest=False, recent_interest=0)

def test_length_buckets_are_floor_of_twice_log2_of_length_plus_one_against_a_plain_reference():
    """Bucket of n = floor(2 log2(n + 1)), by integer bit length in plain Python, for every n up to past the cap;
    a length past HISTORY_LENGTH_CAP shares the cap's bucket, the table's last row; shapes are kept."""
    n = torch.arange(HISTORY_LENGTH_CAP + 300)
    capped = [min(k, HISTORY_LENGTH_CAP) for k in n.tolist()]
    assert length_buckets(n).tolist() == [((k + 1) ** 2).bit_length() - 1 for k in capped]
    assert length_buckets(torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 10, 11])).tolist() == [0, 2, 3, 4, 4, 5, 5, 6, 6, 7]
    assert length_buckets(n[:4000].reshape(-1, 2)).shape == (2000, 2)
    assert length_buckets(torch.tensor([10**12])).item() == LENGTH_BUCKETS - 1  # the table has a row for the last


def test_history_length_gives_the_dcn_the_thermometer_code_of_the_historys_length_bucket(tmp_path):
    """With history_length the DCN input ends in the E-wide vector of each row's bucket b of real (non-zero)
    history items, the sum of the table's rows 1..b, whatever the padding; an empty history gives zeros; the table
    counts as an embedding; the checkpoint scores the same; only transformer_dcn has the part."""
    cfg = dataclasses.replace(SMALL, history_length=True)
    torch.manual_seed(0)
    model = build_model(cfg, feature_map(), *item_tables()).eval()
    e = cfg.embedding_dim
    assert any(p is model.length_emb.weight for p in model.embedding_parameters())
    assert cfg.dcn_input_dim(model.item_dim, model.context_dim) == dataclasses.replace(
        cfg, history_length=False).dcn_input_dim(model.item_dim, model.context_dim) + e
    b = batch(random_histories(6, 20))
    b["item_seq"][0] = 0
    b["item_seq"][1, -11:] = torch.arange(1, 12)
    seen = []
    hook = model.dnn.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model.length_emb.weight[1:] = torch.randn(model.length_emb.weight.shape[0] - 1, e)  # far from FuxiCTR's ~0
        model(b)
        model(dict(b, item_seq=torch.nn.functional.pad(b["item_seq"], (7, 0))))  # more padding, same lengths
    hook.remove()
    real = (b["item_seq"] > 0).sum(1).tolist()
    assert real[0] == 0 and real[1] == 11
    rows = model.length_emb.weight
    want = torch.stack([rows[1:((k + 1) ** 2).bit_length()].sum(0) for k in real])  # rows 1..bucket, summed
    torch.testing.assert_close(seen[0][:, -e:], want)
    torch.testing.assert_close(seen[1][:, -e:], want)
    assert not seen[0][0, -e:].any() and seen[0][1, -e:].any()
    path = tmp_path / "length.pt"
    save_checkpoint(path, model, feature_map())
    loaded, _ = load_checkpoint(path, torch.device("cpu"))
    torch.testing.assert_close(loaded(b), model(b))
    with pytest.raises(ParamsError, match="train.history_length"):
        dataclasses.replace(cfg, model="din")


def plain_history_cosines(mm: torch.Tensor, seq: torch.Tensor, target: torch.Tensor) -> list[list[float]]:
    """history_cosines' reference: per row, the cosines of the target to the history items other than padding,
    repeats of the target and zero vectors, by a loop in plain Python floats."""
    out = []
    for row, t in zip(seq.tolist(), target.tolist()):
        tv = mm[t].double().tolist()
        kept = []
        for h in row:
            hv = mm[h].double().tolist()
            nh, nt = sum(x * x for x in hv) ** 0.5, sum(x * x for x in tv) ** 0.5
            if h == 0 or h == t or nh == 0 or nt == 0:
                continue
            kept.append(sum(a * b for a, b in zip(hv, tv)) / (nh * nt))
        out.append(kept)
    return out


def plain_max_history_cosine(mm: torch.Tensor, seq: torch.Tensor, target: torch.Tensor) -> list[float | None]:
    """max_history_cosine's reference: the highest of each row's plain_history_cosines, None where there is none."""
    return [max(row) if row else None for row in plain_history_cosines(mm, seq, target)]


def plain_bucket(cosine: float) -> int:
    """similarity_buckets' formula for one cosine, in plain Python."""
    return min(SIMILARITY_STEPS, 1 + int((cosine + 1) * SIMILARITY_STEPS / 2))


def test_max_history_cosine_matches_a_plain_reference_leaving_out_padding_repeats_and_zero_vectors():
    """The highest cosine of the target's frozen vector to another history item's, against a loop in plain
    Python: padding, repeats of the target and zero vectors are left out, NaN where nothing is left; float32 under
    a bf16 autocast too."""
    tags, mm = item_tables()
    mm[7] = 0.0  # an item with no vector
    seq = random_histories(40, 12)
    target = torch.randint(1, N_ITEMS + 1, (40,), generator=torch.Generator().manual_seed(5))
    # rows 0-4: an empty history; only the target; only zero vectors and the target; a zero vector and item 5;
    # a target with a zero vector (7) after item 5
    seq[:5] = 0
    seq[1, -3:], seq[2, -4:] = target[1], torch.tensor([7, 7, target[2], 0])
    seq[3, -2:], target[4], seq[4, -1] = torch.tensor([7, 5]), 7, 5
    want = plain_max_history_cosine(mm, seq, target)
    assert want[0] is None and want[1] is None and want[2] is None and want[4] is None and want[3] is not None
    cosines = (max_history_cosine(history_cosines(m, inverse_norms(m), seq, target)) for m in (mm, mm.bfloat16()))
    for got in cosines:
        assert got.dtype == torch.float32
        assert [g != g for g in got.tolist()] == [w is None for w in want]  # NaN exactly where the reference has none
    got = max_history_cosine(history_cosines(mm, inverse_norms(mm), seq, target))
    torch.testing.assert_close(got[got == got].double(), torch.tensor([w for w in want if w is not None],
                                                                       dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(max_history_cosine(history_cosines(mm, inverse_norms(mm), seq, target)), got,
                                   equal_nan=True)


def test_inverse_norms_follow_the_item_table_a_state_dict_loads_and_are_not_saved():
    """item_inv_norm is derived from item_mm: 1 / each row's norm, 0 for a zero row; left out of the state dict
    (checkpoints keep their keys), and recomputed when load_state_dict brings another item_mm, in every member
    of an ensemble too."""
    tags, mm = item_tables()
    mm[7] = 0.0
    norms = mm.double().norm(dim=1)
    want = torch.tensor([0.0 if n == 0 else 1 / n for n in norms.tolist()], dtype=torch.float32)
    torch.testing.assert_close(inverse_norms(mm), want)
    cfg = dataclasses.replace(SMALL, history_similarity=True, ensemble=2)
    saved = build_model(cfg, feature_map(), tags, mm)
    other = build_model(cfg, feature_map(), tags, mm * 3 + 1)
    assert not any(k.endswith("item_inv_norm") for k in saved.state_dict())
    other.load_state_dict(saved.state_dict())
    norms = [m.item_inv_norm for m in other.modules() if hasattr(m, "item_inv_norm")]
    assert len(norms) == 2 and all(torch.equal(n, inverse_norms(mm)) for n in norms)


def test_similarity_buckets_are_equal_steps_over_minus_one_to_one_and_zero_for_none():
    """Bucket 1 + floor((c + 1) * STEPS / 2), the top cosine 1 (and float noise above it) in the last step, NaN in
    bucket 0; against the same formula in plain Python at every step's middle and at the edges floats hold exactly
    (multiples of 1/4: an edge opens the step above it)."""
    middles = [(k + 0.5) / SIMILARITY_STEPS * 2 - 1 for k in range(SIMILARITY_STEPS)]
    grid = middles + [k / 4 - 1 for k in range(9)] + [-0.999, -0.37, 0.97]
    want = [min(SIMILARITY_STEPS, 1 + int((c + 1) * SIMILARITY_STEPS / 2)) for c in grid]
    assert want[:SIMILARITY_STEPS] == list(range(1, SIMILARITY_STEPS + 1)) and want[SIMILARITY_STEPS + 4] == 21
    assert similarity_buckets(torch.tensor(grid, dtype=torch.float64)).tolist() == want
    assert similarity_buckets(torch.tensor([float("nan"), 1.0000001, -1.0000001])).tolist() == [0, SIMILARITY_STEPS, 1]


def dcn_tail(cfg: ModelConfig, switch: str, table: str, tmp_path
             ) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
    """Build cfg's model, whose `switch` adds the embedding `table` (E more DCN inputs than without it, and an
    embedding for the L2), set the table's rows 1.. far from FuxiCTR's ~0 init, and score a batch whose
    rows 0-2 hold an empty history, only the target itself, and one other item five times, then the same batch with
    7 more padding positions; the checkpoint must score it the same. -> (the frozen table mm, the batch, the table's
    weights, the last E columns of the DCN input of both scorings stacked (2, B, E))."""
    torch.manual_seed(0)
    tags, mm = item_tables()
    model = build_model(cfg, feature_map(), tags, mm).eval()
    e = cfg.embedding_dim
    weights = getattr(model, table).weight
    assert any(p is weights for p in model.embedding_parameters())
    assert cfg.dcn_input_dim(model.item_dim, model.context_dim) == dataclasses.replace(
        cfg, **{switch: False}).dcn_input_dim(model.item_dim, model.context_dim) + e
    b = batch(random_histories(6, 20))
    b["item_seq"][:2] = 0
    b["item_seq"][1, -2:] = b["item_id"][1]  # only the target itself
    b["item_seq"][2, -5:] = 3
    seen = []
    hook = model.dnn.register_forward_hook(lambda m, args, out: seen.append(args[0][:, -e:]))
    with torch.no_grad():
        weights[1:] = torch.randn(weights.shape[0] - 1, e)
        model(b)
        model(dict(b, item_seq=torch.nn.functional.pad(b["item_seq"], (7, 0))))  # more padding, same items
    hook.remove()
    path = tmp_path / "tail.pt"
    save_checkpoint(path, model, feature_map())
    loaded, _ = load_checkpoint(path, torch.device("cpu"))
    torch.testing.assert_close(loaded(b), model(b))
    return mm, b, weights.detach(), torch.stack(seen)


def test_history_similarity_gives_the_dcn_the_thermometer_code_of_the_nearest_other_items_cosine(tmp_path):
    """With history_similarity the DCN input ends in the E-wide vector of each row's cosine bucket b, the sum of
    the table's rows 1..b, whatever the padding; no other item to compare gives zeros; with history_length too it
    comes after the length's vector; the table counts as an embedding; the checkpoint scores the same; only
    transformer_dcn has the part."""
    cfg = dataclasses.replace(SMALL, history_similarity=True, history_length=True)
    mm, b, rows, tails = dcn_tail(cfg, "history_similarity", "similarity_emb", tmp_path)
    cosines = plain_max_history_cosine(mm, b["item_seq"], b["item_id"])
    assert cosines[0] is None and cosines[1] is None and cosines[2] is not None
    steps = [0 if c is None else plain_bucket(c) for c in cosines]
    want = torch.stack([rows[1:k + 1].sum(0) for k in steps])  # rows 1..bucket, summed
    torch.testing.assert_close(tails[0], want)
    torch.testing.assert_close(tails[1], want)
    assert not tails[0, :2].any() and tails[0, 2].any()
    with pytest.raises(ParamsError, match="train.history_similarity"):
        dataclasses.replace(cfg, history_length=False, model="din")


def plain_similarity_counts(mm: torch.Tensor, seq: torch.Tensor, target: torch.Tensor) -> list[list[list[int]]]:
    """similarity_counts' reference: per row, window and bucket b, a count in plain Python of the other items among
    the window's most recent positions whose plain_bucket is b or above."""
    out = []
    for row, t in zip(seq.tolist(), target.tolist()):
        latest_first = []  # each position's bucket from the most recent back, None where nothing compares
        for h in reversed(row):
            kept = plain_history_cosines(mm, torch.tensor([[h]]), torch.tensor([t]))[0]
            latest_first.append(plain_bucket(kept[0]) if kept else None)
        sizes = [*COUNT_WINDOW_SIZES, len(row)]
        out.append([[sum(1 for k in latest_first[:n] if k is not None and k >= b)
                     for b in range(1, SIMILARITY_STEPS + 1)] for n in sizes])
    return out


def test_similarity_counts_match_a_plain_count_per_window_and_bucket_edge():
    """Entry [w, b - 1] of similarity_counts counts the other items among window w's most recent positions whose
    cosine's bucket is b or above, against plain_similarity_counts: padding, repeats of the target and zero vectors
    never count, a row with none is all zeros, more padding on the left changes nothing, and a bf16 autocast
    leaves the counts exact float32."""
    tags, mm = item_tables()
    mm[7] = 0.0
    seq = random_histories(30, 40)
    target = torch.randint(1, N_ITEMS + 1, (30,), generator=torch.Generator().manual_seed(9))
    seq[:3] = 0
    seq[1, -3:] = target[1]  # only the target
    seq[2, -5:] = torch.tensor([7, 5, 5, 5, target[2]])  # a zero vector, one item three times, the target
    got = similarity_counts(history_cosines(mm, inverse_norms(mm), seq, target))
    assert got.shape == (30, COUNT_WINDOWS, SIMILARITY_STEPS) and got.dtype == torch.float32
    assert got.tolist() == plain_similarity_counts(mm, seq, target)
    assert not got[:2].any() and got[2, :, 0].tolist() == [0, 1, 3, 3, 3, 3, 3]
    assert (got[:, -1] >= got[:, -2]).all() and (got[:, -1, 0] > got[:, -2, 0]).any()  # 40 positions: 32 < all
    padded = torch.nn.functional.pad(seq, (9, 0))
    assert torch.equal(similarity_counts(history_cosines(mm, inverse_norms(mm), padded, target)), got)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(similarity_counts(history_cosines(mm, inverse_norms(mm), seq, target)), got)


def test_similarity_count_gives_the_dcn_the_log_counts_through_its_table(tmp_path):
    """With similarity_count the DCN input ends in sum_wb log(1 + C_wb) w_wb (after history_similarity's vector),
    the same whatever the padding, zeros where no other item compares; the table counts as an embedding and widens the
    input by E; the checkpoint scores the same, and only transformer_dcn has the part."""
    cfg = dataclasses.replace(SMALL, history_similarity=True, similarity_count=True)
    mm, b, weights, tails = dcn_tail(cfg, "similarity_count", "count_emb", tmp_path)
    e = cfg.embedding_dim
    rows = weights[1:].reshape(COUNT_WINDOWS, SIMILARITY_STEPS, e)
    want = torch.stack([sum((math.log1p(c) * rows[w, k] for w, window in enumerate(counts)
                             for k, c in enumerate(window)), torch.zeros(e))
                        for counts in plain_similarity_counts(mm, b["item_seq"], b["item_id"])])
    torch.testing.assert_close(tails[0], want)
    torch.testing.assert_close(tails[1], want)
    assert not tails[0, :2].any() and tails[0, 2].any()
    with pytest.raises(ParamsError, match="train.similarity_count"):
        dataclasses.replace(cfg, history_similarity=False, model="din")


def plain_repeat_counts(seq: torch.Tensor, target: torch.Tensor) -> list[list[int]]:
    """repeat_counts' reference: per row and window, a count in plain Python of the window's most recent positions
    that hold the target itself."""
    return [[sum(1 for h in row[::-1][:n] if h == t) for n in [*COUNT_WINDOW_SIZES, len(row)]]
            for row, t in zip(seq.tolist(), target.tolist())]


def test_repeat_counts_match_a_plain_count_per_window():
    """Entry w of repeat_counts counts the target itself among window w's most recent positions, against
    plain_repeat_counts: padding never counts, a row without the target is all zeros, more padding on the left
    changes nothing, and a bf16 autocast leaves the counts exact float32."""
    seq = random_histories(30, 40)
    target = torch.randint(1, N_ITEMS + 1, (30,), generator=torch.Generator().manual_seed(9))
    seq[:4] = 0
    seq[1, -3:] = target[1]
    seq[2, -6:] = torch.stack([target[2], torch.tensor(5), target[2], torch.tensor(5), torch.tensor(5), target[2]])
    seq[3, 0] = target[3]  # the oldest of 40 positions: only in the window of all of them
    got = repeat_counts(seq, target)
    assert got.shape == (30, COUNT_WINDOWS) and got.dtype == torch.float32
    assert got.tolist() == plain_repeat_counts(seq, target)
    assert not got[0].any() and got[1].tolist() == [1, 2, 3, 3, 3, 3, 3]
    assert got[2].tolist() == [1, 1, 2, 3, 3, 3, 3] and got[3].tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert (got[4:].sum(1) == 0).any() and (got[4:].sum(1) > 0).any()  # random rows with and without repeats
    assert torch.equal(repeat_counts(torch.nn.functional.pad(seq, (9, 0)), target), got)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(repeat_counts(seq, target), got)


def test_repeat_count_gives_the_dcn_the_log_counts_through_its_table(tmp_path):
    """With repeat_count the DCN input ends in sum_w log(1 + R_w) r_w (after similarity_count's vector), the same
    whatever the padding, zeros where the target is not in the history; the table counts as an embedding and
    widens the input by E; the checkpoint scores the same, and only transformer_dcn has the part."""
    cfg = dataclasses.replace(SMALL, similarity_count=True, repeat_count=True)
    _, b, weights, tails = dcn_tail(cfg, "repeat_count", "repeat_emb", tmp_path)
    want = torch.stack([sum((math.log1p(c) * weights[1 + w] for w, c in enumerate(counts)),
                            torch.zeros(cfg.embedding_dim)) for counts in plain_repeat_counts(b["item_seq"],
                                                                                            b["item_id"])])
    torch.testing.assert_close(tails[0], want)
    torch.testing.assert_close(tails[1], want)
    assert not tails[0, 0].any() and tails[0, 1].any()  # an empty history; one of only the target, twice
    with pytest.raises(ParamsError, match="train.repeat_count"):
        dataclasses.replace(cfg, similarity_count=False, model="din")


def test_user_dropout_gives_rows_the_unseen_users_zero_vector_in_training_only():
    """train.user_dropout: in training each row's user vector is 0 (row 0's) with that probability, whole rows at a
    time; in eval, and at 0, every row has its own and no random number is drawn."""
    cfg = dataclasses.replace(SMALL, user_interest=True)
    net = build_model(cfg, feature_map(), *item_tables(), None, None, USER_KEYS)
    with torch.no_grad():
        net.user_emb.weight[1:] = torch.randn(len(USER_KEYS), net.item_dim)
    b = {"user_id": USER_KEYS[torch.randint(0, len(USER_KEYS), (400,))]}
    full = net.eval().user_vector(b)
    check_training_dropout(net, "user_dropout", lambda: net.user_vector(b), full, torch.zeros_like(full))
    with pytest.raises(ParamsError, match=r"^train\.user_dropout: must be in \[0, 1\)"):
        from_dict(TrainConfig, {"user_dropout": 1.0}, "train")

def test_split_tables_are_the_train_splits_exposure_levels_user_keys_and_new_items_each_only_when_its_switch_is_on():
    """split_tables gives build_model what the config asks of the train split: the exposure levels of its target
    items over the item table, its sorted distinct user ids, and which items it never has as a target, each None
    when its switch is off."""
    ids = torch.tensor([1, 1, 2, 5, 5, 5])
    train = SplitTensors(torch.zeros(6, 3, dtype=torch.long), ids, {}, torch.zeros(6),
                         torch.tensor([41, 3, 3, 17, 2**31 - 1, 40]))
    for levels, bias, interest, new in ((0, False, False, False), (3, False, False, True), (0, True, False, False),
                                        (4, True, True, True), (0, False, True, False)):
        tables = split_tables(train, N_ITEMS + 1, dataclasses.replace(
            SMALL, exposure_levels=levels, user_bias=bias, user_interest=interest, new_item_offset=new))
        assert set(tables) == {"item_exposure", "user_keys", "item_new"}
        if levels:
            torch.testing.assert_close(tables["item_exposure"], exposure_levels(ids, N_ITEMS + 1, levels))
        else:
            assert tables["item_exposure"] is None
        if bias or interest:
            assert tables["user_keys"].tolist() == USER_KEYS.tolist()
        else:
            assert tables["user_keys"] is None
        if new:
            assert tables["item_new"].dtype == torch.bool and tables["item_new"].shape == (N_ITEMS + 1,)
            assert torch.nonzero(~tables["item_new"]).ravel().tolist() == [0, 1, 2, 5]  # row 0 is padding
        else:
            assert tables["item_new"] is None


def test_exposure_levels_are_quantile_levels_of_train_counts_against_a_plain_reference():
    """Level of item i with c_i > 0 train rows = 1 + #(distinct k/L count quantiles over the items 1..N with train
    rows that are <= c_i), by hand; equal counts share a level, levels run 1..L; an item without train rows is 0, as
    row 0 is; an id past the table is an error."""
    rng = np.random.default_rng(0)
    n, levels = 40, 5
    ids = rng.integers(1, n - 5, 600)  # items n-5..n have no train rows; a steep head spreads the counts
    ids = np.concatenate([ids, np.repeat(np.arange(1, 11), np.arange(10, 0, -1) * 8)])
    got = exposure_levels(ids, n + 1, levels).numpy()
    counts = [int((ids == i).sum()) for i in range(n + 1)]
    edges = sorted(set(float(np.quantile([c for c in counts[1:] if c], k / levels)) for k in range(1, levels)))
    assert got[0] == 0 and got.dtype == np.int64
    assert got[1:].tolist() == [1 + sum(e <= counts[i] for e in edges) if counts[i] else 0 for i in range(1, n + 1)]
    assert got[n - 5:].tolist() == [0] * 6
    assert set(got[1:n - 5]) <= set(range(1, levels + 1)) and len(set(got[1:n - 5])) > 2
    same = {}
    for c, lv in zip(counts[1:], got[1:], strict=True):
        assert same.setdefault(c, lv) == lv
    assert exposure_levels(np.zeros(0, np.int64), n + 1, levels).tolist() == [0] * (n + 1)  # no rows: none known
    with pytest.raises(ValueError, match="item table has 41 rows"):
        exposure_levels(np.array([n + 1]), n + 1, levels)


@pytest.mark.parametrize("name", ["transformer_dcn", "din", "meanpool"])
def test_exposure_level_embedding_is_a_part_of_every_item_and_kept_in_the_checkpoint(name: str, tmp_path):
    """With exposure_levels the item's tag part is the tag mean plus the embedding of the item's level (0 for
    padding), and the item keeps its width; the checkpoint keeps the table and scores the same; a missing or
    mis-sized table is an error."""
    extra = {"model": name} | ({"mean_interest": False, "recent_interest": 0} if name != "transformer_dcn" else {})
    cfg = dataclasses.replace(SMALL, **extra, exposure_levels=4)
    tags, mm = item_tables()
    level = torch.arange(N_ITEMS + 1) % 4 + 1
    level[0] = 0
    torch.manual_seed(0)
    model = build_model(cfg, feature_map(), tags, mm, None, level).eval()
    e = cfg.embedding_dim
    assert model.item_dim == 2 * e + MM
    ids = torch.tensor([0, 1, 2, 5])
    emb = model.embed_items(ids)
    tag_mean = masked_mean(model.tag_emb(model.item_tags[ids]), model.item_tags[ids])
    torch.testing.assert_close(emb[:, e:2 * e], tag_mean + model.exposure_emb(level[ids]))
    torch.testing.assert_close(emb[:, :e], model.item_emb(ids))
    assert emb[0].abs().sum() == 0
    b = batch(random_histories(6, 20))
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, feature_map())
    loaded, _ = load_checkpoint(path, torch.device("cpu"))
    torch.testing.assert_close(loaded.item_exposure, level)
    torch.testing.assert_close(loaded(b), model(b))
    with pytest.raises(ValueError, match="exposure_levels needs exposure levels"):
        build_model(cfg, feature_map(), tags, mm)
    with pytest.raises(ValueError, match=r"got a \(3,\) table"):
        build_model(cfg, feature_map(), tags, mm, None, torch.ones(3, dtype=torch.long))


def test_a_checkpoint_written_before_the_later_switches_loads_as_it_was(tmp_path):
    """A checkpoint whose config lacks exposure_levels, item_bias, target_interest, recent_map, user_bias,
    ensemble_mix, user_interest, history_length, history_similarity, similarity_count and repeat_count (written
    before they existed) rebuilds the model it holds, with each off, whatever ModelConfig's defaults are."""
    model = small_model()
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, feature_map())
    ckpt = torch.load(path, weights_only=True)
    for key in ("exposure_levels", "item_bias", "target_interest", "recent_map", "user_bias", "ensemble_mix",
                "user_interest", "history_length", "history_similarity", "similarity_count", "repeat_count"):
        del ckpt["config"][key]
    torch.save(ckpt, path)
    loaded, _ = load_checkpoint(path, torch.device("cpu"))
    assert loaded.cfg.exposure_levels == 0 and not loaded.cfg.item_bias and not loaded.cfg.target_interest
    assert not loaded.cfg.recent_map and not loaded.cfg.user_bias and loaded.cfg.ensemble_mix == "none"
    assert not loaded.cfg.user_interest and not loaded.cfg.history_length and not loaded.cfg.history_similarity
    assert not loaded.cfg.similarity_count and not loaded.cfg.repeat_count
    b = batch(random_histories(6, 20))
    torch.testing.assert_close(loaded(b), model(b))
