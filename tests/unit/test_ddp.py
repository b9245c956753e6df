"""`trainer=ddp`: one run on two CPU processes (gloo): pool shards, averaged gradients, one set of artefacts,
checkpoints with the whole pool, resume with two processes and with one; the processes end with the run's, and
stop with a checkpoint when only the run's process gets the signal."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import make_cfg

from ncalab.data import NCADataModule, shard_bounds
from ncalab.errors import ConfigError
from ncalab.train import run

POOL, BATCH = 16, 4  # experiment=smoke


def _dm(**kw) -> NCADataModule:
    args = dict(target="flower", target_size=12, padding=4, pool_size=POOL, batch_size=BATCH, seed=0)
    return NCADataModule(**{**args, **kw})


def _as_rank(dm: NCADataModule, rank: int, world_size: int) -> NCADataModule:
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    with torch.random.fork_rng():  # setup seeds the global RNG per rank; keep this process's as it was
        dm.setup("fit")
    return dm


@pytest.mark.parametrize("n, world_size", [(16, 2), (5, 2), (7, 3), (3, 3), (1024, 8)])
def test_shards_partition_the_pool(n, world_size):
    bounds = [shard_bounds(n, world_size, r) for r in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [b - a for a, b in bounds]
    assert set(sizes) <= {n // world_size, -(-n // world_size)}  # floor or ceil
    assert sizes == sorted(sizes, reverse=True)  # the ceil-sized shards come first


def test_one_process_is_unchanged():
    dm, plain = _as_rank(_dm(), 0, 1), _dm()
    assert dm.pool.states.shape[0] == POOL
    assert torch.equal(dm.generator.get_state(), plain.generator.get_state())


def test_each_rank_takes_its_shard_and_its_own_stream():
    ranks = [_as_rank(_dm(), r, 2) for r in range(2)]
    assert [len(dm.pool) for dm in ranks] == [POOL // 2, POOL // 2]
    assert torch.equal(ranks[0].generator.get_state(), _dm(seed=0).generator.get_state())
    assert torch.equal(ranks[1].generator.get_state(), _dm(seed=1).generator.get_state())
    assert not torch.equal(ranks[0].sample_indices(), ranks[1].sample_indices())


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_a_saved_pool_is_resplit_for_any_number_of_processes(world_size):
    full = torch.rand(POOL, 16, 20, 20)
    gens = torch.stack([torch.Generator().manual_seed(100 + r).get_state() for r in range(2)])
    state = {"pool": full, "generator": gens[0], "generators": gens, "world_size": 2}
    ranks = [_as_rank(_dm(), r, world_size) for r in range(world_size)]
    for dm in ranks:
        dm.load_state_dict(state)
    assert torch.equal(torch.cat([dm.pool.states for dm in ranks]), full)
    streams = [dm.generator.get_state() for dm in ranks]
    for r in range(min(world_size, 2)):
        assert torch.equal(streams[r], gens[r])
    assert len({bytes(s.tolist()) for s in streams}) == world_size  # a new rank gets a stream of its own


def test_a_checkpoint_without_per_rank_streams_still_loads():
    full = torch.rand(POOL, 16, 20, 20)
    old = {"pool": full, "generator": torch.Generator().manual_seed(5).get_state()}
    ranks = [_as_rank(_dm(), r, 2) for r in range(2)]
    for dm in ranks:
        dm.load_state_dict(old)
    assert torch.equal(torch.cat([dm.pool.states for dm in ranks]), full)
    assert torch.equal(ranks[0].generator.get_state(), old["generator"])
    assert not torch.equal(ranks[1].generator.get_state(), old["generator"])


def test_a_batch_larger_than_a_shard_is_refused():
    with pytest.raises(ConfigError, match=r"data.batch_size=4 .*trainer.devices") as err:
        _as_rank(_dm(pool_size=6), 0, 2)
    assert "data.pool_size>=8" in str(err.value)


def test_growing_mode_is_not_sharded():
    dm = _as_rank(_dm(mode="growing"), 1, 2)
    assert len(dm.pool) == BATCH


def test_a_batch_larger_than_a_pool_shard_is_refused_before_spawning(tmp_path):

    cfg = make_cfg(
        tmp_path / "run", "experiment=smoke", "trainer=ddp", "trainer.devices=2", "data.pool_size=6"
    )
    with pytest.raises(ConfigError, match=r"data\.batch_size=4 is above the pool shard"):
        run(cfg)
