"""Decode any image file into a 3-channel 8-bit RGB PIL image.

ImageNet alone holds CMYK and grayscale JPEGs; user folders add palette PNGs with transparency,
16-bit PNGs and EXIF-rotated phone photos. Everything goes through :func:`load_rgb` so every
downstream transform sees the same thing: ``PIL.Image`` in mode ``RGB``.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we refuse at the limit itself
# so a file that declares a huge size is never decoded (a decompression bomb).
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageDecodeError(OSError):
    """A file that cannot be turned into an RGB image; the message names the file."""


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as printable text: bytes that are not UTF-8 (a Latin-1 file name) appear as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit int) grayscale: scale the full range to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr8 = np.zeros(arr.shape, np.uint8) if hi <= lo else np.rint((arr - lo) / (hi - lo) * 255)
        return Image.fromarray(arr8.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels are composited on white, the way a viewer shows them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def as_rgb(img):
    """A PIL image as RGB, decoded as the folder reader decodes files (16-bit scaled, alpha on white); anything
    else (a tensor) as it is."""
    return _to_rgb(img) if isinstance(img, Image.Image) else img


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` and return a fully decoded RGB image (EXIF orientation applied).

    Raises :class:`ImageDecodeError` naming the file when it is empty, truncated, not an image,
    unreadable, or declares more than ``MAX_IMAGE_PIXELS`` pixels.
    """
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ImageDecodeError(f"{shown_path(path)}: cannot read ({exc})") from exc
    return _decode(path, shown_path(path), size)


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """:func:`load_rgb` for an image held in memory (a tar shard's member); ``name`` is for messages."""
    return _decode(io.BytesIO(data), name, len(data))


def _decode(source, name: str, size: int) -> Image.Image:
    try:
        if size == 0:
            raise ImageDecodeError(f"{name}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageDecodeError(
                        f"{name}: declares {width}x{height} pixels, more than the "
                        f"limit of {MAX_IMAGE_PIXELS}; refused without decoding")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        reason = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")  # PIL may quote an odd name
        raise ImageDecodeError(f"{name}: cannot decode image ({reason})") from exc
