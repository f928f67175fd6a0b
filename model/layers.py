"""Building blocks shared by the CTR models (model/transformer_dcn.py, model/din.py, model/meanpool.py).

`CTRBase` owns what every model here embeds the same way: the item tables as buffers indexed by item id
(row i = item i, row 0 = padding), so a batch carries ids only and the checkpoint holds everything needed to
score; the item embedding e_item = [learnt item part (E) || mean of its tag embeddings (E) || W_mm * frozen
embedding (mm_dim)] (the last part only with `use_mm_emb`), item_dim = 2E (+ mm_dim), where with `exposure_levels`
the tag mean also gets the embedding of the item's train-exposure level added; one E-wide embedding per
context feature; embedding dropout on both; with `item_bias`, one learnt scalar per item that each model adds to
its logit for the target item, and with `user_bias` one per user seen in training (`logit_bias`); with
`user_interest`, one learnt item_dim-wide vector per user seen in training (`user_vector`, which the model reads);
with `history_length`, an E-wide vector per half-octave bucket of the history's length, a thermometer code
(`length_buckets`, `embed_length`); with `history_similarity`, an E-wide vector per bucket of the highest cosine of
the target's frozen embedding to that of another item in the history, a thermometer code too (`similarity_buckets`,
`embed_similarity`); with `similarity_count`, an E-wide vector sum_wb log(1 + C_wb) w_wb of the numbers C_wb of
other history items, among each window w of the most recent positions, at or above each such cosine step b
(`similarity_counts`, `embed_similarity_count`); with `repeat_count`, an E-wide vector sum_w log(1 + R_w) r_w of
the numbers R_w of times the target itself is among each such window (`repeat_counts`, `embed_repeat_count`);
with `new_item_offset`, one scalar (`new_item_logit`, fitted after training, 0 before) added to the logit of a
target item the train split never had as a target (the table `item_new`; `logit_bias`); and FuxiCTR's
initialisation.

User ids reach a row of the user tables (bias and vector) through an explicit index, never by their value:
`user_keys`, the sorted distinct user ids of the train split (a buffer, so the checkpoint holds it), maps user id k
to row 1 + its position there (`user_rows`), and a user the train split never saw to row 0, whose bias and vector
are fixed at 0. A user id is any int32 (the challenge's ids need not be dense), and the table is sized by the users,
not by the largest id.

The learnt item part is `item_repr`'s: `id`, the item's own id embedding; `semantic`, the sum over levels of
a learnt embedding per (level, code) of its semantic id (the quantize stage's codes), which items with similar
frozen embeddings share, so an item never seen in training still gets a learnt vector; `id+semantic`, the sum of
both. With `id_init: mm` the id embeddings start from the frozen embedding's prior (`mm_prior`) instead of
noise: items that look alike start alike, and an item that never gets a gradient (one with no train rows) keeps
a vector on the scale and in the neighbourhood of items like it, where a random one sits near zero.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from pipeline.core.config import ModelConfig
from pipeline.core.feature_map import FeatureMap


class Dice(nn.Module):
    """Dice (Zhou et al. 2018, DIN): p = sigmoid(BN(x)), out = p * x + (1 - p) * alpha * x, alpha learnable per
    unit, BN without affine parameters (FuxiCTR: eps 1e-9, momentum 0.01).

    Input (..., U): each unit is normalised over all leading positions together. Training uses the batch's
    statistics and updates running ones; eval uses the running statistics, so each row is then independent of
    the others. A training batch with fewer than two rows has no variance to estimate (the last batch of an
    epoch can be that small) and is normalised with the running statistics instead.
    """

    def __init__(self, units: int, eps: float = 1e-9, momentum: float = 0.01):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.alpha = nn.Parameter(torch.zeros(units))
        self.register_buffer("running_mean", torch.zeros(units))
        self.register_buffer("running_var", torch.ones(units))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (N, U)
        batch_stats = self.training and flat.shape[0] > 1
        z = nn.functional.batch_norm(flat, self.running_mean, self.running_var, training=batch_stats,
                                     momentum=self.momentum, eps=self.eps)  # (N, U)
        p = torch.sigmoid(z).view_as(x)  # (..., U)
        return p * x + (1 - p) * self.alpha * x


def keep_mask(shape: tuple[int, ...] | torch.Size, p: float, device: torch.device | str) -> Tensor:
    """(shape) bool, each entry True with probability 1 - p, p in [0, 1) rounded to a multiple of 2^-16 (p = 0.1
    keeps 1 - 6554/65536 = 0.899994). Every dropout mask of the models is drawn here.

    Each entry is a 16-bit uniform, four from each int64 of one full-range `random_` (its 64 bits all uniform;
    without arguments random_ keeps an int64's sign bit 0, which would bias every fourth lane). On CPU that is a
    third of the time of `torch.rand(shape) >= p` (0.7 vs 1.9 ms at (256, 21, 96), benchmarks/train.py's profile:
    the float draw was a tenth of a step). `keep_mask_reference` is the plain form of the same draw."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform on -32768..32767
    # lane + 32768 is uniform on 0..65535; comparing the int16 lane itself to the shifted threshold needs no widening
    return lanes >= round(p * 65536) - 32768


def keep_mask_reference(shape: tuple[int, ...], p: float) -> Tensor:
    """The plain form of `keep_mask` on the CPU, from the same draw of int64 words: each word split into its four
    16-bit lanes with shifts, low lane first (the order of Tensor.view on a little-endian machine), each lane read
    as a two's-complement value s on -32768..32767, the entry kept when s + 32768 >= round(p * 65536)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None).tolist()
    bits = [(w >> (16 * k)) & 0xFFFF for w in words for k in range(4)][:n]  # & takes the lane's bits whatever w's sign
    signed = [b - 65536 if b >= 32768 else b for b in bits]
    return torch.tensor([s + 32768 >= round(p * 65536) for s in signed], dtype=torch.bool).view(shape)


class Dropout(nn.Module):
    """nn.Dropout's function (in training each entry is zeroed with probability p, survivors scaled by
    1 / (1 - p); identity in eval or at p = 0, drawing nothing), with the mask drawn by `keep_mask`: torch's CPU
    bernoulli_ takes ~1.5x the time of rand_like, and rand_like ~2.6x that of keep_mask."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (keep_mask(x.shape, self.p, x.device) * (1.0 / (1.0 - self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Sequential):
    """Linear -> ReLU (Dice when `dice`) -> Dropout blocks over `units`; output width `out_dim` = units[-1] (or
    in_dim when `units` is empty, an identity)."""

    def __init__(self, in_dim: int, units: tuple[int, ...], dropout: float, dice: bool = False):
        layers: list[nn.Module] = []
        for out_dim in units:
            layers += [nn.Linear(in_dim, out_dim), Dice(out_dim) if dice else nn.ReLU()]
            if dropout > 0:
                layers.append(Dropout(dropout))
            in_dim = out_dim
        super().__init__(*layers)
        self.out_dim = in_dim


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameters, names and init (in_proj_weight (3D, D)
    xavier-uniform, in_proj_bias (3D,) zero, out_proj a Linear whose bias is zeroed, drawn in that module's order),
    so a state dict of either loads into the other; the attention weights go through `Dropout`. num_heads must
    divide d_model (ModelConfig.check_widths checks train.num_heads before a model is built)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """x (B, L, D), pad (B, L) bool, True = a key no query attends to (each row needs one False) -> (B, L, D)."""
        b, length, d = x.shape
        # Three projections by the thirds of in_proj, not one (B, L, 3D) projection split by a permuted view: the
        # backward of that split stacked the three gradients and copied them back into (B, L, 3D), a tenth of a
        # CPU training step (benchmarks/train.py --profile)
        q, k, v = (nn.functional.linear(x, w, bias).view(b, length, self.num_heads, d // self.num_heads).transpose(1, 2)
                   for w, bias in zip(self.in_proj_weight.chunk(3), self.in_proj_bias.chunk(3)))  # (B, H, L, d/H)
        scores = q @ k.transpose(-1, -2) / (d // self.num_heads) ** 0.5  # (B, H, L, L)
        weights = self.dropout(scores.masked_fill(pad[:, None, None, :], float("-inf")).softmax(-1))
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, length, d))  # (B, L, D)


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer's function as the models use it (post-norm, ReLU, batch first, LayerNorm eps
    1e-5), with its parameter names and init order, and every dropout a `Dropout`: torch's layer draws its four
    dropout masks (attention weights, residuals, feed-forward) with CPU bernoulli_, a fifth of a CPU training
    step of the default model (`python benchmarks/encoder.py` measures both layers side by side)."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(d_model, num_heads, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """x (B, L, D), pad (B, L) bool as SelfAttention's -> (B, L, D)."""
        x = self.norm1(x + self.dropout(self.self_attn(x, pad)))
        return self.norm2(x + self.dropout(self.linear2(self.dropout(torch.relu(self.linear1(x))))))


