"""Contrastive Predictive Coding v2 (van den Oord et al. 2018; Henaff et al. 2019, "Data-Efficient
Image Recognition with Contrastive Predictive Coding")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders import NORMS, PatchGridEncoder
from .base import Method, MethodOutput, replace_batchnorm
from .context import CONTEXTS, create_context
from .losses import info_nce_logits

DIRECTIONS = ("down", "both", "all")   # top-down; + bottom-up; + left-to-right and right-to-left
ORIENTATIONS = {"down": 1, "both": 2, "all": 4}


def orient(z: torch.Tensor, direction: int) -> torch.Tensor:
    """The grid ``(B, D, gh, gw)`` turned so that ``direction`` reads top to bottom: 0 as it is, 1 upside
    down (bottom-up), 2 transposed (left to right), 3 transposed and flipped (right to left)."""
    if direction >= 2:
        z = z.transpose(2, 3)
    return z.flip(2) if direction % 2 else z


def first_unseen_step(patch_size: int, stride: int) -> int:
    """The smallest row offset ``k`` whose patches share no pixel with the patches of the context's rows:
    row ``i`` covers pixels ``[i s, i s + P)``, so row ``i + k`` is disjoint from rows ``<= i`` when ``k s >= P``."""
    return math.ceil(patch_size / stride)


class CPC(Method):
    """Predict patch vectors from a causal summary of the patches before them, in one or more directions.

    batch: ``(images (B, 3, H, W), labels)``. Steps:

    1. Cut each image into overlapping ``patch_size`` patches at ``stride`` (32 px: 8 px at 4 ->
       a 7x7 grid; 256 px: 64 px at 32 -> 7x7). In training each patch is augmented on its own
       (CPC v2): a random crop of ``patch_size - patch_jitter`` px inside its cell resized back,
       a horizontal flip with probability ``patch_flip``, colour dropping with probability
       ``patch_aug`` (keep one channel; for RGB data). Every patch goes through the encoder alone:
       ``z`` ``(B, D, gh, gw)``.
    2. For each direction (``directions``: ``down``; ``both`` adds bottom-up, as CPC v2; ``all`` adds
       the two horizontal ones) its own causal context network (``pixelcnn``, ``gru`` or
       ``attention``, see ``context.py``) runs over the grid turned to read top to bottom: ``c[i, j]``
       sees rows ``<= i`` only.
    3. For each offset ``k`` in ``first_step .. first_step + prediction_steps - 1`` a separate
       linear map ``W_k`` per direction predicts ``z[i + k, j]`` from ``c[i, j]``. ``first_step``
       defaults to the first row sharing no pixel with rows ``<= i`` (:func:`first_unseen_step`:
       2 for 8 px patches at stride 4), so a prediction cannot copy pixels the context holds.
    4. InfoNCE with dot-product scores. For offset ``k`` the candidates of a prediction are the
       ``z`` of every position with ``i' >= k`` in every image of the batch: its true target, the
       other positions of its own image, and all positions of the other images. The loss is the mean
       over every valid ``(direction, image, k, i, j)`` prediction, each weighing the same.

    ``method.encoder`` is a :class:`~ssl_rep.encoders.PatchGridEncoder` around the encoder given:
    its features are the mean of the patch vectors over the grid, which CPC v2's linear evaluation
    reads (the grid, spatially mean-pooled). It reads that grid at ``read_stride`` (default: half the
    training stride, so the mean covers every patch position twice as densely) with each patch seen as
    its central ``read_crop`` px resized back (default ``patch_size - patch_jitter``: the scale of the
    jittered crops training saw); 0 for either reads the training grid or the whole patch. Batch
    statistics would leak information between the patches of one image, so the encoder's BatchNorm
    layers are replaced with ``patch_norm`` (``layer`` by default, as CPC v2; also ``group`` or
    ``none``); ``patch_norm="batch"`` keeps them.
    logs: ``loss``, ``acc`` (fraction of predictions ranking their target first among the loss's candidates).
    """

    name = "cpc"
    option_choices = {"context": CONTEXTS, "directions": DIRECTIONS, "patch_norm": NORMS}
    unused_parameters = True   # a grid too short for an offset leaves that offset's predictor unused

    def __init__(self, encoder, patch_size: int = 8, stride: int = 4, context: str = "pixelcnn",
                 context_dim: int = 256, prediction_steps: int = 5, first_step: int | None = None,
                 directions: str = "both", patch_norm: str = "layer", patch_jitter: int | None = None,
                 patch_flip: float = 0.5, patch_aug: float = 0.0, temperature: float = 1.0,
                 global_negatives: bool = True, read_stride: int | None = None, read_crop: int | None = None):
        if directions not in DIRECTIONS:
            raise ValueError(f"CPC directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
        if patch_norm != "batch":
            replace_batchnorm(encoder, patch_norm)
        patch_jitter = patch_size // 4 if patch_jitter is None else patch_jitter
        if not 0 <= patch_jitter < patch_size:
            raise ValueError(f"CPC patch_jitter must be in [0, patch_size={patch_size}), got {patch_jitter}")
        # how the saved encoder reads an image: a grid at half the training stride, each patch at the scale of
        # the jittered crops it was trained on (0 for either: the training grid, the whole patch)
        # (None on the encoder, as for a checkpoint saved before these settings: the training grid, whole patches)
        read_stride = max(1, stride // 2) if read_stride is None else read_stride or None
        read_crop = (patch_size - patch_jitter if patch_jitter else None) if read_crop is None else read_crop or None
        super().__init__(PatchGridEncoder(encoder, patch_size, stride, read_stride, read_crop))
        self.first_step = first_step or first_unseen_step(patch_size, stride)
        self.prediction_steps, self.patch_jitter = prediction_steps, patch_jitter
        self.patch_flip, self.patch_aug, self.temperature = patch_flip, patch_aug, temperature
        self.global_negatives = global_negatives   # under torch.distributed: targets of every process
        n = ORIENTATIONS[directions]
        self.contexts = nn.ModuleList(create_context(context, encoder.num_features, context_dim) for _ in range(n))
        self.predictors = nn.ModuleList(
            nn.ModuleList(nn.Linear(context_dim, encoder.num_features, bias=False) for _ in range(prediction_steps))
            for _ in range(n))

    @property
    def steps(self) -> range:
        return range(self.first_step, self.first_step + self.prediction_steps)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, gh, gw, C, P, P)``."""
        return self.encoder.patchify(x)

    def colour_drop(self, patches: torch.Tensor) -> torch.Tensor:
        b, gh, gw, c = patches.shape[:4]
        drop = torch.rand(b, gh, gw, 1, 1, 1, device=patches.device) < self.patch_aug
        keep = torch.nn.functional.one_hot(torch.randint(c, (b, gh, gw), device=patches.device), c)
        keep = keep.to(patches.dtype)[..., None, None]
        return torch.where(drop, patches * keep, patches)

    def jitter(self, patches: torch.Tensor) -> torch.Tensor:
        """Per patch: a random ``P - patch_jitter`` crop inside its own cell, resized back to ``P``, and a
        horizontal flip with probability ``patch_flip``. The grid keeps its shape; no pixel leaves its cell."""
        shape = patches.shape
        n, c, p = shape[0] * shape[1] * shape[2], shape[3], shape[-1]
        flat = patches.reshape(n, c, p, p)
        j = self.patch_jitter
        if j > 0:
            keep = torch.arange(p - j, device=flat.device)
            rows = torch.randint(0, j + 1, (n, 1), device=flat.device) + keep
            cols = torch.randint(0, j + 1, (n, 1), device=flat.device) + keep
            crops = flat[torch.arange(n, device=flat.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
            flat = F.interpolate(crops.permute(0, 3, 1, 2), size=(p, p), mode="bilinear", align_corners=False)
        if self.patch_flip > 0:
            flip = torch.rand(n, 1, 1, 1, device=flat.device) < self.patch_flip
            flat = torch.where(flip, flat.flip(-1), flat)
        return flat.reshape(shape)

    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, gh, gw, C, P, P)`` -> ``z`` ``(B, D, gh, gw)``."""
        return self.encoder.encode_patches(patches)

    def context_of(self, z: torch.Tensor, direction: int = 0) -> torch.Tensor:
        """``c`` of the grid turned to ``direction`` (see :func:`orient`), causal top to bottom there."""
        return self.contexts[direction](orient(z, direction))

    def predict(self, c: torch.Tensor, k: int, direction: int = 0) -> torch.Tensor:
        """Predictions of ``z[i + k]`` (turned grid) from ``c[i]``: ``(B, gh - k, gw, D)``."""
        return self.predictors[direction][k - self.first_step](c[:, :, : c.shape[2] - k].permute(0, 2, 3, 1))

    def forward(self, batch):
        x = self.images_of(batch)
        patches = self.patchify(x)
        if self.training:
            patches = self.jitter(patches)
            if self.patch_aug > 0:
                patches = self.colour_drop(patches)
        z = self.encode_patches(patches)
        total, count, correct = 0.0, 0, torch.zeros((), device=x.device)
        for direction in range(len(self.contexts)):
            zd = orient(z, direction)
            c = self.contexts[direction](zd)
            for k in (k for k in self.steps if k < zd.shape[2]):
                preds = self.predict(c, k, direction).reshape(-1, z.shape[1])
                targets = zd[:, :, k:].permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                # the accuracy log reads the loss's own scores (among the same candidates), not a second product
                logits, positive = info_nce_logits(preds, targets, self.temperature, self.global_negatives)
                total = total + F.cross_entropy(logits, positive, reduction="sum")
                count += len(preds)
                with torch.no_grad():
                    correct = correct + (logits.argmax(dim=1) == positive).float().sum()
        if not count:
            raise ValueError(f"CPC: a {z.shape[2]}x{z.shape[3]} patch grid has no row {self.first_step} steps "
                             f"ahead to predict; use smaller patches, a smaller stride or a smaller first_step")
        loss = total / count
        return MethodOutput(loss, {"loss": loss.detach(), "acc": correct / count}, z.detach().mean(dim=(2, 3)))
