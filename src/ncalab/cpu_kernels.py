"""The fused CPU kernels of the sparse step (``ncalab/csrc/sparse_step.cpp``): built once, loaded after.

The step on CPU (:class:`ncalab.fast_step.SparseStep`) spends about as long in the memory passes around its matrix
products (gathering the updated cells' rows, scattering the updates back, the alive masks, the same in backward) as
in the products; as ATen ops each pass is several grid walks. The four kernels of ``sparse_step.cpp`` do each in
one parallel loop and compute bit for bit what the ATen ops compute (``tests/unit/test_cpu_kernels.py``). They are C++,
built with torch's extension builder (``torch.utils.cpp_extension``: a C++ compiler and ``ninja``) the first time
they are asked for, ``make install`` builds them, and then loaded from the build folder
(``~/.cache/ncalab/kernels``, or ``$NCALAB_KERNELS_DIR``: the folder that holds the builds), keyed by the source, torch
and Python versions. A build records its library's SHA-256; a cached library that no longer matches (a copy cut
short, a full disk) is rebuilt rather than loaded (loading a damaged shared library kills the process with no
message), and one without a record (a build of an older ncalab) is loaded once in a child process first. A folder
that cannot be written (a shared, read-only install) is used as it is. Where they cannot be built (no compiler, or
one without OpenMP), the step says so once and uses the ATen ops: same values, slower.
``NCALAB_CPU_KERNELS=0`` turns them off.

``python -m ncalab.cpu_kernels`` builds them and says where, or why not.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from filelock import FileLock, Timeout

SOURCE = Path(__file__).with_name("csrc") / "sparse_step.cpp"
ENV = "NCALAB_CPU_KERNELS"
DIR_ENV = "NCALAB_KERNELS_DIR"
# -fopenmp: at::parallel_for runs on torch's OpenMP threads (without it, on one). No -march=native: a build folder
# may be shared by machines with different CPUs (a cluster's home).
CFLAGS = ["-O3", "-fopenmp"]

log = logging.getLogger(__name__)
_module: ModuleType | None = None
_tried = False
_why_not: str | None = None


def enabled() -> bool:
    """Whether the kernels may be used (``NCALAB_CPU_KERNELS`` is not 0)."""
    return os.environ.get(ENV, "1") != "0"


def build_name() -> str:
    """The extension's name: the source's, torch's and Python's versions in it, so that a change rebuilds."""
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(f"{torch.__version__} {sys.version_info[:2]} {' '.join(CFLAGS)}".encode())
    return f"ncalab_sparse_step_{h.hexdigest()[:12]}"


def build_dir() -> Path:
    """``$NCALAB_KERNELS_DIR/<build name>``, by default ``~/.cache/ncalab/kernels/<build name>``."""
    root = (
        os.environ.get(DIR_ENV)
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ncalab" / "kernels"
    )
    return Path(root) / build_name()


def _library(directory: Path, name: str) -> Path:
    # the file torch's builder writes (torch.utils.cpp_extension.LIB_EXT)
    return directory / f"{name}{'.pyd' if sys.platform == 'win32' else '.so'}"


def _import(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _write_record(library: Path) -> None:
    """Record the finished library's SHA-256 beside it (best effort: a read-only folder keeps no record)."""
    with contextlib.suppress(OSError):
        temp = _record(library).with_suffix(".tmp")
        temp.write_text(f"{_digest(library)} {library.stat().st_size}\n")
        os.replace(temp, _record(library))


def _recorded(library: Path) -> bool | None:
    """True when the library is what its build recorded, False when it differs, None when there is no record."""
    try:
        fields = _record(library).read_text().split()
    except OSError:
        return None
    try:
        return len(fields) == 2 and int(fields[1]) == library.stat().st_size and fields[0] == _digest(library)
    except (OSError, ValueError):
        return False


