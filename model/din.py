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

The attention MLP's first Linear is computed factored (the same parameters, the same function up to float
rounding): with its weight split by input block as [W_t | W_h | W_d | W_p],
    W [t || h || t - h || t * h] = (W_t + W_d) t + [W_h - W_d | W_p] [h || t * h],
so the target's term is computed once per row instead of once per history position, and the per-position matmul
is half as wide (2I instead of 4I inputs): the attention MLP was the largest per-step cost of DIN on the CPU.
`attention_reference` keeps the plain concatenated form, which tests compare against.

`forward` returns logits (B,); apply BCEWithLogits for training and sigmoid only for metrics/export.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.layers import CTRBase, mlp_head
from pipeline.core.config import ModelConfig
from pipeline.core.feature_map import FeatureMap


class DIN(CTRBase):
    """See the module docstring. Built from a ModelConfig, the feature map and the item tables."""

    def __init__(self, cfg: ModelConfig, feature_map: FeatureMap, item_tags: Tensor, item_mm: Tensor,
                 item_codes: Tensor | None = None, item_exposure: Tensor | None = None,
                 user_keys: Tensor | None = None, item_new: Tensor | None = None):
        """item_tags: (N+1, T) int64 tag ids per item; item_mm: (N+1, M) float32 frozen item embeddings; the
        rest as CTRBase's."""
        super().__init__(cfg, feature_map, item_tags, item_mm, item_codes, item_exposure, user_keys, item_new)
        self.attention = mlp_head(4 * self.item_dim, cfg.din_attention_units, 0.0, cfg.dice)
        self.dnn = mlp_head(self.context_dim + 2 * self.item_dim, cfg.dnn_hidden_units, cfg.net_dropout, cfg.dice)
        self.reset_parameters()

    def attention_scores(self, t: Tensor, h: Tensor, row: Tensor) -> Tensor:
        """t (B, I) targets, h (M, I) real history positions, row (M,) int64 the row of each position -> the
        attention MLP's scores (M,), its first Linear factored (module docstring)."""
        layers = [*self.attention[0], self.attention[1]]  # the MLP's blocks, then its output Linear
        first, rest = layers[0], layers[1:]
        w_t, w_h, w_d, w_p = first.weight.chunk(4, dim=1)  # (U, I) each
        per_row = nn.functional.linear(t, w_t + w_d, first.bias)  # (B, U)
        # index_select, not t[row]: its backward (index_add) is deterministic on the CPU, advanced indexing's is not
        t_row = t.index_select(0, row)  # (M, I)
        per_position = torch.cat([h, t_row * h], dim=-1) @ torch.cat([w_h - w_d, w_p], dim=1).T  # (M, U)
        x = per_position + per_row.index_select(0, row)  # (M, U)
        for layer in rest:
            x = layer(x)
        return x.squeeze(-1)  # (M,)

    def attention_reference(self, t: Tensor, h: Tensor, row: Tensor) -> Tensor:
        """`attention_scores` in the plain form: the attention MLP over [t || h || t - h || t * h] per position."""
        t = t.index_select(0, row)  # (M, I)
        return self.attention(torch.cat([t, h, t - h, t * h], dim=-1)).squeeze(-1)  # (M,)

    def attend(self, h: Tensor, row: Tensor, target: Tensor) -> Tensor:
        """h (M, I) the embeddings of the batch's real history positions, row (M,) int64 the row of each,
        target (B, I) -> pooled history (B, I), zeros for a row without history."""
        weighted = self.attention_scores(target, h, row).unsqueeze(-1) * h  # (M, I)
        return target.new_zeros(target.shape).index_add_(0, row, weighted)  # (B, I)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """batch: item_seq (B, L) int64 left-padded with 0 (any L), item_id (B,) int64, and each context
        feature (B,) int64 -> logits (B,) float32."""
        seq, target_id = batch["item_seq"], batch["item_id"]
        row, col = (seq != 0).nonzero(as_tuple=True)  # (M,) each: the real history positions, row-major
        # Targets and real positions embedded in one call: padding is never embedded nor attended
        items = self.embed_items(torch.cat([target_id, seq[row, col]]))  # (B + M, I)
        target = items[:target_id.shape[0]]  # (B, I)
        pooled = self.attend(items[target_id.shape[0]:], row, target)  # (B, I)
        x = torch.cat([*self.embed_context(batch), target, pooled], dim=1)  # (B, C*E + 2I)
        return self.dnn(x).squeeze(-1) + self.logit_bias(batch)  # (B,)
