"""Benchmark full NCA training iterations (rollout, backward, Adam step) against a good public-style baseline.

``python -m ncalab.tools.bench`` times, for each perception, grid size and start state, the ncalab model (one or more
variants: precision, gradient checkpointing, truncated backprop) and a baseline written the way a good public
PyTorch port of the Distill NCA writes it (:class:`BaselineNCA`: NHWC state, one depthwise ``F.conv2d`` for all
operators, ``nn.Linear`` layers, fp32, nothing fused, compiled or skipped), at the same settings, in the same
invocation. By default both start states are timed: ``dense`` (every cell alive: a texture, or a large target
that fills its grid) and ``pattern`` (a grown pattern with dead space around it).

Every implementation runs in its own worker process (so that its peak memory is its own; forked from a server that
has imported torch once, :func:`_context`), each with the same
allocator setting (:func:`ncalab.runs.allocator.keep_heap`, unless ``NCALAB_KEEP_HEAP=0``): like for like. The parent
interleaves single iterations of the baseline and of the ncalab variant being measured, so that load from other
processes hits both alike, and reports medians. The speedup of an ncalab row is median(baseline) / median(ncalab)
over the interleaved window.

GFLOP/s counts the model's useful work: the depthwise perception and both 1x1 layers, forward for every step,
backward (gradients w.r.t. input, and weights where trainable) for the steps that carry gradients.
Recomputation (checkpointing, and the recomputed hidden layer of the fast path) is not counted. ``peak_share``
is that rate over this machine's matrix-product peak in the row's precision, measured by the bench itself at the
start (:func:`matmul_peak`: the best of large ``torch.mm`` over at least a second, at the workers' thread count).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import json
import math
import multiprocessing
import multiprocessing.context
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ncalab.errors import ConfigError
from ncalab.nca import ALPHA, NCA, seed_state
from ncalab.perception import (
    OPERATORS,
    FixedPerception,
    MultiScalePerception,
    Perception,
)
from ncalab.runs import memory
from ncalab.runs.allocator import keep_heap

CHANNELS = 16
HIDDEN = 128
FIRE_RATE = 0.5

# The perceptions of conf/perception/ and the truncation their config sets (rollout.backprop_steps). Any other bank
# of fixed operators is ``operators:<op>,<op>,...`` (see :func:`perception_factory`).
# The Hydra config folder whose perception group the bench offers (the repository's conf/).
DEFAULT_CONF = Path(__file__).resolve().parents[3] / "conf"


def perceptions_from_conf(
    conf: str | Path = DEFAULT_CONF,
) -> dict[str, tuple[Callable[[], Perception], int | None]]:
    """``{name: (build the perception, its default backprop_steps)}`` for every file of ``<conf>/perception/``, by
    the file's stem: the perception built from its ``perception`` node (``_target_`` and settings, with
    :data:`CHANNELS` channels), the backprop steps from its ``rollout.backprop_steps`` (None: full backprop).
    Nothing here names a perception: a new file there is benchmarked with the rest."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    found: dict[str, tuple[Callable[[], Perception], int | None]] = {}
    for path in sorted(Path(conf, "perception").glob("*.yaml")):
        node = OmegaConf.load(path)
        spec = OmegaConf.to_container(node.perception, resolve=False)
        spec["channels"] = CHANNELS
        backprop = OmegaConf.select(node, "rollout.backprop_steps", default=None)
        found[path.stem] = (functools.partial(instantiate, spec, _convert_="all"), backprop)
    return found


PERCEPTIONS = perceptions_from_conf()
BANK_PREFIX = "operators:"


