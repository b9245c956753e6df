"""The bench CLI runs a tiny case and prints one parseable JSON object per case."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ncalab.bench import FIELDS, PERCEPTIONS, Spec, flops_per_iter, start_state


def test_bench_cli_prints_baseline_and_ncalab_rows_as_json():
    cmd = [sys.executable, "-m", "ncalab.bench", "--sizes", "16", "--steps", "4", "--batch", "2"]
    cmd += ["--repeats", "1", "--warmup", "0", "--perceptions", "sobel3", "--precision", "fp32", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [(r["impl"], r["precision"]) for r in rows] == [("baseline", "fp32"), ("ncalab", "fp32")]
    for r in rows:
        assert set(FIELDS) <= set(r)
        assert (r["perception"], r["size"], r["batch"], r["steps"]) == ("sobel3", 16, 2, 4)
        assert r["s_per_iter"] > 0 and r["cells_steps_per_s"] > 0 and r["gflops"] > 0 and r["peak_mem_gb"] > 0
    assert "speedup" not in rows[0]
    assert all(r["speedup"] > 0 for r in rows[1:])


def test_flops_count_depthwise_and_both_layers():
    spec = Spec("sobel3", size=10, batch=1, steps=2, impl="ncalab")
    c, h = 16, 128
    fwd = 2 * c * 2 * 9 + 2 * c * 3 * h + 2 * h * c
    bwd = 2 * (2 * c * 3 * h + 2 * h * c) + 2 * c * 2 * 9  # fixed kernels: gradient w.r.t. the input only
    assert flops_per_iter(spec) == 100 * 2 * (fwd + bwd)
    truncated = Spec("sobel3", size=10, batch=1, steps=2, impl="ncalab", backprop_steps=1)
    assert flops_per_iter(truncated) == 100 * (2 * fwd + bwd)


@pytest.mark.parametrize("kind", ["pattern", "dense", "seed"])
def test_start_states(kind):
    x = start_state(kind, 2, 20)
    assert x.shape == (2, 16, 20, 20)
    live = (x[:, 3] > 0.1).float().mean()
    assert {"seed": live < 0.01, "dense": live == 1, "pattern": 0.2 < live < 0.4}[kind]


def test_every_configured_perception_is_benchmarked():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf" / "perception"
    assert {p.stem for p in conf.glob("*.yaml")} == set(PERCEPTIONS)
