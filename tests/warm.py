"""``python train.py ...`` and ``python -m ncalab.<tool> ...`` as a user runs them, in a fresh process each time,
without paying the imports each time.

Importing torch, Lightning, Hydra and ncalab takes ~7 s on a 2-core machine, most of a smoke run's time when
every command-line test starts a new interpreter. Here each command runs in a new process forked from a server
(``multiprocessing``'s forkserver) that has imported them once and done nothing else: the command gets its own
process, pid, working directory, environment, stdout/stderr, exit code and signals, as with ``subprocess``.

Only ``[sys.executable, script.py, ...]`` and ``[sys.executable, "-m", module, ...]`` run warm; anything else
(``-c``, other programs) goes to ``subprocess`` as it is. Differences from a new interpreter: modules imported by
the server are not re-imported (an environment variable read at import time by them keeps the server's value;
``OMP_NUM_THREADS`` is applied with ``torch.set_num_threads``; ``sys.path`` starts with the script's folder and
new ``PYTHONPATH`` entries, followed by the server's own, so they can add modules but not replace the server's),
and the process is a child of the server, which dies with the test process and takes its children with it (the
kernel's parent-death signal, as :func:`dies_with_the_tests` does for ``subprocess``).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from ncalab.runs.processes import parent_death_signal

# What the server imports once: the entry points' heavy dependencies and ncalab's command-line modules.
PRELOAD = [
    "torch",
    "lightning.pytorch",
    "hydra",
    "omegaconf",
    "ncalab.train",
    "ncalab.evaluate",
    "ncalab.compare",
    "ncalab.tools.bench",
]

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(PRELOAD)


def dies_with_the_tests() -> None:
    """``preexec_fn`` for a process a test starts (a long run, a server): on Linux the kernel kills it when the
    test process ends, so that a killed or interrupted test run leaves no training running behind it. (Here, not
    in conftest, so that a process can use it without importing torch.)"""
    parent_death_signal(signal.SIGKILL)


def warm_command(argv: list[str]) -> tuple[str, str] | None:
    """``("script", path)`` or ``("module", name)`` when ``argv`` can run warm, else None."""
    if len(argv) < 2 or argv[0] != sys.executable:
        return None
    if argv[1] == "-m" and len(argv) > 2:
        return "module", argv[2]
    if argv[1].endswith(".py"):
        return "script", argv[1]
    return None


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _main(kind: str, name: str, args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The command, in the forked process (what ``python <script> <args>`` / ``python -m <name>`` would do)."""
    from multiprocessing import forkserver

    dies_with_the_tests()
    # The server ends when the test process's end of its "alive" pipe closes; a copy of that end in every command
    # would keep it alive (and the commands with it) after the test process is gone.
    server = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
    server._forkserver_alive_fd = server._forkserver_address = server._forkserver_pid = None
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    # sys.path as Python starts it: the script's folder (or the working directory for -m) first, then PYTHONPATH
    # entries the server did not have (a test's plugin folder), then the server's own path.
    path = str(Path(cwd, name))
    sys.path.insert(0, cwd if kind == "module" else str(Path(path).parent))
    sys.path[1:1] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.argv = [name, *args]
    code = 0
    try:
        if kind == "module":
            # Run as __main__, as `python -m` does (the server's imported copy would run as itself).
            sys.modules.pop(name, None)
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # what the interpreter does at exit: wait for non-daemon threads, then atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:  # an uncaught Ctrl+C: end by the signal, as the interpreter does
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


class WarmProcess:
    """The ``subprocess.Popen`` surface the tests use, for a command run warm (stdout/stderr as text)."""

    def __init__(
        self, argv: list[str], command: tuple[str, str], cwd: str | Path, env: dict[str, str] | None
    ):
        kind, name = command
        self.args = argv
        self.returncode: int | None = None
        self._proc = None
        self._dir = tempfile.TemporaryDirectory(prefix="ncalab-warm-")
        self._out = os.path.join(self._dir.name, "stdout")
        self._err = os.path.join(self._dir.name, "stderr")
        env = dict(os.environ if env is None else env)
        self._proc = _CTX.Process(
            target=_main,
            args=(kind, name, argv[3 if kind == "module" else 2 :], str(cwd), env, self._out, self._err),
        )
        self._proc.start()
        self.pid = self._proc.pid
        # Back only once the process has its parent-death signal (it opens its output files after that), so that
        # a test process killed right after this call still takes the command with it.
        while not os.path.exists(self._err) and self._proc.exitcode is None:
            self._proc.join(0.005)

    def poll(self) -> int | None:
        if self.returncode is None and self._proc.exitcode is not None:
            self.returncode = self._proc.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode  # type: ignore[return-value]

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.read("stdout"), self.read("stderr")

    def read(self, stream: str) -> str:
        path = self._out if stream == "stdout" else self._err
        try:
            return Path(path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        if self._proc is not None and self._proc.pid is not None and self.poll() is None:
            self.kill()


def start(argv: list[str], cwd: str | Path, env: dict[str, str] | None = None):
    """``subprocess.Popen(argv, cwd=cwd, env=env, stdout=PIPE, stderr=PIPE, text=True)``, warm where it can be."""
    command = warm_command(argv)
    if command is None:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=dies_with_the_tests,
        )
    return WarmProcess(argv, command, cwd, env)


def run(
    argv: list[str],
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)``, warm where it
    can be."""
    proc = start(argv, cwd or os.getcwd(), env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
