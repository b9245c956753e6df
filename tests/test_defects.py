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


@pytest.mark.slow
def test_a_crafted_checkpoint_cannot_make_a_resume_delete_a_folder_outside_the_run(
    smoke_cfg, tmp_path, caplog
):
    # Lightning restores ModelCheckpoint's saved paths and removes the previous "last" on the next save; a path
    # with `..` passed its inside-the-folder check, so resuming this checkpoint deleted `victim`.
    import torch

    from ncalab.train import run

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    out = tmp_path / "run"
    run(smoke_cfg(out=out))
    ckpt_path = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    key = next(k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint"))
    escape = str(out / "checkpoints" / ".." / ".." / "victim")
    state = ckpt["callbacks"][key]
    state.update(last_model_path=escape, best_model_path=escape, kth_best_model_path=escape)
    state["best_k_models"] = {escape: torch.tensor(0.0)}
    torch.save(ckpt, ckpt_path)

    with caplog.at_level("WARNING", logger="ncalab"):
        run(smoke_cfg(f"ckpt_path={ckpt_path}", "trainer.max_steps=8", out=out))
    assert (victim / "precious.txt").read_text() == "keep me"
    assert any("names files outside" in r.getMessage() for r in caplog.records)
    assert torch.load(ckpt_path, weights_only=False)["global_step"] == 8


# -- huge step counts: refused with one line, long measurements say how far they are ----------------------------


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


# -- python -m ncalab.pretrained: everything checked before anything shipped is replaced --------------------------


@pytest.fixture
def shipped_and_run(smoke_cfg, tmp_path):
    """A trained smoke run, and a shipped model folder (a copy of the flower) to replace."""
    import shutil

    from ncalab.demo import pretrained_dir
    from ncalab.train import run

    run(smoke_cfg(out=tmp_path / "run"))
    shipped = tmp_path / "shipped"
    shutil.copytree(pretrained_dir("flower"), shipped)
    before = {p.name: p.read_bytes() for p in shipped.iterdir()}
    return tmp_path / "run", shipped, before


@pytest.mark.slow
@pytest.mark.parametrize("bad", [["--rollouts", "0"], ["--rollouts", "-3"], ["--long-run", "0"], ["fail"]])
def test_shipping_with_a_bad_argument_or_a_failed_evaluation_leaves_the_shipped_model_as_it_was(
    shipped_and_run, bad, capsys, monkeypatch
):
    from ncalab.errors import NCALabError
    from ncalab.pretrained.__main__ import main

    run_dir, shipped, before = shipped_and_run
    if bad == ["fail"]:

        def broken(*args, **kwargs):
            raise NCALabError("the evaluation failed")

        monkeypatch.setattr("ncalab.evaluate.evaluate_model", broken)
        bad = []
    try:
        code = main([str(run_dir), "smoke", "--dest", str(shipped), *bad])
    except SystemExit as stop:  # argparse
        code = stop.code
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before
    assert sorted(p.name for p in shipped.parent.iterdir()) == ["run", "shipped"]  # no staging folder left


@pytest.mark.slow
def test_shipping_to_a_file_or_under_a_bad_name_writes_nothing(shipped_and_run, tmp_path, capsys):
    from ncalab.pretrained.__main__ import main, package_dir

    run_dir, _, _ = shipped_and_run
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    assert main([str(run_dir), "smoke", "--dest", str(a_file)]) == 2
    assert a_file.read_text() == "mine"
    assert "is not a folder" in capsys.readouterr().err
    for name in ("../escaped", str(tmp_path / "absolute"), "a/b", ".hidden", ""):
        assert main([str(run_dir), name]) == 2
        err = capsys.readouterr().err.strip()
        assert "model name" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "absolute").exists() and not (package_dir().parent / "escaped").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "run", "shipped"]


@pytest.mark.slow
def test_shipping_replaces_the_model_files_and_drops_the_old_ones(shipped_and_run):
    from ncalab.pretrained.__main__ import main

    run_dir, shipped, before = shipped_and_run
    (shipped / "target.png").unlink()
    assert (
        main([str(run_dir), "smoke", "--dest", str(shipped), "--long-run", "16,32", "--rollouts", "1"]) == 0
    )
    after = {p.name: p.read_bytes() for p in shipped.iterdir()}
    assert set(after) == set(before)
    assert after["model.bin"] != before["model.bin"] and b"smoke" in after["MODEL_CARD.md"]


# -- W&B's init timeout: a number of seconds > 0, from the config or the environment -----------------------------


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


# -- a full disk: one line that says which file and where the last checkpoint is --------------------------------


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line_naming_the_file_and_the_last_checkpoint(
    smoke_cfg, tmp_path, monkeypatch
):
    import errno
    import json

    from ncalab.checkpoint import AtomicCheckpointIO
    from ncalab.errors import RunError
    from ncalab.train import run

    real_save = AtomicCheckpointIO.save_checkpoint
    saves = []

    def save(self, checkpoint, path, storage_options=None):
        saves.append(path)
        if len(saves) > 1:  # the first save (step 2) lands, the next finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save)
    out = tmp_path / "run"
    with pytest.raises(RunError) as caught:
        run(smoke_cfg(out=out))
    message = str(caught.value)
    assert "No space left on device" in message and "\n" not in message
    assert f"the last checkpoint saved is {out / 'checkpoints' / 'last.ckpt'}" in message
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["error"]


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


