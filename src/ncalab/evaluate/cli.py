"""The command line: ``python -m ncalab.evaluate PATH [...]``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from ncalab.errors import NCALabError
from ncalab.evaluate.load import evaluate_model
from ncalab.evaluate.measure import LONG_RUN_STEPS, MAX_STEPS, parse_steps
from ncalab.media import REGIONS, WIDE_REGIONS
from ncalab.runs import folder as run_folder

log = logging.getLogger("ncalab")


def default_output(path: str | Path) -> Path:
    """Where the CLI writes the JSON: ``<folder>/evaluation.json`` or ``<checkpoint stem>.eval.json``."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path / run_folder.EVALUATION_FILE
    if path.name == "model.json":
        return path.parent / run_folder.EVALUATION_FILE
    return path.with_suffix(".eval.json")


# --------------------------------------------------------------------------------------------- text


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def format_evaluation(result: dict[str, Any]) -> str:
    """A short plain-text account of a result of :func:`measure_nca` (what the CLI prints to stderr)."""
    lines = [
        f"after {result['horizon']} steps from the seed ({result['rollouts']} rollouts): loss {_fmt(result['loss'])}, "
        f"psnr {_fmt(result['psnr'], '.2f')} dB, ssim {_fmt(result['ssim'], '.3f')}"
    ]
    lr = result["long_run"]
    ref = lr.get("reference_loss")
    bound = None if ref is None else lr["hold_factor"] * ref
    lines.append(f"persistence: holds while loss <= {lr['hold_factor']:g} x {_fmt(ref)} = {_fmt(bound)}")
    lines.append(
        f"  {'step':>8}  {'loss':>10}  {'x horizon':>9}  holds  {'excess':>8}  {'missing':>8}  |hidden|"
    )
    still = True
    trace = lr.get("trace") or {}
    for step, loss in sorted(lr["loss"].items(), key=lambda kv: int(kv[0])):
        ratio = loss / ref if loss is not None and ref else None
        still = still and int(step) <= lr["holds_steps"]
        t = trace.get(step) or {}
        lines.append(
            f"  {step:>8}  {_fmt(loss):>10}  {_fmt(ratio, '.2f'):>9}  {'yes' if still else 'no ':<5}  "
            f"{_fmt(t.get('excess'), '.1f'):>8}  {_fmt(t.get('missing'), '.1f'):>8}  {_fmt(t.get('hidden_max'), '.2f')}"
        )
    lines.append(
        f"  holds_steps: {lr['holds_steps']}" + ("  (a state went non-finite)" if lr["non_finite"] else "")
    )
    rg = result["regeneration"]
    lines.append(
        f"regeneration: grown {rg['grow_steps']} steps: psnr {_fmt(rg['undamaged_psnr'], '.2f')} dB, grown needs "
        f">= {_fmt(rg['grown_psnr_min'], '.2f')} dB -> {'grown' if rg['grown'] else 'NOT grown (no cut counts)'}"
    )
    lines.append(f"  {'region':<11}  {'loss cut':>10}  {'loss after':>10}  {'steps':>5}  regrown")
    for region in REGIONS + WIDE_REGIONS:
        r = rg.get(region)
        if r is None:  # an evaluation.json from before the wide cuts
            continue
        lines.append(
            f"  {region:<11}  {_fmt(r['damaged_loss']):>10}  {_fmt(r['loss']):>10}  "
            f"{_fmt(r['steps_to_recover'], 'd'):>5}  {'yes' if r['regrown'] else 'no'}"
        )
    wide = rg.get("regrown_wide")
    lines.append(
        f"  regrown: {rg['regrown']}/{len(REGIONS)}"
        + (f"; wide cuts (past the middle): {wide}/{len(WIDE_REGIONS)}" if wide is not None else "")
    )
    at = result.get("at_size")
    if at:
        lines.append(
            f"at {at['size']} px (the {at['from_size']} px image resized): psnr {_fmt(at['psnr'], '.2f')} dB, "
            f"ssim {_fmt(at['ssim'], '.3f')}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI


def _steps_arg(text: str) -> tuple[int, ...]:
    try:
        return parse_steps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {exc}; expected positive step counts like 500,1000,2000"
        ) from None


def _count_arg(minimum: int, maximum: int = MAX_STEPS):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is more than the limit of {maximum:,}")
        return value

    return parse


MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed
MAX_ROLLOUTS = 1024  # rollouts run as one batch


def _seed_arg(text: str) -> int:
    value = _count_arg(0, maximum=2**64)(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is above {MAX_SEED}")
    return value


def output_problem(out: Path) -> str | None:
    """Why the result could not be written to ``out`` (checked before the evaluation runs), or None."""
    if out.is_dir():
        return f"--output {out} is a directory; give a file name such as {out / run_folder.EVALUATION_FILE}"
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the folders that do not exist yet are created
    if not parent.is_dir():
        return f"cannot write {out}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write {out}: {parent} is not writable"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ncalab.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "path", help="a .ckpt written by ncalab, or an exported model folder (model.json + model.bin)"
    )
    parser.add_argument(
        "--rollouts",
        type=_count_arg(1, MAX_ROLLOUTS),
        default=4,
        help="stochastic rollouts averaged for psnr/ssim/loss",
    )
    parser.add_argument("--seed", type=_seed_arg, default=0, help="seeds the stochastic updates (>= 0)")
    parser.add_argument(
        "--long-run",
        type=_steps_arg,
        default=LONG_RUN_STEPS,
        metavar="STEPS",
        help="comma-separated steps from the seed at which to check the loss (default: 500,1000,2000)",
    )
    parser.add_argument(
        "--grow-steps", type=_count_arg(0), default=200, help="regeneration: steps grown before a cut"
    )
    parser.add_argument(
        "--regrow-steps", type=_count_arg(1), default=200, help="regeneration: steps to regrow"
    )
    parser.add_argument("--video", action="store_true", help="write growth and regeneration MP4s beside it")
    parser.add_argument(
        "--at-size",
        type=_count_arg(8, 4096),
        metavar="PX",
        help="also PSNR/SSIM against the target drawn at PX x PX, the model's image resized to it (to compare "
        "models of one image trained at different sizes or renderings)",
    )
    parser.add_argument(
        "--output",
        help="where to write the JSON (default: <checkpoint stem>.eval.json beside it, <folder>/evaluation.json)",
    )
    args = parser.parse_args(argv)
    if not log.handlers:  # progress of long measurements, and warnings, as one line each on stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("ncalab.evaluate: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    out = Path(args.output).expanduser() if args.output else default_output(args.path)
    problem = output_problem(out)
    if problem:  # before the evaluation, which can take minutes
        print(f"ncalab.evaluate: error: {problem}", file=sys.stderr)
        return 2
    try:
        result = evaluate_model(
            args.path,
            rollouts=args.rollouts,
            seed=args.seed,
            video=args.video,
            long_run_steps=args.long_run,
            grow_steps=args.grow_steps,
            regrow_steps=args.regrow_steps,
            at_size=args.at_size,
        )
    except NCALabError as exc:
        print(f"ncalab.evaluate: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    # The result goes to stdout first: a file that cannot be written does not lose it.
    print(format_evaluation(result), file=sys.stderr)
    print(text, flush=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    except OSError as exc:
        print(
            f"ncalab.evaluate: error: cannot write {out} ({exc.strerror or exc}); the result is printed above",
            file=sys.stderr,
        )
        return 1
    return 0
