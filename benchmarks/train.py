"""Benchmark: training throughput of the train stage's batching against a plain per-row Dataset + DataLoader.

    python benchmarks/train.py                       # default data (make repro first), params.yaml's train section
    python benchmarks/train.py --steps 100 --device cuda
    python benchmarks/train.py --set model=din --pad-to 100   # another model; MicroLens-1M's history width

Both paths train the same model (same initial weights, same optimiser, same batch size) for `--steps` steps
after `--warmup` steps, in one process, one after the other:
    stage  pipeline/training/: each split held as contiguous tensors, a batch is an index into them, histories
           trimmed to the batch's longest real history (never below first_k); what `fit` does per step
    naive  a torch Dataset whose __getitem__ builds one row's tensors from the parquet columns, batched by
           DataLoader's default per-row collate, histories at full length
and prints samples/s of each, the ratio, and the epoch time each implies for the train split (the stage's is also
measured over a whole epoch with --epoch). Evaluation throughput (scoring the valid split in eval batches) is
printed for the stage path. `--set key=value` overrides train params (as `dvc exp run -S train.key=value`);
`--pad-to L` left-pads every history with zeros to L positions in both paths, as the challenge data stores them
(MicroLens-1M: 100 positions, median 6 real), to show what trimming saves.

`--members N` then times N ensemble members (params.yaml's members 0..N-1) on the CPU for `--steps` steps each, as
fit_ensemble trains them: one after another at torch's threads, and side by side in N spawned processes with
threads // N each (train.parallel_members), and prints samples/s of both and the ratio.

`--profile N` then says where a stage step's time goes, over N more steps of the stage path: the share of each
phase (batch assembly, forward, loss, backward, gradient clipping, optimiser step), the forward time of each of
the model's modules (forward hooks on its submodules, two levels deep; a module's time includes its children's),
and torch.profiler's top operators by self CPU time over forward + backward + step.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import defaultdict

import click
import polars as pl
import torch
import yaml
from torch import nn

from model.factory import build_model
from pipeline.core.config import TrainConfig, from_dict, load_section, params_dict
from pipeline.core.feature_map import FeatureMap
from pipeline.core.stage import pick_device
from pipeline.training.data import (
    SplitTensors,
    load_item_tables,
    load_split,
    make_batch,
    split_tables,
)
from pipeline.training.loop import make_optimizer, optimizer_step
from pipeline.training.predict import autocast, predict_logits


class RowDataset(torch.utils.data.Dataset):
    """The plain way: one row's tensors per __getitem__, from Python lists of the split's columns."""

    def __init__(self, path: str, context: list[str], pad_to: int):
        df = pl.read_parquet(path, glob=False)
        self.cols = {c: df[c].to_list() for c in ["item_seq", "item_id", "user_id", "label", *context]}
        self.cols["item_seq"] = [[0] * (pad_to - len(s)) + s for s in self.cols["item_seq"]]
        self.context = context

    def __len__(self) -> int:
        return len(self.cols["label"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = {"item_seq": torch.tensor(self.cols["item_seq"][i], dtype=torch.long),
               "item_id": torch.tensor(self.cols["item_id"][i], dtype=torch.long),
               "user_id": torch.tensor(self.cols["user_id"][i], dtype=torch.long),
               "label": torch.tensor(self.cols["label"][i], dtype=torch.float32)}
        return row | {c: torch.tensor(self.cols[c][i], dtype=torch.long) for c in self.context}


def train_steps(model: nn.Module, batches, steps: int, device: torch.device, cfg: TrainConfig) -> float:
    """Run `steps` optimiser steps (the train stage's optimiser and clip) over (batch dict, labels) pairs; return
    the seconds they took."""
    opt = make_optimizer(model, cfg)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    start = time.perf_counter()
    for _, (batch, label) in zip(range(steps), batches):
        with autocast(device, cfg.amp):
            loss = loss_fn(model(batch).float(), label)
        optimizer_step(model, opt, loss, cfg.max_grad_norm)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def pad_history(split: SplitTensors, width: int) -> SplitTensors:
    """The split with item_seq left-padded with zeros to `width` columns (unchanged if already as wide)."""
    extra = width - split.item_seq.shape[1]
    if extra <= 0:
        return split
    return dataclasses.replace(split, item_seq=nn.functional.pad(split.item_seq, (extra, 0)))


def stage_batches(split: SplitTensors, cfg: TrainConfig, device: torch.device, seed: int):
    """What fit does per step: a shuffled order, index slices, trimmed histories; endless over epochs."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(split), generator=gen)
        for start in range(0, len(split), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            yield make_batch(split, idx, cfg.arch.first_k, device), split.label[idx].to(device, non_blocking=True)


def naive_batches(dataset: RowDataset, cfg: TrainConfig, device: torch.device, workers: int):
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers)
    while True:
        for batch in loader:
            label = batch.pop("label").to(device)
            yield {k: v.to(device) for k, v in batch.items()}, label


def side_by_side_worker(send, barrier, model: nn.Module, train: SplitTensors, cfg: TrainConfig, seed: int,
                        steps: int, warmup: int, threads: int) -> None:
    """One member's process of --members: warm up, wait for the others, time `steps` steps, send the seconds."""
    torch.set_num_threads(threads)
    batches = stage_batches(train, cfg, torch.device("cpu"), seed)
    train_steps(model, batches, warmup, torch.device("cpu"), cfg)
    barrier.wait()
    send.send(train_steps(model, batches, steps, torch.device("cpu"), cfg))


def members_side_by_side(initials: list[nn.Module], train: SplitTensors, cfg: TrainConfig, steps: int,
                         warmup: int) -> None:
    """Print samples/s of the members trained one after another at torch's threads, then side by side."""
    n, threads, cpu = len(initials), torch.get_num_threads(), torch.device("cpu")
    share = max(1, threads // n)
    alone = 0.0
    for k, initial in enumerate(initials):
        model, batches = copy.deepcopy(initial), stage_batches(train, cfg, cpu, cfg.seed + k)
        train_steps(model, batches, warmup, cpu, cfg)
        alone += train_steps(model, batches, steps, cpu, cfg)
    ctx = torch.multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n + 1)
    pipes = [ctx.Pipe(duplex=False) for _ in initials]
    procs = [ctx.Process(target=side_by_side_worker, args=(send, barrier, initial, train, cfg, cfg.seed + k, steps,
                                                           warmup, share))
             for k, (initial, (_, send)) in enumerate(zip(initials, pipes))]
    for proc in procs:
        proc.start()
    barrier.wait()
    start = time.perf_counter()
    member_seconds = [receive.recv() for receive, _ in pipes]
    side = time.perf_counter() - start
    for proc in procs:
        proc.join()
    rows = n * steps * cfg.batch_size
    print(f"members {n}, one after another at {threads} threads: {rows / alone:7.0f} samples/s ({alone:6.2f} s)")
    print(f"members {n}, side by side at {share} thread(s) each: {rows / side:7.0f} samples/s "
          f"({side:6.2f} s; each {', '.join(f'{s:.2f}' for s in member_seconds)} s)")
    print(f"ratio side by side / one after another: {alone / side:.2f}x")


def module_forward_times(model: nn.Module, depth: int = 2) -> tuple[dict[str, float], list]:
    """{module name: seconds of its forwards}, filled while the returned hook handles are registered, for the
    submodules of `model` down to `depth` levels (names as in named_modules; CPU: the clock is the op time)."""
    times: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}
    handles = []
    for name, module in model.named_modules():
        if not name or name.count(".") >= depth:
            continue

        def pre(_m, _i, name=name):
            started[name] = time.perf_counter()

        def post(_m, _i, _o, name=name):
            times[name] += time.perf_counter() - started.pop(name)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return times, handles


