"""Contrastive Predictive Coding v2 (van den Oord et al. 2018; Henaff et al. 2019, "Data-Efficient
Image Recognition with Contrastive Predictive Coding")."""
from __future__ import annotations

import torch
from torch import nn

from ..encoders import PatchGridEncoder
from .base import Method, replace_batchnorm
from .context import create_context
from .losses import info_nce


class CPC(Method):
    """Predict patch vectors below from a causal summary of the patches above.

    batch: ``(images (B, 3, H, W), labels)``. Steps:

    1. Cut each image into overlapping ``patch_size`` patches at ``stride`` (32 px: 8 px at 4 ->
       a 7x7 grid; 256 px: 64 px at 32 -> 7x7). Every patch goes through the encoder alone:
       ``z`` ``(B, D, gh, gw)``.
    2. A causal context network (``pixelcnn``, ``gru`` or ``attention``, see ``context.py``) gives
       ``c`` ``(B, C, gh, gw)``, ``c[i, j]`` seeing rows ``<= i`` only.
    3. For each offset ``k = 1..K`` a separate linear map ``W_k`` predicts ``z[i + k, j]`` from
       ``c[i, j]``, for every ``i < gh - k``.
    4. InfoNCE with dot-product scores. For offset ``k`` the candidates of a prediction are the
       ``z`` of every position ``(i', j')`` with ``i' >= k`` in every image of the batch
       (``B * (gh - k) * gw`` vectors): its true target, the other positions of its own image,
       and all positions of the other images. The loss is the mean over every valid
       ``(image, k, i, j)`` prediction, each weighing the same.

    ``method.encoder`` is a :class:`~ssl_rep.encoders.PatchGridEncoder` around the encoder given:
    its features are the mean of the patch vectors over the grid, as CPC v2 evaluates them.
    Batch statistics would leak information between the patches of one image, so the encoder's
    BatchNorm layers are replaced with ``patch_norm`` (``layer`` by default, as CPC v2; also
    ``group`` or ``none``) when the method is built; pass ``patch_norm="batch"`` to keep them.
    ``patch_aug``: probability, per patch in training, of colour dropping (keep one random channel
    and zero the others; CPC v2's per-patch augmentation).
    logs: ``loss``, ``acc`` (fraction of predictions ranking their target first).
    """

    name = "cpc"

    def __init__(self, encoder, patch_size: int = 8, stride: int = 4, context: str = "pixelcnn",
                 context_dim: int = 256, prediction_steps: int = 5, patch_norm: str = "layer",
                 patch_aug: float = 0.0, temperature: float = 1.0, global_negatives: bool = True):
        if patch_norm != "batch":
            replace_batchnorm(encoder, patch_norm)
        super().__init__(PatchGridEncoder(encoder, patch_size, stride))
        self.prediction_steps = prediction_steps
        self.patch_aug, self.temperature = patch_aug, temperature
        self.global_negatives = global_negatives   # under torch.distributed: targets of every process
        self.context = create_context(context, encoder.num_features, context_dim)
        self.predictors = nn.ModuleList(nn.Linear(self.context.out_dim, encoder.num_features, bias=False)
                                        for _ in range(prediction_steps))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, gh, gw, C, P, P)``."""
        return self.encoder.patchify(x)

    def colour_drop(self, patches: torch.Tensor) -> torch.Tensor:
        b, gh, gw, c = patches.shape[:4]
        drop = torch.rand(b, gh, gw, 1, 1, 1, device=patches.device) < self.patch_aug
        keep = torch.nn.functional.one_hot(torch.randint(c, (b, gh, gw), device=patches.device), c)
        keep = keep.to(patches.dtype)[..., None, None]
        return torch.where(drop, patches * keep, patches)

    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, gh, gw, C, P, P)`` -> ``z`` ``(B, D, gh, gw)``."""
        return self.encoder.encode_patches(patches)

    def predict(self, c: torch.Tensor, k: int) -> torch.Tensor:
        """Predictions of ``z[i + k]`` from ``c[i]``: ``(B, gh - k, gw, D)``."""
        return self.predictors[k - 1](c[:, :, : c.shape[2] - k].permute(0, 2, 3, 1))

    def forward(self, batch):
        x = self.images_of(batch)
        patches = self.patchify(x)
        if self.training and self.patch_aug > 0:
            patches = self.colour_drop(patches)
        z = self.encode_patches(patches)
        self.probe_features = z.detach().mean(dim=(2, 3))
        c = self.context(z)
        gh = z.shape[2]
        steps = range(1, min(self.prediction_steps, gh - 1) + 1)
        if not steps:
            raise ValueError(f"CPC: a {gh}-row patch grid leaves nothing to predict; use smaller patches or stride")
        total, count, correct = 0.0, 0, torch.zeros((), device=x.device)
        for k in steps:
            preds = self.predict(c, k).reshape(-1, z.shape[1])
            targets = z[:, :, k:].permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            total = total + info_nce(preds, targets, self.temperature, self.global_negatives) * len(preds)
            count += len(preds)
            with torch.no_grad():
                hits = (preds @ targets.T).argmax(dim=1) == torch.arange(len(preds), device=x.device)
                correct = correct + hits.float().sum()
        loss = total / count
        return loss, {"loss": loss.detach(), "acc": correct / count}
