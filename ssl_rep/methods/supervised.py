"""Supervised baseline: the same encoders trained with labels, so SSL probes have a ceiling to read."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, MethodOutput


class Supervised(Method):
    """Cross-entropy on labels. batch: ``(images (B, 3, H, W), labels (B,))``, labels >= 0.

    The paper's ResNet-20 CIFAR-10 recipe (He et al. 2016, 4.2): SGD momentum 0.9, lr 0.1 divided
    by 10 at 32k and 48k iterations, 64k iterations, batch 128, weight decay 1e-4 as an L2 term;
    configs/supervised_resnet20_cifar10.yaml holds it (the 91.25% variant: batch 256, wd 1e-3).

    Weight decay two ways. ``l2_weight_decay=wd`` adds ``wd / 2 * sum(w ** 2)`` to the loss, so the
    gradient gains ``wd * w``: with momentum that term is accumulated in the velocity, and with an
    adaptive optimiser (Adam) it is divided by the running RMS like any gradient. Decoupled decay
    (AdamW/SGDW, Loshchilov & Hutter 2019; the optimiser's ``weight_decay``) instead shrinks
    ``w <- w - lr * wd * w`` outside the gradient. With plain SGD (no momentum) both give the same
    update, up to the lr factor in how ``wd`` is scaled; with momentum or Adam they differ.
    Norm and bias parameters are left out of the L2 term.
    logs: ``loss``, ``ce``, ``acc``.
    """

    name = "supervised"
    needs_labels = True

    def __init__(self, encoder, num_classes: int = 10, l2_weight_decay: float = 0.0, label_smoothing: float = 0.0):
        super().__init__(encoder)
        self.classifier = nn.Linear(encoder.num_features, num_classes)
        self.num_classes = num_classes
        self.l2_weight_decay = l2_weight_decay
        self.label_smoothing = label_smoothing

    def l2_penalty(self) -> torch.Tensor:
        weights = [p for p in self.parameters() if p.ndim > 1 and p.requires_grad]
        return 0.5 * self.l2_weight_decay * sum((w.float() ** 2).sum() for w in weights)

    def forward(self, batch):
        images, labels = batch
        # Checked here on CPU; on a GPU the trainer checks the dataset's labels once before training
        # (a per-batch check would make every step wait for the device).
        if labels.device.type == "cpu" and ((labels < 0).any() or (labels >= self.num_classes).any()):
            raise ValueError(f"supervised: labels must be in [0, {self.num_classes}); got "
                             f"min {labels.min().item()} max {labels.max().item()} (unlabeled data has -1)")
        feats = self.encoder(images)
        logits = self.classifier(feats)
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        loss = ce + self.l2_penalty() if self.l2_weight_decay else ce
        acc = (logits.argmax(dim=1) == labels).float().mean()
        return MethodOutput(loss, {"loss": loss.detach(), "ce": ce.detach(), "acc": acc}, feats.detach())