# -- the demo server: a NUL in a path is a bad request, an idle connection is closed ------------------------------


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


# -- a model.json nested too deep: one line, as any other broken model.json ------------------------------------


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


# -- crafted training state in a checkpoint: one line before training, not an error (or NaN) at the first step ----


def _first_param_state(ckpt):
    return ckpt["optimizer_states"][0]["state"][0]


def _set(ckpt, path, value):
    node = ckpt
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


CRAFTED = {
    "pool is a list": lambda c: _set(c, ("NCADataModule", "pool"), [1, 2]),
    "pool holds NaN": lambda c: c["NCADataModule"]["pool"].fill_(float("nan")),
    "pool is float64": lambda c: _set(c, ("NCADataModule", "pool"), c["NCADataModule"]["pool"].double()),
    "generator state cut": lambda c: _set(
        c, ("NCADataModule", "generators"), c["NCADataModule"]["generators"][:, :9]
    ),
    "moment of another shape": lambda c: _set(
        c, ("optimizer_states", 0, "state", 0, "exp_avg"), __import__("torch").zeros(3)
    ),
    "moment holds inf": lambda c: _first_param_state(c)["exp_avg_sq"].fill_(float("inf")),
    "lr is NaN": lambda c: _set(c, ("optimizer_states", 0, "param_groups", 0, "lr"), float("nan")),
    "lr is text": lambda c: _set(c, ("optimizer_states", 0, "param_groups", 0, "lr"), "abc"),
    "two optimisers": lambda c: c["optimizer_states"].append(c["optimizer_states"][0]),
    "no param groups": lambda c: _set(c, ("optimizer_states", 0, "param_groups"), []),
    "gamma is NaN": lambda c: _set(c, ("lr_schedulers", 0, "gamma"), float("nan")),
    "milestones are text": lambda c: _set(c, ("lr_schedulers", 0, "milestones"), {"x": 1}),
    "firing generator cut": lambda c: _set(c, ("ncalab_step_generator",), c["ncalab_step_generator"][:7]),
}


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    from conftest import make_cfg

    from ncalab.train import run

    out = tmp_path_factory.mktemp("crafted") / "run"
    run(make_cfg(out, "experiment=smoke", "logger=csv", "callbacks.media=null"))
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("craft", list(CRAFTED))
def test_crafted_training_state_in_a_checkpoint_is_refused_with_one_line(
    trained_checkpoint, smoke_cfg, tmp_path, craft
):
    import json

    import torch

    from ncalab.errors import CheckpointError
    from ncalab.train import run

    ckpt = torch.load(trained_checkpoint, weights_only=True)
    CRAFTED[craft](ckpt)
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    out = tmp_path / "resumed"
    with pytest.raises(CheckpointError) as caught:
        run(smoke_cfg(f"ckpt_path={crafted}", "trainer.max_steps=6", out=out))
    assert "\n" not in str(caught.value) and ("altered or is damaged" in str(caught.value)), caught.value
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    assert not (out / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_a_checkpoint_without_its_pool_resumes_with_a_fresh_pool_and_says_so(
    trained_checkpoint, smoke_cfg, tmp_path, caplog
):
    import torch

    from ncalab.train import run

    ckpt = torch.load(trained_checkpoint, weights_only=True)
    del ckpt["NCADataModule"]
    bare = tmp_path / "bare.ckpt"
    torch.save(ckpt, bare)
    with caplog.at_level("WARNING", logger="ncalab"):
        run(smoke_cfg(f"ckpt_path={bare}", "trainer.max_steps=6", out=tmp_path / "resumed"))
    assert any(
        "holds no sample pool" in r.getMessage() and "fresh pool" in r.getMessage() for r in caplog.records
    )
    assert (
        torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    )


def test_perception_ops_null_is_refused_instead_of_becoming_the_sobel3_bank(smoke_cfg):
    from ncalab.errors import ConfigError
    from ncalab.train import run

    with pytest.raises(ConfigError, match=r"perception\.ops=null names no operators"):
        run(smoke_cfg("perception=operators", "perception.ops=null"))


# -- paths of the wrong kind are named for what they are; no run inside another run's checkpoints/ ---------------


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


@pytest.mark.slow
def test_a_run_inside_another_runs_checkpoint_folder_is_refused(smoke_cfg, tmp_path):
    from ncalab.errors import ConfigError
    from ncalab.train import run

    first = tmp_path / "first"
    run(smoke_cfg(out=first))
    for inside in (first / "checkpoints" / "nested", first / "checkpoints"):
        with pytest.raises(ConfigError, match=f"inside the checkpoint folder of the run {first}"):
            run(smoke_cfg(out=inside))
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["last.ckpt"]
