"""The training recipe that makes patterns hold: no last-layer bias, damage as a share, the overflow penalty."""

from __future__ import annotations

import pytest
import torch

from ncalab.lit_module import overflow
from ncalab.nca import NCA
from ncalab.perception import FixedPerception


def test_last_layer_has_no_bias_by_default():
    nca = NCA(FixedPerception(16), channels=16, hidden=32)
    assert nca.update[-1].bias is None
    assert NCA(FixedPerception(16), channels=16, hidden=32, update_bias=True).update[-1].bias is not None


def test_untrained_model_keeps_its_seed():
    nca = NCA(FixedPerception(16), channels=16, hidden=32, fire_rate=1.0)
    x = nca.seed(1, 9, 9)
    assert torch.equal(nca.step(x), x)


def test_overflow_is_zero_inside_the_bound_and_grows_outside():
    inside = torch.full((1, 16, 4, 4), 0.9)
    assert float(overflow(inside)) == 0.0
    outside = inside.clone()
    outside[0, 5, 0, 0] = 3.0  # 2 above the bound, in one of 256 values
    assert float(overflow(outside)) == pytest.approx(2.0 / 256)
    assert float(overflow(-outside, bound=2.0)) == pytest.approx(1.0 / 256)


def test_a_batch_damages_its_share_and_leaves_the_rest(smoke_cfg):
    from hydra.utils import instantiate

    dm = instantiate(smoke_cfg("data.damage_share=0.5", "data.batch_size=4").data)
    assert dm.damage_n == 2
    dm.pool.states = torch.rand(dm.pool.states.shape) + 0.1  # no zeros anywhere: a hole shows
    before = dm.pool.states.clone()
    idx, x = dm.make_batch(dm.sample_indices())
    assert torch.equal(x[0], dm.pool.seed)  # the worst is reseeded
    assert torch.equal(x[1], before[idx[1]])  # one is left alone
    for k in (2, 3):  # the two best get a hole
        assert bool((x[k] == 0).all(dim=0).any())


def test_damage_radius_sets_the_size_of_the_holes(smoke_cfg):
    from hydra.utils import instantiate

    sizes = {}
    for radius in ("[0.1,0.15]", "[0.5,0.6]"):
        dm = instantiate(smoke_cfg(f"data.damage_radius={radius}", "data.damage_share=0.5").data)
        dm.pool.states = torch.rand(dm.pool.states.shape) + 0.1
        _, x = dm.make_batch(dm.sample_indices())
        sizes[radius] = int((x[2:] == 0).all(dim=1).sum())
    assert sizes["[0.5,0.6]"] > 4 * sizes["[0.1,0.15]"] > 0


@pytest.mark.parametrize("radius", ["[0.4,0.1]", "[0,0.3]", "[0.2]", "[0.5,1.5]"])
def test_bad_damage_radius_is_refused(smoke_cfg, radius):
    from ncalab.errors import ConfigError
    from ncalab.train import build

    with pytest.raises(ConfigError, match=r"data\.damage_radius"):
        build(smoke_cfg(f"data.damage_radius={radius}").data, "data")


def test_hole_shapes():
    """A square hole of half side r covers the disc of radius r and its corners; a mix draws both."""
    from ncalab.data import circle_damage, hole_damage

    x = torch.ones(64, 1, 41, 41)
    disc = hole_damage(x, torch.Generator().manual_seed(0), (0.3, 0.3), ("disc",))
    square = hole_damage(x, torch.Generator().manual_seed(0), (0.3, 0.3), ("square",))
    # the same centres: every cell the disc removes, the square removes too, and ~4/pi as many in all
    assert bool(((disc == 0) <= (square == 0)).all())
    ratio = float((square == 0).sum()) / float((disc == 0).sum())
    assert 1.15 < ratio < 1.4
    # one shape draws exactly Distill's discs from the generator (old runs reproduce)
    assert torch.equal(disc, circle_damage(x, torch.Generator().manual_seed(0), (0.3, 0.3)))
    # a mix: some samples get a square (cells in the corners outside any same-size disc), some a disc
    mixed = hole_damage(x, torch.Generator().manual_seed(0), (0.3, 0.3), ("disc", "square"))
    per_sample = (mixed == 0).flatten(1).sum(1).float()
    kinds = {round(float(v) / float(per_sample.min()), 1) > 1.1 for v in per_sample}
    assert kinds == {True, False}


def test_cut_damage_takes_one_side_of_a_line():
    """A cut zeroes everything on one side of a straight line through a point of the middle half: 15-85% of the
    grid, a convex region that reaches the grid's edge; mixed with discs, the disc draws stay Distill's."""
    from ncalab.data import hole_damage

    x = torch.ones(256, 1, 41, 41)
    cut = hole_damage(x, torch.Generator().manual_seed(0), (0.1, 0.4), ("cut",))
    gone = (cut == 0).flatten(1).float().mean(1)
    assert float(gone.min()) > 0.1 and float(gone.max()) < 0.9
    assert 0.4 < float(gone.mean()) < 0.6
    # every hole touches the border (a side of the pattern is gone, not a hole inside it)
    border = torch.ones(41, 41, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert bool(((cut[:, 0] == 0) & border).flatten(1).any(1).all())
    # a line: along every row the removed cells form one run that starts or ends at the border
    for sample in cut[:8, 0]:
        for row in sample:
            idx = (row == 0).nonzero().flatten()
            if len(idx):
                assert int(idx[-1] - idx[0]) + 1 == len(idx)
                assert int(idx[0]) == 0 or int(idx[-1]) == 40
    # mixed with discs: both kinds occur, and the cut angle is not drawn when no cut is asked for
    mixed = hole_damage(x, torch.Generator().manual_seed(0), (0.1, 0.4), ("disc", "cut"))
    touches = ((mixed[:, 0] == 0) & border).flatten(1).any(1)
    assert 0 < int(touches.sum()) < 256


def test_damage_shapes_reach_the_batch_and_bad_ones_are_refused(smoke_cfg):
    from hydra.utils import instantiate

    from ncalab.errors import ConfigError
    from ncalab.train import build

    dm = instantiate(smoke_cfg("data.damage_shapes=[square]", "data.damage_share=0.5").data)
    assert dm.damage_shapes == ("square",)
    dm.pool.states = torch.rand(dm.pool.states.shape) + 0.1
    _, x = dm.make_batch(dm.sample_indices())
    for k in (2, 3):  # a square hole: its zero cells form a filled axis-aligned box
        rows, cols = (x[k] == 0).all(dim=0).nonzero(as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert len(rows) > 0 and int(box) == len(rows)
    for bad in ("[]", "[disc,star]"):
        with pytest.raises(ConfigError, match=r"data\.damage_shapes.*disc, square"):
            build(smoke_cfg(f"data.damage_shapes={bad}").data, "data")
