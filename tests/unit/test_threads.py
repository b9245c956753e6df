"""Parallel jobs on one machine share its cores: a job of a joblib sweep with n_jobs=N takes cores // N torch
threads (N processes that each start a thread per core slow each other down many times over); ``threads=``
sets the number for a run."""

from __future__ import annotations

import pytest

import ncalab.runs.supervision
from ncalab.train import torch_threads


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
