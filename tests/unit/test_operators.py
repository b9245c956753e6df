"""``perception=operators``: named fixed operators, their normalisation, banks of mixed sizes, and every user of a
perception taking a bank (fast path, bf16, checkpoints, exported folders, the bench, W&B run names, the sweep)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CONF, make_cfg
from hydra.utils import instantiate
from omegaconf import OmegaConf

import ncalab.perception as perception_module
from ncalab.checkpoint import check_compatible, load_nca
from ncalab.errors import CheckpointError, ConfigError
from ncalab.nca import ALPHA, NCA
from ncalab.perception import (
    BANKS,
    OPERATORS,
    PARABOLOID_LAPLACIAN,
    FixedPerception,
    Perception,
    bank_kernels,
    ramp_response,
)

CHANNELS = 8

SIZE = 24

MARGIN = 2  # cells whose 5x5 window reaches the zero padding are left out of "interior" readings

MIXED = ["sobel3_x", "sobel3_y", "laplace5", "gauss3", "sobel3_dil2_x"]

DERIVATIVES = [n for n, op in OPERATORS.items() if op.kind == "derivative"]

LAPLACIANS = [n for n, op in OPERATORS.items() if op.kind == "laplacian"]

SMOOTHING = [n for n, op in OPERATORS.items() if op.kind == "smoothing"]

# sha256 of the float32 kernels of the fixed perceptions as they were before they became named banks.
LEGACY_KERNEL_SHA256 = {
    "sobel3": "c3d4019b58dc89d50be09692f24537fba533a15e00308c85a464ce783440e7ec",
    "sobel5": "154116c3e91bc05e4cf42c9d8b1d3ff696c6e1308245800647161b239e6935b8",
    "sobel5_diag": "9af3eb3488a550a818eda819ddf23edb30624bb8919aca012a6ce88c16a756e4",
}


def grid(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) cell coordinates relative to the centre, float64 ``size x size``."""
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    return x, y


def read(ops: list[str], image: torch.Tensor) -> torch.Tensor:
    """The bank's responses to ``image`` on channel 0, ``n_ops x H x W``, computed by the perception itself."""
    p = FixedPerception(CHANNELS, ops=ops)
    x = torch.zeros(1, CHANNELS, *image.shape)
    x[0, 0] = image.float()
    with torch.no_grad():
        out = p(x)[0, CHANNELS:]
    return out.reshape(CHANNELS, p.n_ops, *image.shape)[0]


def interior(t: torch.Tensor) -> torch.Tensor:
    return t[..., MARGIN:-MARGIN, MARGIN:-MARGIN]


def ones_inside(value: float = 1.0) -> torch.Tensor:
    n = SIZE - 2 * MARGIN
    return torch.full((n, n), value)


@pytest.mark.parametrize("name", DERIVATIVES)
def test_a_derivative_reads_a_unit_ramp_along_its_direction_as_one(name):
    op = OPERATORS[name]
    x, y = grid()
    theta = math.radians(op.angle)
    r = read([name], x * math.cos(theta) + y * math.sin(theta))[0]
    torch.testing.assert_close(interior(r), ones_inside(), rtol=0, atol=1e-5)
    across = read([name], -x * math.sin(theta) + y * math.cos(theta))[0]
    torch.testing.assert_close(interior(across), ones_inside(0.0), rtol=0, atol=1e-5)
    assert ramp_response(op.kernel(), op.angle) == pytest.approx(1.0, abs=1e-6)
    assert float(op.kernel().sum()) == pytest.approx(0.0, abs=1e-7)  # a constant reads 0


@pytest.mark.parametrize("name", LAPLACIANS)
def test_a_laplacian_reads_the_unit_paraboloid_as_its_laplacian(name):
    x, y = grid()
    r = read([name], (x**2 + y**2) / 2)[0]
    assert PARABOLOID_LAPLACIAN == 2.0
    torch.testing.assert_close(interior(r), ones_inside(PARABOLOID_LAPLACIAN), rtol=0, atol=1e-5)
    # ... and a constant, a ramp and a saddle (Laplacian 0) as 0
    for image in (torch.full((SIZE, SIZE), 3.0), 0.7 * x - 0.2 * y, (x**2 - y**2) / 2):
        torch.testing.assert_close(interior(read([name], image)[0]), ones_inside(0.0), rtol=0, atol=1e-5)
    k = OPERATORS[name].kernel()
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0)) and torch.equal(k, k.flip(1))


