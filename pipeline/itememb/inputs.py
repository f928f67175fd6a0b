"""The two modalities fit_pca concatenates, by `data.item_embeddings`: our extracted text and
image embedding frames, the organisers' BERT and CLIP-RN50 vectors (`challenge_bert_clip`), or the challenge's
ready-made 128-d item embedding (`challenge_d128`, no PCA fit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.io import check_finite, read_parquet
from pipeline.itememb.pca import aligned_matrices
from pipeline.sources.challenge import find_challenge_files, read_item_feature, read_item_info


def pca_inputs(item_embeddings: str, raw_dir: str | Path, text: str | Path, image: str | Path
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two modalities fit_pca concatenates, as (ids (N,), text (N, Ft), image (N, Fi)) aligned by item id:
    our extracted embedding frames (`extracted`) or the organisers' BERT and CLIP-RN50 vectors
    (`challenge_bert_clip`)."""
    if item_embeddings == "challenge_bert_clip":
        feature = read_item_feature(find_challenge_files(raw_dir).item_feature)
        return feature.item_ids, feature.text_emb, feature.image_emb
    ids, text_emb, image_emb = aligned_matrices(read_parquet(text, {"item_id": pl.Int32}),
                                                read_parquet(image, {"item_id": pl.Int32}))
    for path, emb in ((text, text_emb), (image, image_emb)):  # a NaN would reach scikit-learn's PCA as a traceback
        check_finite(path, "emb", emb, ids)  # rows aligned by id, not the file's: name the item
    return ids, text_emb, image_emb


def challenge_item_embeddings(raw_dir: str | Path) -> np.ndarray:
    """The organisers' item_emb_d128 table, (N+1, 128) float32, row i = item i."""
    return read_item_info(find_challenge_files(raw_dir).item_info).emb_d128
