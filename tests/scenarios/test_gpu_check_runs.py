"""`python -m ncalab.tools.gpu_check`: the GPU check's whole path at toy size on the CPU, its inputs and its budget."""

from __future__ import annotations

import json
import math
import sys

import warm
from conftest import ROOT

from ncalab.tools.gpu_check import (
    SOURCE_EXPERIMENTS,
)

BENCH_KEYS = {
    "perception",
    "size",
    "batch",
    "steps",
    "precision",
    "compile",
    "status",
    "ms_per_iter",
    "warmup_s",
    "cells_steps_per_s",
    "gflops",
    "peak_mem_gb",
    "peak_mem_kind",
}

RUN_KEYS = {
    "experiment",
    "perception",
    "status",
    "steps",
    "rollout",
    "ms_per_iter",
    "peak_mem_gb",
    "train_loss",
    "eval_loss",
    "psnr",
    "holds_steps",
    "grown",
    "regrown",
    "wall_time_s",
    "run_dir",
    "loss_curve",
}


def test_tiny_check_writes_both_summaries(tmp_path):
    out = tmp_path / "check"
    result = warm.run(
        [sys.executable, "-m", "ncalab.tools.gpu_check", "--out", str(out), "--tiny"], cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "tiny" and summary["device"] == "cpu"
    assert {"device_name", "torch", "wall_time_s", "settings"} <= set(summary)

    bench = summary["bench"]
    assert [(r["precision"], r["compile"]) for r in bench] == [
        ("fp32", False),
        ("bf16", False),
        ("fp32", True),
        ("bf16", True),
    ]
    for row in bench:
        assert BENCH_KEYS <= set(row) and row["status"] == "finished"
        assert row["ms_per_iter"] > 0 and row["peak_mem_gb"] > 0
    assert {r["compile_backend"] for r in bench if r["compile"]} == {"eager"}

    runs = summary["experiments"]
    assert [r["experiment"] for r in runs] == [f"source_{p}" for p in SOURCE_EXPERIMENTS]
    for row in runs:
        assert RUN_KEYS <= set(row) and row["status"] == "finished", row.get("error")
        assert row["steps"] == 3 and row["ms_per_iter"] > 0
        assert [step for step, _ in row["loss_curve"]] == [0, 1, 2]
        assert all(math.isfinite(loss) for _, loss in row["loss_curve"])
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["psnr"])
        assert json.loads((out / "runs" / row["experiment"] / "summary.json").read_text())["steps"] == 3
    # each experiment keeps its own truncation: the source's 64/16 shrunk to the toy rollout, gradients through 16
    assert {r["perception"]: r["rollout"][2] for r in runs} == {
        p: 16 if p == "trainable_truncated" else None for p in SOURCE_EXPERIMENTS
    }

    md = (out / "summary.md").read_text()
    assert "## Training-step bench: 16x16, batch 2, 8 steps" in md
    assert "| sobel3 | bf16 | yes (eager) |" in md
    for p in SOURCE_EXPERIMENTS:
        assert f"| source_{p} | 3 |" in md and f"- source_{p}: step 0: " in md
    assert "wrote" in result.stdout
