"""How a cover file becomes RGB pixels, the same for extraction (pipeline/extract/image.py) and the neighbours
gallery (pipeline/itememb/gallery.py): turned upright by its EXIF orientation, alpha composited on white, 16-bit
greys scaled to 8 bits."""

from __future__ import annotations

import numpy as np
from PIL import ExifTags, Image, ImageOps


def upright(img: Image.Image) -> Image.Image:
    """`img` turned as its EXIF Orientation tag says (a phone's cover is stored sideways, with a tag that every
    viewer follows); `img` itself when it has no such tag, or an unreadable one."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a damaged EXIF block does not make the pixels unusable
        return img
    return ImageOps.exif_transpose(img) if orientation != 1 else img


# v -> round(v / 257) for every 16-bit v, in integers: v / 257 is never exactly half-way (257 is odd), so
# (v + 128) // 257 rounds as np.rint(v / 257) does.
_GREY16_TO_8 = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)  # (65536,) uint8
_BLOCK_PIXELS = 1 << 22  # rows converted at a time: a 16-bit cover under max_pixels needs no full-size wide copy


def _grey16_to_l(img: Image.Image) -> Image.Image:
    """A 16-bit grey image (I;16, I;16B, ..., or I, clipped to 0..65535) -> L with v -> round(v / 257), through a
    lookup table a block of rows at a time, so that no copy wider than the 8-bit result is made of the whole image."""
    width, height = img.size
    grey = np.empty((height, width), dtype=np.uint8)  # (H, W)
    step = max(1, _BLOCK_PIXELS // max(width, 1))
    for top in range(0, height, step):
        rows = np.asarray(img.crop((0, top, width, min(top + step, height))))  # (step, W) uint16 or int32
        grey[top:top + step] = _GREY16_TO_8[np.clip(rows, 0, 65535)]
    return Image.fromarray(grey)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha (RGBA, LA, PA, palette with transparency) is composited on white, so what
    hides under transparent pixels does not leak into the embedding. 16-bit greys (I;16, and I, as which PIL opens
    16-bit PNGs) are scaled to 8 bits: PIL's own conversion clips them at 255, so any grey above 1/256 of full
    scale would come out white. CMYK, L, P, 1 ... convert directly."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        img = _grey16_to_l(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")
