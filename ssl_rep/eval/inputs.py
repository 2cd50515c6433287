"""What an evaluation reads, as objects: an encoder named by a spec (a checkpoint, ``random:``, ``untrained:``,
``pixels``), a dataset prepared as the encoder is evaluated on it, seeded subsets, thumbnails. The command
lines, the demo and the scripts under eval/ all build their inputs here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from ..data import build_dataset, build_transform, dataset_id, stats_for
from ..data.base import ArrayImageDataset, native_side
from ..data.decode import as_rgb
from ..data.folder import ImageFolderDataset, folder_image_size
from ..data.shards import IndexedShards, ShardDataset
from ..data.transforms import eval_sizes
from ..encoders import create_encoder, load_encoder


class PixelFeatures(torch.nn.Module):
    """``--checkpoint pixels``: the raw-pixel baseline, the evaluation images (normalised as an encoder reads them)
    flattened."""
    encoder_name, encoder_kwargs, num_features = "pixels", {}, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def resolve_encoder(spec: str, seed: int = 0, projection: bool = False) -> torch.nn.Module:
    """The encoder ``spec`` names: a checkpoint or encoder.pt (with its projection head when ``projection``),
    ``random:<encoder>?key=value`` (seeded random init), ``untrained:<checkpoint>`` (that architecture, fresh
    weights) or ``pixels`` (the images flattened)."""
    if spec == "pixels":
        if projection:
            raise ValueError("--features projection needs a trained SimCLR checkpoint; pixels have no head")
        return PixelFeatures()
    if spec.startswith("random:"):
        if projection:
            raise ValueError(f"--features projection needs a trained SimCLR checkpoint; {spec} has no head")
        torch.manual_seed(seed)
        name, _, rest = spec[len("random:"):].partition("?")
        pairs = [kv.partition("=") for kv in rest.split("&") if kv]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError(f"{spec}: write the encoder's arguments as random:<encoder>?key=value&key=value")
        # values read as YAML scalars, as the config's are: random:resnet20?width=32&shortcut=B
        kwargs = {k: yaml.safe_load(v) for k, _, v in pairs}
        return create_encoder(name, **kwargs).eval()
    if spec.startswith("untrained:"):   # the same architecture as a saved encoder, fresh weights
        if projection:
            raise ValueError(f"--features projection needs a trained SimCLR checkpoint; {spec} has no trained head")
        path = Path(spec[len("untrained:"):])
        trained = load_encoder(path)
        torch.manual_seed(seed)
        twin = create_encoder(trained.encoder_name, **trained.encoder_kwargs).eval()
        twin.preprocess = getattr(trained, "preprocess", None)   # read as the trained encoder is
        return twin
    return load_encoder(spec, projection=projection)


def trained_size(encoder, data: str) -> int | None:
    """The image size ``encoder`` was trained at, where ``data`` is the dataset it was trained on and its file
    records it (``encoder.preprocess``); None otherwise (another dataset is read at its own default size)."""
    preprocess = getattr(encoder, "preprocess", None) or {}
    trained_on = preprocess.get("dataset")
    if trained_on is None or preprocess.get("image_size") is None:
        return None
    return int(preprocess["image_size"]) if dataset_id(trained_on) == dataset_id(data) else None


def fixed_input_size(encoder) -> int | None:
    """The one image side ``encoder`` can read, where it has one (a fully connected encoder, inside whatever
    wraps it: a code layer, a projection head); None for convolutional ones, which read any size."""
    while encoder is not None:
        if getattr(encoder, "encoder_name", "") == "mlp":
            return int(encoder.image_size)
        encoder = getattr(encoder, "encoder", None)
    return None


def input_transform(encoder):
    """What ``encoder`` reads, for images of your own: a PIL image (any mode) or a uint8 tensor ``(3, H, W)`` ->
    the float tensor it takes, read as ``ssl-probe`` reads image files: decoded to RGB, resized and centre-cropped
    to the size it trained at, normalised with its training set's mean and std. Those come from
    ``encoder.preprocess``, which ``load_encoder`` sets from the run's file; ``create_encoder``'s fresh encoders
    have none (build one with ``build_transform("eval", stats=..., size=...)``)."""
    from torchvision.transforms import v2 as T

    preprocess = getattr(encoder, "preprocess", None) or {}
    if "mean" not in preprocess or "std" not in preprocess:
        raise ValueError("the encoder records no preprocessing (encoder.preprocess): load it with "
                         "ssl_rep.load_encoder from a run's encoder.pt or checkpoint, or build the transform with "
                         "ssl_rep.data.build_transform('eval', stats=..., size=...)")
    resize, crop = eval_sizes(preprocess.get("image_size") or fixed_input_size(encoder), None)
    return T.Compose([as_rgb, build_transform("eval", stats=None, size=crop, resize=resize),
                      T.Normalize(preprocess["mean"], preprocess["std"])])


def run_folder(checkpoint) -> Path:
    """The run folder a checkpoint belongs to: OUT for OUT/encoder.pt and OUT/checkpoints/*.pt."""
    path = Path(checkpoint).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def eval_dataset(data: str, split: str = "test", root=None, image_size: int | None = None, ten_crop: bool = False):
    """``split`` of dataset ``data`` with the evaluation transform at ``image_size`` px (default: small in-memory
    sets (digits, Fashion-MNIST, CIFAR, STL-10) at their own size, folders at the size ssl-pretrain trained them
    at, others 224; :func:`~ssl_rep.data.transforms.eval_sizes` says how each is resized); ``ten_crop`` for the
    ten-crop test protocol."""
    probe_ds = build_dataset(data, split=split, root=root)
    if isinstance(probe_ds, ShardDataset):   # by sample number: a fixed order, subsets, report thumbnails
        probe_ds = IndexedShards(probe_ds.folder)
    if isinstance(probe_ds, ImageFolderDataset) and image_size is None:   # the size ssl-pretrain trained it at
        image_size = folder_image_size(probe_ds)[0]
    native = native_side(probe_ds)
    resize, size = eval_sizes(image_size, native)
    name = "ten_crop" if ten_crop and native is None else "eval"
    probe_ds.transform = build_transform(name, stats=stats_for(data), size=size, resize=resize)
    return probe_ds


def fixed_subset(dataset, n: int | None, seed: int = 0):
    """A seeded random subset of ``n`` items (the whole dataset when ``n`` is None or larger)."""
    if n is None or n >= len(dataset):
        return dataset
    pick = np.sort(np.random.default_rng(seed).choice(len(dataset), n, replace=False))
    subset = torch.utils.data.Subset(dataset, pick.tolist())
    subset.name, subset.transform = f"{getattr(dataset, 'name', '')}[{n} of {len(dataset)}, seed {seed}]", dataset.transform
    subset.labels, subset.classes = np.asarray(dataset.labels)[pick], getattr(dataset, "classes", None)
    return subset


def image_getter(dataset):
    """``i -> uint8 (H, W, 3)`` thumbnails for reports, without the evaluation transform."""
    if isinstance(dataset, ArrayImageDataset):
        return lambda i: np.asarray(dataset.images[i])

    def load(i):
        img = dataset.image(i)   # ImageFolderDataset and IndexedShards
        img.thumbnail((96, 96))
        return np.asarray(img)
    return load
