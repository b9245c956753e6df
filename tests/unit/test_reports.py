"""A failing job still means a report: the sweep writes report.html although Hydra re-raises the failure; a run
killed without a chance to record its end (SIGKILL) shows as unfinished, not running forever; and a damaged file
of one run marks that run instead of aborting the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import ncalab.runs.status
from ncalab.compare import collect_runs, main
from ncalab.runs.dirs import this_host
from ncalab.runs.status import RunStatus


def ago(**delta) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).isoformat(timespec="seconds")


def job(root: Path, name: str, state: dict) -> Path:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(f"- seed={name}\n")
    (d / "status.json").write_text(json.dumps({"overrides": [f"seed={name}"], **state}))
    return d


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_runs_that_died_without_a_word_show_as_unfinished(tmp_path):
    host = this_host()
    job(tmp_path, "0", {"status": "running", "pid": os.getpid(), "host": host, "heartbeat": ago(seconds=5)})
    job(tmp_path, "1", {"status": "running", "pid": dead_pid(), "host": host, "heartbeat": ago(seconds=5)})
    job(tmp_path, "2", {"status": "running", "pid": 1234, "host": "another-node", "heartbeat": ago(hours=2)})
    job(
        tmp_path,
        "3",
        {"status": "running", "pid": 1234, "host": "another-node", "heartbeat": ago(seconds=30)},
    )
    runs = {r.job: r for r in collect_runs(tmp_path)}
    assert runs["0"].status == "running" and runs["0"].error is None  # alive and beating
    assert runs["1"].status == "unfinished" and "killed" in runs["1"].error
    assert runs["2"].status == "unfinished" and "no heartbeat" in runs["2"].error
    assert runs["3"].status == "running"  # elsewhere, and recently seen


def test_status_json_says_where_the_run_lives_and_beats(tmp_path, monkeypatch):
    ticks = iter(range(10**6))
    monkeypatch.setattr(ncalab.runs.status, "_now", lambda: f"tick-{next(ticks)}")
    status = RunStatus(tmp_path, ["seed=1"], heartbeat_s=0.01)
    first = json.loads((tmp_path / "status.json").read_text())
    assert first["status"] == "running" and first["pid"] == os.getpid() and first["host"] == this_host()
    beat = threading.Event()
    for _ in range(500):
        if json.loads((tmp_path / "status.json").read_text())["heartbeat"] != first["heartbeat"]:
            beat.set()
            break
        beat.wait(0.01)
    assert beat.is_set(), "the heartbeat was never refreshed"
    status.finished()
    final = json.loads((tmp_path / "status.json").read_text())
    assert final["status"] == "finished"
    assert not any(t.name == "ncalab-status-heartbeat" for t in threading.enumerate())
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary file left behind


def test_a_damaged_file_marks_its_run_not_the_report(tmp_path, capsys):
    header = "epoch,step,train/loss\n"
    good = job(tmp_path, "0", {"status": "finished"})
    (good / "summary.json").write_text(json.dumps({"train_loss": 0.5, "eval_loss": 0.25}))
    latin = job(tmp_path, "1", {"status": "finished"})
    (latin / "csv" / "version_0").mkdir(parents=True)
    (latin / "csv" / "version_0" / "metrics.csv").write_bytes(
        (header + "0,1,0.5\n0,2,caf\xe9\n").encode("latin-1")
    )
    nul = job(tmp_path, "2", {"status": "finished"})
    (nul / "csv" / "version_0").mkdir(parents=True)
    (nul / "csv" / "version_0" / "metrics.csv").write_bytes(header.encode() + b"0,1,\x00\x00\n")
    shapes = job(tmp_path, "3", {"status": "finished"})
    (shapes / "evaluation.json").write_text(
        json.dumps({"ssim": "high", "long_run": [1, 2], "regeneration": 3})
    )
    keys = job(tmp_path, "4", {"status": "finished"})
    (keys / "evaluation.json").write_text(json.dumps({"long_run": {"loss": {"soon": 0.1}}}))
    broken = job(tmp_path, "5", {"status": "finished"})
    (broken / "evaluation.json").write_bytes(b"\xff\xfe{not json")
    (broken / ".hydra" / "overrides.yaml").write_bytes(b"- seed=\xff\n")

    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "report.html").is_file()
    runs = {r.job: r for r in collect_runs(tmp_path)}
    assert runs["0"].error is None and runs["0"].metric("eval_loss") == 0.25
    assert "metrics.csv unreadable" in runs["1"].error and "UnicodeDecodeError" in runs["1"].error
    assert runs["2"].status == "finished"  # NUL bytes: csv.Error before Python 3.11, blank cells since
    assert "evaluation.json is malformed" in runs["3"].error
    assert "evaluation.json is malformed" in runs["4"].error
    assert "evaluation.json unreadable" in runs["5"].error
    for name in ("1", "3", "4", "5"):
        assert f"job {name} finished:" in out
