"""Typed, validated params: every stage reads params.yaml through `load_params`.

A typo fails here, before any model loads, with a message that names the key and what is valid.
Checks that need a registry's names (metrics, perturbations, ranking modes) live with the
registry, which adds them with `@check` when imported: this module imports none of them, so a
stage's code dependencies stay its own, and a stage validates the names of what it can run.
`cwa run` imports every registry and so checks every key before DVC starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from cwa import CwaError

CONTROLS = ("random_k", "bottom_k")
DTYPES = ("float32", "bfloat16", "float16")
DEVICE_MAPS = ("none", "auto", "balanced", "balanced_low_0", "sequential")


@dataclass(frozen=True)
class FamilyMember:
    """Shape of one built-in Llama model."""

    hidden: int
    layers: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class Params:
    # model under study
    model: str = "builtin:kjv-base"
    dtype: str = "float32"
    device: str = "auto"
    device_map: str = "none"  # none | auto | balanced | sequential: split one model over GPUs
    num_processes: int = 1  # sensitivity: data-parallel processes (one per GPU)
    # sensitivity
    metric: str = "grad_x_weight"
    compare_metrics: tuple[str, ...] = (
        "magnitude",
        "grad_x_weight",
        "grad_squared",
        "obd",
        "wanda",
        "super_weight",
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    calib_samples: int = 64
    seq_len: int = 128
    batch_size: int = 16
    probes: int = 16
    layer_group: int = 0  # second-order metrics: blocks per pass (0: all at once)
    # ranking
    mode: str = "global"
    topk: tuple[int, ...] = (10, 100, 1000)
    controls: tuple[str, ...] = ("random_k", "bottom_k")
    random_draws: int = 3
    include_embeddings: bool = False
    include_1d: bool = False
    layers: tuple[int, ...] = ()
    # perturbation and evaluation
    perturb: tuple[str, ...] = ("zero", "sign_flip", "scale", "bit_flip", "quantize")
    # strength sweeps: the first value is used for every k, all values at headline_k
    scale_alpha: tuple[float, ...] = (2.0, 0.5, 10.0)
    noise_sigma: tuple[float, ...] = (1.0, 0.5, 2.0)
    abs_sigma: tuple[float, ...] = (0.05, 0.2)
    flip_bit: tuple[int | str, ...] = (30, 26)
    flip_prob: tuple[float, ...] = (0.01, 0.05)
    quant_bits: tuple[int, ...] = (4, 2)
    mask_ratios: tuple[float, ...] = (0.5,)
    tasks: tuple[str, ...] = ("kjv_lambada", "kjv_hellaswag")
    task_items: int = 128
    lm_eval_tasks: tuple[str, ...] = ()
    # fault-injection campaign
    fault_rates: tuple[float, ...] = (1e-7, 1e-6)
    fault_trials: int = 4
    fault_protect: tuple[float, ...] = (0.01, 0.1)
    target_components: tuple[str, ...] = ()
    target_layers: tuple[int, ...] = ()
    spike_ratio: float = 100.0
    eval_samples: int = 64
    bootstrap: int = 1000
    headline_k: int = 100
    # built-in corpus and model family
    vocab_size: int = 4096
    train_steps: int = 480
    train_batch: int = 16
    train_seq_len: int = 128
    train_lr: float = 3e-3
    train_seed: int = 0
    family: dict[str, FamilyMember] = field(default_factory=dict)

    def __post_init__(self):
        _validate(self)

    @property
    def pool_options(self) -> dict:
        """Keyword arguments of `cwa.models.pool`."""
        return {
            "include_embeddings": self.include_embeddings,
            "include_1d": self.include_1d,
            "layers": self.layers,
        }


def fail(key: str, message: str):
    raise CwaError(f"params: `{key}` {message}")


def check_choice(key: str, value, valid):
    if value not in valid:
        fail(key, f"is {value!r}; valid values: {', '.join(valid)}")


_CHECKS: list[Callable[[Params], None]] = []


def check(rule: Callable[[Params], None]) -> Callable[[Params], None]:
    """Registers a rule every Params built afterwards must pass (a registry's names)."""
    _CHECKS.append(rule)
    return rule


def _validate(p: Params):
    if len(set(p.compare_metrics)) < 2:
        fail("compare_metrics", f"needs at least 2 distinct metrics, got {list(p.compare_metrics)}")
    check_choice("dtype", p.dtype, DTYPES)
    check_choice("device_map", p.device_map, DEVICE_MAPS)
    for name in p.controls:
        check_choice("controls", name, CONTROLS)
    for key in (
        "calib_samples",
        "seq_len",
        "batch_size",
        "probes",
        "random_draws",
        "eval_samples",
        "bootstrap",
        "headline_k",
        "task_items",
        "fault_trials",
        "num_processes",
        "vocab_size",
        "train_steps",
        "train_batch",
        "train_seq_len",
    ):
        if getattr(p, key) < 1:
            fail(key, f"must be >= 1, got {getattr(p, key)}")
    if p.layer_group < 0:
        fail("layer_group", f"must be >= 0 (0: every block in one pass), got {p.layer_group}")
    if p.num_processes > 1 and p.device_map != "none":
        fail(
            "num_processes",
            f"is {p.num_processes} with device_map {p.device_map!r}: data parallelism copies "
            f"the whole model to each process; split a model over devices in one process "
            f"(num_processes: 1) or replicate it (device_map: none)",
        )
    if p.seq_len < 2:
        fail("seq_len", "must be >= 2 (one token predicts the next)")
    if not p.seeds or len(set(p.seeds)) != len(p.seeds):
        fail("seeds", f"must be a non-empty list of distinct integers, got {list(p.seeds)}")
    if not p.topk or any(k < 1 for k in p.topk):
        fail("topk", f"must be a non-empty list of positive integers, got {list(p.topk)}")
    if p.headline_k not in p.topk:
        fail("headline_k", f"({p.headline_k}) must be one of topk {list(p.topk)}")
    if p.spike_ratio <= 1:
        fail("spike_ratio", f"must be > 1 (a spike is many times the median), got {p.spike_ratio}")
    _validate_ranges(p)
    if p.model.startswith(("/", "./", "../", "~")):
        directory = Path(p.model).expanduser()
        if not (directory / "config.json").exists():
            fail(
                "model",
                f"is the path {p.model!r}, which holds no config.json: give a directory "
                f"saved with save_pretrained, a hub id, or builtin:<name>",
            )
    if p.model.startswith("builtin:") and p.model.removeprefix("builtin:") not in p.family:
        fail(
            "model",
            f"names no built-in model; valid: {', '.join('builtin:' + n for n in p.family)}",
        )
    for rule in _CHECKS:
        rule(p)


def _validate_ranges(p: Params):
    if len(set(p.mask_ratios)) != len(p.mask_ratios) or not all(0 < r < 1 for r in p.mask_ratios):
        fail("mask_ratios", f"must be distinct fractions in (0, 1), got {list(p.mask_ratios)}")
    if not p.fault_rates or not all(0 < r < 1 for r in p.fault_rates):
        fail("fault_rates", f"must be bit error rates in (0, 1), got {list(p.fault_rates)}")
    if not all(0 < f <= 0.5 for f in p.fault_protect):
        fail(
            "fault_protect",
            f"must be pool fractions in (0, 0.5] (a random set of the same size must fit "
            f"beside the top set), got {list(p.fault_protect)}",
        )
    if any(layer < 0 for layer in p.target_layers):
        fail("target_layers", f"must be block indices >= 0, got {list(p.target_layers)}")


def _coerce(name: str, ftype: str, value):
    """Converts YAML values to the declared field types; rejects the wrong kind by name."""
    scalar = {"int": int, "float": float, "str": str, "bool": bool, "int | str": (int, str)}
    if ftype.startswith("tuple["):
        if not isinstance(value, list | tuple):
            value = [value]
        inner = ftype[len("tuple[") :].split(",")[0].strip()
        return tuple(_coerce(name, inner, v) for v in value)
    if ftype.startswith("dict["):
        if not isinstance(value, dict):
            fail(name, f"must be a mapping, got {value!r}")
        return {str(k): _member(f"{name}.{k}", v) for k, v in value.items()}
    kind = scalar[ftype]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        fail(name, f"must be {ftype}, got {value!r}")
    return value


def _member(name: str, value) -> FamilyMember:
    valid = [f.name for f in fields(FamilyMember)]
    if not isinstance(value, dict) or sorted(value) != sorted(valid):
        fail(name, f"must be a mapping with exactly the keys {', '.join(valid)}, got {value!r}")
    return FamilyMember(**{k: _coerce(f"{name}.{k}", "int", value[k]) for k in valid})


def params_from_dict(raw: dict) -> Params:
    known = {f.name: f for f in fields(Params)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise CwaError(
            f"params: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(known)}"
        )
    values = {k: _coerce(k, str(known[k].type), v) for k, v in raw.items()}
    return Params(**values)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise CwaError(f"params file {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise CwaError(f"params file {path} must hold a mapping of keys to values")
    return params_from_dict(raw)


def as_dict(p: Params) -> dict:
    """Plain-data form for manifests."""
    return dataclasses.asdict(p)
