"""Nearest items by cosine similarity: faiss (GPU when faiss sees one) and an exact numpy reference that tests
compare it with; approximate faiss indexes (IVF, HNSW) with their recall against exact search; and a PNG gallery of
an item's neighbours' covers for a person to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io import DataError, atomic_path


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


# ---------------------------------------------------------------------------------------------- gallery


GALLERY_COLUMNS = 6  # tiles per row
GALLERY_COVER = 160  # px, square cover area of a tile
GALLERY_CAPTION = 40  # px of caption under each cover
PLACEHOLDER_GREY = (128, 128, 128)
GALLERY_MAX_PIXELS = 40_000_000  # a cover larger than this is drawn grey, never decoded (decompression bombs)


def gallery_size(n_tiles: int) -> tuple[int, int]:
    """(width, height) in px of a gallery of `n_tiles` tiles (the query plus its neighbours)."""
    cols = min(n_tiles, GALLERY_COLUMNS)
    rows = -(-n_tiles // GALLERY_COLUMNS)
    return cols * GALLERY_COVER, rows * (GALLERY_COVER + GALLERY_CAPTION)


def _cover_tile(path: str | Path | None, max_pixels: int = GALLERY_MAX_PIXELS):
    """The cover at `path` centre-cropped to a GALLERY_COVER square; a missing or unreadable one, or one of more
    than `max_pixels` (a decompression bomb: its header is read, its pixels never are), is grey."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if path is not None and Path(path).is_file():
        try:
            with Image.open(path) as img:
                if img.width * img.height <= max_pixels:
                    img.draft("RGB", (GALLERY_COVER, GALLERY_COVER))  # JPEG: decode at a reduced scale
                    return ImageOps.fit(img.convert("RGB"), (GALLERY_COVER, GALLERY_COVER))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            pass
    return Image.new("RGB", (GALLERY_COVER, GALLERY_COVER), PLACEHOLDER_GREY)


def check_gallery_path(path: str | Path) -> None:
    """A DataError unless `path` can be a new PNG: it must end in .png (the bytes are PNG whatever the name) and
    its nearest existing parent must be a folder (`README.md/g.png` cannot be made)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DataError(f"{path}: the gallery is a PNG image; give a path ending in .png")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DataError(f"{path}: {parent} is a file, not a folder")


def draw_gallery(tiles: list[tuple[int, str, float | None, str | Path | None]], out: str | Path,
                 title_chars: int = 24) -> None:
    """Write a PNG grid of covers, one tile per (item_id, title, score or None for the query, cover path or None),
    row-major, GALLERY_COLUMNS per row, each captioned with its id, score and truncated title. Atomic write."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = gallery_size(len(tiles))
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for pos, (item_id, title, score, path) in enumerate(tiles):
        x = (pos % GALLERY_COLUMNS) * GALLERY_COVER
        y = (pos // GALLERY_COLUMNS) * (GALLERY_COVER + GALLERY_CAPTION)
        canvas.paste(_cover_tile(path), (x, y))
        head = f"query {item_id}" if score is None else f"#{pos} {item_id}  {score:.3f}"
        short = title if len(title) <= title_chars else title[:title_chars - 1] + "…"
        draw.text((x + 3, y + GALLERY_COVER + 2), head, fill=(0, 0, 0), font=font)
        draw.text((x + 3, y + GALLERY_COVER + 20), short, fill=(60, 60, 60), font=font)
        if score is None:  # frame the query tile
            draw.rectangle([x, y, x + GALLERY_COVER - 1, y + GALLERY_COVER - 1], outline=(220, 30, 30), width=3)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