@pytest.mark.parametrize("name", SMOOTHING)
def test_smoothing_sums_to_one_and_keeps_a_ramp(name):
    k = OPERATORS[name].kernel()
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-7)
    assert (k > 0).all() and torch.equal(k, k.T) and torch.equal(k, k.flip(0))
    x, y = grid()
    torch.testing.assert_close(interior(read([name], 0.5 * x + y + 2)[0]), interior(0.5 * x + y + 2).float())


def test_the_two_gaussians_are_two_scales():
    x, y = grid(5)
    variance = {
        n: float((F.pad(OPERATORS[n].kernel(), [(5 - OPERATORS[n].size) // 2] * 4) * x**2).sum())
        for n in SMOOTHING
    }
    assert variance == pytest.approx({"gauss3": 0.5, "gauss5": 1.0})


def test_the_dilated_sobel_has_the_3x3_taps_two_cells_apart():
    for axis, name in enumerate(("sobel3_dil2_x", "sobel3_dil2_y")):
        k = OPERATORS[name].kernel()
        assert k.shape == (5, 5)
        taps = k[::2, ::2]
        assert torch.equal(taps * 16, OPERATORS[("sobel3_x", "sobel3_y")[axis]].kernel() * 8)
        assert int((k != 0).sum()) == 6 and float(k.abs().sum() - taps.abs().sum()) == 0.0


def test_diagonals_are_not_combinations_of_x_and_y():
    for size in (3, 5):
        ks = torch.stack([OPERATORS[f"sobel{size}_{d}"].kernel() for d in ("x", "y", "45", "135")])
        assert torch.linalg.matrix_rank(ks.double().reshape(4, -1)) == 4


def test_every_operator_is_in_the_module_table_and_is_a_small_odd_kernel():
    doc = perception_module.__doc__
    listed = (CONF / "perception" / "operators.yaml").read_text()
    for name, op in OPERATORS.items():
        assert f" {name} " in listed.replace("\n", " "), (
            f"{name} is not listed in conf/perception/operators.yaml"
        )
        stem = name.rsplit("_", 1)[0] if op.kind == "derivative" else name
        assert f"``{stem}" in doc, name
        k = op.kernel()
        assert k.dtype == torch.float32 and k.shape == (op.size, op.size) and op.size in (3, 5)
        assert torch.isfinite(k).all()
    assert {
        "sobel3_x",
        "sobel3_y",
        "sobel5_x",
        "sobel5_y",
        "sobel5_45",
        "sobel5_135",
        "scharr3_x",
        "scharr3_y",
    } <= set(OPERATORS)
    assert {"laplace3", "laplace5", "gauss3", "gauss5", "sobel3_dil2_x", "sobel3_dil2_y"} <= set(OPERATORS)


def test_a_mixed_bank_pads_small_kernels_centred_to_the_largest():
    kernels = bank_kernels(MIXED)
    assert kernels.shape == (len(MIXED), 5, 5)
    for k, name in zip(kernels, MIXED, strict=True):
        own = OPERATORS[name].kernel()
        pad = (5 - own.shape[-1]) // 2
        assert torch.equal(k[pad : 5 - pad, pad : 5 - pad], own)
        rest = k.clone()
        rest[pad : 5 - pad, pad : 5 - pad] = 0
        assert not rest.any(), name


def test_bank_output_shape_and_order():
    p = FixedPerception(CHANNELS, ops=MIXED)
    assert (p.n_ops, p.kernel_size, p.out_channels, p.ops) == (5, 5, CHANNELS * 6, tuple(MIXED))
    assert p.name == "+".join(MIXED)
    assert list(p.parameters()) == [] and set(dict(p.named_buffers())) == {"weight"}
    torch.manual_seed(0)
    x = torch.rand(2, CHANNELS, 13, 17)
    with torch.no_grad():
        out = p(x)
        assert out.shape == (2, CHANNELS * 6, 13, 17)
        assert torch.equal(out[:, :CHANNELS], x)
        responses = out[:, CHANNELS:].reshape(2, CHANNELS, len(MIXED), 13, 17)
        for o, name in enumerate(MIXED):
            # Each response is that operator alone at its own size (channel-major order: c0 op0..opN, c1 ...).
            alone = FixedPerception(CHANNELS, ops=[name])
            assert alone.kernel_size == OPERATORS[name].size
            torch.testing.assert_close(responses[:, :, o], alone(x)[:, CHANNELS:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("bank", sorted(BANKS))
def test_the_old_fixed_perceptions_are_their_banks_bit_for_bit(bank):
    legacy = FixedPerception(CHANNELS, operators=bank)
    named = FixedPerception(CHANNELS, ops=list(BANKS[bank]), name=bank)
    kernels = perception_module.OPERATOR_SETS[bank]()
    assert hashlib.sha256(kernels.numpy().astype("<f4").tobytes()).hexdigest() == LEGACY_KERNEL_SHA256[bank]
    assert torch.equal(legacy.weight, named.weight) and legacy.name == named.name == bank
    assert legacy.ops == named.ops == BANKS[bank]
    torch.manual_seed(1)
    x = torch.rand(2, CHANNELS, 12, 12)
    assert torch.equal(legacy(x), named(x))
    # the config file of that name builds the same bank
    node = OmegaConf.load(CONF / "perception" / f"{bank}.yaml").perception
    node.channels = CHANNELS
    built = instantiate(node)
    assert built.ops == BANKS[bank] and torch.equal(built.weight, legacy.weight) and built.name == bank


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ops": ["sobel3_x", "laplace"]}, r"perception\.ops: unknown operator 'laplace'; known: sobel3_x, "),
        ({"ops": ["sobel3_x", "sobel3_x"]}, r"names sobel3_x more than once"),
        ({"ops": []}, r"non-empty list"),
        ({"ops": "sobel3_x"}, r"non-empty list"),
        (
            {"operators": "laplace"},
            r"perception\.operators='laplace' is not a named bank; known banks: sobel3",
        ),
        ({"operators": "sobel3", "ops": ["sobel3_x"]}, r"not both"),
    ],
)
def test_bad_banks_are_refused_with_one_line_listing_what_is_known(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        FixedPerception(CHANNELS, **kwargs)
    assert "\n" not in str(err.value)
    if "unknown" in match or "named bank" in match:
        assert all(name in str(err.value) for name in OPERATORS)


def test_perception_operators_from_the_command_line(tmp_path):
    cfg = make_cfg(tmp_path, "experiment=smoke", "perception=operators", "perception.ops=[sobel3_x,laplace5]")
    p = instantiate(cfg.perception)
    assert (p.name, p.ops, p.kernel_size) == ("operators", ("sobel3_x", "laplace5"), 5)
    default = instantiate(make_cfg(tmp_path, "perception=operators").perception)
    assert default.ops == ("sobel3_x", "sobel3_y", "laplace3")


def test_an_unknown_operator_stops_the_run_with_one_line(tmp_path):
    from ncalab.train import build_module

    cfg = make_cfg(tmp_path, "experiment=smoke", "perception=operators", "perception.ops=[sobel3_x,sobel9_x]")
    with pytest.raises(ConfigError, match=r"^perception\.ops: unknown operator 'sobel9_x'; known: .*gauss5$"):
        build_module(cfg)


def mixed_nca(**kwargs) -> NCA:
    torch.manual_seed(0)
    nca = NCA(FixedPerception(16, ops=MIXED), channels=16, hidden=32, fire_rate=1.0, **kwargs)
    torch.nn.init.normal_(nca.update[-1].weight, std=0.1)
    return nca


def live_state() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 16, 14, 14, generator=g)
    x[:, ALPHA] = torch.where(torch.rand(2, 14, 14, generator=g) < 0.4, 0.6, 0.05)
    x[:, :, :, :3] = 0
    return x


@pytest.mark.parametrize("sparse_below", [0.0, 1.0])
def test_the_fast_path_runs_a_mixed_bank_as_the_plain_step(sparse_below):
    nca = mixed_nca()
    nca.sparse_below = sparse_below
    x = live_state().requires_grad_(True)
    fast, plain = nca.step(x), nca.plain_step(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), nca.update[0].weight)[0]
    g_plain = torch.autograd.grad(nca.plain_step(x).square().sum(), nca.update[0].weight)[0]
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-5)


def test_bf16_runs_a_mixed_bank_close_to_fp32():
    fp32, bf16 = mixed_nca(), mixed_nca(precision="bf16")
    x = live_state()
    with torch.no_grad():
        a, b = fp32.rollout(x, 4), bf16.rollout(x, 4)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert float((a - b).abs().max()) < 0.05
    assert float((a - x).abs().max()) > 0.1  # the step did change the state


def test_response_scale_is_what_scale_responses_applies():
    from ncalab.perception import ScaledPerception, TrainablePerception

    torch.manual_seed(0)
    r = torch.randn(2, 16 * 4, 5, 5)
    for p in (
        FixedPerception(16, ops=MIXED[:4]),
        TrainablePerception(16, kernel_size=5, n_ops=4),
        ScaledPerception(16, kernel_size=5, n_ops=4, scale="per_op"),
        ScaledPerception(16, kernel_size=5, n_ops=4, scale="scalar", scale_init=0.3),
    ):
        if isinstance(p, ScaledPerception):
            with torch.no_grad():
                p.scale.copy_(torch.linspace(0.5, 2.0, p.scale.numel()))
        factor = p.response_scale()
        expected = r if factor is None else r * factor.view(1, -1, 1, 1)
        assert factor is None or factor.shape == (16 * 4,)
        torch.testing.assert_close(p.scale_responses(r), expected, rtol=0, atol=0)


def test_the_export_refuses_a_perception_with_its_own_forward():
    from ncalab.demo import ExportError, model_tensors

    class Squared(FixedPerception):
        def forward(self, x):
            return super().forward(x) ** 2

    nca = NCA(Squared(16, ops=["sobel3_x"]), channels=16, hidden=8)
    with pytest.raises(ExportError, match="computes its own forward"):
        model_tensors(nca)
    assert isinstance(nca.perception, Perception)


def run_config(tmp_path: Path, *overrides: str) -> dict:
    return OmegaConf.to_container(make_cfg(tmp_path / "run", "experiment=smoke", *overrides), resolve=True)


def save(config: dict, nca: NCA, path: Path) -> Path:
    state = {f"nca.{k}": v for k, v in nca.state_dict().items()}
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state, "global_step": 3}, path)
    return path


