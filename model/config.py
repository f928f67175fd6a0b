"""The CTR model's architecture hyperparameters (torch-free, so params loading does not import torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (the winning configuration's values as defaults).

    `model` picks the architecture (model/factory.py); the `use_*` switches ablate one part of it. Fields a
    model does not read are ignored by it (DIN reads no transformer_*/first_k/concat_max_pool/cross_*/mlp_*
    field; meanpool reads none of those nor din_*/dice); contradictory combinations are rejected by
    pipeline.config.TrainConfig. Only plain types (tuples become lists in the checkpoint), so the config
    round-trips through `torch.load(weights_only=True)`.
    """

    model: Literal["transformer_dcn", "din", "meanpool"] = "transformer_dcn"
    embedding_dim: int = 64
    use_mm_emb: bool = True  # false: items are [id || tags] only, the frozen multimodal embedding is unused
    mm_dim: int = 0  # width of the projected frozen embedding; 0 = the frozen embedding's own width
    use_transformer: bool = True  # transformer_dcn: false = history tokens go to the pooling without the encoder
    transformer_layers: int = 2
    num_heads: int = 1
    dim_feedforward: int = 256
    transformer_dropout: float = 0.2
    first_k: int = 16
    concat_max_pool: bool = True
    mean_interest: bool = False  # transformer_dcn: add the mean history item u and target * u to the DCN input
    use_dcn: bool = True  # transformer_dcn: false = no cross network, the head reads the deep MLP alone
    cross_layers: int = 3
    cross_rank: int = 0  # transformer_dcn: rank of each cross layer's weight matrix; 0 = full rank (the winner's)
    dnn_hidden_units: tuple[int, ...] = (1024, 512, 256)
    mlp_hidden_units: tuple[int, ...] = (64, 32)
    net_dropout: float = 0.2
    din_attention_units: tuple[int, ...] = (64,)  # din: hidden units of the target-attention MLP
    dice: bool = False  # din: Dice activations (DIN paper) instead of ReLU in the attention and deep MLPs
