"""Compare the runs of a Hydra multirun sweep offline: ``python -m ncalab.compare <sweep dir>``.

Reads only what the runs wrote (``status.json``, ``summary.json``, ``evaluation.json``,
``csv/version_N/metrics.csv``, ``final.png``, videos, ``.hydra/overrides.yaml``: the run-folder format, files and
keys, is written down in :mod:`ncalab.runs.folder`), never the training code, and writes one self-contained
``report.html`` (images and videos as data URIs, loss curves as inline SVG) and prints the same numbers as a
plain-text table, or as Markdown tables (``--markdown``, for a README): a row per run, then the runs that differ
only by ``seed=`` pooled, mean ± sample std over seeds of every number.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import csv
import html
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback

from ncalab.runs import folder as run_folder
from ncalab.runs.dirs import gone_reason

MAX_EMBED_BYTES = 20 * 1024 * 1024
MAX_CURVE_POINTS = 1000
UNFINISHED = "unfinished"  # compare's own: no status.json, or a running run that is evidently gone
STATUS_ORDER = (
    run_folder.FINISHED,
    run_folder.FAILED,
    run_folder.INTERRUPTED,
    run_folder.RUNNING,
    UNFINISHED,
)
# (summary key, table header, formatter name) for the per-run columns after job/overrides/status.
RUN_COLUMNS = (
    ("train_loss", "train_loss", "float"),
    ("eval_loss", "eval_loss", "float"),
    ("psnr", "psnr_db", "psnr"),
    ("ssim", "ssim", "float"),
    ("long_run_loss", "loss@long", "float"),
    ("grown", "grown", "bool"),
    ("holds_steps", "holds_steps", "int"),
    ("regrown", "regrown/5", "int"),
    ("steps_to_threshold", "steps<thr", "int"),
    ("divergences", "diverged", "int"),
    ("wall_time_s", "wall_s", "seconds"),
    ("s_per_iter", "s/iter", "float"),
    ("steps", "steps", "int"),
    ("parameters", "params", "int"),
)
# Shown only when a run has them: the wide cuts, the image compared at a common size (callbacks.evaluation.at_size).
OPTIONAL_COLUMNS = (
    ("regrown_wide", "wide/4", "int"),  # cuts past the middle (evaluation.json from before them has none)
    (
        "peak_memory_gb",
        "peak_gb",
        "float",
    ),  # the training's peak memory (summary.json from before it has none)
    ("psnr_at_size", "psnr@size_db", "psnr"),
    ("ssim_at_size", "ssim@size", "float"),
    ("at_size", "size_px", "int"),
)
# Every column is pooled over seeds (a yes/no column as the count of yes).
AGGREGATE_KEYS = tuple(key for key, _, _ in RUN_COLUMNS + OPTIONAL_COLUMNS)


def columns(runs: list[RunRecord]) -> tuple[tuple[str, str, str], ...]:
    """:data:`RUN_COLUMNS`, and those of :data:`OPTIONAL_COLUMNS` that some run has a number for."""
    extra = tuple(c for c in OPTIONAL_COLUMNS if any(r.metric(c[0]) is not None for r in runs))
    return RUN_COLUMNS + extra


# The train loss a run must reach for ``steps_to_threshold`` (``--threshold``).
LOSS_THRESHOLD = 0.01
MEDIA_TYPES = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4", ".webm": "video/webm"}
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
DASHES = ("", "6 3", "2 2", "8 3 2 3", "4 4")


@dataclass
class RunRecord:
    """One job of the sweep, as read from its directory."""

    job: str
    path: Path
    overrides: list[str]
    status: str  # one of STATUS_ORDER
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, train/loss), merged over versions
    final_png: Path | None = None
    videos: list[Path] = field(default_factory=list)  # the ones worth showing: final, or the latest
    other_videos: int = 0  # intermediate videos under media/ not shown
    # From evaluation.json and the loss curve: ssim, long-run loss, holds_steps, regions regrown, steps to a loss
    # threshold (summary.json's own values win: both come from the same end-of-run measurement).
    derived: dict[str, Any] = field(default_factory=dict)

    @property
    def group_key(self) -> tuple[str, ...]:
        return tuple(o for o in self.overrides if _override_key(o) != "seed")

    def metric(self, key: str) -> float | None:
        """A summary number (a yes/no as 1/0); for runs without a summary, the last logged train loss and step."""
        raw = self.summary.get(key, self.derived.get(key))
        if isinstance(raw, bool):
            return float(raw)
        value = _number(raw)
        if value is None and not self.summary and self.curve:
            # A failed or killed run has no summary: how far it got is still worth showing.
            if key == "train_loss":
                return self.curve[-1][1]
            if key == "steps":
                return self.curve[-1][0]
        return value


@dataclass
class Stat:
    mean: float
    std: float  # sample standard deviation (n - 1); NaN when n < 2
    n: int


@dataclass
class Group:
    """Runs that differ only in ``seed=``."""

    overrides: tuple[str, ...]
    runs: list[RunRecord]
    stats: dict[str, Stat | None]

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or "(defaults)"

    def short_label(self, common: tuple[str, ...]) -> str:
        """The overrides that set this group apart (``common``: those every run of the sweep shares)."""
        return " ".join(o for o in self.overrides if o not in common) or self.label

    @property
    def counts(self) -> dict[str, int]:
        return {s: n for s in STATUS_ORDER if (n := sum(r.status == s for r in self.runs))}


# --------------------------------------------------------------------------------------------- reading


def collect_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """Every job directory of the sweep, in job order (numbered dirs first)."""
    sweep = Path(sweep_dir)
    jobs = [
        d
        for d in sweep.iterdir()
        if d.is_dir()
        and (
            d.name.isdigit() or (d / run_folder.HYDRA_DIR).is_dir() or (d / run_folder.STATUS_FILE).is_file()
        )
    ]
    jobs.sort(key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))
    return [_read_run_or_mark(d) for d in jobs]


def _read_run_or_mark(job: Path) -> RunRecord:
    """:func:`read_run`, or, when the directory cannot be read at all, a row that says so (one bad run never
    stops the report of the others)."""
    try:
        return read_run(job)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged or half-deleted run dir holds
        return RunRecord(
            job=job.name,
            path=job,
            overrides=[],
            status=UNFINISHED,
            error=f"could not read this run ({type(exc).__name__}: {exc})",
        )


def read_run(job_dir: str | Path) -> RunRecord:
    job = Path(job_dir)
    problems: list[str] = []
    status_file = _read_json(job / run_folder.STATUS_FILE, problems)
    summary = _read_json(job / run_folder.SUMMARY_FILE, problems)
    if summary is not None and not isinstance(summary, dict):
        problems.append(f"{run_folder.SUMMARY_FILE} is not a JSON object")
    summary = summary if isinstance(summary, dict) else {}
    error = None
    if isinstance(status_file, dict) and status_file.get("status") in STATUS_ORDER:
        status = status_file["status"]
        error = status_file.get("error")
        gone = gone_reason(status_file)
        if gone:  # killed without recording an end: it will never finish
            status, error = UNFINISHED, gone
    else:
        status = run_folder.FINISHED if summary else UNFINISHED

    overrides = _read_overrides(run_folder.overrides_file(job))
    if overrides is None and isinstance(status_file, dict):
        overrides = status_file.get("overrides")
    if not isinstance(overrides, list):
        overrides = []
    # As the user typed them: Hydra stores a sweep value's ':' escaped (data.target=emoji\:snail).
    overrides = [
        str(o).replace("\\:", ":") for o in overrides if not _override_key(str(o)).startswith("hydra.")
    ]

    videos, other_videos = _pick_videos(job)
    curve = read_loss_curve(job, problems=problems)
    evaluation = _read_json(job / run_folder.EVALUATION_FILE, problems)
    try:
        derived = derive_metrics(evaluation, curve, summary)
    except Exception as exc:  # noqa: BLE001 - valid JSON of an unexpected shape
        problems.append(f"{run_folder.EVALUATION_FILE} is malformed ({type(exc).__name__}: {exc})")
        derived = derive_metrics(None, curve, summary)
    if problems:
        error = "; ".join([*([str(error)] if error else []), *problems])
    return RunRecord(
        job=job.name,
        path=job,
        overrides=overrides,
        status=status,
        error=str(error) if error else None,
        summary=summary,
        curve=curve,
        final_png=job / run_folder.FINAL_IMAGE if (job / run_folder.FINAL_IMAGE).is_file() else None,
        videos=videos,
        other_videos=other_videos,
        derived=derived,
    )


def derive_metrics(
    evaluation: Any,
    curve: list[tuple[int, float]],
    summary: dict[str, Any],
    threshold: float = LOSS_THRESHOLD,
) -> dict[str, Any]:
    """Numbers for the table from ``evaluation.json`` (written at the end of training) and the loss curve.

    ``regrown`` counts the cuts that ``ncalab.evaluate`` counted as regrown (a grown pattern, a cut that did
    damage, the loss back in time); an ``evaluation.json`` written before that rule has no ``regrown`` and shows
    none, since it counted cuts of patterns that were never grown.
    """
    out: dict[str, Any] = {"steps_to_threshold": next((s for s, v in curve if v <= threshold), None)}
    if "divergences" in summary:
        out["divergences"] = summary["divergences"]
    if not isinstance(evaluation, dict):
        return out
    out["ssim"] = _number(evaluation.get("ssim"))
    long_run = _mapping(evaluation.get("long_run"), "long_run")
    losses = _mapping(long_run.get("loss"), "long_run.loss")
    if losses:
        last = max(losses, key=int)
        out["long_run_loss"] = _number(losses[last])
        out["long_run_step"] = int(last)
    out["non_finite"] = long_run.get("non_finite")
    out["holds_steps"] = _number(long_run.get("holds_steps"))
    regen = _mapping(evaluation.get("regeneration"), "regeneration")
    out["grown"] = regen.get("grown")
    out["regrown"] = regen.get("regrown") if isinstance(regen.get("regrown"), int) else None
    wide = regen.get("regrown_wide")
    out["regrown_wide"] = wide if isinstance(wide, int) and not isinstance(wide, bool) else None
    return out


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} is a {type(value).__name__}, not an object")
    return value


def _pick_videos(job: Path) -> tuple[list[Path], int]:
    """``growth.gif`` and, per kind under ``media/`` (growth_*, regeneration_*), the ``*_final`` video or, for
    a run that did not finish, the newest one; returns them and how many intermediate ones were left out."""
    found = sorted(
        p
        for p in (job / run_folder.MEDIA_DIR).rglob("*")
        if p.is_file() and p.suffix.lower() in {".mp4", ".webm", ".gif"}
    )
    by_kind: dict[str, list[Path]] = {}
    for path in found:
        by_kind.setdefault(path.stem.split("_")[0], []).append(path)
    # Videos recorded every N steps would swamp the report; the last one per kind is what runs are compared on.
    picked = []
    for paths in by_kind.values():
        picked += [p for p in paths if p.stem.endswith(f"_{run_folder.FINAL_TAG}")] or [
            max(paths, key=lambda p: p.stat().st_mtime)
        ]
    old_gif = job / run_folder.OLD_GROWTH_GIF  # written by earlier versions
    root_gif = [old_gif] if old_gif.is_file() else []
    return root_gif + picked, len(found) - len(picked)


def read_loss_curve(
    job_dir: str | Path, column: str = "train/loss", problems: list[str] | None = None
) -> list[tuple[int, float]]:
    """``(step, value)`` from all ``csv/version_N/metrics.csv`` in version order; later versions win a step.

    A file that cannot be read or parsed (not UTF-8, a NUL byte, cut short) is skipped, and said so in
    ``problems``; the rows read before the fault are kept."""
    by_step: dict[int, float] = {}
    for path in run_folder.metrics_csvs(job_dir):
        try:
            with path.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    try:
                        by_step[int(float(row["step"]))] = float(row[column])
                    except (KeyError, TypeError, ValueError):  # blank cells: not logged at this step
                        continue
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            if problems is not None:
                rel = path.relative_to(job_dir) if path.is_relative_to(job_dir) else path
                problems.append(f"{rel} unreadable ({type(exc).__name__}: {exc})")
            continue
    return sorted(by_step.items())


def read_sweep_overrides(sweep_dir: str | Path) -> list[str]:
    """The sweep's own command-line overrides from ``multirun.yaml`` (empty when absent or unreadable)."""
    try:
        data = yaml.safe_load((Path(sweep_dir) / run_folder.MULTIRUN_FILE).read_text())
        task = data["hydra"]["overrides"]["task"]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):  # ValueError: not UTF-8
        return []
    return [str(o) for o in task or [] if not _override_key(str(o)).startswith("hydra.")]