def perception_factory(name: str) -> tuple[Callable[[], Perception], int | None]:
    """``(build the perception, its default backprop_steps)`` for a name of :data:`PERCEPTIONS` or a bank
    ``operators:<op>,<op>,...`` (operators of ``ncalab.perception.OPERATORS``, also joined with ``+``)."""
    if name in PERCEPTIONS:
        return PERCEPTIONS[name]
    if name.startswith(BANK_PREFIX):
        ops = [o for o in re.split(r"[,+]", name[len(BANK_PREFIX) :]) if o]
        try:
            FixedPerception(CHANNELS, ops=ops)
        except ConfigError as exc:
            raise SystemExit(f"--perceptions {name}: {exc}") from None
        return functools.partial(FixedPerception, CHANNELS, ops=ops, name=name), None
    raise SystemExit(
        f"unknown perception {name!r}; accepted: {', '.join(PERCEPTIONS)}, or a bank {BANK_PREFIX}<op>,<op>,... "
        f"of the operators {', '.join(OPERATORS)}"
    )


def parse_perceptions(text: str) -> list[str]:
    """``--perceptions``: names separated by commas, where a bank ``operators:a,b,c`` takes every following name
    that is not a perception (``sobel3,operators:sobel3_x,sobel3_y,laplace3,sobel5`` is three perceptions)."""
    names: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        joins = not token.startswith(BANK_PREFIX) and token not in PERCEPTIONS
        if names and names[-1].startswith(BANK_PREFIX) and joins:
            names[-1] += "," + token
        else:
            names.append(token)
    for name in names:
        perception_factory(name)  # a clear error for a bad one, before any worker starts
    return names


FIELDS = (
    "perception",
    "size",
    "state",
    "batch",
    "steps",
    "impl",
    "precision",
    "s_per_iter",
    "cells_steps_per_s",
    "gflops",
    "peak_share",
    "peak_mem_gb",
)


# --- the baseline ----------------------------------------------------------------------------------------------


