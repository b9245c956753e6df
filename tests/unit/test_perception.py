"""Tests for ncalab.perception: kernel values, normalisation, orientation, parameters vs buffers, configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ncalab.errors import ConfigError
from ncalab.perception import (
    OPERATOR_ANGLES,
    OPERATOR_SETS,
    FixedPerception,
    MultiScalePerception,
    Perception,
    ScaledPerception,
    TrainablePerception,
    _rotate_45,
    operator_kernels,
    ramp_response,
    sobel3,
    sobel5,
    sobel5_diag,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "perception"
CHANNELS = 8
SIZE = 24
# Cells whose 5x5 window reaches the zero padding are excluded when reading "interior" responses.
MARGIN = 2

# The five perception configurations, and a bank of mixed kernel sizes, and how many operators each applies per
# channel.
PERCEPTIONS = {
    "sobel3": (lambda c: FixedPerception(c, operators="sobel3"), 2),
    "sobel5": (lambda c: FixedPerception(c, operators="sobel5"), 2),
    "sobel5_diag": (lambda c: FixedPerception(c, operators="sobel5_diag"), 4),
    "trainable_3x3_2ops": (lambda c: TrainablePerception(c, kernel_size=3, n_ops=2), 2),
    "scaled": (lambda c: ScaledPerception(c, kernel_size=3, n_ops=2, scale="per_op"), 2),
    "mixed_bank": (lambda c: FixedPerception(c, ops=["sobel3_x", "laplace5", "gauss3"]), 3),
    # 3 operators at 3 levels: 9 responses per channel
    "multiscale": (lambda c: MultiScalePerception(c), 9),
}
# (operator set, operator index, that operator's angle) for every fixed operator.
OPERATORS = [
    pytest.param(name, i, angle, id=f"{name}-{int(angle)}deg")
    for name, angles in OPERATOR_ANGLES.items()
    for i, angle in enumerate(angles)
]
# Directions as integer (dx, dy) so that step edges along the diagonals are exactly symmetric.
DIRECTIONS = {0: (1, 0), 45: (1, 1), 90: (0, 1), 135: (-1, 1)}
# Order of the sobel5_diag operators.
DIAG_ORDER = (0, 90, 45, 135)


def make(name: str, channels: int = CHANNELS) -> Perception:
    return PERCEPTIONS[name][0](channels)


def ramp_image(angle_deg: float, size: int = SIZE) -> torch.Tensor:
    """``size x size`` unit-slope ramp rising along ``angle_deg`` (array coordinates), zero at the centre."""
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    rows, cols = torch.meshgrid(offsets, offsets, indexing="ij")
    theta = math.radians(angle_deg)
    return (cols * math.cos(theta) + rows * math.sin(theta)).float()


def edge_image(angle_deg: int, kind: str, size: int = SIZE) -> torch.Tensor:
    """Unit ramp (``kind='ramp'``) or 0/1 step edge (``kind='step'``) whose value rises along ``angle_deg``."""
    dx, dy = DIRECTIONS[angle_deg]
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    rows, cols = torch.meshgrid(offsets, offsets, indexing="ij")
    projection = cols * dx + rows * dy  # exact integers
    if kind == "ramp":
        return (projection / math.hypot(dx, dy)).float()
    return (projection > 0).float()


def responses(p: Perception, x: torch.Tensor) -> torch.Tensor:
    """Operator responses as ``B x C x n_ops x H x W`` (identity channels dropped)."""
    out = p(x)[:, p.channels :]
    b, _, h, w = out.shape
    return out.reshape(b, p.channels, p.n_ops, h, w)


def single_channel_input(image: torch.Tensor, channels: int = CHANNELS) -> torch.Tensor:
    x = torch.zeros(1, channels, *image.shape)
    x[0, 0] = image
    return x


def interior(t: torch.Tensor) -> torch.Tensor:
    return t[..., MARGIN:-MARGIN, MARGIN:-MARGIN]


# --- exact kernel values ---------------------------------------------------------------------------------


def test_sobel3_kernels_are_normalised_outer_products():
    kx = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0])) / 8
    k = sobel3()
    assert k.shape == (2, 3, 3)
    assert torch.equal(k[0], kx)
    assert torch.equal(k[1], kx.T)


def test_sobel5_kernels_are_normalised_outer_products():
    kx = torch.outer(torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]), torch.tensor([-1.0, -2.0, 0.0, 2.0, 1.0])) / 128
    k = sobel5()
    assert k.shape == (2, 5, 5)
    assert torch.equal(k[0], kx)
    assert torch.equal(k[1], kx.T)


def test_sobel5_diag_starts_with_sobel5_x_and_y():
    k = sobel5_diag()
    assert k.shape == (4, 5, 5)
    assert torch.equal(k[:2], sobel5())


# --- normalisation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "index", "angle"), OPERATORS)
def test_ramp_response_is_one_at_operator_angle(name, index, angle):
    kernel = OPERATOR_SETS[name]()[index]
    assert ramp_response(kernel, angle) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("name", "index", "angle"), OPERATORS)
def test_ramp_response_is_zero_at_perpendicular_angle(name, index, angle):
    kernel = OPERATOR_SETS[name]()[index]
    assert ramp_response(kernel, angle + 90.0) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("name", "index", "angle"), OPERATORS)
def test_fixed_perception_reads_unit_ramp_as_one_in_the_interior(name, index, angle):
    p = FixedPerception(CHANNELS, operators=name)
    r = responses(p, single_channel_input(ramp_image(angle)))[0, 0, index]
    torch.testing.assert_close(
        interior(r), torch.ones(SIZE - 2 * MARGIN, SIZE - 2 * MARGIN), rtol=0, atol=1e-5
    )
    # The zero padding is visible on the border, which is why only the interior reads 1.
    assert not torch.allclose(r, torch.ones_like(r), atol=1e-3)


def test_fixed_perception_reads_column_ramp_as_unit_x_and_zero_y():
    cols = torch.arange(SIZE, dtype=torch.float32).expand(SIZE, SIZE)  # f(row, col) = col
    r = responses(FixedPerception(CHANNELS, operators="sobel3"), single_channel_input(cols))[0, 0]
    torch.testing.assert_close(
        interior(r[0]), torch.ones(SIZE - 2 * MARGIN, SIZE - 2 * MARGIN), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        interior(r[1]), torch.zeros(SIZE - 2 * MARGIN, SIZE - 2 * MARGIN), rtol=0, atol=1e-6
    )


# --- orientation selectivity of sobel5_diag ----------------------------------------------------------------


def _diag_response_table(kind: str) -> torch.Tensor:
    """``[edge angle, operator]`` max absolute interior response of the sobel5_diag operators."""
    p = FixedPerception(CHANNELS, operators="sobel5_diag")
    rows = []
    for angle in DIAG_ORDER:
        r = responses(p, single_channel_input(edge_image(angle, kind)))[0, 0]
        rows.append(interior(r).abs().amax(dim=(-2, -1)))
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["ramp", "step"])
def test_sobel5_diag_operator_responds_most_to_its_own_orientation(kind):
    table = _diag_response_table(kind)  # rows: edges in DIAG_ORDER, columns: operators in DIAG_ORDER
    for op in range(4):
        column = table[:, op]
        others = torch.cat([column[:op], column[op + 1 :]])
        assert column[op] > others.max() + 0.05, f"operator at {DIAG_ORDER[op]} deg: {column.tolist()}"


@pytest.mark.parametrize("kind", ["ramp", "step"])
def test_sobel5_diag_operator_ignores_perpendicular_orientation(kind):
    table = _diag_response_table(kind)
    for op, angle in enumerate(DIAG_ORDER):
        perpendicular = DIAG_ORDER.index((angle + 90) % 180)
        assert table[perpendicular, op] < 1e-6, f"operator at {angle} deg, edge at {angle + 90} deg"


def test_sobel5_diag_reads_unit_ramps_as_cosine_of_angle_difference():
    table = _diag_response_table("ramp")
    expected = torch.tensor(
        [[abs(math.cos(math.radians(edge - op))) for op in DIAG_ORDER] for edge in DIAG_ORDER]
    ).float()
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-5)


# --- rank ----------------------------------------------------------------------------------------------------


def test_sobel5_diag_kernels_are_linearly_independent():
    flat = sobel5_diag().double().reshape(4, 25)
    assert torch.linalg.matrix_rank(flat) == 4


def test_rotated_sobel3_diagonal_is_not_in_span_of_x_and_y():
    # The ring-shifted 3x3 kernel is the compass Sobel [[-2,-1,0],[-1,0,1],[0,1,2]] / 8, while x + y is
    # [[-2,-2,0],[-2,0,2],[0,2,2]] / 8 (the sobel3_45 operator is this kernel, normalised).
    kx, ky = sobel3()
    diag = _rotate_45(kx, 1)
    assert torch.equal(diag * 8, torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 2.0]]))
    assert torch.linalg.matrix_rank(torch.stack([kx, ky]).double().reshape(2, 9)) == 2
    assert torch.linalg.matrix_rank(torch.stack([kx, ky, diag]).double().reshape(3, 9)) == 3


def test_rotating_four_times_by_45_degrees_negates_the_kernel():
    kx = sobel5()[0]
    assert torch.equal(_rotate_45(kx, 4), -kx)
    assert torch.equal(_rotate_45(kx, 2), sobel5()[1])


# --- buffers vs parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("operators", [*sorted(OPERATOR_SETS), "operators"])
def test_fixed_perception_kernels_are_buffers_not_parameters(operators):
    p = (
        FixedPerception(CHANNELS, ops=["sobel3_x", "laplace5"])
        if operators == "operators"
        else FixedPerception(CHANNELS, operators=operators)
    )
    assert list(p.parameters()) == []
    assert set(dict(p.named_buffers())) == {"weight"}
    assert "weight" in p.state_dict()
    assert not p.weight.requires_grad


def test_trainable_perception_kernels_are_parameters():
    p = TrainablePerception(CHANNELS, kernel_size=3, n_ops=2)
    params = dict(p.named_parameters())
    assert set(params) == {"weight"}
    assert params["weight"].shape == (CHANNELS * 2, 1, 3, 3)
    assert params["weight"].requires_grad
    assert list(p.buffers()) == []


@pytest.mark.parametrize(
    ("scale", "n_ops", "kernel_size", "scale_shape"), [("per_op", 4, 5, (4,)), ("scalar", 4, 5, (1,))]
)
def test_scaled_perception_has_weight_and_scale_parameters(scale, n_ops, kernel_size, scale_shape):
    p = ScaledPerception(CHANNELS, kernel_size=kernel_size, n_ops=n_ops, scale=scale)
    params = dict(p.named_parameters())
    assert set(params) == {"weight", "scale"}
    assert params["weight"].shape == (CHANNELS * n_ops, 1, kernel_size, kernel_size)
    assert params["scale"].shape == scale_shape
    assert list(p.buffers()) == []


# --- shapes, identity channel, depthwise ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PERCEPTIONS))
def test_output_shape_is_channels_times_one_plus_n_ops(name):
    p = make(name)
    n_ops = PERCEPTIONS[name][1]
    torch.manual_seed(0)
    out = p(torch.rand(2, CHANNELS, 16, 20))
    assert p.n_ops == n_ops
    assert p.out_channels == CHANNELS * (1 + n_ops)
    assert out.shape == (2, p.out_channels, 16, 20)


@pytest.mark.parametrize("name", sorted(PERCEPTIONS))
def test_first_channels_are_the_input_unchanged(name):
    torch.manual_seed(0)
    x = torch.randn(2, CHANNELS, 16, 16)
    assert torch.equal(make(name)(x)[:, :CHANNELS], x)


@pytest.mark.parametrize("name", sorted(PERCEPTIONS))
def test_responses_are_depthwise(name):
    p = make(name)
    torch.manual_seed(0)
    x = torch.rand(1, CHANNELS, 16, 16)
    perturbed = x.clone()
    c = 5
    perturbed[0, c, 6:10, 6:10] += torch.rand(4, 4) + 0.5
    with torch.no_grad():
        before, after = responses(p, x), responses(p, perturbed)
    changed = (before != after).flatten(3).any(dim=3)  # B x C x n_ops
    expected = torch.zeros(CHANNELS, p.n_ops, dtype=torch.bool)
    expected[c] = True
    assert torch.equal(changed[0], expected)


# --- TrainablePerception initialisation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel_size", "n_ops", "operators"), [(3, 2, "sobel3"), (5, 2, "sobel5"), (5, 4, "sobel5_diag")]
)
def test_trainable_sobel_init_equals_sobel_kernels(kernel_size, n_ops, operators):
    p = TrainablePerception(CHANNELS, kernel_size=kernel_size, n_ops=n_ops, init="sobel")
    per_channel = p.weight.detach().reshape(CHANNELS, n_ops, kernel_size, kernel_size)
    for c in range(CHANNELS):
        assert torch.equal(per_channel[c], OPERATOR_SETS[operators]())
    assert torch.equal(p.weight.detach(), FixedPerception(CHANNELS, operators=operators).weight)


def test_trainable_sobel_init_rejects_unsupported_kernel_size():
    with pytest.raises(ValueError, match="kernel_size=7"):
        TrainablePerception(CHANNELS, kernel_size=7, n_ops=2, init="sobel")


def test_trainable_random_init_supports_any_size():
    torch.manual_seed(0)
    p = TrainablePerception(CHANNELS, kernel_size=7, n_ops=3, init="random")
    assert p.weight.shape == (CHANNELS * 3, 1, 7, 7)
    assert p.weight.abs().sum() > 0
    assert p(torch.rand(1, CHANNELS, 16, 16)).shape == (1, CHANNELS * 4, 16, 16)


# --- ScaledPerception ------------------------------------------------------------------------------------------


def test_scalar_scale_multiplies_responses_and_not_identity():
    torch.manual_seed(0)
    x = torch.rand(2, CHANNELS, 16, 16)
    p = ScaledPerception(CHANNELS, scale="scalar", scale_init=1.0)
    with torch.no_grad():
        base = p(x)
        p.scale.fill_(2.0)
        doubled = p(x)
    assert torch.equal(doubled[:, :CHANNELS], x)
    torch.testing.assert_close(doubled[:, CHANNELS:], 2 * base[:, CHANNELS:], rtol=0, atol=0)


def test_scale_init_of_one_matches_unscaled_trainable_perception():
    torch.manual_seed(0)
    x = torch.rand(2, CHANNELS, 16, 16)
    with torch.no_grad():
        scaled = ScaledPerception(CHANNELS, kernel_size=5, n_ops=4)(x)
        plain = TrainablePerception(CHANNELS, kernel_size=5, n_ops=4)(x)
    assert torch.equal(scaled, plain)


def test_per_op_scale_scales_each_operator_independently():
    torch.manual_seed(0)
    x = torch.rand(2, CHANNELS, 16, 16)
    p = ScaledPerception(CHANNELS, kernel_size=5, n_ops=4, scale="per_op")
    factors = torch.tensor([2.0, -3.0, 0.5, 0.0])
    with torch.no_grad():
        base = responses(p, x)
        p.scale.copy_(factors)
        scaled = responses(p, x)
        identity = p(x)[:, :CHANNELS]
    assert torch.equal(identity, x)
    torch.testing.assert_close(scaled, base * factors.view(1, 1, 4, 1, 1), rtol=0, atol=0)


@pytest.mark.parametrize("scale", ["per_op", "scalar"])
def test_scale_receives_nonzero_gradient(scale):
    torch.manual_seed(0)
    x = torch.rand(2, CHANNELS, 16, 16)
    p = ScaledPerception(CHANNELS, scale=scale)
    p(x).square().sum().backward()
    assert p.scale.grad is not None
    assert p.scale.grad.shape == p.scale.shape
    assert torch.all(p.scale.grad != 0)
    assert p.weight.grad is not None and p.weight.grad.abs().sum() > 0


# --- errors ----------------------------------------------------------------------------------------------------


def test_unknown_operator_set_lists_accepted_sets():
    for make_unknown in (
        lambda: FixedPerception(CHANNELS, operators="laplace"),
        lambda: operator_kernels("laplace"),
    ):
        with pytest.raises(ValueError, match="laplace") as err:
            make_unknown()
        for accepted in ("sobel3", "sobel5", "sobel5_diag"):
            assert accepted in str(err.value)


def test_unknown_scale_mode_lists_accepted_modes():
    with pytest.raises(ValueError, match="per_channel") as err:
        ScaledPerception(CHANNELS, scale="per_channel")
    assert "per_op" in str(err.value) and "scalar" in str(err.value)


def test_unknown_init_lists_accepted_inits():
    with pytest.raises(ValueError, match="xavier") as err:
        TrainablePerception(CHANNELS, init="xavier")
    for accepted in ("sobel", "random"):
        assert accepted in str(err.value)


# --- Hydra configs -------------------------------------------------------------------------------------------------

CONFIG_FILES = sorted(CONF_DIR.glob("*.yaml"))


def test_perception_config_directory_is_not_empty():
    assert len(CONFIG_FILES) >= 5


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.stem for p in CONFIG_FILES])
def test_hydra_config_instantiates_perception_named_after_file(path):
    node = OmegaConf.load(path).perception
    node.channels = 16
    p = instantiate(node)
    assert isinstance(p, Perception)
    assert p.name == path.stem
    assert p.channels == 16
    assert p(torch.zeros(1, 16, 8, 8)).shape == (1, p.out_channels, 8, 8)


# --- the perception contract ------------------------------------------------------------------------------------


def test_a_new_perception_is_one_class_and_the_rest_takes_it():
    """A perception that fills the contract (``operator_weight``, ``response_scale``) runs in the NCA's fast path
    exactly as its own forward computes, and exports to the demo with its kernels and scale."""
    from ncalab.demo import model_tensors
    from ncalab.nca import NCA

    class Shifted(Perception):
        """Identity + each channel's left and right neighbours, the right one doubled."""

        def __init__(self, channels: int = 16):
            super().__init__(channels, n_ops=2, kernel_size=3, name="shifted")
            k = torch.zeros(2, 3, 3)
            k[0, 1, 0] = k[1, 1, 2] = 1.0
            self.register_buffer("weight", k.repeat(channels, 1, 1).unsqueeze(1))

        def operator_weight(self) -> torch.Tensor:
            return self.weight

        def response_scale(self) -> torch.Tensor:
            return torch.tensor([1.0, 2.0]).repeat(self.channels)

    torch.manual_seed(0)
    nca = NCA(Shifted(), channels=16, hidden=8, fire_rate=1.0)
    torch.nn.init.normal_(nca.update[-1].weight, std=0.1)
    x = torch.rand(1, 16, 6, 6)
    x[:, 3] = 0.5
    out = nca.perception(x)
    assert torch.equal(out[:, 17::2, :, :-1], 2 * x[:, :, :, 1:])  # the right neighbour, doubled
    assert torch.equal(out[:, 16::2, :, 1:], x[:, :, :, :-1])  # the left neighbour
    plain = x + nca.update(out)  # every cell alive before and after (alpha 0.5)
    torch.testing.assert_close(nca.step(x), plain, rtol=1e-5, atol=1e-6)
    tensors = model_tensors(nca)
    assert torch.equal(tensors["kernels"], nca.perception.weight)
    assert torch.equal(tensors["scale"], torch.tensor([1.0, 2.0]).repeat(16))


