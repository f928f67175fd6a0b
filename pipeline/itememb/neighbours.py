"""Nearest items by cosine similarity: faiss (GPU when faiss sees one) and an exact numpy
reference that tests compare it with, and approximate faiss indexes (IVF, HNSW) with their recall against exact
search."""

from __future__ import annotations

import numpy as np

from pipeline.core.items import nonzero_rows, unit_rows


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
    """(Q, k) cosine scores and row indices from a `faiss_index`, best first, tied rows by lower row (as
    exact_topk: faiss returns them in no set order; which of the rows tied with the k-th it keeps is its own)."""
    scores, rows = index.search(unit_rows(queries), k)
    order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def usable_items(table: np.ndarray) -> np.ndarray:
    """Ascending ids of the items whose row of an (N+1, D) item table is not all zeros: an item whose title or
    cover was unusable has a zero vector (its extraction status), which has no direction to compare."""
    return np.flatnonzero(nonzero_rows(table[1:])) + 1


def check_query(table: np.ndarray, item_id: int) -> None:
    """A ValueError unless `item_id` is an item of the (N+1, D) item table with a non-zero row: a zero row (title
    and cover unusable) has no direction to compare, by cosine or by the code it was quantized to."""
    if not 1 <= item_id < table.shape[0]:
        raise ValueError(f"item {item_id} is not in the item table (ids 1..{table.shape[0] - 1})")
    if not table[item_id].any():
        raise ValueError(f"item {item_id} has a zero vector in the item table (its title and cover were unusable): "
                         "it has no nearest items")


def item_neighbours(table: np.ndarray, item_id: int, k: int) -> list[tuple[int, float]]:
    """The k items most similar to `item_id` in an item table (row i = item i, row 0 = padding), among the items
    with a non-zero row (`usable_items`), the item itself excluded: [(item_id, cosine)], best first, ties by lower
    id. The query is checked by `check_query`."""
    check_query(table, item_id)
    ids = usable_items(table)
    scores, rows = faiss_topk(faiss_index(table[ids]), table[item_id:item_id + 1], min(k + 1, len(ids)))
    found = [(int(ids[r]), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0 and ids[r] != item_id]
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


RECALL_TOLERANCE = 1e-6  # cosines this close to the exact k-th count as reaching it (float32 dot products)


def recall_at_k(approx_cos: np.ndarray, exact_cos: np.ndarray) -> float:
    """Mean over rows of the share of the exact top k that the approximate search found, from (Q, k) cosines of
    each query's distinct results (-inf = no result, as faiss's -1): a found item counts when its cosine reaches
    the exact k-th one (less RECALL_TOLERANCE). Without ties that is |approx ∩ exact| / |exact|; with them, an item
    tied with the k-th is as right as the one exact search happened to keep (by ids, 40 identical vectors per
    group gave an HNSW recall of 0.70 where 0.87 of its results were as near as the exact ones)."""
    approx_cos, exact_cos = np.asarray(approx_cos, np.float64), np.asarray(exact_cos, np.float64)
    if approx_cos.shape != exact_cos.shape or exact_cos.ndim != 2:
        raise ValueError(f"recall_at_k: shapes {approx_cos.shape} and {exact_cos.shape} differ or are not 2-d")
    wanted = np.isfinite(exact_cos).sum(axis=1)  # (Q,)
    if not wanted.any():
        return 1.0
    kth = np.where(np.isfinite(exact_cos), exact_cos, np.inf).min(axis=1, keepdims=True)  # (Q, 1)
    hits = np.minimum((approx_cos >= kth - RECALL_TOLERANCE).sum(axis=1), wanted)
    return float(np.mean(hits[wanted > 0] / wanted[wanted > 0]))


def result_cosines(table: np.ndarray, query_ids: np.ndarray, found_ids: np.ndarray) -> np.ndarray:
    """(Q, k) cosines between table[query_ids[q]] and table[found_ids[q, j]] (-inf where found_ids is -1)."""
    found_ids = np.asarray(found_ids)
    unit = unit_rows(table)
    cos = np.einsum("qd,qkd->qk", unit[query_ids], unit[np.clip(found_ids, 0, None)])
    return np.where(found_ids >= 0, cos, -np.inf)
