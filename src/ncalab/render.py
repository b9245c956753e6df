"""How a state becomes an image: the rendering choice next to the perception choice (``render=cells|decoder``).

Every renderer maps a state ``B x C x H x W`` (the cell grid) to premultiplied RGBA ``B x 4 x (H*scale) x
(W*scale)``, unclamped like the state's own RGBA channels; the loss, PSNR/SSIM, ``final.png`` and the videos are
taken on it, while alive masks, firing, damage and the pool stay on the cell grid.

- :class:`CellRender` (``render=cells``, the default): each cell is one pixel, its channels 0-3. Exactly what ncalab
  did before there was a choice.
- :class:`DecoderRender` (``render=decoder render.scale=4``): a small network shared by all pixels draws each pixel
  from the cell state bilinearly interpolated at the pixel and the pixel's offset inside its cell (after "NCA: From
  Cells to Pixels", arXiv 2506.22899: a sine-activated MLP per pixel). The automaton runs on a grid ``scale`` times
  coarser than the image, so a 128 px image costs about what a 32 px one does per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ncalab.errors import ConfigError

__all__ = ["MAX_SCALE", "CellRender", "DecoderRender", "Renderer", "pixel_offsets"]

ALPHA = 3
MAX_SCALE = 16  # pixels per cell side at most


class Renderer(nn.Module):
    """Base class: ``scale`` (pixels per cell side), ``name`` and ``forward(x) -> B x 4 x H*scale x W*scale``."""

    name = "renderer"
    scale = 1

    def config(self) -> dict:
        """What identifies this renderer in a checkpoint (compared on resume) and in an exported model."""
        return {"name": self.name, "scale": self.scale}


class CellRender(Renderer):
    """Each cell is one pixel: the state's channels 0-3."""

    name = "cells"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : ALPHA + 1]


def pixel_offsets(scale: int, device=None, dtype=None) -> torch.Tensor:
    """``2 x scale x scale``: each pixel's offset from its cell's centre, in cells (-0.5..0.5; y then x)."""
    centres = (torch.arange(scale, device=device, dtype=dtype or torch.float32) + 0.5) / scale - 0.5
    return torch.stack(torch.meshgrid(centres, centres, indexing="ij"))


