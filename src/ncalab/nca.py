"""The cellular automaton: state layout, alive mask, stochastic residual update, rollout.

State is ``B x C x H x W``; channels 0-3 are premultiplied RGBA, channel 3 (alpha) decides who is alive, the rest
are hidden. One step reads top to bottom: perceive, update, fire (stochastic mask), keep only living cells.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ncalab.perception import Perception

ALPHA = 3


def alive_mask(x: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """``B x 1 x H x W`` boolean: a cell is alive when the 3x3 max-pool of alpha exceeds ``threshold``."""
    return F.max_pool2d(x[:, ALPHA : ALPHA + 1], kernel_size=3, stride=1, padding=1) > threshold


def seed_state(batch: int, channels: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """One live cell in the centre with channels >= 3 (alpha and hidden) set to 1, everything else 0."""
    x = torch.zeros(batch, channels, height, width, device=device, dtype=dtype)
    x[:, ALPHA:, height // 2, width // 2] = 1.0
    return x


class NCA(nn.Module):
    """perception -> 1x1 conv to ``hidden`` -> ReLU -> 1x1 conv to ``channels`` (zero-initialised)."""

    def __init__(
        self,
        perception: Perception,
        channels: int = 16,
        hidden: int = 128,
        fire_rate: float = 0.5,
        alive_threshold: float = 0.1,
    ):
        super().__init__()
        if perception.channels != channels:
            raise ValueError(f"perception has {perception.channels} channels but the model has {channels}")
        if not 0.0 < fire_rate <= 1.0:
            raise ValueError(f"fire_rate must be in (0, 1], got {fire_rate}")
        self.channels = channels
        self.hidden = hidden
        self.fire_rate = fire_rate
        self.alive_threshold = alive_threshold
        self.perception = perception
        self.update = nn.Sequential(
            nn.Conv2d(perception.out_channels, hidden, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        # Zero last layer: the untrained automaton leaves the seed as it is, so early training is stable.
        nn.init.zeros_(self.update[-1].weight)
        nn.init.zeros_(self.update[-1].bias)
        self._step: Callable[[torch.Tensor], torch.Tensor] = self.step

    def seed(self, batch: int, height: int, width: int) -> torch.Tensor:
        p = next(self.parameters())
        return seed_state(batch, self.channels, height, width, device=p.device, dtype=p.dtype)

    def step(self, x: torch.Tensor, fire_rate: float | None = None) -> torch.Tensor:
        """One update of every living cell that fires (probability ``fire_rate``, default the model's)."""
        rate = self.fire_rate if fire_rate is None else fire_rate
        pre = alive_mask(x, self.alive_threshold)
        dx = self.update(self.perception(x))
        if rate < 1.0:
            fire = torch.rand(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device) < rate
            dx = dx * fire.to(dx.dtype)
        x = x + dx
        post = alive_mask(x, self.alive_threshold)
        return x * (pre & post).to(x.dtype)

    def compile_step(self, **compile_kwargs) -> None:
        """Compile the single step (a plain tensor function); the Python step loop stays outside."""
        self._step = torch.compile(self.step, **compile_kwargs)

    def rollout(
        self,
        x: torch.Tensor,
        steps: int,
        backprop_steps: int | None = None,
        on_step: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Run ``steps`` updates. With ``backprop_steps=K`` only the last K steps build an autograd graph.

        ``on_step(i, x)`` is called after each step (i counts from 1), e.g. to record video frames.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        free = 0 if backprop_steps is None else max(steps - backprop_steps, 0)
        if free:
            with torch.no_grad():
                for i in range(free):
                    x = self._step(x)
                    if on_step is not None:
                        on_step(i + 1, x)
            x = x.detach()
        for i in range(free, steps):
            x = self._step(x)
            if on_step is not None:
                on_step(i + 1, x)
        return x


def rgba(x: torch.Tensor) -> torch.Tensor:
    """The visible part of the state, clamped to [0, 1] (premultiplied RGBA)."""
    return x[:, : ALPHA + 1].clamp(0.0, 1.0)


def to_rgb(x: torch.Tensor, background: float = 1.0) -> torch.Tensor:
    """Composite premultiplied RGBA onto a flat background: ``rgb + (1 - alpha) * background``."""
    v = rgba(x)
    return (v[:, :3] + (1.0 - v[:, 3:4]) * background).clamp(0.0, 1.0)
