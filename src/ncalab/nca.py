"""The cellular automaton: state layout, alive mask, the update rule, rollout.

State is ``B x C x H x W``; channels 0-3 are premultiplied RGBA, channel 3 (alpha) decides who is alive, the rest
are hidden. The update rule is :meth:`NCA.plain_step`, on one screen in the Distill notebook's order: alive mask
before, perceive, update, stochastic fire mask, residual add, alive mask after. :meth:`NCA.step`, which training,
evaluation and the bench use, computes the same rule faster (:mod:`ncalab.fast_step` says how; its tests compare
it with ``plain_step``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ncalab import fast_step
from ncalab.fast_step import PRECISIONS
from ncalab.perception import Perception
from ncalab.render import CellRender, Renderer

__all__ = ["ALPHA", "NCA", "PRECISIONS", "alive_mask", "rgba", "seed_state", "to_rgb"]

ALPHA = 3


def alive_mask(x: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """``B x 1 x H x W`` boolean: a cell is alive when the 3x3 max-pool of alpha exceeds ``threshold``."""
    # A mask carries no gradient: pooling a detached, contiguous alpha plane skips autograd's bookkeeping.
    alpha = x.detach()[:, ALPHA : ALPHA + 1].contiguous()
    return F.max_pool2d(alpha, kernel_size=3, stride=1, padding=1) > threshold


def seed_state(batch: int, channels: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """One live cell in the centre with channels >= 3 (alpha and hidden) set to 1, everything else 0."""
    x = torch.zeros(batch, channels, height, width, device=device, dtype=dtype)
    x[:, ALPHA:, height // 2, width // 2] = 1.0
    return x


class NCA(nn.Module):
    """perception -> 1x1 conv to ``hidden`` -> ReLU -> 1x1 conv to ``channels`` (zero-initialised).

    ``update_bias``: whether the last 1x1 conv has a bias. Off by default, as in the widely used PyTorch port of
    the Distill model (the notebook's Keras layer keeps a zero-initialised one): a bias there adds the same vector
    to every firing cell at every step, and the smallest error in it accumulates into a drift of the whole state
    over thousands of steps. It mattered with a recipe that damaged most of each batch and hardly with the holding
    recipe (docs/experiments.md, "A recipe that holds"); off is the safer default.

    ``precision``: ``fp32`` or ``bf16`` (the update network in bfloat16, and the perception on GPU; state in float32).
    ``checkpoint_every``: ``None`` or k, gradient checkpointing of the rollout in segments of k steps.
    ``render``: how a state becomes an image (:mod:`ncalab.render`; default one pixel per cell): ``nca.render(x)``
    is what the loss, the metrics and the pictures are taken on.
    Both are options of the fast path (:mod:`ncalab.fast_step`); the rule is the same.
    """

    def __init__(
        self,
        perception: Perception,
        channels: int = 16,
        hidden: int = 128,
        fire_rate: float = 0.5,
        alive_threshold: float = 0.1,
        precision: str = "fp32",
        checkpoint_every: int | None = None,
        update_bias: bool = False,
        render: Renderer | None = None,
    ):
        super().__init__()
        if perception.channels != channels:
            raise ValueError(f"perception has {perception.channels} channels but the model has {channels}")
        if not 0.0 < fire_rate <= 1.0:
            raise ValueError(f"fire_rate must be in (0, 1], got {fire_rate}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; accepted: {', '.join(PRECISIONS)}")
        if checkpoint_every is not None and (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise ValueError(f"checkpoint_every must be null or an integer >= 1, got {checkpoint_every!r}")
        self.channels = channels
        self.hidden = hidden
        self.fire_rate = fire_rate
        self.alive_threshold = alive_threshold
        self.precision = precision
        self.checkpoint_every = checkpoint_every
        self.update_bias = bool(update_bias)
        self.perception = perception
        # How a state becomes an image (ncalab.render): one pixel per cell, or a decoder at `render.scale`.
        self.render: Renderer = render if render is not None else CellRender()
        self.update = nn.Sequential(
            nn.Conv2d(perception.out_channels, hidden, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=self.update_bias),
        )
        # Zero last layer: the untrained automaton leaves the seed as it is, so early training is stable.
        nn.init.zeros_(self.update[-1].weight)
        if self.update_bias:
            nn.init.zeros_(self.update[-1].bias)
        self._step: Callable[[torch.Tensor], torch.Tensor] = self.step
        self._compiled = False
        # Fast path (CPU): update only the cells that fire and are near live ones when they are at most this
        # fraction of the grid (ncalab.fast_step.update_rows).
        self.sparse_below = 0.75

    def plain_step(self, x: torch.Tensor, fire_rate: float | None = None) -> torch.Tensor:
        """The update rule, written plainly. :meth:`step` computes the same, faster.

        Runs in the state's dtype (``precision`` is an option of the fast path). The fire mask draws
        ``torch.rand(B, 1, H, W)`` only when ``fire_rate < 1``: the numbers ``step`` draws from the same random state.
        """
        rate = self.fire_rate if fire_rate is None else fire_rate
        pre = self.alive(x)  # who is alive before the update
        y = self.perception(x)  # perceive: each cell's state and its operator responses
        dx = self.update(y)  # update: the same small network in every cell
        if rate < 1.0:  # each cell fires (applies its update) with probability fire_rate
            fire = torch.rand(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device) < rate
            dx = dx * fire.to(dx.dtype)
        x = x + dx  # residual update
        post = self.alive(x)  # who is alive after it
        return x * (pre & post).to(x.dtype)  # a cell lives on only if alive both before and after

    def alive(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`alive_mask` at this model's threshold."""
        return alive_mask(x, self.alive_threshold)

    def step(self, x: torch.Tensor, fire_rate: float | None = None) -> torch.Tensor:
        """One update of every living cell that fires (probability ``fire_rate``, default the model's).

        The rule of :meth:`plain_step`, computed by the fast path (:func:`ncalab.fast_step.step`).
        """
        return fast_step.step(self, x, self.fire_rate if fire_rate is None else fire_rate)

    def seed(self, batch: int, height: int, width: int) -> torch.Tensor:
        p = next(self.parameters())
        return seed_state(batch, self.channels, height, width, device=p.device, dtype=p.dtype)

    def compile_step(self, **compile_kwargs) -> None:
        """Compile the single step (a plain tensor function); the Python step loop stays outside."""
        self._compiled = True
        self._step = torch.compile(self.step, **compile_kwargs)

    def rollout(
        self,
        x: torch.Tensor,
        steps: int,
        backprop_steps: int | None = None,
        on_step: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Run ``steps`` updates. With ``backprop_steps=K`` only the last K steps build an autograd graph.

        ``on_step(i, x)`` is called after each step (i counts from 1), e.g. to record video frames. With
        ``checkpoint_every=k`` (and gradients enabled, no ``on_step``) the graph-building steps run in
        checkpointed segments of k steps (:func:`ncalab.fast_step.run_checkpointed`): the same values, less
        activation memory.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        free = 0 if backprop_steps is None else max(steps - backprop_steps, 0)
        if free:
            with torch.no_grad():
                step = self._rollout_step()
                for i in range(free):
                    x = step(x)
                    if on_step is not None:
                        on_step(i + 1, x)
            x = x.detach()
        step = self._rollout_step()
        if self.checkpoint_every is not None and on_step is None and torch.is_grad_enabled():
            return fast_step.run_checkpointed(step, x, steps - free, self.checkpoint_every)
        for i in range(free, steps):
            x = step(x)
            if on_step is not None:
                on_step(i + 1, x)
        return x

    def _rollout_step(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The step function for one rollout: :meth:`step`, with what it takes of the parameters
        (:func:`ncalab.fast_step.step_weights`) derived once in the current autograd mode rather than at every step
        (the parameters do not change during a rollout); or the compiled step."""
        if self._compiled:
            return self._step
        weights = fast_step.step_weights(self)
        return lambda x: fast_step.step(self, x, self.fire_rate, weights)


def rgba(x: torch.Tensor) -> torch.Tensor:
    """The visible part of the state, clamped to [0, 1] (premultiplied RGBA)."""
    return x[:, : ALPHA + 1].clamp(0.0, 1.0)


def to_rgb(x: torch.Tensor, background: float = 1.0) -> torch.Tensor:
    """Composite premultiplied RGBA onto a flat background: ``rgb + (1 - alpha) * background``."""
    v = rgba(x)
    return (v[:, :3] + (1.0 - v[:, 3:4]) * background).clamp(0.0, 1.0)
