"""Image embeddings: the open_clip image tower over item covers.

Covers are decoded in a DataLoader (`CoverDataset`), grouped by size, and encoded with autocast on CUDA. The
statuses of the embedding frame (store.py): ok | missing (no file) | empty (zero-byte file) | corrupt
(undecodable, truncated) | too_large (more than max_pixels pixels; never decoded, so memory stays bounded)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image
from torchvision import transforms
from tqdm import tqdm

from pipeline.core.config import ExtractImageConfig, ParamsError
from pipeline.core.distributed import SINGLE, Dist, autocast
from pipeline.core.io import error_summary
from pipeline.extract.batching import BatchSize, default_num_workers, run_batches
from pipeline.extract.store import ShardStore, check_unique_ids, embedding_frame, file_stamp, fingerprint, folder_stamp
from pipeline.sources.covers import to_rgb, upright
from pipeline.sources.items import item_cover_paths, item_titles
from pipeline.sources.microlens import item_ids

log = logging.getLogger(__name__)

CLIP_CONFIG_DIR = Path(__file__).parent / "clip_configs"


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
    except Exception as e:  # a local checkpoint is anyone's file: empty, text, a list, another architecture's, a
        # crafted pickle (UnpicklingError: weights_only refused it, its code never ran)
        raise ParamsError(f"extract_image.pretrained: cannot load {pretrained!r} for {name!r} "
                          f"({error_summary(e)})") from None
    return model.eval(), preprocess


def scales_short_side(preprocess) -> bool:
    """Whether `preprocess` (a torchvision Compose) first scales an image's short side to a size, keeping its
    aspect (open_clip's default `Resize(int)`), rather than to a fixed size (`squash`, `Resize((h, w))`) or its long
    side (`ResizeKeepRatio`): only the first upscales a thin image along its long side."""
    for step in getattr(preprocess, "transforms", []):
        if isinstance(step, transforms.Resize):
            return isinstance(step.size, int) or len(step.size) == 1
    return False


class CoverDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses covers in DataLoader workers; an unusable file yields a status, never an error.

    The pixel count is read from the header before decoding, so a huge cover is refused (`too_large`) without
    allocating it, as is a thin one whose short side scaled to the model's input would make more than
    max(max_pixels, input) pixels. With `jpeg_draft` a JPEG is decoded at the smallest DCT scale (1/1, 1/2, 1/4
    or 1/8) that keeps both sides at least the model's input size: a 1280x720 cover for a 224-pixel model decodes
    at 1/2 (a quarter of the pixels), and the resize that follows starts from a smaller image. Vectors then differ
    slightly from a full-size decode (max |diff| is printed by benchmarks/extract.py)."""

    def __init__(self, paths: Sequence[Path], preprocess, image_size: tuple[int, int],
                 max_pixels: int = Image.MAX_IMAGE_PIXELS, jpeg_draft: bool = False):
        self.paths = [Path(p) for p in paths]
        self.preprocess = preprocess
        self.image_size = image_size
        self.blank = torch.zeros(3, *image_size)
        self.max_pixels = max_pixels
        self.jpeg_draft = jpeg_draft
        self.short_side = scales_short_side(preprocess)

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
                # the preprocess scales the short side to the model's input: a 1 x 10000 cover of 100 bytes
                # would become 224 x 2,240,000 pixels (2 GB) before its centre crop (a square one just the input)
                short = min(self.image_size)
                scaled = short * short * max(width, height) // max(min(width, height), 1) if self.short_side else 0
                if width * height > self.max_pixels or scaled > max(self.max_pixels, short * short):
                    return self.blank, "too_large"
                if self.jpeg_draft and img.format == "JPEG":
                    img.draft("RGB", (self.image_size[1], self.image_size[0]))  # (width, height)
                return self.preprocess(to_rgb(upright(img))), "ok"
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
    with torch.inference_mode(), autocast(device, amp, amp_dtype):
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
            with torch.inference_mode(), autocast(device, amp, amp_dtype):
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
    re-embedded), the params that shape vectors (the batch size as in text_shard_store) and a local checkpoint's
    file_stamp."""
    check_unique_ids(ids, "covers")
    fp = fingerprint(stage="extract_image", model=cfg.model, pretrained=cfg.pretrained, max_pixels=cfg.max_pixels,
                     batch_size=cfg.batch_size, jpeg_draft=cfg.jpeg_draft, model_files=folder_stamp(cfg.pretrained),
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


def extract_covers(cfg: ExtractImageConfig, source: str, raw_dir: str, out: str, device: torch.device, dist: Dist
                   ) -> tuple[pl.DataFrame | None, ShardStore, dict[str, int], BatchSize]:
    """extract_image's work (an `Extraction`, run.py): the cover of every item of data.source (missing covers
    keep their row), embedded by cfg.model's image tower through the shard store beside `out`."""
    ids = item_ids(item_titles(source, raw_dir))
    paths = item_cover_paths(source, raw_dir, ids)
    store = image_shard_store(out, ids, paths, cfg, device)
    model, preprocess = load_image_encoder(cfg.model, cfg.pretrained, device)
    workers = default_num_workers(cfg.num_workers, device, dist.local_world)
    log.info("encoding %d covers with %s (%s) on %s in %d shards, %d loader workers (rank %d of %d)", len(ids),
             cfg.model, cfg.pretrained, device, len(store), workers, dist.rank, dist.world)
    batch = BatchSize(cfg.batch_size)
    frame, shards = extract_image_sharded(store, ids, paths, model, preprocess, cfg, device, batch, workers, dist)
    return frame, store, shards, batch
