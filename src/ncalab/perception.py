"""How a cell perceives its neighbourhood.

Every perception maps a state ``B x C x H x W`` to ``B x C*(1 + n_ops) x H x W``: the cell's own state (the
identity channel) followed by ``n_ops`` responses per channel (depthwise: a channel's responses read that channel
only). Angles are measured in array coordinates: 0 degrees points along +column (x), 90 degrees along +row (y,
downwards on screen).

Fixed perceptions are banks of named operators (:data:`OPERATORS`); ``sobel3``, ``sobel5`` and ``sobel5_diag``
are named banks (:data:`BANKS`) of the same mechanism as ``perception=operators perception.ops=[...]``.

The operators and how each is normalised (kernels are cross-correlations, as ``F.conv2d`` applies them):

=================  =====  ==============================================================  =========================
name               size   kernel                                                          normalisation
=================  =====  ==============================================================  =========================
``sobel3_x/_y``    3x3    [1,2,1] (smoothing) x [-1,0,1] (derivative) / 8                 unit ramp along x/y reads 1
``sobel3_45/_135`` 3x3    ``sobel3_x`` rotated by 45/135 degrees (ring shift)             unit ramp along 45/135 reads 1
``sobel5_x/_y``    5x5    [1,4,6,4,1] x [-1,-2,0,2,1] / 128                               unit ramp along x/y reads 1
``sobel5_45/_135`` 5x5    ``sobel5_x`` rotated by 45/135 degrees (ring shift)             unit ramp along 45/135 reads 1
``scharr3_x/_y``   3x3    [3,10,3] x [-1,0,1] / 32                                        unit ramp along x/y reads 1
``sobel3_dil2_x``  5x5    ``sobel3_x`` with dilation 2 (taps 2 cells apart) / 2 (= /16)   unit ramp along x reads 1
``sobel3_dil2_y``  5x5    its transpose                                                   unit ramp along y reads 1
``laplace3``       3x3    [[1,2,1],[2,-12,2],[1,2,1]] / 4 (isotropic 9-point stencil)     (x^2+y^2)/2 reads 2
``laplace5``       5x5    (s x d + d x s) / 64, s=[1,4,6,4,1], d=[1,0,-2,0,1]             (x^2+y^2)/2 reads 2
``gauss3``         3x3    [1,2,1] x [1,2,1] / 16 (binomial, sigma = 0.71 cells)           sums to 1
``gauss5``         5x5    [1,4,6,4,1] x [1,4,6,4,1] / 256 (binomial, sigma = 1 cell)      sums to 1
=================  =====  ==============================================================  =========================

Derivatives read 0 on a constant and on a ramp perpendicular to their direction; both Laplacians read the continuous
Laplacian of any quadratic exactly (2 on the paraboloid (x^2+y^2)/2, 0 on constants and ramps); the smoothing
kernels read a constant as itself. The rotated diagonals are not linear combinations of the x and y kernels.

A bank of mixed kernel sizes pads its smaller kernels with zeros, centred, to its largest size: one depthwise
convolution of that size computes every response, and a 3x3 operator reads in a 5x5 bank exactly what it reads
alone (its extra taps are zero; the cost is that of the 5x5 convolution). The dilated Sobel is stored the same
way: a 5x5 kernel with 9 non-zero taps (the 5x5 receptive field with the 3x3 operator's taps).

:class:`MultiScalePerception` (``perception=multiscale``, the multi-scale perception of DyNCA, CVPR 2023) reads
one such bank at several scales: level ``l`` (0 .. levels-1) is the state average-pooled by ``2**l`` (blocks
aligned at the grid's top-left corner; cells past the grid's edge count as empty, zero, as the convolutions' zero
padding has it, so any grid size works), the bank applied there with zero padding, and the responses brought
back to every cell of the grid (bilinear, PyTorch's ``align_corners=False``, or nearest), cut to exactly
``H x W``. Level 0 is the bank at the grid's own scale. The coarsest level must fit the grid:
``2**(levels-1) <= min(H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ncalab.errors import ConfigError

__all__ = [
    "BANKS",
    "OPERATORS",
    "OPERATOR_SETS",
    "FixedPerception",
    "MULTISCALE_OPS",
    "MultiScalePerception",
    "Operator",
    "UPSAMPLE_MODES",
    "Perception",
    "ScaledPerception",
    "TrainablePerception",
    "bank_kernels",
    "operator_kernels",
    "ramp_response",
    "resolve_ops",
]


def ramp_response(kernel: torch.Tensor, angle_deg: float) -> float:
    """Response of ``kernel`` (cross-correlation, as ``F.conv2d``) to a unit-slope ramp rising along ``angle_deg``."""
    k = kernel.shape[-1]
    offsets = torch.arange(k, dtype=torch.float64) - k // 2
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    theta = math.radians(angle_deg)
    ramp = dx * math.cos(theta) + dy * math.sin(theta)
    return float((kernel.double() * ramp).sum())


def _normalised(kernel: torch.Tensor, angle_deg: float) -> torch.Tensor:
    return kernel / ramp_response(kernel, angle_deg)


def _ring(size: int, radius: int) -> list[tuple[int, int]]:
    """Cells of the square ring at ``radius`` around the centre, clockwise from its top-left corner."""
    c = size // 2
    lo, hi = c - radius, c + radius
    top = [(lo, j) for j in range(lo, hi)]
    right = [(i, hi) for i in range(lo, hi)]
    bottom = [(hi, j) for j in range(hi, lo, -1)]
    left = [(i, lo) for i in range(hi, lo, -1)]
    return top + right + bottom + left


def _rotate_45(kernel: torch.Tensor, times: int = 1) -> torch.Tensor:
    """Rotate a square kernel by ``times`` x 45 degrees by shifting each ring, as compass operators are built.

    The rotated kernel is not a linear combination of the x and y kernels, at 3x3 or at 5x5 (tests check the rank).
    """
    size = kernel.shape[-1]
    out = kernel.clone()
    for radius in range(1, size // 2 + 1):
        cells = _ring(size, radius)
        shift = radius * times  # a ring of radius r has 8r cells; 45 degrees is r of them
        values = [kernel[i, j] for i, j in cells]
        for n, (i, j) in enumerate(cells):
            out[i, j] = values[(n - shift) % len(cells)]
    return out


# --- the operators --------------------------------------------------------------------------------------------


def _sobel3_x() -> torch.Tensor:
    return torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0])) / 8.0


def _sobel5_x() -> torch.Tensor:
    return (
        torch.outer(torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]), torch.tensor([-1.0, -2.0, 0.0, 2.0, 1.0]))
        / 128.0
    )


def _scharr3_x() -> torch.Tensor:
    return torch.outer(torch.tensor([3.0, 10.0, 3.0]), torch.tensor([-1.0, 0.0, 1.0])) / 32.0


def _sobel3_dil2_x() -> torch.Tensor:
    return (
        torch.outer(torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0]), torch.tensor([-1.0, 0.0, 0.0, 0.0, 1.0])) / 16.0
    )


def _laplace3() -> torch.Tensor:
    return torch.tensor([[1.0, 2.0, 1.0], [2.0, -12.0, 2.0], [1.0, 2.0, 1.0]]) / 4.0


def _laplace5() -> torch.Tensor:
    s = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    d = torch.tensor(
        [1.0, 0.0, -2.0, 0.0, 1.0]
    )  # [1,-2,1] smoothed by [1,2,1]: the second difference over 2 cells
    return (torch.outer(s, d) + torch.outer(d, s)) / 64.0


def _gauss(weights: list[float]) -> Callable[[], torch.Tensor]:
    def make() -> torch.Tensor:
        w = torch.tensor(weights)
        return torch.outer(w, w) / float(w.sum()) ** 2

    return make


def _transposed(make: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    return lambda: make().T.contiguous()


def _diagonal(make: Callable[[], torch.Tensor], times: int, angle: float) -> Callable[[], torch.Tensor]:
    return lambda: _normalised(_rotate_45(make(), times), angle)


@dataclass(frozen=True)
class Operator:
    """One named fixed operator: its kernel, what it measures and how it is normalised (module docstring)."""

    name: str
    kind: str  # "derivative" | "laplacian" | "smoothing"
    make: Callable[[], torch.Tensor]
    angle: float | None = None  # derivatives: the direction along which a unit ramp reads 1 (degrees)

    def kernel(self) -> torch.Tensor:
        """The ``k x k`` float32 kernel (a new tensor on every call)."""
        return self.make()

    @property
    def size(self) -> int:
        return int(self.make().shape[-1])


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator("sobel3_x", "derivative", _sobel3_x, 0.0),
        Operator("sobel3_y", "derivative", _transposed(_sobel3_x), 90.0),
        Operator("sobel3_45", "derivative", _diagonal(_sobel3_x, 1, 45.0), 45.0),
        Operator("sobel3_135", "derivative", _diagonal(_sobel3_x, 3, 135.0), 135.0),
        Operator("sobel5_x", "derivative", _sobel5_x, 0.0),
        Operator("sobel5_y", "derivative", _transposed(_sobel5_x), 90.0),
        Operator("sobel5_45", "derivative", _diagonal(_sobel5_x, 1, 45.0), 45.0),
        Operator("sobel5_135", "derivative", _diagonal(_sobel5_x, 3, 135.0), 135.0),
        Operator("scharr3_x", "derivative", _scharr3_x, 0.0),
        Operator("scharr3_y", "derivative", _transposed(_scharr3_x), 90.0),
        Operator("sobel3_dil2_x", "derivative", _sobel3_dil2_x, 0.0),
        Operator("sobel3_dil2_y", "derivative", _transposed(_sobel3_dil2_x), 90.0),
        Operator("laplace3", "laplacian", _laplace3),
        Operator("laplace5", "laplacian", _laplace5),
        Operator("gauss3", "smoothing", _gauss([1.0, 2.0, 1.0])),
        Operator("gauss5", "smoothing", _gauss([1.0, 4.0, 6.0, 4.0, 1.0])),
    )
}
# What a Laplacian reads on the unit paraboloid (x^2 + y^2) / 2: its continuous Laplacian.
PARABOLOID_LAPLACIAN = 2.0

# The named banks: the fixed perceptions of the source, as lists of operators.
BANKS: dict[str, tuple[str, ...]] = {
    "sobel3": ("sobel3_x", "sobel3_y"),
    "sobel5": ("sobel5_x", "sobel5_y"),
    "sobel5_diag": ("sobel5_x", "sobel5_y", "sobel5_45", "sobel5_135"),
}


def resolve_ops(ops: Sequence[str] | None = None, operators: str | None = None) -> tuple[str, ...]:
    """The operator names of a bank given as a list (``ops``) or by a bank's name (``operators``).

    Raises :class:`ConfigError` naming the key at fault and the names that would be accepted.
    """
    if ops is not None and operators is not None:
        raise ConfigError(
            f"perception: give ops (a list of operators) or operators (a bank name), not both; "
            f"got ops={ops!r}, operators={operators!r}"
        )
    if ops is None:
        bank = "sobel3" if operators is None else operators
        if not isinstance(bank, str) or bank not in BANKS:
            raise ConfigError(
                f"perception.operators={bank!r} is not a named bank; known banks: {', '.join(BANKS)} "
                f"(or give perception.ops=[...] from the operators {', '.join(OPERATORS)})"
            )
        return BANKS[bank]
    if isinstance(ops, str) or not isinstance(ops, Sequence) or not len(ops):
        raise ConfigError(
            f"perception.ops={ops!r} must be a non-empty list of operator names, e.g. [sobel3_x,sobel3_y,laplace3]"
        )
    names = tuple(ops)
    unknown = [o for o in names if not isinstance(o, str) or o not in OPERATORS]
    if unknown:
        raise ConfigError(
            f"perception.ops: unknown operator{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; known: {', '.join(OPERATORS)}"
        )
    repeated = sorted({o for o in names if names.count(o) > 1})
    if repeated:
        raise ConfigError(f"perception.ops names {', '.join(repeated)} more than once; each operator once")
    return names


def bank_kernels(ops: Sequence[str]) -> torch.Tensor:
    """The ``n x k x k`` kernels of the named operators, in order, each zero-padded (centred) to the largest size."""
    kernels = [OPERATORS[name].kernel() for name in resolve_ops(ops)]
    size = max(k.shape[-1] for k in kernels)
    return torch.stack([F.pad(k, [(size - k.shape[-1]) // 2] * 4) for k in kernels])


def _bank(name: str) -> Callable[[], torch.Tensor]:
    return lambda: bank_kernels(BANKS[name])


def sobel3() -> torch.Tensor:
    """3x3 Sobel x, y; divided by 8 so that a unit ramp reads 1."""
    return bank_kernels(BANKS["sobel3"])


def sobel5() -> torch.Tensor:
    """5x5 Sobel x, y: smoothing [1,4,6,4,1] x derivative [-1,-2,0,2,1], divided by 128."""
    return bank_kernels(BANKS["sobel5"])


def sobel5_diag() -> torch.Tensor:
    """5x5 Sobel at 0, 90, 45 and 135 degrees; the diagonals are the x kernel rotated and re-normalised."""
    return bank_kernels(BANKS["sobel5_diag"])


# The named banks' kernels, and the direction each of their operators measures (degrees, array coordinates).
OPERATOR_SETS: dict[str, Callable[[], torch.Tensor]] = {name: _bank(name) for name in BANKS}
OPERATOR_ANGLES = {name: tuple(OPERATORS[o].angle for o in ops) for name, ops in BANKS.items()}


def operator_kernels(name: str, kernel_size: int | None = None, n_ops: int | None = None) -> torch.Tensor:
    """The ``n_ops x k x k`` operator kernels of the named bank ``name``.

    ``name="sobel"`` picks the Sobel bank that matches ``kernel_size`` and ``n_ops`` (3x3 or 5x5, 2 or 4
    operators), which is how trainable kernels are initialised.
    """
    if name == "sobel":
        k = kernel_size or 3
        n = n_ops or 2
        if k == 3 and n == 2:
            name = "sobel3"
        elif k == 5 and n == 2:
            name = "sobel5"
        elif k == 5 and n == 4:
            name = "sobel5_diag"
        else:
            raise ValueError(
                f"init='sobel' has no kernel set for kernel_size={k}, n_ops={n}; "
                "accepted: (3, 2), (5, 2), (5, 4), or init='random' for any size"
            )
    if name not in OPERATOR_SETS:
        raise ConfigError(f"unknown operator set {name!r}; accepted: {', '.join(sorted(OPERATOR_SETS))}")
    return OPERATOR_SETS[name]()


# --- perceptions ------------------------------------------------------------------------------------------------


# The perception classes, by ``_target_`` (``module.Class``): every subclass of :class:`Perception` registers itself
# when its module is imported (ncalab's own when ncalab.perception is). Checkpoints are rebuilt from these only: the
# name a checkpoint gives is looked up here, never imported (ncalab.checkpoint.build_perception).
REGISTRY: dict[str, type[Perception]] = {}


class Perception(nn.Module):
    """The perception contract: what a perception gives the rest of ncalab, and all that the rest relies on.

    Users: the NCA's fast path (``ncalab.nca``), the demo export (``ncalab.demo``), the exported-model reader
    (``ncalab.exported``), checkpoint rebuilding and checks (``ncalab.checkpoint``), logging and the bench.

    Every perception gives:

    - ``channels`` (C), ``n_ops`` (responses per channel) and ``out_channels = C * (1 + n_ops)``: its output is
      the state itself followed by the ``C*n_ops`` responses, channel-major (response ``c*n_ops + o`` is the
      ``o``-th of channel ``c``, and reads channel ``c`` only), which is the order the update network's first
      layer takes them in.
    - ``name``: a label for logs, summaries and the demo page; never looked up.
    - ``ops``: the names of its fixed operators (:data:`OPERATORS`), or ``()`` when its kernels are learned.
    - ``check_grid(height, width)``: raises :class:`ncalab.errors.ConfigError` naming the setting when the
      perception cannot read a grid of that size (called where the grid is first known, and by ``forward``);
      nothing for a single-scale bank, which reads any grid.
    - ``response_scale()``: ``None`` (responses used as they come) or the factor, one per response
      (``C*n_ops``, same order), that multiplies them; ``scale_responses(r)`` applies it (``r * factor``).
      Override ``response_scale``; override ``scale_responses`` too only to compute the same product faster in
      ``forward`` (the fast path and the demo export read ``response_scale()`` itself).

    A single-scale depthwise bank (every perception that keeps this class's ``forward``) also gives:

    - ``kernel_size`` (k, odd) and ``operator_weight()``: the depthwise weight ``C*n_ops x 1 x k x k``,
      channel-major (row ``c*n_ops + o`` is operator ``o`` on channel ``c``), applied with zero padding ``k // 2``
      and ``groups=C``.
    - ``forward(x) = cat([x, scale_responses(depthwise_conv(x, operator_weight()))])``. The fast path computes
      exactly this from the parts above (one operator at a time, in bfloat16 when asked), the demo export writes
      those parts, and the bench's baseline reads them.

    A multi-scale perception (:class:`MultiScalePerception`) is not one depthwise bank at one scale: it has its
    own ``forward`` (pool, bank, upsample per level) and gives instead ``levels``, ``upsample``, ``n_bank`` (the
    operators of its bank, ``n_ops = levels * n_bank``: per channel, level 0's responses, then level 1's, ...)
    and ``bank_weight()`` (the bank's depthwise weight ``C*n_bank x 1 x k x k``, applied at every level;
    ``kernel_size`` is its k). Its ``operator_weight()`` refuses, naming what to read instead. The fast path calls
    its ``forward`` as it is (and the update network fast); the demo export writes the bank and the levels, and
    the page computes the levels itself; the bench's baseline calls its ``forward``.

    Any other subclass that overrides ``forward`` is outside the contract: the NCA calls it as it is, the demo
    cannot export it.

    A new strategy is one subclass (``operator_weight()``, optionally ``response_scale()``) plus one config file in
    ``conf/perception/``: defining the subclass registers it (:data:`REGISTRY`), so checkpoints naming it rebuild,
    and the bench and the tests read ``conf/perception/`` (docs/perception.md).
    """

    ops: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every subclass, once its module is imported, is a perception a checkpoint may name (REGISTRY).
        super().__init_subclass__(**kwargs)
        REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls

    def __init__(self, channels: int, n_ops: int, kernel_size: int, name: str | None = None):
        super().__init__()
        self.name = name or type(self).__name__
        if channels < 4:
            raise ValueError(f"channels must be >= 4 (RGBA + hidden), got {channels}")
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.channels = channels
        self.n_ops = n_ops
        self.kernel_size = kernel_size

    @property
    def out_channels(self) -> int:
        return self.channels * (1 + self.n_ops)

    def operator_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def response_scale(self) -> torch.Tensor | None:
        return None

    def scale_responses(self, responses: torch.Tensor) -> torch.Tensor:
        factor = self.response_scale()
        return responses if factor is None else responses * factor.view(1, -1, 1, 1)

    def check_grid(self, height: int, width: int) -> None:
        """Raise :class:`ConfigError` when this perception cannot read a ``height x width`` grid (never here)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zero padding: outside the grid is empty space, like the padded target.
        responses = F.conv2d(x, self.operator_weight(), padding=self.kernel_size // 2, groups=self.channels)
        return torch.cat([x, self.scale_responses(responses)], dim=1)

    def extra_repr(self) -> str:
        ops = f", ops={','.join(self.ops)}" if self.ops else ""
        return f"name={self.name}, channels={self.channels}, n_ops={self.n_ops}, kernel_size={self.kernel_size}{ops}"


def _depthwise(kernels: torch.Tensor, channels: int) -> torch.Tensor:
    """``n x k x k`` kernels -> depthwise weight ``C*n x 1 x k x k`` (each channel gets all n operators)."""
    n, k, _ = kernels.shape
    return kernels.repeat(channels, 1, 1).reshape(channels * n, 1, k, k).contiguous()


class FixedPerception(Perception):
    """Identity + a bank of fixed named operators (:data:`OPERATORS`); the kernels are a buffer, never trained.

    ``ops``: the operators, in response order (``perception=operators perception.ops=[sobel3_x,sobel3_y,laplace3]``).
    ``operators``: instead, the name of a bank (:data:`BANKS`: ``sobel3``, ``sobel5``, ``sobel5_diag``), as configs
    and checkpoints written before ``ops`` existed give it; ``FixedPerception(16, "sobel3")`` is
    ``FixedPerception(16, ops=["sobel3_x", "sobel3_y"])``, bit for bit. Neither: ``sobel3``.
    Kernels of mixed sizes are zero-padded, centred, to the largest (module docstring).
    """

    def __init__(
        self,
        channels: int = 16,
        operators: str | None = None,
        ops: Sequence[str] | None = None,
        name: str | None = None,
    ):
        if ops is None and operators is None:
            operators = "sobel3"
        names = resolve_ops(ops, operators)
        kernels = bank_kernels(names)
        default_name = operators if operators is not None else "+".join(names)
        super().__init__(channels, n_ops=len(names), kernel_size=kernels.shape[-1], name=name or default_name)
        self.ops = names
        self.operators = operators
        self.register_buffer("weight", _depthwise(kernels, channels))

    def operator_weight(self) -> torch.Tensor:
        return self.weight


class TrainablePerception(Perception):
    """Identity + trainable depthwise kernels, ``n_ops`` per channel, initialised as Sobel or at random."""

    def __init__(
        self,
        channels: int = 16,
        kernel_size: int = 3,
        n_ops: int = 2,
        init: str = "sobel",
        name: str | None = None,
    ):
        super().__init__(channels, n_ops=n_ops, kernel_size=kernel_size, name=name)
        if n_ops < 1:
            raise ValueError(f"n_ops must be >= 1, got {n_ops}")
        if init == "random":
            kernels = torch.randn(n_ops, kernel_size, kernel_size) / kernel_size**2
        elif init == "sobel" or init in OPERATOR_SETS:
            kernels = operator_kernels(init, kernel_size, n_ops)
            if kernels.shape != (n_ops, kernel_size, kernel_size):
                raise ValueError(
                    f"init={init!r} gives {tuple(kernels.shape)} kernels, not ({n_ops}, {kernel_size}, {kernel_size})"
                )
        else:
            raise ValueError(
                f"unknown init {init!r}; accepted: sobel, random, {', '.join(sorted(OPERATOR_SETS))}"
            )
        self.init = init
        self.weight = nn.Parameter(_depthwise(kernels, channels))

    def operator_weight(self) -> torch.Tensor:
        return self.weight


class ScaledPerception(TrainablePerception):
    """Trainable Sobel-initialised kernels whose responses are multiplied by a trainable scale factor.

    ``scale="per_op"`` learns one factor per operator, ``scale="scalar"`` one for all.
    """

    def __init__(
        self,
        channels: int = 16,
        kernel_size: int = 3,
        n_ops: int = 2,
        init: str = "sobel",
        scale: str = "per_op",
        scale_init: float = 1.0,
        name: str | None = None,
    ):
        super().__init__(channels, kernel_size=kernel_size, n_ops=n_ops, init=init, name=name)
        if scale not in ("per_op", "scalar"):
            raise ValueError(f"unknown scale {scale!r}; accepted: per_op, scalar")
        self.scale_mode = scale
        self.scale = nn.Parameter(torch.full((n_ops if scale == "per_op" else 1,), float(scale_init)))

    def response_scale(self) -> torch.Tensor:
        # Responses are ordered channel-major (c0: op0..opN, c1: ...), so the per-op factor tiles over channels.
        if self.scale_mode == "per_op":
            return self.scale.repeat(self.channels)
        return self.scale.expand(self.channels * self.n_ops)

    def scale_responses(self, responses: torch.Tensor) -> torch.Tensor:
        # The same product as response_scale() gives; a scalar factor broadcasts without being tiled.
        factor = self.scale.repeat(self.channels) if self.scale_mode == "per_op" else self.scale
        return responses * factor.view(1, -1, 1, 1)


# The multi-scale perception's defaults (conf/perception/multiscale.yaml) and its upsampling modes.
MULTISCALE_OPS = ("sobel3_x", "sobel3_y", "laplace3")
UPSAMPLE_MODES = ("bilinear", "nearest")


def max_levels(height: int, width: int) -> int:
    """The most levels a multi-scale perception can have on a ``height x width`` grid: ``2**(levels-1)`` (the
    coarsest level's pooling) at most the grid's smaller side."""
    return max(1, min(height, width)).bit_length()


class MultiScalePerception(Perception):
    """Identity + a bank of fixed operators read at ``levels`` scales (DyNCA's multi-scale perception).

    Level ``l`` is the state average-pooled by ``2**l`` (level 0: the state itself), the bank ``ops`` applied to
    it depthwise with zero padding, and the responses upsampled back to the grid (``upsample``: ``bilinear``, as
    PyTorch's ``align_corners=False``, or ``nearest``). A grid that the pooling does not divide is padded with
    empty cells (zeros) at its bottom and right to the next multiple before pooling, and the upsampled responses
    are cut back to exactly ``H x W``: a coarse cell is the mean of its ``2**l x 2**l`` block, cells past the
    edge counting as empty space, as the convolutions' zero padding has it. Responses per channel: level 0's
    (in ``ops`` order), then level 1's, ...: ``n_ops = levels * n_bank``. No parameters: the bank is a buffer.

    The coarsest level must fit the grid: ``2**(levels-1) <= min(H, W)`` (:meth:`check_grid`). Outside the
    single-bank contract (see :class:`Perception`): ``operator_weight()`` refuses; ``bank_weight()`` is the
    bank's depthwise weight, applied at every level.

    ``kernels`` (keyword only, not a config setting): the bank's depthwise weight ``C*n x 1 x k x k`` itself,
    for a model rebuilt from exported tensors (``ops`` are then labels only).
    """

    def __init__(
        self,
        channels: int = 16,
        levels: int = 3,
        ops: Sequence[str] | None = MULTISCALE_OPS,
        upsample: str = "bilinear",
        name: str | None = None,
        *,
        kernels: torch.Tensor | None = None,
    ):
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ConfigError(
                f"perception.levels={levels!r} is not valid; expected an integer >= 1 (1: the grid alone, "
                "3: the grid at 1, 1/2 and 1/4 of its size)"
            )
        if upsample not in UPSAMPLE_MODES:
            raise ConfigError(
                f"perception.upsample={upsample!r} is not valid; expected {' | '.join(UPSAMPLE_MODES)}"
            )
        if kernels is None:
            names = resolve_ops(ops)
            weight = _depthwise(bank_kernels(names), channels)
        else:
            n, one, k, k2 = kernels.shape
            if one != 1 or k != k2 or n % channels or not n:
                raise ValueError(
                    f"kernels of shape {tuple(kernels.shape)} are not a depthwise weight for {channels} channels"
                )
            names = tuple(ops or ())
            if names and len(names) != n // channels:
                raise ValueError(f"{len(names)} operators named, the kernels hold {n // channels}")
            weight = kernels.detach().clone().float()
        n_bank = weight.shape[0] // channels
        super().__init__(
            channels, n_ops=levels * n_bank, kernel_size=weight.shape[-1], name=name or "multiscale"
        )
        self.ops = names
        self.n_bank = n_bank
        self.levels = levels
        self.upsample = upsample
        self.register_buffer("weight", weight)

    def bank_weight(self) -> torch.Tensor:
        """The bank's depthwise weight ``C*n_bank x 1 x k x k`` (channel-major), applied at every level."""
        return self.weight

    def operator_weight(self) -> torch.Tensor:
        raise NotImplementedError(
            f"perception {self.name!r} reads its bank at {self.levels} scales: it is not one depthwise bank at one "
            "scale, so it has no operator_weight(); read bank_weight() (the bank at every level), levels and "
            "upsample, or call it (forward)"
        )

    @property
    def coarsest(self) -> int:
        """The coarsest level's pooling factor, ``2**(levels-1)``."""
        return 2 ** (self.levels - 1)

    def check_grid(self, height: int, width: int) -> None:
        side = min(height, width)
        if self.coarsest > side:
            raise ConfigError(
                f"perception.levels={self.levels}: the coarsest level pools by {self.coarsest}, more than the "
                f"{height}x{width} grid's smaller side ({side}); at most perception.levels="
                f"{max_levels(height, width)} on this grid (2^(levels-1) <= {side})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        self.check_grid(h, w)
        weight = self.weight.to(x.dtype)
        pad = self.kernel_size // 2
        levels = [F.conv2d(x, weight, padding=pad, groups=c)]
        for level in range(1, self.levels):
            f = 2**level
            hc, wc = -(-h // f), -(-w // f)
            coarse = F.avg_pool2d(F.pad(x, (0, wc * f - w, 0, hc * f - h)), f)
            r = F.conv2d(coarse, weight, padding=pad, groups=c)
            if self.upsample == "bilinear":
                r = F.interpolate(r, scale_factor=f, mode="bilinear", align_corners=False)
            else:
                r = F.interpolate(r, scale_factor=f, mode="nearest")
            levels.append(r[..., :h, :w])
        n = self.n_bank
        # Per channel: level 0's responses, then level 1's, ... (channel-major, as the contract orders them).
        responses = torch.stack([r.reshape(b, c, n, h, w) for r in levels], dim=2)
        return torch.cat([x, responses.reshape(b, c * self.n_ops, h, w)], dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, levels={self.levels}, upsample={self.upsample}"
