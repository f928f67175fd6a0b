"""The training loop of the CTR model (`fit`), outside the nn.Module.

It owns the training-only options of train params: the optimiser, the L2 regularisers, the embedding dropout
rate, the lr schedule, bucketed batches, early stopping on valid AUC, and how often to validate."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from model.ensemble import SeedEnsemble
from model.layers import CTRBase
from pipeline.core.config import ModelConfig, ParamsError, TrainConfig
from pipeline.core.distributed import SINGLE, Dist, autocast
from pipeline.core.io import DataError
from pipeline.training.average import WeightAverage
from pipeline.training.checkpoint import FitState, resume_fingerprint, resume_path
from pipeline.training.data import RELEASE_BATCHES, SplitTensors, make_batch
from pipeline.training.predict import evaluate_split

log = logging.getLogger(__name__)


def log_validation(live: Any, record: dict[str, float]) -> None:
    """One validation's record as a dvclive step (its pass and optimizer step are the x axis, not metrics)."""
    for k, v in record.items():
        if k not in ("epoch", "step"):
            live.log_metric(k, v)
    live.next_step()


def lr_at(step: int, base_lr: float, schedule: str, min_lr: float, total_steps: int, warmup_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of a run of `total_steps` steps.

    `base_lr` is the plateau state: learning_rate, times lr_decay after each validation without a better valid AUC
    under `plateau` (fit keeps it), never decayed under `cosine`. Steps s < warmup_steps take
    base_lr * (s + 1) / warmup_steps (a linear ramp that reaches base_lr at s = warmup_steps - 1). Later steps take
    base_lr under `plateau`, and under `cosine` min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2 with
    p = (s - warmup_steps) / (total_steps - warmup_steps): base_lr right after the warm-up, min_lr at the run's end.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "plateau":
        return base_lr
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over every parameter, or AdamW (decoupled decay: each step first scales every parameter, embeddings and
    biases included, by 1 - lr * weight_decay). Both use torch's fused kernel (CPU and CUDA): the same update as
    the per-parameter loop (up to float rounding) in one call, which matters for small models, whose step is a few
    milliseconds."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, fused=True)


def regularization_loss(model: CTRBase, embedding_lambda: float, net_lambda: float) -> Tensor:
    """FuxiCTR's L2 regularisers (BaseModel.regularization_loss of fuxictr 2.3.7, the version the winning
    solution pins, with float regularizers, i.e. p = 2), a scalar:

        embedding_lambda / 2 * sum_{w in E} ||w||_2^2  +  net_lambda / 2 * sum_{w not in E} ||w||_2^2

    over the trainable parameters, where E = model.embedding_parameters() (FuxiCTR's FeatureEmbeddingDict: the
    id, tag and context tables, whole, padding rows included, and the projection of the frozen embedding) and the
    second sum runs over every other parameter, biases, norms and attention projections included. Its gradient
    adds lambda * w to each parameter's gradient.
    """
    embedding = {id(p) for p in model.embedding_parameters()}
    terms = []
    for p in model.parameters():
        lam = embedding_lambda if id(p) in embedding else net_lambda
        if lam and p.requires_grad:
            terms.append(lam / 2 * p.square().sum())
    return torch.stack(terms).sum()


def batch_loss(net: nn.Module, split: SplitTensors, rows: Tensor, cfg: TrainConfig, device: torch.device,
               dist: Dist = SINGLE) -> tuple[Tensor, Tensor]:
    """This rank's part of the global batch `rows` (its contiguous slice of rows.tensor_split(world)) ->
    (loss to backpropagate, summed BCE of its rows). The loss is that sum * world / len(rows), so DDP's average of
    the ranks' gradients is the gradient of the global batch's mean BCE (in a world of 1: the mean BCE), plus
    regularization_loss when train.embedding_regularizer or train.net_regularizer is set."""
    idx = rows.tensor_split(dist.world)[dist.rank]
    batch = make_batch(split, idx, cfg.arch.first_k, device)
    with autocast(device, cfg.amp):
        logits = net(batch).float()
    loss_sum = nn.functional.binary_cross_entropy_with_logits(logits, split.label[idx].to(device), reduction="sum")
    loss = loss_sum * (dist.world / len(rows))
    if cfg.embedding_regularizer or cfg.net_regularizer:
        # Every rank adds the whole term: DDP averages the ranks' gradients, so its gradient reaches the update once.
        model = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
        loss = loss + regularization_loss(model, cfg.embedding_regularizer, cfg.net_regularizer)
    return loss, loss_sum


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, loss: Tensor, max_grad_norm: float) -> None:
    """One update from `loss`: clear the gradients, backpropagate, clip their global norm to max_grad_norm, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    # foreach: one multi-tensor norm and scale instead of a per-parameter loop (torch picks it only on CUDA)
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm, foreach=True)
    opt.step()


class PassWindows:
    """One pass's row order over rows 0..n-1, as windows whose concatenation is a permutation. block_rows 0: one
    window, a uniform order (torch.randperm). Else rows are cut into blocks of block_rows consecutive rows (the
    last may be short), the blocks taken in a random order, and each window of buffer_blocks blocks of that order
    is its rows shuffled together: a window's rows are read before the next window's, so a memory-mapped split is
    read a window at a time.

    The block order is drawn from `gen` when the PassWindows is made; each window's order is drawn when an
    iteration reaches it (after whatever the consumer drew for the window before), so a pass holds one window's
    indices, not n of them (8 bytes a row: 240 MB for a 30M-row split). Iterate once."""

    def __init__(self, n: int, block_rows: int, buffer_blocks: int, gen: torch.Generator) -> None:
        self.n, self.block_rows, self.gen = n, block_rows, gen
        self.groups: list[Tensor] = \
            list(torch.randperm(-(-n // block_rows), generator=gen).split(buffer_blocks)) if block_rows else []

    def sizes(self) -> list[int]:
        """Rows in each window, in pass order (known before any window is drawn)."""
        if not self.block_rows:
            return [self.n]
        return [sum(min(self.block_rows, self.n - b * self.block_rows) for b in blocks.tolist())
                for blocks in self.groups]

    def __iter__(self) -> Iterator[Tensor]:
        """Each window's rows (R,) int64 in their shuffled order."""
        if not self.block_rows:
            yield torch.randperm(self.n, generator=self.gen)
            return
        for blocks in self.groups:
            rows = torch.cat([torch.arange(b * self.block_rows, min((b + 1) * self.block_rows, self.n))
                              for b in blocks.tolist()])
            yield rows[torch.randperm(len(rows), generator=self.gen)]


