"""Checkpoints and resume state.

A checkpoint holds weights, the ModelConfig and the feature map, plain types only, so it loads with
`torch.load(weights_only=True)`, and is written byte-identically for identical contents. `FitState` is the resume
state of an interrupted run (weights, optimiser, RNG, epoch), tied to its params and data by a fingerprint."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import pickle
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from model.factory import build_model
from pipeline.core.config import ModelConfig, TrainConfig, params_dict
from pipeline.core.feature_map import FeatureMap
from pipeline.core.io import DataError, atomic_path, error_summary, first_line
from pipeline.training.data import SplitTensors

log = logging.getLogger(__name__)

# The train params that do not change what training computes: a resume state written under other values of these
# is still valid (`epochs` only while the run's length shapes nothing before its end: resume_fingerprint).
RESUME_NEUTRAL = ("resume", "epochs", "device", "num_threads", "parallel_members", "eval_batch_size",
                  "data_loading")


def resume_path(model_path: str | Path, member: int = 0) -> Path:
    """Where `fit` keeps the state of the last finished pass: `.<model name>.resume.pt` beside the checkpoint
    (outside what DVC caches, so it survives a failed or killed run); a seed ensemble's member k > 0 uses
    `.<model name>.resume.<k>.pt`, so member 0 and a single model share one state."""
    model_path = Path(model_path)
    return model_path.parent / f".{model_path.name}.resume{f'.{member}' if member else ''}.pt"


# The model's buffers that hold data (model/layers.py CTRBase), digested whole by `data_digest`.
DATA_BUFFERS = ("item_tags", "item_mm", "item_codes", "item_exposure", "user_keys", "item_new")
DIGEST_ROWS = 4096  # rows of each split digested, spread evenly over it


def digest_rows(n: int) -> Tensor:
    """(min(n, DIGEST_ROWS),) int64 row indices spread evenly over 0..n-1, first and last included; integer
    arithmetic, since a float32 linspace rounds past 2^24 rows (to an index past the end)."""
    k = min(n, DIGEST_ROWS)
    return torch.arange(k) * (n - 1) // max(k - 1, 1)


def data_digest(model: nn.Module, *splits: SplitTensors) -> str:
    """A digest of the data a run learns from: the model's data buffers (DATA_BUFFERS: the item tables, the user
    keys; shape, dtype and values) in full, and of each split its row count and DIGEST_ROWS rows spread evenly over
    it, every column. A split or an item table rebuilt from other data (another fit_pca, another split seed)
    changes it; a split of many GB is not read whole for it."""
    h = hashlib.blake2b(digest_size=16)

    def add(name: str, t: Tensor) -> None:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    for name in DATA_BUFFERS:
        if (buffer := getattr(model, name, None)) is not None:
            add(name, buffer)
    for k, split in enumerate(splits):
        rows = digest_rows(len(split))
        columns = {"item_seq": split.item_seq, "item_id": split.item_id, "label": split.label,
                   "user_id": split.user_id, **split.context}
        for name, column in sorted(columns.items()):
            add(f"{k}.{name}.{len(split)}", column.index_select(0, rows))
    return h.hexdigest()


def resume_fingerprint(cfg: TrainConfig, model: nn.Module, train: SplitTensors, valid: SplitTensors) -> str:
    """What a resume state must match: the train params that shape the run, and the data (`data_digest` of the
    model's item tables and of both splits). `epochs` counts when the run's planned length shapes its steps: the
    cosine schedule spans all of it, with eval_steps the last partial interval is validated at its end, and with
    max_steps it may decide where the run ends."""
    neutral = set(RESUME_NEUTRAL)
    if cfg.lr_schedule == "cosine" or cfg.eval_steps > 0 or cfg.max_steps > 0:
        neutral.discard("epochs")
    parts = {k: v for k, v in params_dict(cfg).items() if k not in neutral}
    return json.dumps({"params": parts, "data": data_digest(model, train, valid)}, sort_keys=True, default=list)


@dataclass
class FitState:
    """Everything a run needs to continue after pass `epoch - 1`: weights, optimiser, the pass-order generator
    and torch's global RNG (dropout), the plateau lr, the best validation so far, the validation records, and the
    train loss of the validation interval under way (with eval_steps it can span passes) and the weight average. It
    is saved at the end of each pass only, so a resumed run repeats the steps of the pass it was stopped in."""

    lr: float  # the plateau state: learning_rate times lr_decay per plateau (floored at min_lr); see lr_at
    epoch: int = 0
    step: int = 0
    best_auc: float = -math.inf
    bad_validations: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None
    interval_loss: float = 0.0  # summed train BCE (all ranks) of the interval's finished passes
    interval_rows: int = 0  # train rows (all ranks) since the last validation
    ema: dict[str, Tensor | int] | None = None  # WeightAverage.state() under train.ema_decay > 0

    def save(self, path: Path, fp: str, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
             rng_states: list[Tensor]) -> None:
        """Write the state atomically (plain types and tensors only: loads with weights_only=True); rng_states:
        every rank's torch RNG state, in rank order (Dist.rng_states)."""
        blob = {"fingerprint": fp, **{f.name: getattr(self, f.name) for f in fields(self)},
                "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                "torch_rng": rng_states}
        save_atomic(blob, path)

    @classmethod
    def load(cls, path: Path, fp: str, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
             rank: int = 0, world: int = 1) -> FitState | None:
        """The state in `path` restored into model/opt/gen (and torch's global RNG: rank `rank`'s own of a run of
        `world` ranks; a run of another rank count keeps the RNG each rank was seeded with, as its dropout masks
        cannot follow the old run's anyway), or None when there is none, it was written for other params or data, or
        it cannot be restored (then training starts afresh, with model/opt/gen and the RNG as they were: nothing is
        restored in part)."""
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged state is ignored, never trusted
            log.warning("%s: unreadable resume state, starting afresh (%s)", path, error_summary(e))
            return None
        if not isinstance(blob, dict) or blob.get("fingerprint") != fp:
            log.info("%s: written for other train params or data; starting afresh", path)
            return None
        before = ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()),
                  gen.get_state(), torch.get_rng_state())
        try:
            state = cls(**{f.name: blob[f.name] for f in fields(cls)})
            model.load_state_dict(blob["model"])
            opt.load_state_dict(blob["optimizer"])
            gen.set_state(blob["generator"])
            states = blob["torch_rng"] if isinstance(blob["torch_rng"], list) else [blob["torch_rng"]]
            if len(states) == world:
                torch.set_rng_state(states[rank])
            return state
        except Exception as e:  # tampered, or from other code: load_state_dict may have copied part of it already
            model.load_state_dict(before[0])
            opt.load_state_dict(before[1])
            gen.set_state(before[2])
            torch.set_rng_state(before[3])
            log.warning("%s: resume state does not fit this run, starting afresh (%s)", path, error_summary(e))
            return None


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically, byte-identical for identical contents: torch names the archive's
    folder after the file it is given, so it is given a file object (folder `archive`), not the random temp name."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)


