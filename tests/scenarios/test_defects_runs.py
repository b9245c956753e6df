"""Defects found by trying ncalab as an attacker and an unlucky user would: each test here failed on the code
before its fix."""

from __future__ import annotations

import pytest


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


def test_a_run_inside_another_runs_checkpoint_folder_is_refused(smoke_cfg, tmp_path):
    from ncalab.errors import ConfigError
    from ncalab.train import run

    first = tmp_path / "first"
    run(smoke_cfg(out=first))
    for inside in (first / "checkpoints" / "nested", first / "checkpoints"):
        with pytest.raises(ConfigError, match=f"inside the checkpoint folder of the run {first}"):
            run(smoke_cfg(out=inside))
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["last.ckpt"]
