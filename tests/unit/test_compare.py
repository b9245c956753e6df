"""`python -m ncalab.compare <sweep>` on fake sweep directories laid out the way train.py -m writes them."""

from __future__ import annotations

import json
import math
import re

import pytest
from PIL import Image

from ncalab.compare import aggregate, collect_runs, main, read_loss_curve, render_html

FAKE_MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
ERROR = "ValueError: target <script>alert('x')</script> & more"


def write_job(job, overrides, status=None, summary=None, csv_versions=(), final_png=False):
    """One job directory: .hydra/overrides.yaml, and optionally status.json, summary.json, CSVs, final.png."""
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status is not None:
        state = {"status": status, "overrides": overrides, "started": "2026-01-01T00:00:00+00:00"}
        state["ended"] = None if status == "running" else "2026-01-01T00:10:00+00:00"
        if status == "failed":
            state["error"] = ERROR
        (job / "status.json").write_text(json.dumps(state))
    if summary is not None:
        base = {"perception": "x", "steps": 8, "eval_steps": 96, "s_per_iter": 0.25, "parameters": 8336}
        (job / "summary.json").write_text(json.dumps({**base, **summary, "grid": [36, 36]}))
    for version, rows in enumerate(csv_versions):
        d = job / "csv" / f"version_{version}"
        d.mkdir(parents=True)
        lines = ["epoch,step,train/grad_norm,train/log10_loss,train/loss,train/lr"]
        for step, loss in rows:
            cell = "" if loss is None else repr(loss)
            lines.append(f"0,{step},1.0,{math.log10(loss) if loss else ''},{cell},0.002")
        (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    if final_png:
        Image.new("RGB", (12, 6), (200, 30, 30)).save(job / "final.png")


def curve(start, stop, scale):
    return [(s, scale / (s + 1)) for s in range(start, stop)]


@pytest.fixture
def sweep(tmp_path):
    """2 perceptions x 2 seeds finished, one failed, one unfinished (no status, no summary), one resumed."""
    root = tmp_path / "multirun" / "2026-01-01_00-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - perception=sobel3,sobel5\n    - seed=0,1\n"
    )
    finished = [
        ("sobel3", 0, dict(train_loss=0.002, eval_loss=0.003, psnr=30.0, wall_time_s=100.0)),
        ("sobel3", 1, dict(train_loss=0.004, eval_loss=0.005, psnr=28.0, wall_time_s=120.0)),
        ("sobel5", 0, dict(train_loss=0.001, eval_loss=0.001, psnr=float("inf"), wall_time_s=50.0)),
        ("sobel5", 1, dict(train_loss=0.003, eval_loss=float("nan"), psnr=35.0, wall_time_s=70.0)),
    ]
    for job, (perception, seed, summary) in enumerate(finished):
        overrides = [f"perception={perception}", f"seed={seed}", "hydra.job.chdir=false"]
        versions = [curve(0, 8, 1.0) + [(8, None)]]  # the final/* row has no train/loss
        if job == 1:  # resumed once: version_1 repeats steps 5-7 and goes on to 11
            versions = [curve(0, 8, 1.0), curve(5, 12, 0.5)]
        write_job(root / str(job), overrides, "finished", summary, versions, final_png=True)
    write_job(root / "4", ["perception=sobel5", "seed=2"], "failed", csv_versions=[curve(0, 3, 1.0)])
    write_job(root / "5", ["perception=sobel3", "seed=2"])
    Image.new("RGB", (6, 6), (0, 0, 255)).save(root / "0" / "growth.gif")
    (root / "2" / "media").mkdir()
    (root / "2" / "media" / "growth_final.mp4").write_bytes(FAKE_MP4)
    (root / "2" / "media" / "growth_step500.mp4").write_bytes(FAKE_MP4)  # intermediate: not shown
    (root / "not_a_job").mkdir()  # no .hydra/, no status.json, not numbered
    return root


