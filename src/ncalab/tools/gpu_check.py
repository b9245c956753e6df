"""One command for a machine with a GPU: ``python -m ncalab.tools.gpu_check --out DIR`` (``make gpu-check``).

On CUDA (under 9 minutes on one GPU, by a time budget it checks before each part):

1. the training-step bench at 128x128, batch 8, 96 steps (``ncalab.tools.bench``'s model, start state and FLOP count),
   fp32 and bf16, without and with ``torch.compile`` of the NCA step: ms per iteration, peak memory;
2. the source's five experiments (``experiment=source source=<perception>``) for a fixed short budget each
   (``--steps`` training steps, at most ``--run-seconds`` of training), each with its end-of-run evaluation:
   ms per iteration, peak memory, the loss curve, final train loss, PSNR, steps held, cuts regrown.

Everything lands in ``DIR``: ``summary.json`` (all numbers, loss curves included), ``summary.md`` (the same as
tables) and ``runs/<experiment>/`` (each run's usual files). Without CUDA, or with ``--tiny``, it runs the same
path at toy size on the CPU in well under a minute (a tiny grid, a few steps, ``torch.compile`` with the ``eager``
backend), so that the command is tested where no GPU is; ``--full`` forces the full sizes on a CPU (slow).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ncalab.compare import read_loss_curve
from ncalab.tools import bench

PRECISIONS = ("fp32", "bf16")
# Room kept for one compiled bench case (its warm-up compiles the step: tens of seconds on a GPU).
COMPILED_CASE_S = 60.0
# The repository's Hydra configs (an editable install from a checkout: src/ncalab/ -> conf/).
DEFAULT_CONF = bench.DEFAULT_CONF
# The source's experiments: the files of conf/source/ (python train.py experiment=source source=<name>).
SOURCE_EXPERIMENTS = tuple(sorted(p.stem for p in (DEFAULT_CONF / "source").glob("*.yaml")))
# Toy sizes (the smoke experiment's) for --tiny: every part of the path, in seconds on a CPU.
TINY_RUN_OVERRIDES = (
    "data.target_size=12",
    "data.padding=4",
    "data.pool_size=16",
    "data.batch_size=4",
    "data.damage_share=0.25",
    "model.hidden=32",
    "rollout.min_steps=16",
    "rollout.max_steps=24",
    "callbacks.evaluation.rollouts=2",
    "callbacks.evaluation.long_run_steps=[16,32]",
    "callbacks.evaluation.grow_steps=16",
    "callbacks.evaluation.regrow_steps=8",
)


class GpuCheckError(Exception):
    """Bad input: one line, exit 2."""


@dataclass
class Settings:
    device: str
    tiny: bool
    bench_size: int
    bench_batch: int
    bench_steps: int
    bench_repeats: int
    bench_perceptions: list[str]
    compile_backend: str
    steps: int
    run_seconds: float
    budget_s: float
    experiments: list[str] = field(default_factory=lambda: list(SOURCE_EXPERIMENTS))


class Budget:
    """Seconds left of the whole check; a part that would not fit is skipped and says so."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def left(self) -> float:
        return self.seconds - self.elapsed

    def allows(self, needed: float) -> bool:
        return self.left >= needed