# -- what training logs of a perception (through the contract: response_scale) -----------------------------------


def test_the_logged_response_factors_come_from_the_response_scale():
    from ncalab.lit_module import response_factors

    # No response scale: nothing logged.
    assert response_factors(FixedPerception(CHANNELS)) == []
    assert response_factors(TrainablePerception(CHANNELS)) == []
    # One factor per operator, shared by the channels: one value per operator (the `scale` parameter itself).
    per_op = ScaledPerception(CHANNELS, n_ops=2, scale="per_op")
    with torch.no_grad():
        per_op.scale.copy_(torch.tensor([0.5, 2.0]))
    assert response_factors(per_op) == [0.5, 2.0]
    # One factor for all: the factor of each operator (all the same).
    scalar = ScaledPerception(CHANNELS, n_ops=2, scale="scalar", scale_init=0.25)
    assert response_factors(scalar) == [0.25, 0.25]

    class PerChannel(TrainablePerception):
        """A perception the contract allows: a factor per response (channel-major)."""

        def __init__(self):
            super().__init__(4, n_ops=2)
            self.factor = torch.nn.Parameter(torch.arange(8, dtype=torch.float32))

        def response_scale(self):
            return self.factor

    assert response_factors(PerChannel()) == [float(i) for i in range(8)]


