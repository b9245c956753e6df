"""The run folder: every file a run leaves in its directory, and their keys, written down once.

The writers (:mod:`ncalab.runs.status`, :mod:`ncalab.callbacks`, :mod:`ncalab.train`, Hydra, the loggers) and the
readers (:mod:`ncalab.compare`, :mod:`ncalab.runs.dirs`, :mod:`ncalab.train`, ``python -m ncalab.pretrained``) use
the names below instead of spelling them. This module imports nothing of ncalab's and nothing heavy:
``ncalab.compare`` reads run folders without the training code.

A run folder (``outputs/runs/<date>_<time>/``, or ``<sweep dir>/<job number>/`` in a multirun) holds:

``status.json`` (:data:`STATUS_FILE`; :class:`ncalab.runs.status.RunStatus`, rank 0, replaced whole on every write)
    ``status``: one of :data:`STATUSES` (``running``, ``finished``, ``failed``, ``interrupted``);
    ``overrides``: the job's command-line overrides; ``started``, ``ended`` (``null`` while running),
    ``heartbeat``: UTC ISO-8601 times, the heartbeat refreshed every ``ncalab.runs.dirs.HEARTBEAT_S`` seconds while
    the run lives; ``pid``, ``host``: where it runs. A failed run adds ``error`` (``<Type>: <message>``); an
    interrupted one ``signal`` (``SIGINT``/``SIGTERM``), ``exit_code`` (128 + the signal number) and ``error``,
    and, when it saved a checkpoint on the way out, ``step`` and ``checkpoint`` (its path). Keys:
    :data:`STATUS_KEYS`. A ``running`` run whose process is gone or whose heartbeat stopped long ago is shown as
    unfinished (:func:`ncalab.runs.dirs.gone_reason`).

``config.yaml`` (:data:`CONFIG_FILE`; :func:`ncalab.train.run`)
    The resolved config of the run.

``checkpoints/last.ckpt`` (:data:`CHECKPOINTS_DIR`, :data:`LAST_CHECKPOINT`; Lightning's ``ModelCheckpoint``
every ``callbacks.checkpoint.every_n_train_steps`` and :class:`ncalab.callbacks.FinalCheckpoint` at the end or on a
stop)
    Model, optimiser, scheduler, step, the whole sample pool (``datamodule`` state), the run config
    (``hyper_parameters.config``), the rollout-length generator (``ncalab_step_generator``) and the W&B run id
    (:data:`ncalab.loggers.CHECKPOINT_WANDB_ID`, with a W&B logger). Written beside itself, then renamed over.

``evaluation.json`` (:data:`EVALUATION_FILE`; :class:`ncalab.callbacks.RunEvaluation` at the end of training)
    The result of :func:`ncalab.evaluate.measure_nca` (what ``python -m ncalab.evaluate`` prints). Keys:
    :data:`EVALUATION_KEYS`: ``horizon``, ``rollouts``, ``loss``, ``psnr``, ``ssim`` (after ``horizon`` steps
    from the seed, over ``rollouts`` rollouts); ``long_run`` (:data:`LONG_RUN_KEYS`: ``loss`` {step: loss or
    ``null``}, ``non_finite``, ``holds_steps``, ``hold_factor``, ``reference_loss``, ``trace`` {step: {``excess``,
    ``missing``, ``hidden_max``}}: :func:`ncalab.evaluate.shape_trace`); ``regeneration``
    (:data:`REGENERATION_KEYS`: ``grow_steps``, ``regrow_steps``, ``recovery_factor``, ``recovery_reference_loss``,
    ``recovery_threshold``, ``undamaged_loss``, ``undamaged_psnr``, ``grown_psnr_min``, ``grown``,
    ``pattern_box``, ``regrown`` (how many of the five cuts regrew), ``regrown_wide`` (how many of the four wide
    cuts), and one object per cut region ``left``, ``right``, ``top``, ``bottom``, ``center``, ``left_wide``,
    ``right_wide``, ``top_wide``, ``bottom_wide`` with :data:`REGION_KEYS`: ``damaged_loss``, ``loss``,
    ``steps_to_recover``, ``damaged``, ``regrown``). With ``callbacks.evaluation.at_size`` (or ``--at-size``) also ``at_size``
    (:func:`ncalab.evaluate.compare_at_size`: ``size``, ``from_size``, ``psnr``, ``ssim``).

``summary.json`` (:data:`SUMMARY_FILE`; :class:`ncalab.callbacks.RunEvaluation`)
    The headline numbers, for the sweep objective (:func:`ncalab.train.run` reads ``eval_loss``, else
    ``train_loss``) and ``python -m ncalab.compare``. Keys: :data:`SUMMARY_KEYS`: ``perception``, ``steps``,
    ``train_loss``; from ``evaluation.json``: ``eval_steps`` (its ``horizon``), ``eval_loss`` (its ``loss``),
    ``psnr``, ``ssim``, ``holds_steps``, ``long_run_loss`` (the loss at the last long-run check),
    ``non_finite``, ``grown``, ``regrown``, ``regrown_wide``; ``wall_time_s``, ``s_per_iter`` (``null`` when no step ran), ``peak_memory_gb`` (the training's
    peak: the process's resident set on CPU, torch's allocations on CUDA; :mod:`ncalab.runs.memory`; ``null``
    where it cannot be counted),
    ``parameters``, ``grid`` ([H, W], cells), ``render`` (``cells`` or ``decoder``), ``image`` ([H, W] pixels: the
    grid x ``render.scale``), ``divergences``, ``divergence_events`` (the guard's events: ``step``,
    ``cause``, ``action``, ``restored_step``, ``lr``), ``stopped_by_guard``; ``at_size``, ``psnr_at_size``,
    ``ssim_at_size`` (the image compared at ``callbacks.evaluation.at_size`` px; ``null`` without it).

``final.png`` (:data:`FINAL_IMAGE`; :class:`ncalab.callbacks.RunEvaluation`)
    The target beside the first pattern that evaluation grew from the seed to the horizon, over white.

``media/`` (:data:`MEDIA_DIR`; :class:`ncalab.callbacks.RolloutMedia`)
    ``growth_<tag>.mp4|gif``, ``regeneration_<tag>.mp4|gif`` and ``pool_<tag>.png`` (:func:`media_name`), with
    ``<tag>`` ``step000500`` (:func:`step_tag`) every ``callbacks.media.every_n_steps`` steps and
    :data:`FINAL_TAG` at the end.

``csv/version_N/metrics.csv`` (:data:`CSV_DIR`, :data:`METRICS_CSV`; Lightning's ``CSVLogger``,
``conf/logger/*.yaml`` ``name: csv``), and its ``hparams.yaml``
    One row per logged step: ``step``, ``epoch``, ``train/loss``, ``train/log10_loss``, ``train/lr``, ``train/rollout_steps``,
    ``train/grad_norm``, ``train/step_time_s``, ``train/cells_steps_per_s``, ``guard/divergences``,
    ``perception/scale_<i>`` (a perception with a response scale), ``train/overflow`` (with the overflow
    penalty), then the end-of-run ``final/*`` and ``eval/*`` numbers. A resumed run writes the next ``version_N``;
    readers merge them in version order (:func:`metrics_csvs`), later versions winning a step.

``tensorboard/`` (:data:`TENSORBOARD_DIR`, ``logger=tensorboard``), ``wandb/`` (:data:`WANDB_DIR`, the offline W&B
run when there are no credentials)
    The other loggers' own files.

``.hydra/`` (:data:`HYDRA_DIR`; Hydra) and ``train.log``
    Hydra's ``config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` (:data:`OVERRIDES_FILE`: the job's
    overrides, a YAML list of ``key=value``); ``train.log``: the job's log.

``growth.gif`` (:data:`OLD_GROWTH_GIF`)
    Written by runs of earlier versions only; ``compare`` still shows it.

A sweep folder (``outputs/multirun/<date>_<time>/``) holds the job folders ``0/``, ``1/``, ... (each a run folder
as above), Hydra's ``multirun.yaml`` (:data:`MULTIRUN_FILE`; the sweep's own overrides are its
``hydra.overrides.task``) and ``report.html`` (:data:`REPORT_FILE`; ``python -m ncalab.compare``).
"""