class BaselineNCA(nn.Module):
    """The NCA as a good public PyTorch port writes it: the state kept NHWC between steps, all operators (identity
    included) in one depthwise ``F.conv2d``, the update network as ``nn.Linear`` layers on the NHWC tensor, fp32,
    nothing fused, compiled or skipped.

    Same model as :class:`ncalab.nca.NCA` (``from_nca`` copies its weights), so the two compute the same rollout
    (the fire mask draws ``torch.rand(B, H, W, 1)``, the same numbers in the same order as the NCA's). It reads a
    perception only through the contract of :class:`ncalab.perception.Perception` (``operator_weight()``,
    ``response_scale()``). A multi-scale perception is no single depthwise bank: the baseline calls its forward
    (pool, bank, upsample per level, NCHW, as its public code does) on the channels-first view of the state.
    """

    def __init__(self, perception: Perception, channels: int = CHANNELS, hidden: int = HIDDEN):
        super().__init__()
        self.channels = channels
        self.n_ops = perception.n_ops
        self.kernel_size = k = perception.kernel_size
        self.multiscale = copy.deepcopy(perception) if isinstance(perception, MultiScalePerception) else None
        self.scale = None
        if self.multiscale is None:
            ops = perception.operator_weight().detach().clone()  # C*n x 1 x k x k, channel-major
            trainable = any(p.requires_grad for p in perception.parameters())
            if trainable:
                self.ops = nn.Parameter(ops)
            else:
                self.register_buffer("ops", ops)
            ident = torch.zeros(channels, 1, k, k)
            ident[:, 0, k // 2, k // 2] = 1.0
            self.register_buffer("ident", ident)
            scale = perception.response_scale()
            self.scale = None if scale is None else nn.Parameter(scale.detach().clone().reshape(-1))
        self.fc0 = nn.Linear(channels * (1 + self.n_ops), hidden)
        self.fc1 = nn.Linear(hidden, channels)
        nn.init.zeros_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)

    @classmethod
    def from_nca(cls, nca: NCA) -> BaselineNCA:
        base = cls(nca.perception, nca.channels, nca.hidden)
        c, n = nca.channels, nca.perception.n_ops
        w0 = nca.update[0].weight.detach().flatten(1)  # columns: identity c..., then c0:op0..opN, c1:...
        ident, resp = w0[:, :c], w0[:, c:].reshape(-1, c, n)
        # The baseline's perception is channel-major with the identity first: c0:id,op0..opN, c1:id,...
        # (a multi-scale perception's forward gives the NCA's own order: identity, then the responses)
        weight = w0 if base.multiscale is not None else torch.cat([ident[:, :, None], resp], dim=2)
        weight = weight.reshape(-1, c * (1 + n))
        with torch.no_grad():
            base.fc0.weight.copy_(weight)
            base.fc0.bias.copy_(nca.update[0].bias)
            base.fc1.weight.copy_(nca.update[2].weight.flatten(1))
            if nca.update[2].bias is not None:
                base.fc1.bias.copy_(nca.update[2].bias)
            else:
                base.fc1.bias.zero_()
        return base

    def kernels(self) -> torch.Tensor:
        c, k = self.channels, self.kernel_size
        return torch.cat([self.ident, self.ops.reshape(c, self.n_ops, k, k)], dim=1).reshape(-1, 1, k, k)

    def alive(self, x: torch.Tensor) -> torch.Tensor:
        """``B x H x W x 1``: the 3x3 max-pool of alpha above 0.1 (``x`` is NHWC)."""
        a = x[..., ALPHA : ALPHA + 1].permute(0, 3, 1, 2)
        return F.max_pool2d(a, kernel_size=3, stride=1, padding=1).permute(0, 2, 3, 1) > 0.1

    def perceive(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC in, NHWC out: one depthwise convolution over the channels-last view (a multi-scale perception:
        its forward)."""
        if self.multiscale is not None:
            return self.multiscale(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = F.conv2d(
            x.permute(0, 3, 1, 2), self.kernels(), padding=self.kernel_size // 2, groups=self.channels
        )
        y = y.permute(0, 2, 3, 1)
        if self.scale is not None:
            c, n = self.channels, self.n_ops
            ones = torch.ones(c, 1, dtype=y.dtype, device=y.device)
            y = y * torch.cat([ones, self.scale.reshape(c, n)], dim=1).reshape(-1)
        return y

    def step(self, x: torch.Tensor, fire_rate: float = FIRE_RATE) -> torch.Tensor:
        """One step on an NHWC state."""
        pre_life = self.alive(x)
        dx = self.fc1(F.relu(self.fc0(self.perceive(x))))
        if fire_rate < 1.0:
            dx = dx * (torch.rand(x.shape[0], x.shape[1], x.shape[2], 1, device=x.device) < fire_rate).float()
        x = x + dx
        post_life = self.alive(x)
        return x * (pre_life & post_life).float()

    def rollout(self, x: torch.Tensor, steps: int, backprop_steps: int | None = None) -> torch.Tensor:
        """``B x C x H x W`` in and out (like :meth:`NCA.rollout`); NHWC in between."""
        x = x.permute(0, 2, 3, 1).contiguous()
        free = 0 if backprop_steps is None else max(steps - backprop_steps, 0)
        with torch.no_grad():
            for _ in range(free):
                x = self.step(x)
        for _ in range(steps - free):
            x = self.step(x)
        return x.permute(0, 3, 1, 2)


# --- one case ----------------------------------------------------------------------------------------------------


@dataclass
class Spec:
    perception: str
    size: int
    batch: int
    steps: int
    impl: str  # "baseline" | "ncalab"
    precision: str = "fp32"
    checkpoint_every: int | None = None
    backprop_steps: int | None = None
    device: str = "cpu"
    state: str = "pattern"
    seed: int = 0
    compile_backend: str | None = None  # ncalab only: torch.compile the NCA step with this backend


def flops_per_iter(spec: Spec) -> float:
    """Useful FLOPs of one training iteration (multiply-add = 2), see the module docstring."""
    perception = perception_factory(spec.perception)[0]()
    c, n = CHANNELS, perception.n_ops
    dw = perception_flops(perception)
    l1 = 2 * c * (1 + n) * HIDDEN
    l2 = 2 * HIDDEN * c
    trainable = any(p.requires_grad for p in perception.parameters())
    fwd = dw + l1 + l2
    bwd = 2 * (l1 + l2) + dw * (2 if trainable else 1)
    graph_steps = spec.steps if spec.backprop_steps is None else min(spec.backprop_steps, spec.steps)
    cells = spec.batch * spec.size * spec.size
    return float(cells * (spec.steps * fwd + graph_steps * bwd))


def perception_flops(perception: Perception) -> float:
    """Useful FLOPs of the perception per cell and step, forward (multiply-add = 2): the depthwise bank; for a
    multi-scale perception the bank at each level (a level pooled by ``2**l`` has ``4**-l`` of the cells), the
    pooling (an add per channel and coarse level) and the bilinear upsampling (4 multiply-adds per response and
    coarse level; nearest: none)."""
    c, k = CHANNELS, perception.kernel_size
    if isinstance(perception, MultiScalePerception):
        n, coarse = perception.n_bank, perception.levels - 1
        bank = 2 * c * n * k * k * sum(4.0**-level for level in range(perception.levels))
        upsample = (8 if perception.upsample == "bilinear" else 0) * c * n * coarse
        return bank + c * coarse + upsample
    return 2 * c * perception.n_ops * k * k


STATES = ("pattern", "dense", "seed")


def start_state(kind: str, batch: int, size: int) -> torch.Tensor:
    """Where each timed rollout starts (the same for baseline and ncalab).

    ``pattern`` (default) stands in for a pool sample: a grown pattern, here a disc of live cells with random
    values whose diameter is 0.6 of the grid (the default config's 40 px flower on a 72 grid), empty around it.
    ``dense``: every cell alive (a texture filling the whole grid; the worst case for skipping dead cells).
    ``seed``: the single seed cell.
    """
    g = torch.Generator().manual_seed(2)
    if kind == "seed":
        return seed_state(batch, CHANNELS, size, size)
    x = torch.rand(batch, CHANNELS, size, size, generator=g) - 0.5
    x[:, : ALPHA + 1] = torch.rand(batch, ALPHA + 1, size, size, generator=g) * 0.8 + 0.2
    if kind == "dense":
        return x
    if kind != "pattern":
        raise ValueError(f"unknown state {kind!r}; accepted: {', '.join(STATES)}")
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    inside = (r[:, None] ** 2 + r[None, :] ** 2) <= (0.3 * size) ** 2
    return x * inside.float()


def build(spec: Spec):
    """The model, its optimiser and one training iteration as a closure."""
    torch.manual_seed(spec.seed)
    device = torch.device(spec.device)
    nca = NCA(
        perception_factory(spec.perception)[0](),
        channels=CHANNELS,
        hidden=HIDDEN,
        fire_rate=FIRE_RATE,
        precision=spec.precision,
        checkpoint_every=spec.checkpoint_every,
    )
    # A non-zero last layer, so that the state actually changes (the zero init would leave the seed alone).
    nn.init.normal_(nca.update[-1].weight, std=0.02)
    model: NCA | BaselineNCA = BaselineNCA.from_nca(nca) if spec.impl == "baseline" else nca
    model = model.to(device)
    if spec.compile_backend is not None and isinstance(model, NCA):
        model.compile_step(backend=spec.compile_backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x0 = start_state(spec.state, spec.batch, spec.size).to(device)
    target = torch.rand(spec.batch, 4, spec.size, spec.size, generator=torch.Generator().manual_seed(1)).to(
        device
    )

    def iteration() -> None:
        x = model.rollout(x0, spec.steps, spec.backprop_steps)
        loss = F.mse_loss(x[:, : ALPHA + 1], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return iteration


def peak_memory_gb(device: str) -> float:
    peak = memory.peak_gb(device)  # this worker's whole life: it was forked to run one implementation
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(spec: Spec, warmup: int, conn: Connection) -> None:
    """Serve the parent over ``conn``: ``"run"`` -> one timed iteration, ``"stop"`` -> peak memory, then return."""
    iteration = build(spec)
    sync = torch.cuda.synchronize if spec.device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        iteration()
    sync()
    conn.send({"ready": True})
    while True:
        try:
            cmd = conn.recv()
        except EOFError:  # the parent is gone
            return
        if cmd == "run":
            t = time.perf_counter()
            iteration()
            sync()
            conn.send({"t": time.perf_counter() - t})
        elif cmd == "stop":
            conn.send({"peak_mem_gb": peak_memory_gb(spec.device)})
            return


def _serve(conn: Connection, spec: dict, warmup: int, threads: int | None) -> None:
    """A worker process's entry point: the same allocator setting as every other worker, its threads, then serve."""
    keep_heap()
    if threads:
        torch.set_num_threads(threads)
    worker(Spec(**spec), warmup, conn)


_CONTEXT: multiprocessing.context.BaseContext | None = None


def _context() -> multiprocessing.context.BaseContext:
    """Workers are forked from a server process that has imported torch and ncalab once (multiprocessing's
    forkserver), not started as new interpreters: a worker is ready in a fraction of a second instead of the
    seconds an import of torch takes, and the server has run no parallel region, so forking it is safe."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        # What this module imports (torch, above all), not this module itself: a child started from
        # `python -m ncalab.tools.bench` runs it as its main module, which runpy refuses to find imported already.
        _CONTEXT.set_forkserver_preload(["ncalab.nca", "ncalab.perception"])
    return _CONTEXT


class Worker:
    def __init__(self, spec: Spec, warmup: int, threads: int | None):
        # This module as sys.modules holds it by name (also when it runs as __main__ under python -m): the
        # entry point is pickled by that name.
        bench = importlib.import_module("ncalab.tools.bench")
        ctx = _context()
        self.spec = spec
        self.times: list[float] = []
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=bench._serve, args=(child, asdict(spec), warmup, threads), daemon=True)
        self.proc.start()
        child.close()

    def _read(self) -> dict:
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join()
            raise RuntimeError(f"bench worker for {self.spec} exited with {self.proc.exitcode}") from None

    def wait_ready(self) -> None:
        self._read()

    def run(self) -> float:
        self.conn.send("run")
        t = self._read()["t"]
        self.times.append(t)
        return t

    def stop(self) -> float:
        self.conn.send("stop")
        peak = self._read()["peak_mem_gb"]
        self.proc.join()
        return peak


def matmul_peak(
    device: str = "cpu", n: int = 2048, repeats: int = 8, min_seconds: float = 1.0, max_repeats: int = 200
) -> dict[str, float]:
    """GFLOP/s of the best ``n x n`` matrix product, fp32 and bf16, in this process's threads: at least
    ``repeats`` products and at least ``min_seconds`` of them per precision (at most ``max_repeats``), so that a
    moment of load from elsewhere (a shared or virtual machine) does not set the peak."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    peaks = {}
    g = torch.Generator().manual_seed(0)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.rand(n, n, generator=g).to(device=device, dtype=dtype)
        b = torch.rand(n, n, generator=g).to(device=device, dtype=dtype)
        torch.mm(a, b)  # warm-up (library dispatch, page faults)
        best, done, start = math.inf, 0, time.perf_counter()
        while done < max_repeats and (done < repeats or time.perf_counter() - start < min_seconds):
            sync()
            t = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - t)
            done += 1
        peaks[name] = round(2 * n**3 / best / 1e9, 1)
    return peaks


def row(spec: Spec, times: list[float], peak: float, peaks: dict[str, float] | None = None) -> dict:
    s = statistics.median(times)
    cells_steps = spec.batch * spec.size * spec.size * spec.steps
    gflops = flops_per_iter(spec) / s / 1e9
    peak_gflops = (peaks or {}).get(spec.precision)
    out = {
        "perception": spec.perception,
        "size": spec.size,
        "state": spec.state,
        "batch": spec.batch,
        "steps": spec.steps,
        "impl": spec.impl,
        "precision": spec.precision,
        "s_per_iter": round(s, 5),
        "cells_steps_per_s": round(cells_steps / s, 1),
        "gflops": round(gflops, 3),
        "peak_share": round(gflops / peak_gflops, 4) if peak_gflops else None,
        "peak_gflops": peak_gflops,
        "peak_mem_gb": round(peak, 3),
        "checkpoint_every": spec.checkpoint_every,
        "backprop_steps": spec.backprop_steps,
        "compile_backend": spec.compile_backend,
        "device": spec.device,
        "repeats": len(times),
    }
    return out


def _options(text: str, cast: Callable[[str], object]) -> list:
    return [None if v.strip().lower() in ("none", "null", "") else cast(v.strip()) for v in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m ncalab.tools.bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--perceptions",
        default=",".join(PERCEPTIONS),
        help="comma-separated, default: every configured one; a bank of fixed operators is "
        "operators:<op>,<op>,... (e.g. operators:sobel3_x,sobel3_y,laplace3)",
    )
    ap.add_argument("--sizes", default="72,128", help="grid sizes (square), default 72,128")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=64, help="rollout steps per iteration")
    ap.add_argument("--precision", default="fp32,bf16", help="ncalab variants: fp32,bf16")
    ap.add_argument("--checkpoint-every", default="none", help="ncalab variants, e.g. none,8")
    ap.add_argument(
        "--compile",
        default="none",
        help="ncalab variants: none, or torch.compile backends of the NCA step (e.g. none,inductor)",
    )
    ap.add_argument(
        "--backprop-steps",
        default="default",
        help="ncalab variants, e.g. none,16; 'default' = what the perception's config sets (baseline: always)",
    )
    ap.add_argument(
        "--state",
        default="dense,pattern",
        help=f"start states of the rollouts, comma-separated: {', '.join(STATES)} (see start_state)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed iterations per implementation (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's)")
    ap.add_argument(
        "--peak-seconds",
        type=float,
        default=1.0,
        help="at least this long per precision measuring the matrix-product peak (default 1; 0: 8 products)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="time the ncalab variants only (no speedup)")
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="run every ncalab variant of a case at once and time them in turns (the order rotating each repeat), "
        "so that load hits all alike; each row's vs_first is median(first variant) / median(its own)",
    )
    ap.add_argument("--json", action="store_true", help="one JSON object per case on stdout")
    return ap.parse_args(argv)


