"""Tests for ncalab.nca: alive mask, seed, zero-initialised update, stochastic firing, rollout, truncated backprop.

The step mechanics are checked on both ``NCA.plain_step`` (the rule) and ``NCA.step`` (the fast path that
training uses); tests/unit/test_fast_path.py compares the two value for value."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ncalab.nca import ALPHA, NCA, alive_mask, rgba, seed_state, to_rgb
from ncalab.perception import FixedPerception, TrainablePerception

CHANNELS = 16
HIDDEN = 16


def make_nca(
    fire_rate: float = 0.5, trainable: bool = False, randomise_last: bool = False, seed: int = 0
) -> NCA:
    torch.manual_seed(seed)
    perception = (
        TrainablePerception(CHANNELS, kernel_size=3, n_ops=2)
        if trainable
        else FixedPerception(CHANNELS, operators="sobel3")
    )
    # With the (optional) last-layer bias: these tests use it as a handle on the update (default: no bias).
    nca = NCA(perception, channels=CHANNELS, hidden=HIDDEN, fire_rate=fire_rate, update_bias=True)
    if randomise_last:
        nn.init.normal_(nca.update[-1].weight, std=0.1)
        nn.init.normal_(nca.update[-1].bias, std=0.01)
    return nca


def set_constant_update(nca: NCA, value: float) -> None:
    """Make the update network output ``value`` in every channel of every cell."""
    with torch.no_grad():
        nca.update[-1].weight.zero_()
        nca.update[-1].bias.fill_(value)


def random_state(batch: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    """Random hidden/RGBA values; alpha mostly below the threshold with a few live cells."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, CHANNELS, size, size, generator=g)
    alive = torch.rand(batch, size, size, generator=g) < 0.08
    x[:, ALPHA] = torch.where(alive, 0.5 + 0.5 * x[:, ALPHA], 0.09 * x[:, ALPHA])
    return x


# Both ways a model steps: the rule written plainly and the fast path.
STEP_METHODS = pytest.mark.parametrize("method", ["plain_step", "step"])


def parameter_grads(nca: NCA, out: torch.Tensor) -> list[torch.Tensor]:
    loss = (out[:, : ALPHA + 1] - 0.5).square().mean() + out.square().mean()
    return list(torch.autograd.grad(loss, list(nca.parameters()), allow_unused=False))


# --- alive_mask ------------------------------------------------------------------------------------------------


def single_alpha(value: float, row: int = 5, col: int = 7, size: int = 16) -> torch.Tensor:
    x = torch.zeros(1, CHANNELS, size, size)
    x[0, ALPHA, row, col] = value
    return x


def test_alive_mask_single_cell_makes_its_3x3_neighbourhood_alive():
    mask = alive_mask(single_alpha(0.2, row=5, col=7))
    assert mask.shape == (1, 1, 16, 16) and mask.dtype == torch.bool
    expected = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    expected[0, 0, 4:7, 6:9] = True
    assert torch.equal(mask, expected)
    assert mask.sum() == 9


def test_alive_mask_corner_cell_neighbourhood_is_clipped_to_the_grid():
    mask = alive_mask(single_alpha(0.2, row=0, col=0))
    assert mask.sum() == 4
    assert mask[0, 0, :2, :2].all()


def test_alive_mask_threshold_is_strict():
    assert not alive_mask(single_alpha(0.1)).any()


@pytest.mark.parametrize(("threshold", "alive_cells"), [(0.15, 9), (0.25, 0), (0.0, 9)])
def test_alive_mask_respects_threshold(threshold, alive_cells):
    assert alive_mask(single_alpha(0.2), threshold=threshold).sum() == alive_cells


def test_alive_mask_only_reads_alpha():
    x = torch.ones(1, CHANNELS, 8, 8)
    x[:, ALPHA] = 0.0
    assert not alive_mask(x).any()


