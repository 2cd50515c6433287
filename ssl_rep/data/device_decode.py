"""JPEG decoding on the training device (nvjpeg through ``torchvision.io.decode_jpeg``) for image folders.

With ``data.decode_on=device`` DataLoader workers only read each file and parse its header; the
training process decodes a whole batch of JPEGs in one call on the GPU. Files that GPU decoding
would not treat the way :func:`~ssl_rep.data.load_rgb` does -- anything but a plain RGB (YCbCr)
JPEG: PNGs, CMYK and grayscale JPEGs, EXIF-rotated photos, files over the pixel limit -- are
decoded by ``load_rgb`` in the worker and travel as pixels, so every image still comes out RGB and
upright, and bad files are skipped and counted as in the worker path.

torchvision marks its image decoders deprecated (from 0.29) in favour of TorchCodec; they are
still the decoders that ship with the pinned torchvision, and their deprecation warning is muted here.
"""
from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import EpochCoded
from .decode import MAX_IMAGE_PIXELS, ImageDecodeError, decode_rgb, shown_path

log = logging.getLogger("ssl_rep.data")
JPEG, PIXELS = "jpeg", "pixels"
EXIF_ORIENTATION = 0x0112


def encode_for_device(data: bytes, name: str) -> tuple[str, torch.Tensor]:
    """``("jpeg", uint8 bytes (L,))`` when the device may decode ``data``, else ``("pixels", uint8
    (3, H, W))`` decoded here by the folder reader's rules. Raises :class:`ImageDecodeError` naming
    ``name`` for a file that is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            plain = (img.format == "JPEG" and img.mode == "RGB" and img.width * img.height <= MAX_IMAGE_PIXELS
                     and img.getexif().get(EXIF_ORIENTATION, 1) == 1)
    except Exception:  # noqa: BLE001 - decode_rgb below raises with the reason
        plain = False
    if plain:
        return JPEG, torch.frombuffer(bytearray(data), dtype=torch.uint8)
    rgb = np.asarray(decode_rgb(data, name))
    return PIXELS, torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def read_for_device(path: str) -> tuple[str, torch.Tensor]:
    """:func:`encode_for_device` for a file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{shown_path(path)}: cannot read ({exc})") from exc
    return encode_for_device(data, shown_path(path))


class EncodedImages(EpochCoded):
    """Items ``(kind, payload, label, sample_seed, path)`` of an :class:`ImageFolderDataset`'s files, addressed
    by epoch codes (:class:`~ssl_rep.data.base.EpochCoded`): the seed is the one the worker path augments with."""

    def __getitem__(self, code: int):
        index, seed = self.locate(code)
        # read() may serve the next file when this one fails; the path travels with what it read
        (kind, payload, path), label = self.inner.read(index, load=lambda p: (*read_for_device(p), p))
        return kind, payload, label, seed, path


def collate_encoded(items: list) -> tuple[list[str], list[torch.Tensor], torch.Tensor, list[int], list[str]]:
    kinds, payloads, labels, seeds, names = zip(*items)
    return list(kinds), list(payloads), torch.tensor(labels, dtype=torch.int64), list(seeds), list(names)


def _decode_jpegs(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)


def decode_batch(kinds: list[str], payloads: list[torch.Tensor], names: list[str],
                 device: torch.device) -> list[torch.Tensor | None]:
    """Every image as uint8 ``(3, H, W)`` RGB on ``device``: the JPEGs in one batched decode there.

    One corrupt JPEG fails the batched call; then each is decoded alone, and one the device cannot
    decode goes through PIL (:func:`decode_rgb`). An image nothing can decode is ``None`` (logged)."""
    device = torch.device(device)
    images: list[torch.Tensor | None] = [
        p.to(device, non_blocking=True) if k == PIXELS else None for k, p in zip(kinds, payloads)]
    jpegs = [i for i, k in enumerate(kinds) if k == JPEG]
    if not jpegs:
        return images
    try:
        decoded = _decode_jpegs([payloads[i] for i in jpegs], device)
    except RuntimeError:
        decoded = [_decode_one(payloads[i], names[i], device) for i in jpegs]
    for i, image in zip(jpegs, decoded):
        images[i] = image
    return images


def _decode_one(blob: torch.Tensor, name: str, device: torch.device) -> torch.Tensor | None:
    try:
        return _decode_jpegs([blob], device)[0]
    except RuntimeError:
        pass
    try:
        rgb = np.asarray(decode_rgb(blob.numpy().tobytes(), shown_path(name)))
    except ImageDecodeError as exc:
        log.warning("skipping undecodable image: %s", exc)
        return None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(device)
