"""The fused CPU kernels of the sparse step (``ncalab/csrc/sparse_step.cpp``, loaded by ``ncalab.cpu_kernels``)
compute bit for bit what the ATen ops they replace compute: the same rollouts and gradients, for every perception,
precision and start state; without a build the step warns once and uses the ATen ops."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_fast_path import SINGLE_SCALE, grads, make_nca

from ncalab import cpu_kernels
from ncalab.nca import NCA
from ncalab.tools.bench import start_state


def run(nca: NCA, state: str, use_kernels: bool, monkeypatch) -> list[torch.Tensor]:
    monkeypatch.setenv(cpu_kernels.ENV, "1" if use_kernels else "0")
    x = start_state(state, 2, 16)
    torch.manual_seed(7)
    out = nca.rollout(x, 6)
    return [out.detach(), *grads(nca, out)]


@pytest.mark.parametrize("state", ["dense", "pattern", "seed"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", SINGLE_SCALE)  # the fused kernels serve the single-bank step
def test_fused_kernels_compute_bit_for_bit_what_the_aten_ops_compute(
    kernels, name, precision, state, monkeypatch
):
    calls = []
    monkeypatch.setattr(cpu_kernels, "_module", _Spy(kernels, calls))
    nca = make_nca(name, precision=precision)
    fused = run(nca, state, True, monkeypatch)
    assert {"gather_rows", "scatter_update", "gather_grad", "scatter_grad"} <= set(calls)
    calls.clear()
    aten = run(nca, state, False, monkeypatch)
    assert calls == []
    for a, b in zip(fused, aten, strict=True):
        assert torch.equal(a, b)


class _Spy:
    """The kernels' module, recording which kernels are called."""

    def __init__(self, module, calls: list[str]):
        self._module, self._calls = module, calls

    def __getattr__(self, name):
        fn = getattr(self._module, name)

        def call(*args):
            self._calls.append(name)
            return fn(*args)

        return call


