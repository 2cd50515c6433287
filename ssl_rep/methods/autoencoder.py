"""Autoencoder reconstruction: plain (Hinton & Salakhutdinov 2006), denoising (Vincent et al. 2008)
and masked (hide patches, predict them; cf. Pathak et al. 2016, He et al. 2022)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders import CodeEncoder, GridPooledEncoder
from ..encoders.mlp import N2D_HIDDEN
from .base import Method, MethodOutput
from .decoders import CodeDecoder, Decoder, MLPDecoder

MODES = ("plain", "denoising", "masked")
NOISES = ("gaussian", "masking")
BOTTLENECKS = ("pooled", "grid", "map")
DECODERS = ("conv", "mlp")


def innermost(encoder: nn.Module) -> nn.Module:
    """The encoder inside the code and grid wrappers."""
    while isinstance(encoder, (CodeEncoder, GridPooledEncoder)):
        encoder = encoder.encoder
    return encoder


class Autoencoder(Method):
    """Reconstruct the image from a bottleneck code of the encoder's last feature map.

    batch: ``(images (B, 3, H, W), labels)``; ``image_size`` must be ``H`` (sizes the decoder).
    ``bottleneck`` (what the decoder reads):

    - ``pooled`` (default): the pooled vector ``(B, D)``, which is exactly what ``encoder(x)``,
      ``load_encoder`` and the linear probe read; nothing else of the map reaches the decoder.
    - ``grid``: the map average-pooled to ``code_grid x code_grid`` cells, a small spatial code of
      ``D * g * g`` values. ``method.encoder`` is then a :class:`~ssl_rep.encoders.GridPooledEncoder`,
      so ``encoder(x)``, ``encoder.pt``, ``load_encoder`` and the probe read exactly this code.
    - ``map``: the whole last feature map (no bottleneck; reconstruction is easy and teaches the
      pooled vector little). The code's size is set by the encoder's width (``encoder.width``).

    ``code_dim``: a linear layer from the pooled or grid code to ``code_dim`` values (N2D's small embedding, e.g.
    10) is the code instead; ``method.encoder`` is then a :class:`~ssl_rep.encoders.CodeEncoder`, so ``encoder(x)``,
    ``encoder.pt`` and the probe read exactly it.

    ``mode``: ``plain``; ``denoising`` (corrupt the input with ``noise`` = ``gaussian`` of std
    ``noise_std`` or ``masking`` of a ``noise_ratio`` fraction of pixels; the loss is against the
    clean image); ``masked`` (as MAE, He et al. 2022: the encoder sees the image with a
    ``mask_ratio`` fraction of ``patch_size`` patches hidden; the loss counts hidden pixels only;
    ``patch_size=None`` matches the image: ``image_size // 14``, at least 4 px).
    ``loss``: ``mse`` on the (normalised) pixels, or ``bce`` for images in [0, 1] (decoder logits).
    ``decoder``: ``conv`` (a linear layer to a small map, then upsampling convolutions) or ``mlp`` (fully connected,
    mirroring an ``mlp`` encoder's ``hidden`` widths, else N2D's 2000-500-500): with ``encoder: mlp`` and
    ``code_dim: 10``, DEC's and N2D's autoencoder. An encoder that reads gray (``mlp`` with ``gray: true``) is asked
    for the gray image back (the channel mean: one output channel, a third of the decoder's last layer).
    logs: ``loss``, ``recon_mse`` (on the pixels the loss covers).
    """

    name = "autoencoder"
    option_choices = {"mode": MODES, "noise": NOISES, "bottleneck": BOTTLENECKS, "loss": ("mse", "bce"),
                      "decoder": DECODERS}

    def __init__(self, encoder, image_size: int = 32, mode: str = "plain", noise: str = "gaussian",
                 noise_std: float = 0.5, noise_ratio: float = 0.3, mask_ratio: float = 0.75,
                 patch_size: int | None = None, loss: str = "mse", decoder_width: int = 128, in_chans: int = 3,
                 bottleneck: str = "pooled", code_grid: int = 2, code_dim: int | None = None, decoder: str = "conv"):
        if code_dim is not None and bottleneck == "map":
            raise ValueError("autoencoder code_dim needs bottleneck 'pooled' or 'grid' (a code layer on the map's "
                             "pooled code), not 'map'")
        coded = GridPooledEncoder(encoder, code_grid) if bottleneck == "grid" and code_grid >= 1 else encoder
        super().__init__(CodeEncoder(coded, code_dim) if code_dim is not None else coded)
        for option, value, valid in (("mode", mode, MODES), ("noise", noise, NOISES), ("loss", loss, ("mse", "bce")),
                                     ("bottleneck", bottleneck, BOTTLENECKS), ("decoder", decoder, DECODERS)):
            if value not in valid:
                raise ValueError(f"autoencoder {option} must be one of {', '.join(valid)}, got {value!r}")
        if code_grid < 1:
            raise ValueError(f"autoencoder code_grid must be >= 1, got {code_grid}")
        self.mode, self.noise, self.loss_kind, self.bottleneck = mode, noise, loss, bottleneck
        self.noise_std, self.noise_ratio, self.mask_ratio = noise_std, noise_ratio, mask_ratio
        self.patch_size = patch_size or max(4, image_size // 14)
        self.image_size, self.code_grid = image_size, code_grid
        self._range_checked = False
        was_training = encoder.training
        with torch.no_grad():
            encoder.eval()
            fmap = encoder.feature_map(torch.zeros(1, in_chans, image_size, image_size))
        encoder.train(was_training)
        out_size, map_size, channels = (image_size, image_size), tuple(fmap.shape[-2:]), fmap.shape[1]
        self.gray = bool(getattr(innermost(encoder), "gray", False))
        out_chans = 1 if self.gray else in_chans
        cells = {"pooled": 1, "grid": code_grid * code_grid, "map": map_size[0] * map_size[1]}[bottleneck]
        if decoder == "mlp":
            hidden = getattr(innermost(encoder), "hidden", N2D_HIDDEN)[::-1]
            self.decoder = MLPDecoder(code_dim or channels * cells, out_size, out_chans, hidden)
        elif bottleneck == "map":
            self.decoder = Decoder(channels, out_size, map_size, out_chans=out_chans, width=decoder_width)
        else:
            self.decoder = CodeDecoder(code_dim or channels * cells, out_size, map_size, out_chans, decoder_width)

    def code(self, fmap: torch.Tensor) -> torch.Tensor:
        """What the decoder reads of the feature map ``(B, D, h, w)`` (see ``bottleneck``): for ``pooled``
        and ``grid`` exactly ``encoder(x)``, ``(B, D)`` or ``(B, D * g * g)`` (``(B, code_dim)`` with a code layer)."""
        if self.bottleneck == "map":
            return fmap
        code = fmap.mean(dim=(2, 3)) if self.bottleneck == "pooled" else GridPooledEncoder.pool(fmap, self.code_grid)
        return self.encoder.code(code) if isinstance(self.encoder, CodeEncoder) else code

    def patch_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` float mask, 1 on hidden patches."""
        b, _, h, w = x.shape
        p = self.patch_size
        grid = torch.rand(b, 1, math.ceil(h / p), math.ceil(w / p), device=x.device) < self.mask_ratio
        return grid.float().repeat_interleave(p, 2).repeat_interleave(p, 3)[:, :, :h, :w]

    def corrupt(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The encoder's input and the loss mask (None = every pixel)."""
        if self.mode == "plain" or not self.training:
            return x, None
        if self.mode == "denoising":
            if self.noise == "gaussian":
                return x + self.noise_std * torch.randn_like(x), None
            keep = (torch.rand_like(x[:, :1]) >= self.noise_ratio).to(x.dtype)
            return x * keep, None
        mask = self.patch_mask(x)
        return x * (1 - mask), mask

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the input's units (sigmoid applied for ``bce``)."""
        out = self.decoder(self.code(self.encoder.feature_map(x)))
        return torch.sigmoid(out) if self.loss_kind == "bce" else out

    @torch.no_grad()
    def reconstructions(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(originals, reconstructions)`` for a batch, in eval mode (for reports)."""
        was_training = self.training
        self.eval()
        try:
            return images, self.reconstruct(images)
        finally:
            self.train(was_training)

    def forward(self, batch):
        x = self.images_of(batch)
        # Every batch on CPU; on a GPU the first batch only (a check reads the device, so it waits for it; the
        # normalisation that would break it is the same for every batch).
        if self.loss_kind == "bce" and (x.device.type == "cpu" or not self._range_checked):
            if x.min() < 0 or x.max() > 1:
                raise ValueError("autoencoder loss='bce' needs images in [0, 1]; use loss='mse' for "
                                 "normalised images (or build the transform with stats=None)")
            self._range_checked = True
        inputs, mask = self.corrupt(x)
        fmap = self.encoder.feature_map(inputs)
        code = self.code(fmap)
        out = self.decoder(code)
        target = x.mean(dim=1, keepdim=True) if self.gray else x
        if self.loss_kind == "bce":
            per_pixel = F.binary_cross_entropy_with_logits(out, target, reduction="none")
            recon = torch.sigmoid(out)
        else:
            per_pixel = (out - target) ** 2
            recon = out
        with torch.no_grad():
            sq = (recon.detach() - target) ** 2
        if mask is None:
            loss, mse = per_pixel.mean(), sq.mean()
        else:
            weight = mask.expand_as(target)
            denom = weight.sum().clamp_min(1.0)
            loss, mse = (per_pixel * weight).sum() / denom, (sq * weight).sum() / denom
        features = fmap.mean(dim=(2, 3)) if self.bottleneck == "map" else code   # what encoder(x) returns
        return MethodOutput(loss, {"loss": loss.detach(), "recon_mse": mse.detach()}, features.detach())
