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


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha (RGBA, LA, PA, palette with transparency) is composited on white, so what
    hides under transparent pixels does not leak into the embedding. 16-bit greys (I;16, and I, as which PIL opens
    16-bit PNGs) are scaled to 8 bits: PIL's own conversion clips them at 255, so any grey above 1/256 of full
    scale would come out white. CMYK, L, P, 1 ... convert directly."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        grey = np.asarray(img, dtype=np.float64) / 257.0  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")