def test_without_a_build_the_step_warns_once_and_uses_the_aten_ops(tmp_path, monkeypatch):
    monkeypatch.setenv(cpu_kernels.DIR_ENV, str(tmp_path))  # an empty build folder: it has to build
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_module", None)

    def no_compiler(directory, name):
        raise RuntimeError("Error building extension: c++: command not found\nmore detail")

    monkeypatch.setattr(cpu_kernels, "_build", no_compiler)
    nca = make_nca("sobel3")
    with pytest.warns(
        RuntimeWarning, match=r"could not be built or loaded \(RuntimeError: Error building.*ATen"
    ):
        without = run(nca, "dense", True, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next steps say nothing
        run(nca, "dense", True, monkeypatch)
    assert cpu_kernels.load() is None and "command not found" in cpu_kernels.why_not()
    assert not list(tmp_path.rglob("*.so"))
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    aten = run(nca, "dense", False, monkeypatch)  # turned off: the ATen path, no warning either
    for a, b in zip(without, aten, strict=True):
        assert torch.equal(a, b)


def test_kernels_are_turned_off_by_the_environment(monkeypatch, recwarn):
    monkeypatch.setenv(cpu_kernels.ENV, "0")
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    assert cpu_kernels.load() is None
    assert not recwarn.list
    assert cpu_kernels.main() == 0


def test_a_finished_build_is_imported_from_its_folder_without_building(kernels, monkeypatch, capsys):
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_build", lambda *a: pytest.fail("built again"))
    module = cpu_kernels.load()
    assert module is not None and module.__name__ == cpu_kernels.build_name()
    assert cpu_kernels.main() == 0
    assert f"fused CPU kernels ready in {cpu_kernels.build_dir()}" in capsys.readouterr().out


def test_the_build_name_follows_the_source(tmp_path, monkeypatch):
    before = cpu_kernels.build_name()
    changed = tmp_path / "sparse_step.cpp"
    changed.write_bytes(cpu_kernels.SOURCE.read_bytes() + b"\n// changed\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", changed)
    assert cpu_kernels.build_name() != before and cpu_kernels.build_name().startswith("ncalab_sparse_step_")


def test_kernels_reject_bad_input_with_a_clear_error(kernels):
    rows = torch.tensor([0, 2])
    part = torch.rand(4, 16)
    with pytest.raises(RuntimeError, match="each part must be a contiguous matrix"):
        kernels.gather_rows(rows, 3, [part.t().contiguous().t()], torch.float32)
    with pytest.raises(RuntimeError, match="each part must be Float"):
        kernels.gather_rows(rows, 3, [part.double()], torch.float32)
    with pytest.raises(RuntimeError, match="dtype must be float32 or bfloat16"):
        kernels.gather_rows(rows, 3, [part], torch.float16)
    with pytest.raises(RuntimeError, match="total .* must be at least the number of rows"):
        kernels.gather_rows(rows, 1, [part], torch.float32)
    y = kernels.gather_rows(rows, 3, [part, 2 * part], torch.float32)
    assert torch.equal(y[:2, :16], part[[0, 2]]) and torch.equal(y[:2, 16:32], 2 * part[[0, 2]])
    assert torch.equal(y[:2, 32], torch.ones(2)) and torch.equal(y[2], torch.zeros(33))


def test_a_float64_state_takes_the_aten_ops(kernels, monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_kernels, "_module", _Spy(kernels, calls))
    nca = make_nca("sobel3").double()
    x = start_state("dense", 2, 12).double()
    out = nca.rollout(x, 3)
    assert out.dtype == torch.float64 and calls == []


@pytest.mark.parametrize("threshold", [0.1, 0.0, -0.2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scatter_update_is_the_update_and_the_alive_masks_on_a_non_square_grid(kernels, dtype, threshold):
    from ncalab.fast_step import ALPHA, alive_cells

    g = torch.Generator().manual_seed(3)
    b, c, h, w = 2, 16, 7, 11
    n = b * h * w
    x = (torch.rand(b, c, h, w, generator=g) - 0.3).contiguous(memory_format=torch.channels_last)
    cells = x.permute(0, 2, 3, 1).reshape(n, c)
    pre = torch.rand(b, 1, h, w, generator=g) < 0.7
    rows = torch.nonzero(torch.rand(n, generator=g) < 0.5).squeeze(1)
    m = rows.numel()
    inv = torch.full((n,), m, dtype=torch.long)
    inv[rows] = torch.arange(m)
    out = (torch.randn(m + 5, c, generator=g) * 0.3).to(dtype)  # rows from m on hold junk: read as zero
    new, keep = kernels.scatter_update(out, inv, m, cells, pre.reshape(n), b, h, w, ALPHA, threshold)
    dx = torch.zeros(n, c)
    dx[rows] = out[:m].float()
    want = (cells + dx).view(b, h, w, c).permute(0, 3, 1, 2)
    want_keep = pre & alive_cells(want, threshold)
    assert torch.equal(keep.view(b, 1, h, w), want_keep)
    assert 0 < want_keep.sum() < n
    assert torch.equal(new.view(b, h, w, c).permute(0, 3, 1, 2), want * want_keep)


def test_a_failed_build_is_told_by_its_telling_line():
    ninja_output = (
        "Error building extension 'ncalab_sparse_step_x': [1/2] c++ -MMD -O3 -fopenmp -c sparse_step.cpp\n"
        "FAILED: sparse_step.o\nc++ -MMD -O3 -fopenmp -c sparse_step.cpp\n"
        "/bin/sh: 1: c++: not found\nninja: build stopped: subcommand failed.\n"
    )
    assert cpu_kernels.reason(ninja_output) == "/bin/sh: 1: c++: not found"
    assert cpu_kernels.reason("Ninja is required to load C++ extensions") == (
        "Ninja is required to load C++ extensions"
    )
    assert cpu_kernels.reason("something\nelse") == "something"
    assert len(cpu_kernels.reason("error: " + "x" * 1000)) == 300


def test_a_dead_grid_updates_no_row_in_both_paths(kernels, monkeypatch):
    nca = make_nca("sobel3", precision="bf16")
    x = torch.zeros(2, 16, 10, 10, requires_grad=True)  # no live cell: no row is updated
    outs = []
    for flag in ("1", "0"):
        monkeypatch.setenv(cpu_kernels.ENV, flag)
        out = nca.rollout(x, 3)
        outs.append(
            [out.detach(), *torch.autograd.grad(out.square().sum() + out.sum(), [x, *nca.parameters()])]
        )
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
    assert not outs[0][0].any()


def _copy_build(kernels, tmp_path) -> tuple[Path, Path]:
    """The finished build copied into a kernels folder of its own (``NCALAB_KERNELS_DIR``): (folder, library)."""
    root = tmp_path / "kernels"
    shutil.copytree(cpu_kernels.build_dir(), root / cpu_kernels.build_name())
    return root, root / cpu_kernels.build_name() / f"{cpu_kernels.build_name()}.so"


def _kernels_cli(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, cpu_kernels.DIR_ENV: str(root), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ncalab.cpu_kernels"], env=env, capture_output=True, text=True, timeout=300
    )


def test_the_kernels_folder_setting_is_the_folder_that_holds_the_builds(tmp_path, monkeypatch):
    monkeypatch.setenv(cpu_kernels.DIR_ENV, str(tmp_path))
    assert cpu_kernels.build_dir() == tmp_path / cpu_kernels.build_name()
