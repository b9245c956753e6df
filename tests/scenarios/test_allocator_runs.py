"""glibc's allocator setting (``ncalab.runs.allocator``): applied by the entry points that train or bench, switchable
off, and never by ``import ncalab``. Each check runs in a process of its own (the setting lasts for the process),
forked from the test runner's warm server (``warm``), which has imported ncalab's modules and set nothing."""

from __future__ import annotations

import json
import os
import platform
import sys
import textwrap

import pytest
import warm
from conftest import CONF

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)

# Whether glibc serves a 48 MiB block from the heap (the setting is in effect: blocks below 64 MiB stay there) or
# from an mmap of its own (glibc's default for blocks above its mmap threshold, which it moves up to at most
# 32 MiB): where the block lies in /proc/self/maps.
PROBE = """
import ctypes, json, os, sys

def heap_kept():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(48 << 20)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("[heap]"):
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    if lo <= block < hi:
                        return True
        return False
    finally:
        libc.free(block)

seen = {}
"""


def run_probe(body: str, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NCALAB_KEEP_HEAP"}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    script = tmp_path / "probe.py"
    script.write_text(PROBE + textwrap.dedent(body) + "\nprint(json.dumps(seen))\n")
    proc = warm.run([sys.executable, str(script)], cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_leaves_the_allocator_and_training_sets_it_unless_turned_off(tmp_path):
    seen = run_probe(
        f"""
        seen["before"] = heap_kept()
        import ncalab, ncalab.runs.allocator, ncalab.nca, ncalab.train, ncalab.tools.bench, ncalab.evaluate, ncalab.demo
        seen["imported"] = heap_kept() or ncalab.runs.allocator.HEAP_KEPT

        from hydra import compose, initialize_config_dir
        from ncalab.train import run

        def train(name, *overrides):
            with initialize_config_dir(version_base="1.3", config_dir={str(CONF)!r}):
                cfg = compose(config_name="train", overrides=[
                    f"output_dir={{name}}", "experiment=smoke", "trainer.max_steps=1", "logger=none",
                    "callbacks.media=null", "callbacks.evaluation=null", "callbacks.checkpoint=null", *overrides])
            run(cfg)
            return heap_kept() or ncalab.runs.allocator.HEAP_KEPT

        seen["config_off"] = train("off", "keep_heap=false")
        os.environ["NCALAB_KEEP_HEAP"] = "0"
        seen["env_off"] = train("env")
        del os.environ["NCALAB_KEEP_HEAP"]
        seen["trained"] = train("on")
        seen["flag"] = ncalab.runs.allocator.HEAP_KEPT
        """,
        tmp_path,
    )
    assert seen == {
        "before": False,
        "imported": False,  # import ncalab (every module) leaves glibc as it was
        "config_off": False,
        "env_off": False,
        "trained": True,  # a run sets it
        "flag": True,
    }


def test_bench_sets_it_for_baseline_and_ncalab_alike(tmp_path):
    spec = {"perception": "sobel3", "size": 8, "batch": 1, "steps": 1, "impl": "ncalab"}
    seen = run_probe(
        f"""
        import ncalab.tools.bench as bench
        bench.worker = lambda spec, warmup, conn: seen.setdefault(spec.impl, heap_kept())  # instead of timing
        bench._serve(None, {{**{spec!r}, "impl": "baseline"}}, 0, None)  # each worker process's entry point
        bench._serve(None, {spec!r}, 0, None)
        """,
        tmp_path,
    )
    assert seen == {"baseline": True, "ncalab": True}  # like for like
