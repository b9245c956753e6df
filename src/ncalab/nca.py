"""The cellular automaton: state layout, alive mask, stochastic residual update, rollout.

State is ``B x C x H x W``; channels 0-3 are premultiplied RGBA, channel 3 (alpha) decides who is alive, the rest
are hidden. One step reads top to bottom: perceive, update, fire (stochastic mask), keep only living cells.

How a step is computed (the fast path, used everywhere: training, tests, bench):

- The state is kept channels-last in memory (logical shape still ``B x C x H x W``), so that the perception's
  output is a ``(B*H*W) x K`` matrix without a copy and the two 1x1 convolutions are two matrix products.
- All operators of a perception are one depthwise convolution; a constant-one column is appended to the
  perception output so that the first layer's bias rides in its matrix product (no bias pass, and its gradient
  comes out of the weight-gradient product).
- The update network (1x1 conv -> ReLU -> 1x1 conv) is one autograd function: two matrix products forward, four
  backward, no separate bias passes. (Recomputing its hidden layer in backward instead of storing it saves memory
  but measured slower on CPU: ``_UpdateMLP.recompute_hidden``, off by default.)
- On CPU, when at most ``sparse_below`` of the grid is within one cell of a live cell, only those cells are
  perceived and updated (exact: every other cell's update is masked away).
- ``precision="bf16"`` runs perception and update in bfloat16 (AMX / tensor cores); the state itself, the
  residual sum and the alive masks stay float32, so small updates are not rounded away step after step.
- ``checkpoint_every=k`` checkpoints the rollout in segments of k steps (recompute instead of store).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ncalab.perception import Perception

ALPHA = 3
PRECISIONS = ("fp32", "bf16")
_LOW = {"fp32": None, "bf16": torch.bfloat16}


def alive_mask(x: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """``B x 1 x H x W`` boolean: a cell is alive when the 3x3 max-pool of alpha exceeds ``threshold``."""
    return F.max_pool2d(x[:, ALPHA : ALPHA + 1], kernel_size=3, stride=1, padding=1) > threshold


def _alive(x: torch.Tensor, threshold: float) -> torch.Tensor:
    # A mask needs no gradient: pooling a detached, contiguous alpha plane skips the argmax bookkeeping.
    alpha = x.detach()[:, ALPHA : ALPHA + 1].contiguous()
    return F.max_pool2d(alpha, kernel_size=3, stride=1, padding=1) > threshold


def seed_state(batch: int, channels: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """One live cell in the centre with channels >= 3 (alpha and hidden) set to 1, everything else 0."""
    x = torch.zeros(batch, channels, height, width, device=device, dtype=dtype)
    x[:, ALPHA:, height // 2, width // 2] = 1.0
    return x


class _UpdateMLP(torch.autograd.Function):
    """``relu(y @ w1.T + b1) @ w2.T + b2`` on an ``N x K`` input, as matrix products (``b1`` rides in ``w1``).

    Saves ``y`` and the ``N x hidden`` layer (or recomputes the latter, see ``recompute_hidden``).
    """

    # Recompute the hidden layer in backward instead of storing it: ~3x less activation memory per step, but
    # one more matrix product (measured slower on CPU), so off by default.
    recompute_hidden = False

    @staticmethod
    def forward(ctx, y, w1, b1, w2, b2):
        w1a = torch.cat([w1, b1[:, None]], dim=1).to(y.dtype)
        h = torch.mm(y, w1a.t()).relu_()
        w2c = w2.to(y.dtype)
        out = torch.mm(h, w2c.t()) if b2 is None else torch.addmm(b2.to(y.dtype), h, w2c.t())
        if _UpdateMLP.recompute_hidden:
            ctx.save_for_backward(y, w1a, w2c)
        else:
            ctx.save_for_backward(y, w1a, w2c, h)
        ctx.dtypes = (w1.dtype, b1.dtype, w2.dtype, None if b2 is None else b2.dtype)
        return out

    @staticmethod
    def backward(ctx, g):
        y, w1a, w2c, *saved = ctx.saved_tensors
        g = g.to(y.dtype).contiguous()
        h = saved[0] if saved else torch.mm(y, w1a.t()).relu_()
        g_w2 = torch.mm(g.t(), h)
        g_b2 = g.sum(0) if ctx.needs_input_grad[4] else None
        g_h = torch.mm(g, w2c)
        g_h = torch.ops.aten.threshold_backward(g_h, h, 0.0)
        del h
        g_w1a = torch.mm(g_h.t(), y)
        g_y = torch.mm(g_h, w1a) if ctx.needs_input_grad[0] else None
        d_w1, d_b1, d_w2, d_b2 = ctx.dtypes
        g_b2 = None if g_b2 is None else g_b2.to(d_b2)
        return g_y, g_w1a[:, :-1].to(d_w1), g_w1a[:, -1].to(d_b1), g_w2.to(d_w2), g_b2


class NCA(nn.Module):
    """perception -> 1x1 conv to ``hidden`` -> ReLU -> 1x1 conv to ``channels`` (zero-initialised).

    ``update_bias``: whether the last 1x1 conv has a bias. Off by default, as in the widely used PyTorch port of
    the Distill model (the notebook's Keras layer keeps a zero-initialised one): a bias there adds the same vector
    to every firing cell at every step, and the smallest error in it accumulates into a drift of the whole state
    over thousands of steps. It mattered with a recipe that damaged most of each batch and hardly with the holding
    recipe (README "A recipe that holds"); off is the safer default.

    ``precision``: ``fp32`` or ``bf16`` (perception and update network in bfloat16, state in float32).
    ``checkpoint_every``: ``None`` or k, gradient checkpointing of the rollout in segments of k steps.
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
        # Update only cells near live ones when at most this fraction of the grid needs it (CPU only).
        self.sparse_below = 0.75

    def seed(self, batch: int, height: int, width: int) -> torch.Tensor:
        p = next(self.parameters())
        return seed_state(batch, self.channels, height, width, device=p.device, dtype=p.dtype)

    def _low_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype perception and update run in: bf16 when asked for, or inside a bf16/fp16 autocast."""
        low = _LOW[self.precision]
        if low is None and x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
            low = torch.get_autocast_dtype(x.device.type)
        return low

    def _perceive(self, x: torch.Tensor, low: torch.dtype | None) -> list[torch.Tensor]:
        """The perception as ``(B*H*W) x K_i`` row blocks (channels-last views, no copy), identity first."""
        xi = x if low is None else x.to(low)
        p = self.perception
        if type(p).forward is Perception.forward:
            weight = p.operator_weight()
            weight = weight if low is None else weight.to(low)
            responses = p.scale_responses(F.conv2d(xi, weight, padding=p.kernel_size // 2, groups=p.channels))
            parts = [xi, responses.to(xi.dtype)]
        else:  # a subclass with its own forward: use it as it is
            parts = [p(xi).to(xi.dtype)]
        rows = x.shape[0] * x.shape[2] * x.shape[3]
        return [
            t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(rows, -1)
            for t in parts
        ]

    def step(self, x: torch.Tensor, fire_rate: float | None = None) -> torch.Tensor:
        """One update of every living cell that fires (probability ``fire_rate``, default the model's)."""
        rate = self.fire_rate if fire_rate is None else fire_rate
        low = self._low_dtype(x)
        ctx = torch.autocast(x.device.type, enabled=False) if low is not None else contextlib.nullcontext()
        with ctx:
            x = x.contiguous(memory_format=torch.channels_last)
            b, c, h, w = x.shape
            n = b * h * w
            pre = _alive(x, self.alive_threshold)
            rows = self._live_rows(pre)
            parts = self._perceive(x, low)
            if rows is not None:
                parts = [t.index_select(0, rows) for t in parts]
            m = parts[0].shape[0]
            y = torch.cat([*parts, torch.ones(m, 1, dtype=parts[0].dtype, device=x.device)], dim=1)
            l1, l2 = self.update[0], self.update[2]
            w1, w2 = l1.weight.flatten(1), l2.weight.flatten(1)
            if self._compiled:  # plain ops: inductor fuses them itself
                w1a = torch.cat([w1, l1.bias[:, None]], dim=1).to(y.dtype)
                b2 = None if l2.bias is None else l2.bias.to(y.dtype)
                dx = F.linear(F.linear(y, w1a).relu(), w2.to(y.dtype), b2)
            else:
                dx = _UpdateMLP.apply(y, w1, l1.bias, w2, l2.bias)
            if rate < 1.0:
                # Same draws, in the same (b, h, w) order, as torch.rand(b, 1, h, w).
                fire = (torch.rand(n, 1, device=x.device) < rate).to(dx.dtype)
                dx = dx * (fire if rows is None else fire.index_select(0, rows))
            if rows is not None:
                dx = torch.zeros(n, c, dtype=dx.dtype, device=x.device).index_copy(0, rows, dx)
            x = x + dx.view(b, h, w, c).permute(0, 3, 1, 2).to(x.dtype)
            post = _alive(x, self.alive_threshold)
            return x * (pre & post).to(x.dtype)

    def _live_rows(self, pre: torch.Tensor) -> torch.Tensor | None:
        """Rows (cells, in ``b, h, w`` order) whose update can matter, or None to update every cell.

        A cell's update survives only where it was alive before the step, and it can reach another cell only
        through that cell's 3x3 "alive after" max-pool; so cells farther than one cell from every live one are
        skipped exactly. Used on CPU when it skips enough cells to pay for the gather (on GPU dense is cheaper,
        and keeps the step free of host syncs for graphs and compile).
        """
        if self._compiled or pre.device.type != "cpu":
            return None
        need = F.max_pool2d(pre.to(torch.float32), kernel_size=3, stride=1, padding=1).flatten() > 0
        count = int(need.sum())
        if count > self.sparse_below * need.numel():
            return None
        return need.nonzero().squeeze(1)

    def compile_step(self, **compile_kwargs) -> None:
        """Compile the single step (a plain tensor function); the Python step loop stays outside."""
        self._compiled = True
        self._step = torch.compile(self.step, **compile_kwargs)

    def _segment(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for _ in range(n):
            x = self._step(x)
        return x

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
        checkpointed segments of k steps: only each segment's input is stored, the rest is recomputed in
        backward (same values: the fire mask's random state is replayed).
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
        k = self.checkpoint_every
        if k is not None and on_step is None and torch.is_grad_enabled():
            i = free
            while i < steps:
                n = min(k, steps - i)
                x = checkpoint(self._segment, x, n, use_reentrant=False, preserve_rng_state=True)
                i += n
            return x
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
