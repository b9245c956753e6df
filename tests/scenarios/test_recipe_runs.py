"""The training recipe that makes patterns hold: no last-layer bias, damage as a share, the overflow penalty."""

from __future__ import annotations

import csv

import pytest
import torch

from ncalab.checkpoint import load_nca, read_checkpoint
from ncalab.errors import CheckpointError
from ncalab.train import run


def _metrics(run_dir) -> list[dict]:
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with path.open() as f:
            rows += list(csv.DictReader(f))
    return rows


def test_overflow_penalty_is_trained_and_logged(smoke_cfg, tmp_path):
    run(smoke_cfg("loss.overflow_weight=1.0"))
    rows = [r for r in _metrics(tmp_path / "run") if r.get("train/overflow")]
    assert len(rows) == 4 and all(float(r["train/overflow"]) >= 0 for r in rows)


def test_checkpoint_from_before_update_bias_loads_with_its_bias(smoke_cfg, tmp_path):
    run(smoke_cfg("model.update_bias=true"))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(path)
    del ckpt["hyper_parameters"]["config"]["model"]["update_bias"]  # as written before the key existed
    ckpt["state_dict"]["nca.update.2.bias"] = torch.full((16,), 0.01)
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    nca, _ = load_nca(old)
    assert nca.update_bias and torch.equal(nca.update[-1].bias, torch.full((16,), 0.01))
    # resuming it in a run without the bias is refused, naming the key
    with pytest.raises(CheckpointError, match="model.update_bias"):
        run(smoke_cfg(f"ckpt_path={old}", out=tmp_path / "resumed"))
