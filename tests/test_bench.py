"""The bench CLI runs a tiny case and prints one parseable JSON object per case."""

from __future__ import annotations

import json
import sys

import pytest
import warm

from ncalab.bench import FIELDS, PERCEPTIONS, Spec, flops_per_iter, start_state


@pytest.mark.slow
def test_bench_cli_prints_baseline_and_ncalab_rows_as_json_for_dense_and_pattern_states():
    cmd = [sys.executable, "-m", "ncalab.bench", "--sizes", "12", "--steps", "2", "--batch", "2"]
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


def test_a_row_takes_the_peak_of_its_own_precision():
    from ncalab.bench import row

    peaks = {"fp32": 100.0, "bf16": 800.0}
    for precision in ("fp32", "bf16"):
        spec = Spec("sobel3", size=10, batch=1, steps=2, impl="ncalab", precision=precision, state="dense")
        r = row(spec, [0.5, 0.25, 1.0], 1.0, peaks)
        assert r["s_per_iter"] == 0.5 and r["state"] == "dense" and r["peak_gflops"] == peaks[precision]
        assert r["gflops"] == pytest.approx(flops_per_iter(spec) / 0.5 / 1e9, abs=1e-3)
        assert r["peak_share"] == pytest.approx(r["gflops"] / peaks[precision], rel=1e-2, abs=1e-4)


@pytest.mark.slow
def test_a_bad_state_is_refused_with_the_accepted_ones():
    cmd = [sys.executable, "-m", "ncalab.bench", "--state", "dense,sparse", "--sizes", "8"]
    out = warm.run(cmd, timeout=60)
    assert out.returncode != 0
    assert "--state 'dense,sparse': accepted: pattern, dense, seed" in out.stderr


def test_matmul_peak_is_measured_for_both_precisions():
    from ncalab.bench import matmul_peak

    peaks = matmul_peak(n=128, repeats=2, min_seconds=0.0)
    assert set(peaks) == {"fp32", "bf16"} and all(v > 0 for v in peaks.values())


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


def test_flops_of_a_multiscale_bank_count_every_level():
    """The bank at each level (a level pooled by 2**l has 4**-l of the cells), the pooling and the bilinear
    upsampling of the coarse levels; the update network reads 16 x (1 + 3 operators x 3 levels) values."""
    spec = Spec("multiscale", size=8, batch=1, steps=1, impl="ncalab")
    c, h = 16, 128
    dw = 2 * c * 3 * 9 * (1 + 1 / 4 + 1 / 16) + c * 2 + 8 * c * 3 * 2
    l1, l2 = 2 * c * 10 * h, 2 * h * c
    assert flops_per_iter(spec) == pytest.approx(64 * ((dw + l1 + l2) + (2 * (l1 + l2) + dw)))


@pytest.mark.slow
def test_bench_cli_times_the_multiscale_perception_against_its_baseline():
    cmd = [sys.executable, "-m", "ncalab.bench", "--sizes", "13", "--steps", "2", "--batch", "2"]
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


@pytest.mark.slow
def test_bench_times_the_fused_kernels_the_aten_ops_and_the_compiled_step_side_by_side():
    cmd = [
        sys.executable,
        "-m",
        "ncalab.bench",
        "--sizes",
        "10",
        "--steps",
        "2",
        "--batch",
        "1",
        "--state",
        "pattern",
    ]
    cmd += ["--repeats", "1", "--warmup", "0", "--perceptions", "sobel3", "--precision", "fp32", "--json"]
    cmd += ["--peak-seconds", "0", "--no-baseline", "--step-ops", "fused,aten", "--compile", "none,eager"]
    result = warm.run(cmd, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [(r["step_ops"], r["compile_backend"]) for r in rows] == [
        ("fused", None),
        ("fused", "eager"),
        ("aten", None),
        ("aten", "eager"),
    ]
    assert all(r["s_per_iter"] > 0 for r in rows)


def test_a_bad_step_ops_value_is_refused():
    from ncalab.bench import main

    with pytest.raises(SystemExit, match=r"--step-ops 'fast': accepted: fused, aten"):
        main(["--step-ops", "fast", "--sizes", "8", "--perceptions", "sobel3"])
