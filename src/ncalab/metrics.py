"""The numbers a run is judged by, in one place: the training loss, PSNR and SSIM.

- :func:`per_sample_loss`: the MSE of the RGBA channels against the target, one value per sample (hidden
  channels are free). Training minimises its mean; the pool sorts its batches by it; the evaluation reports it
  (``loss``, ``eval_loss``).
- :func:`psnr` and :func:`ssim`: image quality of the RGB composited over white (:func:`ncalab.nca.to_rgb`)
  against the target's, in [0, 1]; the evaluation reports them (``psnr``, ``ssim``).

Training (:mod:`ncalab.lit_module`), the pool (:mod:`ncalab.data`) and the evaluation (:mod:`ncalab.evaluate`,
which the end-of-run summary and ``python -m ncalab.compare`` read) all use these.
"""

from __future__ import annotations

import math

import torch

from ncalab.nca import ALPHA

__all__ = ["per_sample_loss", "psnr", "ssim"]


def per_sample_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of the RGBA channels against the target, one value per sample."""
    return ((x[:, : ALPHA + 1] - target) ** 2).mean(dim=(1, 2, 3))


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    mse = float(((image - reference) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Structural similarity of ``image`` (``B x 3 x H x W`` in [0, 1]) to ``reference`` (one image, ``1 x 3 x H x W``,
    or one per sample), averaged over the batch: torchmetrics' SSIM with its defaults (11x11 Gaussian window,
    sigma 1.5) and a data range of 1."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(
        structural_similarity_index_measure(image.float(), reference.float().expand_as(image), data_range=1.0)
    )