def cases(args: argparse.Namespace) -> list[tuple[Spec, list[Spec]]]:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    states = [t.strip() for t in args.state.split(",") if t.strip()]
    bad = [t for t in states if t not in STATES]
    if bad or not states:
        raise SystemExit(f"--state {args.state!r}: accepted: {', '.join(STATES)} (comma-separated)")
    groups = []
    for name in parse_perceptions(args.perceptions):
        default_bp = perception_factory(name)[1]
        bps = [default_bp] if args.backprop_steps == "default" else _options(args.backprop_steps, int)
        for size, state in ((z, t) for z in _options(args.sizes, int) for t in states):
            common = {
                "perception": name,
                "size": size,
                "batch": args.batch,
                "steps": args.steps,
                "device": device,
                "state": state,
            }
            base = Spec(impl="baseline", backprop_steps=default_bp, **common)
            variants = [
                Spec(
                    impl="ncalab",
                    precision=prec,
                    checkpoint_every=ck,
                    backprop_steps=bp,
                    compile_backend=backend,
                    **common,
                )
                for prec in _options(args.precision, str)
                for ck in _options(args.checkpoint_every, int)
                for bp in bps
                for backend in _options(args.compile, str)
            ]
            groups.append((base, variants))
    return groups


def print_row(r: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r), flush=True)
        return
    extra = []
    if r["checkpoint_every"]:
        extra.append(f"ckpt={r['checkpoint_every']}")
    if r.get("compile_backend"):
        extra.append(f"compile={r['compile_backend']}")
    if r["backprop_steps"]:
        extra.append(f"bp={r['backprop_steps']}")
    speed = (
        f"{r['speedup']:5.2f}x"
        if "speedup" in r
        else f"{r['vs_first']:5.2f}x vs first"
        if "vs_first" in r
        else "     -"
    )
    share = f"{100 * r['peak_share']:5.1f}%" if r.get("peak_share") is not None else "    -"
    print(
        f"{r['perception']:<20} {r['size']:>4} {r['state']:<7} {r['impl']:<8} {r['precision']:<4} "
        f"{' '.join(extra):<12} {r['s_per_iter']:8.3f} s/it {r['cells_steps_per_s']:>12.4g} cell-steps/s "
        f"{r['gflops']:7.2f} GFLOP/s {share} of peak {r['peak_mem_gb']:6.2f} GB  {speed}",
        flush=True,
    )


