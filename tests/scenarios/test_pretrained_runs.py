"""Shipped models: each comes from a config in the repository, its card shows its evaluation, and it holds."""

from __future__ import annotations

import json

from ncalab.pretrained.__main__ import main as ship_main
from ncalab.train import run


def test_shipping_a_run_exports_evaluates_and_writes_the_card(smoke_cfg, tmp_path, capsys):
    run(smoke_cfg())
    dest = tmp_path / "shipped"
    assert ship_main([str(tmp_path / "run"), "smoke", "--dest", str(dest), "--long-run", "16,32"]) == 0
    assert {"model.json", "model.bin", "target.png", "evaluation.json", "MODEL_CARD.md"} <= {
        p.name for p in dest.iterdir()
    }
    evaluation = json.loads((dest / "evaluation.json").read_text())
    assert list(evaluation["long_run"]["loss"]) == ["16", "32"]
    assert evaluation["model"] == str(dest.resolve()), "the folder it ships in, not where it was staged"
    card = (dest / "MODEL_CARD.md").read_text()
    assert "# Model card: smoke" in card and "experiment=pretrained_smoke" in card
    assert f"{evaluation['psnr']:.1f} dB" in card
    assert "holds_steps" in capsys.readouterr().out
    assert (
        f"| wide cuts: a half and an eighth of the pattern past the middle | {evaluation['regeneration']['regrown_wide']}/4: left_wide "
        in card
    )
