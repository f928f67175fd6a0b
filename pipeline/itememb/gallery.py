"""A PNG gallery of an item's nearest neighbours' covers, for a person to look at
(`mmctr neighbours --gallery`). Covers that are missing, unreadable or larger than GALLERY_MAX_PIXELS are grey
tiles, never decoded."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.io import DataError, atomic_path

GALLERY_COLUMNS = 6  # tiles per row
GALLERY_COVER = 160  # px, square cover area of a tile
GALLERY_CAPTION = 40  # px of caption under each cover
PLACEHOLDER_GREY = (128, 128, 128)
GALLERY_MAX_NEIGHBOURS = 120  # tiles after the query's: 21 rows, 960 x 4200 px (-k 91717 would ask 8 GiB)
GALLERY_MAX_PIXELS = 40_000_000  # a cover larger than this is drawn grey, never decoded (decompression bombs)


def gallery_size(n_tiles: int) -> tuple[int, int]:
    """(width, height) in px of a gallery of `n_tiles` tiles (the query plus its neighbours)."""
    cols = min(n_tiles, GALLERY_COLUMNS)
    rows = -(-n_tiles // GALLERY_COLUMNS)
    return cols * GALLERY_COVER, rows * (GALLERY_COVER + GALLERY_CAPTION)


def _cover_tile(path: str | Path | None, max_pixels: int = GALLERY_MAX_PIXELS):
    """The cover at `path` centre-cropped to a GALLERY_COVER square; a missing or unreadable one, or one of more
    than `max_pixels` (a decompression bomb: its header is read, its pixels never are), is grey."""
    from PIL import Image, ImageOps

    from pipeline.sources.covers import to_rgb, upright

    if path is not None and Path(path).is_file():
        try:
            with Image.open(path) as img:
                if img.width * img.height <= max_pixels:
                    img.draft("RGB", (GALLERY_COVER, GALLERY_COVER))  # JPEG: decode at a reduced scale
                    # as extraction sees it: turned by its EXIF tag, alpha on white, 16-bit grey scaled
                    return ImageOps.fit(to_rgb(upright(img)), (GALLERY_COVER, GALLERY_COVER))
        except Exception:  # any decoder failure is grey (PIL raises SyntaxError for a broken PNG)
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
