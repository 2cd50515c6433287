"""The online linear probe: a head trained on detached features during pretraining, scored on held-out images
after each epoch (it never changes the encoder)."""
from __future__ import annotations

import torch
from torch import nn

ONLINE_PROBE_LR = 0.03   # the online probe's peak AdamW lr; it follows the run's schedule (warmup, decay)


def eval_tensors(dataset, device, num_workers: int, limit: int = 10_000):
    """The held-out split's first ``limit`` images, transformed once and kept on ``device``."""
    if isinstance(dataset, torch.utils.data.IterableDataset):   # streamed shards: the first batches read
        xs, ys, seen = [], [], 0
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=512):
            xs.append(x)
            ys.append(y)
            seen += len(x)
            if seen >= limit:
                break
        return torch.cat(xs)[:limit].to(device), torch.cat(ys)[:limit].to(device)
    subset = torch.utils.data.Subset(dataset, range(min(len(dataset), limit)))
    loader = torch.utils.data.DataLoader(subset, batch_size=512, num_workers=num_workers)
    xs, ys = zip(*loader)
    return torch.cat(xs).to(device), torch.cat(ys).to(device)


def online_probe_head(num_features: int, num_classes: int) -> nn.Sequential:
    """The online probe: a linear layer on the features normalised by a BatchNorm without affine parameters (as
    MAE's linear probe), so the features' scale, which drifts during pretraining, does not set its step size."""
    return nn.Sequential(nn.BatchNorm1d(num_features, affine=False), nn.Linear(num_features, num_classes))


@torch.no_grad()
def probe_accuracy(encoder: nn.Module, head: nn.Module, images, labels, batch_size: int, autocast) -> float:
    """Accuracy of the online probe on held-out images (encoder and head in eval mode)."""
    was_training = encoder.training
    encoder.eval()
    head.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        with autocast():
            feats = encoder(images[start:start + batch_size])
        # counted on the device, read once: a read per batch would wait for the device each time
        correct = correct + (head(feats.float()).argmax(1) == labels[start:start + batch_size]).sum()
    encoder.train(was_training)
    head.train()
    return int(correct) / len(images)
