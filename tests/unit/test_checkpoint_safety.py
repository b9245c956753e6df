"""Checkpoints are data: loading one never calls what its config names, never resolves ``${...}`` in it, and
saving one never destroys the last good checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONF, PERCEPTIONS, make_cfg
from omegaconf import OmegaConf

from ncalab.checkpoint import check_compatible, load_nca, read_checkpoint
from ncalab.errors import CheckpointError
from ncalab.nca import NCA
from ncalab.perception import (
    FixedPerception,
    MultiScalePerception,
    ScaledPerception,
    TrainablePerception,
)


def run_config(tmp_path: Path, *overrides: str) -> dict:
    return OmegaConf.to_container(make_cfg(tmp_path / "run", "experiment=smoke", *overrides), resolve=True)


def build(config: dict) -> NCA:
    """What training builds from a trusted (composed) config."""
    classes = {"FixedPerception": FixedPerception, "TrainablePerception": TrainablePerception}
    classes["ScaledPerception"] = ScaledPerception
    classes["MultiScalePerception"] = MultiScalePerception
    node = dict(config["perception"])
    cls = classes[node.pop("_target_").rsplit(".", 1)[1]]
    model = {k: v for k, v in config["model"].items() if k != "_target_"}
    return NCA(cls(**node), **model)


def save(config: dict, path: Path, nca: NCA | None = None) -> Path:
    """The parts of a Lightning checkpoint that ``load_nca`` reads."""
    nca = nca or build_default()
    state = {f"nca.{k}": v for k, v in nca.state_dict().items()}
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state, "global_step": 0}, path)
    return path


def build_default() -> NCA:
    return NCA(FixedPerception(16, "sobel3", name="sobel3"), hidden=32)


def test_every_configured_perception_class_is_known():
    from ncalab.checkpoint import PERCEPTION_CLASSES

    targets = {
        yaml.safe_load(p.read_text())["perception"]["_target_"] for p in (CONF / "perception").glob("*.yaml")
    }
    assert targets <= set(PERCEPTION_CLASSES)


@pytest.mark.parametrize("perception", PERCEPTIONS)
def test_checkpoints_of_every_perception_rebuild(tmp_path, perception):
    config = run_config(tmp_path, f"perception={perception}")
    torch.manual_seed(0)
    nca = build(config)
    with torch.no_grad():
        for p in nca.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    loaded, saved = load_nca(save(config, tmp_path / "m.ckpt", nca))
    assert saved["perception"]["name"] == perception
    assert type(loaded.perception) is type(nca.perception)
    for key, value in nca.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _exec_marker(marker: Path) -> dict:
    return {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w').write('ran')"]}


def test_a_checkpoint_naming_another_callable_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    config = run_config(tmp_path)
    config["perception"] = _exec_marker(marker)
    path = save(config, tmp_path / "evil.ckpt")
    read_checkpoint(path)  # passes weights_only=True: it is only data
    with pytest.raises(CheckpointError, match="not an ncalab perception"):
        load_nca(path)
    assert not marker.exists()


def test_a_nested_target_in_a_known_perception_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    config = run_config(tmp_path)
    config["perception"]["name"] = _exec_marker(marker)
    path = save(config, tmp_path / "nested.ckpt")
    with pytest.raises(CheckpointError, match="perception.name"):
        load_nca(path)
    assert not marker.exists()
    config["perception"]["name"] = "sobel3"
    config["perception"]["_recursive_"] = True
    with pytest.raises(CheckpointError, match="_recursive_"):
        load_nca(save(config, tmp_path / "hydra_key.ckpt"))


def test_interpolations_in_a_saved_config_are_refused_not_resolved(tmp_path, monkeypatch):
    from ncalab.demo import export_checkpoint

    monkeypatch.setenv("NCALAB_TEST_SECRET", "s3cr3t-value")
    config = run_config(tmp_path)
    config["perception"]["name"] = "${oc.env:NCALAB_TEST_SECRET}"
    path = save(config, tmp_path / "interp.ckpt")
    with pytest.raises(CheckpointError, match="interpolation"):
        load_nca(path)
    site = tmp_path / "site"
    with pytest.raises(CheckpointError):
        export_checkpoint(path, site)
    written = [p.read_bytes() for p in site.rglob("*") if p.is_file()] if site.exists() else []
    assert not any(b"s3cr3t-value" in b for b in written)

    # anywhere in the config, not only in the perception
    config = run_config(tmp_path)
    config["data"]["target"] = "${oc.env:NCALAB_TEST_SECRET}"
    with pytest.raises(CheckpointError, match=r"data\.target"):
        load_nca(save(config, tmp_path / "interp2.ckpt"))
    # and the compatibility check reads the saved values as they are
    ckpt = {"hyper_parameters": {"config": {**run_config(tmp_path), "model": {"channels": "${oc.env:X}"}}}}
    with pytest.raises(CheckpointError, match=r"\$\{oc.env:X\}"):
        check_compatible(ckpt, run_config(tmp_path), "x.ckpt")


def test_unknown_model_keys_are_refused(tmp_path):
    config = run_config(tmp_path)
    config["model"]["perception"] = {"_target_": "builtins.print"}
    with pytest.raises(CheckpointError, match="model.perception"):
        load_nca(save(config, tmp_path / "model.ckpt"))


def test_a_load_failure_keeps_torchs_warning(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "path": Path("x")}, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "weights_only" in message and "arbitrary code execution" in message
    assert "\n" not in message and "\x1b" not in message


def test_data_mode_is_part_of_the_compatibility_check(tmp_path):
    saved = run_config(tmp_path, "data.mode=growing")
    with pytest.raises(CheckpointError, match=r"data\.mode: checkpoint has growing"):
        check_compatible({"hyper_parameters": {"config": saved}}, run_config(tmp_path), "x.ckpt")
    # a checkpoint written before data.mode existed was trained in the regenerating mode
    legacy = json.loads(json.dumps(saved))
    del legacy["data"]["mode"]
    check_compatible({"hyper_parameters": {"config": legacy}}, run_config(tmp_path), "x.ckpt")


def test_a_multiscale_checkpoint_is_compared_by_its_levels_bank_and_upsampling(tmp_path):
    """Resuming a multi-scale checkpoint with other levels (or another bank, or upsampling) is refused, naming
    both, with the command line that builds the checkpoint's perception again; the name does not count."""
    saved = run_config(tmp_path, "perception=multiscale")
    ckpt = {"hyper_parameters": {"config": saved}}
    check_compatible(ckpt, run_config(tmp_path, "perception=multiscale", "perception.name=renamed"), "x.ckpt")
    for override in (
        "perception.levels=2",
        "perception.ops=[sobel3_x,sobel3_y]",
        "perception.upsample=nearest",
    ):
        with pytest.raises(CheckpointError) as err:
            check_compatible(ckpt, run_config(tmp_path, "perception=multiscale", override), "x.ckpt")
        message = str(err.value)
        assert (
            "perception: checkpoint has multiscale (identity + sobel3_x, sobel3_y, laplace3 at 3 levels, "
            in message
        )
        assert (
            "e.g. perception=multiscale perception.levels=3 'perception.ops=[sobel3_x,sobel3_y,laplace3]' "
            "perception.upsample=bilinear)" in message
        )


def test_a_multiscale_checkpoint_cannot_give_its_bank_as_tensors(tmp_path):
    """``kernels`` is a keyword of the class for exported tensors only: a checkpoint's config cannot set it."""
    config = run_config(tmp_path, "perception=multiscale")
    config["perception"]["kernels"] = [0.0] * 9
    with pytest.raises(
        CheckpointError, match=r"perception\.kernels is not a setting of MultiScalePerception"
    ):
        load_nca(save(config, tmp_path / "k.ckpt", build(run_config(tmp_path, "perception=multiscale"))))


def test_the_next_save_removes_temp_files_of_killed_saves(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from ncalab.checkpoint import TEMP_MARK, atomic_torch_save

    target = tmp_path / "last.ckpt"
    host = socket.gethostname().replace("-", "_")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".last.ckpt{TEMP_MARK}{host}-{int(dead.stdout)}-0000"
    live = tmp_path / f".last.ckpt{TEMP_MARK}{host}-{os.getppid()}-1111"  # a live process still writing
    other = tmp_path / ".other.ckpt.tmp"  # not ours: left alone
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    atomic_torch_save({"x": torch.ones(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.ones(3))
    assert not stale.exists() and live.exists() and other.exists()