from __future__ import annotations

from pathlib import Path

# --- files of a run folder
STATUS_FILE = "status.json"
CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
EVALUATION_FILE = "evaluation.json"
SUMMARY_FILE = "summary.json"
FINAL_IMAGE = "final.png"
MEDIA_DIR = "media"
FINAL_TAG = "final"
CSV_DIR = "csv"
CSV_VERSION_PREFIX = "version_"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
HYDRA_DIR = ".hydra"
OVERRIDES_FILE = "overrides.yaml"
OLD_GROWTH_GIF = "growth.gif"

# --- files of a sweep folder
MULTIRUN_FILE = "multirun.yaml"
REPORT_FILE = "report.html"

# --- status.json
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"
STATUSES = (RUNNING, FINISHED, FAILED, INTERRUPTED)
STATUS_KEYS = (
    "status",
    "overrides",
    "started",
    "ended",
    "pid",
    "host",
    "heartbeat",
    "error",
    "signal",
    "exit_code",
    "step",
    "checkpoint",
)

# --- summary.json, in the order it is written
SUMMARY_KEYS = (
    "perception",
    "steps",
    "train_loss",
    "eval_steps",
    "eval_loss",
    "psnr",
    "ssim",
    "holds_steps",
    "long_run_loss",
    "non_finite",
    "grown",
    "regrown",
    "regrown_wide",
    "wall_time_s",
    "s_per_iter",
    "peak_memory_gb",
    "parameters",
    "grid",
    "render",
    "image",
    "divergences",
    "divergence_events",
    "stopped_by_guard",
    "at_size",
    "psnr_at_size",
    "ssim_at_size",
)