# ModelConfig switches added after checkpoints were first written, at the value that builds the model such a
# checkpoint holds (ModelConfig's default, taken for a missing key, may differ).
SWITCHES_BEFORE_THEY_EXISTED = {"exposure_levels": 0, "item_bias": False, "recent_interest": 0, "ensemble": 1,
                               "target_interest": False, "recent_map": False, "user_bias": False,
                               "ensemble_mix": "none", "user_interest": False, "history_length": False,
                               "history_similarity": False, "new_item_offset": False,
                               "similarity_count": False, "repeat_count": False}


def renamed_weights(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state_dict in the form of the current code. recent_map's map M was first stored as itself
    (`recent_map.weight`, written on 2026-12-05 only); the model now holds A = M - I (`recent_delta.weight`)."""
    out = {}
    for key, value in state.items():
        if key.endswith("recent_map.weight"):
            key, value = key.removesuffix("recent_map.weight") + "recent_delta.weight", value - torch.eye(len(value))
        out[key] = value
    return out


def save_checkpoint(path: str | Path, model: nn.Module, feature_map: FeatureMap) -> None:
    """Atomically write {"model": state_dict, "config": ModelConfig as dict, "feature_map": dict}; plain types
    only, so it loads with torch.load(weights_only=True)."""
    ckpt = {"model": {k: v.cpu() for k, v in model.state_dict().items()},
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model.cfg).items()},
            "feature_map": feature_map.to_dict()}
    save_atomic(ckpt, path)


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[nn.Module, FeatureMap]:
    """Rebuild the model from a checkpoint alone (no unpickling of code: weights_only=True)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg_dict = {**SWITCHES_BEFORE_THEY_EXISTED,
                    **{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()}}
        fmap = FeatureMap.from_dict(ckpt["feature_map"], where=str(path))
        state = renamed_weights(ckpt["model"])
        cfg = ModelConfig(**cfg_dict)
        # the tables to build with (load_state_dict then sets every member's): a seed ensemble's are its members'
        prefix = "members.0." if cfg.ensemble > 1 else ""
        model = build_model(cfg, fmap, state[f"{prefix}item_tags"], state[f"{prefix}item_mm"],
                            state.get(f"{prefix}item_codes"), state.get(f"{prefix}item_exposure"),
                            state.get(f"{prefix}user_keys"), state.get(f"{prefix}item_new"))
        model.load_state_dict(state)
    except FileNotFoundError:
        raise DataError(f"{path}: checkpoint not found") from None
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"{path}: not a valid mmctr checkpoint ({first_line(e) or type(e).__name__})") from None
    # training stops at a non-finite loss, so such a weight means a damaged or crafted file: it would score NaN
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DataError(f"{path}: not a valid mmctr checkpoint (weight {name} holds a non-finite value)")
    return model.to(device).eval(), fmap
