"""Emoji targets (``data.target=emoji:<name or code point>``) and ``python -m ncalab.targets``: every way of
naming an emoji finds the same one, it loads as a cropped, premultiplied target, an unknown name or a missing
package is said in one line, and train.py trains on one."""

from __future__ import annotations

import os
import sys

import warm
from conftest import ROOT
from PIL import Image


def command(*args: str, timeout: int = 120):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return warm.run([sys.executable, *args], cwd=ROOT, env=env, timeout=timeout)


def test_python_m_ncalab_targets_runs_as_a_command(tmp_path):
    result = command("-m", "ncalab.targets", "preview", "emoji:snail", "--out", str(tmp_path / "s.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (288, 288)
    result = command("-m", "ncalab.targets", "preview", "emoji:snial")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "snail" in result.stderr and "Traceback" not in result.stderr


def test_train_py_trains_on_an_emoji(tmp_path):
    result = command(
        "train.py",
        "experiment=smoke",
        "data.target=emoji:snail",
        "callbacks.media=null",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert "data.target=emoji:snail" in (tmp_path / ".hydra" / "overrides.yaml").read_text()


def test_train_py_with_an_unknown_emoji_stops_in_one_line_naming_the_closest(tmp_path):
    result = command("train.py", "experiment=smoke", "data.target=emoji:snial", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith("ncalab: error: data.target='emoji:snial'")
    assert "closest: snail" in result.stderr
    assert not (tmp_path / "checkpoints").exists()