# --- evaluation.json
EVALUATION_KEYS = ("horizon", "rollouts", "loss", "psnr", "ssim", "long_run", "regeneration")
LONG_RUN_KEYS = ("loss", "non_finite", "holds_steps", "hold_factor", "reference_loss", "trace")
REGENERATION_KEYS = (
    "grow_steps",
    "regrow_steps",
    "recovery_factor",
    "recovery_reference_loss",
    "recovery_threshold",
    "undamaged_loss",
    "undamaged_psnr",
    "grown_psnr_min",
    "grown",
    "pattern_box",
    "regrown",
    "regrown_wide",
)
REGION_KEYS = ("damaged_loss", "loss", "steps_to_recover", "damaged", "regrown")


def last_checkpoint(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints/last.ckpt``."""
    return Path(run_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT


def overrides_file(run_dir: str | Path) -> Path:
    """``<run_dir>/.hydra/overrides.yaml``."""
    return Path(run_dir) / HYDRA_DIR / OVERRIDES_FILE


def step_tag(step: int) -> str:
    """The tag of the media recorded at ``step``: ``step000500``."""
    return f"step{step:06d}"


def media_name(kind: str, tag: str, suffix: str) -> str:
    """The file name of one medium under ``media/``: ``growth_final.mp4``, ``pool_step000500.png``."""
    return f"{kind}_{tag}.{suffix.lstrip('.')}"


def metrics_csvs(run_dir: str | Path) -> list[Path]:
    """Every ``csv/version_N/metrics.csv`` of the run, in version order."""
    found = []
    for d in (Path(run_dir) / CSV_DIR).glob(f"{CSV_VERSION_PREFIX}*"):
        suffix = d.name.removeprefix(CSV_VERSION_PREFIX)
        if suffix.isdigit() and (d / METRICS_CSV).is_file():
            found.append((int(suffix), d / METRICS_CSV))
    return [path for _, path in sorted(found)]
