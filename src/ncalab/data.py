"""The sample pool that the training draws its batches from, the damage it does to them, and the DataModule
that holds the pool and the target (loaded by :func:`ncalab.targets.load_target`).

Under DDP (``trainer=ddp``) every process keeps its own shard of the pool; checkpoints hold the whole pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from ncalab.errors import CheckpointError, ConfigError
from ncalab.metrics import per_sample_loss
from ncalab.nca import seed_state
from ncalab.targets import load_target

MODES = ("growing", "persistent", "regenerating")


def _rebuild_generator(device: str, state: bytes) -> torch.Generator:
    generator = torch.Generator(device)
    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return generator


def _reduce_generator(generator: torch.Generator):
    return _rebuild_generator, (str(generator.device), generator.get_state().numpy().tobytes())


# torch.multiprocessing cannot send a torch.Generator to a spawned process (its state tensor fails in shared
# memory: "bad value(s) in fds_to_keep"), and ddp_spawn sends the DataModule and the LightningModule, which hold
# one each. Send the generator's state as bytes instead: the copy draws the same numbers.
ForkingPickler.register(torch.Generator, _reduce_generator)


DAMAGE_RADIUS = (0.1, 0.4)  # Distill's: in units of half the grid


def circle_damage(
    x: torch.Tensor, generator: torch.Generator | None = None, radius: tuple[float, float] = DAMAGE_RADIUS
) -> torch.Tensor:
    """Zero a random disc in each sample (Distill: centre in the middle half, radius 0.1-0.4 of half the grid)."""
    return hole_damage(x, generator, radius, ("disc",))


DAMAGE_SHAPES = ("disc", "square", "cut")


def hole_damage(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    radius: tuple[float, float] = DAMAGE_RADIUS,
    shapes: tuple[str, ...] = ("disc",),
) -> torch.Tensor:
    """Zero a random hole in each sample: its centre uniform in the middle half of the grid, its shape drawn
    uniformly from ``shapes``:

    - ``disc`` (Distill's) and ``square`` (axis-aligned): a radius or half side uniform in ``radius`` (units of
      half the grid);
    - ``cut``: everything on one side of a straight line through the centre, at an angle drawn uniformly: a
      pattern loses a whole side (15-85% of it), as when a user erases a half; a hole inside the pattern never
      shows that.

    With one shape no shape is drawn, and the angle is drawn only when ``cut`` is among ``shapes``, so
    ``("disc",)`` draws exactly Distill's holes from the generator."""
    b, _, h, w = x.shape
    g = dict(generator=generator) if generator is not None else {}
    centre = torch.rand(b, 2, 1, 1, **g) - 0.5
    r = radius[0] + (radius[1] - radius[0]) * torch.rand(b, 1, 1, **g)
    pick = torch.randint(len(shapes), (b, 1, 1), **g) if len(shapes) > 1 else None
    angle = 2.0 * math.pi * torch.rand(b, 1, 1, **g) if "cut" in shapes else None
    ys = torch.linspace(-1.0, 1.0, h).view(1, h, 1)
    xs = torch.linspace(-1.0, 1.0, w).view(1, 1, w)
    dx, dy = xs - centre[:, 0], ys - centre[:, 1]
    holes = {
        "disc": lambda: (dx**2 + dy**2) < r**2,
        "square": lambda: (dx.abs() < r) & (dy.abs() < r),
        "cut": lambda: (dx * torch.cos(angle) + dy * torch.sin(angle)) > 0,
    }
    if pick is None:
        hole = holes[shapes[0]]()
    else:
        hole = torch.zeros(b, h, w, dtype=torch.bool)
        for i, shape in enumerate(shapes):
            hole |= holes[shape]() & (pick == i)
    return x * (~hole).unsqueeze(1).to(x.device, x.dtype)


def max_damaged(batch_size: int) -> int:
    """The most samples of a batch that may be damaged: all but the reseeded one and at least one left alone."""
    return max(batch_size - 2, 0)


