"""`trainer=ddp`: one run on two CPU processes (gloo): pool shards, averaged gradients, one set of artefacts,
checkpoints with the whole pool, resume with two processes and with one; the processes end with the run's, and
stop with a checkpoint when only the run's process gets the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import warm
from conftest import ROOT, make_cfg
from test_ddp import BATCH, POOL

from ncalab.checkpoint import read_checkpoint
from ncalab.nca import seed_state
from ncalab.train import build_module, run

# Where the DDP runs' processes find this module (its probes are named as callbacks) and what it imports.
TEST_PATHS = (ROOT / "tests", ROOT / "tests" / "unit", ROOT / "tests" / "scenarios")


def ddp_cfg(out: Path, *overrides: str):
    return make_cfg(
        out, "experiment=smoke", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", *overrides
    )


def pool_state(ckpt: dict) -> dict:
    return ckpt["NCADataModule"]


class RankProbe(L.Callback):
    """Records, in every process, what that process saw; written to ``<dir>/rank<r>.pt`` at the end of training
    (with ddp_spawn the callbacks run in the spawned processes, so results come back through files).

    Per step: the sampled pool indices, this rank's own gradient (taken before DDP's all-reduce), the gradient
    after backward (all-reduced by DDP) and the parameters after the optimiser step. At the start: the global
    step, this rank's pool shard and generator state.
    """

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = Path(directory)

    def on_train_start(self, trainer, pl_module):
        dm = trainer.datamodule
        self.record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "start_step": trainer.global_step,
            "start_shard": dm.pool.states.clone(),
            "start_generator": dm.generator.get_state().clone(),
            "indices": [],
            "local_grads": [],
            "synced_grads": [],
            "params": [],
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.record["indices"].append(batch.clone())

    def on_before_backward(self, trainer, pl_module, loss):
        params = [p for p in pl_module.parameters() if p.requires_grad]
        # Not accumulated into .grad and no DDP hook fires: this process's gradient alone.
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        self.record["local_grads"].append(torch.cat([g.flatten() for g in grads]).clone())

    def on_after_backward(self, trainer, pl_module):
        grads = [p.grad for p in pl_module.parameters() if p.requires_grad]
        self.record["synced_grads"].append(torch.cat([g.flatten() for g in grads]).clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = [p.detach().flatten() for p in pl_module.parameters() if p.requires_grad]
        self.record["params"].append(torch.cat(params).clone())

    def on_train_end(self, trainer, pl_module):
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.directory / f"rank{trainer.global_rank}.pt")


def read_probes(directory: Path, n: int) -> list[dict]:
    return [torch.load(directory / f"rank{r}.pt", weights_only=True) for r in range(n)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One 4-step run on two processes (checkpoints at steps 2 and 4)."""
    base = tmp_path_factory.mktemp("ddp")
    out, probes = base / "run", base / "probes"
    summary = run(ddp_cfg(out, "schedule.milestones=[2]"), [RankProbe(probes)])
    return SimpleNamespace(out=out, ckpt=out / "checkpoints" / "last.ckpt", summary=summary, probes=probes)