def _read_json(path: Path, problems: list[str] | None = None) -> Any:
    """The file's JSON, or None when it is absent or unreadable (an unreadable one is noted in ``problems``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8
        if problems is not None:
            problems.append(f"{path.name} unreadable ({type(exc).__name__})")
        return None
    try:
        return json.loads(text)  # accepts NaN / Infinity as Python writes them
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        if problems is not None:  # cut short by a killed run, or damaged
            problems.append(f"{path.name} is not valid JSON")
        return None


def _read_overrides(path: Path) -> list[Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return None
    return data if isinstance(data, list) else None


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


# --------------------------------------------------------------------------------------------- aggregating


def aggregate(runs: list[RunRecord]) -> list[Group]:
    """Group runs by their overrides without ``seed=``; statistics over the finished runs of each group."""
    grouped: dict[tuple[str, ...], list[RunRecord]] = {}
    for run in runs:
        grouped.setdefault(run.group_key, []).append(run)
    groups = []
    for key, members in grouped.items():
        finished = [r for r in members if r.status == run_folder.FINISHED]
        stats = {k: mean_std([r.metric(k) for r in finished]) for k in AGGREGATE_KEYS}
        groups.append(Group(overrides=key, runs=members, stats=stats))
    return groups


def common_overrides(groups: list[Group]) -> tuple[str, ...]:
    """The overrides (seed aside) that every run shares, such as the sweep's ``experiment=``; none for a
    single group, whose label is then all of them."""
    if len(groups) < 2:
        return ()
    shared = set(groups[0].overrides).intersection(*(g.overrides for g in groups[1:]))
    return tuple(o for o in groups[0].overrides if o in shared)


def mean_std(values: list[float | None]) -> Stat | None:
    """Mean and sample std of the values that are numbers (NaN and missing dropped; inf kept)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    if len(xs) < 2 or math.isinf(mean):
        return Stat(mean, math.nan, len(xs))
    return Stat(mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)), len(xs))


