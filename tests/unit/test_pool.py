"""Tests for the sample pool and the data module: SamplePool, circle_damage, per_sample_loss, NCADataModule."""

from __future__ import annotations

import io
import math

import pytest
import torch

from ncalab.data import NCADataModule, SamplePool, circle_damage, damaged_count
from ncalab.errors import ConfigError
from ncalab.metrics import per_sample_loss
from ncalab.nca import seed_state

C, H, W = 6, 32, 32

# ---------------------------------------------------------------- helpers


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _valued_pool(values: list[float]) -> tuple[SamplePool, torch.Tensor, torch.Tensor]:
    """A pool whose state i is filled with values[i] in every channel and cell (never zero), a target of
    zeros (so the loss of state i is values[i] ** 2) and a seed that differs from every state."""
    seed = torch.full((C, H, W), -1.0)
    seed[:, H // 2, W // 2] = 7.0
    pool = SamplePool(seed, len(values))
    for i, v in enumerate(values):
        pool.states[i] = v
    target = torch.zeros(4, H, W)
    return pool, seed, target


def _hole_mask(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """H x W mask of cells that were non-zero in ``before`` and are exactly zero in every channel of ``after``."""
    return (after == 0).all(dim=0) & (before != 0).any(dim=0)


def _assert_disc(mask: torch.Tensor) -> None:
    """The True cells of ``mask`` form a filled, roughly round disc."""
    h, w = mask.shape
    n = int(mask.sum())
    assert n > 0
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    cy, cx = float(ys[mask].mean()), float(xs[mask].mean())
    dist = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()
    r = math.sqrt(n / math.pi)  # radius of a disc with that area
    # every hole cell is close to the equivalent circle, and every cell well inside it is a hole
    assert float(dist[mask].max()) <= r + 1.5
    assert bool(mask[dist <= r - 1.5].all())
    # bounding box is roughly square
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    bh, bw = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert abs(bh - bw) <= 2


# ---------------------------------------------------------------- per_sample_loss


def test_per_sample_loss_values_and_hidden_channels_ignored() -> None:
    x = torch.zeros(3, C, 4, 4)
    x[0, :4] = 1.0
    x[1, 0] = 2.0  # only red: mean over 4 channels -> 4 / 4 = 1
    x[2, 4:] = 100.0  # hidden channels only: ignored
    target = torch.zeros(4, 4, 4)
    loss = per_sample_loss(x, target)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.tensor([1.0, 1.0, 0.0]))
    target = torch.full((4, 4, 4), 0.5)
    torch.testing.assert_close(per_sample_loss(x, target), torch.tensor([0.25, (2.25 + 3 * 0.25) / 4, 0.25]))


# ---------------------------------------------------------------- SamplePool basics


def test_pool_starts_as_copies_of_seed() -> None:
    seed = torch.randn(C, H, W, generator=_gen(1))
    pool = SamplePool(seed, 10)
    assert len(pool) == 10
    assert pool.states.shape == (10, C, H, W)
    for i in range(10):
        assert torch.equal(pool.states[i], seed)
    # the states are a copy: writing to them leaves the seed alone
    pool.states[3] = 0.0
    assert torch.equal(pool.seed, seed)
    assert not torch.equal(pool.states[3], seed)


def test_sample_distinct_in_range_and_reproducible() -> None:
    pool = SamplePool(torch.zeros(C, 4, 4), 50)
    for b in (1, 8, 50):
        idx = pool.sample(b, _gen(3))
        assert idx.shape == (b,)
        assert idx.dtype == torch.int64
        assert len(set(idx.tolist())) == b
        assert int(idx.min()) >= 0 and int(idx.max()) < 50
    assert torch.equal(pool.sample(8, _gen(42)), pool.sample(8, _gen(42)))
    g = _gen(42)
    first, second = pool.sample(8, g), pool.sample(8, g)
    assert not torch.equal(first, second)  # the generator advances
    g2 = _gen(42)
    assert torch.equal(pool.sample(8, g2), first)
    assert torch.equal(pool.sample(8, g2), second)
    assert not torch.equal(pool.sample(8, _gen(1)), pool.sample(8, _gen(2)))


# ---------------------------------------------------------------- SamplePool.batch


def test_batch_orders_by_loss_and_reseeds_worst() -> None:
    values = [0.1, 0.9, 0.3, 0.7, 0.5, 0.2, 0.8, 0.4]
    pool, seed, target = _valued_pool(values)
    before = pool.states.clone()
    idx = torch.tensor([0, 2, 3, 6, 7])  # values 0.1, 0.3, 0.7, 0.8, 0.4
    new_idx, x = pool.batch(idx, target, damage_n=0, generator=_gen(0))
    assert new_idx.tolist() == [6, 3, 7, 2, 0]  # loss descending
    assert x.shape == (5, C, H, W)
    assert torch.equal(x[0], seed)  # the worst is replaced by the seed, exactly
    for k in range(1, 5):
        assert torch.equal(x[k], before[new_idx[k]])  # the rest untouched (damage_n=0)
    assert torch.equal(pool.states, before)  # the pool itself is not modified
    assert torch.equal(idx, torch.tensor([0, 2, 3, 6, 7]))  # nor the caller's index tensor


def test_batch_damages_the_lowest_loss_samples() -> None:
    values = [0.1, 0.9, 0.3, 0.7, 0.5, 0.2, 0.8, 0.4]
    pool, seed, target = _valued_pool(values)
    before = pool.states.clone()
    idx = torch.tensor([1, 2, 4, 5, 6, 7])  # values 0.9, 0.3, 0.5, 0.2, 0.8, 0.4
    new_idx, x = pool.batch(idx, target, damage_n=2, generator=_gen(11))
    assert new_idx.tolist() == [1, 6, 4, 7, 2, 5]
    assert torch.equal(x[0], seed)
    # middle samples untouched
    for k in (1, 2, 3):
        assert torch.equal(x[k], before[new_idx[k]])
    # the two lowest-loss samples have a disc-shaped hole and are otherwise unchanged
    for k in (4, 5):
        orig = before[new_idx[k]]
        hole = _hole_mask(orig, x[k])
        assert 0 < int(hole.sum()) < 0.6 * H * W
        _assert_disc(hole)
        assert torch.equal(x[k][:, ~hole], orig[:, ~hole])
    # same damage as circle_damage with the same generator state
    expected = circle_damage(before[new_idx[4:]], _gen(11))
    assert torch.equal(x[4:], expected)
    assert torch.equal(pool.states, before)


def test_batch_damage_is_deterministic_with_generator() -> None:
    pool, _, target = _valued_pool([0.1, 0.2, 0.3, 0.4, 0.5])
    idx = torch.arange(5)
    a = pool.batch(idx, target, damage_n=3, generator=_gen(5))
    b = pool.batch(idx, target, damage_n=3, generator=_gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = pool.batch(idx, target, damage_n=3, generator=_gen(6))
    assert not torch.equal(a[1], c[1])


def test_batch_damage_zero_damages_nothing() -> None:
    pool, seed, target = _valued_pool([0.4, 0.3, 0.2, 0.1])
    new_idx, x = pool.batch(torch.arange(4), target, damage_n=0, generator=_gen(0))
    assert new_idx.tolist() == [0, 1, 2, 3]
    assert torch.equal(x[0], seed)
    assert not bool((x[1:] == 0).any())
    for k in range(1, 4):
        assert torch.equal(x[k], pool.states[new_idx[k]])


def test_batch_damage_n_larger_than_batch_spares_the_seed_and_one_more() -> None:
    pool, seed, target = _valued_pool([0.4, 0.3, 0.2, 0.1])
    new_idx, x = pool.batch(torch.arange(4), target, damage_n=10, generator=_gen(0))
    assert torch.equal(x[0], seed)
    # The worst non-seed sample is left alone: damage never takes every sample of a batch.
    assert torch.equal(x[1], pool.states[new_idx[1]])
    for k in range(2, 4):
        assert int(_hole_mask(pool.states[new_idx[k]], x[k]).sum()) > 0


@pytest.mark.parametrize(
    "share, batch, expected",
    [(0.375, 8, 3), (0.375, 4, 1), (0.375, 2, 0), (0.25, 4, 1), (0.0, 8, 0), (0.5, 4, 2), (0.75, 8, 6)],
)
def test_damaged_count_is_a_share_of_the_batch(share, batch, expected) -> None:
    assert damaged_count(share, batch) == expected


@pytest.mark.parametrize("share, batch", [(0.75, 4), (0.9, 8), (1.0, 8), (-0.1, 8), (0.5, 2)])
def test_damaged_count_refuses_a_share_that_damages_every_sample(share, batch) -> None:
    with pytest.raises(ConfigError, match="data.damage_share"):
        damaged_count(share, batch)


def test_datamodule_refuses_a_damage_share_that_leaves_nothing_undamaged() -> None:
    with pytest.raises(ConfigError, match=r"data\.damage_share=0\.8.*at most 2"):
        _dm(batch_size=4, damage_share=0.8)


def test_batch_returns_copies() -> None:
    pool, _, target = _valued_pool([0.4, 0.3, 0.2])
    before = pool.states.clone()
    _, x = pool.batch(torch.arange(3), target)
    x += 100.0
    assert torch.equal(pool.states, before)


def test_batch_of_one_with_damage_keeps_the_seed_intact() -> None:
    pool, seed, target = _valued_pool([0.5, 0.5, 0.5])
    pool.seed = torch.ones(C, H, W)  # a seed that any hole would show in
    _, x = pool.batch(torch.tensor([1]), target, damage_n=1, generator=_gen(0))
    assert torch.equal(x[0], pool.seed)


# ---------------------------------------------------------------- SamplePool.write_back


def test_write_back_touches_only_given_indices() -> None:
    pool = SamplePool(torch.zeros(C, H, W), 8)
    before = pool.states.clone()
    x = torch.stack([torch.full((C, H, W), 5.0), torch.full((C, H, W), 9.0)])
    pool.write_back(torch.tensor([5, 2]), x)
    assert torch.equal(pool.states[5], x[0])
    assert torch.equal(pool.states[2], x[1])
    others = [i for i in range(8) if i not in (2, 5)]
    assert torch.equal(pool.states[others], before[others])


def test_write_back_detaches_and_keeps_dtype() -> None:
    pool = SamplePool(torch.zeros(C, 4, 4), 4)
    x = torch.ones(2, C, 4, 4, dtype=torch.float64, requires_grad=True) * 3.0
    pool.write_back(torch.tensor([0, 3]), x)
    assert pool.states.dtype == torch.float32
    assert not pool.states.requires_grad
    assert bool((pool.states[[0, 3]] == 3.0).all())
    assert bool((pool.states[[1, 2]] == 0.0).all())


def test_batch_then_write_back_round_trip() -> None:
    pool, seed, target = _valued_pool([0.1, 0.9, 0.3, 0.7])
    new_idx, x = pool.batch(torch.tensor([0, 1, 2]), target, damage_n=0)
    pool.write_back(new_idx, x)
    assert torch.equal(pool.states[1], seed)  # the worst slot now holds the seed
    assert bool((pool.states[0] == 0.1).all()) and bool((pool.states[2] == 0.3).all())
    assert bool((pool.states[3] == 0.7).all())


# ---------------------------------------------------------------- circle_damage


def test_circle_damage_fraction_in_plausible_range() -> None:
    x = torch.ones(200, 2, H, W)
    out = circle_damage(x, _gen(0))
    assert out.shape == x.shape
    frac = (out[:, 0] == 0).float().mean(dim=(1, 2))
    assert bool((frac > 0).all())
    assert bool((frac < 0.6).all())
    # radius 0.1 .. 0.4 of the half-size: area fraction pi r^2 / 4 is between ~0.008 and ~0.126
    assert float(frac.min()) >= 0.003
    assert float(frac.max()) <= 0.16
    # E[pi r^2 / 4] with r ~ U(0.1, 0.4) is pi * 0.07 / 4 ~ 0.055
    assert 0.04 < float(frac.mean()) < 0.07
    # same hole in every channel, and cells outside the hole keep their value
    assert torch.equal(out[:, 0] == 0, out[:, 1] == 0)
    assert bool((out[out != 0] == 1).all())


def test_circle_damage_holes_are_discs_in_the_middle() -> None:
    x = torch.ones(30, 1, H, W)
    out = circle_damage(x, _gen(3))
    for k in range(30):
        hole = out[k, 0] == 0
        _assert_disc(hole)
        ys, xs = hole.nonzero(as_tuple=True)
        # centre within the middle half of the grid (normalised [-0.5, 0.5]), with a cell of slack
        cy, cx = ys.float().mean(), xs.float().mean()
        lo, hi = (H - 1) * 0.25 - 1, (H - 1) * 0.75 + 1
        assert lo <= float(cy) <= hi and lo <= float(cx) <= hi
        # radius at most 0.4 of the half-size (+ a cell)
        r_cells = math.sqrt(int(hole.sum()) / math.pi)
        assert r_cells <= 0.4 * (H - 1) / 2 + 1


def test_circle_damage_deterministic_and_keeps_values() -> None:
    x = torch.rand(8, 3, H, W, generator=_gen(9)) + 0.5  # never zero
    x_before = x.clone()
    a = circle_damage(x, _gen(4))
    b = circle_damage(x, _gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, circle_damage(x, _gen(5)))
    kept = a != 0
    assert torch.equal(a[kept], x[kept])
    assert torch.equal(x, x_before)  # input not modified in place
    # no generator: still a valid result
    c = circle_damage(x)
    assert c.shape == x.shape and bool((c == 0).any())


def test_circle_damage_custom_radius() -> None:
    x = torch.ones(50, 1, H, W)
    small = (circle_damage(x, _gen(0), radius=(0.05, 0.06))[:, 0] == 0).float().mean(dim=(1, 2))
    big = (circle_damage(x, _gen(0), radius=(0.5, 0.6))[:, 0] == 0).float().mean(dim=(1, 2))
    assert float(small.max()) < float(big.min())


# ---------------------------------------------------------------- NCADataModule


def _dm(**kw) -> NCADataModule:
    args = dict(
        target="flower",
        target_size=12,
        padding=4,
        pool_size=16,
        batch_size=4,
        channels=16,
        damage_share=0.25,
        steps_per_epoch=5,
        seed=0,
    )
    args.update(kw)
    return NCADataModule(**args)


def _fill_pool_nonzero(dm: NCADataModule, seed: int = 0) -> None:
    """Give every pool state distinct positive values in all channels and cells."""
    g = _gen(seed)
    dm.pool.states = torch.rand(dm.pool.states.shape, generator=g) + 0.1


def test_datamodule_shapes_and_initial_pool() -> None:
    dm = _dm()
    assert dm.target.shape == (4, 20, 20)
    assert (dm.height, dm.width) == (20, 20)
    assert dm.pool.states.shape == (16, 16, 20, 20)
    seed = seed_state(1, 16, 20, 20)[0]
    assert torch.equal(dm.pool.seed, seed)
    assert bool((dm.pool.states == seed).all())
    assert dm.mode == "regenerating" and dm.damage_n == 1


def test_growing_mode_always_seeds_and_ignores_write_back() -> None:
    dm = _dm(mode="growing", damage_share=0.5)
    assert dm.damage_n == 0
    assert len(dm.pool) == dm.batch_size
    seed = seed_state(1, 16, 20, 20)[0]
    before = dm.pool.states.clone()
    for _ in range(3):
        idx = dm.sample_indices()
        new_idx, x = dm.make_batch(idx)
        assert torch.equal(new_idx, idx)
        assert x.shape == (4, 16, 20, 20)
        assert bool((x == seed).all())
        dm.write_back(new_idx, torch.full_like(x, 3.0))
    assert torch.equal(dm.pool.states, before)


def test_persistent_mode_has_no_damage() -> None:
    dm = _dm(mode="persistent", damage_share=0.5)
    assert dm.damage_n == 0
    _fill_pool_nonzero(dm)
    before = dm.pool.states.clone()
    seed = dm.pool.seed
    for _ in range(3):
        idx = dm.sample_indices()
        new_idx, x = dm.make_batch(idx)
        assert sorted(new_idx.tolist()) == sorted(idx.tolist())
        assert torch.equal(x[0], seed)
        for k in range(1, 4):
            assert torch.equal(x[k], before[new_idx[k]])
        loss = per_sample_loss(before[new_idx], dm.target)
        assert bool((loss[:-1] >= loss[1:]).all())


def test_regenerating_mode_damages() -> None:
    dm = _dm(mode="regenerating", damage_share=0.25)
    _fill_pool_nonzero(dm)
    before = dm.pool.states.clone()
    new_idx, x = dm.make_batch(dm.sample_indices())
    assert torch.equal(x[0], dm.pool.seed)
    for k in (1, 2):
        assert torch.equal(x[k], before[new_idx[k]])
    hole = _hole_mask(before[new_idx[3]], x[3])
    assert int(hole.sum()) > 0
    assert torch.equal(dm.pool.states, before)  # make_batch does not touch the pool


def test_write_back_through_datamodule() -> None:
    dm = _dm(mode="persistent")
    before = dm.pool.states.clone()
    idx = torch.tensor([3, 9, 0, 15])
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 16, 20, 20) + 1.0
    dm.write_back(idx, x)
    for k, i in enumerate(idx.tolist()):
        assert bool((dm.pool.states[i] == k + 1).all())
    rest = [i for i in range(16) if i not in idx.tolist()]
    assert torch.equal(dm.pool.states[rest], before[rest])


def test_make_batch_device_argument() -> None:
    dm = _dm()
    idx, x = dm.make_batch(dm.sample_indices(), device="cpu")
    assert x.device.type == "cpu" and idx.device.type == "cpu"


def test_unknown_mode_raises() -> None:
    with pytest.raises(ValueError, match="data.mode") as info:
        _dm(mode="shrinking")
    msg = str(info.value)
    assert "shrinking" in msg
    for mode in ("growing", "persistent", "regenerating"):
        assert mode in msg


def test_train_dataloader_yields_index_batches() -> None:
    dm = _dm(steps_per_epoch=5)
    dl = dm.train_dataloader()
    assert dl.num_workers == 0
    assert len(dl) == 5
    it = iter(dl)
    for _ in range(3):
        idx = next(it)
        assert isinstance(idx, torch.Tensor)
        assert idx.shape == (4,)
        assert idx.dtype == torch.int64
        assert len(set(idx.tolist())) == 4
        assert int(idx.min()) >= 0 and int(idx.max()) < 16
    assert len(list(dm.train_dataloader())) == 5


def test_train_dataloader_uses_datamodule_generator() -> None:
    a, b = _dm(seed=7), _dm(seed=7)
    from_loader = list(a.train_dataloader())
    direct = [b.sample_indices() for _ in range(5)]
    for x, y in zip(from_loader, direct, strict=True):
        assert torch.equal(x, y)


def test_same_seed_same_samples_different_seed_differs() -> None:
    a, b, c = _dm(seed=1), _dm(seed=1), _dm(seed=2)
    sa = [a.sample_indices() for _ in range(4)]
    sb = [b.sample_indices() for _ in range(4)]
    sc = [c.sample_indices() for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(sa, sc, strict=True))


def _advanced_dm() -> NCADataModule:
    dm = _dm(mode="regenerating")
    _fill_pool_nonzero(dm, seed=5)
    for _ in range(3):
        idx, x = dm.make_batch(dm.sample_indices())
        dm.write_back(idx, x * 0.5)
    return dm


def test_state_dict_round_trip_restores_pool_and_generator() -> None:
    dm = _advanced_dm()
    state = dm.state_dict()
    saved_pool = state["pool"].clone()
    assert state["mode"] == "regenerating" and state["target"] == "flower"
    assert tuple(state["pool"].shape) == (16, 16, 20, 20)

    fresh = _dm(mode="regenerating")
    assert not torch.equal(fresh.pool.states, saved_pool)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.pool.states, saved_pool)
    for _ in range(4):
        assert torch.equal(fresh.sample_indices(), dm.sample_indices())
    # make_batch (which also uses the generator for damage) agrees too
    ia, xa = dm.make_batch(dm.sample_indices())
    ib, xb = fresh.make_batch(fresh.sample_indices())
    assert torch.equal(ia, ib) and torch.equal(xa, xb)
    # the loaded pool is a copy: changing it does not affect the state dict it came from
    assert fresh.pool.states is not state["pool"]
    fresh.pool.states.zero_()
    assert torch.equal(state["pool"], saved_pool)


