"""The Transformer+DCNv2 model: widths from the feature map, padding masking, the winning configuration."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.transformer_dcn import CrossNetV2, TransformerDCN, masked_mean
from pipeline.feature_map import Feature, FeatureMap

N_ITEMS, N_TAGS, MM = 60, 12, 8


def feature_map(max_len: int = 20, mm: int = MM, n_items: int = N_ITEMS) -> FeatureMap:
    return FeatureMap((
        Feature("item_id", "categorical", "item", vocab_size=n_items + 1),
        Feature("item_tags", "sequence", "item", vocab_size=N_TAGS + 1, max_len=3),
        Feature("item_seq", "sequence", "history", vocab_size=n_items + 1, max_len=max_len,
                share_embedding="item_id"),
        Feature("likes_level", "categorical", "context", vocab_size=11),
        Feature("views_level", "categorical", "context", vocab_size=11),
    )).with_mm_embedding(mm)


def item_tables(n_items: int = N_ITEMS, mm: int = MM, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tags = torch.randint(0, N_TAGS + 1, (n_items + 1, 3), generator=g)
    emb = torch.randn(n_items + 1, mm, generator=g)
    tags[0], emb[0] = 0, 0.0
    return tags, emb


SMALL = ModelConfig(embedding_dim=8, transformer_layers=2, num_heads=2, dim_feedforward=16, first_k=4,
                    cross_layers=2, dnn_hidden_units=(32, 16), mlp_hidden_units=(8,))


def small_model(cfg: ModelConfig = SMALL) -> TransformerDCN:
    torch.manual_seed(0)
    return TransformerDCN(cfg, feature_map(), *item_tables()).eval()


def batch(seq: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = seq.shape[0]
    return {"item_seq": seq, "item_id": torch.randint(1, N_ITEMS + 1, (b,), generator=g),
            "likes_level": torch.randint(0, 11, (b,), generator=g),
            "views_level": torch.randint(0, 11, (b,), generator=g)}


def random_histories(b: int, length: int, seed: int = 2) -> torch.Tensor:
    """Left-padded histories with real lengths 0..length."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (b, length), generator=g)
    real = torch.randint(0, length + 1, (b,), generator=g)
    pos = torch.arange(length).expand(b, -1)
    return torch.where(pos >= length - real.unsqueeze(1), seq, 0)


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


def test_masked_mean_ignores_padding():
    emb = torch.tensor([[[1.0], [3.0], [100.0]]])
    ids = torch.tensor([[4, 7, 0]])
    torch.testing.assert_close(masked_mean(emb, ids), torch.tensor([[2.0]]))


def test_winning_configuration_forward_backward():
    """The 1st-place configuration: embedding 64, 128-d frozen embedding, first_k 16 -> DCN input 9,088 wide."""
    cfg = ModelConfig()  # defaults are the winning values
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