def run_main(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_collect_runs_reads_status_overrides_and_merged_curves(sweep):
    runs = collect_runs(sweep)
    assert [r.job for r in runs] == ["0", "1", "2", "3", "4", "5"]
    assert [r.status for r in runs] == ["finished"] * 4 + ["failed", "unfinished"]
    assert runs[0].overrides == ["perception=sobel3", "seed=0"]  # hydra.* dropped
    assert runs[4].error == ERROR
    assert runs[3].summary["psnr"] == 35.0 and math.isnan(runs[3].summary["eval_loss"])

    merged = read_loss_curve(sweep / "1")
    assert [s for s, _ in merged] == list(range(12))
    assert dict(merged)[4] == pytest.approx(1.0 / 5)  # only in version_0
    assert dict(merged)[6] == pytest.approx(0.5 / 7)  # version_1 wins the repeated step
    assert [s for s, _ in runs[0].curve] == list(range(8))  # blank train/loss row skipped


def test_aggregate_pools_seeds_and_counts_failed_separately(sweep):
    groups = aggregate(collect_runs(sweep))
    assert [g.overrides for g in groups] == [("perception=sobel3",), ("perception=sobel5",)]
    sobel3, sobel5 = groups
    assert sobel3.counts == {"finished": 2, "unfinished": 1}
    assert sobel5.counts == {"finished": 2, "failed": 1}
    loss = sobel3.stats["train_loss"]
    assert (loss.n, loss.mean, loss.std) == (2, pytest.approx(0.003), pytest.approx(math.sqrt(2e-6)))
    assert sobel3.stats["psnr"].mean == pytest.approx(29.0) and sobel3.stats["psnr"].std == pytest.approx(
        2**0.5
    )
    assert sobel5.stats["eval_loss"].n == 1  # NaN dropped
    assert math.isinf(sobel5.stats["psnr"].mean)


def test_main_prints_aligned_table_with_hand_computed_aggregates(sweep, capsys):
    code, out, err = run_main(capsys, sweep)
    assert code == 0, err
    assert (sweep / "report.html").is_file()
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("job"))
    columns = (
        "job overrides status train_loss eval_loss psnr_db ssim loss@long grown holds_steps regrown/5 steps<thr "
        "diverged wall_s s/iter steps params"
    ).split()
    assert header.split() == columns
    row1_line = next(line for line in lines if line.startswith("1 "))
    cells = row1_line.split()
    row1 = dict(zip(columns, [cells[0], " ".join(cells[1:3]), *cells[3:]], strict=True))
    assert row1 == {
        **dict.fromkeys(columns, "-"),
        "job": "1",
        "overrides": "perception=sobel3 seed=1",
        "status": "finished",
        "train_loss": "0.004",
        "eval_loss": "0.005",
        "psnr_db": "28.00",
        "wall_s": "120.0",
        "s/iter": "0.25",
        "steps": "8",
        "params": "8,336",
    }
    row5 = next(line for line in lines if line.startswith("5 "))
    assert "unfinished" in row5
    # sobel3: train loss 0.002, 0.004 -> 0.003 ± sqrt(2e-6) = 0.0014; PSNR 30, 28 -> 29 ± 1.4; wall 110 ± 14
    agg = next(line for line in lines if line.startswith("perception=sobel3 "))
    assert "2 finished, 1 unfinished" in agg
    assert "0.003 ± 0.0014" in agg and "0.004 ± 0.0014" in agg
    assert "29.00 ± 1.4" in agg and "110.0 ± 14" in agg
    agg5 = next(line for line in lines if line.startswith("perception=sobel5 "))
    assert "2 finished, 1 failed" in agg5 and "inf" in agg5
    assert f"job 4 failed: {ERROR}" in out
    assert out.rstrip().endswith(f"wrote {sweep / 'report.html'}")
    # aligned: every per-run row is as long as the dashed rule under the header, or shorter by trailing blanks
    rule = lines[lines.index(header) + 1]
    assert set(rule.replace(" ", "")) == {"-"}
    assert all(line.index("finished") == row1_line.index("finished") for line in lines[2:6])


