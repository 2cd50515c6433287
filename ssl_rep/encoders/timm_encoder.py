"""Any timm model as an encoder: ``timm:<name>``, created without pretrained weights and classifier."""
from __future__ import annotations

import torch

from .base import Encoder


class TimmEncoder(Encoder):
    def __init__(self, model_name: str, in_chans: int = 3, **kwargs):
        super().__init__()
        import timm

        if not timm.is_model(model_name):
            close = timm.list_models(f"*{model_name.split('_')[0]}*")[:20]
            raise ValueError(f"unknown timm model {model_name!r}; similar names: {', '.join(close) or 'none'} "
                             f"(timm.list_models() lists all)")
        kwargs.pop("pretrained", None)  # never download weights at run time
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
        self.num_features = self.model.num_features

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if feats.ndim == 4:
            if feats.shape[1] != self.num_features and feats.shape[-1] == self.num_features:
                feats = feats.permute(0, 3, 1, 2)  # NHWC models (e.g. ConvNeXt variants, Swin)
            return feats
        # Token models (ViT family): drop prefix tokens, lay the patch tokens back on their grid.
        prefix = getattr(self.model, "num_prefix_tokens", 0)
        tokens = feats[:, prefix:]
        side = int(round(tokens.shape[1] ** 0.5))
        if side * side != tokens.shape[1]:
            raise ValueError(f"{type(self.model).__name__}: cannot lay {tokens.shape[1]} tokens on a square grid")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # timm's own pooling (avg for CNNs, cls token or avg for ViTs)