def test_state_dict_survives_torch_save_weights_only() -> None:
    dm = _advanced_dm()
    buf = io.BytesIO()
    torch.save(dm.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = _dm(mode="regenerating")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.pool.states, dm.pool.states)
    for _ in range(3):
        assert torch.equal(fresh.sample_indices(), dm.sample_indices())


@pytest.mark.parametrize("other", [dict(pool_size=8), dict(channels=12), dict(target_size=16)])
def test_load_state_dict_with_other_pool_shape_raises(other: dict) -> None:
    state = _dm().state_dict()
    dm = _dm(**other)
    before = dm.pool.states.clone()
    with pytest.raises(ValueError, match="pool_size") as info:
        dm.load_state_dict(state)
    msg = str(info.value)
    assert str(tuple(state["pool"].shape)) in msg
    assert str(tuple(before.shape)) in msg
    assert torch.equal(dm.pool.states, before)


def test_batch_without_reseed_keeps_the_worst_sample() -> None:
    values = [0.1, 0.9, 0.3, 0.7]
    pool, seed, target = _valued_pool(values)
    before = pool.states.clone()
    new_idx, x = pool.batch(torch.arange(4), target, damage_n=0, generator=_gen(0), reseed=False)
    assert new_idx.tolist() == [1, 3, 2, 0]
    for k in range(4):
        assert torch.equal(x[k], before[new_idx[k]])  # the worst too: it trains on as it is


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_reseed_share_reseeds_about_that_share_of_batches(share) -> None:
    dm = _dm(reseed_share=share, damage_share=0.0)
    _fill_pool_nonzero(dm)
    reseeded = 0
    for _ in range(400):
        _, x = dm.make_batch(dm.sample_indices())
        reseeded += int(torch.equal(x[0], dm.pool.seed))
    assert abs(reseeded / 400 - share) < 0.08, reseeded


