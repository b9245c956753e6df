"""The rendering choice: render=cells is exactly the per-cell image; render=decoder draws the image `scale` times
finer than the cell grid, trains, checkpoints, resumes and evaluates on the drawn image; bad settings get one line."""

from __future__ import annotations

import pytest
import torch

from ncalab.errors import ConfigError, TargetError
from ncalab.nca import NCA, seed_state
from ncalab.perception import FixedPerception
from ncalab.render import CellRender, DecoderRender, build_render, pixel_offsets


def test_cells_render_is_the_states_rgba():
    x = torch.randn(2, 16, 5, 7)
    assert torch.equal(CellRender()(x), x[:, :4])
    assert (
        build_render(None, 16).scale == 1 and build_render({"name": "cells", "scale": 1}, 16).name == "cells"
    )


def test_pixel_offsets_are_centred_inside_each_cell():
    off = pixel_offsets(4)
    assert off.shape == (2, 4, 4)
    assert torch.allclose(off[0, :, 0], torch.tensor([-0.375, -0.125, 0.125, 0.375]))  # rows, top to bottom
    assert torch.allclose(off[1, 0, :], torch.tensor([-0.375, -0.125, 0.125, 0.375]))  # columns
    assert torch.allclose(off.sum(dim=(1, 2)), torch.zeros(2))


def test_the_decoder_draws_scale_times_finer_and_dead_cells_stay_transparent():
    dec = DecoderRender(channels=16, scale=3, hidden=8, layers=2)
    x = seed_state(2, 16, 6, 5)
    image = dec(x)
    assert image.shape == (2, 4, 18, 15)
    alive = torch.nn.functional.max_pool2d(x[:, 3:4], 3, 1, 1) > 0.1  # the seed and its 8 neighbours
    dead = ~alive.repeat_interleave(3, -2).repeat_interleave(3, -1)
    assert torch.all(image.masked_select(dead.expand_as(image)) == 0)
    assert image.masked_select(~dead.expand_as(image)).abs().sum() > 0
    # the pixels of one live cell differ: the offset inside the cell reaches the network
    cell = image[0, :, 9:12, 6:9]
    assert not torch.allclose(cell[:, 0, 0], cell[:, 2, 2])


def test_the_decoders_weights_get_gradients_through_the_image():
    nca = NCA(FixedPerception(16, "sobel3"), hidden=8, render=DecoderRender(16, scale=2, hidden=8))
    x = seed_state(1, 16, 6, 6)
    loss = nca.render(nca.rollout(x, 2)).square().mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in nca.render.parameters())
    assert {k for k in nca.state_dict() if k.startswith("render.")} >= {
        "render.head.weight",
        "render.body.0.weight",
    }


@pytest.mark.parametrize(
    "node, match",
    [
        ({"name": "decoder", "scale": 0}, r"render\.scale=0 is not valid"),
        ({"name": "decoder", "scale": 1000}, r"render\.scale=1000 is not valid"),
        ({"name": "decoder", "scale": 2.5}, r"render\.scale=2\.5 is not valid"),
        ({"name": "decoder", "hidden": 0}, r"render\.hidden=0 is not valid"),
        ({"name": "decoder", "omega": -1}, r"render\.omega=-1 is not valid"),
        ({"name": "decoder", "size": 3}, r"render\.size is not a setting of render=decoder"),
        ({"name": "cells", "scale": 4}, r"render=cells draws one pixel per cell"),
        ({"name": "pixels"}, r"render\.name='pixels' is not valid; accepted: cells, decoder"),
    ],
)
def test_bad_render_settings_are_refused_naming_the_key(node, match):
    with pytest.raises(ConfigError, match=match):
        build_render(node, 16)


def test_a_scale_that_does_not_divide_the_image_is_refused_naming_it():
    from ncalab.targets import load_target

    with pytest.raises(TargetError, match=r"render\.scale=3 does not divide the image.*20 px"):
        load_target("flower", 12, 4, cell=3)
    assert load_target("flower", 12, 4, cell=2).shape == (4, 20, 20)


def test_the_seed_lands_on_a_cell_of_the_pattern_at_a_scale():
    from ncalab.targets import load_target

    target = load_target("emoji:doughnut", 24, 4, on_seed=True, cell=2)
    cells = torch.nn.functional.avg_pool2d(target[3:4], 2)[0]
    h, w = cells.shape
    assert cells[h // 2, w // 2] >= 0.5


def test_the_cell_loss_compares_the_cells_with_the_target_averaged_over_each_cell():
    from ncalab.lit_module import cell_loss

    target = torch.rand(1, 4, 8, 12)
    coarse = torch.nn.functional.avg_pool2d(target, 4)  # 2 x 3 cells
    x = torch.zeros(3, 16, 2, 3)
    x[:, :4] = coarse
    assert float(cell_loss(x, target, 4)) == pytest.approx(0.0, abs=1e-12)
    x[:, 3] += 0.5  # every cell's alpha off by 0.5: a quarter of the channels off by 0.5
    assert float(cell_loss(x, target, 4)) == pytest.approx(0.25 / 4)


def test_the_cell_loss_makes_cells_come_alive_where_the_image_is_opaque():
    """With the drawn image masked by the alive cells, only the cell loss asks a dead cell under an opaque pixel to
    come alive: a gradient reaches the update network through the cells' alpha."""
    from ncalab.lit_module import cell_loss

    torch.manual_seed(0)
    nca = NCA(FixedPerception(16, ops=["sobel3_x", "sobel3_y"]), render=DecoderRender(16, scale=2, hidden=8))
    target = torch.zeros(1, 4, 12, 12)
    target[:, :, 2:10, 2:10] = 1.0
    x = nca.rollout(seed_state(1, 16, 6, 6), 3)
    loss = cell_loss(x, target, 2)
    loss.backward()
    assert float(loss) > 0.1
    assert float(nca.update[-1].weight.grad.abs().sum()) > 0
