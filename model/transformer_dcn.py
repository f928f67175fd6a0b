"""Transformer over the user history with the target item, plus DCNv2: the 1st-place WWW2025 MM-CTR model.

Items are embedded by model.layers.CTRBase: e_item = [id (E) || mean tag (E) || W_mm * frozen PCA embedding],
item_dim = 2E + mm_dim (2E without `use_mm_emb`). Each history position i becomes the token
[e_item_i || e_target] (no positional encoding), fed to a Transformer encoder (model.layers.Encoder: torch's
nn.TransformerEncoder, post-norm, with a cheaper dropout draw) whose key padding mask is
`item_seq == 0`: padded positions are never attended to and their outputs are zeroed. (The published code passes
the inverted mask and so attends only to padding; this file does what the paper describes.) The sequence output
is the flattened outputs of the `first_k` most recent positions plus a max-pool over real positions (through a
linear layer). DCNv2 takes [context feature embeddings || e_target || sequence output]; its cross network and deep
MLP run in parallel and their outputs, concatenated, go through the prediction MLP to one logit.

`mean_interest` (our addition, not in the published model) also gives DCNv2 the mean u of all the history's item
embeddings and its elementwise product with the target, t * u: the first-k outputs see only the most recent items,
and a product of target and history features is what a click model of "user taste . item" needs, which the deep
MLP can only approximate and the cross network must learn from data. `recent_interest: r` (also ours) adds the
same product for each of the r most recent items, t * h_i: where the last clicks say what the user wants now
(a session), the score is a bilinear form of the target and those items, which a low-rank cross network can
express only in part. `target_interest` (also ours) adds the history pooled by attention to the target,
v = sum_i softmax_i((W t) . h_i / sqrt(I)) h_i over the real positions (model.layers.target_attention, DIN's idea
with a bilinear score), and t * v: a user with several tastes is as interested in an item as in the closest of
them, which a mean over the whole history blurs and the k most recent items may not hold. `recent_map` (also
ours) gives recent_interest's products as t * (M h_i), M = I + A a learnt I x I map, A starting at zero: t * h_i
can only feed the DCN bilinear forms t^T D h_i with D diagonal, symmetric in the two items (both come from one
embedding table), while what a click makes likely next need not resemble it, nor lead back to it. A, not M, is
the parameter, so the L2 of `net_regularizer` and AdamW's decay pull M toward the identity (the model without
the map), not toward zero (no recent products at all). `user_interest` (also ours) adds a learnt vector w_u per
user of the train split and t * w_u (matrix factorisation's user . item, through the DCN): the history holds only
the clicks before a row, and is short for most users, while w_u learns from every train row of the user, shown
items not clicked included; a user training never saw has w_u = 0. `history_length` (also ours) adds an embedding
of the number of real history items, in half-octave buckets (model/layers.py `length_buckets`): a mean, a max or
an attention over the history forgets how long it is, while how many clicks a user has made says how much the
log's policy has learnt of them and how engaged they are (where the policy improves with what it knows, the same
user clicks more as their history grows, which a per-user bias averages away). `history_similarity` (also ours)
adds an embedding of the highest cosine between the target's frozen embedding and another history item's, in 40
steps (model/layers.py `max_history_cosine`): whether the history holds an item very like the target (an episode
of the show, a product like one bought) is a sharp fact that attention's softmax and the mean blur, and it says
most where items come in families the ids must otherwise learn one by one. `similarity_count` (also ours) adds how
many: the log-counts of other history items at or above each of those steps, over the last 1, 2, 4, ..., 32 and
all positions (model/layers.py `similarity_counts`), through a learnt table: a creator clicked five times pulls
harder than one clicked once, and recent clicks more than old ones. `repeat_count` (also ours) adds the same
log-counts, over the same windows, of the target itself in the history (model/layers.py `repeat_counts`), which
the cosines leave out: whether, how often and how recently the user clicked this very item before.

Ablations (ModelConfig): `use_transformer: false` builds the same sequence output from the tokens themselves
(no encoder), so only the Transformer is removed; `use_dcn: false` drops the cross network, the prediction MLP
then reads the deep MLP's output alone.

`forward` returns logits (B,); apply BCEWithLogits for training and sigmoid only for metrics/export.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.layers import MLP, CrossNetV2, CTRBase, Encoder, masked_mean, mlp_head, target_attention
from pipeline.core.config import ModelConfig
from pipeline.core.feature_map import FeatureMap


class TransformerDCN(CTRBase):
    """See the module docstring. Built from a ModelConfig, the feature map and the item tables."""

    def __init__(self, cfg: ModelConfig, feature_map: FeatureMap, item_tags: Tensor, item_mm: Tensor,
                 item_codes: Tensor | None = None, item_exposure: Tensor | None = None,
                 user_keys: Tensor | None = None, item_new: Tensor | None = None):
        """item_tags: (N+1, T) int64 tag ids per item; item_mm: (N+1, M) float32 frozen item embeddings; the
        rest as CTRBase's."""
        super().__init__(cfg, feature_map, item_tags, item_mm, item_codes, item_exposure, user_keys, item_new)
        d_model = 2 * self.item_dim  # num_heads divides it: CTRBase checked cfg.check_widths
        self.encoder = Encoder(d_model, cfg.num_heads, cfg.dim_feedforward, cfg.transformer_dropout,
                               cfg.transformer_layers) if cfg.use_transformer else None
        self.pool_proj = nn.Linear(d_model, d_model) if cfg.concat_max_pool else None
        dcn_in = cfg.dcn_input_dim(self.item_dim, self.context_dim)
        self.interest_query = nn.Linear(self.item_dim, self.item_dim, bias=False) if cfg.target_interest else None
        self.recent_delta = nn.Linear(self.item_dim, self.item_dim, bias=False) if cfg.recent_map else None
        self.cross = CrossNetV2(dcn_in, cfg.cross_layers, cfg.cross_rank) if cfg.use_dcn else None
        self.dnn = MLP(dcn_in, cfg.dnn_hidden_units, cfg.net_dropout)
        self.head = mlp_head(dcn_in * int(cfg.use_dcn) + self.dnn.out_dim, cfg.mlp_hidden_units, 0.0)
        self.reset_parameters()

    def sequence_output(self, history: Tensor, target: Tensor, pad: Tensor) -> Tensor:
        """history (B, L, I), target (B, I), pad (B, L) bool -> (B, (first_k + pool) * 2I)."""
        length = history.shape[1]
        out = torch.cat([history, target.unsqueeze(1).expand(-1, length, -1)], dim=-1)  # (B, L, 2I)
        if self.encoder is not None:
            # A row with no history would have every key masked (softmax over nothing = NaN): let it attend to
            # its last (padding) token, whose input is [0 || target]; its output is zeroed below like every pad.
            attn_pad = pad.clone()
            attn_pad[pad.all(dim=1), -1] = False
            out = self.encoder(out, attn_pad)  # (B, L, 2I)
        # Zeroed even without the encoder: a padding token still carries e_target.
        out = out.masked_fill(pad.unsqueeze(-1), 0.0)
        parts = [out[:, -self.cfg.first_k:].flatten(1)]  # (B, k * 2I): the k most recent positions
        if self.pool_proj is not None:
            pooled = out.masked_fill(pad.unsqueeze(-1), float("-inf")).amax(dim=1)  # (B, 2I)
            pooled = torch.where(torch.isinf(pooled), torch.zeros_like(pooled), pooled)  # empty history -> 0
            parts.append(self.pool_proj(pooled))
        return torch.cat(parts, dim=1)

    def reset_parameters(self) -> None:
        """CTRBase's init, then recent_map's A at zero (M = I): the model starts as the one without it."""
        super().reset_parameters()
        if self.recent_delta is not None:
            nn.init.zeros_(self.recent_delta.weight)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """batch: item_seq (B, L) int64 left-padded with 0 (shorter than first_k is padded here), item_id (B,)
        int64, each context feature (B,) int64, and user_id (B,) int64 with user_bias or user_interest -> logits
        (B,) float32."""
        seq, target_id = batch["item_seq"], batch["item_id"]
        if seq.shape[1] < self.cfg.first_k:  # keep the k-most-recent slice well defined for short batches
            seq = nn.functional.pad(seq, (self.cfg.first_k - seq.shape[1], 0))
        target = self.embed_items(target_id)  # (B, I)
        history = self.embed_items(seq)  # (B, L, I)
        seq_out = self.sequence_output(history, target, seq == 0)  # (B, S)
        parts = [*self.embed_context(batch), target, seq_out]
        if self.cfg.mean_interest:
            interest = masked_mean(history, seq)  # (B, I): the mean of the whole history, 0 when empty
            parts += [interest, target * interest]
        if self.cfg.recent_interest:  # (B, r * I): target * each of the r most recent items, 0 at padding
            recent = history[:, -self.cfg.recent_interest:]  # (B, r, I)
            if self.recent_delta is not None:  # M h = h + A h, bias-free, so padding stays 0
                recent = recent + self.recent_delta(recent)
            parts.append((target.unsqueeze(1) * recent).flatten(1))
        if self.interest_query is not None:
            pooled = target_attention(self.interest_query(target), history, seq == 0)  # (B, I)
            parts += [pooled, target * pooled]
        if self.user_emb is not None:
            taste = self.user_vector(batch)  # (B, I), 0 for a user training never saw
            parts += [taste, target * taste]
        if self.length_emb is not None:
            parts.append(self.embed_length(seq))  # (B, E)
        if self.similarity_emb is not None or self.count_emb is not None:
            cosines = self.history_cosines(seq, target_id)  # (B, L)
            if self.similarity_emb is not None:
                parts.append(self.embed_similarity(cosines))  # (B, E)
            if self.count_emb is not None:
                parts.append(self.embed_similarity_count(cosines))  # (B, E)
        if self.repeat_emb is not None:
            parts.append(self.embed_repeat_count(seq, target_id))  # (B, E)
        x0 = torch.cat(parts, dim=1)  # (B, D)
        x = self.dnn(x0)  # (B, deep_out)
        if self.cross is not None:
            x = torch.cat([self.cross(x0), x], dim=1)  # (B, D + deep_out)
        return self.head(x).squeeze(-1) + self.logit_bias(batch)  # (B,)