def test_a_checkpoint_written_before_banks_existed_loads_and_resumes_as_its_bank(tmp_path):
    config = run_config(tmp_path, "perception=sobel5_diag")
    # How a sobel5_diag checkpoint's config read before the fixed perceptions became named banks.
    config["perception"] = {
        "_target_": "ncalab.perception.FixedPerception",
        "name": "sobel5_diag",
        "channels": 16,
        "operators": "sobel5_diag",
    }
    torch.manual_seed(0)
    trained = NCA(FixedPerception(16, "sobel5_diag"), hidden=32)
    torch.nn.init.normal_(trained.update[-1].weight, std=0.1)
    path = save(config, trained, tmp_path / "old.ckpt")
    loaded, saved = load_nca(path)
    assert loaded.perception.ops == BANKS["sobel5_diag"] and loaded.perception.name == "sobel5_diag"
    x = live_state()
    torch.manual_seed(4)
    a = trained.rollout(x, 3)
    torch.manual_seed(4)
    assert torch.equal(loaded.rollout(x, 3), a)
    # resuming it with today's perception=sobel5_diag (which names the bank by its ops) is allowed
    check_compatible(
        torch.load(path, weights_only=True), run_config(tmp_path, "perception=sobel5_diag"), path
    )
    check_compatible(
        torch.load(path, weights_only=True),
        run_config(
            tmp_path, "perception=operators", "perception.ops=[sobel5_x,sobel5_y,sobel5_45,sobel5_135]"
        ),
        path,
    )


