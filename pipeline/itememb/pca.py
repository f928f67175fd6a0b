"""PCA over the concatenation of normalised text and image embeddings.

`fit_pca` stores the fitted transform as plain arrays in an .npz (mean, components, explained variance,
normalisation statistics): it loads without unpickling and reproduces `transform` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.decomposition import PCA

from pipeline.core.config import ParamsError
from pipeline.core.io import DataError, atomic_path
from pipeline.core.items import nonzero_rows, unit_rows


@dataclass(frozen=True)
class Normalizer:
    """Per-modality normalisation: `l2` rows to unit norm (zero rows stay zero), `standard` z-scores
    columns with the fitted mean/std, `none` passes through."""

    mode: str
    mean: np.ndarray  # (F,) float64; zeros unless mode == "standard"
    std: np.ndarray  # (F,) float64; ones unless mode == "standard"

    @classmethod
    def fit(cls, x: np.ndarray, mode: str) -> Normalizer:
        f = x.shape[1]
        if mode == "standard":
            std = x.std(axis=0)
            return cls(mode, x.mean(axis=0), np.where(std > 0, std, 1.0))
        return cls(mode, np.zeros(f), np.ones(f))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.mode == "l2":
            return unit_rows(x, np.float64)
        return (x.astype(np.float64) - self.mean) / self.std


@dataclass(frozen=True)
class FittedPCA:
    """Normalisers for [text, image] and the PCA fitted over their concatenation."""

    text: Normalizer
    image: Normalizer
    mean: np.ndarray  # (F_text + F_image,) float64
    components: np.ndarray  # (dim, F_text + F_image) float64
    explained_variance_ratio: np.ndarray  # (dim,) float64

    def transform(self, text: np.ndarray, image: np.ndarray) -> np.ndarray:
        """(N, F_text), (N, F_image) -> (N, dim) float32 PCA scores. An item whose text and image vectors are both
        zero (no usable title or cover) gets a zero row, as in the extracted tables: projected, every such item
        would get one shared vector (-mean @ components.T), each the others' perfect neighbour."""
        x = np.concatenate([self.text(text), self.image(image)], axis=1)  # (N, F)
        scores = ((x - self.mean) @ self.components.T).astype(np.float32)
        scores[~(nonzero_rows(text) | nonzero_rows(image))] = 0.0
        return scores

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, mode=np.array(self.text.mode), text_mean=self.text.mean, text_std=self.text.std,
                         image_mean=self.image.mean, image_std=self.image.std, mean=self.mean,
                         components=self.components, explained_variance_ratio=self.explained_variance_ratio)

    @classmethod
    def load(cls, path: str | Path) -> FittedPCA:
        try:
            with np.load(path, allow_pickle=False) as z:
                mode = str(z["mode"])
                return cls(Normalizer(mode, z["text_mean"], z["text_std"]),
                           Normalizer(mode, z["image_mean"], z["image_std"]),
                           z["mean"], z["components"], z["explained_variance_ratio"])
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{path}: not a fitted PCA file ({e})") from None


def aligned_matrices(text: pl.DataFrame, image: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join two embedding frames on item_id -> (ids (N,) sorted, text (N, Ft), image (N, Fi)).

    Both frames must cover the same item ids; a difference names the first offending id.
    """
    text_ids, image_ids = set(text["item_id"].to_list()), set(image["item_id"].to_list())
    if text_ids != image_ids:
        item = min(text_ids ^ image_ids)
        side = "image" if item in text_ids else "text"
        raise DataError(f"item_id {item} has no {side} embedding: text and image tables must cover the same items")
    joined = text.select("item_id", pl.col("emb").alias("t")).join(
        image.select("item_id", pl.col("emb").alias("i")), on="item_id").sort("item_id")
    return joined["item_id"].to_numpy(), joined["t"].to_numpy(), joined["i"].to_numpy()


def fit_pca(text: np.ndarray, image: np.ndarray, *, dim: int, normalize: str, seed: int) -> FittedPCA:
    """Fit normalisers and a `dim`-component PCA over concat(text, image) rows."""
    n, f = text.shape[0], text.shape[1] + image.shape[1]
    if dim > min(n, f):
        raise ParamsError(f"fit_pca.dim: {dim} exceeds min(items, input features) = min({n}, {f})")
    tn, im = Normalizer.fit(text, normalize), Normalizer.fit(image, normalize)
    x = np.concatenate([tn(text), im(image)], axis=1)  # (N, F)
    pca = PCA(n_components=dim, svd_solver="full", random_state=seed).fit(x)
    return FittedPCA(tn, im, pca.mean_, pca.components_, pca.explained_variance_ratio_)
