"""``perception=operators``: named fixed operators, their normalisation, banks of mixed sizes, and every user of a
perception taking a bank (fast path, bf16, checkpoints, exported folders, the bench, W&B run names, the sweep)."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import CONF
from hydra.utils import instantiate


def test_the_operators_experiment_sweeps_five_banks_over_two_seeds(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=["experiment=operators_cpu"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.launcher.n_jobs == 2
    assert "joblib" in cfg.hydra.launcher._target_
    assert cfg.perception.name == "operators" and cfg.data.target == "flower"
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    assert not any(p.startswith("experiment=") for p in params)
    jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)[0]
    banks = sorted({next(o for o in job if o.startswith("perception.ops=")) for job in jobs})
    assert (
        len(jobs) == 10
        and sorted(o for job in jobs for o in job if o.startswith("seed=")) == ["seed=0"] * 5 + ["seed=1"] * 5
    )
    assert banks == sorted(
        f"perception.ops=[{b}]"
        for b in (
            "sobel3_x,sobel3_y",
            "sobel3_x,sobel3_y,laplace3",
            "sobel3_dil2_x,sobel3_dil2_y",
            "sobel3_x,sobel3_y,sobel3_dil2_x,sobel3_dil2_y",
            "sobel5_x,sobel5_y,sobel5_45,sobel5_135",
        )
    )
    for job in jobs:  # every job composes into a bank that builds
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            job_cfg = compose("train", overrides=["experiment=operators_cpu", *job, f"output_dir={tmp_path}"])
        p = instantiate(job_cfg.perception)
        assert p.ops and p.name == "operators"


def test_a_bank_trains_evaluates_and_exports(smoke_cfg, tmp_path):
    from ncalab.demo.__main__ import main as demo_main
    from ncalab.evaluate import load_model
    from ncalab.train import run

    run(smoke_cfg("perception=operators", "perception.ops=[sobel3_x,sobel3_y,laplace5]"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["hyper_parameters"]["config"]["perception"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["ops"] == ["sobel3_x", "sobel3_y", "laplace5"] and summary["perception"] == "operators"
    nca, _, info = load_model(ckpt)
    assert nca.perception.ops == ("sobel3_x", "sobel3_y", "laplace5") and info["perception"] == "operators"
    assert demo_main(["export", str(ckpt), str(tmp_path / "site")]) == 0
    meta = json.loads((tmp_path / "site" / "model.json").read_text())
    assert (
        meta["perception"]["ops"] == ["sobel3_x", "sobel3_y", "laplace5"]
        and meta["perception"]["kernel_size"] == 5
    )
    blob = np.frombuffer((tmp_path / "site" / "model.bin").read_bytes(), dtype="<f4")
    k = meta["tensors"]["kernels"]
    kernels = torch.from_numpy(blob[k["offset"] : k["offset"] + 16 * 3 * 25].copy()).view(16 * 3, 1, 5, 5)
    assert torch.equal(kernels, nca.perception.operator_weight())
