"""Params: every bad value fails before any model loads, naming the key and what is valid."""

import math

import pytest
import yaml

import cwa.pipeline.load_registries  # noqa: F401  (each registry adds its name checks to params on import)
from cwa import CwaError
from cwa.config.params import Params, load_params, params_from_dict

FAMILY = {"m": {"hidden": 8, "layers": 1, "heads": 2, "intermediate": 16}}


def make(**overrides):
    return params_from_dict({"family": FAMILY, "model": "builtin:m", **overrides})


def test_repository_params_file_is_valid():
    p = load_params("params.yaml")
    assert p.model.startswith("builtin:") and p.headline_k in p.topk


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"metrc": "x"}, "unknown key\\(s\\) metrc; valid keys: model"),
        (
            {"metric": "fisher"},
            "`metric` is 'fisher'; valid values: act_mag, grad_squared, grad_x_weight",
        ),
        ({"mode": "per_row"}, "valid values: global, per_component, per_head, per_layer"),
        ({"perturb": ["zero", "melt"]}, "`perturb` is 'melt'; valid values: bit_flip"),
        ({"controls": ["random"]}, "valid values: bottom_k, magnitude_matched_k, random_k"),
        ({"num_processes": 0}, "`num_processes` must be >= 1, got 0"),
        ({"layer_group": -1}, "`layer_group` must be >= 0 \\(0: every block in one pass\\)"),
        ({"device_map": "everywhere"}, "`device_map` is 'everywhere'; valid values: none, auto"),
        (
            {"num_processes": 2, "device_map": "auto"},
            "data parallelism copies the whole model to each process",
        ),
        ({"seeds": [0, "one"]}, "`seeds` must be int, got 'one'"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"topk": [0, 10]}, "positive"),
        ({"headline_k": 7}, "must be one of topk"),
        (
            {"perturb": ["sign_flip", "sign_flip"]},
            "must be a non-empty list of distinct perturbations",
        ),
        ({"batch_size": 0}, "`batch_size` must be >= 1"),
        ({"calib_samples": 2.5}, "must be int"),
        ({"flip_bit": 40}, "`flip_bit` must be a non-empty list of distinct bit positions 0..31"),
        ({"flip_bit": ["exponents"]}, "or fields sign, exponent, mantissa"),
        ({"flip_bit": [True]}, "`flip_bit` must be int | str, got True"),
        ({"flip_bit": [30, 30]}, "distinct"),
        ({"scale_alpha": []}, "`scale_alpha` must be a non-empty list"),
        ({"kl_topk": -1}, "`kl_topk` must be 0 \\(the whole vocabulary\\) or a number of tokens"),
        ({"noise_sigma": [0.5, -1]}, "`noise_sigma` must be .* numbers > 0, got \\[0.5, -1.0\\]"),
        ({"flip_prob": [1.5]}, "probabilities in \\(0, 1\\]"),
        ({"quant_bits": [1]}, "bit widths 2..16"),
        ({"mask_ratios": [1.0]}, "`mask_ratios` must be distinct fractions in \\(0, 1\\)"),
        ({"target_layers": [-1]}, "`target_layers` must be block indices >= 0"),
        ({"dtype": "float8"}, "valid values: float32, bfloat16, float16"),
        ({"model": "builtin:nope"}, "valid: builtin:m"),
        ({"include_embeddings": "yes"}, "must be bool"),
        ({"family": {"m": {"hidden": 8}}}, "the keys hidden, layers, heads, intermediate \\(and"),
        (
            {
                "family": {
                    "m": {
                        "hidden": 8,
                        "layers": 1,
                        "heads": 2,
                        "intermediate": 8,
                        "experts": 4,
                        "active": 5,
                    }
                }
            },
            "needs experts >= 2 and 1 <= active <= experts, got experts 4, active 5",
        ),
        ({"train_checkpoints": [0, 10]}, "`train_checkpoints` must be distinct steps in 1..479"),
        ({"models": {"a.b": "builtin:m"}}, "`models.a.b` label must be letters, digits, - and _"),
        (
            {"models": {"x": {"model": "builtin:m", "kind": "sparse"}}},
            "`models.x.kind` is 'sparse'; valid values: dense, moe",
        ),
        (
            {"models": {"x": {"model": "builtin:m", "tuning": "chat"}}},
            "`models.x.tuning` is 'chat'; valid values: base, instruct",
        ),
        (
            {"models": {"x": {"model": "builtin:m", "revision": "step-7"}}},
            "`models.x.revision` is 'step-7'; a built-in model's checkpoints: step-60, step-120",
        ),
        ({"models": {"x": {"model": "builtin:zz"}}}, "`models.x.model` names no built-in model"),
        ({"models": {"x": {"model": "./nowhere"}}}, "`models.x.model` is the path './nowhere'"),
        ({"models": {"x": {"revison": "main", "model": "a/b"}}}, "`models.x` must be a model or"),
        ({"models": {"x": {"model": "a/b", "step": -1}}}, "`models.x.step` must be a training"),
        ({"finetune_lr": 0}, "`finetune_lr` must be a learning rate in \\(0, 1\\), got 0.0"),
        ({"finetune_seeds": [0, 0]}, "`finetune_seeds` must be a non-empty list of distinct"),
        ({"finetune_seeds": []}, "`finetune_seeds` must be a non-empty list"),
        ({"finetune_arms": ["full", "full"]}, "`finetune_arms` must be distinct arms, valid: full"),
        ({"finetune_arms": []}, "`finetune_arms` must be distinct arms"),
        ({"finetune_arms": ["sparse"]}, "`finetune_arms` is 'sparse'; valid values: full, "),
        ({"finetune_steps": 0}, "`finetune_steps` must be >= 1, got 0"),
        ({"finetune_k": 0}, "`finetune_k` must be >= 1, got 0"),
        ({"vocab_size": 10}, r"`vocab_size` must be >= 257 \(the built-in byte-level tokenizer"),
        ({"vocab_size": 256}, "`vocab_size` must be >= 257"),
        (
            {"finetune_data": "builtin:kjv"},
            "`finetune_data` is 'builtin:kjv'; valid built-in sources for it: builtin:web",
        ),
        ({"eval_data": "builtin:web"}, "`eval_data` is 'builtin:web'; valid built-in sources for "),
    ],
)
def test_bad_params_fail_with_a_message_naming_key_and_valid_values(overrides, message):
    with pytest.raises(CwaError, match=message):
        make(**overrides)


