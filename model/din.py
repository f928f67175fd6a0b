"""DIN (Zhou et al. 2018, "Deep Interest Network"), as FuxiCTR implements it: the challenge's baseline.

Items are embedded exactly as in TransformerDCN (model.layers.CTRBase): e_item (item_dim = 2E + mm_dim, or 2E
without `use_mm_emb`). Target attention over the history: for each real position i (item_seq != 0) an MLP
(`din_attention_units`, ReLU or Dice, no dropout) maps [t || h_i || t - h_i || t * h_i] (t = e_target,
h_i = e_item_i; FuxiCTR's order) to a scalar weight w_i. There is no softmax (DIN keeps the weights unnormalised
so the pooled vector's norm reflects how much of the history is relevant); padded positions get weight exactly 0.
pooled = sum_i w_i h_i, (B, item_dim); an empty history pools to zeros. A deep MLP (`dnn_hidden_units`,
`net_dropout`, ReLU or Dice) over [context embeddings || e_target || pooled] and a Linear give one logit.

Only real positions enter the attention MLP, so with Dice its batch statistics come from real history items
alone and the number of padding columns changes nothing, in training as in eval.

`forward` returns logits (B,); apply BCEWithLogits for training and sigmoid only for metrics/export.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.layers import CTRBase, mlp_head
from pipeline.core.config import ModelConfig
from pipeline.core.feature_map import FeatureMap


class DIN(CTRBase):
    """See the module docstring. Built from a ModelConfig, the feature map and the item tables."""

    def __init__(self, cfg: ModelConfig, feature_map: FeatureMap, item_tags: Tensor, item_mm: Tensor,
                 item_codes: Tensor | None = None, item_exposure: Tensor | None = None):
        """item_tags: (N+1, T) int64 tag ids per item; item_mm: (N+1, M) float32 frozen item embeddings."""
        super().__init__(cfg, feature_map, item_tags, item_mm, item_codes, item_exposure)
        self.attention = mlp_head(4 * self.item_dim, cfg.din_attention_units, 0.0, cfg.dice)
        self.dnn = mlp_head(self.context_dim + 2 * self.item_dim, cfg.dnn_hidden_units, cfg.net_dropout, cfg.dice)
        self.reset_parameters()

    def attend(self, history: Tensor, target: Tensor, real: Tensor) -> Tensor:
        """history (B, L, I), target (B, I), real (B, L) bool (False = padding) -> pooled history (B, I)."""
        h = history[real]  # (M, I): the M real positions of the batch
        t = target.unsqueeze(1).expand_as(history)[real]  # (M, I)
        scores = self.attention(torch.cat([t, h, t - h, t * h], dim=-1)).squeeze(-1)  # (M,)
        weights = scores.new_zeros(real.shape).masked_scatter(real, scores)  # (B, L), 0 at padding
        return (weights.unsqueeze(-1) * history).sum(dim=1)  # (B, I)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """batch: item_seq (B, L) int64 left-padded with 0 (any L), item_id (B,) int64, and each context
        feature (B,) int64 -> logits (B,) float32."""
        seq = batch["item_seq"]
        target = self.embed_items(batch["item_id"])  # (B, I)
        pooled = self.attend(self.embed_items(seq), target, seq != 0)  # (B, I)
        x = torch.cat([*self.embed_context(batch), target, pooled], dim=1)  # (B, C*E + 2I)
        return self.dnn(x).squeeze(-1) + self.target_bias(batch["item_id"])  # (B,)
