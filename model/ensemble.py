"""Seed ensemble: copies of one model, trained apart with different seeds, scored as the mean of their logits.

Each member is a whole model (model/factory.py) with its own weights and item tables; the members differ in
their initial weights, pass order and dropout draws (train.seed + k for member k), and under `train.ensemble_mix:
recent_map` (the default) every second member also has recent_map (README "Mixed ensemble"). Averaging their
logits cancels part of what each run learnt by chance, which no single run can do: on the held-out style variants
two members score 0.001-0.002 test AUC above either alone (README, "Seed ensembles"). Training is
`pipeline.training.loop.fit_ensemble`, not a joint fit: trained together through the averaged logit the copies
would be one wider model, not independent estimates.

`forward` returns logits (B,), as every model does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.core.config import ModelConfig


class SeedEnsemble(nn.Module):
    """`cfg` (ensemble = len(members)) is what the checkpoint records; member k is the model built from
    `cfg.member(k)`: the same config with ensemble = 1, and under `ensemble_mix: recent_map` recent_map on odd k."""

    def __init__(self, cfg: ModelConfig, members: list[nn.Module]):
        super().__init__()
        if cfg.ensemble != len(members):
            raise ValueError(f"train.ensemble is {cfg.ensemble} but {len(members)} members were given")
        self.cfg = cfg
        self.members = nn.ModuleList(members)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch dict every member takes -> the mean of the members' logits (B,) float32."""
        return torch.stack([member(batch) for member in self.members]).mean(0)
