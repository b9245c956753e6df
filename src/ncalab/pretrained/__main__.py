"""Ship a trained model: export it into ``src/ncalab/pretrained/<name>/``, evaluate it there, write its card.

    python -m ncalab.pretrained outputs/pretrained/flower <name> [--long-run 500,2000,10000]

The first argument is a run directory (its ``checkpoints/last.ckpt`` and ``summary.json`` are read) or a
``.ckpt``. The model is exported with :func:`ncalab.demo.export_checkpoint` (``model.json``, ``model.bin``,
``target.png``), evaluated from the exported folder itself (so the card describes exactly the weights that ship)
with :func:`ncalab.evaluate.evaluate_model`, and ``MODEL_CARD.md`` + ``evaluation.json`` are written beside them.
Every shipped model is retrained with ``python train.py experiment=pretrained_<name>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ncalab.errors import NCALabError
from ncalab.runs import folder as run_folder

SHIPPED_FILES = ("model.json", "model.bin", "target.png")
CARD = "MODEL_CARD.md"


def package_dir() -> Path:
    return Path(__file__).resolve().parent


def _checkpoint_and_run(source: Path) -> tuple[Path, Path | None]:
    if source.is_dir():
        ckpt = run_folder.last_checkpoint(source)
        if not ckpt.is_file():
            raise NCALabError(f"{str(source)!r} holds no checkpoints/last.ckpt (expected a run directory)")
        return ckpt, source
    if source.suffix == ".ckpt" and source.is_file():
        run = source.parent.parent if source.parent.name == run_folder.CHECKPOINTS_DIR else None
        return source, run
    raise NCALabError(f"{str(source)!r} is neither a run directory nor a .ckpt file")


def _f(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def shipped_path(folder: Path) -> str:
    """Where a shipped model lives, as ``evaluation.json`` records it: relative to the working directory when
    inside it (``src/ncalab/pretrained/<name>``), else absolute."""
    folder = folder.resolve()
    try:
        return str(folder.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def perception_row(perception: dict[str, Any]) -> str:
    """The card's perception row: the bank's size and kernel; for a multi-scale perception its levels too."""
    k = perception.get("kernel_size")
    n_ops = perception.get("n_ops")
    if "levels" in perception:
        levels = int(perception["levels"])
        return (
            f"| perception | `{perception.get('name')}` ({n_ops // levels} operators, {k}x{k}, read at {levels} "
            f"scales with {perception.get('upsample')} upsampling: {n_ops} responses per channel) |"
        )
    return f"| perception | `{perception.get('name')}` ({n_ops} operators, {k}x{k}) |"


def threads_note(summary: dict[str, Any]) -> str:
    """How many threads the run used, where its config pinned them (``threads=N``, read from the run folder)."""
    threads = summary.get("threads")
    return f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""


def target_licence(target: str) -> str | None:
    """The card's licence line for a model trained on an emoji (``emoji:<name or code point>``): the emoji, the
    set and its licence; None for any other target. Where the emoji cannot be looked up (the set is not installed
    here), the line names the target as it was given."""
    from ncalab.errors import TargetError
    from ncalab.targets import emoji

    if not emoji.is_emoji_target(target):
        return None
    try:
        line = emoji.emoji_attribution(target)
    except TargetError:
        line = (
            f"Target: the emoji `{target}` from {emoji.EMOJI_SET} (https://openmoji.org), licensed "
            f"{emoji.EMOJI_LICENSE} ({emoji.EMOJI_LICENSE_URL})."
        )
    return f"{line} `target.png` is drawn from it and shared under the same licence."


def render_row(meta: dict[str, Any]) -> str:
    """The card's row on how the image is drawn: one pixel per cell, or the decoder and its size."""
    render = meta.get("render") or {"name": "cells", "scale": 1}
    if render.get("name") != "decoder":
        return "| image | one pixel per cell (`render=cells`) |"
    h, w = (g * render["scale"] for g in meta["grid"])
    return (
        f"| image | {h}x{w} px drawn by a per-pixel decoder (`render=decoder`): {render['scale']} px per cell, "
        f"{render.get('layers')} sine layers of {render.get('hidden')} units (omega {render.get('omega')}) |"
    )


