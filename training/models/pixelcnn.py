"""Gated PixelCNN without the blind spot (van den Oord et al., 2016), 256-way output per channel.

An image of C channels is modelled pixel by pixel in raster order and, inside a pixel, channel by
channel (R -> G -> B). Two stacks keep the receptive field free of blind spots:
- the vertical stack sees every row *above and including* the current one; it reaches the horizontal
  stack only after a shift down by one row, so the horizontal stack sees rows strictly above;
- the horizontal stack sees the current row to the left, and the current pixel's earlier channels.

Kernels are cut to their causal half ((k//2 + 1) x k and 1 x (k//2 + 1)) instead of masking a full
k x k kernel: the masked-out taps would be wasted work. Only the current column of the horizontal
convolution and the 1x1 convolutions carry a mask, and only between channel groups: feature maps are
split into C contiguous groups, group g predicting channel g, and group g may read groups < g (mask
"A", first layer, so a pixel never sees itself) or <= g (mask "B", later layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 256


@dataclass
class PixelCNNConfig:
    channels: int = 1  # image channels: 1 (grey) or 3 (RGB)
    hidden: int = 64  # feature maps per stack; divisible by `channels`
    layers: int = 6  # gated layers
    kernel: int = 5  # odd
    head: int = 128  # width of the 1x1 output head; divisible by `channels`
    num_classes: int = 0  # > 0: class-conditional (a label embedding biases every gate)
    # With num_classes and the image size: each class also learns `label_maps` image-sized maps that
    # bias every gate position by position (location-dependent conditioning, van den Oord et al.,
    # 2016). A bias alone cannot say *where* a class puts its ink, and small nets cannot infer
    # where they are from context.
    height: int = 0
    width: int = 0
    label_maps: int = 4

    def __post_init__(self):
        assert self.channels in (1, 3), "PixelCNN models 1 or 3 channels"
        assert self.kernel % 2 == 1, "kernel must be odd"
        assert self.kernel >= 3, "kernel must be >= 3"
        assert self.hidden % self.channels == 0
        assert self.head % self.channels == 0


def group_of(index: torch.Tensor, size: int, groups: int) -> torch.Tensor:
    """Channel group of each feature index when `size` features are split into `groups` blocks."""
    return index * groups // size


def group_mask(
    out_size: int,
    in_size: int,
    groups: int,
    *,
    strict: bool,
    in_gated: bool = False,
    out_gated: bool = False,
) -> torch.Tensor:
    """(out, in) mask: 1 where out's group may read in's group (strict: <, else <=).

    A gated tensor holds two halves [a | b] of the same group layout; `*_gated` says so.
    """
    out_index = torch.arange(out_size)
    in_index = torch.arange(in_size)
    if out_gated:
        out_index = out_index % (out_size // 2)
        out_size //= 2
    if in_gated:
        in_index = in_index % (in_size // 2)
        in_size //= 2
    out_group = group_of(out_index, out_size, groups)[:, None]
    in_group = group_of(in_index, in_size, groups)[None, :]
    allowed = in_group < out_group if strict else in_group <= out_group
    return allowed.float()


class GroupMaskedConv(nn.Conv2d):
    """A 1 x kw convolution over the current row and the pixels to its left (kw = k//2 + 1).

    Taps left of the current pixel are free; the current pixel's tap carries a group mask.
    With kw = 1 this is a masked 1x1 convolution.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        width: int,
        groups: int,
        *,
        strict: bool,
        in_gated: bool = False,
        out_gated: bool = False,
    ):
        super().__init__(in_ch, out_ch, (1, width))
        mask = torch.ones(out_ch, in_ch, 1, width)
        mask[:, :, 0, -1] = group_mask(
            out_ch, in_ch, groups, strict=strict, in_gated=in_gated, out_gated=out_gated
        )
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        return F.conv2d(
            F.pad(x, (self.kernel_size[1] - 1, 0, 0, 0)), self.weight * self.mask, self.bias
        )


