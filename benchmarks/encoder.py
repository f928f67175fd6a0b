"""Benchmark: transformer_dcn's encoder (model.layers.Encoder) against torch's nn.TransformerEncoder, side by side.

    python benchmarks/encoder.py                      # params.yaml's train section, batch 256, 20 positions
    python benchmarks/encoder.py --length 50 --rounds 8

Both encoders are built from the same seed (the same weights: tests/test_model.py holds their state dicts and
outputs equal) at params.yaml's transformer_layers, num_heads, dim_feedforward and transformer_dropout, over
inputs of `--batch` rows x `--length` positions x `--d-model` (the default model's token width: 2 * item_dim,
item_dim = id 16 + tags 16 + frozen-embedding projection 16) with random left padding. Each round times
`--steps` training steps (forward + backward, dropout on) of each, then `--steps` eval forwards (no grad) of
each, alternating which goes first; it prints each round's ms per step and the median ratio torch / ours.
"""

from __future__ import annotations

import statistics
import time

import click
import torch
from torch import nn

from model.layers import Encoder
from pipeline.core.config import TrainConfig, load_section


def per_step_ms(step, steps: int) -> float:
    """Mean wall-clock ms of `step()` over `steps` calls, after two untimed ones."""
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1000


@click.command()
@click.option("--params", default="params.yaml", show_default=True)
@click.option("--batch", default=256, show_default=True)
@click.option("--length", default=20, show_default=True, help="history positions (the default data's width)")
@click.option("--d-model", default=96, show_default=True)
@click.option("--steps", default=30, show_default=True)
@click.option("--rounds", default=5, show_default=True)
@click.option("--threads", default=2, show_default=True)
def main(params: str, batch: int, length: int, d_model: int, steps: int, rounds: int, threads: int) -> None:
    cfg = load_section(params, "train", TrainConfig).arch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    theirs = nn.TransformerEncoder(nn.TransformerEncoderLayer(
        d_model, cfg.num_heads, cfg.dim_feedforward, cfg.transformer_dropout, batch_first=True),
        cfg.transformer_layers, enable_nested_tensor=False)
    torch.manual_seed(0)
    ours = Encoder(d_model, cfg.num_heads, cfg.dim_feedforward, cfg.transformer_dropout, cfg.transformer_layers)
    x = torch.randn(batch, length, d_model, requires_grad=True)
    pad = torch.arange(length) < length - torch.randint(1, length + 1, (batch, 1))  # (B, L), a real key per row
    runs = {"torch": lambda: theirs(x, src_key_padding_mask=pad), "ours": lambda: ours(x, pad)}
    modules = {"torch": theirs, "ours": ours}

    def train_step(name: str) -> None:
        runs[name]().square().mean().backward()

    def eval_step(name: str) -> None:
        with torch.no_grad():
            runs[name]()

    print(f"{threads} threads, batch {batch} x {length} positions x d_model {d_model}, {cfg.transformer_layers} "
          f"layer(s), {cfg.num_heads} head(s), feed-forward {cfg.dim_feedforward}, dropout {cfg.transformer_dropout}")
    ratios: dict[str, list[float]] = {"train": [], "eval": []}
    for r in range(rounds):
        order = ["torch", "ours"] if r % 2 == 0 else ["ours", "torch"]
        line = []
        for mode, step in (("train", train_step), ("eval", eval_step)):
            ms = {}
            for name in order:
                modules[name].train(mode == "train")
                ms[name] = per_step_ms(lambda n=name: step(n), steps)
            ratios[mode].append(ms["torch"] / ms["ours"])
            line.append(f"{mode} torch {ms['torch']:6.2f} ms, ours {ms['ours']:6.2f} ms")
        print(f"round {r + 1}: " + " | ".join(line))
    for mode, values in ratios.items():
        print(f"{mode}: torch / ours, median of {rounds} rounds: {statistics.median(values):.2f}x "
              f"(range {min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
