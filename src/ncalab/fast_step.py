"""The fast path: how ``NCA.step`` computes the update rule that ``NCA.plain_step`` (``ncalab/nca.py``) states.

Same values as the plain step (to float32 rounding), the same fire-mask draws from the same random state, the same
gradients; ``tests/unit/test_fast_path.py`` checks each against ``NCA.plain_step``. Used everywhere a model steps:
training, evaluation, media, the bench. How it differs from the plain step:

- The state is kept channels-last in memory (logical shape still ``B x C x H x W``), so that the perception's
  output is a ``(B*H*W) x K`` matrix without a copy and the two 1x1 convolutions are two matrix products.
- Each operator of a perception is one depthwise convolution with one kernel per channel (3-4x faster on CPU than
  one convolution with ``n_ops`` kernels per channel), its responses a block of columns (op-major; the first
  layer's columns are reordered to match); a constant-one column is appended to the perception output so that
  the first layer's bias rides in its matrix product (no bias pass, and its gradient comes out of the
  weight-gradient product).
- Where every cell is updated (or on GPU, or with a perception that has its own forward), the update network
  (1x1 conv -> ReLU -> 1x1 conv) is one autograd function: two matrix products forward, four backward, no
  separate bias passes. (Recomputing its hidden layer in backward instead of storing it saves memory
  but measured slower on CPU: ``UpdateMLP.recompute_hidden``, off by default.)
- On CPU only the cells whose update can matter go through the update network: those that fire (about half at
  the default fire rate of 0.5) and are within one cell of a live cell (exact: every other cell's update is masked
  away, and it carries no gradient). ``nca.sparse_below`` (default 0.75) is the share of the grid above which
  every cell is updated instead (0: always every cell).
- That step (a perception within its contract, on CPU) is one autograd function, :class:`SparseStep`, with its
  backward written out: each full-grid pass is done once, in the channels-last layout, with none of the copies,
  zero fills and gradient sums that autograd adds between separate ops (measured 1.16-1.29x over separate ops on
  a dense and on a pattern grid, fp32 and bf16, 1 thread). The updates go back to the grid through an inverse
  row map (each cell's row, or a zero row: one gather instead of an ``index_add``); in backward the input
  gradient of the first layer is taken for its K response columns only (not the bias column: an N=48 product
  runs much faster than N=49), the state's own columns are added at the updated rows only, and each operator's
  columns are scattered to the grid straight into a contiguous channels-last buffer for its convolution's
  backward. The weight gradient of the first layer is ``(y.T @ g_h).T`` (faster than ``g_h.T @ y`` here).
- The memory passes of that step around its matrix products are ATen ops. Fused C++ kernels for four of them
  gained 1-7% in fp32 and 10-15% in bf16 (interleaved, docs/performance.md): not enough for a build step, so they
  were removed.
- What that step takes of the parameters (the first layer's reordered columns, the operator kernels with the
  response scale folded in) is derived once per rollout (:func:`step_weights`, passed in by ``NCA.rollout``), not
  once per step: the parameters do not change during a rollout, and autograd sums the steps' gradients first.
- The alive masks are boolean 3x3 dilations of ``alpha > threshold`` (the same booleans as the max-pool).
- ``precision="bf16"`` runs the update network in bfloat16 (AMX / tensor cores), and the perception too on GPU
  (on CPU bf16 depthwise convolutions are slower than float32 ones, so it stays float32 there and its output is
  rounded to bf16); the state itself, the residual sum and the alive masks stay float32, so small updates are not
  rounded away step after step. This is the one place the fast path differs from the plain step by more than
  rounding (tested within a few percent). Gathered rows are padded to few sizes (:func:`padded_rows`), and the
  first layer's ReLU is fused into oneDNN's bf16 matrix product (a bf16 elementwise pass is slow on CPU).
- ``checkpoint_every=k`` checkpoints the rollout in segments of k steps (recompute instead of store):
  :func:`run_checkpointed`.

A perception is used only through the contract written in ``ncalab.perception.Perception``: a single-scale bank
through its depthwise ``operator_weight()``, ``response_scale()``, ``kernel_size``, ``n_ops`` and ``channels``. A
perception with its own ``forward`` (:func:`within_contract` is false) is called as it is, on the whole grid, and
its output (``C*(1 + n_ops)`` columns, channel-major) goes through the same update network, fast (every cell, or
the rows that matter gathered, :class:`GatherRows`): the multi-scale perception
(``ncalab.perception.MultiScalePerception``: pooling, a bank per level and upsampling do not fit the per-operator
convolutions of :class:`SparseStep`) takes this path, in bf16 too (its forward casts its bank to the state's dtype;
on CPU it runs in float32, as every perception does there). ``tests/unit/test_fast_path.py`` checks that path against
``NCA.plain_step`` in values and gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ncalab.perception import Perception

if TYPE_CHECKING:
    from ncalab.nca import NCA

PRECISIONS = ("fp32", "bf16")
ALPHA = 3  # the alpha channel (ncalab.nca.ALPHA; nca imports this module, so it is not imported from there)
_LOW = {"fp32": None, "bf16": torch.bfloat16}


class StepWeights(NamedTuple):
    """What the CPU step (:class:`SparseStep`) takes of the parameters, in the form it uses them. Derived in the
    autograd graph (their gradients flow back to the parameters), once per rollout rather than once per step: each
    derivation is a handful of small ops, forward and backward (measured on a 2-core CPU: 15-30% of a step's time
    on a tiny grid, 5-7% at 36x36, 2-7% at 72x72)."""

    # the first layer, hidden x K, its response columns op-major when the perception's parts come op-major
    first: torch.Tensor
    # the second layer, C x hidden
    second: torch.Tensor
    # one C x 1 x k x k depthwise kernel per operator, the response scale folded in
    operators: tuple[torch.Tensor, ...]


def step_weights(nca: NCA) -> StepWeights | None:
    """:class:`StepWeights` of ``nca`` in the current autograd mode, or None when the step does not use them (a
    perception with its own forward)."""
    p = nca.perception
    if not within_contract(p):
        return None
    c, n_ops, k = p.channels, p.n_ops, p.kernel_size
    weight = p.operator_weight().view(c, n_ops, k, k)
    factor = p.response_scale()
    if factor is not None:  # conv(x, w) * s == conv(x, w * s), to rounding
        weight = weight * factor.to(weight.dtype).view(c, n_ops, 1, 1)
    return StepWeights(
        first_layer(nca, n_ops > 1),
        nca.update[2].weight.flatten(1),
        tuple(weight[:, o : o + 1] for o in range(n_ops)),
    )


def step(nca: NCA, x: torch.Tensor, fire_rate: float, weights: StepWeights | None = None) -> torch.Tensor:
    """``nca.plain_step(x, fire_rate)``, computed as the module docstring says. ``weights``: ``step_weights(nca)``,
    derived once for many steps (a rollout, where the parameters do not change), used by every path of the step;
    what a path needs of them is derived here when not given."""
    low = low_dtype(nca.precision, x)
    ctx = torch.autocast(x.device.type, enabled=False) if low is not None else contextlib.nullcontext()
    with ctx:
        x = x.contiguous(memory_format=torch.channels_last)
        b, c, h, w = x.shape
        n = b * h * w
        pre = alive_cells(x, nca.alive_threshold)
        # Same draws, in the same (b, h, w) order, as the plain step's torch.rand(b, 1, h, w).
        fire = torch.rand(n, 1, device=x.device) < fire_rate if fire_rate < 1.0 else None
        on_cpu = x.device.type == "cpu"
        rows = update_rows(pre, fire, nca.sparse_below) if on_cpu and not nca._compiled else None
        if rows is not None and within_contract(nca.perception):
            return sparse_step(nca, x, pre, rows, low, step_weights(nca) if weights is None else weights)
        # Perception in float32 even for bf16 on CPU: a depthwise convolution is cheap, and bf16 ones run slower.
        parts, op_major = perceive_rows(nca.perception, x, None if on_cpu else low)
        if rows is None:
            m = n
            y = torch.cat([*parts, torch.ones(m, 1, dtype=parts[0].dtype, device=x.device)], dim=1)
            y = y if low is None else y.to(low)
        else:
            m = rows.numel()
            # bf16 rows are padded to few sizes (see padded_rows); fp32 ones need not be.
            y = GatherRows.apply(rows, m if low is None else padded_rows(m), low or parts[0].dtype, *parts)
        l1, l2 = nca.update[0], nca.update[2]
        if weights is None:
            w1, w2 = first_layer(nca, op_major), l2.weight.flatten(1)
        else:  # derived once for the rollout (the same matrices: op_major is n_ops > 1 within the contract)
            w1, w2 = weights.first, weights.second
        if nca._compiled:  # plain ops: inductor fuses them itself
            w1a = torch.cat([w1, l1.bias[:, None]], dim=1).to(y.dtype)
            b2 = None if l2.bias is None else l2.bias.to(y.dtype)
            dx = F.linear(F.linear(y, w1a).relu(), w2.to(y.dtype), b2)
        else:
            dx = UpdateMLP.apply(y, w1, l1.bias, w2, l2.bias)
        dx = dx[:m]
        if rows is None:
            if fire is not None:
                dx = dx * fire.to(dx.dtype)
            x = x + dx.view(b, h, w, c).permute(0, 3, 1, 2).to(x.dtype)
        else:  # only the updated cells change: add their updates in place of a full-grid pass
            cells = x.permute(0, 2, 3, 1).reshape(n, c)  # a view: x is channels-last
            x = cells.index_add(0, rows, dx.to(x.dtype)).view(b, h, w, c).permute(0, 3, 1, 2)
        post = alive_cells(x, nca.alive_threshold)
        return x * (pre & post).to(x.dtype)


def low_dtype(precision: str, x: torch.Tensor) -> torch.dtype | None:
    """The dtype perception and update run in: bf16 when asked for, or inside a bf16/fp16 autocast."""
    low = _LOW[precision]
    if low is None and x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        low = torch.get_autocast_dtype(x.device.type)
    return low


def within_contract(perception: Perception) -> bool:
    """Whether ``perception`` computes its ``forward`` from the contract's parts (``ncalab.perception.Perception``),
    so that the fast path may compute it from them; a subclass with its own ``forward`` is called as it is."""
    return type(perception).forward is Perception.forward


def perceive_rows(
    perception: Perception, x: torch.Tensor, low: torch.dtype | None
) -> tuple[list[torch.Tensor], bool]:
    """The perception as ``(B*H*W) x K_i`` row blocks (channels-last views, no copy), identity first, and whether
    the responses come op-major (one block per operator, each ``C`` wide) rather than channel-major.

    Each operator is its own depthwise convolution (one kernel per channel): on CPU that is 3-4x faster, forward
    and backward, than one convolution with ``n_ops`` kernels per channel.
    """
    xi = x if low is None else x.to(low)
    p = perception
    if within_contract(p):
        c, n, k = p.channels, p.n_ops, p.kernel_size
        weight = p.operator_weight()
        weight = (weight if low is None else weight.to(low)).view(c, n, k, k)
        factor = p.response_scale()
        factor = None if factor is None else factor.to(xi.dtype).view(c, n)
        parts = [xi]
        for o in range(n):
            r = F.conv2d(xi, weight[:, o : o + 1], padding=k // 2, groups=c)
            parts.append(r if factor is None else r * factor[:, o].view(1, c, 1, 1))
        op_major = n > 1
    else:  # a subclass with its own forward: use it as it is
        parts = [p(xi).to(xi.dtype)]
        op_major = False
    rows = x.shape[0] * x.shape[2] * x.shape[3]
    blocks = [
        t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(rows, -1) for t in parts
    ]
    return blocks, op_major


def padded_rows(m: int) -> int:
    """``m`` rounded up to a coarse bucket (1/16 to 1/32 of it, at least 64 rows).

    oneDNN builds a bf16 matrix-product kernel for each new shape (~15 ms on this CPU, more than the product); the
    number of updated cells changes every step, so the rows are padded with zero rows (no bias: they add nothing,
    forward or backward) to one of few sizes that its kernel cache keeps.
    """
    bucket = max(64, 1 << max(m.bit_length() - 5, 0))
    return -(-m // bucket) * bucket


def dilate3(mask: torch.Tensor) -> torch.Tensor:
    """``B x 1 x H x W`` boolean: true where any cell of the 3x3 neighbourhood is (outside the grid: false)."""
    p = F.pad(mask, (1, 1, 1, 1))
    rows = p[..., :-2] | p[..., 1:-1] | p[..., 2:]
    return rows[..., :-2, :] | rows[..., 1:-1, :] | rows[..., 2:, :]


def alive_cells(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``ncalab.nca.alive_mask(x, threshold)``, the same booleans: a 3x3 max-pool of alpha above ``threshold`` is
    alpha above it somewhere in the 3x3 neighbourhood (a boolean dilation, ~10x cheaper than the pool on CPU)."""
    return dilate3(x.detach()[:, ALPHA : ALPHA + 1] > threshold)