def profile_steps(model: nn.Module, batches, steps: int, cfg: TrainConfig) -> None:
    """Print where `steps` stage steps spend their time: phases, module forwards, top operators (CPU timings)."""
    opt = make_optimizer(model, cfg)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    phases: dict[str, float] = defaultdict(float)
    forward, handles = module_forward_times(model)
    clock = time.perf_counter
    for _ in range(steps):
        t = clock()
        batch, label = next(batches)
        t, phases["batch assembly"] = clock(), phases["batch assembly"] + clock() - t
        logits = model(batch)
        t, phases["forward"] = clock(), phases["forward"] + clock() - t
        loss = loss_fn(logits.float(), label)
        t, phases["loss"] = clock(), phases["loss"] + clock() - t
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t, phases["backward"] = clock(), phases["backward"] + clock() - t
        nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm, foreach=True)  # as optimizer_step
        t, phases["clip grad norm"] = clock(), phases["clip grad norm"] + clock() - t
        opt.step()
        phases["optimiser step"] += clock() - t
    for handle in handles:
        handle.remove()
    total = sum(phases.values())
    print(f"\nprofile: {steps} steps, {steps * cfg.batch_size / total:.0f} samples/s with the hooks")
    for name, seconds in phases.items():
        print(f"  {name:28s} {1e3 * seconds / steps:7.2f} ms/step {100 * seconds / total:5.1f}%")
    print("module forwards (a module includes its children):")
    for name, seconds in sorted(forward.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {1e3 * seconds / steps:7.2f} ms/step {100 * seconds / total:5.1f}%")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(min(steps, 20)):
            batch, label = next(batches)
            optimizer_step(model, opt, loss_fn(model(batch).float(), label), cfg.max_grad_norm)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


@click.command()
@click.option("--data", default="data", show_default=True, help="the pipeline's data folder")
@click.option("--params", "params_path", default="params.yaml", show_default=True)
@click.option("--steps", default=60, show_default=True, help="timed steps per path")
@click.option("--warmup", default=5, show_default=True)
@click.option("--workers", default=0, show_default=True, help="DataLoader workers of the naive path")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda", "auto"]))
@click.option("--epoch/--no-epoch", default=False, show_default=True, help="also time one whole stage epoch")
@click.option("--set", "overrides", multiple=True, help="train param override key=value (YAML value)")
@click.option("--pad-to", default=0, show_default=True, help="left-pad histories to this many positions")
@click.option("--profile", "profile", default=0, show_default=True,
              help="then profile this many stage steps: phases, module forwards, top operators")
@click.option("--members", default=0, show_default=True,
              help="then time this many ensemble members one after another and side by side (CPU)")
def main(data, params_path, steps, warmup, workers, device, epoch, overrides, pad_to, profile, members):
    cfg = load_section(params_path, "train", TrainConfig)
    if overrides:
        values = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}
        cfg = from_dict(TrainConfig, {**params_dict(cfg), **values}, "train")
    device = pick_device(device, "--device")
    tags, mm, mm_dim = load_item_tables(f"{data}/features/item_info.parquet")
    fmap = FeatureMap.load(f"{data}/sequences/feature_map.json").with_mm_embedding(mm_dim)
    train = pad_history(load_split(f"{data}/sequences/train.parquet", fmap), pad_to)
    valid = pad_history(load_split(f"{data}/sequences/valid.parquet", fmap), pad_to)
    pad_to = train.item_seq.shape[1]
    context = [f.name for f in fmap.context_features]
    torch.manual_seed(cfg.seed)
    tables = split_tables(train, tags.shape[0], cfg.arch)
    # one model's steps: a seed ensemble (train.ensemble) repeats them per member, at the same speed
    initial = build_model(cfg.arch.member(0), fmap, tags, mm, **tables).to(device)
    real = (train.item_seq != 0).sum(1).float()
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {cfg.batch_size}, "
          f"{len(train)} train rows, history length {train.item_seq.shape[1]} (real: mean {real.mean():.1f}, "
          f"median {real.median():.0f}), {sum(p.numel() for p in initial.parameters())} parameters")

    results = {}
    for name, batches in (("stage", stage_batches(train, cfg, device, cfg.seed)),
                          ("naive", naive_batches(RowDataset(f"{data}/sequences/train.parquet", context, pad_to), cfg,
                                                  device, workers))):
        model = copy.deepcopy(initial)
        train_steps(model, batches, warmup, device, cfg)
        seconds = train_steps(model, batches, steps, device, cfg)
        results[name] = steps * cfg.batch_size / seconds
        print(f"{name:5s} {results[name]:9.0f} samples/s ({seconds:6.2f} s for {steps} steps) | implied epoch "
              f"{len(train) / results[name]:6.1f} s")
    print(f"ratio stage / naive: {results['stage'] / results['naive']:.1f}x")

    start = time.perf_counter()
    predict_logits(initial, valid, cfg.eval_batch_size, device, cfg.amp)
    seconds = time.perf_counter() - start
    print(f"eval  {len(valid) / seconds:9.0f} samples/s ({len(valid)} valid rows in {seconds:.2f} s, "
          f"batch {cfg.eval_batch_size})")
    if epoch:
        model = copy.deepcopy(initial)
        n_steps = -(-len(train) // cfg.batch_size)
        seconds = train_steps(model, stage_batches(train, cfg, device, cfg.seed), n_steps, device, cfg)
        print(f"stage epoch: {seconds:.1f} s ({len(train) / seconds:.0f} samples/s)")
    if members:
        initials = [build_model(cfg.arch.member(k), fmap, tags, mm, **tables) for k in range(members)]
        members_side_by_side(initials, train, cfg, steps, warmup)
    if profile:
        profile_steps(copy.deepcopy(initial), stage_batches(train, cfg, device, cfg.seed + 1), profile, cfg)


if __name__ == "__main__":
    main()
