"""Parallel jobs on one machine share its cores: a job of a joblib sweep with n_jobs=N takes cores // N torch
threads (N processes that each start a thread per core slow each other down many times over); ``threads=``
sets the number for a run."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

import ncalab.runs.supervision
from ncalab.errors import ConfigError
from ncalab.train import run, torch_threads


class ThreadProbe(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.threads = torch.get_num_threads()


@pytest.fixture
def under_hydra():
    """Make this process look like one job of a multirun with the given launcher overrides."""

    def _set(*overrides: str) -> None:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
        HydraConfig.instance().set_config(cfg)

    yield _set
    HydraConfig.instance().cfg = None


@pytest.fixture
def threads_before():
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # neither the share nor the explicit value below: a change is visible
    yield 3
    torch.set_num_threads(before)


@pytest.mark.parametrize("n_jobs, cores, share", [(2, 8, 4), (3, 8, 2), (4, 2, 1), (-1, 8, 1), (-2, 8, 1)])
def test_a_joblib_job_takes_its_share_of_the_cores(under_hydra, monkeypatch, n_jobs, cores, share):
    monkeypatch.setattr(ncalab.runs.supervision, "available_cores", lambda: cores)
    under_hydra("hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}")
    threads, why = torch_threads(None)
    assert threads == share and "n_jobs" in why
    assert torch_threads(5) == (5, "threads=5")  # the config key wins


def test_sequential_or_single_runs_keep_torchs_default(under_hydra):
    assert torch_threads(None) == (None, "torch's default")  # not under Hydra
    under_hydra("hydra/launcher=submitit_local")
    assert torch_threads(None)[0] is None


@pytest.mark.slow
def test_a_run_in_a_joblib_sweep_trains_with_its_share(smoke_cfg, under_hydra, monkeypatch, threads_before):
    monkeypatch.setattr(ncalab.runs.supervision, "available_cores", lambda: 4)
    under_hydra("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    probe = ThreadProbe()
    run(smoke_cfg("logger=csv", "callbacks.media=null", "trainer.max_steps=1"), [probe])
    assert probe.threads == 2
    assert torch.get_num_threads() == threads_before  # the caller's setting comes back


@pytest.mark.slow
def test_the_threads_key_sets_the_runs_threads(smoke_cfg, tmp_path, threads_before):
    probe = ThreadProbe()
    run(smoke_cfg("threads=1", "logger=csv", "callbacks.media=null", "trainer.max_steps=1"), [probe])
    assert probe.threads == 1
    assert torch.get_num_threads() == threads_before
    with pytest.raises(ConfigError, match=r"threads=0 .*null \(automatic\) or an integer >= 1"):
        run(smoke_cfg("threads=0", out=tmp_path / "zero"))
