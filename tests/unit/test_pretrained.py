"""Shipped models: each comes from a config in the repository, its card shows its evaluation, and it holds."""

from __future__ import annotations

import json

import pytest
from conftest import CONF, make_cfg
from omegaconf import OmegaConf

from ncalab.pretrained import names
from ncalab.pretrained.__main__ import main as ship_main

SHIPPED = names()


def test_the_default_model_ships():
    from ncalab.demo import DEFAULT_PRETRAINED

    assert DEFAULT_PRETRAINED in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_each_model_comes_from_its_experiment_config(name, tmp_path):
    """`python train.py experiment=pretrained_<name>` retrains what ships: same target, grid, model, recipe."""
    assert (CONF / "experiment" / f"pretrained_{name}.yaml").is_file()
    cfg = OmegaConf.to_container(make_cfg(tmp_path, f"experiment=pretrained_{name}"), resolve=True)
    from ncalab.pretrained.__main__ import package_dir

    shipped = json.loads((package_dir() / name / "model.json").read_text())["config"]
    for section, keys in {
        "data": (
            "target",
            "target_size",
            "padding",
            "batch_size",
            "pool_size",
            "mode",
            "damage_share",
            "damage_radius",
        ),
        "rollout": ("min_steps", "max_steps", "backprop_steps"),
        "model": ("channels", "hidden", "fire_rate", "alive_threshold", "update_bias"),
    }.items():
        for key in keys:
            assert shipped[section].get(key) == cfg[section][key], f"{name}: {section}.{key}"
    assert shipped["perception"]["name"] == cfg["perception"]["name"]
    render = shipped.get("render") or {
        "name": "cells"
    }  # models from before the decoder drew one pixel per cell
    assert render["name"] == cfg["render"]["name"], name
    if render["name"] == "decoder":
        for key in ("scale", "hidden", "layers", "omega"):
            assert render[key] == cfg["render"][key], f"{name}: render.{key}"
    if "ops" in shipped["perception"]:  # models from before operator banks name their perception only
        assert shipped["perception"]["ops"] == cfg["perception"]["ops"]


@pytest.mark.parametrize("name", SHIPPED)
def test_each_card_shows_the_shipped_evaluation(name):
    from ncalab.pretrained.__main__ import package_dir

    folder = package_dir() / name
    evaluation = json.loads((folder / "evaluation.json").read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"experiment=pretrained_{name}" in card
    assert f"{evaluation['long_run']['holds_steps']} steps" in card
    assert f"{evaluation['regeneration']['regrown']}/5" in card
    assert "10000" in evaluation["long_run"]["loss"]


def test_shipping_from_a_missing_run_names_it(tmp_path, capsys):
    assert ship_main([str(tmp_path / "nothing"), "x", "--dest", str(tmp_path / "d")]) == 2
    assert "nothing" in capsys.readouterr().err


def _card_for_target(tmp_path, target: str) -> str:
    """The card write_card writes for the shipped flower's model.json and evaluation with ``target`` as the
    target it was trained on."""
    from ncalab.pretrained.__main__ import package_dir, write_card

    shipped = package_dir() / "flower"
    meta = json.loads((shipped / "model.json").read_text())
    meta["config"]["data"]["target"] = target
    (tmp_path / "model.json").write_text(json.dumps(meta))
    evaluation = json.loads((shipped / "evaluation.json").read_text())
    return write_card("x", tmp_path, evaluation, {}).read_text()


def test_the_card_of_a_model_trained_on_an_emoji_names_it_openmoji_and_its_licence(tmp_path):
    from ncalab.targets.emoji import emoji_attribution

    card = _card_for_target(tmp_path, "emoji:1F40C")
    attribution = emoji_attribution("emoji:1F40C")
    assert attribution in card.splitlines()[-1]
    assert "the emoji snail (U+1F40C) from OpenMoji" in attribution and "CC BY-SA 4.0" in attribution
    assert "grows the `emoji:1F40C` target" in card, "not called a built-in target"


def test_the_card_of_a_model_trained_on_anything_else_has_no_emoji_licence(tmp_path):
    card = _card_for_target(tmp_path, "flower")
    assert "grows the built-in `flower` target" in card
    assert "OpenMoji" not in card and "CC BY-SA" not in card


def test_the_card_keeps_the_emoji_licence_where_the_emoji_set_is_not_installed(tmp_path, monkeypatch):
    import ncalab.targets.emoji as emoji_set
    from ncalab.errors import TargetError

    def missing(target):
        raise TargetError("emoji names need the `emoji` package, which is not installed: make install")

    monkeypatch.setattr(emoji_set, "emoji_attribution", missing)
    card = _card_for_target(tmp_path, "emoji:snail")
    assert "`emoji:snail` from OpenMoji" in card and "CC BY-SA 4.0" in card


def test_the_card_says_how_a_multi_scale_perception_reads_the_grid():
    from ncalab.pretrained.__main__ import perception_row

    row = perception_row(
        {"name": "multiscale", "n_ops": 9, "kernel_size": 3, "levels": 3, "upsample": "bilinear"}
    )
    assert "3 operators, 3x3, read at 3 scales with bilinear upsampling: 9 responses per channel" in row
    assert (
        perception_row({"name": "operators", "n_ops": 3, "kernel_size": 3})
        == "| perception | `operators` (3 operators, 3x3) |"
    )


def test_the_card_gives_the_threads_a_run_was_pinned_to(tmp_path):
    from ncalab.pretrained.__main__ import package_dir, write_card

    shipped = package_dir() / "flower"
    meta = json.loads((shipped / "model.json").read_text())
    evaluation = json.loads((shipped / "evaluation.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps(meta))
    for threads, expected in (
        (1, "on a 2-core CPU, 1 thread |"),
        (2, "on a 2-core CPU, 2 threads |"),
        (None, "on a 2-core CPU |"),
    ):
        card = write_card("x", tmp_path, evaluation, {"wall_time_s": 100.0, "threads": threads}).read_text()
        assert f"| wall time | 100 s {expected}" in card