# --- the multi-scale perception -----------------------------------------------------------------------------------

BANK = ("sobel3_x", "sobel3_y", "laplace3")


def levels_of(p: MultiScalePerception, x: torch.Tensor) -> torch.Tensor:
    """Responses as ``B x C x levels x n_bank x H x W``."""
    b, _, h, w = x.shape
    with torch.no_grad():
        return p(x)[:, p.channels :].view(b, p.channels, p.levels, p.n_bank, h, w)


def reference_level(x: torch.Tensor, bank: torch.Tensor, f: int, mode: str) -> torch.Tensor:
    """Level ``f`` computed cell by cell, as the docstring says: each coarse cell the mean of its ``f x f`` block
    from the top-left corner (cells past the edge count as zero), the bank (``n x k x k``) applied with zero
    padding at that level, then each cell of the grid reads the coarse responses bilinearly (PyTorch's
    ``align_corners=False`` source index) or at its own block (nearest). ``x``: ``H x W`` (one channel), float64."""
    h, w = x.shape
    hc, wc = -(-h // f), -(-w // f)
    coarse = torch.zeros(hc, wc, dtype=torch.float64)
    for i in range(hc):
        for j in range(wc):
            coarse[i, j] = x[i * f : i * f + f, j * f : j * f + f].sum() / (f * f)
    n, k, _ = bank.shape
    r = k // 2
    padded = torch.zeros(hc + 2 * r, wc + 2 * r, dtype=torch.float64)
    padded[r : r + hc, r : r + wc] = coarse
    resp = torch.zeros(n, hc, wc, dtype=torch.float64)
    for o in range(n):
        for i in range(hc):
            for j in range(wc):
                resp[o, i, j] = (padded[i : i + k, j : j + k] * bank[o].double()).sum()
    out = torch.zeros(n, h, w, dtype=torch.float64)

    def source(i: int, size: int) -> tuple[int, int, float]:
        s = max((i + 0.5) / f - 0.5, 0.0)
        i0 = min(int(s), size - 1)
        return i0, min(i0 + 1, size - 1), s - i0

    for i in range(h):
        for j in range(w):
            if mode == "nearest":
                out[:, i, j] = resp[:, i // f, j // f]
                continue
            y0, y1, ly = source(i, hc)
            x0, x1, lx = source(j, wc)
            top = (1 - lx) * resp[:, y0, x0] + lx * resp[:, y0, x1]
            bottom = (1 - lx) * resp[:, y1, x0] + lx * resp[:, y1, x1]
            out[:, i, j] = (1 - ly) * top + ly * bottom
    return out


def test_multiscale_defaults_are_three_levels_of_the_sobel_laplace_bank():
    p = MultiScalePerception(CHANNELS)
    assert (p.levels, p.ops, p.upsample, p.n_bank, p.n_ops) == (3, BANK, "bilinear", 3, 9)
    assert (p.kernel_size, p.coarsest, p.out_channels, p.name) == (3, 4, CHANNELS * 10, "multiscale")
    assert list(p.parameters()) == [] and set(p.state_dict()) == {"weight"}  # the bank is a buffer
    assert p.bank_weight().shape == (CHANNELS * 3, 1, 3, 3)
    assert torch.equal(p.bank_weight(), FixedPerception(CHANNELS, ops=BANK).operator_weight())
    assert p.response_scale() is None
    with pytest.raises(NotImplementedError, match="not one depthwise bank at one scale"):
        p.operator_weight()


@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
def test_multiscale_level_zero_is_the_fixed_bank(upsample):
    """Level 0 reads exactly what the same bank reads alone (perception=operators), bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(2, CHANNELS, 13, 18)
    ours = levels_of(MultiScalePerception(CHANNELS, upsample=upsample), x)[:, :, 0]
    fixed = responses(FixedPerception(CHANNELS, ops=BANK), x)
    assert torch.equal(ours, fixed)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("size", [(16, 16), (13, 11), (7, 5)], ids=["divisible", "odd", "tiny"])
def test_every_level_is_pooled_banked_and_upsampled_as_documented(mode, size):
    """Each level against a cell-by-cell computation of what the docstring says, on grids that the pooling
    divides and on odd ones (the pooled blocks run past the edge, and the output is still exactly H x W)."""
    h, w = size
    levels = 3
    ops = ("sobel3_x", "laplace3", "gauss5")  # a 5x5 operator in the bank: zero-padded to 5x5, at every level
    p = MultiScalePerception(4, levels=levels, ops=ops, upsample=mode)
    torch.manual_seed(1)
    x = torch.randn(1, 4, h, w)
    got = levels_of(p, x)
    assert got.shape == (1, 4, levels, 3, h, w)
    bank = p.bank_weight()[:3, 0]
    for c in (0, 3):
        for level in range(levels):
            expected = reference_level(x[0, c].double(), bank, 2**level, mode)
            torch.testing.assert_close(got[0, c, level].double(), expected, rtol=1e-5, atol=1e-5)


def test_multiscale_reads_a_unit_ramp_as_its_slope_at_each_scale():
    """A derivative at level l reads a unit ramp as 2**l (the ramp rises 2**l per coarse cell): each level
    measures the same gradient over a wider neighbourhood, away from the grid's edges."""
    p = MultiScalePerception(CHANNELS, levels=3, ops=["sobel3_x", "sobel3_y"])
    x = single_channel_input(ramp_image(0.0, size=40))
    got = levels_of(p, x)[0, 0, :, :, 12:28, 12:28]  # (levels, op, ...) of the ramp's channel, interior
    for level in range(3):
        torch.testing.assert_close(got[level, 0], torch.full((16, 16), 2.0**level), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got[level, 1], torch.zeros(16, 16), rtol=0, atol=1e-4)


def test_multiscale_widens_the_receptive_field():
    """A change 3 cells away changes what a cell perceives through the coarse levels, not through a 3x3 bank."""
    torch.manual_seed(2)
    x = torch.rand(1, CHANNELS, 16, 16)
    far = x.clone()
    far[0, 5, 8, 11] += 1.0  # 3 cells right of (8, 8)
    multiscale, sobel3 = MultiScalePerception(CHANNELS), FixedPerception(CHANNELS, operators="sobel3")
    with torch.no_grad():
        assert torch.equal(sobel3(x)[..., 8, 8], sobel3(far)[..., 8, 8])
        assert torch.equal(
            levels_of(multiscale, x)[..., 0, :, 8, 8], levels_of(multiscale, far)[..., 0, :, 8, 8]
        )
        changed = levels_of(multiscale, x)[..., 8, 8] != levels_of(multiscale, far)[..., 8, 8]
    assert changed[0, 5, 1:].all()  # every operator of the coarse levels, in the changed channel
    assert not changed[0, :5].any() and not changed[0, 6:].any()  # depthwise
    # and the gradient of that cell's perception reaches the far cell
    xi = x.clone().requires_grad_(True)
    MultiScalePerception(CHANNELS)(xi)[0, CHANNELS:, 8, 8].sum().backward()
    assert xi.grad[0, 5, 8, 11] != 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": 0}, r"perception\.levels=0 is not valid; expected an integer >= 1"),
        ({"levels": -2}, r"perception\.levels=-2 is not valid"),
        ({"levels": 1.5}, r"perception\.levels=1\.5 is not valid"),
        ({"levels": True}, r"perception\.levels=True is not valid"),
        ({"upsample": "cubic"}, r"perception\.upsample='cubic' is not valid; expected bilinear \| nearest"),
        ({"ops": ["sobel3_x", "sobel9"]}, r"perception\.ops: unknown operator 'sobel9'; known: sobel3_x"),
        ({"ops": []}, r"perception\.ops=\[\] must be a non-empty list"),
        ({"ops": ["laplace3", "laplace3"]}, r"perception\.ops names laplace3 more than once"),
    ],
)
def test_bad_multiscale_settings_are_one_line_naming_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        MultiScalePerception(CHANNELS, **kwargs)
    assert "\n" not in str(err.value)


