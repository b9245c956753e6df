"""LightningModule: rollout from pool states, RGBA loss, an optimiser and schedule given as factories (Hydra
partials; Adam with a step schedule by default), gradient normalisation."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ncalab.data import NCADataModule
from ncalab.errors import CheckpointError
from ncalab.guard import DivergenceGuard
from ncalab.loggers import CHECKPOINT_WANDB_ID, wandb_run_id
from ncalab.metrics import per_sample_loss
from ncalab.nca import NCA
from ncalab.perception import Perception

GRAD_MODES = ("off", "normalize", "clip")

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def default_optimizer() -> OptimizerFactory:
    """Adam as ``conf/train.yaml``'s ``optim`` builds it."""
    return partial(torch.optim.Adam, lr=2e-3, betas=(0.9, 0.999))


def default_scheduler() -> SchedulerFactory:
    """The step schedule as ``conf/train.yaml``'s ``schedule`` builds it."""
    return partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[2000], gamma=0.1)


log = logging.getLogger("ncalab")


def response_factors(perception: Perception) -> list[float]:
    """The factors that the perception's response scale (:meth:`Perception.response_scale`) multiplies its
    responses by, as logged (``perception/scale_<i>``): factor ``i`` is response ``i``'s (channel-major: operator
    ``o`` of channel ``c`` is ``c * n_ops + o``). When every channel has the same factors (one per operator, or
    one for all, tiled over the channels) only the first channel's are given: one per operator. Empty for a
    perception without a response scale."""
    factor = perception.response_scale()
    if factor is None:
        return []
    per_channel = factor.detach().reshape(perception.channels, perception.n_ops)
    if bool((per_channel == per_channel[:1]).all()):
        per_channel = per_channel[:1]
    return per_channel.flatten().tolist()


