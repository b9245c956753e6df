"""A new perception is one class and one yaml: written outside the repository (a module and a config folder of a
user's own, added with hydra.searchpath), it trains, checkpoints, resumes, evaluates and exports without touching
any file of ncalab."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir
from test_new_perception import MODULE

CLASS_SOURCE = textwrap.dedent(
    '''
    import torch
    from ncalab.perception import Perception


    class CrossPerception(Perception):
        """Identity + two fixed 3x3 averages: of the four edge neighbours, and of the four corners."""

        def __init__(self, channels: int = 16, name: str = "cross"):
            super().__init__(channels, n_ops=2, kernel_size=3, name=name)
            edges = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]) / 4
            corners = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]) / 4
            bank = torch.stack([edges, corners])
            self.register_buffer("weight", bank.repeat(channels, 1, 1).reshape(channels * 2, 1, 3, 3))

        def operator_weight(self) -> torch.Tensor:
            return self.weight
    '''
)

YAML = textwrap.dedent(
    f"""
    # @package _global_
    perception:
      _target_: {MODULE}.CrossPerception
      name: cross
      channels: ${{model.channels}}
    """
)


@pytest.fixture
def user_perception(tmp_path, monkeypatch):
    """The user's module (importable) and config folder (``<folder>/perception/cross.yaml``)."""
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{MODULE}.py").write_text(CLASS_SOURCE)
    monkeypatch.syspath_prepend(str(code))
    conf = tmp_path / "my_conf"
    (conf / "perception").mkdir(parents=True)
    (conf / "perception" / "cross.yaml").write_text(YAML)
    yield conf
    sys.modules.pop(MODULE, None)


def _cfg(out, conf, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(
            config_name="train",
            overrides=[
                f"output_dir={out}",
                f"hydra.searchpath=[file://{conf}]",
                "experiment=smoke",
                "callbacks.media=null",
                "perception=cross",
                *overrides,
            ],
        )


def test_a_perception_of_ones_own_trains_resumes_evaluates_and_exports(user_perception, tmp_path):
    from ncalab.checkpoint import PERCEPTION_CLASSES, load_nca
    from ncalab.demo import export_checkpoint
    from ncalab.evaluate import evaluate_model
    from ncalab.train import run

    out = tmp_path / "run"
    summary = run(_cfg(out, user_perception))
    assert summary["perception"] == "cross" and summary["steps"] > 0
    assert f"{MODULE}.CrossPerception" in PERCEPTION_CLASSES  # registered by being defined, not by any list

    ckpt = out / "checkpoints" / "last.ckpt"
    nca, config = load_nca(ckpt)
    assert type(nca.perception).__name__ == "CrossPerception" and nca.perception.n_ops == 2
    edges = nca.perception.operator_weight()[0, 0]
    assert torch.equal(edges, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]) / 4)

    steps = torch.load(ckpt, weights_only=True)["global_step"]
    resumed = tmp_path / "resumed"
    run(_cfg(resumed, user_perception, f"ckpt_path={ckpt}", f"trainer.max_steps={steps + 2}"))
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == steps + 2

    kwargs = {"rollouts": 1, "long_run_steps": (16,), "grow_steps": 8, "regrow_steps": 4}
    from_checkpoint = evaluate_model(ckpt, **kwargs)
    assert 0 <= from_checkpoint["loss"] < 1

    site = tmp_path / "site"
    export_checkpoint(ckpt, site)
    meta = json.loads((site / "model.json").read_text())
    assert meta["perception"]["name"] == "cross" and meta["perception"]["n_ops"] == 2
    from_folder = evaluate_model(site, **kwargs)
    assert from_folder["loss"] == pytest.approx(from_checkpoint["loss"], rel=1e-5)
