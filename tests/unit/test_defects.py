"""Defects found by trying ncalab as an attacker and an unlucky user would: each test here failed on the code
before its fix."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "saved",
    ["${oc.env:HOME}", "${ncalab.fresh_dir:/tmp/x}", "a/b", "../up", {"a": 1}, ["x"], "x" * 65, "with space"],
)
def test_a_checkpoints_wandb_id_is_data_and_one_that_is_not_a_wandb_id_is_dropped(saved, caplog):
    from omegaconf import OmegaConf

    from ncalab.loggers import CHECKPOINT_WANDB_ID, resume_extras

    node = OmegaConf.create({"_target_": "ncalab.loggers.wandb_logger", "id": None})
    with caplog.at_level("WARNING", logger="ncalab"):
        extras = resume_extras(node, {"seed": 1}, {CHECKPOINT_WANDB_ID: saved})
    assert "id" not in extras
    assert any(
        "is not a W&B id" in r.getMessage() and "new W&B run" in r.getMessage() for r in caplog.records
    )
    assert resume_extras(node, {"seed": 1}, {CHECKPOINT_WANDB_ID: "3xk9-a_Z"})["id"] == "3xk9-a_Z"


def test_a_long_run_beyond_the_limit_is_refused_at_once(capsys):
    from ncalab.demo import pretrained_dir
    from ncalab.evaluate import MAX_STEPS, main

    with pytest.raises(SystemExit) as stop:
        main([str(pretrained_dir("flower")), "--long-run", "500,1000000000"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"more than the {MAX_STEPS:,} steps" in err and "Traceback" not in err


def test_a_model_folder_with_a_huge_horizon_is_refused_with_one_line(tmp_path, capsys):
    import json
    import shutil

    from ncalab.demo import pretrained_dir
    from ncalab.evaluate import main

    folder = tmp_path / "model"
    shutil.copytree(pretrained_dir("flower"), folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["rollout"]["max_steps"] = 10**9
    (folder / "model.json").write_text(json.dumps(meta))
    assert main([str(folder), "--output", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "rollout.max_steps=1000000000" in err and len(err.splitlines()) == 1, err


def test_a_long_run_says_how_far_it_is(monkeypatch, caplog):
    import torch

    from ncalab import evaluate
    from ncalab.evaluate import measure
    from ncalab.nca import NCA
    from ncalab.perception import FixedPerception

    monkeypatch.setattr(measure, "PROGRESS_EVERY_S", 0.0)
    nca = NCA(FixedPerception(16, "sobel3"), hidden=8)
    x = torch.zeros(1, 16, 8, 8)
    with caplog.at_level("INFO", logger="ncalab"):
        result = evaluate.long_run(nca, x, torch.zeros(4, 8, 8), (700, 1200), horizon_loss=0.0)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("long run:")]
    assert [m.split(" (")[0] for m in said] == [
        "long run: step 500 of 1200",
        "long run: step 700 of 1200",
        "long run: step 1200 of 1200",
    ]
    assert result["loss"] == {"700": 0.0, "1200": 0.0}


@pytest.mark.parametrize(
    "override, env, named",
    [
        ("logger.wandb.init_timeout=-1", None, "logger.wandb.init_timeout=-1"),
        ("logger.wandb.init_timeout=0", None, "logger.wandb.init_timeout=0"),
        ("logger.wandb.init_timeout=abc", None, "logger.wandb.init_timeout='abc'"),
        (None, "abc", "WANDB_INIT_TIMEOUT='abc'"),
        (None, "-5", "WANDB_INIT_TIMEOUT='-5'"),
    ],
)
def test_a_wandb_init_timeout_that_is_not_seconds_above_zero_is_refused_naming_it(
    smoke_cfg, monkeypatch, tmp_path, override, env, named
):
    import json

    from ncalab.errors import ConfigError
    from ncalab.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    if env is None:
        monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("WANDB_INIT_TIMEOUT", env)
    with pytest.raises(ConfigError, match=f"{named.replace('.', '[.]')} is not a number of seconds > 0"):
        run(smoke_cfg("logger=wandb", *([override] if override else [])))
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_a_wandb_init_timeout_from_the_environment_wins():
    import os

    from ncalab.loggers import init_timeout_seconds

    old = os.environ.pop("WANDB_INIT_TIMEOUT", None)
    try:
        assert init_timeout_seconds(30) == 30.0
        os.environ["WANDB_INIT_TIMEOUT"] = "2.5"
        assert init_timeout_seconds(30) == 2.5
    finally:
        os.environ.pop("WANDB_INIT_TIMEOUT", None)
        if old is not None:
            os.environ["WANDB_INIT_TIMEOUT"] = old


def test_a_status_file_that_cannot_be_written_at_the_end_is_said_and_does_not_hide_the_error(
    tmp_path, monkeypatch, caplog
):
    from ncalab.runs.status import RunStatus

    status = RunStatus(tmp_path, heartbeat_s=0)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunStatus, "_write_unlocked", full)
    with caplog.at_level("WARNING", logger="ncalab"):
        status.failed(ValueError("the run's own error"))
    assert any("could not record 'failed'" in r.getMessage() for r in caplog.records)


@pytest.fixture
def demo_server(tmp_path, monkeypatch):
    import threading

    from ncalab import demo

    monkeypatch.setattr(demo, "IDLE_TIMEOUT_S", 0.5)
    (tmp_path / "index.html").write_text("<p>hello</p>")
    server = demo.make_server(tmp_path, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[:2]
    server.shutdown()
    server.server_close()


def _ask(address, request: bytes, wait: float = 5.0) -> bytes:
    import socket

    with socket.create_connection(address, timeout=wait) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_demo_server_answers_a_nul_in_a_path_with_400_and_no_traceback(demo_server, capfd):
    answer = _ask(demo_server, b"GET /index.html%00.txt HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400"), answer[:200]
    assert _ask(demo_server, b"GET /index.html HTTP/1.0\r\n\r\n").endswith(b"<p>hello</p>")
    assert "Traceback" not in capfd.readouterr().err


def test_the_demo_server_closes_a_connection_that_sends_nothing(demo_server):
    import socket
    import time

    with socket.create_connection(demo_server, timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < 5


def test_a_deeply_nested_model_json_is_refused_with_one_line(tmp_path, capsys):
    import shutil

    from ncalab.demo import ExportError, export_models, pretrained_dir
    from ncalab.evaluate import main

    folder = tmp_path / "model"
    shutil.copytree(pretrained_dir("flower"), folder)
    (folder / "model.json").write_text("[" * 200_000 + "]" * 200_000)
    assert main([str(folder), "--output", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.json is not readable JSON (RecursionError" in err and len(err.splitlines()) == 1, err
    with pytest.raises(ExportError, match="is not an exported model folder"):
        export_models(tmp_path / "site", {"deep": folder})


def test_perception_ops_null_is_refused_instead_of_becoming_the_sobel3_bank(smoke_cfg):
    from ncalab.errors import ConfigError
    from ncalab.train import run

    with pytest.raises(ConfigError, match=r"perception\.ops=null names no operators"):
        run(smoke_cfg("perception=operators", "perception.ops=null"))


@pytest.fixture
def fifo(tmp_path):
    import os

    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def test_a_device_or_a_fifo_is_named_for_what_it_is(fifo, tmp_path):
    from pathlib import Path

    from ncalab.checkpoint import read_checkpoint
    from ncalab.errors import CheckpointError, TargetError
    from ncalab.runs.dirs import run_dir_problem
    from ncalab.targets import resolve_target

    zero = Path("/dev/zero")
    assert "is a character device, not a directory" in run_dir_problem(zero)
    assert "is a FIFO (named pipe), not a directory" in run_dir_problem(fifo)
    with pytest.raises(TargetError, match="is a character device, not an image file"):
        resolve_target(str(zero))
    with pytest.raises(TargetError, match=r"is a FIFO \(named pipe\), not an image file"):
        resolve_target(str(fifo))
    with pytest.raises(TargetError, match="is a directory, not an image file"):
        resolve_target(str(tmp_path))
    with pytest.raises(CheckpointError, match="is a FIFO \\(named pipe\\), not a checkpoint file"):
        read_checkpoint(fifo)
