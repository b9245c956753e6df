"""Bad input stops with one line naming what is wrong, before any work is done (or, where the work is done, without
losing it): seeds, unknown settings, callback settings, checkpoints whose weights do not fit, CLI arguments, run
directories that cannot be written, an empty ``WANDB_MODE``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import warm
from conftest import ROOT

from ncalab.checkpoint import read_checkpoint
from ncalab.errors import CheckpointError
from ncalab.train import run


def test_train_py_says_it_in_one_line(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    for args in (
        ["+guard.foo=1", f"hydra.run.dir={tmp_path / 'a'}"],
        [f"hydra.run.dir={tmp_path / 'f' / 'run'}"],
    ):
        (tmp_path / "f").write_text("a file where a folder would go")
        result = warm.run(
            [sys.executable, "train.py", "experiment=smoke", *args], cwd=ROOT, env=env, timeout=120
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if "ncalab: error:" in line]
        assert len(errors) == 1, result.stderr[-2000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from conftest import make_cfg

    out = tmp_path_factory.mktemp("one_line") / "run"
    run(make_cfg(out, "experiment=smoke", "logger=csv", "callbacks.media=null"))
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    "tamper, message",
    [
        ("shape", r"nca\.update\.0\.weight is \(3, 3\) where this run's model has \(32, 48, 1, 1\)"),
        ("unknown", r"unknown nca\.extra"),
        ("missing", r"missing nca\.update\.0\.weight"),
    ],
)
def test_a_checkpoint_whose_weights_do_not_fit_is_refused_before_training(
    smoke_cfg, tmp_path, trained, tamper, message
):
    ckpt = read_checkpoint(trained)
    state = ckpt["state_dict"]
    if tamper == "shape":
        state["nca.update.0.weight"] = torch.zeros(3, 3)
    elif tamper == "unknown":
        state["nca.extra"] = torch.zeros(1)
    else:
        del state["nca.update.0.weight"]
    path = tmp_path / f"{tamper}.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=message) as err:
        run(smoke_cfg("logger=csv", f"ckpt_path={path}", "trainer.max_steps=6"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_empty_wandb_mode_means_unset(smoke_cfg, tmp_path, monkeypatch):
    import wandb

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # no credentials: auto mode goes offline
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "")
    run(smoke_cfg("callbacks.media=null", "trainer.max_steps=1"))
    assert wandb.run is None
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "finished"
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
