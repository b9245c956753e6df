"""The bench CLI runs a tiny case and prints one parseable JSON object per case."""

from __future__ import annotations

import json
import sys

import pytest
import warm

from ncalab.tools.bench import FIELDS


def test_bench_cli_prints_baseline_and_ncalab_rows_as_json_for_dense_and_pattern_states():
    cmd = [sys.executable, "-m", "ncalab.tools.bench", "--sizes", "12", "--steps", "2", "--batch", "2"]
    cmd += ["--repeats", "1", "--warmup", "0", "--perceptions", "sobel3", "--precision", "fp32", "--json"]
    cmd += ["--peak-seconds", "0"]
    result = warm.run(cmd, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    # Both start states by default, each with its own baseline.
    assert [(r["state"], r["impl"], r["precision"]) for r in rows] == [
        (state, impl, "fp32") for state in ("dense", "pattern") for impl in ("baseline", "ncalab")
    ]
    for r in rows:
        assert set(FIELDS) <= set(r)
        assert (r["perception"], r["size"], r["batch"], r["steps"]) == ("sobel3", 12, 2, 2)
        assert r["s_per_iter"] > 0 and r["cells_steps_per_s"] > 0 and r["gflops"] > 0 and r["peak_mem_gb"] > 0
        # The share of the matrix-product peak measured in the same run.
        assert r["peak_gflops"] > 0
        assert r["peak_share"] == pytest.approx(r["gflops"] / r["peak_gflops"], rel=1e-2, abs=1e-4)
    assert len({r["peak_gflops"] for r in rows}) == 1
    assert [("speedup" in r) for r in rows] == [False, True, False, True]
    assert all(r["speedup"] > 0 for r in rows if r["impl"] == "ncalab")


def test_a_bad_state_is_refused_with_the_accepted_ones():
    cmd = [sys.executable, "-m", "ncalab.tools.bench", "--state", "dense,sparse", "--sizes", "8"]
    out = warm.run(cmd, timeout=60)
    assert out.returncode != 0
    assert "--state 'dense,sparse': accepted: pattern, dense, seed" in out.stderr


def test_bench_cli_times_the_multiscale_perception_against_its_baseline():
    cmd = [sys.executable, "-m", "ncalab.tools.bench", "--sizes", "13", "--steps", "2", "--batch", "2"]
    cmd += ["--repeats", "1", "--warmup", "0", "--perceptions", "multiscale", "--precision", "fp32,bf16"]
    cmd += ["--state", "pattern", "--peak-seconds", "0", "--json"]
    result = warm.run(cmd, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [(r["perception"], r["impl"], r["precision"]) for r in rows] == [
        ("multiscale", "baseline", "fp32"),
        ("multiscale", "ncalab", "fp32"),
        ("multiscale", "ncalab", "bf16"),
    ]
    assert all(r["s_per_iter"] > 0 and r["gflops"] > 0 for r in rows)
    assert all(r["speedup"] > 0 for r in rows if r["impl"] == "ncalab")


def test_bench_times_the_step_and_the_compiled_step_side_by_side():
    cmd = [sys.executable, "-m", "ncalab.tools.bench", "--sizes", "10", "--steps", "2", "--batch", "1"]
    cmd += ["--state", "pattern", "--repeats", "1", "--warmup", "0", "--perceptions", "sobel3", "--json"]
    cmd += ["--precision", "fp32", "--peak-seconds", "0", "--no-baseline", "--compile", "none,eager"]
    result = warm.run(cmd, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [r["compile_backend"] for r in rows] == [None, "eager"]
    assert all(r["s_per_iter"] > 0 for r in rows)


def test_interleaved_variants_are_timed_in_turns_and_compared_with_the_first():
    cmd = [sys.executable, "-m", "ncalab.tools.bench", "--sizes", "10", "--steps", "2", "--batch", "1"]
    cmd += ["--state", "pattern", "--repeats", "3", "--warmup", "0", "--perceptions", "sobel3", "--json"]
    cmd += ["--precision", "fp32,bf16", "--peak-seconds", "0", "--interleave"]
    result = warm.run(cmd, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    # The baseline comes first (without --no-baseline), then the variants; each timed 3 times.
    assert [(r["impl"], r["precision"]) for r in rows] == [
        ("baseline", "fp32"),
        ("ncalab", "fp32"),
        ("ncalab", "bf16"),
    ]
    assert all(r["repeats"] == 3 and r["s_per_iter"] > 0 for r in rows)
    assert rows[0]["vs_first"] == 1.0
    for r in rows[1:]:
        assert r["vs_first"] == round(rows[0]["s_per_iter"] / r["s_per_iter"], 3)
