"""Draw docs/flower_strip.png: the shipped flower grows from one cell, loses its left half, and regrows.

    .venv/bin/python docs/flower_strip.py [--out docs/flower_strip.png]

Uses the library's own API only: the shipped model folder (``ncalab.exported.load_model_folder``), its rollout with a
fixed seed (``ncalab.media.record_rollout``), the evaluation's left cut (``ncalab.media.cut_region``) and frames over
white (``ncalab.media.frames_uint8``). CPU, a few seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ncalab.exported import load_model_folder
from ncalab.media import cut_region, frames_uint8, record_rollout

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "src" / "ncalab" / "pretrained" / "flower"
GROW = (0, 8, 16, 24, 48, 200)  # steps from the seed shown
REGROW = (0, 10, 30, 60, 200)  # steps after the cut shown
SCALE = 3  # pixels per cell side
LABEL = 14  # pixels of caption under each frame
GAP = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "flower_strip.png")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    nca, meta = load_model_folder(FOLDER)
    grid = meta["config"]["data"]["target_size"] + 2 * meta["config"]["data"]["padding"]

    grown, growth = record_rollout(nca, nca.seed(1, grid, grid), GROW[-1], seed=0)
    damaged = cut_region(grown, "left")
    _, regrowth = record_rollout(nca, damaged, REGROW[-1], seed=1)

    shown = [(growth[s], f"step {s}") for s in GROW]
    shown += [(damaged, "cut")] + [(regrowth[s], f"+{s}") for s in REGROW[1:]]
    frames = frames_uint8([state for state, _ in shown], SCALE)  # T x 3 x H x W over white

    h, w = frames.shape[2:]
    strip = Image.new("RGB", (len(shown) * (w + GAP) - GAP, h + LABEL), "white")
    draw = ImageDraw.Draw(strip)
    for i, (frame, (_, label)) in enumerate(zip(frames, shown, strict=True)):
        x = i * (w + GAP)
        strip.paste(Image.fromarray(np.ascontiguousarray(frame.transpose(1, 2, 0))), (x, 0))
        draw.text((x + 2, h + 1), label, fill=(60, 60, 60))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(args.out, optimize=True)
    print(f"{args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