def overflow(x: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """Mean amount by which state values leave ``[-bound, bound]`` (zero for a state inside it).

    A penalty on it keeps hidden channels, which the image loss leaves free, from growing without limit.
    """
    return (x - x.clamp(-bound, bound)).abs().mean()


def cell_loss(x: torch.Tensor, target: torch.Tensor, scale: int) -> torch.Tensor:
    """MSE of the cells' own RGBA (channels 0-3) against the target averaged over each cell's ``scale x scale``
    pixels: with a decoder, what makes a cell alive where the image is opaque (the drawn image is masked by the
    alive cells and gives no gradient there) and keeps the grid a coarse copy of the image."""
    coarse = F.avg_pool2d(target, kernel_size=scale)
    return per_sample_loss(x, coarse).mean()


class NCALitModule(L.LightningModule):
    """Trains an :class:`NCA` to grow (and hold, and regrow) the DataModule's target.

    ``config`` is the run's resolved config as a plain dict; it is saved in checkpoints so that a model can be
    rebuilt from its checkpoint alone (see :func:`ncalab.checkpoint.load_nca`).
    """

    def __init__(
        self,
        nca: NCA,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        grad_mode: str = "normalize",
        grad_max_norm: float = 1.0,
        overflow_weight: float = 0.0,
        overflow_bound: float = 1.0,
        cell_weight: float = 0.0,
        min_steps: int = 64,
        max_steps: int = 96,
        backprop_steps: int | None = None,
        compile: bool = False,
        seed: int = 0,
        guard: DivergenceGuard | None = None,
        config: dict[str, Any] | None = None,
    ):
        super().__init__()
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode={grad_mode!r}; accepted: {', '.join(GRAD_MODES)}")
        self.save_hyperparameters({"config": config or {}})
        self.nca = nca
        # Called with the parameters (and the optimiser) in configure_optimizers: Hydra partials from ``optim`` and
        # ``schedule``, or any callables that build a torch optimiser and learning-rate scheduler.
        self.optimizer_factory = optimizer or default_optimizer()
        self.scheduler_factory = scheduler or default_scheduler()
        self.grad_mode = grad_mode
        self.grad_max_norm = grad_max_norm
        self.overflow_weight = overflow_weight
        self.overflow_bound = overflow_bound
        self.cell_weight = cell_weight
        self.min_steps = min_steps
        self.max_steps = max_steps
        self.backprop_steps = backprop_steps
        self.compile = compile
        # Rollout lengths come from their own generator so that a seeded run is reproducible.
        self.step_generator = torch.Generator().manual_seed(seed)
        self.last_loss = math.nan
        self.guard = guard or DivergenceGuard(enabled=False)
        self.stopped_by_guard = False
        self._loss_value = math.nan
        self._state_max = 0.0

    def setup(self, stage: str) -> None:
        if self.compile:
            self.nca.compile_step()

    @property
    def datamodule(self) -> NCADataModule:
        return self.trainer.datamodule

    def rollout_steps(self) -> int:
        return int(torch.randint(self.min_steps, self.max_steps + 1, (1,), generator=self.step_generator))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> torch.Tensor:
        dm = self.datamodule
        idx, x = dm.make_batch(idx, self.device, render=self.nca.render)
        target = dm.target.to(self.device, x.dtype)
        steps = self.rollout_steps()
        self._cell_steps = x.shape[0] * x.shape[2] * x.shape[3] * steps
        x = self.nca.rollout(x, steps, self.backprop_steps)
        losses = per_sample_loss(self.nca.render(x), target)
        loss = losses.mean()
        self._loss_value = float(loss.detach())
        if self.overflow_weight > 0:
            over = overflow(x, self.overflow_bound)
            self.log("train/overflow", over.detach())
            total = loss + self.overflow_weight * over
        else:
            total = loss
        scale = self.nca.render.scale
        if self.cell_weight > 0 and scale > 1:
            cells = cell_loss(x, target, scale)
            self.log("train/cell_loss", cells.detach())
            total = total + self.cell_weight * cells
        self._state_max = float(x.detach().abs().max())
        dm.write_back(idx, x)
        dm.age(
            self.nca.rollout, self.device
        )  # data.age_samples > 0: some pool states run on, without gradients
        # Logged: the mean over all processes under DDP (a copy: reduce works in place); with one, the loss itself.
        mean_loss = self.trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean")
        self.last_loss = float(mean_loss)
        self.log("train/loss", mean_loss, prog_bar=True)
        self.log("train/log10_loss", torch.log10(mean_loss))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("train/rollout_steps", float(steps))
        for i, value in enumerate(response_factors(self.nca.perception)):
            self.log(f"perception/scale_{i}", value)
        return total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Rollout, backward and optimiser step: the whole training step.
        elapsed = time.perf_counter() - self._step_start
        self.log("train/step_time_s", elapsed)
        self.log("train/cells_steps_per_s", self._cell_steps / elapsed)

    def on_train_start(self) -> None:
        if self.guard.enabled:
            self.guard.take_snapshot(
                self.global_step, self, self.trainer.optimizers[0], self.datamodule.pool.states
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.guard.enabled:
            cause = self.guard.cause(self._loss_value, self._state_max, self)
            # Every process must take the same decision, or DDP falls out of step.
            flag = self.trainer.strategy.reduce(
                torch.tensor(float(cause is not None), device=self.device), reduce_op="sum"
            )
            if float(flag) > 0:
                self._diverged(cause or "divergence in another process", optimizer)
                return
            self.guard.last_good_loss = self.last_loss
            if self.global_step % self.guard.snapshot_every == 0:
                self.guard.take_snapshot(
                    self.global_step, self, optimizer, self.datamodule.pool.states, loss=self.last_loss
                )
        self.log("guard/divergences", float(len(self.guard.events)))
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.log("train/grad_norm", norm)
        if self.grad_mode == "normalize":
            # Per-parameter normalisation (Distill): every tensor's gradient gets unit norm.
            for g in grads:
                g.div_(torch.linalg.vector_norm(g) + 1e-8)
        elif self.grad_mode == "clip":
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.grad_max_norm)

    def _diverged(self, cause: str, optimizer: torch.optim.Optimizer) -> None:
        """Skip this update, put the last good state back, then lower the lr and go on, or stop."""
        for p in self.parameters():
            p.grad = None  # Adam leaves parameters without a gradient untouched: the bad step is not applied
        step = self.global_step
        # Restoring also lowers the lr in use by guard.lr_factor: on a rollback to go on, on a stop so that
        # last.ckpt does not resume at the rate that diverged.
        self.datamodule.pool.states = self.guard.restore(self, optimizer)
        self.last_loss = self.guard.good_loss  # the diverged step's loss is not the run's
        lr = optimizer.param_groups[0]["lr"]
        rollback = self.guard.action == "rollback" and self.guard.rollbacks < self.guard.max_rollbacks
        if rollback:
            self.guard.rollbacks += 1
            event = self.guard.record(step, cause, "rollback", lr=lr)
            message = f"lr lowered to {lr:.3g}, rollback {self.guard.rollbacks}/{self.guard.max_rollbacks}"
        else:
            gave_up = self.guard.action == "rollback"
            event = self.guard.record(step, cause, "stop", lr=lr)
            self.stopped_by_guard = True
            self.trainer.should_stop = True
            message = "gave up after the last rollback; stopping" if gave_up else "stopping"
            message += f" (the checkpoint's lr is lowered to {lr:.3g} for a resume)"
        log.warning(
            "divergence at step %d: %s; restored the state of step %s; %s",
            step,
            cause,
            event["restored_step"],
            message,
        )
        self.log("guard/divergences", float(len(self.guard.events)))

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ncalab_step_generator"] = self.step_generator.get_state()
        for logger in self.trainer.loggers:
            run_id = wandb_run_id(logger)
            if run_id:
                checkpoint[CHECKPOINT_WANDB_ID] = run_id

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ncalab_step_generator" in checkpoint:
            try:
                self.step_generator.set_state(checkpoint["ncalab_step_generator"])
            except (RuntimeError, TypeError):
                raise CheckpointError(
                    "the checkpoint's update-firing generator state is not one torch can restore; the file was "
                    "altered or is damaged"
                ) from None