def update_rows(pre: torch.Tensor, fire: torch.Tensor | None, sparse_below: float) -> torch.Tensor | None:
    """Rows (cells, in ``b, h, w`` order) whose update can matter, or None to update every cell.

    A cell's update is used only if the cell fires (``fire``; every cell at fire rate 1) and, since it survives
    only where the cell was alive before the step and reaches other cells only through their 3x3 "alive after"
    test, only if the cell is within one cell of a live one. Every other cell's update is masked away, so skipping
    it is exact, in values and gradients. Used on CPU when the rows that matter are at most ``sparse_below`` of the
    grid (with the default fire rate of 0.5 that is about half of a full grid; on GPU every cell is updated,
    which is cheaper there and keeps the step free of host syncs for graphs and compile).
    """
    keep = dilate3(pre).flatten()
    if fire is not None:
        keep = keep & fire.flatten()
    if int(keep.sum()) > sparse_below * keep.numel():
        return None
    return keep.nonzero().squeeze(1)


def first_layer(nca: NCA, op_major: bool) -> torch.Tensor:
    """The first 1x1 layer's weight as a ``hidden x K`` matrix, its response columns reordered op-major when the
    perception's parts come op-major (the layer's own order is channel-major: c0: op0..opN, c1: ...)."""
    w1 = nca.update[0].weight.flatten(1)
    if op_major:
        c = nca.channels
        ops = w1[:, c:].view(-1, c, nca.perception.n_ops).transpose(1, 2).flatten(1)
        w1 = torch.cat([w1[:, :c], ops], dim=1)
    return w1