class VerticalConv(nn.Conv2d):
    """A (k//2 + 1) x k convolution over the current row and the rows above, centred on columns."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int):
        super().__init__(in_ch, out_ch, (kernel // 2 + 1, kernel))

    def forward(self, x):
        half = self.kernel_size[1] // 2
        return super().forward(F.pad(x, (half, half, self.kernel_size[0] - 1, 0)))


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move every row down by one (row 0 becomes zeros): row i then holds row i - 1."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, cfg: PixelCNNConfig, in_ch: int, first: bool):
        super().__init__()
        f, c = cfg.hidden, cfg.channels
        self.first = first
        self.v_conv = VerticalConv(in_ch, 2 * f, cfg.kernel)
        self.v_to_h = nn.Conv2d(2 * f, 2 * f, 1)  # reads shifted rows only: no mask needed
        self.h_conv = GroupMaskedConv(
            in_ch, 2 * f, cfg.kernel // 2 + 1, c, strict=first, out_gated=True
        )
        self.h_out = GroupMaskedConv(f, f, 1, c, strict=False)
        self.label_bias = nn.Embedding(cfg.num_classes, 4 * f) if cfg.num_classes else None
        self.label_spatial = (
            nn.Conv2d(cfg.label_maps, 4 * f, 1, bias=False)
            if cfg.num_classes and cfg.height and cfg.label_maps
            else None
        )

    def forward(self, v, h, label=None, maps=None):
        v_feat = self.v_conv(v)  # (B, 2F, H, W)
        h_feat = self.h_conv(h) + self.v_to_h(shift_down(v_feat))
        if self.label_bias is not None:
            bias = self.label_bias(label)[:, :, None, None]  # (B, 4F, 1, 1)
            if self.label_spatial is not None:
                bias = bias + self.label_spatial(maps)  # (B, 4F, H, W)
            v_bias, h_bias = bias.chunk(2, dim=1)
            v_feat, h_feat = v_feat + v_bias, h_feat + h_bias
        v_next = gate(v_feat)
        h_next = self.h_out(gate(h_feat))
        return v_next, (h_next if self.first else h + h_next)


class PixelCNN(nn.Module):
    """logits = model(x) for uint8 images x (B, C, H, W); logits (B, C, 256, H, W)."""

    def __init__(self, cfg: PixelCNNConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.layers = nn.ModuleList(
            GatedLayer(cfg, c if i == 0 else cfg.hidden, first=i == 0) for i in range(cfg.layers)
        )
        self.head = nn.Sequential(
            GroupMaskedConv(cfg.hidden, cfg.head, 1, c, strict=False),
            nn.ReLU(),
            GroupMaskedConv(cfg.head, c * LEVELS, 1, c, strict=False),
        )
        self.label_maps = None
        if cfg.num_classes and cfg.height and cfg.label_maps:
            self.label_maps = nn.Parameter(
                0.1 * torch.randn(cfg.num_classes, cfg.label_maps, cfg.height, cfg.width)
            )

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        assert (label is not None) == bool(self.cfg.num_classes), "label iff class-conditional"
        v = h = x.float() / 127.5 - 1.0  # (B, C, H, W) in [-1, 1]
        maps = None
        if self.label_maps is not None:  # (B, maps, H, W); x may hold only the top rows (sampling)
            maps = self.label_maps[label][:, :, : x.shape[2], : x.shape[3]]
        for layer in self.layers:
            v, h = layer(v, h, label, maps)
        logits = self.head(h)  # (B, C*256, H, W), channel-group major
        b, _, height, width = logits.shape
        return logits.view(b, self.cfg.channels, LEVELS, height, width)

    def nll_bits_map(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """-log2 p(x_i | x_<i) per sub-pixel, (B, C, H, W), exact for 8-bit images."""
        log_probs = F.log_softmax(self(x, label).float(), dim=2)  # (B, C, 256, H, W)
        observed = log_probs.gather(2, x.long().unsqueeze(2)).squeeze(2)  # (B, C, H, W)
        return -observed / math.log(2.0)

    def bits_per_dim(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood per image in bits per dimension, (B,)."""
        return self.nll_bits_map(x, label).flatten(1).mean(1)

    def sample(
        self,
        n: int,
        height: int,
        width: int,
        *,
        label: torch.Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw n images (n, C, H, W) uint8, pixel by pixel and channel by channel.

        Every feature is computed once and kept (see `sampling.py`), batched over the n images.
        """
        from .sampling import sample

        return sample(
            self,
            n,
            height,
            width,
            label=label,
            temperature=temperature,
            generator=generator,
            progress=progress,
        )