# --------------------------------------------------------------------------------------------- formatting


def format_value(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "bool":
        return "yes" if value else "no"
    if kind == "float1":
        return f"{value:,.1f}"
    if kind == "psnr":
        return f"{value:.2f}"
    if kind == "seconds":
        return f"{value:.1f}"
    return f"{value:.4g}"


def format_stat(stat: Stat | None, kind: str) -> str:
    if stat is None:
        return "-"
    if kind == "bool":  # how many of the runs: 2/3 grown
        return f"{round(stat.mean * stat.n)}/{stat.n}"
    # A mean of counts need not be whole: 1.5 regions regrown, not 1.
    mean = format_value(stat.mean, "float1" if kind == "int" and not float(stat.mean).is_integer() else kind)
    if math.isnan(stat.std):
        return mean
    return f"{mean} ± {format_std(stat.std)}"


def format_std(std: float) -> str:
    """Two significant digits, without an exponent from 100 up (1,061, not 1.1e+03)."""
    return f"{std:,.0f}" if std >= 100 else f"{std:.2g}"


def format_counts(group: Group) -> str:
    return ", ".join(f"{n} {status}" for status, n in group.counts.items())


def format_table(runs: list[RunRecord], groups: list[Group]) -> str:
    """Per-run rows, then per-group aggregates, as aligned plain text."""
    cols = columns(runs)
    header = ["job", "overrides", "status", *(h for _, h, _ in cols)]
    rows = [
        [run.job, " ".join(run.overrides) or "(defaults)", run.status]
        + [format_value(run.metric(key), kind) for key, _, kind in cols]
        for run in runs
    ]
    parts = [_align(header, rows, left=3)]

    common = common_overrides(groups)
    agg_header, agg_rows = _group_rows(groups, common)
    title = "mean ± sample std over finished runs" + (f" (all runs: {' '.join(common)})" if common else "")
    parts.append(title + "\n" + _align(agg_header, agg_rows, left=2))

    if any(not r.summary and r.curve for r in runs):
        parts[0] += "\n(runs without summary.json show their last logged train loss and step)"
    errors = [f"  job {r.job} {r.status}: {r.error}" for r in runs if r.error]
    if errors:
        parts.append("errors:\n" + "\n".join(errors))
    return "\n\n".join(parts) + "\n"


def _group_rows(groups: list[Group], common: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    cols = columns([r for g in groups for r in g.runs])
    header = ["group (seeds pooled)", "runs", *(h for _, h, _ in cols)]
    rows = [
        [g.short_label(common), format_counts(g)] + [format_stat(g.stats[k], kind) for k, _, kind in cols]
        for g in groups
    ]
    return header, rows


def format_markdown(runs: list[RunRecord], groups: list[Group]) -> str:
    """The same two tables as :func:`format_table`, in Markdown: per-run rows, then mean ± std over seeds."""
    common = common_overrides(groups)
    cols = columns(runs)
    header = ["job", "overrides", "status", *(h for _, h, _ in cols)]
    rows = [
        [run.job, f"`{' '.join(o for o in run.overrides if o not in common) or '(defaults)'}`", run.status]
        + [format_value(run.metric(key), kind) for key, _, kind in cols]
        for run in runs
    ]
    agg_header, agg_rows = _group_rows(groups, common)
    agg_rows = [[f"`{r[0]}`", *r[1:]] for r in agg_rows]
    parts = [f"All runs: `{' '.join(common)}`.", ""] if common else []
    parts += ["### Runs", "", _markdown_table(header, rows)]
    if any(not r.summary and r.curve for r in runs):
        parts += ["", "Runs without summary.json show their last logged train loss and step."]
    parts += [
        "",
        "### Mean ± sample std over seeds (finished runs)",
        "",
        _markdown_table(agg_header, agg_rows),
    ]
    errors = [f"- job {r.job} {r.status}: {r.error}" for r in runs if r.error]
    if errors:
        parts += ["", "Errors:", "", *errors]
    return "\n".join(parts) + "\n"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])