def write_card(name: str, folder: Path, evaluation: dict[str, Any], summary: dict[str, Any]) -> Path:
    """``MODEL_CARD.md`` for the model in ``folder`` from its ``model.json``, evaluation and the run's summary
    (with the licence of the target where it is an emoji: :func:`target_licence`)."""
    from ncalab.targets import builtin_targets

    meta = json.loads((folder / "model.json").read_text())
    config = meta.get("config", {})
    data, rollout, perception = config.get("data", {}), config.get("rollout", {}), meta["perception"]
    grid = "x".join(str(v) for v in meta["grid"])
    n_weights = meta.get("n_floats")
    long = evaluation["long_run"]
    regen = evaluation["regeneration"]
    marks = ", ".join(long["loss"])
    losses = ", ".join(_f(v) for v in long["loss"].values())
    cuts = ", ".join(
        f"{region} {_f(regen[region]['damaged_loss'], '.3f')} -> {_f(regen[region]['loss'], '.4f')}"
        f" ({'regrown in ' + str(regen[region]['steps_to_recover']) + ' steps' if regen[region]['regrown'] else 'not regrown'})"
        for region in ("left", "right", "top", "bottom", "center")
    )
    wall = summary.get("wall_time_s")
    target = str(data.get("target"))
    licence = target_licence(target)
    lines = [
        f"# Model card: {name}",
        "",
        f"An ncalab NCA that grows the {'built-in ' if target in builtin_targets() else ''}`{target}` target from a "
        "single seed cell, holds it and "
        "regrows it after damage. Shipped for the browser demo (`make demo`) and `python -m ncalab.evaluate`.",
        "",
        "| | |",
        "|---|---|",
        perception_row(perception),
        f"| state | {meta['channels']} channels (premultiplied RGBA + {meta['channels'] - 4} hidden), grid {grid} |",
        f"| update network | {meta['channels'] * (1 + perception.get('n_ops', 0))} -> {meta['hidden']} (ReLU) -> "
        f"{meta['channels']}, fire rate {meta['fire_rate']}, alive threshold {meta['alive_threshold']} |",
        render_row(meta),
        f"| weights | `model.bin`: {n_weights} float32 values, full precision |",
        f"| target | `{data.get('target')}`, {data.get('target_size')} px + {data.get('padding')} "
        f"{'px' if (meta.get('render') or {}).get('scale', 1) > 1 else 'cells'} of padding, "
        f"mode `{data.get('mode')}`, damage share {data.get('damage_share', '-')} |",
        f"| training | `python train.py experiment=pretrained_{name}` (seed {config.get('seed')}): "
        f"{_f(summary.get('steps'))} optimiser steps, batch {data.get('batch_size')}, pool {data.get('pool_size')}, "
        f"rollouts of {rollout.get('min_steps')}-{rollout.get('max_steps')} steps |",
        f"| wall time | {_f(wall, '.0f')} s on a 2-core CPU{threads_note(summary)} |"
        if wall
        else "| wall time | - |",
        "",
        f"Evaluation (`python -m ncalab.evaluate src/ncalab/pretrained/{name} --long-run {','.join(long['loss'])}`,"
        f" {evaluation['rollouts']} rollouts, fire rate {meta['fire_rate']}; also in `evaluation.json`):",
        "",
        "| metric | value |",
        "|---|---|",
        f"| loss / PSNR / SSIM at the horizon ({evaluation['horizon']} steps) | {_f(evaluation['loss'])} / "
        f"{_f(evaluation['psnr'], '.1f')} dB / {_f(evaluation['ssim'], '.3f')} |",
        f"| loss after {marks} steps from the seed | {losses} |",
        f"| holds (loss within {long['hold_factor']}x the horizon loss) | {long['holds_steps']} steps |",
        f"| regeneration: grown {regen['grow_steps']} steps (loss {_f(regen['undamaged_loss'])}, grown: "
        f"{_f(regen['grown'])}), a region cut away, {regen['regrow_steps']} steps to regrow; regrown = back within "
        f"{regen['recovery_factor']}x the undamaged loss and still there at the end | "
        f"{regen['regrown']}/5: {cuts} |",
        *(
            [
                f"| wide cuts: a half and an eighth of the pattern past the middle | {regen['regrown_wide']}/4: "
                + ", ".join(
                    f"{r} {'regrown in ' + str(regen[r]['steps_to_recover']) + ' steps' if regen[r]['regrown'] else 'not regrown'}"
                    for r in ("left_wide", "right_wide", "top_wide", "bottom_wide")
                )
                + " |"
            ]
            if "regrown_wide" in regen
            else []
        ),
        "",
        "Files: `model.json` (metadata, tensor table, the run's config), `model.bin` (weights), `target.png` "
        "(target over white), `evaluation.json`.",
        f"Rebuild: `python train.py experiment=pretrained_{name}`, then "
        f"`python -m ncalab.pretrained outputs/runs/<run> {name}`.",
        *(["", licence] if licence else []),
        "",
    ]
    path = folder / CARD
    path.write_text("\n".join(lines))
    return path


