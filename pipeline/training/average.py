"""An exponential moving average of a model's weights (train.ema_decay), validated and kept instead of the raw
weights: on small, noisy data the raw weights of a run at a high learning rate jitter from step to step, and their
average scores better than any one of them (Polyak averaging)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class WeightAverage:
    """shadow[name] (same shape and dtype as the parameter) for every trainable parameter of `model`.

    After optimizer step t (0-based) `update` sets shadow = d_t * shadow + (1 - d_t) * w with
    d_t = min(decay, (1 + t) / (10 + t)): the warm-up keeps the start's random weights from dominating the average
    of a short run (TensorFlow's ExponentialMovingAverage with num_updates). Buffers (the Dice statistics, the
    item tables) are not averaged: the model's own are used with the averaged parameters.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current parameters into the average (call after each optimizer step)."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        params = dict(model.named_parameters())
        # one multi-tensor lerp, not one call per parameter: this runs after every optimizer step
        torch._foreach_lerp_(list(self.shadow.values()), [params[k].detach() for k in self.shadow], 1.0 - d)
        self.updates += 1

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Inside the block the model holds the averaged parameters; its own come back after it."""
        params = dict(model.named_parameters())
        own: dict[str, Tensor] = {}
        with torch.no_grad():
            for k, avg in self.shadow.items():
                own[k] = params[k].detach().clone()
                params[k].copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, w in own.items():
                    params[k].copy_(w)

    def state(self) -> dict[str, Tensor | int]:
        """Plain tensors and ints (for the resume state)."""
        return {"updates": self.updates, **{f"shadow.{k}": v for k, v in self.shadow.items()}}

    def load(self, state: dict[str, Tensor | int]) -> None:
        """Restore what `state` returned."""
        self.updates = int(state["updates"])
        for k in self.shadow:
            self.shadow[k].copy_(state[f"shadow.{k}"])
