"""Validation of the composed config: a wrong type or an impossible value stops the run naming the key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ncalab.data import MODES, damaged_count
from ncalab.errors import ConfigError
from ncalab.guard import ACTIONS
from ncalab.lit_module import GRAD_MODES
from ncalab.nca import PRECISIONS


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool)


MAX_SEED = 2**32 - 1
# Sections read key by key: a key that is not one of RULES' is a typo (or a setting that does not exist) and
# would otherwise be ignored silently or fail deep inside the run.
CHECKED_SECTIONS = ("rollout", "loss", "grad", "guard")
# (``optim`` and ``schedule`` are Hydra partials of any torch optimiser and scheduler: their constructors check their
# own keys; the few settings every run has are worded here.)
# Groups whose every entry is built (instantiated) into a callback or a logger.
BUILT_GROUPS = ("callbacks", "logger")

# key -> (check, what would be accepted)
Rule = tuple[Callable[[Any], bool], str]
RULES: dict[str, Rule] = {
    # numpy's generator (seeded with it) takes 0 .. 2**32 - 1
    "seed": (lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
    "compile": (lambda v: isinstance(v, bool), "true or false"),
    "ckpt_path": (lambda v: v is None or isinstance(v, str), "null or a path to a .ckpt file"),
    "model.channels": (lambda v: _is_int(v) and v >= 4, "an integer >= 4 (RGBA + hidden channels)"),
    "model.hidden": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "model.fire_rate": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "model.alive_threshold": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.precision": (lambda v: v in PRECISIONS, " | ".join(PRECISIONS)),
    "model.checkpoint_every": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "rollout.min_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "rollout.max_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "rollout.backprop_steps": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "data.target": (
        lambda v: isinstance(v, str) and v != "",
        "a built-in target name, emoji:<name or code point>, or an image path",
    ),
    "data.target_size": (lambda v: _is_int(v) and v >= 4, "an integer >= 4"),
    "data.padding": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "data.allow_upscale": (lambda v: isinstance(v, bool), "true or false"),
    "data.seed_on_pattern": (lambda v: isinstance(v, bool), "true or false"),
    "data.pool_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "data.batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "data.mode": (lambda v: v in MODES, " | ".join(MODES)),
    "data.damage_share": (
        lambda v: _is_number(v) and 0 <= v < 1,
        "a number in [0, 1): the share of a batch damaged",
    ),
    "data.reseed_share": (
        lambda v: _is_number(v) and 0 < v <= 1,
        "a number in (0, 1]: the share of batches whose worst sample is reseeded",
    ),
    "data.age_samples": (
        lambda v: _is_int(v) and v >= 0,
        "an integer >= 0: pool states aged after each batch",
    ),
    "data.age_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1: the steps each aged state runs"),
    "data.steps_per_epoch": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "loss.overflow_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "loss.overflow_bound": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "loss.cell_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "grad.mode": (lambda v: v in GRAD_MODES, " | ".join(GRAD_MODES)),
    "grad.max_norm": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "trainer.max_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "guard.enabled": (lambda v: isinstance(v, bool), "true or false"),
    "guard.action": (lambda v: v in ACTIONS, " | ".join(ACTIONS)),
    "guard.max_state": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "guard.lr_factor": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "guard.max_rollbacks": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "guard.snapshot_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
}

# Checked when present: the usual settings of the optimiser and schedule (another class may not have them), and the
# checkpoint callback's (ncalab.callbacks.RunCheckpoint, Lightning's ModelCheckpoint, which compares before it checks).
OPTIONAL_RULES: dict[str, Rule] = {
    "optim.lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "optim.betas": (
        lambda v: (
            isinstance(v, list | tuple) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)
        ),
        "two numbers in [0, 1), e.g. [0.9, 0.999]",
    ),
    "schedule.gamma": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "schedule.milestones": (
        lambda v: isinstance(v, list | tuple) and all(_is_int(m) and m >= 0 for m in v),
        "a list of step numbers, e.g. [2000]",
    ),
    "callbacks.checkpoint.every_n_train_steps": (
        lambda v: v is None or (_is_int(v) and v >= 0),
        "null or an integer >= 0 (0: no periodic checkpoint)",
    ),
    "callbacks.checkpoint.save_top_k": (lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
}


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first key that is missing, of the wrong type or out of range."""
    if "perception" not in cfg or "_target_" not in cfg.perception:
        raise ConfigError("perception: no perception selected; choose one with perception=<name>")
    if "ops" in cfg.perception and cfg.perception.ops is None and cfg.perception.get("operators") is None:
        raise ConfigError(
            "perception.ops=null names no operators; give a list, e.g. perception.ops=[sobel3_x,sobel3_y,laplace3], "
            "or choose a bank with perception=sobel3 (sobel5, sobel5_diag)"
        )
    for section in CHECKED_SECTIONS:
        node = cfg.get(section)
        if isinstance(node, DictConfig):
            known = sorted(k.split(".", 1)[1] for k in RULES if k.startswith(f"{section}."))
            for key in node:
                if key not in known:
                    raise ConfigError(
                        f"{section}.{key} is not a setting of {section}; accepted: {', '.join(known)}"
                    )
    for group in BUILT_GROUPS:
        node = cfg.get(group)
        if node is not None and not isinstance(node, DictConfig):
            raise ConfigError(f"{group}={node!r} is not valid; expected a mapping of named entries (or null)")
        for key, entry in (node or {}).items():
            if entry is not None and not (isinstance(entry, DictConfig) and "_target_" in entry):
                raise ConfigError(
                    f"{group}.{key}={OmegaConf.to_container(entry) if OmegaConf.is_config(entry) else entry!r} "
                    f"is not valid; expected null (off) or a mapping with a _target_"
                )
    for key, (check, accepted) in OPTIONAL_RULES.items():
        value = OmegaConf.select(cfg, key, default="<missing>", throw_on_missing=False)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if value != "<missing>" and not check(value):
            raise ConfigError(f"{key}={value!r} is not valid; expected {accepted}")
    values = {}
    for key, (check, accepted) in RULES.items():
        value = OmegaConf.select(cfg, key, default="<missing>", throw_on_missing=False)
        if isinstance(value, DictConfig | list) or OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if value == "<missing>":
            raise ConfigError(f"{key} is missing from the config; expected {accepted}")
        if not check(value):
            raise ConfigError(f"{key}={value!r} is not valid; expected {accepted}")
        values[key] = value
    if values["rollout.min_steps"] > values["rollout.max_steps"]:
        raise ConfigError(
            f"rollout.min_steps={values['rollout.min_steps']} is above rollout.max_steps="
            f"{values['rollout.max_steps']}; min_steps must be <= max_steps"
        )
    if values["data.batch_size"] > values["data.pool_size"] and values["data.mode"] != "growing":
        raise ConfigError(
            f"data.batch_size={values['data.batch_size']} is above data.pool_size={values['data.pool_size']}; "
            "a batch is drawn from the pool without replacement"
        )
    damaged_count(values["data.damage_share"], values["data.batch_size"])  # raises naming both keys
    devices = OmegaConf.select(cfg, "trainer.devices")
    nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1) or 1
    if _is_int(devices) and _is_int(nodes) and devices * nodes > 1 and values["data.mode"] != "growing":
        shard = values["data.pool_size"] // (devices * nodes)
        if values["data.batch_size"] > shard:
            raise ConfigError(
                f"data.batch_size={values['data.batch_size']} is above the pool shard of each process "
                f"(data.pool_size={values['data.pool_size']} // trainer.devices={devices} x trainer.num_nodes={nodes}"
                f" = {shard}); lower data.batch_size or raise data.pool_size"
            )
    threads = OmegaConf.select(cfg, "threads", default=None)
    if threads is not None and not (_is_int(threads) and threads >= 1):
        raise ConfigError(f"threads={threads!r} is not valid; expected null (automatic) or an integer >= 1")
    perception_channels = OmegaConf.select(cfg, "perception.channels")
    if perception_channels != values["model.channels"]:
        raise ConfigError(
            f"perception.channels={perception_channels} differs from model.channels={values['model.channels']}; "
            "leave perception.channels at its default ${model.channels}"
        )
