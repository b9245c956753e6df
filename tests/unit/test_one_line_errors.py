"""Bad input stops with one line naming what is wrong, before any work is done (or, where the work is done, without
losing it): seeds, unknown settings, callback settings, checkpoints whose weights do not fit, CLI arguments, run
directories that cannot be written, an empty ``WANDB_MODE``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ncalab.evaluate
import ncalab.evaluate.cli
from ncalab.demo.__main__ import main as demo_main
from ncalab.errors import ConfigError
from ncalab.train import run


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=-1", r"seed=-1 is not valid; expected an integer in \[0, 4294967295\]"),
        ("seed=4294967296", r"seed=4294967296 is not valid"),
        ("+guard.foo=1", r"guard\.foo is not a setting of guard; accepted: action, enabled, "),
        ("+optim.momentum=0.9", r"optim \(torch\.optim\.Adam\): .*unexpected keyword argument 'momentum'"),
        ("optim.lr=-0.1", r"optim\.lr=-0\.1 is not valid; expected a number > 0"),
        ("+optim.eps=-1", r"optim \(torch\.optim\.Adam\): Invalid epsilon value: -1"),
        (
            "+callbacks.foo=1",
            r"callbacks\.foo=1 is not valid; expected null \(off\) or a mapping with a _target_",
        ),
        ("+logger.bar=[1]", r"logger\.bar=\[1\] is not valid"),
        ("+callbacks.x._target_=builtins.dict", r"callbacks\.x builds a dict, not a Lightning callback"),
        (
            "callbacks.media.frame_every=0",
            r"callbacks\.media: frame_every=0 is not valid; expected an integer >= 1",
        ),
        ("callbacks.media.fps=0", r"callbacks\.media: fps=0 is not valid"),
        ("callbacks.media.every_n_steps=-1", r"callbacks\.media: every_n_steps=-1 is not valid"),
        ("callbacks.media.scale=0", r"callbacks\.media: scale=0 is not valid"),
        ("callbacks.media.growth_steps=-3", r"callbacks\.media: growth_steps=-3 is not valid"),
        ("callbacks.media.pool_samples=0", r"callbacks\.media: pool_samples=0 is not valid"),
        ("callbacks.evaluation.horizon=abc", r"callbacks\.evaluation: horizon='abc' is not valid"),
        ("callbacks.evaluation.rollouts=1.5", r"callbacks\.evaluation: rollouts=1\.5 is not valid"),
        ("callbacks.checkpoint.every_n_train_steps=abc", r"callbacks\.checkpoint\.every_n_train_steps='abc'"),
    ],
)
def test_bad_values_stop_the_run_before_training_naming_the_key(smoke_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        run(smoke_cfg("logger=csv", override))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["perception.levels=0"], r"^perception\.levels=0 is not valid; expected an integer >= 1"),
        (["perception.levels=two"], r"^perception\.levels='two' is not valid"),
        (
            ["perception.levels=6", "data.target_size=16"],  # a 24x24 grid: the coarsest level pools by 32
            r"^perception\.levels=6: the coarsest level pools by 32, more than the 24x24 grid's smaller side "
            r"\(24\); at most perception\.levels=5 on this grid",
        ),
        (["perception.ops=[sobel3_x,sobel4_y]"], r"^perception\.ops: unknown operator 'sobel4_y'; known: "),
        (["perception.upsample=bicubic"], r"^perception\.upsample='bicubic' is not valid; expected bilinear"),
    ],
)
def test_bad_multiscale_settings_stop_the_run_before_training_naming_the_key(
    smoke_cfg, tmp_path, overrides, message
):
    """perception=multiscale: its levels, operators and upsampling are checked when it is built, and its coarsest
    level against the grid where the grid is first known (the data module and the model meet)."""
    with pytest.raises(ConfigError, match=message) as err:
        run(smoke_cfg("logger=csv", "perception=multiscale", *overrides))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_unwritable_run_directory_is_refused(smoke_cfg, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"cannot create the run directory"):
        run(smoke_cfg(out=tmp_path / "file" / "run"))


@pytest.mark.parametrize("port", ["80000", "-1", "http"])
def test_demo_serve_refuses_a_port_that_is_none(capsys, port):
    with pytest.raises(SystemExit) as exit_:
        demo_main(["serve", "--port", port])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--port" in err
    assert "0-65535" in err or "not a port number" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rollouts", "0"], "--rollouts: 0 is below 1"),
        (["--regrow-steps", "-1"], "--regrow-steps: -1 is below 1"),
        (["--seed", "-1"], "--seed: -1 is below 0"),
        (["--seed", str(2**64)], f"--seed: {2**64} is above"),
    ],
)
def test_evaluate_refuses_bad_counts_before_evaluating(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        ncalab.evaluate.main(["whatever.ckpt", *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


FAKE = {"horizon": 24, "loss": 0.5}


@pytest.fixture
def fake_evaluation(monkeypatch):
    calls = []

    def evaluate_model(path, **kwargs):
        calls.append(path)
        return dict(FAKE)

    for module in (ncalab.evaluate, ncalab.evaluate.cli):  # the package, and the command line that calls them
        monkeypatch.setattr(module, "evaluate_model", evaluate_model)
        monkeypatch.setattr(module, "format_evaluation", lambda result: "table")
    return calls


def test_evaluate_output_that_cannot_be_written_is_refused_before_evaluating(
    tmp_path, capsys, fake_evaluation
):
    (tmp_path / "file").write_text("x")
    assert ncalab.evaluate.main(["m.ckpt", "--output", str(tmp_path / "file" / "out.json")]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and len(err.strip().splitlines()) == 1
    assert fake_evaluation == []  # nothing computed for nothing
    # a folder that does not exist yet is created
    assert ncalab.evaluate.main(["m.ckpt", "--output", str(tmp_path / "new" / "deeper" / "out.json")]) == 0
    assert json.loads((tmp_path / "new" / "deeper" / "out.json").read_text()) == FAKE


def test_evaluate_keeps_the_result_when_the_write_fails(tmp_path, capsys, fake_evaluation, monkeypatch):
    target = tmp_path / "out.json"
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self == target:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    assert ncalab.evaluate.main(["m.ckpt", "--output", str(target)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == FAKE  # the computed result is not lost
    assert "No space left on device" in captured.err and "printed above" in captured.err


def test_a_wandb_mode_wandb_does_not_know_is_refused_naming_it(smoke_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(
        ConfigError, match=r"WANDB_MODE='sometimes' is not a W&B mode; accepted: online, offline"
    ):
        run(smoke_cfg("logger=wandb"))
