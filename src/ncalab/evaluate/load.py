"""Loading a model to measure: a ``.ckpt`` or an exported model folder, its target and horizon
(:func:`evaluate_model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ncalab.evaluate.measure import MAX_STEPS, EvaluationError, compare_at_size, measure_nca
from ncalab.nca import NCA
from ncalab.targets import load_target

# --------------------------------------------------------------------------------------------- models on disk


def load_model(path: str | Path) -> tuple[NCA, dict[str, Any], dict[str, Any]]:
    """The NCA of a ``.ckpt`` or an exported model folder; returns ``(nca, run config, info)``.

    ``info`` has ``model`` (the path), ``kind`` (``checkpoint`` or ``folder``) and ``perception`` (its name).
    """
    from ncalab.exported import is_model_folder, load_model_folder

    path = Path(path).expanduser()
    if path.is_dir() or is_model_folder(path):
        nca, meta = load_model_folder(path)
        config = meta.get("config")
        perception = meta.get("perception")
        name = perception.get("name") if isinstance(perception, dict) else None
        kind = "folder"
    elif path.exists():
        from ncalab.checkpoint import load_nca

        nca, config = load_nca(path)
        name = (config.get("perception") or {}).get("name")
        kind = "checkpoint"
    else:
        raise EvaluationError(
            f"{str(path)!r}: no such file or folder (expected a .ckpt written by ncalab, or a model folder "
            "with model.json + model.bin written by `python -m ncalab.demo export`)"
        )
    if not isinstance(config, dict):
        raise EvaluationError(f"{str(path)!r}: no run config saved with the model")
    return nca, config, {"model": str(path), "kind": kind, "perception": name}


def _target_and_horizon(config: dict[str, Any], path: str | Path) -> tuple[torch.Tensor, int]:
    try:
        data = config["data"]
        target, size, padding = str(data["target"]), int(data["target_size"]), int(data["padding"])
        upscale = bool(data.get("allow_upscale", False))
        # Runs from before data.seed_on_pattern trained on the image centred as it was.
        on_seed = bool(data.get("seed_on_pattern", False))
        horizon = int(config["rollout"]["max_steps"])
        render = config.get("render") or {}
        cell = int(render.get("scale", 1)) if isinstance(render, dict) else 1
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise EvaluationError(
            f"{str(path)!r}: the saved run config lacks data.target/target_size/padding or rollout.max_steps "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if not 1 <= horizon <= MAX_STEPS:
        raise EvaluationError(
            f"{str(path)!r}: the saved rollout.max_steps={horizon} is outside 1..{MAX_STEPS:,} "
            "(the steps a measurement may run)"
        )
    return load_target(target, size, padding, upscale, on_seed, cell=cell), horizon


def evaluate_model(
    path: str | Path,
    rollouts: int = 4,
    seed: int = 0,
    video: bool = False,
    at_size: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate the model of a ``.ckpt`` or an exported model folder against the target it was trained on, for
    the horizon it was trained for (``rollout.max_steps``). ``kwargs`` go to :func:`measure_nca`
    (``long_run_steps``, ``grow_steps``, ``regrow_steps``, ...). Videos go to ``<stem>_videos/`` beside a
    checkpoint, ``<folder>/evaluation_videos/`` in a folder. ``at_size``: also PSNR/SSIM against the target
    drawn at that many pixels (:func:`compare_at_size`), as ``at_size``."""
    nca, config, info = load_model(path)
    target, horizon = _target_and_horizon(config, path)
    video_dir = None
    if video:
        p = Path(info["model"])
        video_dir = p / "evaluation_videos" if info["kind"] == "folder" else p.parent / f"{p.stem}_videos"
    measured = measure_nca(nca, target, horizon, rollouts=rollouts, seed=seed, video_dir=video_dir, **kwargs)
    result = measured.result
    if at_size is not None:
        result["at_size"] = compare_at_size(measured.image, config["data"], nca.render.scale, at_size)
    return {**info, **result}


evaluate_checkpoint = evaluate_model  # the earlier name; takes folders too
