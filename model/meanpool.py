"""Mean-pool MLP: a baseline that reads the history as an unordered bag of items.

Items are embedded exactly as in TransformerDCN and DIN (model.layers.CTRBase): e_item (item_dim = 2E + mm_dim, or
2E without `use_mm_emb`). The user vector u is the mean of the history items' embeddings over real positions
(item_seq != 0); an empty history gives u = 0. With t = e_target, a deep MLP (`dnn_hidden_units`, ReLU,
`net_dropout`) and a Linear map [context embeddings || t || u || t * u] to one logit. There is no attention, no
order and no transformer or cross network: what it scores above a history-blind model is what the average of the
history says about the target.

`forward` returns logits (B,); apply BCEWithLogits for training and sigmoid only for metrics/export.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.layers import CTRBase, masked_mean, mlp_head
from pipeline.core.config import ModelConfig
from pipeline.core.feature_map import FeatureMap


class MeanPool(CTRBase):
    """See the module docstring. Built from a ModelConfig, the feature map and the item tables."""

    def __init__(self, cfg: ModelConfig, feature_map: FeatureMap, item_tags: Tensor, item_mm: Tensor,
                 item_codes: Tensor | None = None, item_exposure: Tensor | None = None,
                 user_keys: Tensor | None = None, item_new: Tensor | None = None):
        """item_tags: (N+1, T) int64 tag ids per item; item_mm: (N+1, M) float32 frozen item embeddings; the
        rest as CTRBase's."""
        super().__init__(cfg, feature_map, item_tags, item_mm, item_codes, item_exposure, user_keys, item_new)
        self.dnn = mlp_head(self.context_dim + 3 * self.item_dim, cfg.dnn_hidden_units, cfg.net_dropout)
        self.reset_parameters()

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """batch: item_seq (B, L) int64 left-padded with 0 (any L), item_id (B,) int64, and each context
        feature (B,) int64 -> logits (B,) float32."""
        seq = batch["item_seq"]
        target = self.embed_items(batch["item_id"])  # (B, I)
        user = masked_mean(self.embed_items(seq), seq)  # (B, I), 0 for an empty history
        x = torch.cat([*self.embed_context(batch), target, user, target * user], dim=1)  # (B, C*E + 3I)
        return self.dnn(x).squeeze(-1) + self.logit_bias(batch)  # (B,)