# --- seed_state ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(16, 24), (15, 17)])
def test_seed_state_is_one_centre_cell(height, width):
    x = seed_state(2, CHANNELS, height, width)
    assert x.shape == (2, CHANNELS, height, width)
    nonzero = x.abs().sum(dim=(0, 1)).nonzero().tolist()
    assert nonzero == [[height // 2, width // 2]]
    centre = x[:, :, height // 2, width // 2]
    assert torch.equal(centre[:, :ALPHA], torch.zeros(2, ALPHA))
    assert torch.equal(centre[:, ALPHA:], torch.ones(2, CHANNELS - ALPHA))


def test_nca_seed_uses_parameter_dtype():
    nca = make_nca().double()
    x = nca.seed(1, 8, 8)
    assert x.dtype == torch.float64
    assert torch.equal(x, seed_state(1, CHANNELS, 8, 8, dtype=torch.float64))


# --- zero-initialised update ---------------------------------------------------------------------------------------


def test_last_update_layer_is_zero_initialised():
    nca = make_nca()
    assert torch.count_nonzero(nca.update[-1].weight) == 0
    assert torch.count_nonzero(nca.update[-1].bias) == 0
    assert torch.count_nonzero(nca.update[0].weight) > 0  # only the last layer is zeroed


@STEP_METHODS
def test_untrained_step_leaves_seed_unchanged(method):
    nca = make_nca()
    x = nca.seed(2, 16, 16)
    torch.manual_seed(0)
    assert torch.equal(getattr(nca, method)(x), x)


@STEP_METHODS
def test_untrained_step_only_applies_alive_masks(method):
    nca = make_nca()
    x = random_state()
    mask = alive_mask(x) & alive_mask(x)  # dx == 0, so alive before == alive after
    assert 0 < mask.float().mean() < 1  # the state has both live and dead cells
    torch.manual_seed(0)
    assert torch.equal(getattr(nca, method)(x), x * mask.float())


# --- stochastic firing ----------------------------------------------------------------------------------------------


def fully_alive(batch: int = 4, size: int = 64) -> torch.Tensor:
    return torch.ones(batch, CHANNELS, size, size)


@STEP_METHODS
def test_fraction_of_updated_cells_matches_fire_rate(method):
    nca = make_nca(fire_rate=0.5)
    set_constant_update(nca, 1.0)
    x = fully_alive()
    torch.manual_seed(0)
    out = getattr(nca, method)(x)
    changed = out != x
    # The fire mask is per cell: all channels of a cell change together.
    assert torch.equal(changed.all(dim=1), changed.any(dim=1))
    assert changed.any(dim=1).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(out[changed], torch.full((int(changed.sum()),), 2.0))


@STEP_METHODS
@pytest.mark.parametrize("fire_rate", [0.25, 0.75])
def test_fraction_of_updated_cells_follows_model_fire_rate(fire_rate, method):
    nca = make_nca(fire_rate=fire_rate)
    set_constant_update(nca, 1.0)
    x = fully_alive()
    torch.manual_seed(0)
    changed = (getattr(nca, method)(x) != x).any(dim=1).float().mean().item()
    assert changed == pytest.approx(fire_rate, abs=0.03)


@STEP_METHODS
def test_model_with_fire_rate_one_updates_every_cell(method):
    nca = make_nca(fire_rate=1.0)
    set_constant_update(nca, 1.0)
    x = fully_alive()
    assert torch.equal(getattr(nca, method)(x), x + 1)


@STEP_METHODS
def test_step_fire_rate_argument_overrides_model_rate(method):
    nca = make_nca(fire_rate=0.5)
    set_constant_update(nca, 1.0)
    x = fully_alive()
    assert torch.equal(getattr(nca, method)(x, fire_rate=1.0), x + 1)


# --- alive masks around the update ---------------------------------------------------------------------------------


@STEP_METHODS
def test_dead_cell_stays_zero_even_with_nonzero_update(method):
    nca = make_nca(fire_rate=1.0)
    set_constant_update(nca, 1.0)  # dx = 1 everywhere, alpha included: every cell is alive after the update
    x = nca.seed(1, 16, 16)
    out = getattr(nca, method)(x)
    expected = torch.zeros_like(x)
    expected[:, :, 7:10, 7:10] = x[:, :, 7:10, 7:10] + 1  # only the neighbourhood alive before updates
    assert torch.equal(out, expected)


@STEP_METHODS
def test_cell_whose_neighbourhood_dies_after_update_is_zeroed(method):
    nca = make_nca(fire_rate=1.0)
    # Hand-set network: dx_alpha = -4 * relu(alpha - 0.75), every other dx is 0. A cell with alpha 1 drops
    # to alpha 0 (and has no live neighbours), a cell with alpha 0.5 is left alone.
    with torch.no_grad():
        for layer in (nca.update[0], nca.update[2]):
            layer.weight.zero_()
            layer.bias.zero_()
        nca.update[0].weight[0, ALPHA] = 1.0  # the identity alpha channel of the perception
        nca.update[0].bias[0] = -0.75
        nca.update[2].weight[ALPHA, 0] = -4.0
    torch.manual_seed(0)
    x = torch.zeros(1, CHANNELS, 20, 20)
    x[0, :, 4, 4] = torch.rand(CHANNELS)
    x[0, ALPHA, 4, 4] = 1.0  # dies
    x[0, :, 15, 15] = torch.rand(CHANNELS)
    x[0, ALPHA, 15, 15] = 0.5  # survives
    out = getattr(nca, method)(x)
    expected = x.clone()
    expected[0, :, 4, 4] = 0.0
    assert torch.equal(out, expected)


# --- rollout --------------------------------------------------------------------------------------------------------


def test_rollout_applies_step_n_times():
    nca = make_nca(randomise_last=True)
    x = random_state()
    torch.manual_seed(3)
    rolled = nca.rollout(x, 5)
    torch.manual_seed(3)
    stepped = x
    for _ in range(5):
        stepped = nca.step(stepped)
    assert torch.equal(rolled, stepped)
    assert not torch.equal(rolled, x)


def test_rollout_reports_every_step_to_on_step():
    nca = make_nca(randomise_last=True)
    x = random_state()
    seen: list[tuple[int, torch.Tensor]] = []
    torch.manual_seed(3)
    out = nca.rollout(x, 4, on_step=lambda i, s: seen.append((i, s)))
    assert [i for i, _ in seen] == [1, 2, 3, 4]
    assert torch.equal(seen[-1][1], out)


def test_rollout_of_zero_steps_returns_input():
    nca = make_nca()
    x = random_state()
    assert torch.equal(nca.rollout(x, 0), x)


def test_rollout_rejects_negative_steps():
    with pytest.raises(ValueError, match="steps"):
        make_nca().rollout(random_state(), -1)


# --- truncated backprop ---------------------------------------------------------------------------------------------

STEPS = 6


def test_truncated_backprop_equals_detached_prefix():
    k = 2
    nca = make_nca(trainable=True, randomise_last=True)
    x = random_state()
    torch.manual_seed(5)
    truncated = parameter_grads(nca, nca.rollout(x, STEPS, backprop_steps=k))

    torch.manual_seed(5)
    state = x
    with torch.no_grad():
        for _ in range(STEPS - k):
            state = nca.step(state)
    state = state.detach()
    for _ in range(k):
        state = nca.step(state)
    manual = parameter_grads(nca, state)

    for a, b in zip(truncated, manual, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_truncated_backprop_differs_from_full_backprop():
    nca = make_nca(trainable=True, randomise_last=True)
    x = random_state()
    torch.manual_seed(5)
    truncated = parameter_grads(nca, nca.rollout(x, STEPS, backprop_steps=2))
    torch.manual_seed(5)
    full = parameter_grads(nca, nca.rollout(x, STEPS))
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(truncated, full, strict=True))


def test_truncated_rollout_builds_no_graph_for_free_steps():
    k = 2
    nca = make_nca(trainable=True, randomise_last=True)
    assert all(p.requires_grad for p in nca.parameters())
    tracked: dict[int, bool] = {}
    torch.manual_seed(5)
    nca.rollout(
        random_state(), STEPS, backprop_steps=k, on_step=lambda i, s: tracked.update({i: s.requires_grad})
    )
    assert tracked == {i: i > STEPS - k for i in range(1, STEPS + 1)}


@pytest.mark.parametrize("backprop_steps", [STEPS, STEPS + 3])
def test_backprop_steps_at_least_steps_equals_full_backprop(backprop_steps):
    nca = make_nca(trainable=True, randomise_last=True)
    x = random_state()
    tracked: list[bool] = []
    torch.manual_seed(5)
    out = nca.rollout(
        x, STEPS, backprop_steps=backprop_steps, on_step=lambda i, s: tracked.append(s.requires_grad)
    )
    limited = parameter_grads(nca, out)
    torch.manual_seed(5)
    full = parameter_grads(nca, nca.rollout(x, STEPS))
    assert tracked == [True] * STEPS
    for a, b in zip(limited, full, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# --- construction errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fire_rate", [0.0, -0.1, 1.01, 2.0])
def test_nca_rejects_fire_rate_outside_unit_interval(fire_rate):
    with pytest.raises(ValueError, match="fire_rate"):
        NCA(FixedPerception(CHANNELS), channels=CHANNELS, hidden=HIDDEN, fire_rate=fire_rate)


def test_nca_accepts_fire_rate_one():
    assert NCA(FixedPerception(CHANNELS), channels=CHANNELS, hidden=HIDDEN, fire_rate=1.0).fire_rate == 1.0


def test_parameter_names_are_those_checkpoints_hold():
    keys = list(make_nca(trainable=True).state_dict())
    assert keys == [
        "perception.weight",
        "update.0.weight",
        "update.0.bias",
        "update.2.weight",
        "update.2.bias",
    ]


def test_nca_rejects_perception_with_other_channel_count():
    with pytest.raises(ValueError, match="channels"):
        NCA(FixedPerception(8), channels=CHANNELS, hidden=HIDDEN)


# --- rgba / to_rgb --------------------------------------------------------------------------------------------------


def one_cell(values: list[float]) -> torch.Tensor:
    x = torch.zeros(1, CHANNELS, 1, 1)
    x[0, : len(values), 0, 0] = torch.tensor(values)
    return x


def test_transparent_cell_composites_to_white():
    assert torch.equal(to_rgb(one_cell([0.0, 0.0, 0.0, 0.0]))[0, :, 0, 0], torch.ones(3))


def test_opaque_red_cell_composites_to_red():
    assert torch.equal(to_rgb(one_cell([1.0, 0.0, 0.0, 1.0]))[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_half_transparent_premultiplied_red_composites_to_pink():
    assert torch.equal(to_rgb(one_cell([0.5, 0.0, 0.0, 0.5]))[0, :, 0, 0], torch.tensor([1.0, 0.5, 0.5]))


def test_rgba_is_first_four_channels_clamped_to_unit_range():
    x = one_cell([1.5, -0.5, 0.25, 2.0, 7.0])
    assert torch.equal(rgba(x)[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.25, 1.0]))
