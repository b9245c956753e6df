"""Parallel jobs on one machine share its cores: a job of a joblib sweep with n_jobs=N takes cores // N torch
threads (N processes that each start a thread per core slow each other down many times over); ``threads=``
sets the number for a run."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import ncalab.runs.supervision
from ncalab.errors import ConfigError
from ncalab.train import run


class ThreadProbe(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.threads = torch.get_num_threads()


@pytest.fixture
def threads_before():
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # neither the share nor the explicit value below: a change is visible
    yield 3
    torch.set_num_threads(before)


def test_a_run_in_a_joblib_sweep_trains_with_its_share(smoke_cfg, under_hydra, monkeypatch, threads_before):
    monkeypatch.setattr(ncalab.runs.supervision, "available_cores", lambda: 4)
    under_hydra("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    probe = ThreadProbe()
    run(smoke_cfg("logger=csv", "callbacks.media=null", "trainer.max_steps=1"), [probe])
    assert probe.threads == 2
    assert torch.get_num_threads() == threads_before  # the caller's setting comes back


def test_the_threads_key_sets_the_runs_threads(smoke_cfg, tmp_path, threads_before):
    probe = ThreadProbe()
    run(smoke_cfg("threads=1", "logger=csv", "callbacks.media=null", "trainer.max_steps=1"), [probe])
    assert probe.threads == 1
    assert torch.get_num_threads() == threads_before
    with pytest.raises(ConfigError, match=r"threads=0 .*null \(automatic\) or an integer >= 1"):
        run(smoke_cfg("threads=0", out=tmp_path / "zero"))