class Encoder(nn.Module):
    """A stack of `num_layers` EncoderLayers, each starting as a copy of the first (nn.TransformerEncoder's
    clones, so the state dict, its keys `layers.<i>.*`, and the initial weights match torch's encoder's)."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float, num_layers: int):
        super().__init__()
        first = EncoderLayer(d_model, num_heads, dim_feedforward, dropout)
        self.layers = nn.ModuleList([first, *(copy.deepcopy(first) for _ in range(num_layers - 1))])

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """x (B, L, D), pad (B, L) bool as SelfAttention's -> (B, L, D)."""
        for layer in self.layers:
            x = layer(x, pad)
        return x


def mlp_head(in_dim: int, units: tuple[int, ...], dropout: float, dice: bool = False) -> nn.Sequential:
    """MLP(in_dim, units) followed by a Linear to one output: (..., in_dim) -> (..., 1)."""
    body = MLP(in_dim, units, dropout, dice)
    return nn.Sequential(body, nn.Linear(body.out_dim, 1))


class CrossNetV2(nn.Module):
    """DCNv2 cross network: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l. W_l is full-rank (input_dim x input_dim), or
    with rank r > 0 the DCNv2 paper's low-rank form W_l = U_l V_l^T (U_l, V_l: input_dim x r): 2 * D * r weights
    per layer instead of D^2, fewer to fit on small data and cheaper per step."""

    def __init__(self, input_dim: int, num_layers: int, rank: int = 0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(input_dim, input_dim) if rank == 0
            else nn.Sequential(nn.Linear(input_dim, rank, bias=False), nn.Linear(rank, input_dim))
            for _ in range(num_layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0  # (B, D)
        for layer in self.layers:
            x = x0 * layer(x) + x  # (B, D)
        return x


def masked_mean(emb: Tensor, ids: Tensor) -> Tensor:
    """Mean of `emb` (..., T, E) over positions where ids (..., T) != 0; all-padding rows give zeros."""
    mask = (ids != 0).unsqueeze(-1).to(emb.dtype)  # (..., T, 1)
    return (emb * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)  # (..., E)


def target_attention(query: Tensor, keys: Tensor, pad: Tensor) -> Tensor:
    """query (B, I), keys (B, L, I), pad (B, L) bool -> (B, I): sum_i a_i keys_i with a = softmax over the real
    positions of query . keys_i / sqrt(I); all-padding rows give zeros."""
    scores = torch.einsum("bi,bli->bl", query, keys) / keys.shape[-1] ** 0.5  # (B, L)
    # The dtype's lowest value, not -inf: an all-padding row would be NaN (and its gradient too); zeroed instead.
    weights = torch.softmax(scores.masked_fill(pad, torch.finfo(scores.dtype).min), dim=1) * ~pad  # (B, L)
    return torch.einsum("bl,bli->bi", weights, keys)


def mm_prior(mm: Tensor, dim: int) -> Tensor:
    """(N, M) float frozen item embeddings -> (N, dim) float32: the rows, centred, projected on their top `dim`
    principal directions (zero columns past min(N, M)), each direction's sign fixed so its largest-magnitude
    loading is positive (deterministic), scaled so the rows' mean norm is 1 (the scale of fit_pca's l2-normalised
    rows). All-zero rows in, all-zero out of the scaling only when every row is equal."""
    x = mm.double() - mm.double().mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # (min(N, M), M)
    vh = vh[:dim]
    vh = vh * torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
    out = torch.zeros(mm.shape[0], dim, dtype=torch.float64)
    out[:, :vh.shape[0]] = x @ vh.T
    mean_norm = out.norm(dim=1).mean()
    return (out / mean_norm if mean_norm > 0 else out).float()


# History lengths past this share the last bucket of `length_buckets`, 24: (4095 + 1)^2 = 2^24.
HISTORY_LENGTH_CAP = 4095
LENGTH_BUCKETS = 25  # rows of the history-length table: buckets 0..24
SIMILARITY_STEPS = 40  # cosines in [-1, 1] fall in this many equal steps, buckets 1..40; 0 = no other item
# `similarity_counts` counts over the history's last 1, 2, 4, ..., 32 positions and over all of it: how many
# look-alikes, and how recent (a creator's pull or a show's run fades with time)
COUNT_WINDOW_SIZES = (1, 2, 4, 8, 16, 32)
COUNT_WINDOWS = len(COUNT_WINDOW_SIZES) + 1


def length_buckets(n: Tensor) -> Tensor:
    """History lengths (...) int64 >= 0 -> half-octave buckets floor(2 log2(n + 1)) = floor(log2((n + 1)^2)) (...)
    int64 in 0..24: n = 0 -> 0, 1 -> 2, 2 -> 3, 3-4 -> 4, 5-6 -> 5, 7-10 -> 6, 11-14 -> 7, 15-21 -> 8, ...; n is
    capped at HISTORY_LENGTH_CAP. Fine where a count of clicks says most (the first few) and coarse where one more
    changes little. Exact: floor(log2(m)) of the integer m = (n + 1)^2 <= 2^24 is frexp's exponent of m in float64
    less 1 (m = f * 2^e with f in [0.5, 1)), with no float log to round at a bucket's edge."""
    squared = (n.clamp(0, HISTORY_LENGTH_CAP) + 1) ** 2
    return torch.frexp(squared.double()).exponent.long() - 1


def similarity_buckets(cosine: Tensor) -> Tensor:
    """Cosines (...) float in [-1, 1], NaN where there is none -> buckets (...) int64: 1 + the index of the cosine's
    step of width 2 / SIMILARITY_STEPS over [-1, 1] (1..SIMILARITY_STEPS; a cosine of 1 shares the top step), 0 for
    NaN."""
    step = ((cosine.double() + 1) * (SIMILARITY_STEPS / 2)).floor().clamp(0, SIMILARITY_STEPS - 1)
    return torch.where(cosine.isnan(), 0, step.long() + 1)


def inverse_norms(item_mm: Tensor) -> Tensor:
    """item_mm (N+1, M) frozen item embeddings -> (N+1,) float32: 1 / the L2 norm of each row (in float32), 0 for
    a zero row; the scale `max_history_cosine` turns dot products into cosines with."""
    norms = item_mm.float().norm(dim=1)  # (N+1,)
    return torch.where(norms > 0, 1 / norms, 0.0)


def history_cosines(item_mm: Tensor, inv_norm: Tensor, seq: Tensor, target_id: Tensor) -> Tensor:
    """item_mm (N+1, M) frozen item embeddings, inv_norm (N+1,) float32 their `inverse_norms`; seq (B, L) int64
    history, 0 = padding; target_id (B,) int64 -> (B, L) float32: the cosine of the target's frozen vector to that
    of each history item, NaN at padding, at repeats of the target itself and where either vector is zero. Repeats
    are left out so that the values say how close the *other* items are: an episode of a show the user watched, a
    product like one bought, which a re-click of the target itself would hide behind its 1.0. The dot products are
    scaled by the items' inverse norms, not taken between normalised copies of the gathered (B, L, M) vectors: the
    same cosines to float rounding (~1e-7) in half the time."""
    # In float32 whatever the autocast: a bucket is 0.05 wide, coarser than bf16's rounding of a cosine near 1
    with torch.autocast(seq.device.type, enabled=False):
        dots = torch.einsum("blm,bm->bl", item_mm[seq].float(), item_mm[target_id].float())  # (B, L)
        scale, target_scale = inv_norm[seq], inv_norm[target_id].unsqueeze(1)  # (B, L), (B, 1)
        usable = (seq != 0) & (seq != target_id.unsqueeze(1)) & (scale > 0) & (target_scale > 0)
        return (dots * scale * target_scale).masked_fill(~usable, float("nan"))


def max_history_cosine(cosines: Tensor) -> Tensor:
    """`history_cosines` (B, L) float32, NaN where unusable -> (B,) float32: each row's highest cosine, the target's
    to the nearest other history item; NaN where there is none (an empty history, only repeats of the target, or a
    zero vector on either side)."""
    best = cosines.nan_to_num(nan=float("-inf")).amax(dim=1)  # (B,)
    return torch.where(torch.isinf(best), float("nan"), best)


def similarity_counts(cosines: Tensor) -> Tensor:
    """`history_cosines` (B, L) float32 of a left-padded history (most recent item last), NaN where unusable ->
    (B, COUNT_WINDOWS, SIMILARITY_STEPS) float32: entry [w, b - 1] is the number of other items among the history's
    COUNT_WINDOW_SIZES[w] most recent positions (w = the last: all of them) whose cosine to the target falls in
    `similarity_buckets`' bucket b or above (at least as close as that bucket's lower edge); 0 where there are none.
    Padding counts nowhere, so more of it on the left changes nothing."""
    steps = torch.arange(1, SIMILARITY_STEPS + 1, device=cosines.device)
    at_least = (similarity_buckets(cosines).unsqueeze(-1) >= steps).float()  # (B, L, S): bucket 0 is below all
    # one batched matrix product, not cumulative sums over one-hot codes: 2-3 times faster on a CPU
    with torch.autocast(cosines.device.type, enabled=False):  # counts up to L stay exact in float32
        return torch.einsum("wl,bls->bws", count_windows(cosines.shape[1], cosines.device), at_least)


def count_windows(length: int, device: torch.device) -> Tensor:
    """-> (COUNT_WINDOWS, length) float32: row w is 1 at the COUNT_WINDOW_SIZES[w] most recent (rightmost)
    positions of a left-padded history of `length` (the last row: at all of them), 0 elsewhere."""
    from_end = torch.arange(length - 1, -1, -1, device=device)  # (L,): 0 for the most recent position
    sizes = torch.tensor([*COUNT_WINDOW_SIZES, length], device=device)
    return (from_end < sizes.unsqueeze(1)).float()  # (W, L)


def repeat_counts(seq: Tensor, target_id: Tensor) -> Tensor:
    """seq (B, L) int64 left-padded history (most recent item last), 0 = padding; target_id (B,) int64 ->
    (B, COUNT_WINDOWS) float32: entry w is the number of times the target itself is among the history's
    COUNT_WINDOW_SIZES[w] most recent positions (w = the last: all of them). Padding never counts (no target is
    id 0), so more of it on the left changes nothing."""
    same = ((seq == target_id.unsqueeze(1)) & (seq != 0)).float()  # (B, L)
    with torch.autocast(seq.device.type, enabled=False):  # counts up to L stay exact in float32
        return same @ count_windows(seq.shape[1], seq.device).T  # (B, W)


def thermometer(table: Tensor, buckets: Tensor) -> Tensor:
    """table (K, E) of step vectors, row 0 zero; buckets (...) int64 in 0..K-1 -> (...) x E: the sum of rows 1..b
    for bucket b. A bucket training seldom saw then sits by its neighbour below, not at row 0's zero, and the
    embedding L2 pulls neighbouring buckets together rather than each toward 0."""
    return nn.functional.embedding(buckets, table.cumsum(dim=0))


def refresh_inverse_norms(model: CTRBase, incompatible_keys: object) -> None:
    """A load_state_dict post-hook of CTRBase: item_inv_norm from the item_mm just loaded."""
    model.item_inv_norm.copy_(inverse_norms(model.item_mm))


class CTRBase(nn.Module):
    """Item tables, item and context embeddings and init shared by the models; see the module docstring.

    A subclass builds its own layers after `super().__init__` and then calls `reset_parameters()`, so every
    Linear and Embedding, its own included, gets FuxiCTR's init.
    """

    def __init__(self, cfg: ModelConfig, feature_map: FeatureMap, item_tags: Tensor, item_mm: Tensor,
                 item_codes: Tensor | None = None, item_exposure: Tensor | None = None,
                 user_keys: Tensor | None = None, item_new: Tensor | None = None):
        """item_tags: (N+1, T) int64 tag ids per item; item_mm: (N+1, M) float32 frozen item embeddings (kept
        as a buffer even without `use_mm_emb`, so every checkpoint has the same tables); item_codes: (N+1, L)
        int64 semantic ids, level l's code in 0..K-1, row 0 all -1 (needed, and kept as a buffer, only when
        item_repr is not `id`); item_exposure: (N+1,) int64 train-exposure levels in 1..exposure_levels, row 0 = 0
        (needed, and kept as a buffer, only when exposure_levels > 0); user_keys: (U,) int64 strictly increasing
        user ids, those of the train split (needed, and kept as a buffer, only with user_bias or user_interest);
        item_new: (N+1,) bool, True for the items the train split never had as a target, row 0 False (needed, and
        kept as a buffer, only with new_item_offset)."""
        super().__init__()
        # a width the data makes wrong (heads that do not divide it, GiBs of weights) stops here, before any layer
        cfg.check_widths(item_mm.shape[1], len(feature_map.context_features))
        self.cfg = cfg
        e = cfg.embedding_dim
        n_items = feature_map["item_id"].vocab_size
        if item_tags.shape[0] != n_items or item_mm.shape[0] != n_items:
            raise ValueError(f"item tables have {item_tags.shape[0]}/{item_mm.shape[0]} rows, feature map says "
                             f"{n_items} item ids")
        self.register_buffer("item_tags", item_tags.long())  # (N+1, T)
        self.register_buffer("item_mm", item_mm.float())  # (N+1, M)
        # (N+1,) `inverse_norms` of item_mm for `max_history_cosine`: derived, so not in the state dict, and
        # computed again whenever a state dict sets item_mm
        self.register_buffer("item_inv_norm", inverse_norms(self.item_mm), persistent=False)
        self.register_load_state_dict_post_hook(refresh_inverse_norms)
        self.context_names = [f.name for f in feature_map.context_features]

        self.item_emb = nn.Embedding(n_items, e, padding_idx=0) if cfg.item_repr != "semantic" else None
        self.code_emb = None
        if cfg.item_repr != "id":
            if item_codes is None or item_codes.shape[0] != n_items or item_codes.ndim != 2:
                got = "none" if item_codes is None else f"a {tuple(item_codes.shape)} table"
                raise ValueError(f"train.item_repr {cfg.item_repr!r} needs semantic ids for {n_items} item rows, got "
                                 f"{got}")
            self.register_buffer("item_codes", item_codes.long())  # (N+1, L)
            k = int(item_codes.max()) + 1  # codes per level
            # Row level * k + code + 1 of one table holds (level, code); row 0 is padding (code -1).
            self.register_buffer("code_offsets", torch.arange(item_codes.shape[1]) * k + 1, persistent=False)
            self.code_emb = nn.Embedding(item_codes.shape[1] * k + 1, e, padding_idx=0)
        self.tag_emb = nn.Embedding(feature_map["item_tags"].vocab_size, e, padding_idx=0)
        self.item_bias = nn.Embedding(n_items, 1, padding_idx=0) if cfg.item_bias else None
        self.user_bias = self.user_emb = None
        if cfg.user_bias or cfg.user_interest:
            if user_keys is None or user_keys.ndim != 1 or not len(user_keys) or \
                    not bool((user_keys[1:] > user_keys[:-1]).all()):
                got = "none" if user_keys is None else f"a {tuple(user_keys.shape)} table"
                key = "user_bias" if cfg.user_bias else "user_interest"
                raise ValueError(f"train.{key} needs the train split's sorted distinct user ids, got {got}")
            self.register_buffer("user_keys", user_keys.long())  # (U,)
            if cfg.user_bias:
                self.user_bias = nn.Embedding(len(user_keys) + 1, 1, padding_idx=0)
        self.exposure_emb = None
        if cfg.exposure_levels:
            if item_exposure is None or tuple(item_exposure.shape) != (n_items,):
                got = "none" if item_exposure is None else f"a {tuple(item_exposure.shape)} table"
                raise ValueError(f"train.exposure_levels needs exposure levels for {n_items} item rows, got {got}")
            self.register_buffer("item_exposure", item_exposure.long())  # (N+1,)
            self.exposure_emb = nn.Embedding(cfg.exposure_levels + 1, e, padding_idx=0)
        if cfg.new_item_offset:
            if item_new is None or tuple(item_new.shape) != (n_items,) or item_new.dtype != torch.bool:
                got = "none" if item_new is None else f"a {tuple(item_new.shape)} {item_new.dtype} table"
                raise ValueError(f"train.new_item_offset needs a bool table of new items for {n_items} item rows, "
                                 f"got {got}")
            self.register_buffer("item_new", item_new.clone())  # (N+1,)
            # fitted after training (pipeline/training/calibrate.py), not by gradients: a buffer
            self.register_buffer("new_item_logit", torch.zeros(()))
        self.item_dim = cfg.item_dim(item_mm.shape[1])
        mm_dim = self.item_dim - 2 * e
        self.mm_proj = nn.Linear(item_mm.shape[1], mm_dim, bias=False) if cfg.use_mm_emb else None
        if cfg.user_interest:
            self.user_emb = nn.Embedding(len(self.user_keys) + 1, self.item_dim, padding_idx=0)
        # row 0 (an empty history) is fixed at 0: the other buckets are learnt relative to it
        self.length_emb = nn.Embedding(LENGTH_BUCKETS, e, padding_idx=0) if cfg.history_length else None
        # row 0 (no other item to compare) is fixed at 0 too
        self.similarity_emb = nn.Embedding(SIMILARITY_STEPS + 1, e, padding_idx=0) if cfg.history_similarity else None
        # rows 1.. are (window, bucket) pairs; row 0 is never read, so that FuxiCTR's init and the L2 treat it as
        # every table's padding row
        self.count_emb = (nn.Embedding(COUNT_WINDOWS * SIMILARITY_STEPS + 1, e, padding_idx=0)
                          if cfg.similarity_count else None)
        # row 0 unused, as count_emb's
        self.repeat_emb = nn.Embedding(COUNT_WINDOWS + 1, e, padding_idx=0) if cfg.repeat_count else None
        self.context_emb = nn.ModuleDict(
            {f.name: nn.Embedding(f.vocab_size, e, padding_idx=0) for f in feature_map.context_features})
        self.context_dim = len(self.context_names) * e
        # Dropout on every item and context embedding, in training only. Its rate is a training option
        # (train.embedding_dropout, set by pipeline.training.fit), not part of the architecture or the checkpoint;
        # at rate 0 it returns its input untouched and draws no random numbers.
        self.embedding_dropout = Dropout(0.0)
        # Id dropout, a training option too (train.id_dropout, set by fit): in training each item occurrence's id
        # embedding is zeroed with this probability, so the model learns to score an item from its content (tags,
        # frozen embedding, semantic codes) alone, as it must score an item training never showed, whose id
        # embedding is still its ~0 init (DropoutNet, Volkovs et al. 2017). At 0 it draws no random numbers.
        self.id_dropout = 0.0
        # User dropout, a training option (train.user_dropout, set by fit): in training each row's user vector is
        # row 0's (0, a user training never saw) with this probability. Without it the network sees a zero vector
        # only at test, where a time split puts users the train split never had. At 0 it draws no random numbers.
        self.user_dropout = 0.0

    def reset_parameters(self) -> None:
        """FuxiCTR's init: embeddings N(0, 1e-4) with zero padding rows; Linear xavier-normal, zero bias (the
        attention's output projection too, which FuxiCTR's `type(m) in [nn.Linear]` leaves at torch's default); then,
        with `id_init: mm`, the id rows 1..N from `mm_prior` of the frozen embedding."""
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=1e-4)
                with torch.no_grad():
                    m.weight[0].zero_()
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.cfg.id_init == "mm":
            with torch.no_grad():
                self.item_emb.weight[1:] = mm_prior(self.item_mm[1:], self.cfg.embedding_dim)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The parameters FuxiCTR counts as embeddings (those of its FeatureEmbeddingDict, for
        train.embedding_regularizer): the id, code, tag, item-bias, user-bias, user-vector, exposure, history-length,
        history-similarity, similarity-count, repeat-count and context tables and the projection of the frozen
        embedding.
        Every other parameter is a network parameter (train.net_regularizer)."""
        tables = [self.item_emb, self.code_emb, self.tag_emb, self.item_bias, self.user_bias, self.user_emb,
                  self.exposure_emb, self.length_emb, self.similarity_emb, self.count_emb, self.repeat_emb,
                  self.context_emb, self.mm_proj]
        return [p for m in tables if m is not None for p in m.parameters()]

    def learnt_item(self, ids: Tensor) -> Tensor:
        """Item ids (...) -> the learnt item part (..., E) of item_repr (module docstring); zeros for id 0. In
        training, each occurrence's id embedding is zeroed with probability `id_dropout`."""
        own = None
        if self.item_emb is not None:
            own = self.item_emb(ids)  # (..., E)
            if self.training and self.id_dropout > 0:
                own = own * keep_mask(ids.shape, self.id_dropout, ids.device).unsqueeze(-1)
        if self.code_emb is None:
            return own
        codes = self.item_codes[ids]  # (..., L), -1 for padding
        semantic = self.code_emb(torch.where(codes >= 0, codes + self.code_offsets, 0)).sum(-2)  # (..., E)
        return semantic if own is None else own + semantic

    def embed_items(self, ids: Tensor) -> Tensor:
        """Item ids (...) -> item embeddings (..., item_dim): `item_vectors`, after embedding dropout; id 0
        (padding) maps to all zeros.

        A batch names few distinct items many times (histories repeat popular items; padding is one id), so the
        vectors are computed once per item and gathered: the same values and gradients as `item_vectors` of every
        occurrence (up to float summation order), at a fraction of the gathers and of the frozen embedding's
        projection. When the item table has no more rows than `ids` has entries, every item's vector is computed
        (no sort); otherwise those of the distinct ids (torch.unique). Id dropout acts per occurrence, so in
        training with `id_dropout` every occurrence is embedded on its own."""
        if self.training and self.id_dropout > 0:
            return self.embedding_dropout(self.item_vectors(ids))
        n_items = self.item_tags.shape[0]
        if ids.numel() >= n_items:
            table, occurrence = self.item_vectors(torch.arange(n_items, device=ids.device)), ids  # (N+1, item_dim)
        else:
            distinct, occurrence = torch.unique(ids, return_inverse=True)  # (K,), (...) row of each id in `distinct`
            table = self.item_vectors(distinct)  # (K, item_dim)
        # A lookup, not table[occurrence]: the backward of float advanced indexing adds with atomics across
        # threads on the CPU, so its sums (and a run's weights) would change from run to run
        return self.embedding_dropout(nn.functional.embedding(occurrence, table))  # (..., item_dim)

    def item_vectors(self, ids: Tensor) -> Tensor:
        """Item ids (...) -> (..., item_dim): [learnt part || tag mean (+ the exposure level's embedding, with
        exposure_levels) || projected frozen embedding], each occurrence computed on its own (no dropout)."""
        tags = self.item_tags[ids]  # (..., T)
        attributes = masked_mean(self.tag_emb(tags), tags)  # (..., E)
        if self.exposure_emb is not None:  # summed, not concatenated: the model keeps its width and speed
            attributes = attributes + self.exposure_emb(self.item_exposure[ids])
        parts = [self.learnt_item(ids), attributes]
        if self.mm_proj is not None:
            parts.append(self.mm_proj(self.item_mm[ids]))
        return torch.cat(parts, dim=-1)  # (..., item_dim)

    def user_rows(self, user_ids: Tensor) -> Tensor:
        """User ids (B,) int64 -> rows (B,) of the user tables: 1 + the id's position in `user_keys`, 0 for an
        id not there (a user the train split never saw)."""
        pos = torch.searchsorted(self.user_keys, user_ids).clamp(max=len(self.user_keys) - 1)
        return torch.where(self.user_keys[pos] == user_ids, pos + 1, 0)

    def user_vector(self, batch: dict[str, Tensor]) -> Tensor:
        """With `user_interest`: the batch's users' learnt vectors (B, item_dim), zeros for a user training never
        saw (row 0); in training, each row's is row 0's with probability `user_dropout`."""
        rows = self.user_rows(batch["user_id"])  # (B,)
        if self.training and self.user_dropout > 0:
            rows = rows.masked_fill(~keep_mask(rows.shape, self.user_dropout, rows.device), 0)
        return self.user_emb(rows)

    def logit_bias(self, batch: dict[str, Tensor]) -> Tensor | float:
        """The batch's biases (B,) to add to the logits: the target item's learnt one with `item_bias`, plus the
        user's with `user_bias` (batch["user_id"], 0 for a user training never saw), plus with `new_item_offset`
        new_item_logit where the target is a new item (`item_new`); 0.0 with none of them."""
        bias: Tensor | float = 0.0
        if self.item_bias is not None:
            bias = self.item_bias(batch["item_id"]).squeeze(-1)
        if self.user_bias is not None:
            bias = bias + self.user_bias(self.user_rows(batch["user_id"])).squeeze(-1)
        if self.cfg.new_item_offset:
            bias = bias + self.item_new[batch["item_id"]] * self.new_item_logit
        return bias

    def embed_length(self, seq: Tensor) -> Tensor:
        """With `history_length`: item_seq (B, L) int64, 0 = padding -> the vector (B, E) of the bucket of each
        row's number of real items (`length_buckets`), the sum of the table's rows 1..bucket (`thermometer`; 0 for
        an empty history), after embedding dropout."""
        buckets = length_buckets((seq != 0).sum(dim=1))
        return self.embedding_dropout(thermometer(self.length_emb.weight, buckets))

    def history_cosines(self, seq: Tensor, target_id: Tensor) -> Tensor:
        """item_seq (B, L) int64, 0 = padding, item_id (B,) int64 -> (B, L) float32 `history_cosines` of the frozen
        item embeddings (NaN where unusable), which `embed_similarity` and `embed_similarity_count` read."""
        return history_cosines(self.item_mm, self.item_inv_norm, seq, target_id)

    def embed_similarity(self, cosines: Tensor) -> Tensor:
        """With `history_similarity`: `history_cosines` (B, L) -> the vector (B, E) of the bucket
        (`similarity_buckets`) of each row's `max_history_cosine`, the sum of the table's rows 1..bucket
        (`thermometer`; 0 where no other item has a vector to compare), after embedding dropout."""
        buckets = similarity_buckets(max_history_cosine(cosines))
        return self.embedding_dropout(thermometer(self.similarity_emb.weight, buckets))

    def embed_similarity_count(self, cosines: Tensor) -> Tensor:
        """With `similarity_count`: `history_cosines` (B, L) -> the vector (B, E) sum_{w, b} log(1 + C_wb) w_wb,
        C_wb the number of other items among the history's w-th window of most recent positions at least as close
        to the target as bucket b (`similarity_counts`), w_wb row 1 + w S + b - 1 of the table (0 for a row with
        none), after embedding dropout. How many history items look like the target, and how recently, which the
        max, a mean and a softmax all forget; the log, as one more click of a creator or a kind says less the more
        there are."""
        counts = torch.log1p(similarity_counts(cosines)).flatten(1)  # (B, W * S)
        return self.embedding_dropout(counts @ self.count_emb.weight[1:])

    def embed_repeat_count(self, seq: Tensor, target_id: Tensor) -> Tensor:
        """With `repeat_count`: item_seq (B, L) int64, 0 = padding, item_id (B,) int64 -> the vector (B, E)
        sum_w log(1 + R_w) r_w, R_w the number of times the target itself is among the history's w-th window of
        most recent positions (`repeat_counts`), r_w row 1 + w of the table (0 for a target not in the history),
        after embedding dropout. The history cosines leave the target's own repeats out (`history_cosines`); this
        says whether, how often and how recently the user clicked this very item."""
        counts = torch.log1p(repeat_counts(seq, target_id))  # (B, W)
        return self.embedding_dropout(counts @ self.repeat_emb.weight[1:])

    def embed_context(self, batch: dict[str, Tensor]) -> list[Tensor]:
        """The batch's context features, each (B,) int64 -> their embeddings after embedding dropout, each (B, E),
        in feature-map order (context_dim wide side by side)."""
        return [self.embedding_dropout(self.context_emb[name](batch[name])) for name in self.context_names]
