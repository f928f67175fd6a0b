"""Transformer over the user history with the target item, plus DCNv2: the 1st-place WWW2025 MM-CTR model.

Item embedding  e_item = [id embedding (E) || mean of its tag embeddings (E) || W_mm * frozen PCA embedding],
with W_mm a learnable bias-free map from the frozen width to `mm_dim` (0 = keep the frozen width, as the winner
does: 128 -> 128); item_dim = 2E + mm_dim. Each history position i becomes the token
[e_item_i || e_target] (no positional encoding), fed to a Transformer encoder whose key padding mask is
`item_seq == 0`: padded positions are never attended to and their outputs are zeroed. (The published code passes
the inverted mask and so attends only to padding; this file does what the paper describes.) The sequence output
is the flattened outputs of the `first_k` most recent positions plus a max-pool over real positions (through a
linear layer). DCNv2 takes [context feature embeddings || e_target || sequence output]; its cross network and deep
MLP run in parallel and their outputs, concatenated, go through the prediction MLP to one logit.

`forward` returns logits (B,); apply BCEWithLogits for training and sigmoid only for metrics/export.
Item-side inputs (tags, frozen embedding) live in buffers indexed by item id (row i = item i, row 0 = padding),
so a batch carries ids only and the checkpoint holds everything needed to score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.config import ModelConfig
from pipeline.feature_map import FeatureMap


def mlp(in_dim: int, units: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout blocks over `units`; output width units[-1] (or in_dim when empty)."""
    layers: list[nn.Module] = []
    for out_dim in units:
        layers += [nn.Linear(in_dim, out_dim), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = out_dim
    return nn.Sequential(*layers)


class CrossNetV2(nn.Module):
    """DCNv2 cross network: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, full-rank W_l (input_dim x input_dim)."""

    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0  # (B, D)
        for layer in self.layers:
            x = x0 * layer(x) + x  # (B, D)
        return x


def masked_mean(emb: Tensor, ids: Tensor) -> Tensor:
    """Mean of `emb` (..., T, E) over positions where ids (..., T) != 0; all-padding rows give zeros."""
    mask = (ids != 0).unsqueeze(-1).to(emb.dtype)  # (..., T, 1)
    return (emb * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)  # (..., E)


class TransformerDCN(nn.Module):
    """See the module docstring. Built from a ModelConfig, the feature map and the item tables."""

    def __init__(self, cfg: ModelConfig, feature_map: FeatureMap, item_tags: Tensor, item_mm: Tensor):
        """item_tags: (N+1, T) int64 tag ids per item; item_mm: (N+1, M) float32 frozen item embeddings."""
        super().__init__()
        self.cfg = cfg
        e = cfg.embedding_dim
        n_items = feature_map["item_id"].vocab_size
        if item_tags.shape[0] != n_items or item_mm.shape[0] != n_items:
            raise ValueError(f"item tables have {item_tags.shape[0]}/{item_mm.shape[0]} rows, feature map says "
                             f"{n_items} item ids")
        self.register_buffer("item_tags", item_tags.long())  # (N+1, T)
        self.register_buffer("item_mm", item_mm.float())  # (N+1, M)
        mm_dim = cfg.mm_dim or item_mm.shape[1]
        self.context_names = [f.name for f in feature_map.context_features]

        self.item_emb = nn.Embedding(n_items, e, padding_idx=0)
        self.tag_emb = nn.Embedding(feature_map["item_tags"].vocab_size, e, padding_idx=0)
        self.mm_proj = nn.Linear(item_mm.shape[1], mm_dim, bias=False)
        self.context_emb = nn.ModuleDict(
            {f.name: nn.Embedding(f.vocab_size, e, padding_idx=0) for f in feature_map.context_features})
        self.item_dim = 2 * e + mm_dim
        d_model = 2 * self.item_dim
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, cfg.num_heads, cfg.dim_feedforward, cfg.transformer_dropout,
                                       batch_first=True),
            cfg.transformer_layers, enable_nested_tensor=False)
        self.pool_proj = nn.Linear(d_model, d_model) if cfg.concat_max_pool else None
        seq_out = (cfg.first_k + int(cfg.concat_max_pool)) * d_model
        dcn_in = len(self.context_names) * e + self.item_dim + seq_out
        self.cross = CrossNetV2(dcn_in, cfg.cross_layers)
        self.dnn = mlp(dcn_in, cfg.dnn_hidden_units, cfg.net_dropout)
        deep_out = cfg.dnn_hidden_units[-1] if cfg.dnn_hidden_units else dcn_in
        head = mlp(dcn_in + deep_out, cfg.mlp_hidden_units, 0.0)
        head_out = cfg.mlp_hidden_units[-1] if cfg.mlp_hidden_units else dcn_in + deep_out
        self.head = nn.Sequential(head, nn.Linear(head_out, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """FuxiCTR's init: embeddings N(0, 1e-4) with zero padding rows; Linear xavier-normal, zero bias."""
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=1e-4)
                with torch.no_grad():
                    m.weight[0].zero_()
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def embed_items(self, ids: Tensor) -> Tensor:
        """Item ids (...) -> item embeddings (..., item_dim); id 0 (padding) maps to all zeros."""
        tags = self.item_tags[ids]  # (..., T)
        parts = [self.item_emb(ids), masked_mean(self.tag_emb(tags), tags), self.mm_proj(self.item_mm[ids])]
        return torch.cat(parts, dim=-1)  # (..., item_dim)

    def sequence_output(self, history: Tensor, target: Tensor, pad: Tensor) -> Tensor:
        """history (B, L, I), target (B, I), pad (B, L) bool -> (B, (first_k + pool) * 2I)."""
        b, length, _ = history.shape
        tokens = torch.cat([history, target.unsqueeze(1).expand(-1, length, -1)], dim=-1)  # (B, L, 2I)
        # A row with no history would have every key masked (softmax over nothing = NaN): let it attend to its
        # last (padding) token, whose input is [0 || target]; its output is zeroed below like every pad position.
        attn_pad = pad.clone()
        attn_pad[pad.all(dim=1), -1] = False
        out = self.encoder(tokens, src_key_padding_mask=attn_pad)  # (B, L, 2I)
        out = out.masked_fill(pad.unsqueeze(-1), 0.0)
        parts = [out[:, -self.cfg.first_k:].flatten(1)]  # (B, k * 2I): the k most recent positions
        if self.pool_proj is not None:
            pooled = out.masked_fill(pad.unsqueeze(-1), float("-inf")).amax(dim=1)  # (B, 2I)
            pooled = torch.where(torch.isinf(pooled), torch.zeros_like(pooled), pooled)  # empty history -> 0
            parts.append(self.pool_proj(pooled))
        return torch.cat(parts, dim=1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """batch: item_seq (B, L) int64 left-padded with 0 (L >= first_k), item_id (B,) int64, and each context
        feature (B,) int64 -> logits (B,) float32."""
        seq, target_id = batch["item_seq"], batch["item_id"]
        if seq.shape[1] < self.cfg.first_k:  # keep the k-most-recent slice well defined for short batches
            seq = nn.functional.pad(seq, (self.cfg.first_k - seq.shape[1], 0))
        target = self.embed_items(target_id)  # (B, I)
        history = self.embed_items(seq)  # (B, L, I)
        seq_out = self.sequence_output(history, target, seq == 0)  # (B, S)
        context = [self.context_emb[name](batch[name]) for name in self.context_names]  # each (B, E)
        x0 = torch.cat([*context, target, seq_out], dim=1)  # (B, D)
        x = torch.cat([self.cross(x0), self.dnn(x0)], dim=1)  # (B, D + deep_out)
        return self.head(x).squeeze(-1)  # (B,)
