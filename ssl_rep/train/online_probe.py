"""The online linear probe: a head trained on detached features during pretraining, scored on held-out images
after each epoch (it never changes the encoder)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import spread_indices
from ..data.transforms import mean_std
from .optim import AdamW

ONLINE_PROBE_LR = 0.03   # the online probe's peak AdamW lr; it follows the run's schedule (warmup, decay)


class HeldOut:
    """``limit`` images of the held-out split, evenly spaced through it (all of a split no larger), transformed once
    and kept on ``device``, with their labels.

    Where the transform's output is 8-bit pixels normalised by named statistics (the ``eval`` transform, which
    records them as ``batched_spec``), the images are kept as those uint8 pixels and normalised again batch by
    batch: the same numbers in a quarter of the memory (10,000 images at 224 px: 1.5 GB instead of 6). Other
    transforms' outputs are kept as float32."""

    def __init__(self, dataset, device, num_workers: int = 0, limit: int = 10_000):
        spec = getattr(getattr(dataset, "transform", None), "batched_spec", None)
        self.mean, self.std = mean_std(spec["stats"], device) if spec else (None, None)
        xs, ys, seen = [], [], 0
        if isinstance(dataset, torch.utils.data.IterableDataset):   # streamed shards: the first batches read
            loader = torch.utils.data.DataLoader(dataset, batch_size=512)
        else:
            subset = torch.utils.data.Subset(dataset, spread_indices(len(dataset), limit))
            loader = torch.utils.data.DataLoader(subset, batch_size=512, num_workers=num_workers)
        for x, y in loader:
            xs.append(self._pack(x.to(device), check=not xs))
            ys.append(y)
            seen += len(x)
            if seen >= limit:
                break
        self.images, self.labels = torch.cat(xs)[:limit], torch.cat(ys)[:limit].to(device)

    def _pack(self, x: torch.Tensor, check: bool) -> torch.Tensor:
        if self.mean is None:
            return x
        packed = (x * self.std + self.mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        if check and not torch.allclose(self._unpack(packed), x, rtol=0, atol=1e-4):
            self.mean = self.std = None   # the first batch is not 8-bit pixels after all: keep floats
            return x
        return packed

    def _unpack(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - self.mean) / self.std

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int):
        """``(images, labels)`` in order, the images float32 as the transform made them."""
        for start in range(0, len(self), batch_size):
            x = self.images[start:start + batch_size]
            yield (self._unpack(x) if x.dtype == torch.uint8 else x), self.labels[start:start + batch_size]


def online_probe_head(num_features: int, num_classes: int) -> nn.Sequential:
    """The online probe: a linear layer on the features normalised by a BatchNorm without affine parameters (as
    MAE's linear probe), so the features' scale, which drifts during pretraining, does not set its step size."""
    return nn.Sequential(nn.BatchNorm1d(num_features, affine=False), nn.Linear(num_features, num_classes))


@torch.no_grad()
def probe_accuracy(encoder: nn.Module, head: nn.Module, held_out: HeldOut, batch_size: int, autocast) -> float:
    """Accuracy of the online probe on held-out images (encoder and head in eval mode)."""
    was_training = encoder.training
    encoder.eval()
    head.eval()
    correct = 0
    for images, labels in held_out.batches(batch_size):
        with autocast():
            feats = encoder(images)
        # counted on the device, read once: a read per batch would wait for the device each time
        correct = correct + (head(feats.float()).argmax(1) == labels).sum()
    encoder.train(was_training)
    head.train()
    return int(correct) / len(held_out)


class OnlineProbe:
    """The head, its optimiser and its running accuracy over an epoch; the trainer adds :meth:`loss` to the
    method's loss (one backward pass for both: the features are detached, so it reaches only the head).

    No host syncs per step: counts stay on the device; unlabeled samples (label -1) are masked out."""

    def __init__(self, num_features: int, num_classes: int, device: torch.device, all_labelled: bool,
                 eval_set=None, num_workers: int = 0):
        self.head = online_probe_head(num_features, num_classes).to(device)
        self.optimizer = AdamW(self.head.parameters(), lr=ONLINE_PROBE_LR, weight_decay=0.0, fused=device.type == "cuda")
        self.all_labelled = all_labelled
        self.held_out = HeldOut(eval_set, device, num_workers) if eval_set is not None else None
        self.correct = self.seen = 0

    def set_lr(self, fraction: float) -> None:
        """Follow the run's schedule: ``fraction`` is the run's lr over its peak."""
        self.optimizer.param_groups[0]["lr"] = ONLINE_PROBE_LR * fraction

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.head(features.float())
        if self.all_labelled:
            loss = F.cross_entropy(logits, labels)
            self.seen = self.seen + len(labels)
        else:
            known = labels >= 0
            loss = (F.cross_entropy(logits, labels.clamp_min(0), reduction="none") * known).sum() / known.sum().clamp_min(1)
            self.seen = self.seen + known.sum()
        self.correct = self.correct + (logits.argmax(1) == labels).sum()   # -1 never matches
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def step(self) -> None:
        self.optimizer.step()

    def end_epoch(self, encoder: nn.Module, batch_size: int, autocast) -> dict:
        """The epoch's training accuracy and, with a held-out split, its accuracy there; counts restart."""
        scores = {}
        if int(self.seen):
            scores["online_probe_train_acc"] = int(self.correct) / int(self.seen)
        if self.held_out is not None:
            scores["online_probe_acc"] = probe_accuracy(encoder, self.head, self.held_out, batch_size, autocast)
        self.correct = self.seen = 0
        return scores

    def state_dict(self) -> dict:
        return {"probe": self.head.state_dict(), "probe_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["probe"])
        self.optimizer.load_state_dict(state["probe_optimizer"])
