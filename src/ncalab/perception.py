"""How a cell perceives its neighbourhood.

Every perception maps a state ``B x C x H x W`` to ``B x C*(1 + n_ops) x H x W``: the cell's own state (the
identity channel) followed by ``n_ops`` depthwise operator responses per channel. Angles are measured in array
coordinates: 0 degrees points along +column (x), 90 degrees along +row (y, downwards on screen).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OPERATOR_SETS",
    "FixedPerception",
    "Perception",
    "ScaledPerception",
    "TrainablePerception",
    "operator_kernels",
    "ramp_response",
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

    The rotated 5x5 Sobel is not a linear combination of the x and y kernels (tests check the rank).
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


def sobel3() -> torch.Tensor:
    """3x3 Sobel x, y; divided by 8 so that a unit ramp reads 1."""
    kx = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0])) / 8.0
    return torch.stack([kx, kx.T])


def sobel5() -> torch.Tensor:
    """5x5 Sobel x, y: smoothing [1,4,6,4,1] x derivative [-1,-2,0,2,1], divided by 128."""
    kx = (
        torch.outer(torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]), torch.tensor([-1.0, -2.0, 0.0, 2.0, 1.0]))
        / 128.0
    )
    return torch.stack([kx, kx.T])


def sobel5_diag() -> torch.Tensor:
    """5x5 Sobel at 0, 90, 45 and 135 degrees; the diagonals are the x kernel rotated and re-normalised."""
    kx, ky = sobel5()
    k45 = _normalised(_rotate_45(kx, 1), 45.0)
    k135 = _normalised(_rotate_45(kx, 3), 135.0)
    return torch.stack([kx, ky, k45, k135])


OPERATOR_SETS = {"sobel3": sobel3, "sobel5": sobel5, "sobel5_diag": sobel5_diag}
# The direction each operator of a set measures, in degrees (array coordinates).
OPERATOR_ANGLES = {"sobel3": (0.0, 90.0), "sobel5": (0.0, 90.0), "sobel5_diag": (0.0, 90.0, 45.0, 135.0)}


def operator_kernels(name: str, kernel_size: int | None = None, n_ops: int | None = None) -> torch.Tensor:
    """The ``n_ops x k x k`` operator kernels of set ``name``.

    ``name="sobel"`` picks the Sobel set that matches ``kernel_size`` and ``n_ops`` (3x3 or 5x5, 2 or 4
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
        raise ValueError(f"unknown operator set {name!r}; accepted: {', '.join(sorted(OPERATOR_SETS))}")
    return OPERATOR_SETS[name]()


class Perception(nn.Module):
    """Shared interface: ``channels`` in, ``out_channels = channels * (1 + n_ops)`` out, same spatial size.

    Subclasses provide ``operator_weight()`` (a depthwise weight ``C*n_ops x 1 x k x k``) and may override
    ``scale_responses``. A new strategy is one subclass plus one config file in ``conf/perception/``.
    """

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

    def scale_responses(self, responses: torch.Tensor) -> torch.Tensor:
        return responses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zero padding: outside the grid is empty space, like the padded target.
        responses = F.conv2d(x, self.operator_weight(), padding=self.kernel_size // 2, groups=self.channels)
        return torch.cat([x, self.scale_responses(responses)], dim=1)

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, channels={self.channels}, n_ops={self.n_ops}, kernel_size={self.kernel_size}"
        )


def _depthwise(kernels: torch.Tensor, channels: int) -> torch.Tensor:
    """``n x k x k`` kernels -> depthwise weight ``C*n x 1 x k x k`` (each channel gets all n operators)."""
    n, k, _ = kernels.shape
    return kernels.repeat(channels, 1, 1).reshape(channels * n, 1, k, k).contiguous()


class FixedPerception(Perception):
    """Identity + a fixed operator set (``sobel3``, ``sobel5``, ``sobel5_diag``); kernels are buffers."""

    def __init__(self, channels: int = 16, operators: str = "sobel3", name: str | None = None):
        kernels = operator_kernels(operators)
        super().__init__(
            channels, n_ops=kernels.shape[0], kernel_size=kernels.shape[-1], name=name or operators
        )
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

    def scale_responses(self, responses: torch.Tensor) -> torch.Tensor:
        # Responses are ordered channel-major (c0: op0..opN, c1: ...), so the per-op factor tiles over channels.
        factor = self.scale.repeat(self.channels) if self.scale_mode == "per_op" else self.scale
        return responses * factor.view(1, -1, 1, 1)
