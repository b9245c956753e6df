"""W&B's mode in ``auto``: online when wandb itself has credentials (where ``wandb login`` keeps them), offline
without; with credentials but no network (a compute node) a bounded wait, then offline with one message."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ncalab.loggers import has_wandb_credentials, resolve_mode, wandb_logger

KEY = "k" * 40


def wandb_host() -> str:
    import wandb

    return urlsplit(wandb.Settings().base_url).netloc


def write_netrc(home: Path, host: str) -> None:
    netrc = home / ".netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password {KEY}\n")
    netrc.chmod(0o600)


def test_no_credentials_means_offline(home):
    assert not has_wandb_credentials()
    assert resolve_mode("auto") == "offline"


def test_a_wandb_login_under_wandbs_own_host_is_found(home):
    write_netrc(home, wandb_host())  # what `wandb login` writes with the pinned wandb
    assert has_wandb_credentials()
    assert resolve_mode("auto") == "online"


def test_a_key_in_wandbs_settings_file_is_found(home):
    settings = home / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(f"[default]\napi_key = {KEY}\n")
    assert has_wandb_credentials()
    assert resolve_mode("auto") == "online"


def test_a_login_for_another_host_is_not_wandbs(home):
    write_netrc(home, "example.invalid")
    assert resolve_mode("auto") == "offline"


def test_explicit_modes_are_not_touched(home, tmp_path):
    write_netrc(home, wandb_host())
    logger = wandb_logger(save_dir=str(tmp_path / "run"), mode="online")
    assert logger._fallback_offline is False and "settings" not in logger._wandb_init
    auto = wandb_logger(save_dir=str(tmp_path / "run"), mode="auto", init_timeout=3)
    assert auto._fallback_offline is True and auto._wandb_init["settings"].init_timeout == 3


def test_the_wandb_logger_is_recognised_and_no_other(tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

    from ncalab.loggers import WandbLogger, is_wandb, wandb_run, wandb_run_id

    csv = CSVLogger(tmp_path)
    assert not is_wandb(csv) and wandb_run_id(csv) is None and wandb_run(csv) is None
    for cls in (WandbLogger, LightningWandbLogger):  # ncalab's, and Lightning's configured directly
        logger = cls(id="abc123", save_dir=str(tmp_path), mode="disabled")
        assert is_wandb(logger) and wandb_run_id(logger) == "abc123"
    assert wandb_run_id(WandbLogger(save_dir=str(tmp_path), mode="disabled")) is None  # no run yet, no id


def test_resume_extras_continue_the_checkpoints_wandb_run():
    from omegaconf import OmegaConf

    from ncalab.loggers import CHECKPOINT_WANDB_ID, resume_extras

    node = OmegaConf.create({"_target_": "ncalab.loggers.wandb_logger", "id": None})
    config = {"seed": 1}
    plain = {"run_config": config, "_recursive_": False, "_convert_": "all"}
    assert resume_extras(node, config, None) == plain
    assert resume_extras(node, config, {CHECKPOINT_WANDB_ID: "run42"}) == {**plain, "id": "run42"}
    given = OmegaConf.create({"_target_": "ncalab.loggers.wandb_logger", "id": "mine"})
    assert resume_extras(given, config, {CHECKPOINT_WANDB_ID: "run42"}) == plain  # an explicit id wins
    csv = OmegaConf.create({"_target_": "lightning.pytorch.loggers.CSVLogger"})
    assert resume_extras(csv, config, {CHECKPOINT_WANDB_ID: "run42"}) == {}
