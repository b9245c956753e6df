"""A new perception is one class and one yaml: written outside the repository (a module and a config folder of a
user's own, added with hydra.searchpath), it trains, checkpoints, resumes, evaluates and exports without touching
any file of ncalab."""

from __future__ import annotations

import sys

import pytest
from conftest import CONF
from omegaconf import OmegaConf

MODULE = "my_cross_perception"


def test_a_checkpoint_naming_an_unregistered_perception_is_refused_and_nothing_is_imported(tmp_path):
    """The allow-list is the classes this process has defined: a name a checkpoint gives is never imported."""
    from ncalab.checkpoint import build_perception
    from ncalab.errors import CheckpointError

    config = {"perception": {"_target_": "os.system", "name": "x"}}
    with pytest.raises(
        CheckpointError, match=r"perception\._target_='os\.system' is not an ncalab perception"
    ):
        build_perception(config, tmp_path / "x.ckpt")
    missing = {"perception": {"_target_": f"{MODULE}_never_imported.CrossPerception", "name": "x"}}
    with pytest.raises(CheckpointError, match="is not an ncalab perception"):
        build_perception(missing, tmp_path / "x.ckpt")
    assert f"{MODULE}_never_imported" not in sys.modules


def test_the_bench_offers_every_configured_perception(tmp_path):
    """The bench's perceptions are read from a config folder's perception group, not kept by hand."""
    from ncalab.tools.bench import perceptions_from_conf

    found = perceptions_from_conf(CONF)
    assert set(found) == {p.stem for p in (CONF / "perception").glob("*.yaml")}
    build, backprop = found["trainable_truncated"]
    assert backprop == 16 and build().n_ops == 2
    assert found["sobel3"][0]().ops == ("sobel3_x", "sobel3_y")
    assert OmegaConf.load(CONF / "perception" / "operators.yaml").perception.ops == list(
        found["operators"][0]().ops
    )