def test_the_coarsest_level_must_fit_the_grid():
    p = MultiScalePerception(CHANNELS, levels=6)  # pools by 32 at its coarsest
    p.check_grid(32, 40)
    assert p(torch.zeros(1, CHANNELS, 32, 33)).shape == (1, CHANNELS * 19, 32, 33)
    message = (
        r"perception\.levels=6: the coarsest level pools by 32, more than the 24x24 grid's smaller side \(24\); "
        r"at most perception\.levels=5 on this grid"
    )
    with pytest.raises(ConfigError, match=message):
        p.check_grid(24, 24)
    with pytest.raises(ConfigError, match=message):
        p(torch.zeros(1, CHANNELS, 24, 24))  # forward checks too (evaluation on another grid)
    with pytest.raises(ConfigError, match=r"at most perception\.levels=1 on this grid"):
        MultiScalePerception(CHANNELS, levels=2).check_grid(1, 9)
    FixedPerception(CHANNELS).check_grid(1, 1)  # a single-scale bank reads any grid


def test_the_contract_readers_take_a_multiscale_perception():
    """What reads a perception's parts: no logged response factors, and the fast path's own-forward route."""
    from ncalab.fast_step import within_contract
    from ncalab.lit_module import response_factors

    p = MultiScalePerception(CHANNELS)
    assert response_factors(p) == []
    assert not within_contract(p)
    assert "levels=3, upsample=bilinear" in repr(p)
