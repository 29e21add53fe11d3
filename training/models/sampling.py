"""Drawing images from a PixelCNN one sub-pixel at a time, computing each feature exactly once.

The naive sampler (`sample_naive`) reruns the network on every row up to the current one for each
sub-pixel: about H*W*C/2 forward passes per image. But a feature never changes once the pixels it
can see are final, so `sample` keeps them:
- vertical stack: when row r is final, each layer's vertical features of row r are computed once
  from a (k//2 + 1)-row window of the layer below, and `v_to_h` of them once, for row r + 1;
- horizontal stack: for pixel (r, j) each layer computes only column j, a matrix product of the
  kept columns j - k//2 .. j of the layer below; the head computes only the channel being drawn;
- masked weights are multiplied out once per call; buffers are laid out (B, W, features) so the
  column windows are views, not copies.

Group masks let channel group g of column j read only channels < g of pixel j itself, so the
column computed while the last channel is drawn is final. Every step is batched over images.
Both samplers draw with `draw_levels` in the same order, so with equal generators they return
equal images (up to float rounding in the logits; `teacher_forced_logits` checks those).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .pixelcnn import LEVELS, PixelCNN

# choose(logits (B, 256), row, column, channel) -> levels (B,) uint8
Chooser = Callable[[torch.Tensor, int, int, int], torch.Tensor]


def draw_levels(
    logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One level per row of `logits` (B, 256) from softmax(logits / T), by inverse CDF (B,) uint8.

    One uniform per image: cheaper than `torch.multinomial`, which draws 256 exponentials.
    """
    cdf = F.softmax(logits.float() / temperature, dim=1).cumsum(1)  # (B, 256)
    u = torch.rand(len(logits), 1, generator=generator, device=logits.device)
    level = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return level.clamp_(max=LEVELS - 1).squeeze(1).to(torch.uint8)