def test_resuming_with_another_bank_is_refused_naming_both_banks(tmp_path):
    saved = run_config(tmp_path, "perception=operators", "perception.ops=[sobel3_x,sobel3_y,laplace3]")
    ckpt = {"hyper_parameters": {"config": saved}}
    for other, shown in (
        (
            ["perception=operators", "perception.ops=[sobel3_x,laplace3,sobel3_y]"],
            "operators (identity + sobel3_x, laplace3, sobel3_y)",
        ),
        (["perception=sobel3"], "sobel3 (identity + sobel3_x, sobel3_y)"),
    ):
        with pytest.raises(CheckpointError) as err:
            check_compatible(ckpt, run_config(tmp_path, *other), "x.ckpt")
        message = str(err.value)
        assert "checkpoint has operators (identity + sobel3_x, sobel3_y, laplace3)" in message
        assert f"this run has {shown}" in message
        assert "perception=operators 'perception.ops=[sobel3_x,sobel3_y,laplace3]'" in message
    check_compatible(
        ckpt,
        run_config(tmp_path, "perception=operators", "perception.ops=[sobel3_x,sobel3_y,laplace3]"),
        "x.ckpt",
    )


def test_a_checkpoint_naming_an_unknown_operator_is_refused(tmp_path):
    config = run_config(tmp_path, "perception=operators")
    config["perception"]["ops"] = ["sobel3_x", "sobel3_y", "laplace7"]
    path = save(
        config,
        NCA(FixedPerception(16, ops=["sobel3_x", "sobel3_y", "laplace3"]), hidden=32),
        tmp_path / "c.ckpt",
    )
    with pytest.raises(
        CheckpointError, match=r"does not build \(perception\.ops: unknown operator 'laplace7'"
    ):
        load_nca(path)
    config["perception"]["ops"] = ["sobel3_x", {"_target_": "builtins.print"}]
    with pytest.raises(CheckpointError, match=r"perception\.ops must be a plain value or a list of them"):
        load_nca(save(config, NCA(FixedPerception(16), hidden=32), tmp_path / "d.ckpt"))


