"""Nearest items by cosine similarity: faiss (GPU when faiss sees one) and an exact numpy
reference that tests compare it with, and approximate faiss indexes (IVF, HNSW) with their recall against exact
search."""

from __future__ import annotations

import numpy as np

from pipeline.core.items import unit_rows


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: (Q, k) cosine scores and (Q, k) row indices, best first, ties by lower index."""
    sims = unit_rows(queries) @ unit_rows(vectors).T  # (Q, N)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


def faiss_index(vectors: np.ndarray, use_gpu: bool | None = None):
    """`approx_index(vectors, "flat")` (exact inner product over unit rows), moved to the GPU when `use_gpu`
    (default: if faiss sees one)."""
    import faiss

    index = approx_index(vectors, "flat")
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


# ---------------------------------------------------------------------------------------------- approximate indexes


INDEX_KINDS = ("flat", "ivf", "hnsw")
IVF_POINTS_PER_CELL = 39  # faiss's minimum training points per k-means centroid


def approx_index(vectors: np.ndarray, kind: str, *, nlist: int = 64, nprobe: int = 8, hnsw_m: int = 32,
                 ef_search: int = 128, seed: int = 0):
    """A CPU faiss inner-product index over the unit rows of `vectors` (N, D), so scores are cosines.

    `flat` is exact (IndexFlatIP); `ivf` is IndexIVFFlat with `nlist` k-means cells (at most N / 39; k-means seeded
    with `seed`) searched `nprobe` at a time; `hnsw` is IndexHNSWFlat with `hnsw_m` links per node searched with
    `ef_search`. HNSW is built on one thread: its graph, and so its results, then do not depend on the core count.
    """
    import faiss

    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
    x = unit_rows(vectors)
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
    elif kind == "ivf":
        # faiss's k-means wants at least 39 points per centroid (it warns below that): the cells follow the items
        cells = max(1, min(nlist, x.shape[0] // IVF_POINTS_PER_CELL))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.add(x)
        index.nprobe = min(nprobe, cells)
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            index.add(x)
        finally:
            faiss.omp_set_num_threads(threads)
        index.hnsw.efSearch = ef_search
    return index


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over rows of |approx row ∩ exact row| / |exact row|: (Q, k) ids each (faiss's -1 = no result never
    counts as found)."""
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx_ids.shape != exact_ids.shape or exact_ids.ndim != 2:
        raise ValueError(f"recall_at_k: shapes {approx_ids.shape} and {exact_ids.shape} differ or are not 2-d")
    if exact_ids.size == 0:
        return 1.0
    hits = [len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) / max(1, int((e >= 0).sum()))
            for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits))
