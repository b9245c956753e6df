"""Stops keep the work and say so: Ctrl+C and SIGTERM save last.ckpt, record "interrupted" with the signal and
exit non-zero (128 + the signal); an end-of-run callback that fails comes after the final checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import warm
from conftest import ROOT

from ncalab.checkpoint import read_checkpoint
from ncalab.train import run


def start_long_run(run_dir: Path) -> warm.WarmProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return warm.start(
        [
            sys.executable,
            "train.py",
            "experiment=smoke",
            "trainer.max_steps=100000",  # far more than the test waits for
            "callbacks.checkpoint.every_n_train_steps=100000",  # no periodic save: only the stop saves
            "callbacks.media.every_n_steps=2",  # media/pool_step000004.png shows the run is at step 4
            "logger=csv",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        env=env,
    )


def wait_for(path: Path, proc: warm.WarmProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {path.name}: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_run_saves_records_and_exits_non_zero(tmp_path, sig, code):
    proc = start_long_run(tmp_path)
    try:
        wait_for(tmp_path / "media" / "pool_step000004.png", proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr[-2000:]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == sig.name, status
    assert status["exit_code"] == code
    assert sig.name in status["error"]
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")  # saved although no periodic save was due
    assert ckpt["global_step"] >= 4 and ckpt["global_step"] == status["step"]
    assert f"interrupted by {sig.name}" in stderr
    assert not (tmp_path / "evaluation.json").exists()  # no end-of-run evaluation on the way out
    # the saved state resumes
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]


def test_a_failing_end_of_run_callback_comes_after_the_final_checkpoint(smoke_cfg, tmp_path, monkeypatch):
    import ncalab.callbacks

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(ncalab.callbacks, "measure_nca", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        run(smoke_cfg("callbacks.checkpoint.every_n_train_steps=1000"))
    out = tmp_path / "run"
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 4
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "evaluation broke" in status["error"]


@pytest.mark.parametrize("hook, saved_step", [("on_train_batch_start", 4), ("on_train_batch_end", 3)])
def test_a_signal_in_process_stops_after_the_step_with_a_checkpoint(smoke_cfg, tmp_path, hook, saved_step):
    """The same through ``run()``: SIGTERM during step 3 (while it runs, or after the checkpoint callback's
    check at its end, where Lightning stops the run itself) ends the run after the step under way."""
    import lightning as L

    from ncalab.runs.status import RunInterrupted

    class Terminate(L.Callback):
        def __init__(self):
            self.sent = False

        def send(self, trainer):
            if trainer.global_step == 3 and not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    terminate = Terminate()
    setattr(terminate, hook, lambda trainer, *args: terminate.send(trainer))
    with pytest.raises(RunInterrupted) as err:
        run(smoke_cfg("trainer.max_steps=50", "callbacks.checkpoint.every_n_train_steps=1000"), [terminate])
    assert err.value.exit_code == 143 and err.value.step == saved_step
    out = tmp_path / "run"
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == saved_step
    status = json.loads((out / "status.json").read_text())
    assert (
        status["status"] == "interrupted" and status["signal"] == "SIGTERM" and status["step"] == saved_step
    )
    assert not (out / "evaluation.json").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers are put back


STARTERS = {
    # subprocess, as the tests that need a new interpreter start one
    "subprocess": "from warm import dies_with_the_tests\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
    " preexec_fn=dies_with_the_tests)\n",
    # forked from the warm server, as the tests of train.py and the tools start them (warm.py); a server that
    # preloads nothing: what it imports plays no part in its children's death, and importing costs seconds
    "warm": "import warm\n"
    "warm._CTX.set_forkserver_preload([])\n"
    "open('sleep.py', 'w').write('import time; time.sleep(120)')\n"
    "child = warm.start([sys.executable, 'sleep.py'], cwd='.')\n",
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
@pytest.mark.parametrize("how", sorted(STARTERS))
def test_a_process_a_test_starts_dies_with_the_test_process(tmp_path, how):
    """A killed test run (SIGTERM skips every ``finally``) must not leave a 100,000-step run training."""
    script = (
        "import subprocess, sys, time\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "if __name__ == '__main__':\n"
        + "".join(f"    {line}\n" for line in STARTERS[how].splitlines())
        + "    print(child.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    (tmp_path / "tester.py").write_text(script)
    tester = subprocess.Popen([sys.executable, "tester.py"], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        child = int(tester.stdout.readline())
        os.kill(child, 0)  # running
        tester.terminate()
        tester.wait(timeout=30)
        deadline = time.monotonic() + 15  # the warm server first finishes its own exit (a few seconds)
        while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists(), "the started process outlived the test process"
    finally:
        tester.kill()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_joblib_sweeps_workers_end_when_the_sweep_is_killed(tmp_path):
    # They kept training and writing checkpoints into the run folders after a `kill -9` of the sweep.
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    workers: list[int] = []
    proc = warm.start(
        [
            sys.executable,
            "train.py",
            "-m",
            "experiment=smoke",
            "trainer.max_steps=100000",
            "callbacks.media=null",  # no video writer (an ffmpeg process of its own) in flight at the kill
            "callbacks.checkpoint.every_n_train_steps=2",  # checkpoints/last.ckpt shows a job is training
            "logger=csv",
            "seed=0,1",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        for job in ("0", "1"):
            wait_for(sweep_dir / job / "checkpoints" / "last.ckpt", proc)
        workers += [
            p for p in _children(proc.pid) if "popen_loky" in (Path("/proc") / str(p) / "cmdline").read_text()
        ]
        assert len(workers) == 2, workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "sweep workers outlived the sweep"

        def files():
            return {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p.is_file()}

        written = files()
        time.sleep(1.0)
        assert files() == written  # nothing writes into the run folders any more (checkpoints stopped)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in workers + _children(proc.pid):
            if _alive(p):
                os.kill(p, signal.SIGKILL)
