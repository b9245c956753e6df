"""A failing job still means a report: the sweep writes report.html although Hydra re-raises the failure; a run
killed without a chance to record its end (SIGKILL) shows as unfinished, not running forever; and a damaged file
of one run marks that run instead of aborting the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import warm
from conftest import ROOT

from ncalab.compare import read_run


def sweep(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return warm.run([sys.executable, "train.py", "-m", *args], cwd=ROOT, env=env, timeout=timeout)


def test_a_sweep_with_failed_jobs_still_writes_its_report(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        "experiment=smoke", "data.target=/no/such/a.png,/no/such/b.png", f"hydra.sweep.dir={sweep_dir}"
    )
    assert result.returncode != 0  # the sweep still says that it failed ...
    report = sweep_dir / "report.html"
    assert report.is_file(), result.stderr[-2000:]  # ... and writes the report the README promises
    html = report.read_text()
    assert "/no/such/a.png" in html and "/no/such/b.png" in html and "failed" in html
    assert f"wrote {report}" in result.stdout


def test_a_sigkilled_run_is_not_running_forever(tmp_path):
    from test_stops import start_long_run, wait_for

    proc = start_long_run(tmp_path)
    try:
        wait_for(tmp_path / "media" / "pool_step000004.png", proc)
        assert read_run(tmp_path).status == "running"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "running"  # it had no say
    record = read_run(tmp_path)
    assert record.status == "unfinished" and f"process {proc.pid}" in record.error