def _align(header: list[str], rows: list[list[str]], left: int) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


# --------------------------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.finished { color: #176f2c; } .failed, .interrupted { color: #b00020; } .running, .unfinished { color: #8a6d00; }
.note { color: #666; font-size: 0.85em; }
ul.legend { list-style: none; padding: 0; font-size: 0.85em; columns: 2; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.8em; max-width: 320px; word-break: break-word; }
figure img, figure video { max-width: 320px; image-rendering: pixelated; border: 1px solid #ddd; }
"""


def render_html(
    runs: list[RunRecord],
    groups: list[Group],
    *,
    sweep_dir: str | Path | None = None,
    sweep_overrides: list[str] | None = None,
    max_embed_bytes: int = MAX_EMBED_BYTES,
) -> str:
    """The whole report as one self-contained HTML document."""
    esc = html.escape
    style = _run_styles(groups)
    title = f"Sweep report: {sweep_dir}" if sweep_dir is not None else "Sweep report"
    meta = f"generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}, {len(runs)} runs"
    if sweep_overrides:
        meta += f"; sweep: <code>{esc(' '.join(sweep_overrides))}</code>"

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1><p class='note'>{meta}</p>",
        "<h2>Runs</h2>",
        _runs_table(runs),
        "<h2>By configuration (seeds pooled)</h2>",
        _groups_table(groups),
        "<p class='note'>mean ± sample standard deviation over the finished runs of each group.</p>",
        "<h2>Training loss</h2>",
        loss_svg(runs, style),
        _legend(runs, style),
        "<h2>Final frames</h2>",
        "<p class='note'>target (left) beside the pattern grown from the seed (right).</p>",
        _gallery([(r, r.final_png) for r in runs if r.final_png], max_embed_bytes) or "<p>none found</p>",
        "<h2>Videos</h2>",
        _gallery([(r, v) for r in runs for v in r.videos], max_embed_bytes) or "<p>none found</p>",
        _left_out_note(runs),
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


def _left_out_note(runs: list[RunRecord]) -> str:
    left_out = sum(r.other_videos for r in runs)
    if not left_out:
        return ""
    return (
        f"<p class='note'>{left_out} intermediate videos under &lt;job&gt;/media/ not shown "
        "(only the final one of each kind, or the newest for runs that did not finish).</p>"
    )


def _run_styles(groups: list[Group]) -> dict[str, tuple[str, str]]:
    """job -> (colour, dash pattern): one colour per group, one dash pattern per run within it."""
    return {
        run.job: (PALETTE[gi % len(PALETTE)], DASHES[ri % len(DASHES)])
        for gi, group in enumerate(groups)
        for ri, run in enumerate(group.runs)
    }


def _status_html(run: RunRecord) -> str:
    text = run.status + (f": {run.error}" if run.error else "")
    return f"<td class='{run.status}'>{html.escape(text)}</td>"


def _runs_table(runs: list[RunRecord]) -> str:
    cols = columns(runs)
    head = "".join(f"<th>{h}</th>" for h in ["job", "overrides", "status", *(h for _, h, _ in cols)])
    rows = []
    for run in runs:
        cells = [
            f"<td>{html.escape(run.job)}</td>",
            f"<td><code>{html.escape(' '.join(run.overrides) or '(defaults)')}</code></td>",
            _status_html(run),
            *(f"<td class='num'>{format_value(run.metric(k), kind)}</td>" for k, _, kind in cols),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = (
        "<p class='note'>runs without summary.json show their last logged train loss and step.</p>"
        if any(not r.summary and r.curve for r in runs)
        else ""
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{note}"


def _groups_table(groups: list[Group]) -> str:
    cols = columns([r for g in groups for r in g.runs])
    heads = ["group", "runs", *(h for _, h, _ in cols)]
    rows = []
    for g in groups:
        cells = [f"<td><code>{html.escape(g.label)}</code></td>", f"<td>{html.escape(format_counts(g))}</td>"]
        cells += [f"<td class='num'>{format_stat(g.stats[k], kind)}</td>" for k, _, kind in cols]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>" + "".join(rows) + "</table>"


def _legend(runs: list[RunRecord], style: dict[str, tuple[str, str]]) -> str:
    items = []
    for run in runs:
        if not run.curve:
            continue
        colour, dash = style[run.job]
        swatch = (
            f"<svg width='36' height='10'><line x1='0' y1='5' x2='36' y2='5' stroke='{colour}' "
            f"stroke-width='2.5' stroke-dasharray='{dash}'/></svg>"
        )
        label = html.escape(f"{run.job}: {' '.join(run.overrides) or '(defaults)'}")
        items.append(f"<li>{swatch} {label}</li>")
    return f"<ul class='legend'>{''.join(items)}</ul>" if items else ""


def loss_svg(
    runs: list[RunRecord],
    style: dict[str, tuple[str, str]],
    width: int = 800,
    height: int = 420,
) -> str:
    """Train loss against step for every run with a curve, log-scale y, as an inline ``<svg>``."""
    curves = {
        r.job: [(s, v) for s, v in r.curve if math.isfinite(v) and v > 0] for r in runs if r.curve
    }  # log scale: non-positive and non-finite losses cannot be drawn
    points = [p for c in curves.values() for p in c]
    if not points:
        return "<p>no train/loss logged in csv/version_*/metrics.csv</p>"
    left, right, top, bottom = 70, 20, 15, 45
    pw, ph = width - left - right, height - top - bottom
    x_max = max(s for s, _ in points) or 1
    lo = math.floor(math.log10(min(v for _, v in points)))
    hi = math.ceil(math.log10(max(v for _, v in points)))
    hi = max(hi, lo + 1)

    def sx(step: float) -> float:
        return left + pw * step / x_max

    def sy(value: float) -> float:
        return top + ph * (hi - math.log10(value)) / (hi - lo)

    out = [f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' font-size='11'>"]
    out.append(f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#999'/>")
    decade_step = max(1, math.ceil((hi - lo) / 8))
    for d in range(lo, hi + 1, decade_step):
        y = sy(10.0**d)
        out.append(f"<line x1='{left}' x2='{left + pw}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e4e4e4'/>")
        out.append(f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>1e{d}</text>")
    for step in _nice_ticks(x_max):
        x = sx(step)
        out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{top + ph}' stroke='#e4e4e4'/>")
        out.append(f"<text x='{x:.1f}' y='{top + ph + 16}' text-anchor='middle'>{step:g}</text>")
    out.append(f"<text x='{left + pw / 2}' y='{height - 6}' text-anchor='middle'>step</text>")
    out.append(
        f"<text x='14' y='{top + ph / 2}' text-anchor='middle' transform='rotate(-90 14 {top + ph / 2})'>"
        "train/loss (log)</text>"
    )
    for run in runs:
        curve = curves.get(run.job)
        if not curve:
            continue
        # Thousands of noisy points per run would bloat the file without changing what one sees.
        stride = max(1, math.ceil(len(curve) / MAX_CURVE_POINTS))
        shown = curve[::stride] + ([curve[-1]] if (len(curve) - 1) % stride else [])
        colour, dash = style.get(run.job, (PALETTE[0], ""))
        coords = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in shown)
        label = html.escape(f"{run.job}: {' '.join(run.overrides) or '(defaults)'}")
        out.append(
            f"<polyline points='{coords}' fill='none' stroke='{colour}' stroke-width='1.5' "
            f"stroke-dasharray='{dash}'><title>{label}</title></polyline>"
        )
        if len(shown) == 1:  # a single point draws no line
            out.append(
                f"<circle cx='{sx(shown[0][0]):.1f}' cy='{sy(shown[0][1]):.1f}' r='3' fill='{colour}'/>"
            )
    out.append("</svg>")
    return "\n".join(out)


def _nice_ticks(x_max: float, target: int = 6) -> list[float]:
    raw = x_max / target
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(x_max // step) + 1)]


def _gallery(items: list[tuple[RunRecord, Path]], max_embed_bytes: int) -> str:
    figures = []
    for run, path in items:
        caption = html.escape(f"{run.job}: {' '.join(run.overrides) or '(defaults)'} — {path.name}")
        mime = MEDIA_TYPES.get(path.suffix.lower())
        if mime is None:
            continue
        size = path.stat().st_size
        if size > max_embed_bytes:
            body = (
                f"<p class='note'>not embedded: {html.escape(str(path))} is {size / 2**20:.1f} MB "
                f"(limit {max_embed_bytes / 2**20:.0f} MB)</p>"
            )
        else:
            uri = f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
            if mime.startswith("video/"):
                body = f"<video controls loop muted src='{uri}'></video>"
            else:
                body = f"<img src='{uri}' alt='{caption}'>"
        figures.append(f"<figure>{body}<figcaption>{caption}</figcaption></figure>")
    return f"<div class='gallery'>{''.join(figures)}</div>" if figures else ""


# --------------------------------------------------------------------------------------------- CLI


class ReportOnMultirunEnd(Callback):
    """Hydra callback: write the comparison report when a multirun ends (``conf/hydra/default.yaml``).

    Also when it does not end normally: Hydra re-raises a failed job's error before its end-of-multirun
    callbacks, and a sweep can be stopped with Ctrl+C. The report is then written as the process exits, with
    the failed or interrupted jobs shown as such (the sweep still exits non-zero)."""

    def __init__(self) -> None:
        self._sweep_dir: str | None = None
        self._written = False

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            self._sweep_dir = str(config.hydra.sweep.dir)
        except Exception:  # noqa: BLE001 - no sweep directory, no report
            return
        atexit.register(self._report_at_exit)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._written = True
        main([str(config.hydra.sweep.dir)])

    def _report_at_exit(self) -> None:
        if self._written or self._sweep_dir is None or not Path(self._sweep_dir).is_dir():
            return
        self._written = True
        try:
            main([self._sweep_dir])
        except Exception as exc:  # noqa: BLE001 - at exit: say it, never hide the sweep's own error
            print(f"ncalab.compare: no report for {self._sweep_dir}: {exc}", file=sys.stderr)


# final.png: the target, a gap of this many pixels, the pattern grown to the horizon (ncalab.callbacks).
FINAL_GAP_PX = 4


def write_strip(runs: list[RunRecord], output: Path, common: tuple[str, ...] = ()) -> int:
    """A PNG of every run's ``final.png`` as one picture: a column per run, its target above the pattern it grew,
    labelled with what sets the run apart (``common``: the overrides every run shares). Returns the columns."""
    from PIL import Image, ImageDraw

    columns = []
    for run in runs:
        if run.final_png is None:
            continue
        with Image.open(run.final_png) as im:
            im = im.convert("RGB")
            half = (im.width - FINAL_GAP_PX) // 2
            target, grown = (
                im.crop((0, 0, half, im.height)),
                im.crop((im.width - half, 0, im.width, im.height)),
            )
        label = " ".join(o.split("=", 1)[-1] for o in run.overrides if o not in common) or run.job
        columns.append((target, grown, label))
    if not columns:
        raise ValueError("no run of the sweep has a final.png")
    width = max(max(t.width, len(label) * 6 + 4) for t, _, label in columns)
    height = max(t.height for t, _, _ in columns)
    pad, text_h = 4, 14
    strip = Image.new("RGB", (len(columns) * (width + pad) + pad, 2 * height + text_h + 3 * pad), "white")
    draw = ImageDraw.Draw(strip)
    for i, (target, grown, label) in enumerate(columns):
        x = pad + i * (width + pad)
        strip.paste(target, (x + (width - target.width) // 2, pad))
        strip.paste(grown, (x + (width - grown.width) // 2, 2 * pad + height))
        draw.text((x + 2, 2 * pad + 2 * height + 1), label, fill="black")
    output.parent.mkdir(parents=True, exist_ok=True)
    strip.save(output)
    return len(columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ncalab.compare",
        description="Compare the runs of a Hydra multirun sweep: writes report.html and prints a table.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory (outputs/multirun/<date>_<time>)")
    parser.add_argument(
        "--output", type=Path, default=None, help="where to write the report (default: <sweep>/report.html)"
    )
    parser.add_argument(
        "--max-embed-mb",
        type=float,
        default=MAX_EMBED_BYTES / 2**20,
        help="images and videos larger than this are not embedded (default: 20)",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the tables as Markdown (per run, then mean ± std over seeds) instead of aligned text",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=LOSS_THRESHOLD,
        help=f"train loss for the steps<thr column: first step at or below it (default: {LOSS_THRESHOLD})",
    )
    parser.add_argument(
        "--strip",
        type=Path,
        default=None,
        help="also write a PNG of every run's final.png side by side (target above, grown pattern below)",
    )
    args = parser.parse_args(argv)

    sweep: Path = args.sweep_dir
    if not sweep.is_dir():
        print(f"ncalab.compare: no such sweep directory: {sweep}", file=sys.stderr)
        return 2
    runs = collect_runs(sweep)
    if not runs:
        print(
            f"ncalab.compare: no runs in {sweep} (expected job directories such as 0/, 1/ "
            "holding .hydra/ or status.json)",
            file=sys.stderr,
        )
        return 2

    for run in runs:
        run.derived["steps_to_threshold"] = next((s for s, v in run.curve if v <= args.threshold), None)
    groups = aggregate(runs)
    output = args.output or sweep / run_folder.REPORT_FILE
    page = render_html(
        runs,
        groups,
        sweep_dir=sweep,
        sweep_overrides=read_sweep_overrides(sweep),
        max_embed_bytes=int(args.max_embed_mb * 2**20),
    )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        print(f"ncalab.compare: cannot write {output}: {exc}", file=sys.stderr)
        return 1
    print(format_markdown(runs, groups) if args.markdown else format_table(runs, groups), end="")
    print(f"\nwrote {output}")
    if args.strip is not None:
        common = tuple(set.intersection(*(set(r.overrides) for r in runs)))
        try:
            n = write_strip(runs, args.strip, common)
        except (ValueError, OSError) as exc:
            print(f"ncalab.compare: no strip written to {args.strip}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.strip} ({n} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