def interleaved(base_spec: Spec, variants: list[Spec], args: argparse.Namespace, peaks: dict) -> list[dict]:
    """Rows for ``variants`` (and the baseline unless ``--no-baseline``) timed in turns: every worker is started
    and warmed up first, then each repeat runs one iteration of each, the order rotated by one each repeat."""
    specs = ([] if args.no_baseline else [base_spec]) + variants
    workers = [Worker(spec, args.warmup, args.threads) for spec in specs]
    for w in workers:
        w.wait_ready()
    for r in range(args.repeats):
        k = r % len(workers)
        for w in workers[k:] + workers[:k]:
            w.run()
    rows = [row(spec, w.times, w.stop(), peaks) for spec, w in zip(specs, workers, strict=True)]
    first = rows[0]["s_per_iter"]
    for r in rows:
        r["vs_first"] = round(first / r["s_per_iter"], 3)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_heap()  # ncalab.runs.allocator, for every worker alike (NCALAB_KEEP_HEAP=0 turns it off for all)
    if args.threads:
        torch.set_num_threads(args.threads)
    groups = cases(args)
    peaks = matmul_peak(groups[0][0].device, min_seconds=args.peak_seconds) if groups else {}
    if not args.json:  # JSON rows carry it as peak_gflops
        print(
            f"matrix-product peak here ({torch.get_num_threads()} threads): "
            + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()),
            flush=True,
        )
    for base_spec, variants in groups:
        if args.interleave:
            for r in interleaved(base_spec, variants, args, peaks):
                print_row(r, args.json)
            continue
        # The baseline and the first variant start (import, build, warm up) side by side; later variants
        # start one at a time, so that at most two workers hold memory.
        base = None if args.no_baseline else Worker(base_spec, args.warmup, args.threads)
        pending = Worker(variants[0], args.warmup, args.threads) if variants else None
        if base is not None:
            base.wait_ready()
        rows = []
        for spec in variants:
            w = pending if pending is not None else Worker(spec, args.warmup, args.threads)
            pending = None
            w.wait_ready()
            window: list[float] = []
            for r in range(args.repeats):
                # Alternate who goes first, so that neither always runs right after the other.
                if base is not None and r % 2 == 0:
                    window.append(base.run())
                w.run()
                if base is not None and r % 2 == 1:
                    window.append(base.run())
            r = row(spec, w.times, w.stop(), peaks)
            if window:
                r["speedup"] = round(statistics.median(window) / r["s_per_iter"], 3)
            rows.append(r)
        if base is not None:
            rows.insert(0, row(base_spec, base.times, base.stop(), peaks))
        for r in rows:
            print_row(r, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
