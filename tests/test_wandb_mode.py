"""W&B's mode in ``auto``: online when wandb itself has credentials (where ``wandb login`` keeps them), offline
without; with credentials but no network (a compute node) a bounded wait, then offline with one message."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import warm

from ncalab.loggers import has_wandb_credentials, resolve_mode, wandb_logger

KEY = "k" * 40


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    """An empty home: no .netrc, no wandb settings, no key in the environment, no WANDB_MODE."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_BASE_URL",
        "WANDB_CONFIG_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    return home


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


# Run in a new process (tests/warm.py: wandb is not among the modules it has imported): wandb keeps process-wide
# state, and this one must start from the temporary home.
COMPUTE_NODE = textwrap.dedent(
    """
    import json, logging, sys, time
    import wandb
    from ncalab.loggers import wandb_logger

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("ncalab").addHandler(handler)
    logging.getLogger("ncalab").setLevel(logging.INFO)

    start = time.monotonic()
    logger = wandb_logger(save_dir=sys.argv[1], mode="auto", init_timeout=1)
    run = logger.experiment
    elapsed = time.monotonic() - start
    offline = bool(run.settings._offline)
    wandb.finish()
    print("RESULT " + json.dumps({"elapsed": elapsed, "offline": offline, "messages": records}))
    """
)


@pytest.mark.slow
def test_with_credentials_but_no_network_auto_mode_goes_offline_quickly(home, tmp_path):
    """This machine cannot reach the W&B server, as on a compute node."""
    write_netrc(home, wandb_host())
    save_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_INIT_TIMEOUT"}
    script = tmp_path / "compute_node.py"
    script.write_text(COMPUTE_NODE)
    result = warm.run([sys.executable, str(script), str(save_dir)], cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    assert out["offline"] is True
    assert out["elapsed"] < 30  # not wandb's 90 s default, nor the failure of the run
    fallbacks = [m for m in out["messages"] if "could not be reached" in m]
    assert len(fallbacks) == 1 and "wandb sync" in fallbacks[0]
    assert list((save_dir / "wandb").glob("offline-run-*"))


# -- what the rest of ncalab asks of W&B (lit_module, callbacks, train) ------------------------------------------


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