class PassBatches:
    """One pass's batches of row indices (`pass_batches`): len() is their number, and iterating makes them a
    window at a time. Iterate once."""

    def __init__(self, count: int, batches: Iterator[Tensor]) -> None:
        self.count, self.batches = count, batches

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Tensor]:
        return self.batches


def pass_batches(lengths: Tensor, batch_size: int, bucket_batches: int, gen: torch.Generator,
                 block_rows: int = 0, buffer_blocks: int = 1) -> PassBatches:
    """One pass's batches of row indices, each row once: the order of `PassWindows` (from `gen`) cut into
    batches of batch_size (the last may be short). With bucket_batches > 0, each run of bucket_batches *
    batch_size consecutive rows of that order (a run may span windows) is sorted by history length (`lengths`
    (n,), stable) before it is cut, and a window's batches are then taken in a random order: a batch holds rows
    of similar length, so `trim_history` keeps few padding columns (most histories are far shorter than the
    longest), while which rows meet and the order of the batches stay random (within a window, so reads stay
    local). The batches are made as they are taken (PassBatches), the same ones as `pass_batches_reference` makes
    up front."""
    windows = PassWindows(len(lengths), block_rows, buffer_blocks, gen)
    if not bucket_batches:
        return PassBatches(-(-len(lengths) // batch_size), _cut(windows, batch_size))
    run = bucket_batches * batch_size
    count = len(lengths) // run * bucket_batches + -(-(len(lengths) % run) // batch_size)
    return PassBatches(count, _bucketed(windows, lengths, batch_size, run, gen))


def _cut(windows: PassWindows, batch_size: int) -> Iterator[Tensor]:
    """The windows' rows, one after another, cut into batches of batch_size: a batch may span two windows."""
    carry = torch.zeros(0, dtype=torch.int64)
    for order in windows:
        order = torch.cat([carry, order])
        whole = len(order) // batch_size * batch_size
        if whole:  # an empty tensor's split is one empty batch: a split or a window shorter than a batch
            yield from order[:whole].split(batch_size)
        carry = order[whole:]
    if len(carry):
        yield carry


def _bucketed(windows: PassWindows, lengths: Tensor, batch_size: int, run: int, gen: torch.Generator
              ) -> Iterator[Tensor]:
    """The windows' rows, one after another, in runs of `run` rows (a run may span windows, as a batch does in
    `_cut`: cut window by window, a window smaller than a batch would make every batch that small), each run
    sorted by length and cut into batches; the batches of a window's runs in a random order (drawn before the next
    window's rows). The last window's runs include the pass's short run (so one window, the default, is its
    runs' batches in one random order)."""
    carry = torch.zeros(0, dtype=torch.int64)
    last = len(windows.sizes()) - 1
    for k, order in enumerate(windows):
        order = torch.cat([carry, order])
        whole = len(order) if k == last else len(order) // run * run
        if whole:
            yield from _shuffled_runs(order[:whole], lengths, batch_size, run, gen)
        carry = order[whole:]


def _shuffled_runs(rows: Tensor, lengths: Tensor, batch_size: int, run: int, gen: torch.Generator) -> list[Tensor]:
    """`rows` in runs of `run`, each sorted by length (stable) and cut into batches, the batches in a random order."""
    batches = [b for part in rows.split(run) for b in part[torch.argsort(lengths[part], stable=True)].split(batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def pass_batches_reference(lengths: Tensor, batch_size: int, bucket_batches: int, gen: torch.Generator,
                           block_rows: int = 0, buffer_blocks: int = 1) -> list[Tensor]:
    """`pass_batches` made up front in one list (a pass's whole order in memory), with the same draws from `gen`:
    the block order, then window by window its rows' order and (bucketed) its batches' order."""
    n = len(lengths)
    groups = torch.randperm(-(-n // block_rows), generator=gen).split(buffer_blocks) if block_rows else [None]
    rows_in_order, out, pending = [], [], []
    size = bucket_batches * batch_size
    for k, blocks in enumerate(groups):
        rows = torch.arange(n) if blocks is None else \
            torch.cat([torch.arange(b * block_rows, min((b + 1) * block_rows, n)) for b in blocks.tolist()])
        window = rows[torch.randperm(len(rows), generator=gen)]
        rows_in_order.append(window)
        if bucket_batches:  # runs of `size` rows, the last window's short run included
            pending += window.tolist()
            whole = len(pending) if k == len(groups) - 1 else len(pending) // size * size
            if whole:
                batches = []
                for start in range(0, whole, size):
                    run = torch.tensor(pending[start:min(start + size, whole)], dtype=torch.int64)
                    batches += list(run[torch.argsort(lengths[run], stable=True)].split(batch_size))
                out += [batches[i] for i in torch.randperm(len(batches), generator=gen)]
            pending = pending[whole:]
    return out if bucket_batches else list(torch.cat(rows_in_order).split(batch_size))


def run_steps(train_rows: int, cfg: TrainConfig) -> int:
    """The optimizer steps of a run that is not stopped early: `epochs` passes of ceil(train_rows / batch_size)
    steps, capped at `max_steps` when that is > 0. A step budget sizes the run by updates rather than passes, so a
    small split gets many passes (early stopping ends it) and a large one is not trained for hours."""
    total = cfg.epochs * math.ceil(train_rows / cfg.batch_size)
    return min(total, cfg.max_steps) if cfg.max_steps else total


def check_run_length(train_rows: int, cfg: TrainConfig) -> None:
    """A ParamsError naming train.warmup_steps when the warm-up does not end within the run (`run_steps`): the
    learning rate would stay a fraction of train.learning_rate from the first step to the last. check_params
    refuses it against max_steps; with max_steps 0 the run's length is known only from the train split."""
    total = run_steps(train_rows, cfg)
    if cfg.warmup_steps > total:  # the ramp reaches learning_rate at step warmup_steps - 1
        raise ParamsError(f"train.warmup_steps: a warm-up of {cfg.warmup_steps} steps does not end within a run of "
                          f"{total} steps ({cfg.epochs} passes over {train_rows} train rows in batches of "
                          f"{cfg.batch_size}): the learning rate would stay below its value all run")


def fit(model: CTRBase, train: SplitTensors, valid: SplitTensors, cfg: TrainConfig, device: torch.device,
        live: Any = None, dist: Dist = SINGLE, resume_file: Path | None = None,
        progress: bool = True) -> list[dict[str, float]]:
    """Adam (or AdamW) on BCEWithLogits, plus the optional L2 regularisers (batch_loss), with early stopping on valid
    AUC; returns one record per validation and leaves the model holding the best validation's weights.

    The run makes at most `epochs` passes over the train split in a seeded order and at most `max_steps` optimizer
    steps (when > 0; run_steps). It validates after each pass, or
    with eval_steps > 0 every eval_steps optimizer steps and after the run's last step. Each validation gives a
    record {epoch (its pass), step (optimizer steps so far), train_logloss (mean BCE of the rows since the previous
    validation), valid_auc, valid_logloss, lr (of the last step)}, logged to `live` as one dvclive step. The lr of
    each step is lr_at's: under `plateau` it is multiplied by `lr_decay` after each validation without a better
    valid AUC (FuxiCTR's reduce-on-plateau). Training stops after `patience` such validations in a row. The item and
    context embeddings get dropout `embedding_dropout` in training, the id embeddings `id_dropout`, the user
    vectors `user_dropout`. With ema_decay > 0 each validation scores (and the run keeps) an exponential moving
    average of the weights (WeightAverage), not the last step's. A NaN/inf loss stops with the step number.

    Under torchrun (dist.enabled) the model is wrapped in DistributedDataParallel; every rank draws the same pass
    order and takes its contiguous part of each global batch of `batch_size` rows. Each rank's loss is its rows'
    summed loss * world / global batch rows, so DDP's gradient average is exactly the gradient of the global
    batch's mean loss: one process and N ranks make the same updates (up to float summation order; dropout
    draws differ per rank). Only rank 0 logs to `live` and writes the resume state.

    With `resume_file`, the state at the end of each pass (and at an early stop) is written there (atomically), and
    when cfg.resume is set a state found there for the same params and data is restored and training continues
    with the next pass. `progress` False hides the pass's progress bar (an ensemble member trained beside another).
    """
    model.to(device)
    model.embedding_dropout.p = cfg.embedding_dropout
    model.id_dropout = cfg.id_dropout
    model.user_dropout = cfg.user_dropout
    net = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(cfg.seed + dist.rank)  # dropout draws differ per rank; weights came from rank 0
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    fp = resume_fingerprint(cfg, model, train, valid)
    state = None
    if resume_file is not None and cfg.resume:
        state = FitState.load(resume_file, fp, model, opt, gen, dist.rank, dist.world)
        if state is not None:
            log.info("resuming after pass %d (best valid AUC %.5f)", state.epoch - 1, state.best_auc)
            if live is not None and dist.is_main:
                for record in state.history:
                    log_validation(live, record)
    state = state or FitState(lr=cfg.learning_rate)
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None and state.ema is not None:
        ema.load(state.ema)
    total_steps = run_steps(len(train), cfg)
    # A resumed run that had already stopped (early, or at its step budget) only restores its best weights.
    finished = state.bad_validations >= cfg.patience or state.step >= total_steps
    epochs = range(0) if finished else range(state.epoch, cfg.epochs)
    lengths = train.history_lengths()
    since = time.perf_counter()  # start of the interval the next validation line reports
    for epoch in epochs:
        net.train()
        batches = pass_batches(lengths, cfg.batch_size, cfg.bucket_batches, gen, cfg.shuffle_block_rows,
                               cfg.shuffle_buffer_blocks)
        pass_loss = 0.0  # this rank's summed BCE since the pass began or the last validation
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", mininterval=5, disable=not (dist.is_main and progress))
        for b, rows in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = lr_at(state.step, state.lr, cfg.lr_schedule, cfg.min_lr, total_steps, cfg.warmup_steps)
            loss, loss_sum = batch_loss(net, train, rows, cfg, device, dist)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"train: loss is {loss.item()} at step {state.step} (epoch {epoch})")
            optimizer_step(model, opt, loss, cfg.max_grad_norm)
            if b % RELEASE_BATCHES == RELEASE_BATCHES - 1:
                train.release()  # a memory-mapped split lets the pages of the rows read so far go
            if ema is not None:
                ema.update(model)
            pass_loss += loss_sum.item()
            state.interval_rows += len(rows)
            state.step += 1
            due = state.step % cfg.eval_steps == 0 if cfg.eval_steps else b == len(batches) - 1
            if not (due or state.step == total_steps):
                continue
            with ema.applied(model) if ema is not None else contextlib.nullcontext():
                scores = evaluate_split(model, valid, cfg.eval_batch_size, device, cfg.amp, dist)
                improved = scores["auc"] > state.best_auc
                if improved:  # the weights validated: the average under ema_decay
                    state.best_state = copy.deepcopy(model.state_dict())
            train_loss = state.interval_loss + dist.sum(pass_loss, device)
            record = {"epoch": epoch, "step": state.step, "train_logloss": train_loss / state.interval_rows,
                      "valid_auc": scores["auc"], "valid_logloss": scores["logloss"], "lr": opt.param_groups[0]["lr"]}
            state.history.append(record)
            seconds, rows_seen = time.perf_counter() - since, state.interval_rows * dist.world
            state.interval_loss, state.interval_rows, pass_loss = 0.0, 0, 0.0
            if dist.is_main:
                log.info("pass %d, step %d: valid AUC %.4f%s, valid logloss %.4f, train logloss %.4f, lr %.3g; "
                         "%.0f s, %.0f rows/s", epoch, state.step, scores["auc"],
                         " (best so far)" if improved else f" (best {state.best_auc:.4f})", scores["logloss"],
                         record["train_logloss"], record["lr"], seconds, rows_seen / max(seconds, 1e-9))
                if live is not None:
                    log_validation(live, record)
            if improved:
                state.best_auc, state.bad_validations = scores["auc"], 0
            else:
                state.bad_validations += 1
                if cfg.lr_schedule == "plateau" and state.lr > cfg.min_lr:
                    state.lr = max(state.lr * cfg.lr_decay, cfg.min_lr)
                    if dist.is_main:
                        log.info("no better valid AUC: lr lowered to %.3g", state.lr)
            since = time.perf_counter()
            if state.bad_validations >= cfg.patience or state.step == total_steps:
                break
            net.train()
        state.interval_loss += dist.sum(pass_loss, device)
        state.epoch = epoch + 1
        state.ema = ema.state() if ema is not None else None
        if resume_file is not None:
            rng = dist.rng_states()  # every rank takes part; rank 0 writes them all
            if dist.is_main:
                state.save(resume_file, fp, model, opt, gen, rng)
        if state.step == total_steps:
            break
        if state.bad_validations >= cfg.patience:
            log.info("early stop at step %d, pass %d (best valid AUC %.5f)", state.step, epoch, state.best_auc)
            break
    if state.best_state is None:
        raise DataError("train: no validation gave a valid AUC to keep (is the valid split all one label?)")
    model.load_state_dict(state.best_state)
    return state.history


def fit_ensemble(build: Callable[[ModelConfig], CTRBase], train: SplitTensors, valid: SplitTensors,
                 cfg: TrainConfig, device: torch.device, live: Any = None, dist: Dist = SINGLE,
                 model_path: Path | None = None) -> tuple[nn.Module, list[list[dict[str, float]]]]:
    """Train `cfg.arch.ensemble` models and return (the model, each member's `fit` records).

    Member k is `build(cfg.arch.member(k))` (ensemble 1; recent_map on odd k under ensemble_mix) made right after
    torch.manual_seed(seed_k) and trained by `fit` with seed_k = cfg.seed + k, on its own: its own pass order,
    dropout draws, early stop and best weights, and its own resume state (resume_path(model_path, k); none without
    model_path). Member 0 is therefore exactly the model that ensemble 1 trains, and ensemble 1 returns that model
    itself; otherwise a SeedEnsemble of the members (model/ensemble.py). Only member 0 logs to `live`: a dvclive
    curve cannot start over. The members train one after another, or side by side (`member_processes`,
    `fit_members_side_by_side`): the same members either way at the same threads per member."""
    processes = member_processes(cfg, device, dist)
    if processes > 1 and not shared_memory_room(train, valid):
        log.warning("ensemble: too little room in %s to share the splits with other processes: the members train "
                    "one after another", SHARED_MEMORY)
        processes = 1
    if processes > 1:
        trained = fit_members_side_by_side(build, train, valid, cfg, live, model_path, processes)
    else:
        trained = [fit_member(build, k, train, valid, cfg, device, live if k == 0 else None, dist, model_path)
                   for k in range(cfg.arch.ensemble)]
    members = [member for member, _ in trained]
    return (members[0] if len(members) == 1 else SeedEnsemble(cfg.arch, members)), [h for _, h in trained]


def fit_member(build: Callable[[ModelConfig], CTRBase], k: int, train: SplitTensors, valid: SplitTensors,
               cfg: TrainConfig, device: torch.device, live: Any, dist: Dist, model_path: Path | None,
               progress: bool = True) -> tuple[CTRBase, list[dict[str, float]]]:
    """Ensemble member k as fit_ensemble describes it, trained: (the member, its `fit` records)."""
    member_cfg = cfg if k == 0 else replace(cfg, seed=cfg.seed + k)
    arch = cfg.arch.member(k)
    if cfg.arch.ensemble > 1 and dist.is_main:
        log.info("ensemble: member %d of %d, seed %d%s", k + 1, cfg.arch.ensemble, member_cfg.seed,
                 ", with recent_map" if arch.recent_map else "")
    torch.manual_seed(member_cfg.seed)
    member = build(arch)
    history = fit(member, train, valid, member_cfg, device, live, dist,
                  None if model_path is None else resume_path(model_path, k), progress)
    return member, history


def member_processes(cfg: TrainConfig, device: torch.device, dist: Dist) -> int:
    """How many processes train an ensemble's members at once: with train.parallel_members, on the CPU, in one
    process (not under torchrun) with the splits in memory, min(ensemble, torch's intra-op threads); else 1.

    Why: a member's CPU step is many small ops, which two threads share badly; on 2 cores two members at 1 thread
    each made ~1.4x the steps of one member at 2 threads (`python benchmarks/train.py --members`)."""
    if (not cfg.parallel_members or cfg.arch.ensemble < 2 or device.type != "cpu" or dist.enabled
            or cfg.data_loading != "memory"):
        return 1
    return min(cfg.arch.ensemble, torch.get_num_threads())


SHARED_MEMORY = Path("/dev/shm")  # where torch puts the tensors it shares with other processes on Linux


def shared_memory_room(*splits: SplitTensors) -> bool:
    """Whether SHARED_MEMORY has room for the splits' tensors, 1.5x their bytes plus 128 MiB for the item tables
    and model weights that also pass through it (a container's default /dev/shm is 64 MiB: sharing there would
    fail half-way); True where there is no such folder (torch shares another way)."""
    if not SHARED_MEMORY.is_dir():
        return True
    need = 1.5 * sum(s.nbytes() for s in splits) + (128 << 20)
    return shutil.disk_usage(SHARED_MEMORY).free >= need


def fit_members_side_by_side(build: Callable[[ModelConfig], CTRBase], train: SplitTensors, valid: SplitTensors,
                             cfg: TrainConfig, live: Any, model_path: Path | None,
                             processes: int) -> list[tuple[CTRBase, list[dict[str, float]]]]:
    """fit_member for every member on the CPU, in `processes` processes at once: this one trains members 0,
    processes, 2 * processes, ... (member 0 logs to `live` and shows the progress bar), spawned process j members
    j, j + processes, ...; each gets threads // processes of torch's threads (this one the rest). The spawned ones
    get `build` and the splits pickled (the split tensors through shared memory, not copied) and send back each
    member's state dict and records; their log lines are theirs. A member that fails in another process raises its
    error here; one whose process dies (killed, out of memory) raises a DataError with the exit code; an error here
    stops the others. Returns (member, records) in member order."""
    threads = torch.get_num_threads()
    share = threads // processes
    slots = [list(range(j, cfg.arch.ensemble, processes)) for j in range(processes)]
    log.info("ensemble: %d members in %d processes side by side, %d torch thread(s) each", cfg.arch.ensemble,
             processes, share)
    ctx = torch.multiprocessing.get_context("spawn")
    workers = []
    try:
        for slot in slots[1:]:
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=fit_members_worker, name=f"train-members-{slot[0]}",
                               args=(send, build, slot, train, valid, cfg, share, model_path), daemon=True)
            proc.start()
            send.close()  # the child's end: this process keeps only its reading end, so a dead child reads as EOF
            workers.append((slot, proc, receive))
        torch.set_num_threads(threads - share * (processes - 1))
        try:
            with member_log_lines(slots[0]):
                trained = {k: fit_member(build, k, train, valid, cfg, torch.device("cpu"),
                                         live if k == 0 else None, SINGLE, model_path) for k in slots[0]}
        finally:
            torch.set_num_threads(threads)
        for slot, proc, receive in workers:
            for k, (state, history) in zip(slot, receive_members(receive, proc, slot)):
                member = build(cfg.arch.member(k))
                member.load_state_dict(state)
                trained[k] = (member, history)
    finally:
        for _, proc, receive in workers:
            if proc.is_alive():
                proc.terminate()
            proc.join()
            receive.close()
    return [trained[k] for k in range(cfg.arch.ensemble)]


@contextlib.contextmanager
def member_log_lines(slot: list[int]) -> Iterator[None]:
    """While members `slot` (0-based) train side by side with others, the root logger's handlers print
    "(member 1, 3)" (numbered from 1, as the "member k of N" lines) after the logger's name: the processes' lines
    interleave, and each must say whose it is, this process's as much as a spawned one's. The handlers' own
    formatters are put back on exit."""
    members = ", ".join(str(k + 1) for k in slot)
    tagged = logging.Formatter(f"%(asctime)s %(name)s (member {members}): %(message)s")
    handlers = list(logging.getLogger().handlers)
    before = [handler.formatter for handler in handlers]
    for handler in handlers:
        handler.setFormatter(tagged)
    try:
        yield
    finally:
        for handler, formatter in zip(handlers, before):
            handler.setFormatter(formatter)


def fit_members_worker(send: Any, build: Callable[[ModelConfig], CTRBase], slot: list[int], train: SplitTensors,
                       valid: SplitTensors, cfg: TrainConfig, threads: int, model_path: Path | None) -> None:
    """The body of a process of fit_members_side_by_side: members `slot` one after another at `threads` torch
    threads, then ("ok", torch.save bytes of [(state dict, records)]) down `send`, or ("error", the exception)."""
    from pipeline.core.stage import configure_logging, stop_with_parent

    configure_logging("train")
    stop_with_parent()
    torch.set_num_threads(threads)
    try:
        out = []
        with member_log_lines(slot):
            for k in slot:
                member, history = fit_member(build, k, train, valid, cfg, torch.device("cpu"), None, SINGLE,
                                             model_path, progress=False)
                out.append((member.state_dict(), history))
        buffer = io.BytesIO()
        torch.save(out, buffer)
        send.send(("ok", buffer.getvalue()))
    except Exception as e:  # noqa: BLE001 - any error goes back to the parent, which raises it
        send.send(("error", e))
    finally:
        send.close()


def receive_members(receive: Any, proc: Any, slot: list[int]) -> list[tuple[dict[str, Tensor], list[dict]]]:
    """What fit_members_worker sent for members `slot`: their (state dict, records), or its exception raised; a
    process that ended without sending is a DataError naming the members and its exit code."""
    try:
        kind, payload = receive.recv()
    except EOFError:
        proc.join()
        raise DataError(f"train: the process training ensemble member(s) {', '.join(map(str, slot))} ended "
                        f"without a result (exit code {proc.exitcode}: killed, or out of memory?)") from None
    if kind == "error":
        raise payload
    return torch.load(io.BytesIO(payload), weights_only=True)
