"""W&B runs (offline, never the network), multirun sweeps, launchers, Optuna, and the comparison report."""

from __future__ import annotations

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir

from ncalab.loggers import resolve_mode


def test_without_credentials_wandb_goes_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"
    with pytest.raises(ValueError, match="logger.wandb.mode"):
        resolve_mode("sometimes")


def test_sweep_perception_experiment_sweeps_the_five_perceptions_over_seeds():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            config_name="train", overrides=["experiment=sweep_perception"], return_hydra_config=True
        )
    params = cfg.hydra.sweeper.params
    assert params.perception.split(",") == [
        "sobel3",
        "sobel5",
        "sobel5_diag",
        "trainable_truncated",
        "trainable_scale",
    ]
    assert params.seed == "0,1,2"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def test_slurm_launcher_config_holds_the_cluster_values():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    for key in ("partition", "gpus_per_node", "timeout_min", "array_parallelism", "tasks_per_node"):
        assert key in launcher