def damaged_count(damage_share: float, batch_size: int) -> int:
    """How many samples of a batch get a hole: ``floor(damage_share * batch_size)`` (Distill: 3 of 8).

    Raises :class:`ConfigError` when that would leave no sample besides the reseeded one undamaged.
    """
    if not 0.0 <= damage_share < 1.0:
        raise ConfigError(f"data.damage_share={damage_share!r} must be in [0, 1) (a share of the batch)")
    n = math.floor(damage_share * batch_size + 1e-9)
    if n > max_damaged(batch_size):
        raise ConfigError(
            f"data.damage_share={damage_share} damages {n} of data.batch_size={batch_size} samples; one sample "
            f"of each batch is reseeded and at least one must be left undamaged, so at most {max_damaged(batch_size)} "
            f"may be damaged (data.damage_share<={max_damaged(batch_size) / batch_size:.3g})"
        )
    return n


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``rank``'s shard when ``n`` rows are split over ``world_size`` processes.

    Contiguous shards as ``numpy.array_split``: the first ``n % world_size`` ranks get ``ceil(n / world_size)``
    rows, the others ``floor(n / world_size)``; together they are exactly the ``n`` rows.
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class SamplePool:
    """A tensor of states that training samples from and writes back to (Distill's sample pool)."""

    def __init__(self, seed: torch.Tensor, size: int):
        self.seed = seed  # C x H x W
        self.states = seed.unsqueeze(0).repeat(size, 1, 1, 1)

    def __len__(self) -> int:
        return self.states.shape[0]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Indices of ``batch_size`` distinct samples."""
        return torch.randperm(len(self), generator=generator)[:batch_size]

    def batch(
        self,
        idx: torch.Tensor,
        target: torch.Tensor,
        damage_n: int = 0,
        generator: torch.Generator | None = None,
        damage_radius: tuple[float, float] = DAMAGE_RADIUS,
        damage_shapes: tuple[str, ...] = ("disc",),
        loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reseed: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """States at ``idx`` sorted by loss (worst first); the worst is replaced by the seed (unless ``reseed`` is
        false: then it trains on as it is) and the
        ``damage_n`` best get a hole (:func:`hole_damage`; at most :func:`max_damaged`: the reseeded sample and one more are
        never damaged, so every batch trains the pattern to persist). Returns ``(idx, states)`` in the new order.
        ``loss_fn(states)``: the per-sample loss to sort by, when it is not the states' RGBA against ``target``
        (a decoder's rendered image)."""
        x = self.states[idx].clone()
        with torch.no_grad():
            losses = loss_fn(x) if loss_fn is not None else per_sample_loss(x, target)
        order = losses.cpu().argsort(descending=True)
        idx, x = idx[order], x[order]
        if reseed:
            x[0] = self.seed
        n = min(damage_n, max_damaged(len(idx)))
        if n > 0:
            x[-n:] = hole_damage(x[-n:], generator, damage_radius, damage_shapes)
        return idx, x

    def write_back(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        self.states[idx.cpu()] = x.detach().to(self.states.device, self.states.dtype)


class _IndexStream(IterableDataset):
    """Yields pool indices forever; the states are gathered at step time so that write-backs are always seen
    (Lightning fetches one batch ahead)."""

    def __init__(self, datamodule: NCADataModule, length: int):
        self.datamodule = datamodule
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        for _ in range(self.length):
            yield self.datamodule.sample_indices()


class NCADataModule(L.LightningDataModule):
    """Supplies the padded target and owns the sample pool (a plain tensor, saved in checkpoints).

    With several processes (DDP) each rank keeps its own contiguous shard of the pool (:func:`shard_bounds`:
    ``ceil`` or ``floor`` of ``pool_size / world_size`` states) and draws its batches from it with its own
    generator seeded ``seed + rank`` (the global torch RNG, used by the NCA's stochastic updates, is seeded
    ``seed + rank`` too). ``batch_size`` is per process: one optimiser step sees ``batch_size * world_size``
    samples. The pool is a plain tensor on this object, never a registered buffer: DDP would broadcast a buffer
    from rank 0 and every rank would train on rank 0's states. Checkpoints hold the whole pool (the shards of
    all ranks gathered in rank order) and every rank's generator state; loading takes this rank's shard of it,
    so a checkpoint resumes with any number of processes (the pool is re-split).
    With one process everything is as without DDP: the whole pool, the generator seeded ``seed``.
    """

    def __init__(
        self,
        target: str = "flower",
        target_size: int = 40,
        padding: int = 16,
        allow_upscale: bool = False,
        seed_on_pattern: bool = True,
        channels: int = 16,
        pool_size: int = 1024,
        batch_size: int = 8,
        mode: str = "regenerating",
        damage_share: float = 0.375,
        damage_radius: tuple[float, float] | list[float] = DAMAGE_RADIUS,
        damage_shapes: tuple[str, ...] | list[str] = ("disc",),
        steps_per_epoch: int = 100,
        seed: int = 0,
        scale: int = 1,
        reseed_share: float = 1.0,
        age_samples: int = 0,
        age_steps: int = 96,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"data.mode={mode!r}; accepted: {', '.join(MODES)}")
        self.target_name = target
        self.channels = channels
        self.pool_size = pool_size
        self.batch_size = batch_size
        self.mode = mode
        self.damage_share = damage_share
        radius = tuple(float(r) for r in damage_radius)
        if len(radius) != 2 or not 0.0 < radius[0] <= radius[1] <= 1.0:
            raise ConfigError(
                f"data.damage_radius={list(damage_radius)!r} must be [min, max] with 0 < min <= max <= 1 "
                "(radius of the hole in units of half the grid)"
            )
        self.damage_radius = radius
        shapes = (damage_shapes,) if isinstance(damage_shapes, str) else tuple(damage_shapes)
        if not shapes or any(s not in DAMAGE_SHAPES for s in shapes):
            raise ConfigError(
                f"data.damage_shapes={list(shapes)!r} must be a non-empty list of {', '.join(DAMAGE_SHAPES)} "
                "(each damaged sample gets one of them, drawn uniformly)"
            )
        self.damage_shapes = shapes
        if not (
            isinstance(reseed_share, int | float)
            and not isinstance(reseed_share, bool)
            and 0 < reseed_share <= 1
        ):
            raise ConfigError(
                f"data.reseed_share={reseed_share!r} must be a number in (0, 1]: the share of batches whose worst "
                "sample is replaced by the seed (1: every batch, as Distill's pool)"
            )
        self.reseed_share = float(reseed_share)
        for key, value, least in (("age_samples", age_samples, 0), ("age_steps", age_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(
                    f"data.{key}={value!r} must be an integer >= {least} (pool ageing: after every batch, "
                    "data.age_samples random pool states run data.age_steps more steps without gradients)"
                )
        self.age_samples = age_samples if mode != "growing" else 0
        self.age_steps = age_steps
        # Damaged samples per batch; checked for every mode so that a bad value is refused, used when regenerating.
        damaged = damaged_count(damage_share, batch_size)
        self.damage_n = damaged if mode == "regenerating" else 0
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        # The target at the image's resolution; the cell grid is `scale` times coarser (a decoder draws the rest).
        self.scale = scale
        self.target = load_target(target, target_size, padding, allow_upscale, seed_on_pattern, cell=scale)
        self.height, self.width = self.target.shape[1] // scale, self.target.shape[2] // scale
        self.generator = torch.Generator().manual_seed(seed)
        seed_cell = seed_state(1, channels, self.height, self.width)[0]
        self.pool = SamplePool(seed_cell, pool_size if mode != "growing" else batch_size)
        # The whole pool: what checkpoints hold. The growing mode's "pool" (batch_size seeds) is never sharded.
        self.full_pool_size = len(self.pool)
        self.rank, self.world_size = 0, 1

    @property
    def sharded(self) -> bool:
        return self.world_size > 1 and self.mode != "growing"

    def setup(self, stage: str) -> None:
        """Take this process's shard of the pool and its own sampling stream (rank and world size from the
        trainer); with one process nothing changes."""
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if (rank, world_size) == (self.rank, self.world_size):
            return
        if self.world_size != 1:
            raise RuntimeError(
                f"this NCADataModule was set up for rank {self.rank} of {self.world_size} and cannot be reused "
                f"for rank {rank} of {world_size}; build a new one"
            )
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(self.seed + rank)
        # The NCA's stochastic updates (fire masks) draw from the global RNG, which Lightning seeds alike in every
        # process: early on, when the shards hold only seeds, every process would roll out the same batch and
        # compute the same gradient. (The weights are unaffected: DDP starts every rank from rank 0's.)
        torch.manual_seed(self.seed + rank)
        if not self.sharded:
            return
        start, stop = shard_bounds(self.full_pool_size, world_size, rank)
        if self.batch_size > stop - start:
            smallest = self.full_pool_size // world_size
            raise ConfigError(
                f"data.batch_size={self.batch_size} is above the pool shard of each process: data.pool_size="
                f"{self.full_pool_size} split over {world_size} processes (trainer.devices x trainer.num_nodes) "
                f"leaves {smallest} states per process, and data.batch_size is per process; "
                f"use data.batch_size<={smallest} or data.pool_size>={self.batch_size * world_size}"
            )
        self.pool.states = self.pool.states[start:stop].clone()

    def train_dataloader(self) -> DataLoader:
        # No workers: the pool must stay one tensor in this process.
        return DataLoader(_IndexStream(self, self.steps_per_epoch), batch_size=None, num_workers=0)

    def sample_indices(self) -> torch.Tensor:
        return self.pool.sample(self.batch_size, self.generator)

    def make_batch(
        self, idx: torch.Tensor, device=None, render: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(idx, states)`` for one training step, on ``device``; ``render`` (the NCA's renderer, on ``device``)
        draws the states to rank them by loss when the grid is coarser than the target (``scale`` > 1)."""
        idx = idx.cpu()
        loss_fn = None
        if render is not None and self.scale != 1:
            target = self.target.to(device)

            def loss_fn(states: torch.Tensor) -> torch.Tensor:
                return per_sample_loss(render(states.to(device, target.dtype)), target)

        if self.mode == "growing":
            x = self.pool.seed.unsqueeze(0).repeat(len(idx), 1, 1, 1)
        else:
            # Below 1, one draw per batch decides (from the data generator, so a resumed run draws the same); at 1 no
            # draw, so the generator's stream is what it always was.
            reseed = self.reseed_share >= 1 or bool(
                torch.rand((), generator=self.generator) < self.reseed_share
            )
            idx, x = self.pool.batch(
                idx,
                self.target,
                self.damage_n,
                self.generator,
                self.damage_radius,
                self.damage_shapes,
                loss_fn,
                reseed,
            )
        return idx, x.to(device)

    def write_back(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        if self.mode != "growing":
            self.pool.write_back(idx, x)

    def age(self, run: Callable[[torch.Tensor, int], torch.Tensor], device=None) -> torch.Tensor | None:
        """Pool ageing (``data.age_samples`` > 0): that many random pool states (this process's shard) run
        ``data.age_steps`` more steps through ``run(states, steps)`` (the NCA's rollout, no gradients) and go back,
        so that the pool holds states far older than a training rollout reaches: a slow drift (a pattern that moves
        or creeps) shows in the states trained on. Returns the aged indices (None when off; no draw then)."""
        if self.age_samples == 0:
            return None
        idx = self.pool.sample(min(self.age_samples, len(self.pool)), self.generator)
        with torch.no_grad():
            aged = run(self.pool.states[idx].to(device), self.age_steps)
        self.pool.write_back(idx, aged)
        return idx

    def _all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``world_size x *tensor.shape``: ``tensor`` of every rank, in rank order, on the CPU. A collective:
        every rank must call it (NCCL needs the tensor on this rank's GPU; gloo takes it on the CPU)."""
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"rank {self.rank} of {self.world_size}: the pool shards cannot be gathered without an "
                "initialised torch.distributed process group"
            )
        local = tensor.to(self.trainer.strategy.root_device).contiguous()
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        return torch.stack(gathered).cpu()

    def _gathered_pool(self) -> torch.Tensor:
        """The shards of all ranks concatenated in rank order (shards differ by at most one state: each is
        padded to the largest for the gather and cut back after it)."""
        bounds = [shard_bounds(self.full_pool_size, self.world_size, r) for r in range(self.world_size)]
        sizes = [stop - start for start, stop in bounds]
        shard = self.pool.states
        padded = shard.new_zeros((max(sizes), *shard.shape[1:]))
        padded[: len(shard)] = shard
        gathered = self._all_gather(padded)
        return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])

    def state_dict(self) -> dict:
        """The whole pool and every rank's generator state. Under DDP this gathers from all ranks, so it must be
        called on every rank (``Trainer.save_checkpoint`` does: every rank builds the checkpoint, rank 0 writes)."""
        generators = self.generator.get_state().unsqueeze(0)
        pool = self.pool.states
        if self.world_size > 1:
            generators = self._all_gather(generators[0])
            if self.sharded:
                pool = self._gathered_pool()
        return {
            "pool": pool,
            "generator": generators[0],  # rank 0's (a one-process run's only) stream
            "generators": generators,  # world_size x state: one row per rank
            "world_size": self.world_size,
            "mode": self.mode,
            "target": self.target_name,
        }

    def load_state_dict(self, state: dict) -> None:
        """Take this rank's shard of the saved whole pool and this rank's saved generator state. A checkpoint
        written with another number of processes is re-split; ranks it did not have get a fresh stream derived
        from the saved ones."""
        self.check_state(state)
        pool = state["pool"]
        start, stop = (
            shard_bounds(self.full_pool_size, self.world_size, self.rank) if self.sharded else (0, len(pool))
        )
        self.pool.states = pool[start:stop].clone()
        self.generator.set_state(self._saved_generator_state(state))

    def check_state(self, state: object) -> None:
        """Raise :class:`CheckpointError` (one line) unless ``state`` is a pool this run can take: a float tensor
        of this run's whole-pool shape with finite values, and generator states torch accepts."""
        if not isinstance(state, dict) or not isinstance(state.get("pool"), torch.Tensor):
            raise CheckpointError(
                "the checkpoint's sample pool is not a tensor; the file was altered or is damaged"
            )
        pool = state["pool"]
        full_shape = (self.full_pool_size, *self.pool.states.shape[1:])
        if tuple(pool.shape) != full_shape:
            raise CheckpointError(
                f"the checkpoint's pool has shape {tuple(pool.shape)} but this run's is "
                f"{full_shape} (data.pool_size, model.channels, target grid); "
                "resume with the settings the checkpoint was trained with"
            )
        finite = pool.is_floating_point() and bool(torch.isfinite(pool).all())
        if pool.dtype != self.pool.states.dtype or not finite:
            raise CheckpointError(
                f"the checkpoint's sample pool is {pool.dtype} with {'finite' if finite else 'NaN or infinite'} "
                f"values, not {self.pool.states.dtype} with finite values; the file was altered or is damaged"
            )
        generators = state.get("generators")
        if generators is None:
            generators = state.get("generator")
            generators = generators.unsqueeze(0) if isinstance(generators, torch.Tensor) else generators
        size = self.generator.get_state().shape
        if (
            not isinstance(generators, torch.Tensor)
            or generators.dim() != 2
            or len(generators) < 1
            or generators.dtype != torch.uint8
            or generators.shape[1:] != size
        ):
            raise CheckpointError(
                "the checkpoint's sampling generator state is not one torch can restore; the file was altered or "
                "is damaged"
            )
        for row in generators:
            try:
                torch.Generator().set_state(row.clone())
            except RuntimeError:
                raise CheckpointError(
                    "the checkpoint's sampling generator state is not one torch can restore; the file was altered "
                    "or is damaged"
                ) from None

    def _saved_generator_state(self, state: dict) -> torch.Tensor:
        generators = state.get("generators")
        if generators is None:  # a checkpoint from before DDP support: one stream
            generators = state["generator"].unsqueeze(0)
        if self.rank < len(generators):
            return generators[self.rank].clone()
        # More processes than the checkpoint had: a new stream, seeded from a saved one and this rank.
        source = torch.Generator()
        source.set_state(generators[self.rank % len(generators)].clone())
        seed = int(torch.randint(0, 2**62, (1,), generator=source)) + self.rank
        return torch.Generator().manual_seed(seed).get_state()
