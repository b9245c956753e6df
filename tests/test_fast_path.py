"""The optimised NCA step computes the same rollout as a straightforward reference, in fp32 and bf16, with and
without gradient checkpointing; the bench's baseline computes the same rollout too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ncalab.bench import BaselineNCA
from ncalab.nca import ALPHA, NCA
from ncalab.perception import FixedPerception, Perception, ScaledPerception, TrainablePerception

CHANNELS = 16
HIDDEN = 32
PERCEPTIONS = {
    "sobel3": lambda: FixedPerception(CHANNELS, operators="sobel3"),
    "sobel5": lambda: FixedPerception(CHANNELS, operators="sobel5"),
    "sobel5_diag": lambda: FixedPerception(CHANNELS, operators="sobel5_diag"),
    "trainable": lambda: TrainablePerception(CHANNELS, kernel_size=3, n_ops=2),
    "scaled": lambda: ScaledPerception(CHANNELS, kernel_size=5, n_ops=4, scale="per_op", scale_init=0.7),
}


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


def reference_step(nca: NCA, x: torch.Tensor) -> torch.Tensor:
    """The step written out plainly: NCHW, perception module, 1x1 convs, autograd for everything."""

    def alive(s):
        return F.max_pool2d(s[:, ALPHA : ALPHA + 1], kernel_size=3, stride=1, padding=1) > nca.alive_threshold

    pre = alive(x)
    dx = nca.update(nca.perception(x))
    if nca.fire_rate < 1.0:
        fire = torch.rand(x.shape[0], 1, x.shape[2], x.shape[3]) < nca.fire_rate
        dx = dx * fire.float()
    x = x + dx
    return x * (pre & alive(x)).float()


def reference_rollout(nca: NCA, x: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        x = reference_step(nca, x)
    return x


def loss_of(out: torch.Tensor) -> torch.Tensor:
    return (out[:, : ALPHA + 1] - 0.5).square().mean() + out.square().mean()


def grads(model: nn.Module, out: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss_of(out), params))


@pytest.mark.parametrize("sparse_below", [0.0, 1.0], ids=["dense", "live-cells-only"])
@pytest.mark.parametrize("name", sorted(PERCEPTIONS))
def test_fast_rollout_and_gradients_match_reference(name, sparse_below):
    nca = make_nca(name)
    nca.sparse_below = sparse_below  # 0: every cell through the update network; 1: only cells near live ones
    x = random_state()
    x[:, :, :, :4] = 0  # an empty strip: cells the live-cells-only path skips
    torch.manual_seed(7)
    fast = nca.rollout(x, 6)
    fast_grads = grads(nca, fast)
    torch.manual_seed(7)
    ref = reference_rollout(nca, x, 6)
    ref_grads = grads(nca, ref)
    assert 0.05 < (ref != 0).float().mean() < 1  # live and dead cells: the masks matter
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


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
def test_fast_path_without_last_layer_bias_matches_reference(name):
    nca = make_nca(name, update_bias=False)
    assert nca.update[-1].bias is None
    x = random_state()
    torch.manual_seed(3)
    out = nca.rollout(x.clone(), 6)
    torch.manual_seed(3)
    ref = reference_rollout(nca, x.clone(), 6)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(nca, out), grads(nca, ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_step_accepts_any_memory_layout():
    nca = make_nca("sobel3", fire_rate=1.0)
    x = random_state()
    a = nca.step(x)
    b = nca.step(x.contiguous(memory_format=torch.channels_last))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sobel3", "sobel5_diag", "scaled"])
def test_bf16_rollout_is_close_to_fp32_reference(name):
    nca = make_nca(name, precision="bf16")
    x = random_state()
    torch.manual_seed(7)
    low = nca.rollout(x, 6)
    torch.manual_seed(7)
    ref = reference_rollout(nca, x, 6)
    assert low.dtype == torch.float32  # the state stays fp32; only perception and update run in bf16
    torch.testing.assert_close(low, ref, rtol=0.05, atol=0.03)
    low_grads = grads(nca, low)
    ref_grads = grads(nca, ref)
    for a, b in zip(low_grads, ref_grads, strict=True):
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
    plain, ckpt = make_nca(name), make_nca(name, checkpoint_every=every)
    x = random_state()
    torch.manual_seed(11)
    out_plain = plain.rollout(x, 7)
    g_plain = grads(plain, out_plain)
    torch.manual_seed(11)
    out_ckpt = ckpt.rollout(x, 7)
    g_ckpt = grads(ckpt, out_ckpt)
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    for a, b in zip(g_ckpt, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_checkpointing_with_truncated_backprop_matches_plain():
    plain, ckpt = make_nca("trainable"), make_nca("trainable", checkpoint_every=2)
    x = random_state()
    torch.manual_seed(5)
    g_plain = grads(plain, plain.rollout(x, 8, backprop_steps=5))
    torch.manual_seed(5)
    g_ckpt = grads(ckpt, ckpt.rollout(x, 8, backprop_steps=5))
    for a, b in zip(g_ckpt, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_checkpointing_with_bf16_matches_bf16():
    plain, ckpt = (
        make_nca("sobel3", precision="bf16"),
        make_nca("sobel3", precision="bf16", checkpoint_every=3),
    )
    x = random_state()
    torch.manual_seed(5)
    g_plain = grads(plain, plain.rollout(x, 6))
    torch.manual_seed(5)
    g_ckpt = grads(ckpt, ckpt.rollout(x, 6))
    for a, b in zip(g_ckpt, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_perception_with_its_own_forward_is_used_as_is():
    class Doubled(FixedPerception):
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(0)
    nca = NCA(Doubled(CHANNELS), channels=CHANNELS, hidden=HIDDEN, fire_rate=1.0)
    nn.init.normal_(nca.update[-1].weight, std=0.1)
    x = random_state()
    torch.testing.assert_close(nca.step(x), reference_step(nca, x), rtol=1e-5, atol=1e-5)
    assert isinstance(nca.perception, Perception)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"precision": "fp16"}, "precision"), ({"checkpoint_every": 0}, "checkpoint_every")],
)
def test_invalid_fast_path_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NCA(FixedPerception(CHANNELS), channels=CHANNELS, hidden=HIDDEN, **kwargs)
