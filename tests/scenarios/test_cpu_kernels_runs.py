"""The fused CPU kernels of the sparse step (``ncalab/csrc/sparse_step.cpp``, loaded by ``ncalab.cpu_kernels``)
compute bit for bit what the ATen ops they replace compute: the same rollouts and gradients, for every perception,
precision and start state; without a build the step warns once and uses the ATen ops."""

from __future__ import annotations

import subprocess
import sys

import pytest
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


def test_a_read_only_prebuilt_folder_is_used(kernels, tmp_path, monkeypatch):
    """A shared install whose folder cannot be written (its lock cannot be created) loads its recorded build."""
    root, _ = _copy_build(kernels, tmp_path)
    assert _kernels_cli(root).returncode == 0  # records it

    class ReadOnly:
        def __init__(self, *a, **k):
            raise PermissionError(13, "Permission denied", a[0])

    monkeypatch.setenv(cpu_kernels.DIR_ENV, str(root))
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "FileLock", ReadOnly)
    monkeypatch.setattr(cpu_kernels, "_build", lambda *a: pytest.fail("built again"))
    assert cpu_kernels.load() is not None


def test_a_process_waiting_for_anothers_build_says_so(kernels, tmp_path, monkeypatch, caplog):
    root, _ = _copy_build(kernels, tmp_path)
    monkeypatch.setenv(cpu_kernels.DIR_ENV, str(root))
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "LOCK_PATIENCE_S", 0.2)
    lock = root / cpu_kernels.build_name() / "ncalab.lock"
    holder = subprocess.Popen(  # another process holds the folder's lock for a while
        [
            sys.executable,
            "-c",
            f"import time, filelock; l = filelock.FileLock({str(lock)!r}); l.acquire(); "
            "print('held', flush=True); time.sleep(1.5)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with caplog.at_level("WARNING", logger="ncalab.cpu_kernels"):
        assert cpu_kernels.load() is not None
    holder.wait(timeout=30)
    assert any("waiting for another process" in r.getMessage() for r in caplog.records)
