"""``perception=multiscale`` through every tool: a smoke run on an odd grid trains, checkpoints and evaluates; the
checkpoint resumes, evaluates with ``python -m ncalab.evaluate``, exports to a folder that evaluates exactly like
it, and refuses to resume with other levels; a two-job sweep names its settings and ``python -m ncalab.compare``
reports it. (The unit tests are in test_perception.py, the fast path in test_fast_path.py, the bad settings in
test_one_line_errors.py, the browser in test_demo.py.)"""

from __future__ import annotations


def test_the_wandb_run_name_names_the_levels_bank_and_upsampling():
    from ncalab.loggers import run_name

    node = {"name": "multiscale", "levels": 3, "ops": ["sobel3_x", "laplace3"], "upsample": "nearest"}
    full = "perception.levels=3,perception.ops=[sobel3_x,laplace3],perception.upsample=nearest"
    assert run_name(None, node) == f"perception=multiscale,{full}"
    assert run_name("seed=1", node) == f"seed=1,{full}"
    given = "perception=multiscale,perception.levels=3"
    assert run_name(given, node) == f"{given},perception.ops=[sobel3_x,laplace3],perception.upsample=nearest"
