"""Evaluate a trained NCA: quality, persistence (how long the pattern holds) and regeneration.

    python -m ncalab.evaluate PATH [--rollouts 4] [--long-run 500,1000,2000] [--video]

PATH is a ``.ckpt`` written by ncalab or an exported model folder (``model.json`` + ``model.bin``, as written by
``python -m ncalab.demo export``). Prints one JSON object (a short table goes to stderr) and writes it beside the
checkpoint (``<checkpoint stem>.eval.json``) or into the folder (``<folder>/evaluation.json``).

The same measurement (:func:`measure_nca`) runs at the end of every training run; ``evaluation.json``,
``summary.json``, ``final.png``, the loggers' summaries, ``python -m ncalab.compare`` and the sweep objective all
read its result (its keys are listed in :mod:`ncalab.runs.folder`).

The parts: :mod:`ncalab.evaluate.measure` (what is measured), :mod:`ncalab.evaluate.load` (checkpoints and
exported folders), :mod:`ncalab.evaluate.cli` (the command line). Everything is importable from here too.
"""

from ncalab.evaluate.cli import default_output, format_evaluation, main, output_problem
from ncalab.evaluate.load import _target_and_horizon, evaluate_checkpoint, evaluate_model, load_model
from ncalab.evaluate.measure import (
    GROWN_MIN_GAIN_DB,
    HOLD_FACTOR,
    LONG_RUN_STEPS,
    MAX_STEPS,
    RECOVERY_FACTOR,
    EvaluationError,
    Measurement,
    compare_at_size,
    evaluate_nca,
    holds_steps,
    long_run,
    measure_nca,
    parse_steps,
    shape_trace,
)

__all__ = [
    "GROWN_MIN_GAIN_DB",
    "HOLD_FACTOR",
    "LONG_RUN_STEPS",
    "MAX_STEPS",
    "RECOVERY_FACTOR",
    "EvaluationError",
    "Measurement",
    "_target_and_horizon",
    "compare_at_size",
    "default_output",
    "evaluate_checkpoint",
    "evaluate_model",
    "evaluate_nca",
    "format_evaluation",
    "holds_steps",
    "load_model",
    "long_run",
    "main",
    "measure_nca",
    "output_problem",
    "parse_steps",
    "shape_trace",
]
