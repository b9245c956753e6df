"""The fused CPU kernels of the sparse step (``ncalab/csrc/sparse_step.cpp``, loaded by ``ncalab.cpu_kernels``)
compute bit for bit what the ATen ops they replace compute: the same rollouts and gradients, for every perception,
precision and start state; without a build the step warns once and uses the ATen ops."""

from __future__ import annotations

from test_cpu_kernels import _copy_build, _kernels_cli

from ncalab import cpu_kernels


def test_a_truncated_cached_library_is_rebuilt_not_loaded(kernels, tmp_path):
    """Loading a damaged shared library kills the process (SIGBUS/SIGSEGV, no message): a cached build is checked
    against what its build recorded before it is imported, and rebuilt when it differs."""
    root, library = _copy_build(kernels, tmp_path)
    assert (
        _kernels_cli(root).returncode == 0
    )  # records the copy (no record yet: checked in a child process once)
    data = library.read_bytes()
    library.write_bytes(data[: len(data) // 3])
    done = _kernels_cli(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "damaged" in done.stderr and "rebuilding" in done.stderr
    assert f"fused CPU kernels ready in {root / cpu_kernels.build_name()}" in done.stdout
    assert library.stat().st_size > len(data) // 3
