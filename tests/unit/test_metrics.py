"""ncalab.metrics: the training loss, PSNR and SSIM that training, the pool and the evaluation share."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ncalab.metrics import per_sample_loss, psnr, ssim
from ncalab.nca import to_rgb


def test_per_sample_loss_is_the_rgba_mse_of_each_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 16, 6, 5, generator=g)
    target = torch.rand(4, 6, 5, generator=g)
    expected = torch.stack([((x[i, :4] - target) ** 2).mean() for i in range(3)])
    torch.testing.assert_close(per_sample_loss(x, target), expected)
    x[:, 4:] = 1e6  # hidden channels are free
    torch.testing.assert_close(per_sample_loss(x, target), expected)


def test_psnr_in_db_and_infinite_for_equal_images():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a) == math.inf
    assert psnr(a + 0.1, a) == pytest.approx(20.0)  # mse 0.01 -> 20 dB


def test_ssim_is_torchmetrics_ssim_against_the_reference_broadcast_over_the_batch():
    g = torch.Generator().manual_seed(1)
    states = torch.rand(4, 16, 24, 24, generator=g)
    target = torch.rand(1, 4, 24, 24, generator=g)
    image, reference = to_rgb(states), to_rgb(target)
    expected = float(
        structural_similarity_index_measure(image.float(), reference.float().expand_as(image), data_range=1.0)
    )
    assert ssim(image, reference) == expected
    assert ssim(reference, reference) == pytest.approx(1.0)
    # the mean over the batch
    each = [ssim(image[i : i + 1], reference) for i in range(4)]
    assert ssim(image, reference) == pytest.approx(sum(each) / 4, rel=1e-6)
