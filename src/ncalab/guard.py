"""Divergence guard: catch a loss, gradient or state that blew up before the optimiser applies it.

React with ``stop`` (end cleanly on the last good state) or ``rollback`` (restore the last good weights, optimiser
and pool, lower the learning rate, go on; give up after ``max_rollbacks``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

ACTIONS = ("stop", "rollback")


class DivergenceGuard:
    """Detection, snapshots and the record of events; the LightningModule decides when to call it."""

    def __init__(
        self,
        enabled: bool = True,
        action: str = "stop",
        max_state: float = 1e3,
        lr_factor: float = 0.5,
        max_rollbacks: int = 3,
        snapshot_every: int = 100,
    ):
        if action not in ACTIONS:
            raise ValueError(f"guard.action={action!r}; accepted: {', '.join(ACTIONS)}")
        self.enabled = enabled
        self.action = action
        self.max_state = max_state
        self.lr_factor = lr_factor
        self.max_rollbacks = max_rollbacks
        self.snapshot_every = snapshot_every
        self.events: list[dict[str, Any]] = []
        self.rollbacks = 0
        self.last_good_loss = math.nan  # the loss of the latest step that passed the checks
        self._snapshot: dict[str, Any] | None = None

    def cause(self, loss: float, state_max: float, module: nn.Module) -> str | None:
        """Why this step must not be applied, or ``None`` when it is healthy."""
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        for name, p in module.named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                return f"non-finite gradient in {name}"
        if not math.isfinite(state_max) or state_max > self.max_state:
            return f"state out of range (max |x| = {state_max:.4g} > guard.max_state = {self.max_state:g})"
        return None

    def take_snapshot(
        self,
        step: int,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        pool: torch.Tensor,
        loss: float = math.nan,
    ) -> None:
        """Keep the state of ``step`` (``loss``: the training loss of these weights, when known)."""
        self._snapshot = {
            "step": step,
            "module": copy.deepcopy(module.state_dict()),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "pool": pool.clone(),
            "loss": float(loss),
        }

    @property
    def snapshot_step(self) -> int | None:
        return None if self._snapshot is None else self._snapshot["step"]

    @property
    def good_loss(self) -> float:
        """The train loss to report for the restored state: the snapshot's, else the last finite one."""
        loss = math.nan if self._snapshot is None else self._snapshot.get("loss", math.nan)
        return loss if math.isfinite(loss) else self.last_good_loss

    def restore(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """Put the last good weights and optimiser state back, then multiply the learning rate that was in use
        (not the snapshot's: lowered by every earlier rollback and by the schedule) by ``lr_factor``, so that
        successive rollbacks keep lowering it and a checkpoint written after a stop does not resume at the rate
        that diverged. Returns the last good pool."""
        assert self._snapshot is not None
        in_use = [group["lr"] for group in optimizer.param_groups]
        module.load_state_dict(self._snapshot["module"])
        optimizer.load_state_dict(self._snapshot["optimizer"])
        for group, lr in zip(optimizer.param_groups, in_use, strict=True):
            group["lr"] = lr * self.lr_factor
        return self._snapshot["pool"].clone()

    def record(self, step: int, cause: str, action: str, lr: float | None = None) -> dict[str, Any]:
        event = {"step": step, "cause": cause, "action": action, "restored_step": self.snapshot_step}
        if lr is not None:
            event["lr"] = lr
        self.events.append(event)
        return event
