"""``perception=multiscale`` through every tool: a smoke run on an odd grid trains, checkpoints and evaluates; the
checkpoint resumes, evaluates with ``python -m ncalab.evaluate``, exports to a folder that evaluates exactly like
it, and refuses to resume with other levels; a two-job sweep names its settings and ``python -m ncalab.compare``
reports it. (The unit tests are in test_perception.py, the fast path in test_fast_path.py, the bad settings in
test_one_line_errors.py, the browser in test_demo.py.)"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import pytest
import warm
from conftest import ROOT

from ncalab.checkpoint import load_nca, read_checkpoint
from ncalab.errors import CheckpointError
from ncalab.perception import MultiScalePerception
from ncalab.train import run

# A 21x21 grid (13 px target + 2 x 4 padding): the pooling by 2 and by 4 runs past its edge.
ODD = ("perception=multiscale", "data.target_size=13", "logger=csv")

SMALL = dict(rollouts=2, long_run_steps=(16, 32), grow_steps=8, regrow_steps=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from conftest import make_cfg

    out = tmp_path_factory.mktemp("multiscale") / "run"
    run(make_cfg(out, "experiment=smoke", "callbacks.media=null", *ODD))
    return out


def test_a_multiscale_run_trains_checkpoints_and_evaluates(trained):
    ckpt = read_checkpoint(trained / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    node = ckpt["hyper_parameters"]["config"]["perception"]
    assert node["_target_"] == "ncalab.perception.MultiScalePerception"
    assert (node["name"], node["levels"], node["ops"], node["upsample"]) == (
        "multiscale",
        3,
        ["sobel3_x", "sobel3_y", "laplace3"],
        "bilinear",
    )
    pool = next(v for k, v in ckpt.items() if k.endswith("NCADataModule"))["pool"]
    assert pool.shape[-2:] == (21, 21)
    with open(next((trained / "csv").glob("version_*/metrics.csv"))) as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["perception"] == "multiscale" and summary["steps"] == 4
    assert summary["parameters"] == 16 * (1 + 9) * 32 + 32 + 32 * 16  # no perception parameters
    assert 0 < summary["psnr"] < 100
    assert json.loads((trained / "status.json").read_text())["status"] == "finished"
    nca, _ = load_nca(trained / "checkpoints" / "last.ckpt")
    assert isinstance(nca.perception, MultiScalePerception) and nca.perception.levels == 3


def test_the_checkpoint_evaluates_from_the_command_line(trained, tmp_path, capsys):
    import ncalab.evaluate

    out = tmp_path / "eval.json"
    args = [str(trained / "checkpoints" / "last.ckpt"), "--rollouts", "2", "--long-run", "16,32"]
    args += ["--grow-steps", "8", "--regrow-steps", "8", "--output", str(out)]
    assert ncalab.evaluate.main(args) == 0
    result = json.loads(out.read_text())
    assert result["perception"] == "multiscale" and result["kind"] == "checkpoint"
    assert math.isfinite(result["loss"]) and 0 < result["psnr"] < 100


def test_an_exported_multiscale_folder_evaluates_exactly_like_its_checkpoint(trained, tmp_path):
    from ncalab.demo import export_checkpoint
    from ncalab.evaluate import evaluate_model
    from ncalab.exported import load_model_folder

    ckpt = trained / "checkpoints" / "last.ckpt"
    folder = tmp_path / "exported"
    export_checkpoint(ckpt, folder)
    meta = json.loads((folder / "model.json").read_text())
    assert {k: meta["perception"][k] for k in ("levels", "ops", "upsample", "n_ops")} == {
        "levels": 3,
        "ops": ["sobel3_x", "sobel3_y", "laplace3"],
        "upsample": "bilinear",
        "n_ops": 9,
    }
    assert meta["grid"] == [21, 21]
    # rebuilt from the tensors: the bank, read at the levels model.json gives
    nca, _ = load_model_folder(folder)
    assert isinstance(nca.perception, MultiScalePerception) and nca.perception.levels == 3
    from_ckpt = evaluate_model(ckpt, **SMALL)
    from_folder = evaluate_model(folder, **SMALL)
    assert from_ckpt.pop("kind") == "checkpoint" and from_folder.pop("kind") == "folder"
    assert from_ckpt.pop("model") == str(ckpt) and from_folder.pop("model") == str(folder)
    assert from_folder == from_ckpt
    assert from_folder["perception"] == "multiscale"


def test_a_multiscale_checkpoint_resumes_and_refuses_other_levels(trained, smoke_cfg, tmp_path):
    ckpt = trained / "checkpoints" / "last.ckpt"
    run(smoke_cfg(*ODD, f"ckpt_path={ckpt}", "trainer.max_steps=6", out=tmp_path / "resumed"))
    assert read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["global_step"] == 6
    with pytest.raises(CheckpointError, match=r"perception: checkpoint has multiscale .* at 3 levels") as err:
        run(smoke_cfg(*ODD, "perception.levels=2", f"ckpt_path={ckpt}", "trainer.max_steps=6"))
    assert "perception=multiscale perception.levels=3 " in str(err.value)


def test_a_multiscale_sweep_names_its_settings_and_compares(tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", "-m", "experiment=smoke", "callbacks.media=null", *ODD]
    result = warm.run(
        [*cmd, "perception.upsample=bilinear,nearest", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, mode in (("0", "bilinear"), ("1", "nearest")):
        saved = json.loads((sweep_dir / job / "summary.json").read_text())
        assert saved["perception"] == "multiscale"
        config = read_checkpoint(sweep_dir / job / "checkpoints" / "last.ckpt")["hyper_parameters"]["config"]
        assert config["perception"]["upsample"] == mode
    report = warm.run([sys.executable, "-m", "ncalab.compare", str(sweep_dir)], cwd=ROOT, timeout=60)
    assert report.returncode == 0, report.stderr
    for mode in ("bilinear", "nearest"):
        assert f"perception.upsample={mode}" in report.stdout
    assert "perception.upsample=nearest" in (sweep_dir / "report.html").read_text()