class DecoderRender(Renderer):
    """A per-pixel network: ``[state bilinearly interpolated at the pixel, the pixel's offset in its cell]`` ->
    ``layers`` 1x1 convolutions of ``hidden`` units with a sine activation (the first one's input scaled by
    ``omega``; SIREN's initialisation) -> 4 channels (premultiplied RGBA). Pixels whose cell is dead (the alive mask, upsampled
    nearest) are transparent, as dead cells are in the per-cell image."""

    name = "decoder"

    def __init__(
        self,
        channels: int = 16,
        scale: int = 4,
        hidden: int = 64,
        layers: int = 2,
        omega: float = 5.0,
        alive_threshold: float = 0.1,
    ):
        super().__init__()
        for key, value, low, high in (
            ("render.scale", scale, 2, MAX_SCALE),
            ("render.hidden", hidden, 1, 1024),
            ("render.layers", layers, 1, 8),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{key}={value!r} is not valid; expected an integer from {low} to {high}")
        if isinstance(omega, bool) or not isinstance(omega, int | float) or not 0 < omega <= 1000:
            raise ConfigError(f"render.omega={omega!r} is not valid; expected a number in (0, 1000]")
        self.channels, self.scale, self.hidden, self.layers, self.omega = (
            channels,
            scale,
            hidden,
            layers,
            float(omega),
        )
        self.alive_threshold = alive_threshold
        sizes = [channels + 2, *([hidden] * layers)]
        self.body = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=1) for a, b in zip(sizes, sizes[1:], strict=False)
        )
        self.head = nn.Conv2d(hidden, ALPHA + 1, kernel_size=1)
        with (
            torch.no_grad()
        ):  # SIREN: the first layer U(-1/n, 1/n) (times omega), the others U(-sqrt(6/n), sqrt(6/n))
            for i, conv in enumerate(self.body):
                n = conv.in_channels
                bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n)
                conv.weight.uniform_(-bound, bound)
            bound = math.sqrt(6.0 / hidden)
            self.head.weight.uniform_(-bound, bound)
            self.head.bias.zero_()
        self.register_buffer("offsets", pixel_offsets(scale), persistent=False)

    def config(self) -> dict:
        return {
            "name": self.name,
            "scale": self.scale,
            "hidden": self.hidden,
            "layers": self.layers,
            "omega": self.omega,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s = self.scale
        up = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        offsets = self.offsets.to(x.dtype).repeat(1, h, w).expand(b, -1, -1, -1)
        y = torch.cat([up, offsets], dim=1)
        for i, conv in enumerate(self.body):
            y = torch.sin(conv(y) * (self.omega if i == 0 else 1.0))
        image = self.head(y)
        alpha = x.detach()[:, ALPHA : ALPHA + 1]
        alive = F.max_pool2d(alpha, kernel_size=3, stride=1, padding=1) > self.alive_threshold
        return image * F.interpolate(alive.to(x.dtype), scale_factor=s, mode="nearest")


RENDERERS: dict[str, type[Renderer]] = {"cells": CellRender, "decoder": DecoderRender}


def build_render(node: dict | None, channels: int, alive_threshold: float = 0.1) -> Renderer:
    """The renderer a config's ``render`` node names (``None`` or absent: per-cell, as before the choice
    existed). Only the classes of :data:`RENDERERS` are built, from plain settings: a checkpoint's config names
    nothing that is imported."""
    if node is None:
        return CellRender()
    if not isinstance(node, dict):
        raise ConfigError(f"render={node!r} is not valid; expected render=cells or render=decoder")
    settings = dict(node)
    name = settings.pop("name", None)
    if name not in RENDERERS:
        raise ConfigError(f"render.name={name!r} is not valid; accepted: {', '.join(RENDERERS)}")
    if name == "cells":
        scale = settings.pop("scale", 1)
        if scale != 1 or settings:
            raise ConfigError(
                f"render=cells draws one pixel per cell: render.scale={scale!r} and "
                f"{', '.join(f'render.{k}' for k in settings) or 'nothing else'} do not apply; use render=decoder"
            )
        return CellRender()
    known = {"scale", "hidden", "layers", "omega"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"render.{unknown[0]} is not a setting of render=decoder; accepted: {', '.join(sorted(known))}"
        )
    return DecoderRender(channels=channels, alive_threshold=alive_threshold, **settings)


def decoder_tensors(render: Renderer) -> dict[str, torch.Tensor]:
    """A decoder's weights as plain float32 matrices, the layout an exported model folder holds (and the browser
    reads): ``render_w<i>`` (out x in) and ``render_b<i>`` per sine layer, ``render_head_w`` (4 x hidden) and
    ``render_head_b``. Empty for the per-cell renderer."""
    if not isinstance(render, DecoderRender):
        return {}
    tensors: dict[str, torch.Tensor] = {}
    for i, conv in enumerate(render.body):
        tensors[f"render_w{i}"] = conv.weight.detach().float().cpu()[:, :, 0, 0].contiguous()
        tensors[f"render_b{i}"] = conv.bias.detach().float().cpu()
    tensors["render_head_w"] = render.head.weight.detach().float().cpu()[:, :, 0, 0].contiguous()
    tensors["render_head_b"] = render.head.bias.detach().float().cpu()
    return tensors


def load_decoder_tensors(render: Renderer, tensors: dict[str, torch.Tensor]) -> None:
    """Put :func:`decoder_tensors`' layout back into ``render`` (shapes checked: ``ValueError`` naming the
    tensor)."""
    if not isinstance(render, DecoderRender):
        return
    targets = [(f"render_w{i}", conv.weight) for i, conv in enumerate(render.body)]
    targets += [(f"render_b{i}", conv.bias) for i, conv in enumerate(render.body)]
    targets += [("render_head_w", render.head.weight), ("render_head_b", render.head.bias)]
    with torch.no_grad():
        for key, param in targets:
            if key not in tensors:
                raise ValueError(f"tensor {key!r} is missing")
            value = tensors[key]
            if value.numel() != param.numel():
                raise ValueError(
                    f"tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
                )
            param.copy_(value.reshape(param.shape))