def test_report_is_self_contained_and_escaped(sweep, capsys):
    assert run_main(capsys, sweep, "--output", sweep / "out" / "r.html")[0] == 0
    page = (sweep / "out" / "r.html").read_text()
    assert "perception=sobel3" in page and "perception=sobel5" in page
    assert "failed: ValueError: target &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<script" not in page
    assert "unfinished" in page
    assert "http://" not in page and "https://" not in page
    for src in re.findall(r"src='([^']*)'", page):
        assert src.startswith("data:")
    assert page.count("data:image/png;base64,") == 4  # final.png of the finished runs
    assert page.count("<img src='data:image/gif;base64,") == 1
    assert page.count("<video controls loop muted src='data:video/mp4;base64,") == 1
    assert "growth_final.mp4" in page and "1 intermediate videos" in page

    svg = page[page.index("<svg width='800'") : page.index("</svg>", page.index("<svg width='800'"))]
    polylines = re.findall(r"<polyline points='([^']*)'", svg)
    assert len(polylines) == 5  # runs 0-4 logged a curve; the unfinished run 5 did not
    assert [len(p.split()) for p in polylines] == [8, 12, 8, 8, 3]
    assert "1e-1" in svg and "1e0" in svg  # log-scale decade ticks


def test_large_media_is_skipped_with_a_note(sweep):
    runs = collect_runs(sweep)
    page = render_html(runs, aggregate(runs), max_embed_bytes=len(FAKE_MP4) - 1)
    assert "data:video/mp4" not in page
    assert "not embedded:" in page and "growth_final.mp4" in page


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_no_sweep_or_no_runs_exits_2_naming_the_path(tmp_path, capsys, make):
    path = tmp_path / "sweep"
    if make == "empty":
        (path / "logs").mkdir(parents=True)
    code, out, err = run_main(capsys, path)
    assert code == 2
    assert str(path) in err and len(err.strip().splitlines()) == 1
    assert not (path / "report.html").exists()


def test_evaluation_and_curve_give_the_derived_columns():
    from ncalab.compare import derive_metrics

    evaluation = {
        "ssim": 0.9,
        "long_run": {
            "loss": {"500": 0.01, "2000": 0.2, "1000": 0.05},
            "non_finite": False,
            "holds_steps": 1000,
        },
        "regeneration": {
            "grow_steps": 200,
            "grown": True,
            "regrown": 2,
            "left": {"steps_to_recover": 12, "regrown": True},
            "right": {"steps_to_recover": None, "regrown": False},
            "top": {"steps_to_recover": 3, "regrown": True},
            "bottom": {"steps_to_recover": None, "regrown": False},
            "center": {"steps_to_recover": 40, "regrown": False},  # the cut did no damage
        },
    }
    curve = [(0, 0.5), (1, 0.02), (2, 0.009), (3, 0.004)]
    derived = derive_metrics(evaluation, curve, {"divergences": 2}, threshold=0.01)
    assert derived["steps_to_threshold"] == 2
    assert derived["long_run_loss"] == 0.2 and derived["long_run_step"] == 2000
    assert derived["holds_steps"] == 1000 and derived["grown"] is True
    assert derived["regrown"] == 2 and derived["ssim"] == 0.9 and derived["divergences"] == 2
    assert derive_metrics(None, curve, {}, threshold=0.001) == {"steps_to_threshold": None}
    # an evaluation.json from before the "grown" rule: its recovered cuts are not shown as regrown
    old = {"regeneration": {r: {"steps_to_recover": 1} for r in ("left", "right", "top", "bottom", "center")}}
    assert derive_metrics(old, [], {})["regrown"] is None


def test_summary_holds_steps_and_regrown_show_in_the_table(sweep, capsys):
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    summary.update(holds_steps=2000, grown=True, regrown=3)
    (sweep / "0" / "summary.json").write_text(json.dumps(summary))
    (sweep / "1" / "evaluation.json").write_text(
        json.dumps({"long_run": {"loss": {"500": 0.1}, "holds_steps": 500}, "regeneration": {"regrown": 0}})
    )
    code, out, err = run_main(capsys, sweep)
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("job")).split()
    holds, regrown = header.index("holds_steps"), header.index("regrown/5")
    row0 = next(line for line in lines if line.startswith("0 ")).split()
    row1 = next(line for line in lines if line.startswith("1 ")).split()
    # the overrides cell holds two words: shift by one after it
    assert (row0[holds + 1], row0[regrown + 1]) == ("2,000", "3")
    assert (row1[holds + 1], row1[regrown + 1]) == ("500", "0")
    agg = next(line for line in lines if line.startswith("perception=sobel3 "))
    assert "1,250 ± 1,061" in agg and "1.5 ± 2.1" in agg
    assert (row0[header.index("grown") + 1], row1[header.index("grown") + 1]) == ("yes", "-")