def test_an_exported_mixed_bank_rebuilds_to_the_same_rollout(tmp_path):
    from ncalab.demo import export_checkpoint
    from ncalab.exported import load_model_folder

    config = run_config(tmp_path, "perception=operators", f"perception.ops=[{','.join(MIXED)}]")
    nca = mixed_nca()
    export_checkpoint(save(config, nca, tmp_path / "m.ckpt"), tmp_path / "site")
    meta = json.loads((tmp_path / "site" / "model.json").read_text())
    assert meta["perception"] == {
        "name": "operators",
        "class": "FixedPerception",
        "n_ops": len(MIXED),
        "kernel_size": 5,
        "scale_mode": None,
        "ops": MIXED,
    }
    stored, _ = load_model_folder(tmp_path / "site")
    assert stored.perception.ops == tuple(MIXED) and stored.perception.response_scale() is None
    assert torch.equal(stored.perception.operator_weight(), nca.perception.operator_weight())
    assert stored.fire_rate == 0.5  # the run config's, as load_nca rebuilt it
    stored.fire_rate = nca.fire_rate
    x = live_state()
    with torch.no_grad():
        assert torch.equal(stored.rollout(x, 5), nca.rollout(x, 5))


def test_bench_takes_a_bank_on_the_command_line():
    from ncalab.tools.bench import PERCEPTIONS, Spec, flops_per_iter, parse_perceptions, perception_factory

    names = parse_perceptions("sobel3, operators:sobel3_x,sobel3_y,laplace3,sobel5,operators:gauss5+laplace3")
    assert names == ["sobel3", "operators:sobel3_x,sobel3_y,laplace3", "sobel5", "operators:gauss5+laplace3"]
    p = perception_factory(names[1])[0]()
    assert (p.ops, p.kernel_size, p.name) == (("sobel3_x", "sobel3_y", "laplace3"), 3, names[1])
    assert perception_factory(names[3])[0]().ops == ("gauss5", "laplace3")
    # the default bank is the one conf/perception/operators.yaml configures
    assert PERCEPTIONS["operators"][0]().ops == tuple(
        OmegaConf.load(CONF / "perception" / "operators.yaml").perception.ops
    )
    c, h = 16, 128
    fwd = 2 * c * 3 * 9 + 2 * c * 4 * h + 2 * h * c
    bwd = 2 * (2 * c * 4 * h + 2 * h * c) + 2 * c * 3 * 9
    assert flops_per_iter(Spec(names[1], size=10, batch=1, steps=1, impl="ncalab")) == 100 * (fwd + bwd)
    with pytest.raises(SystemExit, match=r"unknown operator 'laplace9'; known: sobel3_x"):
        parse_perceptions("operators:sobel3_x,laplace9")
    with pytest.raises(SystemExit, match=r"unknown perception 'laplace3'; accepted: .*operators:<op>,<op>"):
        parse_perceptions("laplace3")


def test_the_wandb_run_name_names_the_banks_operators(monkeypatch, tmp_path):
    from ncalab import loggers

    bank = {"name": "operators", "ops": ["sobel3_x", "laplace3"]}
    assert loggers.run_name(None, bank) == "perception=operators,perception.ops=[sobel3_x,laplace3]"
    assert loggers.run_name("seed=1", bank) == "seed=1,perception.ops=[sobel3_x,laplace3]"
    given = "perception.ops=[sobel3_x,laplace3],seed=1"
    assert loggers.run_name(given, bank) == given
    assert loggers.run_name("seed=1", {"name": "sobel3", "ops": ["sobel3_x", "sobel3_y"]}) == "seed=1"
    assert loggers.run_name("seed=1", {"name": "trainable_scale"}) == "seed=1"
    monkeypatch.setattr(loggers, "_hydra_run_info", lambda: ("sweep-x", "seed=2", ["seed=2"]))
    logger = loggers.wandb_logger(save_dir=str(tmp_path), mode="disabled", run_config={"perception": bank})
    assert logger._wandb_init["name"] == "seed=2,perception.ops=[sobel3_x,laplace3]"
    assert logger._wandb_init["config"]["perception"]["ops"] == ["sobel3_x", "laplace3"]