# A model's name is its folder in src/ncalab/pretrained/ and its entry in the demo's picker.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise NCALabError(
            f"model name {name!r}: expected letters, digits, '_' and '-' (at most 64, not starting with '_' "
            "or '-'): it names a folder in src/ncalab/pretrained/"
        )
    return name


def ship(
    source: str | Path,
    name: str,
    dest: str | Path | None = None,
    long_run_steps: tuple[int, ...] = (500, 2000, 10000),
    rollouts: int = 4,
) -> dict[str, Any]:
    """Export, evaluate and card the model of ``source`` as pretrained ``name`` (in ``dest``, default the
    package's own folder). Returns the evaluation.

    Everything is checked, exported, evaluated and written in a new folder beside the destination first; only
    then do its files replace the destination's, so a bad argument or a failed evaluation leaves a shipped model
    as it was."""
    from ncalab.demo import export_checkpoint
    from ncalab.evaluate import evaluate_model, parse_steps

    check_name(name)
    try:
        long_run_steps = parse_steps(long_run_steps)
    except ValueError as exc:
        raise NCALabError(f"long-run steps: {exc}") from None
    if isinstance(rollouts, bool) or not isinstance(rollouts, int) or not 1 <= rollouts <= 1024:
        raise NCALabError(f"rollouts={rollouts!r}: expected a whole number from 1 to 1024")
    ckpt, run = _checkpoint_and_run(Path(source).expanduser())
    folder = Path(dest).expanduser() if dest is not None else package_dir() / name
    if folder.exists() and not folder.is_dir():
        raise NCALabError(f"destination {str(folder)!r} exists and is not a folder")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        raise NCALabError(f"cannot write beside {str(folder)!r} ({exc.strerror or exc})") from None
    try:
        export_checkpoint(ckpt, staging, name=name)
        evaluation = evaluate_model(staging, rollouts=rollouts, long_run_steps=long_run_steps)
        evaluation["model"] = shipped_path(
            folder
        )  # the folder it ships in, not the staging folder it was measured in
        (staging / run_folder.EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2) + "\n")
        summary = {}
        if run is not None and (run / run_folder.SUMMARY_FILE).is_file():
            summary = json.loads((run / run_folder.SUMMARY_FILE).read_text())
        if run is not None and (run / run_folder.CONFIG_FILE).is_file():  # the threads the run was pinned to
            from omegaconf import OmegaConf

            summary.setdefault("threads", OmegaConf.load(run / run_folder.CONFIG_FILE).get("threads"))
        write_card(name, staging, evaluation, summary)
        folder.mkdir(exist_ok=True)
        shipped = (*SHIPPED_FILES, run_folder.EVALUATION_FILE, CARD)
        for file in shipped:
            if (staging / file).is_file():
                os.replace(staging / file, folder / file)
            elif (folder / file).is_file():
                (folder / file).unlink()  # a file of the model this one replaces
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return evaluation


def main(argv: list[str] | None = None) -> int:
    from ncalab.evaluate import format_evaluation, parse_steps

    parser = argparse.ArgumentParser(prog="python -m ncalab.pretrained", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run directory (with checkpoints/last.ckpt) or a .ckpt")
    parser.add_argument("name", help="the pretrained model's name (its folder in src/ncalab/pretrained/)")
    parser.add_argument("--dest", help="write here instead of src/ncalab/pretrained/<name>")
    parser.add_argument("--long-run", default="500,2000,10000", help="steps at which persistence is checked")
    parser.add_argument("--rollouts", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        steps = parse_steps(args.long_run)
    except ValueError as exc:
        parser.error(f"--long-run: {exc}")
    try:
        evaluation = ship(args.source, args.name, args.dest, steps, args.rollouts)
    except NCALabError as exc:
        print(f"ncalab.pretrained: error: {exc}", file=sys.stderr)
        return 2
    print(format_evaluation(evaluation))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