def test_reseed_share_one_reseeds_every_batch_and_draws_nothing_more() -> None:
    a, b = _dm(), _dm(reseed_share=1.0)
    for dm in (a, b):
        _fill_pool_nonzero(dm)
    for _ in range(5):
        (ia, xa), (ib, xb) = a.make_batch(a.sample_indices()), b.make_batch(b.sample_indices())
        assert torch.equal(ia, ib) and torch.equal(xa, xb) and torch.equal(xa[0], a.pool.seed)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


@pytest.mark.parametrize("share", [0, -0.5, 1.5, "half", True])
def test_a_bad_reseed_share_is_refused_naming_the_key(share) -> None:
    with pytest.raises(ConfigError, match=r"data\.reseed_share=.* must be a number in \(0, 1\]"):
        _dm(reseed_share=share)


def test_pool_ageing_runs_some_pool_states_on_and_leaves_the_rest() -> None:
    dm = _dm(age_samples=3, age_steps=5)
    _fill_pool_nonzero(dm)
    before = dm.pool.states.clone()
    calls = []

    def run(states, steps):
        calls.append((states.shape[0], steps, torch.is_grad_enabled()))
        return states + steps

    idx = dm.age(run)
    assert calls == [(3, 5, False)]
    assert len(set(idx.tolist())) == 3
    changed = (dm.pool.states != before).flatten(1).any(1)
    assert sorted(changed.nonzero().flatten().tolist()) == sorted(idx.tolist())
    torch.testing.assert_close(dm.pool.states[idx], before[idx] + 5)


def test_pool_ageing_off_by_default_draws_nothing() -> None:
    dm = _dm()
    state = dm.generator.get_state()
    assert dm.age(lambda s, n: s + 1) is None
    assert torch.equal(dm.generator.get_state(), state)


@pytest.mark.parametrize(("key", "value"), [("age_samples", -1), ("age_samples", 1.5), ("age_steps", 0)])
def test_bad_pool_ageing_settings_are_refused_naming_the_key(key, value) -> None:
    with pytest.raises(ConfigError, match=rf"data\.{key}={value!r} must be an integer"):
        _dm(**{key: value})