def markdown_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the Markdown table under ``heading``: header first, separator dropped."""
    lines = text.splitlines()
    start = lines.index(heading)
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split(" | ")])
        elif table:
            break
    assert set("".join(table[1])) <= set("-|"), "no separator row under the header"
    return [table[0], *table[2:]]


def test_markdown_tables_pool_seeds_over_every_column(sweep, capsys):
    """README tables come straight from ``--markdown``: one row per run, then mean ± std over seeds."""
    for job, extra in (
        ("0", dict(holds_steps=2000, grown=True, regrown=3)),
        ("1", dict(holds_steps=500, grown=False, regrown=0)),
    ):
        summary = json.loads((sweep / job / "summary.json").read_text())
        summary.update(extra, ssim=0.9 if job == "0" else 0.7)
        (sweep / job / "summary.json").write_text(json.dumps(summary))
    code, out, err = run_main(capsys, sweep, "--markdown")
    assert code == 0, err
    runs = markdown_rows(out, "### Runs")
    header = runs[0]
    assert header[:3] == ["job", "overrides", "status"] and "holds_steps" in header and "regrown/5" in header
    assert len(runs) == 1 + 6 and all(len(r) == len(header) for r in runs)
    row0 = dict(zip(header, runs[1], strict=True))
    assert row0["overrides"] == "`perception=sobel3 seed=0`"
    assert (row0["holds_steps"], row0["regrown/5"], row0["grown"], row0["psnr_db"]) == (
        "2,000",
        "3",
        "yes",
        "30.00",
    )

    groups = markdown_rows(out, "### Mean ± sample std over seeds (finished runs)")
    gh = groups[0]
    assert gh[:2] == ["group (seeds pooled)", "runs"]
    assert len(gh) == 2 + len(header) - 3  # every per-run column, pooled
    sobel3 = dict(zip(gh, groups[1], strict=True))
    assert sobel3["group (seeds pooled)"] == "`perception=sobel3`"
    assert sobel3["runs"] == "2 finished, 1 unfinished"
    # hand-computed over seeds 0 and 1: holds 2000, 500; regrown 3, 0; ssim 0.9, 0.7; PSNR 30, 28
    assert sobel3["holds_steps"] == "1,250 ± 1,061"
    assert sobel3["regrown/5"] == "1.5 ± 2.1"
    assert sobel3["ssim"] == "0.8 ± 0.14"
    assert sobel3["psnr_db"] == "29.00 ± 1.4"
    assert sobel3["grown"] == "1/2"
    assert (sobel3["s/iter"], sobel3["steps"], sobel3["params"]) == ("0.25 ± 0", "8 ± 0", "8,336 ± 0")
    assert f"- job 4 failed: {ERROR}" in out
    assert "wall_s" in gh and "steps<thr" in gh


def test_overrides_every_run_shares_are_said_once(tmp_path, capsys):
    """A sweep started with experiment=...: the groups are told apart by what differs, not by the shared part."""
    root = tmp_path / "sweep"
    jobs = [("sobel3", 0, 0.002), ("sobel3", 1, 0.004), ("sobel5", 0, 0.001), ("sobel5", 1, 0.003)]
    for job, (perception, seed, loss) in enumerate(jobs):
        overrides = [f"perception={perception}", f"seed={seed}", "experiment=seed_comparison_cpu"]
        write_job(root / str(job), overrides, "finished", dict(train_loss=loss, psnr=20.0 + job))
    code, out, err = run_main(capsys, root, "--markdown")
    assert code == 0, err
    assert out.startswith("All runs: `experiment=seed_comparison_cpu`.")
    labels = [r[0] for r in markdown_rows(out, "### Mean ± sample std over seeds (finished runs)")[1:]]
    assert labels == ["`perception=sobel3`", "`perception=sobel5`"]
    assert [r[1] for r in markdown_rows(out, "### Runs")[1:]] == [
        f"`perception={p} seed={s}`" for p, s, _ in jobs
    ]
    code, out, _ = run_main(capsys, root)  # the text table says the same
    assert "(all runs: experiment=seed_comparison_cpu)" in out
    assert any(
        line.startswith("perception=sobel5 ") and "0.002 ± 0.0014" in line for line in out.splitlines()
    )


def test_a_single_group_keeps_its_whole_label(tmp_path, capsys):
    root = tmp_path / "sweep"
    for seed in (0, 1):
        write_job(root / str(seed), ["experiment=smoke", f"seed={seed}"], "finished", dict(train_loss=0.01))
    code, out, _ = run_main(capsys, root, "--markdown")
    assert code == 0
    assert "All runs:" not in out
    assert (
        markdown_rows(out, "### Mean ± sample std over seeds (finished runs)")[1][0] == "`experiment=smoke`"
    )


def test_strip_puts_each_runs_target_above_its_grown_pattern(tmp_path, capsys):
    """--strip: one column per run with a final.png (target half above, grown half below), labelled with what sets
    the run apart; a sweep with no final.png writes nothing and says so."""
    root = tmp_path / "sweep"
    colours = {"emoji\\:snail": (255, 0, 0), "emoji\\:lizard": (0, 0, 255)}  # as Hydra stores them
    for job, (target, colour) in enumerate(colours.items()):
        write_job(root / str(job), [f"data.target={target}", "seed=0"], "finished", {"train_loss": 0.1})
        final = Image.new("RGB", (20 + 4 + 20, 20), (255, 255, 255))
        final.paste(Image.new("RGB", (20, 20), (0, 200, 0)), (0, 0))  # the target: green
        final.paste(Image.new("RGB", (20, 20), colour), (24, 0))  # the grown pattern
        final.save(root / str(job) / "final.png")
    out = tmp_path / "strip.png"
    code, stdout, _ = run_main(capsys, root, "--strip", out)
    assert code == 0 and f"wrote {out} (2 runs)" in stdout
    strip = Image.open(out).convert("RGB")
    width = (strip.width - 4) // 2 - 4  # two columns of equal width, 4 px apart
    for i, colour in enumerate(colours.values()):
        x = 4 + i * (width + 4) + width // 2
        assert strip.getpixel((x, 4 + 10)) == (0, 200, 0)  # target on top
        assert strip.getpixel((x, 4 + 20 + 4 + 10)) == colour  # its grown pattern below
    bare = tmp_path / "bare"
    write_job(bare / "0", ["seed=0"], "finished", {"train_loss": 0.1})
    code, _, stderr = run_main(capsys, bare, "--strip", tmp_path / "none.png")
    assert code == 1 and "no run of the sweep has a final.png" in stderr
    assert not (tmp_path / "none.png").exists()


def test_a_sweep_value_with_a_colon_reads_as_typed(tmp_path, capsys):
    """Hydra stores `data.target=emoji:snail` of a sweep as `emoji\\:snail`; the tables show what the user typed."""
    root = tmp_path / "sweep"
    write_job(root / "0", ["data.target=emoji\\:snail", "seed=0"], "finished", {"train_loss": 0.1})
    write_job(root / "1", ["data.target=emoji\\:lizard", "seed=0"], "finished", {"train_loss": 0.2})
    code, stdout, _ = run_main(capsys, root, "--markdown")
    assert code == 0
    assert "`data.target=emoji:snail`" in stdout and "emoji\\:" not in stdout


def test_the_image_compared_at_a_common_size_shows_only_when_a_run_has_it(sweep, capsys):
    code, out, _ = run_main(capsys, sweep, "--markdown")
    assert code == 0 and "psnr@size_db" not in out
    for job, value in (("0", 24.0), ("1", 22.0)):
        summary = json.loads((sweep / job / "summary.json").read_text())
        summary.update(at_size=128, psnr_at_size=value, ssim_at_size=0.9)
        (sweep / job / "summary.json").write_text(json.dumps(summary))
    code, out, err = run_main(capsys, sweep, "--markdown")
    assert code == 0, err
    runs = markdown_rows(out, "### Runs")
    row0 = dict(zip(runs[0], runs[1], strict=True))
    assert (row0["psnr@size_db"], row0["ssim@size"], row0["size_px"]) == ("24.00", "0.9", "128")
    groups = markdown_rows(out, "### Mean ± sample std over seeds (finished runs)")
    assert len(groups[0]) == 2 + len(runs[0]) - 3
    assert dict(zip(groups[0], groups[1], strict=True))["psnr@size_db"].startswith("23.00 ±")