def _flat(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's (out, in, 1, 1) weight as the (in, out) matrix of `x @ W`."""
    return weight[:, :, 0, 0].t().contiguous()


class _Layer:
    """One gated layer's weights, masks multiplied in, shaped for one-column products."""

    def __init__(self, layer, label: torch.Tensor | None, maps: torch.Tensor | None):
        self.first = layer.first
        self.v_weight, self.v_bias = layer.v_conv.weight, layer.v_conv.bias  # (2F, in, kh, k)
        self.v_to_h = _flat(layer.v_to_h.weight)  # (2F, 2F)
        h_weight = (layer.h_conv.weight * layer.h_conv.mask)[:, :, 0, :]  # (2F, in, kw)
        # (kw*in, 2F), rows ordered like a (kw, in) window
        self.h_weight = h_weight.permute(2, 1, 0).reshape(-1, h_weight.shape[0]).contiguous()
        self.out_weight = _flat(layer.h_out.weight * layer.h_out.mask)
        self.out_bias = layer.h_out.bias
        # What a row adds to the pre-activations besides the convolutions: biases, and for a
        # class-conditional model the label's bias, per position when it has label maps.
        self.h_bias = layer.v_to_h.bias + layer.h_conv.bias  # (2F,)
        self.v_label = self.v_label_rows = self.h_label_rows = None
        if layer.label_bias is not None:
            v_label, h_label = layer.label_bias(label).chunk(2, dim=1)  # (B, 2F) each
            self.v_label = v_label[:, :, None]
            self.h_bias = self.h_bias + h_label[:, None, :]  # (B, 1, 2F)
            if layer.label_spatial is not None:
                v_rows, h_rows = layer.label_spatial(maps).chunk(2, dim=1)  # (B, 2F, H, W) each
                self.v_label_rows, self.h_label_rows = v_rows, h_rows.permute(0, 2, 3, 1)

    def h_row_bias(self, row: int) -> torch.Tensor:
        """The constant part of row `row`'s horizontal pre-activation, broadcasts to (B, W, 2F)."""
        if self.h_label_rows is None:
            return self.h_bias
        return self.h_bias + self.h_label_rows[:, row]

    def v_row_bias(self, row: int) -> torch.Tensor | float:
        """The label's part of row `row`'s vertical pre-activation, broadcastable to (B, 2F, W)."""
        if self.v_label is None:
            return 0.0
        if self.v_label_rows is None:
            return self.v_label
        return self.v_label + self.v_label_rows[:, :, row]


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.tanh(a).mul_(torch.sigmoid(b))


@torch.no_grad()
def autoregress(
    model: PixelCNN,
    n: int,
    height: int,
    width: int,
    choose: Chooser,
    *,
    label: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Fill n images (n, C, H, W) uint8 in raster order, asking `choose` for every sub-pixel."""
    cfg = model.cfg
    assert (label is not None) == bool(cfg.num_classes), "label iff class-conditional"
    device = next(model.parameters()).device
    maps = None
    if model.label_maps is not None:
        assert height <= cfg.height, "label maps fix the largest image size"
        assert width <= cfg.width, "label maps fix the largest image size"
        maps = model.label_maps[label][:, :, :height, :width]
    layers = [_Layer(layer, label, maps) for layer in model.layers]
    head_1, head_2 = model.head[0], model.head[2]
    head_1_weight = _flat(head_1.weight * head_1.mask)
    head_2_weight = _flat(head_2.weight * head_2.mask)  # (head, C*256), channel-group major
    head_2_split = [
        (
            head_2_weight[:, c * LEVELS : (c + 1) * LEVELS].contiguous(),
            head_2.bias[c * LEVELS : (c + 1) * LEVELS],
        )
        for c in range(cfg.channels)
    ]
    channels, kh, half, hidden = cfg.channels, cfg.kernel // 2 + 1, cfg.kernel // 2, cfg.hidden
    kw = kh  # the horizontal kernel is 1 x (k//2 + 1)

    # Vertical inputs of every layer for all rows, padded as VerticalConv pads them: kh - 1 zero
    # rows on top, `half` zero columns each side. v_in[0] is the image, v_in[l] layer l-1's output.
    v_in = [
        torch.zeros(n, ch, height + kh - 1, width + 2 * half, device=device)
        for ch in [channels] + [hidden] * (len(layers) - 1)
    ]
    # Per layer, the horizontal pre-activation's row constant, (n, W, 2F): v_to_h of the row above
    # plus biases. Row 0 sees zeros above.
    h_const = [layer.h_row_bias(0).expand(n, width, -1).contiguous() for layer in layers]
    x = torch.zeros(n, channels, height, width, dtype=torch.uint8, device=device)

    rows = tqdm(range(height), desc="sampling rows", unit="row", disable=not progress, leave=False)
    for i in rows:
        # Horizontal inputs of every layer for the current row, kw - 1 zero columns on the left.
        h_in = [
            torch.zeros(n, width + kw - 1, ch, device=device)
            for ch in [channels] + [hidden] * len(layers)
        ]
        for j in range(width):
            col = j + kw - 1
            for c in range(channels):
                for index, layer in enumerate(layers):
                    window = h_in[index][:, j : j + kw].reshape(n, -1)  # (n, kw*in), a view
                    h_feat = torch.addmm(h_const[index][:, j], window, layer.h_weight)
                    out = h_in[index + 1][:, col]
                    torch.addmm(layer.out_bias, _gate(h_feat), layer.out_weight, out=out)
                    if not layer.first:
                        out += h_in[index][:, col]
                hidden_act = torch.addmm(head_1.bias, h_in[-1][:, col], head_1_weight).relu_()
                weight, bias = head_2_split[c]
                level = choose(torch.addmm(bias, hidden_act, weight), i, j, c)
                x[:, c, i, j] = level
                h_in[0][:, col, c] = level.float() / 127.5 - 1.0
        # Row i is final: its vertical features, once per layer.
        v_in[0][:, :, i + kh - 1, half : half + width] = x[:, :, i].float() / 127.5 - 1.0
        for index, layer in enumerate(layers):
            v_feat = F.conv2d(v_in[index][:, :, i : i + kh], layer.v_weight, layer.v_bias)[:, :, 0]
            if i + 1 < height:
                above = v_feat.transpose(1, 2) @ layer.v_to_h  # (n, W, 2F)
                h_const[index] = above.add_(layer.h_row_bias(i + 1))
            if index + 1 < len(layers):
                v_in[index + 1][:, :, i + kh - 1, half : half + width] = _gate_channels(
                    v_feat + layer.v_row_bias(i)
                )
    return x


def _gate_channels(x: torch.Tensor) -> torch.Tensor:
    """The gate on (B, 2F, W) feature maps, halves along dim 1."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a).mul_(torch.sigmoid(b))


def sample(
    model: PixelCNN,
    n: int,
    height: int,
    width: int,
    *,
    label: torch.Tensor | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw n images (n, C, H, W) uint8 with the cached sampler (a progress bar over rows)."""

    def draw(logits: torch.Tensor, i: int, j: int, c: int) -> torch.Tensor:
        return draw_levels(logits, temperature, generator)

    return autoregress(model, n, height, width, draw, label=label, progress=progress)


@torch.no_grad()
def sample_naive(
    model: PixelCNN,
    n: int,
    height: int,
    width: int,
    *,
    label: torch.Tensor | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The reference: for every sub-pixel, rerun the network on the rows up to the current one."""
    device = next(model.parameters()).device
    x = torch.zeros(n, model.cfg.channels, height, width, dtype=torch.uint8, device=device)
    for i in range(height):
        for j in range(width):
            for c in range(model.cfg.channels):
                logits = model(x[:, :, : i + 1], label)[:, c, :, i, j]  # (n, 256)
                x[:, c, i, j] = draw_levels(logits, temperature, generator)
    return x


def teacher_forced_logits(
    model: PixelCNN, images: torch.Tensor, label: torch.Tensor | None = None
) -> torch.Tensor:
    """The logits the cached sampler computes when fed `images` (B, C, H, W): (B, C, 256, H, W).

    Equal to `model(images, label)` up to float rounding when the caching is exact.
    """
    n, channels, height, width = images.shape
    out = torch.zeros(n, channels, LEVELS, height, width, device=images.device)

    def given(logits: torch.Tensor, i: int, j: int, c: int) -> torch.Tensor:
        out[:, c, :, i, j] = logits
        return images[:, c, i, j]

    autoregress(model, n, height, width, given, label=label)
    return out
