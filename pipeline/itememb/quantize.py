"""Semantic ids: residual quantisation of the item embedding into a short tuple of codes.

Level 1 fits k-means (faiss) with `codebook_size` centroids to the item embeddings and gives each item its nearest
centroid; level l fits k-means to the residuals the levels before it left (embedding minus the sum of the chosen
centroids) and so on, so an item's codes (c_1, ..., c_L) say coarse to fine where it lies, and the sum of its
centroids reconstructs its embedding. Items that share a code prefix are similar; an item with no clicks still has
codes (the start of what the winning paper names as its open problem: semantic, learnable item embeddings).

`assign_codes` is the plain residual chain over given codebooks (the reference `residual_kmeans`'s codes are
tested against); `quantize_report` gives the stage's metrics: reconstruction error and codebook usage per level,
collisions, and whether items that share a code prefix share tags.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.io import DataError
from pipeline.itememb.report import random_neighbours, sample_queries

TAG_SAMPLE_K = 10  # random other items per item in the chance baseline of tag agreement
ASSIGN_BUDGET = 1 << 21  # float64 elements of assign_codes' (rows, K, D) temporary per step: 16 MB


def residual_kmeans(x: np.ndarray, levels: int, codebook_size: int, iterations: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """x (N, D) float -> (codes (N, levels) int16 in [0, codebook_size), codebooks (levels, codebook_size, D)
    float32). Level l's k-means is faiss's, over all N residuals (no subsampling), seeded with seed + l; each item
    takes the centroid nearest its residual (L2). Deterministic for a seed and a thread count."""
    import faiss

    n, d = x.shape
    if codebook_size > n:
        raise DataError(f"quantize.codebook_size: {codebook_size} centroids need at least as many items, got {n}")
    residual = np.array(x, dtype=np.float32, order="C")  # a copy: x is left alone
    codes = np.empty((n, levels), dtype=np.int16)
    codebooks = np.empty((levels, codebook_size, d), dtype=np.float32)
    for level in range(levels):
        km = faiss.Kmeans(d, codebook_size, niter=iterations, seed=seed + level, max_points_per_centroid=n,
                          min_points_per_centroid=1, verbose=False)
        km.train(residual)
        _, nearest = km.index.search(residual, 1)  # (N, 1)
        codes[:, level] = nearest[:, 0]
        codebooks[level] = km.centroids
        residual -= km.centroids[nearest[:, 0]]
    return codes, codebooks


def assign_codes(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Reference residual chain: x (N, D), codebooks (L, K, D) -> codes (N, L) int16; at each level the code is
    the centroid nearest (squared L2, ties to the lower index) to what the earlier levels' centroids left."""
    residual = np.asarray(x, dtype=np.float64).copy()
    codes = np.empty((len(x), len(codebooks)), dtype=np.int16)
    # rows per step so that the (rows, K, D) difference stays within ASSIGN_BUDGET: of all N items at once it would
    # be GBs at 91K items, and a fixed row count grows with K * D (8 GiB a level at K = 32768)
    chunk = max(1, ASSIGN_BUDGET // max(1, codebooks.shape[1] * codebooks.shape[2]))
    for level, book in enumerate(codebooks.astype(np.float64)):
        for lo in range(0, len(x), chunk):
            dist = ((residual[lo:lo + chunk, None, :] - book[None, :, :]) ** 2).sum(-1)  # (rows, K)
            codes[lo:lo + chunk, level] = dist.argmin(axis=1)
        residual -= book[codes[:, level]]
    return codes


def perplexity(codes: np.ndarray) -> float:
    """exp(entropy) of the code distribution of one level (N,): the number of equally used codes it is worth."""
    counts = np.bincount(codes.astype(np.int64))
    p = counts[counts > 0] / len(codes)
    return float(np.exp(-(p * np.log(p)).sum()))


def prefix_groups(codes: np.ndarray, length: int) -> np.ndarray:
    """(N,) int64 group of each item: items with equal codes[:, :length] share a group."""
    return np.unique(codes[:, :length], axis=0, return_inverse=True)[1].reshape(-1)


def collision_share(codes: np.ndarray) -> float:
    """Share of items whose whole code tuple some other item has too."""
    groups = prefix_groups(codes, codes.shape[1])
    return float((np.bincount(groups)[groups] > 1).mean())


def dense_tag_ids(tags: np.ndarray) -> tuple[np.ndarray, int]:
    """tags (N+1, T) int tag ids, 0 = none -> (slots (T, N+1) intp: each tag renumbered 1..V in order of its id, 0
    still none, a row per tag slot; V + 1). Equal ids stay equal and a table indexed by the new ids has at most
    N T + 1 entries, however large the raw ids are (up to 2^31 - 1)."""
    distinct, dense = np.unique(tags, return_inverse=True)
    dense = dense.reshape(tags.shape) + 1
    dense[tags == 0] = 0
    return np.ascontiguousarray(dense.T), len(distinct) + 1


def shares_a_tag(candidates: np.ndarray, query: np.ndarray, n_ids: int) -> np.ndarray:
    """candidates (T, M) dense tag ids of M items (dense_tag_ids' slots), query (T,) the query item's, n_ids above
    every id -> (M,) bool: candidate m has a tag of the query (0 = none matches nothing). T gathers from a table of
    the query's tags: O(M T), where comparing every pair of tags would be O(M T^2)."""
    table = np.zeros(n_ids, dtype=bool)  # (V + 1,)
    table[query] = True
    table[0] = False
    hit = np.zeros(candidates.shape[1], dtype=bool)  # (M,)
    for slot in candidates:
        hit |= table[slot]
    return hit


def prefix_tag_agreement(groups: np.ndarray, dense: tuple[np.ndarray, int], queries: np.ndarray
                         ) -> tuple[float | None, int]:
    """groups (N,): the code-prefix group of items 1..N (row r = item r + 1); dense: dense_tag_ids(tags) of the
    (N+1, T) tag ids, 0 = none (a caller with several levels renumbers once); queries: item ids. -> (mean
    over the queries that have a tag and share their group with another item of the share of those other items
    that have one of their tags, or None when no query qualifies; how many qualify). O(group size x T) a query:
    when the codes collapse, each query's group is all N items."""
    slots, n_ids = dense  # (T, N+1)
    order = np.argsort(groups, kind="stable")
    starts = np.searchsorted(groups[order], np.arange(groups.max() + 1))
    ends = np.append(starts[1:], len(order))
    member_slots: dict[int, np.ndarray] = {}  # group -> (T, size) tags of its items, gathered once, not per query
    shares = []
    for q in queries:
        g = int(groups[q - 1])
        size = int(ends[g] - starts[g])
        if size > 1 and slots[:, q].any():
            if g not in member_slots:
                member_slots[g] = slots[:, order[starts[g]:ends[g]] + 1]
            hits = int(shares_a_tag(member_slots[g], slots[:, q], n_ids).sum()) - 1  # less q, which has its tags
            shares.append(hits / (size - 1))
    return (float(np.mean(shares)) if shares else None), len(shares)


def quantize_report(x: np.ndarray, codes: np.ndarray, codebooks: np.ndarray, tags: np.ndarray, sample_items: int,
                    seed: int) -> dict:
    """The metrics of a quantisation of items 1..N (x (N, D), codes (N, L), codebooks (L, K, D), tags (N+1, T)
    tag ids with 0 = none):

    by_level[l]: recon_error (mean squared norm of the residual left after levels 1..l over the mean squared norm
    of x: 1 = nothing explained), perplexity and used_codes of level l's codes, tag_agreement and items of
    prefix_tag_agreement over the items sharing codes 1..l; collisions (collision_share of the whole tuple),
    distinct_codes (distinct tuples), and chance_tag_agreement (TAG_SAMPLE_K random other items per query). The tag
    agreements are over `sample_items` query items (a seeded sample; all items when there are no more)."""
    n = len(x)
    queries = sample_queries(n, sample_items, seed)
    residual = np.asarray(x, dtype=np.float64).copy()
    energy = float((residual ** 2).sum(1).mean()) or 1.0
    by_level = []
    dense = dense_tag_ids(tags)  # (slots (T, N+1), n_ids): renumbered once for every level and the chance baseline
    for level, book in enumerate(codebooks):
        residual -= book[codes[:, level].astype(np.int64)]
        agreement, n_items = prefix_tag_agreement(prefix_groups(codes, level + 1), dense, queries)
        by_level.append({"level": level + 1, "recon_error": float((residual ** 2).sum(1).mean()) / energy,
                         "perplexity": perplexity(codes[:, level]),
                         "used_codes": int(len(np.unique(codes[:, level]))),
                         "tag_agreement": agreement, "items": n_items})
    chance = []
    if n > 1:
        randoms = random_neighbours(queries, n, min(TAG_SAMPLE_K, n - 1), seed)  # (Q, k)
        slots, n_ids = dense
        chance = [shares_a_tag(slots[:, row], slots[:, q], n_ids).mean() for q, row in zip(queries, randoms)
                  if slots[:, q].any()]
    return {"items": n, "levels": codes.shape[1], "codebook_size": codebooks.shape[1], "by_level": by_level,
            "collisions": collision_share(codes), "distinct_codes": int(len(np.unique(codes, axis=0))),
            "chance_tag_agreement": float(np.mean(chance)) if chance else None}


def code_neighbours(codes: np.ndarray, item_id: int, k: int, cosine: np.ndarray) -> list[tuple[int, int, float]]:
    """The k items that share the longest code prefix with `item_id`: codes (N+1, L) item table (row i = item i,
    row 0 padding), cosine (N+1,) each item's cosine to the query, which orders items with equal prefixes.
    -> [(item_id, shared prefix length >= 1, cosine)], longest prefix first, then higher cosine, then lower id;
    items that share no code with the query are not neighbours (fewer than k may come back)."""
    if not 1 <= item_id < codes.shape[0]:
        raise ValueError(f"item {item_id} is not in the semantic id table (ids 1..{codes.shape[0] - 1})")
    shared = np.cumprod(codes == codes[item_id], axis=1).sum(axis=1)  # (N+1,) common prefix length
    shared[[0, item_id]] = 0
    ids = np.flatnonzero(shared)
    order = np.lexsort((ids, -cosine[ids], -shared[ids]))[:k]
    return [(int(i), int(shared[i]), float(cosine[i])) for i in ids[order]]