def sparse_step(
    nca: NCA,
    x: torch.Tensor,
    pre: torch.Tensor,
    rows: torch.Tensor,
    low: torch.dtype | None,
    weights: StepWeights,
):
    """The step on CPU when only ``rows`` are updated and the perception keeps to its contract: one
    :class:`SparseStep` (forward and backward written out), its operator weights (response scale folded in)
    and the update network's weights as inputs, so that autograd takes their gradients through it."""
    l1, l2 = nca.update[0], nca.update[2]
    m = rows.numel()
    inv = torch.full((x.shape[0] * x.shape[2] * x.shape[3],), m, dtype=torch.long, device=x.device)
    inv[rows] = torch.arange(m, device=x.device)
    # One zero row (row m) at least, for the cells that are not updated; bf16 rows padded to few sizes.
    total = m + 1 if low is None else padded_rows(m + 1)
    return SparseStep.apply(
        x,
        pre,
        rows,
        inv,
        total,
        low or x.dtype,
        nca.alive_threshold,
        weights.first,
        l1.bias,
        weights.second,
        l2.bias,
        *weights.operators,
    )


class GatherRows(torch.autograd.Function):
    """``cat([p[rows] for p in parts] + [ones])`` in ``dtype``, zero rows below up to ``total`` rows, in one
    buffer; backward writes the gradient of every part with one ``index_copy_`` (``rows`` are distinct, so
    nothing accumulates: cheaper than the scatter-add of each ``index_select``'s backward)."""

    @staticmethod
    def forward(ctx, rows, total, dtype, *parts):
        m = rows.numel()
        widths = [p.shape[1] for p in parts]
        k = sum(widths)
        y = torch.empty(total, k + 1, dtype=dtype, device=rows.device)
        col = 0
        for p, w in zip(parts, widths, strict=True):
            y[:m, col : col + w] = p.index_select(0, rows)
            col += w
        y[:m, k] = 1.0
        y[m:] = 0.0
        ctx.save_for_backward(rows)
        ctx.n, ctx.widths, ctx.dtype = parts[0].shape[0], widths, parts[0].dtype
        return y

    @staticmethod
    def backward(ctx, g):
        (rows,) = ctx.saved_tensors
        k = sum(ctx.widths)
        full = torch.zeros(ctx.n, k, dtype=ctx.dtype, device=g.device)
        full.index_copy_(0, rows, g[: rows.numel(), :k].to(ctx.dtype))
        grads, col = [], 0
        for w in ctx.widths:
            grads.append(full[:, col : col + w])
            col += w
        return None, None, None, *grads


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