def test_scalars_become_lists_and_ints_become_floats():
    p = make(seeds=3, topk=100, headline_k=100, noise_sigma=1, flip_bit="sign")
    assert p.seeds == (3,) and p.topk == (100,) and p.noise_sigma == (1.0,)
    assert p.flip_bit == ("sign",) and make(flip_bit=[31, "mantissa"]).flip_bit == (31, "mantissa")
    assert isinstance(p, Params)


def test_missing_or_malformed_params_file(tmp_path):
    with pytest.raises(CwaError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(CwaError, match="mapping"):
        load_params(bad)


def test_params_yaml_is_read_as_dvc_writes_it():
    """DVC (YAML 1.2) writes the string 2:4 unquoted and may write 1e-07: YAML 1.1 would read
    the number 124 and the string '1e-07'."""
    from cwa.config.params import read_yaml

    values = read_yaml("prune_nm: [2:4, 4:8]\nfault_rates: [1e-07, 1.0e-6]\nlr: 3.0e-3\nn: 480")
    assert values == {
        "prune_nm": ["2:4", "4:8"],
        "fault_rates": [1e-7, 1e-6],
        "lr": 0.003,
        "n": 480,
    }
    assert isinstance(values["n"], int)
    assert read_yaml("a: [true, null, .inf, 0x10, 1_000]") == {
        "a": [True, None, math.inf, 16, 1000]
    }
