"""Checkpoints are data: loading one never calls what its config names, never resolves ``${...}`` in it, and
saving one never destroys the last good checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from ncalab.checkpoint import read_checkpoint
from ncalab.train import run


def _unreachable_tmpdir(monkeypatch, tmp_path: Path) -> None:
    """``$TMPDIR`` that cannot take a file (missing, as on a node whose scratch is gone, or full)."""
    import tempfile

    import wandb.data_types  # noqa: F401 - makes its own temporary folder on import: not what this tests

    missing = tmp_path / "no-such-tmpdir"
    monkeypatch.setenv("TMPDIR", str(missing))
    monkeypatch.setattr(tempfile, "tempdir", str(missing))


def test_saves_work_when_tmpdir_is_unusable(smoke_cfg, tmp_path, monkeypatch):
    _unreachable_tmpdir(monkeypatch, tmp_path)
    run(smoke_cfg())
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 4
    assert not [p for p in last.parent.iterdir() if p.name != "last.ckpt"]


class FailSavesAfter(L.Callback):
    """From optimiser step ``step`` on, every save breaks half way: ``torch.save`` writes a few bytes and
    raises, and a copy (what a move across filesystems does) empties its destination and raises, as a kill
    during either would leave things."""

    def __init__(self, step: int, monkeypatch):
        self.step, self.monkeypatch, self.armed = step, monkeypatch, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step < self.step or self.armed:
            return
        self.armed = True
        import errno
        import io
        import os
        import shutil

        real_save = torch.save

        def partial_save(obj, f, *args, **kwargs):
            if hasattr(f, "write") and not isinstance(f, io.BytesIO):  # into a file, not into memory
                f.write(b"PK\x03\x04 half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")
            return real_save(obj, f, *args, **kwargs)

        def cross_device_rename(src, dst, *args, **kwargs):
            raise OSError(errno.EXDEV, "Invalid cross-device link (simulated)")

        def killed_copy(src, dst, *args, **kwargs):
            open(dst, "wb").close()  # copyfile opens the destination for writing first
            raise KeyboardInterrupt("killed during the copy (simulated)")

        self.monkeypatch.setattr(torch, "save", partial_save)
        self.monkeypatch.setattr(os, "rename", cross_device_rename)
        self.monkeypatch.setattr(shutil, "copyfile", killed_copy)


def test_a_save_that_breaks_half_way_keeps_the_last_good_checkpoint(smoke_cfg, tmp_path, monkeypatch):
    with pytest.raises(BaseException):  # noqa: B017 - whichever way the save broke, the run fails
        run(smoke_cfg("trainer.max_steps=6"), [FailSavesAfter(3, monkeypatch)])
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.stat().st_size > 0
    assert read_checkpoint(last)["global_step"] == 2  # the save at step 2, the last one that completed
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind
