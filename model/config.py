"""The CTR model's architecture hyperparameters (torch-free, so params loading does not import torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (the winning configuration's values as defaults)."""

    embedding_dim: int = 64
    mm_dim: int = 0  # width of the projected frozen embedding; 0 = the frozen embedding's own width
    transformer_layers: int = 2
    num_heads: int = 1
    dim_feedforward: int = 256
    transformer_dropout: float = 0.2
    first_k: int = 16
    concat_max_pool: bool = True
    cross_layers: int = 3
    dnn_hidden_units: tuple[int, ...] = (1024, 512, 256)
    mlp_hidden_units: tuple[int, ...] = (64, 32)
    net_dropout: float = 0.2
