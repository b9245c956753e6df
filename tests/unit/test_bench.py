"""The bench CLI runs a tiny case and prints one parseable JSON object per case."""

from __future__ import annotations

import pytest

from ncalab.tools.bench import PERCEPTIONS, Spec, flops_per_iter, start_state


def test_a_row_takes_the_peak_of_its_own_precision():
    from ncalab.tools.bench import row

    peaks = {"fp32": 100.0, "bf16": 800.0}
    for precision in ("fp32", "bf16"):
        spec = Spec("sobel3", size=10, batch=1, steps=2, impl="ncalab", precision=precision, state="dense")
        r = row(spec, [0.5, 0.25, 1.0], 1.0, peaks)
        assert r["s_per_iter"] == 0.5 and r["state"] == "dense" and r["peak_gflops"] == peaks[precision]
        assert r["gflops"] == pytest.approx(flops_per_iter(spec) / 0.5 / 1e9, abs=1e-3)
        assert r["peak_share"] == pytest.approx(r["gflops"] / peaks[precision], rel=1e-2, abs=1e-4)


def test_matmul_peak_is_measured_for_both_precisions():
    from ncalab.tools.bench import matmul_peak

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

    conf = Path(__file__).resolve().parents[2] / "conf" / "perception"
    assert {p.stem for p in conf.glob("*.yaml")} == set(PERCEPTIONS)


def test_flops_of_a_multiscale_bank_count_every_level():
    """The bank at each level (a level pooled by 2**l has 4**-l of the cells), the pooling and the bilinear
    upsampling of the coarse levels; the update network reads 16 x (1 + 3 operators x 3 levels) values."""
    spec = Spec("multiscale", size=8, batch=1, steps=1, impl="ncalab")
    c, h = 16, 128
    dw = 2 * c * 3 * 9 * (1 + 1 / 4 + 1 / 16) + c * 2 + 8 * c * 3 * 2
    l1, l2 = 2 * c * 10 * h, 2 * h * c
    assert flops_per_iter(spec) == pytest.approx(64 * ((dw + l1 + l2) + (2 * (l1 + l2) + dw)))
