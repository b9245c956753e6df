"""The fast path: how ``NCA.step`` computes the update rule that ``NCA.plain_step`` (``ncalab/nca.py``) states.

Same values as the plain step (to float32 rounding), the same fire-mask draws from the same random state, the same
gradients; ``tests/test_fast_path.py`` checks each against ``NCA.plain_step``. Used everywhere a model steps:
training, evaluation, media, the bench. How it differs from the plain step:

- The state is kept channels-last in memory (logical shape still ``B x C x H x W``), so that the perception's
  output is a ``(B*H*W) x K`` matrix without a copy and the two 1x1 convolutions are two matrix products.
- All operators of a perception are one depthwise convolution; a constant-one column is appended to the
  perception output so that the first layer's bias rides in its matrix product (no bias pass, and its gradient
  comes out of the weight-gradient product).
- The update network (1x1 conv -> ReLU -> 1x1 conv) is one autograd function: two matrix products forward, four
  backward, no separate bias passes. (Recomputing its hidden layer in backward instead of storing it saves memory
  but measured slower on CPU: ``UpdateMLP.recompute_hidden``, off by default.)
- On CPU, when at most ``sparse_below`` of the grid is within one cell of a live cell, only those cells are
  perceived and updated (exact: every other cell's update is masked away).
- ``precision="bf16"`` runs perception and update in bfloat16 (AMX / tensor cores); the state itself, the
  residual sum and the alive masks stay float32, so small updates are not rounded away step after step. This is
  the one place the fast path differs from the plain step by more than rounding (tested within a few percent).
- ``checkpoint_every=k`` checkpoints the rollout in segments of k steps (recompute instead of store):
  :func:`run_checkpointed`.

A perception is used only through the contract written in ``ncalab.perception.Perception``: its depthwise
``operator_weight()``, ``scale_responses``, ``kernel_size`` and ``channels``; a subclass that overrides
``forward`` is outside the contract and is called as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ncalab.perception import Perception

if TYPE_CHECKING:
    from ncalab.nca import NCA

PRECISIONS = ("fp32", "bf16")
_LOW = {"fp32": None, "bf16": torch.bfloat16}


def step(nca: NCA, x: torch.Tensor, fire_rate: float) -> torch.Tensor:
    """``nca.plain_step(x, fire_rate)``, computed as the module docstring says."""
    low = low_dtype(nca.precision, x)
    ctx = torch.autocast(x.device.type, enabled=False) if low is not None else contextlib.nullcontext()
    with ctx:
        x = x.contiguous(memory_format=torch.channels_last)
        b, c, h, w = x.shape
        n = b * h * w
        pre = nca.alive(x)
        rows = None if nca._compiled or x.device.type != "cpu" else live_rows(pre, nca.sparse_below)
        parts = perceive_rows(nca.perception, x, low)
        if rows is not None:
            parts = [t.index_select(0, rows) for t in parts]
        m = parts[0].shape[0]
        y = torch.cat([*parts, torch.ones(m, 1, dtype=parts[0].dtype, device=x.device)], dim=1)
        l1, l2 = nca.update[0], nca.update[2]
        w1, w2 = l1.weight.flatten(1), l2.weight.flatten(1)
        if nca._compiled:  # plain ops: inductor fuses them itself
            w1a = torch.cat([w1, l1.bias[:, None]], dim=1).to(y.dtype)
            b2 = None if l2.bias is None else l2.bias.to(y.dtype)
            dx = F.linear(F.linear(y, w1a).relu(), w2.to(y.dtype), b2)
        else:
            dx = UpdateMLP.apply(y, w1, l1.bias, w2, l2.bias)
        if fire_rate < 1.0:
            # Same draws, in the same (b, h, w) order, as the plain step's torch.rand(b, 1, h, w).
            fire = (torch.rand(n, 1, device=x.device) < fire_rate).to(dx.dtype)
            dx = dx * (fire if rows is None else fire.index_select(0, rows))
        if rows is not None:
            dx = torch.zeros(n, c, dtype=dx.dtype, device=x.device).index_copy(0, rows, dx)
        x = x + dx.view(b, h, w, c).permute(0, 3, 1, 2).to(x.dtype)
        post = nca.alive(x)
        return x * (pre & post).to(x.dtype)


def low_dtype(precision: str, x: torch.Tensor) -> torch.dtype | None:
    """The dtype perception and update run in: bf16 when asked for, or inside a bf16/fp16 autocast."""
    low = _LOW[precision]
    if low is None and x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        low = torch.get_autocast_dtype(x.device.type)
    return low


def perceive_rows(perception: Perception, x: torch.Tensor, low: torch.dtype | None) -> list[torch.Tensor]:
    """The perception as ``(B*H*W) x K_i`` row blocks (channels-last views, no copy), identity first."""
    xi = x if low is None else x.to(low)
    p = perception
    if type(p).forward is Perception.forward:
        weight = p.operator_weight()
        weight = weight if low is None else weight.to(low)
        responses = p.scale_responses(F.conv2d(xi, weight, padding=p.kernel_size // 2, groups=p.channels))
        parts = [xi, responses.to(xi.dtype)]
    else:  # a subclass with its own forward: use it as it is
        parts = [p(xi).to(xi.dtype)]
    rows = x.shape[0] * x.shape[2] * x.shape[3]
    return [
        t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(rows, -1) for t in parts
    ]


def live_rows(pre: torch.Tensor, sparse_below: float) -> torch.Tensor | None:
    """Rows (cells, in ``b, h, w`` order) whose update can matter, or None to update every cell.

    A cell's update survives only where it was alive before the step, and it can reach another cell only
    through that cell's 3x3 "alive after" max-pool; so cells farther than one cell from every live one are
    skipped exactly. Used on CPU when it skips enough cells to pay for the gather (on GPU dense is cheaper,
    and keeps the step free of host syncs for graphs and compile).
    """
    need = F.max_pool2d(pre.to(torch.float32), kernel_size=3, stride=1, padding=1).flatten() > 0
    count = int(need.sum())
    if count > sparse_below * need.numel():
        return None
    return need.nonzero().squeeze(1)


class UpdateMLP(torch.autograd.Function):
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
        if UpdateMLP.recompute_hidden:
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


def run_checkpointed(
    step_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int, every: int
) -> torch.Tensor:
    """``steps`` calls of ``step_fn`` in checkpointed segments of ``every`` steps: only each segment's input is
    stored, the rest is recomputed in backward (same values: the fire mask's random state is replayed)."""
    done = 0
    while done < steps:
        n = min(every, steps - done)
        x = checkpoint(_segment, step_fn, x, n, use_reentrant=False, preserve_rng_state=True)
        done += n
    return x


def _segment(step_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        x = step_fn(x)
    return x