# --------------------------------------------------------------------------------------------- bench


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> tuple[float, str]:
    """(GB, what it measures): CUDA's peak allocation since the last reset, or the process's peak RSS on CPU
    (the whole process so far: it only grows)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30, "cuda_max_allocated"
    return bench.peak_memory_gb("cpu"), "process_peak_rss"


def bench_case(
    perception: str, precision: str, compiled: bool, s: Settings, backprop_steps: int | None
) -> dict[str, Any]:
    """One training iteration (rollout, backward, Adam step) of ncalab's NCA, timed ``s.bench_repeats`` times
    after a warm-up (which, compiled, includes the compilation)."""
    spec = bench.Spec(
        perception=perception,
        size=s.bench_size,
        batch=s.bench_batch,
        steps=s.bench_steps,
        impl="ncalab",
        precision=precision,
        backprop_steps=backprop_steps,
        device=s.device,
        compile_backend=s.compile_backend if compiled else None,
    )
    iteration = bench.build(spec)  # the bench's model, start state, target and training iteration
    _reset_peak(s.device)
    t = time.perf_counter()
    iteration()  # warm-up: the compilation, when compiled
    _sync(s.device)
    warmup_s = time.perf_counter() - t
    times = []
    for _ in range(s.bench_repeats):
        t = time.perf_counter()
        iteration()
        _sync(s.device)
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    peak, peak_kind = peak_memory(s.device)
    cells_steps = spec.batch * spec.size * spec.size * spec.steps
    return {
        "perception": perception,
        "size": spec.size,
        "batch": spec.batch,
        "steps": spec.steps,
        "backprop_steps": backprop_steps,
        "precision": precision,
        "compile": compiled,
        "compile_backend": s.compile_backend if compiled else None,
        "status": "finished",
        "ms_per_iter": round(sec * 1000, 3),
        "warmup_s": round(warmup_s, 3),
        "cells_steps_per_s": round(cells_steps / sec, 1),
        "gflops": round(bench.flops_per_iter(spec) / sec / 1e9, 3),
        "peak_mem_gb": round(peak, 3),
        "peak_mem_kind": peak_kind,
        "repeats": len(times),
    }


def run_bench(s: Settings, budget: Budget, compiled: bool) -> list[dict[str, Any]]:
    rows = []
    needed = COMPILED_CASE_S if compiled else 20.0
    if s.tiny:
        needed = 5.0
    for perception in s.bench_perceptions:
        backprop_steps = bench.PERCEPTIONS[perception][1]
        for precision in PRECISIONS:
            head = {"perception": perception, "precision": precision, "compile": compiled}
            if not budget.allows(needed):
                rows.append({**head, "status": "skipped", "error": f"time budget: {budget.left:.0f} s left"})
                continue
            try:
                rows.append(bench_case(perception, precision, compiled, s, backprop_steps))
            except Exception as exc:  # noqa: BLE001 - one failed case is a result, the others still run
                rows.append({**head, "status": "failed", "error": _one_line(exc)})
            print(_bench_line(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------------------------- experiments


def run_overrides(experiment: str, run_dir: Path, s: Settings, max_seconds: float) -> list[str]:
    overrides = [
        "experiment=source",
        f"source={experiment}",
        f"output_dir={run_dir}",
        "logger=csv",
        "trainer.enable_model_summary=false",
        "+trainer.enable_progress_bar=false",
        "callbacks.media=null",  # videos cost time and show nothing a loss curve does not here
        f"trainer.max_steps={s.steps}",
        # Lightning's DD:HH:MM:SS (seconds may exceed 59); training stops there, the evaluation still runs
        f"+trainer.max_time='00:00:00:{max(1, int(max_seconds))}'",
    ]
    if s.tiny:
        overrides += [*TINY_RUN_OVERRIDES, "trainer.accelerator=cpu"]
    return overrides


def run_experiment(
    experiment: str, run_dir: Path, s: Settings, conf: Path, max_seconds: float
) -> dict[str, Any]:
    """Train one source experiment for the short budget in this process; its numbers and loss curve."""
    from hydra import compose, initialize_config_dir

    from ncalab.train import run

    overrides = run_overrides(experiment, run_dir, s, max_seconds)
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose(config_name="train", overrides=overrides)
    _reset_peak(s.device)
    t = time.perf_counter()
    summary = run(cfg)
    wall = time.perf_counter() - t
    peak, peak_kind = peak_memory(s.device)
    curve = read_loss_curve(run_dir)
    step_times = [v for _, v in read_loss_curve(run_dir, column="train/step_time_s")]
    # The first step carries the start-up (allocation, cuDNN choices): left out of the typical step.
    typical = step_times[1:] or step_times
    return {
        "experiment": f"source_{experiment}",
        "perception": summary.get("perception", experiment),
        "status": "finished",
        "overrides": overrides,
        "steps": summary.get("steps"),
        "rollout": [cfg.rollout.min_steps, cfg.rollout.max_steps, cfg.rollout.backprop_steps],
        "grid": summary.get("grid"),
        "ms_per_iter": round(statistics.median(typical) * 1000, 3) if typical else None,
        "peak_mem_gb": round(peak, 3),
        "peak_mem_kind": peak_kind,
        "train_loss": summary.get("train_loss"),
        "eval_loss": summary.get("eval_loss"),
        "psnr": summary.get("psnr"),
        "ssim": summary.get("ssim"),
        "holds_steps": summary.get("holds_steps"),
        "grown": summary.get("grown"),
        "regrown": summary.get("regrown"),
        "divergences": summary.get("divergences"),
        "wall_time_s": round(wall, 2),
        "run_dir": str(run_dir),
        "loss_curve": [[step, loss] for step, loss in curve],
    }


def run_experiments(
    s: Settings, budget: Budget, out: Path, conf: Path, reserve: float
) -> list[dict[str, Any]]:
    rows = []
    setup = 5.0 if s.tiny else 25.0  # building, evaluation and start-up around the training time
    for experiment in s.experiments:
        head = {"experiment": f"source_{experiment}", "perception": experiment}
        left = budget.left - reserve
        if left < setup + min(s.run_seconds, 10.0):
            rows.append({**head, "status": "skipped", "error": f"time budget: {budget.left:.0f} s left"})
            continue
        try:
            rows.append(
                run_experiment(
                    experiment, out / "runs" / head["experiment"], s, conf, min(s.run_seconds, left - setup)
                )
            )
        except BaseException as exc:  # noqa: BLE001 - a failed run is a result; Ctrl+C still stops the check
            if isinstance(exc, KeyboardInterrupt):
                raise
            rows.append({**head, "status": "failed", "error": _one_line(exc)})
            traceback.print_exc()
        print(_run_line(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------------------------- reporting


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _bench_line(r: dict[str, Any]) -> str:
    what = f"bench {r['perception']} {r['precision']} {'compiled' if r['compile'] else 'eager'}"
    if r["status"] != "finished":
        return f"{what}: {r['status']} ({r.get('error')})"
    return f"{what}: {r['ms_per_iter']:.1f} ms/iter, peak {r['peak_mem_gb']:.2f} GB, warm-up {r['warmup_s']:.1f} s"


def _run_line(r: dict[str, Any]) -> str:
    if r["status"] != "finished":
        return f"{r['experiment']}: {r['status']} ({r.get('error')})"
    return (
        f"{r['experiment']}: {r['steps']} steps, {_fmt(r['ms_per_iter'])} ms/iter, train loss "
        f"{_fmt(r['train_loss'])}, PSNR {_fmt(r['psnr'])}, peak {_fmt(r['peak_mem_gb'])} GB"
    )


def curve_points(curve: list[list[float]], n: int = 5) -> list[tuple[int, float]]:
    """``n`` points of a loss curve, evenly spaced by position, first and last included."""
    if not curve:
        return []
    idx = sorted({round(i * (len(curve) - 1) / (n - 1)) for i in range(n)}) if len(curve) > 1 else [0]
    return [(int(curve[i][0]), float(curve[i][1])) for i in idx]


def render_markdown(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    lines = [
        "# ncalab GPU check",
        "",
        f"{summary['device_name']} ({summary['device']}), torch {summary['torch']}, "
        f"mode {summary['mode']}, {summary['wall_time_s']:.0f} s in all (budget {s['budget_s']:.0f} s), "
        f"{summary['finished_at']}.",
        "",
        f"## Training-step bench: {s['bench_size']}x{s['bench_size']}, batch {s['bench_batch']}, "
        f"{s['bench_steps']} steps",
        "",
        "| perception | precision | compile | ms/iter | warm-up s | cell-steps/s | GFLOP/s | peak memory GB | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["bench"]:
        compiled = f"yes ({r.get('compile_backend') or s['compile_backend']})" if r["compile"] else "no"
        lines.append(
            f"| {r['perception']} | {r['precision']} | {compiled} | {_fmt(r.get('ms_per_iter'))} | "
            f"{_fmt(r.get('warmup_s'), 3)} | {_fmt(r.get('cells_steps_per_s'), 3)} | {_fmt(r.get('gflops'), 3)} | "
            f"{_fmt(r.get('peak_mem_gb'), 3)} | {_status(r)} |"
        )
    lines += [
        "",
        f"## The source's experiments, {s['steps']} steps each (at most {s['run_seconds']:.0f} s of training)",
        "",
        "| experiment | steps | rollout (min, max, backprop) | ms/iter | peak memory GB | train loss | eval loss | "
        "PSNR dB | holds steps | cuts regrown | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["experiments"]:
        rollout = ", ".join(_fmt(v) for v in r["rollout"]) if r.get("rollout") else "-"
        regrown = f"{r['regrown']}/5" if r.get("regrown") is not None else "-"
        lines.append(
            f"| {r['experiment']} | {_fmt(r.get('steps'))} | {rollout} | {_fmt(r.get('ms_per_iter'))} | "
            f"{_fmt(r.get('peak_mem_gb'), 3)} | {_fmt(r.get('train_loss'))} | {_fmt(r.get('eval_loss'))} | "
            f"{_fmt(r.get('psnr'), 3)} | {_fmt(r.get('holds_steps'))} | {regrown} | {_status(r)} |"
        )
    lines += ["", "### Loss curves (train loss at five points of each run)", ""]
    for r in summary["experiments"]:
        points = curve_points(r.get("loss_curve") or [])
        if points:
            lines.append(f"- {r['experiment']}: " + ", ".join(f"step {st}: {_fmt(v)}" for st, v in points))
    kinds = {r.get("peak_mem_kind") for r in [*summary["bench"], *summary["experiments"]]} - {None}
    if "process_peak_rss" in kinds:
        lines += ["", "Peak memory on CPU is the process's peak RSS so far (it only grows), not per row."]
    return "\n".join(lines) + "\n"


def _status(r: dict[str, Any]) -> str:
    return r["status"] + (f": {r['error']}" if r.get("error") else "")


# --------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m ncalab.tools.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, required=True, help="folder for summary.json, summary.md, runs/ (new or empty)"
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (the default without CUDA)")
    size.add_argument("--full", action="store_true", help="full sizes even without CUDA (slow on a CPU)")
    ap.add_argument(
        "--steps", type=int, default=None, help="training steps per experiment (default 200; tiny 3)"
    )
    ap.add_argument(
        "--run-seconds",
        type=float,
        default=None,
        help="training time cap per experiment (default 45 s; tiny 30)",
    )
    ap.add_argument("--budget-s", type=float, default=None, help="the whole check (default 480 s; tiny 120)")
    ap.add_argument(
        "--bench-perceptions", default="sobel3", help="comma-separated perceptions to bench (default: sobel3)"
    )
    ap.add_argument(
        "--bench-repeats", type=int, default=None, help="timed iterations per case (default 10; tiny 2)"
    )
    ap.add_argument(
        "--experiments",
        default=",".join(SOURCE_EXPERIMENTS),
        help="comma-separated experiments of conf/source/ (experiment=source source=<name>; default: all five)",
    )
    ap.add_argument(
        "--conf", type=Path, default=DEFAULT_CONF, help="the Hydra config folder (default: ./conf)"
    )
    return ap.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny or (device == "cpu" and not args.full)
    if tiny:
        device = "cpu"
    bench_perceptions = _names(args.bench_perceptions, "--bench-perceptions", bench.PERCEPTIONS)
    experiments = _names(args.experiments, "--experiments", SOURCE_EXPERIMENTS)
    s = Settings(
        device=device,
        tiny=tiny,
        bench_size=16 if tiny else 128,
        bench_batch=2 if tiny else 8,
        bench_steps=8 if tiny else 96,
        bench_repeats=_given(args.bench_repeats, 2 if tiny else 10),
        bench_perceptions=bench_perceptions,
        compile_backend="eager" if tiny else "inductor",
        steps=_given(args.steps, 3 if tiny else 200),
        run_seconds=_given(args.run_seconds, 30.0 if tiny else 45.0),
        budget_s=_given(args.budget_s, 120.0 if tiny else 480.0),
        experiments=experiments,
    )
    for name, value in (("--steps", s.steps), ("--bench-repeats", s.bench_repeats)):
        if value < 1:
            raise GpuCheckError(f"{name}={value}: give an integer >= 1")
    for name, value in (("--run-seconds", s.run_seconds), ("--budget-s", s.budget_s)):
        if not value > 0:
            raise GpuCheckError(f"{name}={value}: give a number of seconds > 0")
    return s


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _names(text: str, option: str, accepted) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in accepted]
    if bad or not names:
        raise GpuCheckError(
            f"{option}={text!r}: unknown {', '.join(bad) or '(none given)'}; accepted: {', '.join(accepted)}"
        )
    return names


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise GpuCheckError(f"--out {out}: is a file; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise GpuCheckError(f"--out {out}: not empty (a previous check?); give a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise GpuCheckError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine() or "cpu"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        s = settings_from(args)
        if not (args.conf / "train.yaml").is_file():
            raise GpuCheckError(f"--conf {args.conf}: no train.yaml there; run from a checkout of ncalab")
        check_out(args.out)
    except GpuCheckError as exc:
        print(f"ncalab.tools.gpu_check: error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out
    if s.device == "cpu" and not args.tiny and not args.full:
        print(
            "ncalab.tools.gpu_check: no CUDA device: tiny mode on the CPU (--full for the full sizes)",
            flush=True,
        )
    budget = Budget(s.budget_s)
    print(
        f"ncalab.tools.gpu_check: {device_name(s.device)} ({s.device}), {'tiny' if s.tiny else 'full'} mode, "
        f"budget {s.budget_s:.0f} s, writing to {out}",
        flush=True,
    )
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # The compiled bench cases come last (their compilation takes longest); keep room for them.
    reserve = 0.0 if s.tiny else (COMPILED_CASE_S * len(PRECISIONS) + 10.0) * len(s.bench_perceptions)
    bench_rows = run_bench(s, budget, compiled=False)
    runs = run_experiments(s, budget, out, args.conf.resolve(), reserve)
    bench_rows += run_bench(s, budget, compiled=True)
    summary = {
        "device": s.device,
        "device_name": device_name(s.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "mode": "tiny" if s.tiny else "full",
        "started_at": started,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(budget.elapsed, 2),
        "settings": {k: v for k, v in vars(s).items()},
        "bench": bench_rows,
        "experiments": runs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(render_markdown(summary))
    failed = [r for r in [*bench_rows, *runs] if r["status"] == "failed"]
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'} ({budget.elapsed:.0f} s)")
    if failed:
        print(f"ncalab.tools.gpu_check: {len(failed)} part(s) failed (see summary.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
