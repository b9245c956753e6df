"""compare in a process of its own: what it imports."""

from __future__ import annotations

import subprocess
import sys


def test_compare_does_not_import_the_training_code():
    """compare reads run folders (ncalab.runs.folder) and nothing of the training: not even torch."""
    heavy = (
        "torch",
        "lightning",
        "wandb",
        "ncalab.train",
        "ncalab.lit_module",
        "ncalab.callbacks",
        "ncalab.runs.status",
        "ncalab.data",
        "ncalab.nca",
        "ncalab.metrics",
        "ncalab.evaluate",
    )
    code = f"import sys, ncalab.compare; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