def test_two_processes_train_different_shards_with_averaged_gradients(ddp_run):
    rank0, rank1 = read_probes(ddp_run.probes, 2)
    assert (rank0["rank"], rank0["world_size"], rank1["rank"], rank1["world_size"]) == (0, 2, 1, 2)
    # each process starts from its own half of the pool of seeds and draws its own batches
    assert rank0["start_shard"].shape[0] == rank1["start_shard"].shape[0] == POOL // 2
    assert not torch.equal(rank0["start_generator"], rank1["start_generator"])
    assert len(rank0["indices"]) == len(rank1["indices"]) == 4
    assert any(not torch.equal(a, b) for a, b in zip(rank0["indices"], rank1["indices"], strict=True))
    assert all(len(i) == BATCH and int(i.max()) < POOL // 2 for i in rank0["indices"] + rank1["indices"])

    for step in range(4):
        local0, local1 = rank0["local_grads"][step], rank1["local_grads"][step]
        synced0, synced1 = rank0["synced_grads"][step], rank1["synced_grads"][step]
        assert not torch.allclose(local0, local1), step  # different batches, different gradients
        torch.testing.assert_close(synced0, synced1, rtol=0, atol=0)  # the same gradient on both ranks
        torch.testing.assert_close(synced0, (local0 + local1) / 2, rtol=1e-5, atol=1e-7)  # ... their mean
        assert torch.equal(rank0["params"][step], rank1["params"][step]), step  # so the same weights

    # rank 0 wrote the checkpoint: its weights are those after the last step (on both ranks)
    saved = read_checkpoint(ddp_run.ckpt)["state_dict"]
    names = [name for name, p in build_module(ddp_cfg(ddp_run.out)).named_parameters() if p.requires_grad]
    assert torch.equal(torch.cat([saved[n].flatten() for n in names]), rank0["params"][-1])


def test_checkpoint_holds_the_pool_of_every_process(ddp_run):
    saved = read_checkpoint(ddp_run.ckpt)  # torch.load(weights_only=True)
    assert saved["global_step"] == 4
    state = pool_state(saved)
    pool = state["pool"]
    assert pool.shape == (POOL, 16, 20, 20)
    assert state["world_size"] == 2 and state["generators"].shape[0] == 2
    assert torch.equal(state["generator"], state["generators"][0])
    assert not torch.equal(state["generators"][0], state["generators"][1])
    shard0, shard1 = pool[: POOL // 2], pool[POOL // 2 :]
    seed = seed_state(1, 16, 20, 20)[0]
    for shard in (shard0, shard1):  # both processes wrote rollouts back into their shard
        assert sum(not torch.equal(s, seed) for s in shard) >= BATCH
    assert not torch.equal(shard0, shard1)


def test_only_one_set_of_artefacts_is_written(ddp_run):
    out = ddp_run.out
    assert sorted(p.relative_to(out) for p in out.rglob("*.ckpt")) == [Path("checkpoints/last.ckpt")]
    assert [p.relative_to(out) for p in out.rglob("final.png")] == [Path("final.png")]
    assert [p.relative_to(out) for p in out.rglob("summary.json")] == [Path("summary.json")]
    assert len(list((out / "csv").glob("version_*"))) == 1
    assert not any("rank" in p.name for p in out.rglob("*"))
    assert ddp_run.summary["steps"] == 4 and ddp_run.summary["perception"] == "sobel3"


class StartProbe(L.Callback):
    """In-process record of the step, pool and generator at the start of training (one process)."""

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.pool = trainer.datamodule.pool.states.clone()
        self.generator = trainer.datamodule.generator.get_state().clone()
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_resume_with_two_processes_continues_with_every_shard(ddp_run, tmp_path):
    saved = pool_state(read_checkpoint(ddp_run.ckpt))
    out, probes = tmp_path / "resumed", tmp_path / "probes"
    run(
        ddp_cfg(out, f"ckpt_path={ddp_run.ckpt}", "trainer.max_steps=6", "schedule.milestones=[2]"),
        [RankProbe(probes)],
    )
    rank0, rank1 = read_probes(probes, 2)
    assert rank0["start_step"] == rank1["start_step"] == 4
    assert torch.equal(torch.cat([rank0["start_shard"], rank1["start_shard"]]), saved["pool"])
    assert torch.equal(rank0["start_generator"], saved["generators"][0])
    assert torch.equal(rank1["start_generator"], saved["generators"][1])
    assert torch.equal(rank0["params"][-1], rank1["params"][-1])
    resumed = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 6 and pool_state(resumed)["pool"].shape == (POOL, 16, 20, 20)


def test_resume_a_two_process_checkpoint_with_one_process(ddp_run, tmp_path):
    saved = pool_state(read_checkpoint(ddp_run.ckpt))
    probe = StartProbe()
    out = tmp_path / "single"
    cfg = make_cfg(
        out, "experiment=smoke", f"ckpt_path={ddp_run.ckpt}", "trainer.max_steps=6", "callbacks.media=null"
    )
    run(cfg, [probe])
    assert probe.step == 4
    assert torch.equal(probe.pool, saved["pool"])  # the whole pool, both shards
    assert torch.equal(probe.generator, saved["generators"][0])
    resumed = pool_state(read_checkpoint(out / "checkpoints" / "last.ckpt"))
    assert resumed["pool"].shape == (POOL, 16, 20, 20) and resumed["world_size"] == 1


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that nobody reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    state = {}
    for path in directory.rglob("*"):
        try:
            if path.is_file():
                st = path.stat()
                state[str(path.relative_to(directory))] = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:  # renamed away meanwhile
            continue
    return state


class BusyProbe(L.Callback):
    """In every DDP process, at the first training batch: write this process's pid to ``<dir>/rank<r>.pid``,
    then stay busy for ``seconds`` the way a long convolution is busy for Python's signal handling: signals that
    arrive meanwhile are handled once, afterwards (here SIGINT and SIGTERM are held for that time)."""

    def __init__(self, directory: str, seconds: float):
        super().__init__()
        self.directory, self.seconds, self.done = Path(directory), seconds, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.done:
            return
        self.done = True
        temp = self.directory / f".rank{trainer.global_rank}.tmp"
        temp.write_text(str(os.getpid()))
        temp.replace(self.directory / f"rank{trainer.global_rank}.pid")
        held = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            time.sleep(self.seconds)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_processes_die_with_a_killed_run_and_write_nothing_more(tmp_path):
    busy = 5.0
    out, probes = tmp_path / "run", tmp_path / "probes"
    probes.mkdir()
    cmd = [
        sys.executable, "train.py", "experiment=smoke", "trainer=ddp", "trainer.devices=2",
        "trainer.accelerator=cpu", "trainer.max_steps=50", "threads=1", f"hydra.run.dir={out}",
        "callbacks.media=null", "callbacks.evaluation=null",
        "+callbacks.busy._target_=test_ddp_runs.BusyProbe", f"+callbacks.busy.directory={probes}",
        f"+callbacks.busy.seconds={busy}",
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [*map(str, TEST_PATHS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    parent = warm.start(cmd, cwd=ROOT, env=env)  # the run's process, as `python train.py ...` starts it
    workers: list[int] = []
    try:
        pid_files = [probes / f"rank{r}.pid" for r in range(2)]
        deadline = time.monotonic() + 240
        while (
            not all(f.exists() for f in pid_files) and parent.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert parent.poll() is None, parent.read("stderr")[-3000:]
        assert all(f.exists() for f in pid_files), "the DDP processes did not reach their first step"
        workers = [int(f.read_text()) for f in pid_files]
        assert all(_running(pid) for pid in workers) and parent.pid not in workers

        # Both processes are in their first step; the run's process is killed without a word (SIGKILL, OOM).
        before = _files(out)
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.monotonic() + 2
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [pid for pid in workers if _running(pid)]
        assert not survivors, f"DDP processes {survivors} outlived the killed run process"
        # ... so nothing in the run directory changes any more (a second later: nothing is left to write).
        time.sleep(1.0)
        after = _files(out)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        assert not changed, f"written after the run process was killed: {changed}"
        assert (out / "config.yaml").exists() and (out / "status.json").exists()
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=30)


class StepProbe(L.Callback):
    """In every DDP process, at the end of step ``step``: write this process's pid to ``<dir>/rank<r>.pid``."""

    def __init__(self, directory: str, step: int):
        super().__init__()
        self.directory, self.step, self.done = Path(directory), step, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.done or trainer.global_step < self.step:
            return
        self.done = True
        temp = self.directory / f".rank{trainer.global_rank}.tmp"
        temp.write_text(str(os.getpid()))
        temp.replace(self.directory / f"rank{trainer.global_rank}.pid")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_signal_to_the_run_process_alone_stops_every_process_with_a_checkpoint(tmp_path):
    """What a scheduler does: the signal goes to the run's pid only, not to the processes ddp_spawn started. They
    stop as if it had come to them: last.ckpt at the end of the step under way, `interrupted`, 128 + the signal.

    SIGTERM only (what a scheduler sends; in DDP it also meets Lightning's own SIGTERM handler): the shared record
    carries any signal's number the same way, and SIGINT's stop of a run is tested in test_stops.py."""
    sig, code = signal.SIGTERM, 143
    out, probes = tmp_path / "run", tmp_path / "probes"
    probes.mkdir()
    cmd = [
        sys.executable, "train.py", "experiment=smoke", "trainer=ddp", "trainer.devices=2",
        "trainer.accelerator=cpu", "trainer.max_steps=100000", "callbacks.checkpoint.every_n_train_steps=100000",
        "threads=1", f"hydra.run.dir={out}", "callbacks.media=null", "logger=csv",
        "+callbacks.probe._target_=test_ddp_runs.StepProbe", f"+callbacks.probe.directory={probes}",
        "+callbacks.probe.step=3",
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [*map(str, TEST_PATHS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    parent = warm.start(cmd, cwd=ROOT, env=env)  # the run's process, as `python train.py ...` starts it
    workers: list[int] = []
    try:
        pid_files = [probes / f"rank{r}.pid" for r in range(2)]
        deadline = time.monotonic() + 240
        while (
            not all(f.exists() for f in pid_files) and parent.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert parent.poll() is None, parent.read("stderr")[-3000:]
        assert all(f.exists() for f in pid_files), "the DDP processes did not reach step 3"
        workers = [int(f.read_text()) for f in pid_files]
        assert parent.pid not in workers

        parent.send_signal(sig)  # the run's process only
        try:
            returncode = parent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            returncode = None
        assert returncode is not None, f"still running 60 s after {sig.name}: {parent.read('stderr')[-3000:]}"
        assert returncode == code, parent.read("stderr")[-3000:]
        assert not [pid for pid in workers if _running(pid)]
        stderr = parent.read("stderr")
        # A clean stop: one line that says so, not a traceback from each process.
        assert "Traceback" not in stderr and f"interrupted by {sig.name}" in stderr, stderr[-3000:]
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=30)

    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == sig.name, status
    assert status["exit_code"] == code and f"interrupted by {sig.name}" in status["error"]
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")  # saved although no periodic save was due
    assert ckpt["global_step"] >= 3 and ckpt["global_step"] == status["step"]
    assert pool_state(ckpt)["pool"].shape == (POOL, 16, 20, 20)  # the whole pool, both shards
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.ckpt"]
    assert not (out / "evaluation.json").exists()  # no end-of-run evaluation on the way out
