"""The fast path (``NCA.step``, ``ncalab.fast_step``) computes the rule of ``NCA.plain_step``: the same rollout
with the same random fire masks and the same gradients (fp32: to rounding, rtol 1e-5 on states and 1e-4 on
gradients; bf16: states within rtol 0.05 / atol 0.03 and gradients within 5% relative norm), with and without
gradient checkpointing and the live-cells-only gather; the bench's baseline computes the same rollout too."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF
from torch import nn

from ncalab.nca import ALPHA, NCA
from ncalab.perception import (
    FixedPerception,
    MultiScalePerception,
    Perception,
    ScaledPerception,
    TrainablePerception,
)
from ncalab.tools.bench import BaselineNCA, perceptions_from_conf

CHANNELS = 16
HIDDEN = 32
# Every perception of conf/perception/ as configured (a new file there is tested here with the rest), plus
# settings no config file uses.
PERCEPTIONS = {
    **{name: build for name, (build, _) in perceptions_from_conf(CONF).items()},
    "trainable": lambda: TrainablePerception(CHANNELS, kernel_size=3, n_ops=2, init="random"),
    "scaled": lambda: ScaledPerception(CHANNELS, kernel_size=5, n_ops=4, scale="per_op", scale_init=0.7),
}
# Those read through one depthwise bank (the fast path's written-out step); a multi-scale perception's own forward
# is tested in test_multiscale.py.
SINGLE_SCALE = sorted(n for n, build in PERCEPTIONS.items() if not isinstance(build(), MultiScalePerception))


def make_nca(name: str, fire_rate: float = 0.5, **kwargs) -> NCA:
    torch.manual_seed(0)
    kwargs.setdefault("update_bias", True)  # the bias path of the fast step is covered too
    nca = NCA(PERCEPTIONS[name](), channels=CHANNELS, hidden=HIDDEN, fire_rate=fire_rate, **kwargs)
    nn.init.normal_(nca.update[-1].weight, std=0.1)
    if nca.update[-1].bias is not None:
        nn.init.normal_(nca.update[-1].bias, std=0.01)
    nn.init.normal_(nca.update[0].bias, std=0.1)
    return nca


def random_state(batch: int = 2, size: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, CHANNELS, size, size, generator=g)
    alive = torch.rand(batch, size, size, generator=g) < 0.3
    x[:, ALPHA] = torch.where(alive, 0.5 + 0.5 * x[:, ALPHA], 0.09 * x[:, ALPHA])
    return x


def plain_rollout(nca: NCA, x: torch.Tensor, steps: int) -> torch.Tensor:
    """``nca.rollout(x, steps)`` with the plain step."""
    for _ in range(steps):
        x = nca.plain_step(x)
    return x


def loss_of(out: torch.Tensor) -> torch.Tensor:
    return (out[:, : ALPHA + 1] - 0.5).square().mean() + out.square().mean()


def grads(model: nn.Module, out: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss_of(out), params))


@pytest.mark.parametrize("sparse_below", [0.0, 1.0], ids=["dense", "live-cells-only"])
@pytest.mark.parametrize("name", sorted(PERCEPTIONS))
def test_fast_rollout_and_gradients_match_the_plain_step(name, sparse_below):
    nca = make_nca(name)
    nca.sparse_below = sparse_below  # 0: every cell through the update network; 1: only cells near live ones
    x = random_state()
    x[:, :, :, :4] = 0  # an empty strip: cells the live-cells-only path skips
    torch.manual_seed(7)
    fast = nca.rollout(x, 6)
    fast_grads = grads(nca, fast)
    torch.manual_seed(7)
    plain = plain_rollout(nca, x, 6)
    plain_grads = grads(nca, plain)
    assert 0.05 < (plain != 0).float().mean() < 1  # live and dead cells: the masks matter
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fire_rate", [0.5, 1.0])
def test_fast_and_plain_step_draw_the_same_fire_mask_from_the_random_state(fire_rate):
    nca = make_nca("sobel3", fire_rate=fire_rate)
    x = torch.ones(2, CHANNELS, 16, 16)  # alive before and after: the cells that change are those that fired
    with torch.no_grad():
        nca.update[-1].weight.zero_()
        nca.update[-1].bias.fill_(1.0)  # dx = 1 in every channel of every cell
    torch.manual_seed(5)
    fast = nca.step(x)
    after_fast = torch.rand(3)
    torch.manual_seed(5)
    plain = nca.plain_step(x)
    after_plain = torch.rand(3)
    fired = (fast != x).any(dim=1)
    assert torch.equal(fired, (plain != x).any(dim=1))
    assert fired.float().mean().item() == pytest.approx(fire_rate, abs=0.08)
    assert torch.equal(after_fast, after_plain)  # both consumed the same random numbers (none at rate 1)
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-6)


def test_fire_rate_argument_overrides_the_model_rate_in_both_steps():
    nca = make_nca("sobel3", fire_rate=0.5)
    x = random_state()
    torch.testing.assert_close(
        nca.step(x, fire_rate=1.0), nca.plain_step(x, fire_rate=1.0), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name", sorted(PERCEPTIONS))
def test_bench_baseline_computes_the_same_rollout(name):
    nca = make_nca(name)
    base = BaselineNCA.from_nca(nca)
    x = random_state()
    torch.manual_seed(3)
    ours = nca.rollout(x, 5)
    torch.manual_seed(3)
    theirs = base.rollout(x, 5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sobel3", "trainable"])
def test_fast_path_without_last_layer_bias_matches_the_plain_step(name):
    nca = make_nca(name, update_bias=False)
    assert nca.update[-1].bias is None
    x = random_state()
    torch.manual_seed(3)
    out = nca.rollout(x.clone(), 6)
    torch.manual_seed(3)
    plain = plain_rollout(nca, x.clone(), 6)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(nca, out), grads(nca, plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_step_accepts_any_memory_layout():
    nca = make_nca("sobel3", fire_rate=1.0)
    x = random_state()
    a = nca.step(x)
    b = nca.step(x.contiguous(memory_format=torch.channels_last))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sobel3", "sobel5_diag", "scaled"])
def test_bf16_rollout_is_close_to_the_fp32_plain_step(name):
    nca = make_nca(name, precision="bf16")
    x = random_state()
    torch.manual_seed(7)
    low = nca.rollout(x, 6)
    torch.manual_seed(7)
    plain = plain_rollout(nca, x, 6)  # the plain step runs in the state's dtype, fp32, whatever the precision
    assert low.dtype == torch.float32  # the state stays fp32; only perception and update run in bf16
    torch.testing.assert_close(low, plain, rtol=0.05, atol=0.03)
    low_grads = grads(nca, low)
    plain_grads = grads(nca, plain)
    for a, b in zip(low_grads, plain_grads, strict=True):
        assert a.dtype == torch.float32
        rel = (a - b).norm() / (b.norm() + 1e-12)
        assert rel < 0.05


def test_autocast_bf16_uses_the_same_low_precision_path():
    fp32 = make_nca("sobel3")
    bf16 = make_nca("sobel3", precision="bf16")
    x = random_state()
    torch.manual_seed(7)
    explicit = bf16.rollout(x, 4)
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = fp32.rollout(x, 4)
    torch.testing.assert_close(explicit, autocast, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sobel3", "trainable", "scaled"])
@pytest.mark.parametrize("every", [1, 2, 4])
def test_checkpointing_gives_the_same_rollout_and_gradients(name, every):
    whole, ckpt = make_nca(name), make_nca(name, checkpoint_every=every)
    x = random_state()
    torch.manual_seed(11)
    out_whole = whole.rollout(x, 7)
    g_whole = grads(whole, out_whole)
    torch.manual_seed(11)
    out_ckpt = ckpt.rollout(x, 7)
    g_ckpt = grads(ckpt, out_ckpt)
    torch.testing.assert_close(out_ckpt, out_whole, rtol=0, atol=0)
    for a, b in zip(g_ckpt, g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_checkpointing_with_truncated_backprop_matches_the_whole_rollout():
    whole, ckpt = make_nca("trainable"), make_nca("trainable", checkpoint_every=2)
    x = random_state()
    torch.manual_seed(5)
    g_whole = grads(whole, whole.rollout(x, 8, backprop_steps=5))
    torch.manual_seed(5)
    g_ckpt = grads(ckpt, ckpt.rollout(x, 8, backprop_steps=5))
    for a, b in zip(g_ckpt, g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_checkpointed_truncated_rollout_matches_the_plain_step():
    nca, ckpt = make_nca("trainable"), make_nca("trainable", checkpoint_every=2)
    x = random_state()
    torch.manual_seed(5)
    g_ckpt = grads(ckpt, ckpt.rollout(x, 8, backprop_steps=5))
    torch.manual_seed(5)
    with torch.no_grad():
        prefix = plain_rollout(nca, x, 3)
    g_plain = grads(nca, plain_rollout(nca, prefix, 5))
    for a, b in zip(g_ckpt, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_checkpointing_with_bf16_matches_bf16():
    whole, ckpt = (
        make_nca("sobel3", precision="bf16"),
        make_nca("sobel3", precision="bf16", checkpoint_every=3),
    )
    x = random_state()
    torch.manual_seed(5)
    g_whole = grads(whole, whole.rollout(x, 6))
    torch.manual_seed(5)
    g_ckpt = grads(ckpt, ckpt.rollout(x, 6))
    for a, b in zip(g_ckpt, g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_perception_with_its_own_forward_is_used_as_is():
    class Doubled(FixedPerception):
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(0)
    nca = NCA(Doubled(CHANNELS), channels=CHANNELS, hidden=HIDDEN, fire_rate=1.0)
    nn.init.normal_(nca.update[-1].weight, std=0.1)
    x = random_state()
    torch.testing.assert_close(nca.step(x), nca.plain_step(x), rtol=1e-5, atol=1e-5)
    assert isinstance(nca.perception, Perception)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"precision": "fp16"}, "precision"), ({"checkpoint_every": 0}, "checkpoint_every")],
)
def test_invalid_fast_path_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NCA(FixedPerception(CHANNELS), channels=CHANNELS, hidden=HIDDEN, **kwargs)


@pytest.mark.parametrize("threshold", [0.1, 0.0, -0.2])
def test_alive_cells_are_the_alive_mask(threshold):
    from ncalab import fast_step
    from ncalab.nca import alive_mask

    assert fast_step.ALPHA == ALPHA
    x = random_state(batch=3, size=11, seed=4) - 0.3  # alphas on both sides of each threshold, edges included
    assert torch.equal(fast_step.alive_cells(x, threshold), alive_mask(x, threshold))


def count_sparse_steps(monkeypatch) -> list[int]:
    """Record the number of updated rows of every :class:`ncalab.fast_step.SparseStep` call."""
    from ncalab import fast_step

    seen: list[int] = []
    apply = fast_step.SparseStep.apply
    monkeypatch.setattr(
        fast_step.SparseStep,
        "apply",
        lambda x, pre, rows, *a: seen.append(rows.numel()) or apply(x, pre, rows, *a),
    )
    return seen


def test_only_firing_cells_near_live_ones_go_through_the_update_network(monkeypatch):
    nca = make_nca("sobel3", fire_rate=0.5)
    x = torch.ones(2, CHANNELS, 16, 16)  # every cell alive: only the fire mask thins the rows
    x[1] = 0
    x[1, :, 8, 8] = 1  # one live cell: its 5x5 surroundings can matter
    seen = count_sparse_steps(monkeypatch)
    torch.manual_seed(2)
    fast = nca.step(x)
    torch.manual_seed(2)
    fire = torch.rand(2 * 16 * 16) < 0.5
    assert seen == [int(fire[:256].sum()) + int(fire[256:].view(16, 16)[6:11, 6:11].sum())]
    torch.manual_seed(2)
    torch.testing.assert_close(fast, nca.plain_step(x), rtol=1e-5, atol=1e-5)


def test_gathered_bf16_rows_are_padded_to_few_sizes():
    from ncalab.fast_step import padded_rows

    assert [padded_rows(m) for m in (1, 64, 65, 2047, 2048, 20700)] == [64, 64, 128, 2048, 2048, 21504]
    sizes = {padded_rows(m) for m in range(19000, 22000)}
    assert len(sizes) <= 4 and all(s % 1024 == 0 for s in sizes)


@pytest.mark.parametrize("state", ["dense", "pattern"])
@pytest.mark.parametrize("name", SINGLE_SCALE)
def test_sparse_step_matches_the_plain_step_on_the_bench_states(name, state, monkeypatch):
    from ncalab.tools.bench import start_state

    seen = count_sparse_steps(monkeypatch)
    nca = make_nca(name)  # default sparse_below: a dense grid at fire rate 0.5 updates about half its cells
    x = start_state(state, 2, 16)
    torch.manual_seed(7)
    fast = nca.rollout(x, 6)
    fast_grads = grads(nca, fast)
    assert len(seen) == 6 and all(0 < s < 2 * 16 * 16 for s in seen)  # the written-out step, every time
    torch.manual_seed(7)
    plain = plain_rollout(nca, x, 6)
    plain_grads = grads(nca, plain)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("state", ["dense", "pattern"])
@pytest.mark.parametrize("name", ["sobel3", "sobel5_diag", "scaled"])
def test_bf16_sparse_step_is_close_to_the_plain_step_on_the_bench_states(name, state, monkeypatch):
    from ncalab.tools.bench import start_state

    seen = count_sparse_steps(monkeypatch)
    nca = make_nca(name, precision="bf16")  # with a last-layer bias: padded rows must not leak it
    x = start_state(state, 2, 16)
    torch.manual_seed(7)
    low = nca.rollout(x, 6)
    low_grads = grads(nca, low)
    assert len(seen) == 6
    torch.manual_seed(7)
    plain = plain_rollout(nca, x, 6)
    torch.testing.assert_close(low, plain, rtol=0.05, atol=0.03)
    for a, b in zip(low_grads, grads(nca, plain), strict=True):
        assert a.dtype == torch.float32
        assert (a - b).norm() / (b.norm() + 1e-12) < 0.05


@pytest.mark.parametrize("name", ["trainable", "scaled"])
def test_sparse_step_gives_the_gradient_of_the_input_state(name):
    from ncalab.tools.bench import start_state

    nca = make_nca(name)
    x = start_state("dense", 2, 12)
    grads_of_x = []
    for stepper in (nca.step, nca.plain_step):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(4)
        out = xi
        for _ in range(3):
            out = stepper(out)
        grads_of_x.append(torch.autograd.grad(loss_of(out), xi)[0])
    torch.testing.assert_close(grads_of_x[0], grads_of_x[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["trainable", "scaled"])
def test_a_rollout_derives_the_step_weights_once_and_the_next_rollout_sees_new_parameters(name, monkeypatch):
    """The CPU step's weights (first layer reordered, operator kernels with the response scale folded in) are
    derived once per rollout and grad mode, not per step; a change of the parameters (an optimiser step) between
    rollouts is seen by the next one."""
    import ncalab.fast_step as fs

    calls = []
    derive = fs.step_weights
    monkeypatch.setattr(fs, "step_weights", lambda nca: calls.append(torch.is_grad_enabled()) or derive(nca))
    nca = make_nca(name)
    nca.sparse_below = 1.0
    x = random_state()
    nca.rollout(x, 6, backprop_steps=4)
    assert calls == [False, True]  # the 2 steps without a graph, then the 4 with one
    opt = torch.optim.SGD(nca.parameters(), lr=0.5)
    loss_of(nca.rollout(x, 3)).backward()
    opt.step()  # every parameter moves, the perception's too
    torch.manual_seed(7)
    fast = nca.rollout(x, 4)
    fast_grads = grads(nca, fast)
    torch.manual_seed(7)
    plain = plain_rollout(nca, x, 4)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_grads, grads(nca, plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- the multi-scale perception: its own forward, the update network fast -----------------------------------------


def make_multiscale(fire_rate: float = 0.5, upsample: str = "bilinear", **kwargs) -> NCA:
    from ncalab.perception import MultiScalePerception

    torch.manual_seed(0)
    kwargs.setdefault("update_bias", True)
    perception = MultiScalePerception(CHANNELS, levels=3, upsample=upsample)
    nca = NCA(perception, channels=CHANNELS, hidden=HIDDEN, fire_rate=fire_rate, **kwargs)
    nn.init.normal_(nca.update[-1].weight, std=0.1)
    nn.init.normal_(nca.update[-1].bias, std=0.01)
    nn.init.normal_(nca.update[0].bias, std=0.1)
    return nca


def test_the_multiscale_perception_is_outside_the_single_bank_contract():
    """The fast path takes a multi-scale perception through its own forward: no per-operator weights, no
    written-out sparse step, and its operator_weight() refuses, naming what to read instead."""
    from ncalab import fast_step

    nca = make_multiscale()
    assert not fast_step.within_contract(nca.perception)
    assert fast_step.step_weights(nca) is None
    with pytest.raises(NotImplementedError, match=r"bank_weight\(\)"):
        nca.perception.operator_weight()


@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
@pytest.mark.parametrize("sparse_below", [0.0, 1.0], ids=["dense", "live-cells-only"])
@pytest.mark.parametrize("size", [12, 13], ids=["even", "odd"])
def test_multiscale_fast_rollout_and_gradients_match_the_plain_step(
    size, sparse_below, upsample, monkeypatch
):
    """The step used for the multi-scale perception (``NCA.step``: its forward, then the update network of the fast
    path on every cell or on the gathered live rows) equals ``plain_step`` in values and in the gradients of
    every parameter and of the input state, on a grid the pooling divides and on an odd one."""
    seen = count_sparse_steps(monkeypatch)
    nca = make_multiscale(upsample=upsample)
    nca.sparse_below = sparse_below
    x = random_state(size=size)
    x[:, :, :, :4] = 0  # an empty strip: cells the live-cells-only path skips
    results = []
    for rollout in (nca.rollout, lambda x, n: plain_rollout(nca, x, n)):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(7)
        out = rollout(xi, 6)
        params = [p for p in nca.parameters() if p.requires_grad]
        results.append((out.detach(), torch.autograd.grad(loss_of(out), [xi, *params])))
    (fast, fast_grads), (plain, plain_grads) = results
    assert seen == []  # not the written-out step of single banks
    assert 0.05 < (plain != 0).float().mean() < 1
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert len(fast_grads) == 1 + 4  # the input state and the update network (the bank is a buffer)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_multiscale_bf16_rollout_is_close_to_the_fp32_plain_step():
    nca = make_multiscale(precision="bf16")
    x = random_state(size=13)
    torch.manual_seed(7)
    low = nca.rollout(x, 6)
    torch.manual_seed(7)
    plain = plain_rollout(nca, x, 6)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, plain, rtol=0.05, atol=0.03)
    for a, b in zip(grads(nca, low), grads(nca, plain), strict=True):
        assert a.dtype == torch.float32
        assert (a - b).norm() / (b.norm() + 1e-12) < 0.05


def test_multiscale_perception_runs_in_bf16_as_a_gpu_step_runs_it():
    """On a GPU the fast path runs the perception in bf16 (its forward gets a bf16 state): the bank follows the
    state's dtype, and the result is the float32 one to bf16 rounding."""
    from ncalab.perception import MultiScalePerception

    p = MultiScalePerception(CHANNELS, levels=3)
    x = random_state(size=13)
    low = p(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), p(x), rtol=0.02, atol=0.02)


def test_multiscale_bench_baseline_computes_the_same_rollout():
    nca = make_multiscale()
    base = BaselineNCA.from_nca(nca)
    x = random_state(size=13)
    torch.manual_seed(3)
    ours = nca.rollout(x, 5)
    torch.manual_seed(3)
    theirs = base.rollout(x, 5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