def _loads_in_child(library: Path, name: str) -> bool:
    """Whether the library imports in a fresh Python (a damaged one kills that process, not this one)."""
    code = (
        "import sys, torch, importlib.machinery as m, importlib.util as u\n"
        "l = m.ExtensionFileLoader(sys.argv[2], sys.argv[1])\n"
        "l.exec_module(u.module_from_spec(u.spec_from_file_location(sys.argv[2], sys.argv[1], loader=l)))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(library), name], env=env, capture_output=True, timeout=300
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


# Seconds to wait for another process's lock on the build folder before saying so.
LOCK_PATIENCE_S = 3.0


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[bool]:
    """Hold the build folder's lock; yields False (holding nothing) when the folder cannot be written."""
    try:
        lock = FileLock(str(directory / "ncalab.lock"), thread_local=False)
        try:
            lock.acquire(timeout=LOCK_PATIENCE_S)
        except Timeout:
            log.warning(
                "waiting for another process building or checking ncalab's CPU kernels in %s (its lock: %s)",
                directory,
                directory / "ncalab.lock",
            )
            lock.acquire()
    except PermissionError:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _build(directory: Path, name: str) -> ModuleType:
    # Importing it warns that no CUDA runtime is found: nothing of CUDA is built here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=name,
        sources=[str(SOURCE)],
        extra_cflags=CFLAGS,
        build_directory=str(directory),
        is_python_module=True,
        verbose=False,
    )


def load() -> ModuleType | None:
    """The kernels' module, or None: turned off, or they could not be built (then a warning says why, once).

    A finished build is imported straight from its folder, else it is built there first; both under a lock on the
    folder, so that processes starting together build it once and none imports a library being written."""
    global _module, _tried, _why_not
    if not enabled():
        return None
    if _tried:
        return _module
    name, directory = build_name(), build_dir()
    library = _library(directory, name)
    try:
        with contextlib.suppress(OSError):
            directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory) as writable:
            _module = _load_or_build(directory, name, library, writable)
    except Exception as e:  # no compiler or ninja, a failed build, an unloadable library: the ATen ops do it
        _why_not = f"{type(e).__name__}: {reason(str(e))}"
        warnings.warn(
            f"ncalab's fused CPU kernels could not be built or loaded ({_why_not}); the CPU step uses ATen ops "
            f"instead (same values, slower). `python -m ncalab.cpu_kernels` builds them (after deleting {directory} "
            f"if a build there was cut short); {ENV}=0 silences this.",
            RuntimeWarning,
            stacklevel=2,
        )
        _module = None
    _tried = True
    return _module


def _load_or_build(directory: Path, name: str, library: Path, writable: bool) -> ModuleType:
    if library.exists():
        recorded = _recorded(library)
        if recorded is None and _loads_in_child(library, name):
            if writable:
                _write_record(library)
            return _import(library, name)
        if recorded:
            return _import(library, name)
        if not writable:
            raise RuntimeError(
                f"{library} is damaged (not what its build recorded) and its folder is read-only"
            )
        log.warning(
            "the cached kernel library %s is damaged (%s); rebuilding it",
            library,
            "not what its build recorded" if recorded is False else "it does not load",
        )
        for stale in (library, _record(library)):
            stale.unlink(missing_ok=True)
    elif not writable:
        raise RuntimeError(f"no build in {directory}, and the folder is read-only")
    log.warning("building ncalab's fused CPU kernels once (about 30 s) in %s", directory)
    module = _build(directory, name)
    _write_record(library)
    return module


def reason(message: str) -> str:
    """The telling line of a failed build's output (the compiler's error, a missing program), not the command."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    telling = [
        line for line in lines if re.search(r"error:|not found|no such file|fatal|required", line, re.I)
    ]
    line = (telling or lines or ["unknown error"])[0]
    return line if len(line) <= 300 else line[:297] + "..."


def why_not() -> str | None:
    """Why the last :func:`load` gave None after trying (None when it did not fail)."""
    return _why_not


def main() -> int:
    if not enabled():
        print(f"{ENV}=0: the fused CPU kernels are turned off")
        return 0
    start = time.perf_counter()
    module = load()
    if module is None:
        print(f"the fused CPU kernels were not built ({_why_not}); the CPU step uses ATen ops (slower)")
        return 1
    print(f"fused CPU kernels ready in {build_dir()} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
