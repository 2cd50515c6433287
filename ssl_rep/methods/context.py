"""Causal context networks over a CPC patch grid: ``(B, D, H, W)`` -> ``(B, C, H, W)``.

"Causal top-to-bottom": ``c[:, :, i, j]`` depends only on ``z[:, :, u, v]`` with ``u <= i`` (no row
below ``i``), so predicting ``z[i + k]`` from ``c[i]`` for ``k >= 1`` cannot cheat.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONTEXTS = ("pixelcnn", "gru", "attention")


class CausalConv2d(nn.Conv2d):
    """A conv whose output row i sees input rows i - (kh - 1) .. i: padding on top only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        return super().forward(F.pad(x, (kw // 2, kw // 2, kh - 1, 0)))


class PixelCNNContext(nn.Module):
    """CPC v2's context: residual blocks (1x1 conv, causal 3x3 conv, 1x1 conv) over the grid."""

    def __init__(self, in_dim: int, dim: int = 256, n_blocks: int = 3):
        super().__init__()
        self.inp = nn.Conv2d(in_dim, dim, 1)
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.ReLU(), nn.Conv2d(dim, dim // 2, 1), nn.ReLU(), CausalConv2d(dim // 2, dim // 2, 3, padding=0),
            nn.ReLU(), nn.Conv2d(dim // 2, dim, 1)) for _ in range(n_blocks))
        self.out_dim = dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.inp(z)
        for block in self.blocks:
            x = x + block(x)
        return x


class GRUContext(nn.Module):
    """CPC v1's autoregressive RNN, run down each column: ``c[i, j] = GRU(z[0, j], ..., z[i, j])``."""

    def __init__(self, in_dim: int, dim: int = 256, n_layers: int = 1):
        super().__init__()
        self.gru = nn.GRU(in_dim, dim, num_layers=n_layers, batch_first=True)
        self.out_dim = dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, d, h, w = z.shape
        seq = z.permute(0, 3, 2, 1).reshape(b * w, h, d)          # one sequence per column, top first
        out, _ = self.gru(seq)
        return out.reshape(b, w, h, -1).permute(0, 3, 2, 1)


class AttentionContext(nn.Module):
    """Causal self-attention over the grid in row-major order (token ``i * W + j`` attends to
    tokens ``<= i * W + j``), with learned row and column position embeddings."""

    def __init__(self, in_dim: int, dim: int = 256, n_layers: int = 2, n_heads: int = 4, max_grid: int = 32):
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        self.row_pos = nn.Parameter(torch.zeros(max_grid, dim))
        self.col_pos = nn.Parameter(torch.zeros(max_grid, dim))
        nn.init.normal_(self.row_pos, std=0.02)
        nn.init.normal_(self.col_pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=2 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.max_grid, self.out_dim = max_grid, dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, d, h, w = z.shape
        if h > self.max_grid or w > self.max_grid:
            raise ValueError(f"attention context: grid {h}x{w} exceeds max_grid={self.max_grid}")
        tokens = self.inp(z.permute(0, 2, 3, 1)) + self.row_pos[:h, None] + self.col_pos[None, :w]
        tokens = tokens.reshape(b, h * w, -1)
        mask = nn.Transformer.generate_square_subsequent_mask(h * w, device=z.device, dtype=tokens.dtype)
        out = self.transformer(tokens, mask=mask, is_causal=True)
        return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def create_context(kind: str, in_dim: int, dim: int = 256) -> nn.Module:
    if kind == "pixelcnn":
        return PixelCNNContext(in_dim, dim)
    if kind == "gru":
        return GRUContext(in_dim, dim)
    if kind == "attention":
        return AttentionContext(in_dim, dim)
    raise ValueError(f"unknown CPC context {kind!r}; valid: {', '.join(CONTEXTS)}")
