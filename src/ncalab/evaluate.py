"""Evaluate a trained NCA: quality, long-run stability and regeneration.

    python -m ncalab.evaluate outputs/runs/<run>/checkpoints/last.ckpt [--rollouts 4] [--video]

Prints one JSON object and writes it next to the checkpoint (``<checkpoint stem>.eval.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ncalab.data import load_target, per_sample_loss, psnr
from ncalab.errors import NCALabError
from ncalab.media import REGIONS, cut_region, eval_mode, frames_uint8, record_rollout, write_video
from ncalab.nca import NCA, to_rgb

LONG_RUN_STEPS = (500, 1000, 2000)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@torch.no_grad()
def evaluate_nca(
    nca: NCA,
    target: torch.Tensor,
    horizon: int,
    rollouts: int = 4,
    seed: int = 0,
    long_run_steps: tuple[int, ...] = LONG_RUN_STEPS,
    grow_steps: int = 200,
    regrow_steps: int = 200,
    recovery_factor: float = 1.5,
    video_dir: Path | None = None,
    fps: int = 24,
) -> dict[str, Any]:
    """All numbers for ``nca`` against ``target`` (``4 x H x W``); stochastic parts are seeded by ``seed``.

    - ``psnr``/``ssim``/``loss`` after ``horizon`` steps from the seed, averaged over ``rollouts`` rollouts;
    - ``long_run``: the loss at each of ``long_run_steps`` from the seed, and whether any state went non-finite;
    - ``regeneration``: grow ``grow_steps``, cut each region, regrow ``regrow_steps``: the loss then, and the
      steps until the loss is back within ``recovery_factor`` x the undamaged loss (``None`` = never).
    """
    with eval_mode(nca):
        return _evaluate(
            nca,
            target,
            horizon,
            rollouts,
            seed,
            long_run_steps,
            grow_steps,
            regrow_steps,
            recovery_factor,
            video_dir,
            fps,
        )


def _evaluate(
    nca: NCA,
    target: torch.Tensor,
    horizon: int,
    rollouts: int,
    seed: int,
    long_run_steps: tuple[int, ...],
    grow_steps: int,
    regrow_steps: int,
    recovery_factor: float,
    video_dir: Path | None,
    fps: int,
) -> dict[str, Any]:
    device = next(nca.parameters()).device
    target = target.to(device).unsqueeze(0)
    h, w = target.shape[-2:]
    target_rgb = to_rgb(target)

    grown, _ = record_rollout(nca, nca.seed(rollouts, h, w), horizon, frame_every=max(horizon, 1), seed=seed)
    grown_rgb = to_rgb(grown)
    result: dict[str, Any] = {
        "horizon": horizon,
        "rollouts": rollouts,
        "loss": float(per_sample_loss(grown, target).mean()),
        "psnr": sum(psnr(grown_rgb[i : i + 1], target_rgb) for i in range(rollouts)) / rollouts,
        "ssim": float(
            structural_similarity_index_measure(
                grown_rgb.float(), target_rgb.float().expand_as(grown_rgb), data_range=1.0
            )
        ),
    }

    # Long run: one rollout, checked at each requested step.
    losses: dict[str, float | None] = {}
    non_finite = False
    x = nca.seed(1, h, w)
    done = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for mark in sorted(long_run_steps):
            x = nca.rollout(x, mark - done)
            done = mark
            non_finite = non_finite or not bool(torch.isfinite(x).all())
            losses[str(mark)] = _finite(float(per_sample_loss(x, target).mean()))
    result["long_run"] = {"loss": losses, "non_finite": non_finite}

    # Regeneration after the Distill protocol.
    base, growth = record_rollout(nca, nca.seed(1, h, w), grow_steps, seed=seed)
    base_loss = float(per_sample_loss(base, target).mean())
    regeneration: dict[str, Any] = {
        "grow_steps": grow_steps,
        "regrow_steps": regrow_steps,
        "undamaged_loss": _finite(base_loss),
    }
    for region in REGIONS:
        damaged = cut_region(base, region)
        regrown, frames = record_rollout(nca, damaged, regrow_steps, seed=seed + 1)
        curve = [float(per_sample_loss(f, target).mean()) for f in frames]  # frame i = after i regrow steps
        recovered = next((i for i, v in enumerate(curve) if i > 0 and v <= recovery_factor * base_loss), None)
        regeneration[region] = {
            "damaged_loss": _finite(curve[0]),
            "loss": _finite(curve[-1]),
            "steps_to_recover": recovered,
        }
        if video_dir is not None:
            write_video(frames_uint8(growth + frames, 4), video_dir / f"regeneration_{region}.mp4", fps)
    result["regeneration"] = regeneration
    if video_dir is not None:
        write_video(frames_uint8(growth, 4), video_dir / "growth.mp4", fps)
    return result


def evaluate_checkpoint(
    path: str | Path, rollouts: int = 4, seed: int = 0, video: bool = False, **kwargs
) -> dict:
    """Evaluate the model of a checkpoint against the target it was trained on."""
    from ncalab.checkpoint import load_nca

    path = Path(path)
    nca, config = load_nca(path)
    data = config["data"]
    target = load_target(
        data["target"], data["target_size"], data["padding"], data.get("allow_upscale", False)
    )
    horizon = int(config["rollout"]["max_steps"])
    video_dir = path.parent / f"{path.stem}_videos" if video else None
    result = evaluate_nca(nca, target, horizon, rollouts=rollouts, seed=seed, video_dir=video_dir, **kwargs)
    result = {"checkpoint": str(path), "perception": config["perception"].get("name"), **result}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ncalab.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt written by ncalab")
    parser.add_argument(
        "--rollouts", type=int, default=4, help="stochastic rollouts averaged for psnr/ssim/loss"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regrow-steps", type=int, default=200)
    parser.add_argument("--video", action="store_true", help="write growth and regeneration MP4s next to it")
    parser.add_argument(
        "--output", help="where to write the JSON (default: <checkpoint stem>.eval.json beside it)"
    )
    args = parser.parse_args(argv)
    try:
        result = evaluate_checkpoint(
            args.checkpoint,
            rollouts=args.rollouts,
            seed=args.seed,
            video=args.video,
            regrow_steps=args.regrow_steps,
        )
    except NCALabError as exc:
        print(f"ncalab.evaluate: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    out = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".eval.json")
    out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
