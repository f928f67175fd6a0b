"""Nearest items by cosine similarity over the PCA item table: faiss (GPU when faiss sees one) and an exact
numpy reference that tests compare it with."""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """(N, D) -> float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: (Q, k) cosine scores and (Q, k) row indices, best first, ties by lower index."""
    sims = unit_rows(queries) @ unit_rows(vectors).T  # (Q, N)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


def faiss_index(vectors: np.ndarray, use_gpu: bool | None = None):
    """An exact inner-product faiss index over unit rows; on the GPU when `use_gpu` (default: if faiss sees one)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(unit_rows(vectors))
    if use_gpu is None:
        use_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def faiss_topk(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) cosine scores and row indices from a `faiss_index`."""
    return index.search(unit_rows(queries), k)


def item_neighbours(table: np.ndarray, item_id: int, k: int, index=None) -> list[tuple[int, float]]:
    """The k items most similar to `item_id` in an item table (row i = item i, row 0 = padding), excluding the
    item itself and the padding row: [(item_id, cosine)], best first."""
    if not 1 <= item_id < table.shape[0]:
        raise ValueError(f"item {item_id} is not in the item table (ids 1..{table.shape[0] - 1})")
    index = index if index is not None else faiss_index(table[1:])
    scores, rows = faiss_topk(index, table[item_id:item_id + 1], min(k + 1, table.shape[0] - 1))
    found = [(int(r) + 1, float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0 and int(r) + 1 != item_id]
    return found[:k]
