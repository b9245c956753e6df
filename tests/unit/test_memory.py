"""The training's peak memory (summary.json's peak_memory_gb) counts from the start of training, not the process's
life: a sweep's worker reused for a second job reports that job alone."""

from __future__ import annotations

import sys

import pytest
import torch

from ncalab.runs import memory

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="/proc/self/clear_refs is Linux's"
)


def test_the_peak_counts_from_the_reset():
    assert memory.reset_peak("cpu")
    before = memory.peak_gb("cpu")
    big = torch.ones(64 * 2**20)  # 256 MiB, every page touched
    grown = memory.peak_gb("cpu")
    assert grown - before > 0.2
    del big
    assert memory.reset_peak("cpu")
    assert memory.peak_gb("cpu") < grown - 0.2  # what came before the reset is not counted