class SparseStep(torch.autograd.Function):
    """One step when only the cells ``rows`` go through the update network, forward and backward written out
    (each full-grid pass once, in the channels-last layout, none for what autograd would add or copy).

    Forward: one depthwise convolution per operator (``op_w``: ``C x 1 x k x k`` each), the rows of the state and
    of each response gathered into one ``total x (K+1)`` matrix (a ones column carries the first bias; rows from
    ``m`` on are zero), the update network (on CPU in bf16: oneDNN's matrix product with the ReLU fused), the
    updates scattered to every cell through ``inv`` (each cell's row, or the zero row ``m``) and added to the
    state, then the alive masks, in place. Backward: the mask, the gathered rows of the gradient, the update
    network's four products (the input gradient only for the K response columns), the state part of it added at
    ``rows``, and each operator's part scattered to the grid and taken back through its convolution (weights'
    gradients too when they are trained).
    """

    @staticmethod
    def forward(ctx, x, pre, rows, inv, total, dtype, threshold, w1, b1, w2, b2, *op_w):
        b, c, hh, ww = x.shape
        n, m = b * hh * ww, rows.numel()
        cells = x.permute(0, 2, 3, 1).reshape(n, c)  # a view: x is channels-last
        parts = [cells]
        for wo in op_w:
            r = F.conv2d(x, wo, padding=wo.shape[-1] // 2, groups=c)
            parts.append(r.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n, c))
        k = c * len(parts)
        y = torch.empty(total, k + 1, dtype=dtype, device=x.device)
        for i, p in enumerate(parts):
            if p.dtype == dtype:  # straight into the matrix's columns
                torch.index_select(p, 0, rows, out=y[:m, i * c : (i + 1) * c])
            else:
                y[:m, i * c : (i + 1) * c] = p.index_select(0, rows)
        y[:m, k] = 1.0
        y[m:] = 0.0
        w1a = torch.cat([w1, b1[:, None]], dim=1).to(dtype)
        w2c = w2.to(dtype)
        b2c = None if b2 is None else b2.to(dtype)
        if dtype == torch.bfloat16 and _onednn(y):
            # ReLU fused into the product: bf16 elementwise passes are slow on CPU (measured ~1 ms of 2 saved).
            h = torch.ops.mkldnn._linear_pointwise(y, w1a, None, "relu", [], "")
            out = torch.ops.mkldnn._linear_pointwise(h, w2c, b2c, "none", [], "")
        else:
            h = torch.mm(y, w1a.t()).relu_()
            out = torch.mm(h, w2c.t()) if b2c is None else torch.addmm(b2c, h, w2c.t())
        out = out.to(x.dtype)
        out[m:] = 0.0  # the zero row of the cells that are not updated (the padded rows hold b2)
        new = out.index_select(0, inv).add_(cells)  # x + dx, every cell, channels-last
        new = new.view(b, hh, ww, c).permute(0, 3, 1, 2)
        keep = pre & alive_cells(new, threshold)
        new.mul_(keep.to(new.dtype))
        trained = any(ctx.needs_input_grad[11:])
        ctx.save_for_backward(x if trained else None, rows, inv, y, w1a, w2c, h, keep, *op_w)
        ctx.dtypes = (w1.dtype, b1.dtype, w2.dtype, None if b2 is None else b2.dtype)
        return new

    @staticmethod
    def backward(ctx, g_out):
        x, rows, inv, y, w1a, w2c, h, keep, *op_w = ctx.saved_tensors
        b, c, hh, ww = g_out.shape
        n, m = b * hh * ww, rows.numel()
        gx = torch.empty(
            g_out.shape, dtype=g_out.dtype, device=g_out.device, memory_format=torch.channels_last
        )
        torch.mul(g_out, keep, out=gx)
        g_cells = gx.permute(0, 2, 3, 1).reshape(n, c)  # a view
        g = torch.empty(y.shape[0], c, dtype=y.dtype, device=y.device)
        if g.dtype == g_cells.dtype:
            torch.index_select(g_cells, 0, rows, out=g[:m])
        else:
            g[:m] = g_cells.index_select(0, rows)
        g[m:] = 0.0
        g_w2 = torch.mm(g.t(), h)
        g_b2 = g.sum(0) if ctx.needs_input_grad[10] else None
        g_h = torch.mm(g, w2c)
        torch.ops.aten.threshold_backward.grad_input(g_h, h, 0.0, grad_input=g_h)  # ReLU backward, in place
        del h
        g_w1a = torch.mm(y.t(), g_h).t()
        need_x = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[11:]
        g_ws = [None] * len(op_w)
        if need_x or any(need_w):
            k = c * (1 + len(op_w))
            g_y = torch.mm(g_h, w1a[:, :k])  # rows from m on are zero: so is g there
            del g_h
            g_y = g_y.to(gx.dtype)
            if need_x:  # the state's own columns, at rows (every other cell gathers the zero row m)
                g_cells.add_(g_y[:, :c].index_select(0, inv))
            # each operator's columns scattered to the grid
            g_ops = [g_y[:, (o + 1) * c : (o + 2) * c].index_select(0, inv) for o in range(len(op_w))]
            for o, wo in enumerate(op_w):
                g_r = g_ops[o].view(b, hh, ww, c).permute(0, 3, 1, 2)
                pad = wo.shape[-1] // 2
                g_in, g_ws[o], _ = torch.ops.aten.convolution_backward(
                    g_r,
                    gx if x is None else x,  # only its shape is read when the weight takes no gradient
                    wo,
                    None,
                    (1, 1),
                    (pad, pad),
                    (1, 1),
                    False,
                    (0, 0),
                    c,
                    (need_x, need_w[o], False),
                )
                if need_x:
                    gx.add_(g_in)
        d_w1, d_b1, d_w2, d_b2 = ctx.dtypes
        g_b2 = None if g_b2 is None else g_b2.to(d_b2)
        g_w1, g_b1 = g_w1a[:, :-1].to(d_w1), g_w1a[:, -1].to(d_b1)
        return (
            gx if need_x else None,
            None,  # pre
            None,  # rows
            None,  # inv
            None,  # total
            None,  # dtype
            None,  # threshold
            g_w1,
            g_b1,
            g_w2.to(d_w2),
            g_b2,
            *g_ws,
        )


def _onednn(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and torch.backends.mkldnn.is_available()


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
