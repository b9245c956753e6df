"""The run-folder format written down in ncalab.runs.folder is what the writers write and what the readers read."""

from __future__ import annotations

import json
import signal
import sys
from types import SimpleNamespace

import torch

from ncalab import compare
from ncalab.callbacks import RunEvaluation
from ncalab.guard import DivergenceGuard
from ncalab.media import REGIONS, WIDE_REGIONS
from ncalab.nca import NCA
from ncalab.perception import FixedPerception
from ncalab.runs import folder as run_folder
from ncalab.runs.status import RunInterrupted, RunStatus


def test_every_file_name_is_in_the_docstring():
    doc = run_folder.__doc__
    names = [v for k, v in vars(run_folder).items() if k.endswith(("_FILE", "_DIR", "_IMAGE", "_CHECKPOINT"))]
    names += [run_folder.METRICS_CSV, run_folder.OLD_GROWTH_GIF]
    assert len(names) > 12
    for name in names:
        assert f"``{name}" in doc or f"/{name}``" in doc or f"{name}/" in doc, name
    for key in (*run_folder.STATUS_KEYS, *run_folder.SUMMARY_KEYS, *run_folder.EVALUATION_KEYS):
        assert f"``{key}``" in doc, key


def test_status_json_holds_the_documented_keys(tmp_path):
    written = set()
    for end in ("finished", "failed", "interrupted"):
        status = RunStatus(tmp_path / end, ["seed=1"], heartbeat_s=0)
        if end == "finished":
            status.finished()
        elif end == "failed":
            status.failed(RuntimeError("boom"))
        else:
            status.failed(RunInterrupted(int(signal.SIGTERM), 3, tmp_path / "last.ckpt"))
        state = json.loads((tmp_path / end / run_folder.STATUS_FILE).read_text())
        assert state["status"] == end and end in run_folder.STATUSES
        written |= set(state)
    assert written == set(run_folder.STATUS_KEYS)


def test_the_end_of_run_evaluation_writes_the_documented_keys(tmp_path):
    """RunEvaluation's evaluation.json and summary.json (a tiny model, a few steps: no training needed)."""
    torch.manual_seed(0)
    nca = NCA(FixedPerception(16), channels=16)
    target = torch.zeros(4, 12, 12)
    target[:, 4:8, 4:8] = 1.0
    callback = RunEvaluation(
        str(tmp_path), horizon=2, rollouts=1, long_run_steps=[2, 4], grow_steps=2, regrow_steps=2
    )
    trainer = SimpleNamespace(global_step=5, datamodule=SimpleNamespace(target=target), loggers=[])
    module = SimpleNamespace(
        nca=nca, last_loss=0.5, guard=DivergenceGuard(enabled=False), stopped_by_guard=False
    )
    callback.on_train_start(trainer, module)
    callback.on_train_end(trainer, module)

    summary = json.loads((tmp_path / run_folder.SUMMARY_FILE).read_text())
    assert tuple(summary) == run_folder.SUMMARY_KEYS
    if sys.platform.startswith("linux"):
        assert 0.1 < summary["peak_memory_gb"] < 64  # this process's resident set while "training"
    evaluation = json.loads((tmp_path / run_folder.EVALUATION_FILE).read_text())
    assert tuple(evaluation) == run_folder.EVALUATION_KEYS
    assert tuple(evaluation["long_run"]) == run_folder.LONG_RUN_KEYS
    regeneration = evaluation["regeneration"]
    assert set(regeneration) == set(run_folder.REGENERATION_KEYS) | set(REGIONS) | set(WIDE_REGIONS)
    for region in REGIONS + WIDE_REGIONS:
        assert tuple(regeneration[region]) == run_folder.REGION_KEYS
    assert (tmp_path / run_folder.FINAL_IMAGE).is_file()

    # What compare reads of it: every column is a summary key (or derived from the loss curve).
    assert {key for key, _, _ in compare.RUN_COLUMNS} - set(run_folder.SUMMARY_KEYS) == {"steps_to_threshold"}
    record = compare.read_run(tmp_path)
    assert record.status == run_folder.FINISHED and record.final_png is not None
    assert record.metric("ssim") == summary["ssim"] and record.metric("regrown") == summary["regrown"]


def test_media_names_and_the_csv_versions(tmp_path):
    assert run_folder.media_name("growth", run_folder.step_tag(500), "mp4") == "growth_step000500.mp4"
    assert run_folder.media_name("pool", run_folder.FINAL_TAG, ".png") == "pool_final.png"
    assert run_folder.last_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    assert run_folder.overrides_file(tmp_path) == tmp_path / ".hydra" / "overrides.yaml"
    for version in (10, 2, 0):
        folder = tmp_path / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("step,train/loss\n")
    (tmp_path / "csv" / "version_x").mkdir()
    assert run_folder.metrics_csvs(tmp_path) == [
        tmp_path / "csv" / f"version_{v}" / "metrics.csv" for v in (0, 2, 10)
    ]
