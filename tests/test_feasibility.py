"""Values validation accepts must run: what the machine and the model's shape allow is refused
before any weight is read (cwa.pipeline.feasibility), and a property test draws param sets to show
that every set is either refused with one line naming its key or runs the stages' cheap logic."""

import dataclasses
import functools
import os
import re
from typing import NamedTuple

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import cwa.pipeline.load_registries  # noqa: F401  (every check and key, as check_params sees them)
from cwa import CwaError
from cwa.config.params import DTYPES, FamilyMember, Params, StudyMember, params_from_dict
from cwa.experiments.finetuning import ARMS
from cwa.experiments.perturbations import PERTURBATIONS, sweeps
from cwa.experiments.sweep import SweepConfig, experiments, first_settings, headline_setting, specs
from cwa.models.anatomy import describe, pool
from cwa.models.loading import check_positions
from cwa.models.training import build_model
from cwa.pipeline import feasibility
from cwa.scoring.metrics import METRICS
from cwa.scoring.store import magnitude_bins
from cwa.selection.ranking import CONTROLS, MODES, rank, target

TINY = {"kjv-tiny": FamilyMember(hidden=16, layers=2, heads=2, intermediate=64)}
# kjv-tiny's pool, by hand: per block q, k, v, o of 16 x 16 and three MLP matrices of 16 x 64
BLOCK = 4 * 16 * 16 + 3 * 16 * 64  # 4096
POOL = 2 * BLOCK


def tiny(**changes) -> Params:
    base = Params(
        model="builtin:kjv-tiny",
        family=TINY,
        models={"tiny": StudyMember("builtin:kjv-tiny")},
        device="cpu",
        topk=(10,),
        headline_k=10,
    )
    return dataclasses.replace(base, **changes)


def refused(params: Params, message: str):
    with pytest.raises(CwaError) as err:
        feasibility.check(params)
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("controls", "fits", "too_many"),
    [
        (("random_k", "bottom_k"), POOL // 2, POOL // 2 + 1),
        (("bottom_k",), POOL, POOL + 1),
        ((), POOL, POOL + 1),
    ],
)
def test_every_k_fits_the_global_pool_twice_over_with_random_k(controls, fits, too_many):
    feasibility.check(tiny(topk=(fits,), headline_k=fits, controls=controls))
    refused(
        tiny(topk=(10, too_many), controls=controls),
        f"`topk` {too_many} does not fit: mode global ranks 1 group(s) and the smallest, global, "
        f"holds {POOL} weights",
    )


@pytest.mark.parametrize(
    ("mode", "smallest", "groups"),
    [
        ("per_layer", 16 * 16, 14),  # an attention matrix
        ("per_component", 2 * 16 * 16, 7),  # attn_q over both blocks
        ("per_head", 4 * 8 * 16, 4),  # a head's 8 q, k, v rows and 8 o columns of 16
    ],
)
def test_every_k_fits_the_smallest_group_of_the_mode(mode, smallest, groups):
    feasibility.check(tiny(mode=mode, topk=(smallest // 2,), headline_k=smallest // 2))
    refused(
        tiny(mode=mode, topk=(10, smallest // 2 + 1)),
        f"mode {mode} ranks {groups} group(s) and the smallest",
    )
    refused(tiny(mode=mode, topk=(10, smallest // 2 + 1)), f"valid: every k <= {smallest // 2}")


def test_the_fine_tuning_sets_fit_the_pool_twice_over():
    feasibility.check(tiny(finetune_k=POOL // 2))
    refused(
        tiny(finetune_k=POOL // 2 + 1),
        f"`finetune_k` is {POOL // 2 + 1} but the pool holds {POOL} weights and the random set "
        f"is drawn beside the top set; valid: finetune_k <= {POOL // 2}",
    )


def test_the_clustered_top_set_fits_the_pool():
    feasibility.check(tiny(cluster_top=POOL))
    refused(
        tiny(cluster_top=POOL + 1),
        f"`cluster_top` is {POOL + 1} but the pool holds {POOL} weights; valid: cluster_top <= "
        f"{POOL}",
    )


def test_a_study_without_models_is_refused():
    refused(tiny(models={}), "`models` is empty, but the study (member@<label> stages, the scal")


def test_an_lm_eval_task_the_harness_does_not_know_is_refused_before_any_stage():
    pytest.importorskip("lm_eval")
    feasibility.check(tiny(lm_eval_tasks=("lm_kjv_lambada",)))  # shipped under configs/lm_eval
    refused(
        tiny(lm_eval_tasks=("lm_kjv_lambada", "no_such_task")),
        "`lm_eval_tasks` ['no_such_task'] are not lm-eval tasks: neither under configs/lm_eval",
    )


def test_every_unit_kind_exists_in_the_pool():
    feasibility.check(tiny(units=("neuron", "head", "channel"), unit_topk=(2,)))
    refused(tiny(units=("expert",)), "`units` expert: the pool holds none")


def test_targets_and_layers_the_model_lacks():
    refused(tiny(layers=(2,)), "`layers` [2] do not exist; the model has layers 0..1")
    refused(tiny(target_layers=(5,)), "`target_layers` [5] are not in the ranking pool")
    refused(tiny(target_components=("router",)), "`target_components` ['router'] are not in")
    # a target narrows the pool the ks must fit: one block's attn_o is 256 weights
    feasibility.check(
        tiny(target_components=("attn_o",), target_layers=(1,), topk=(128,), headline_k=128)
    )
    refused(
        tiny(target_components=("attn_o",), target_layers=(1,), topk=(10, 129)), "holds 256 weights"
    )


def test_windows_longer_than_the_positions():
    feasibility.check(tiny(seq_len=128))  # the built-in models' context: train_seq_len
    refused(
        tiny(seq_len=129),
        "`seq_len` is 129 but builtin:kjv-tiny serves windows of at most 128 tokens",
    )
    from transformers import GPT2Config

    check_positions(GPT2Config(n_positions=64), 64, "gpt2-like")
    with pytest.raises(CwaError, match="at most 64 tokens"):
        check_positions(GPT2Config(n_positions=64), 65, "gpt2-like")


def test_strengths_the_dtype_cannot_hold():
    for dtype in ("bfloat16", "float16"):  # the default positions are named for every dtype
        feasibility.check(tiny(dtype=dtype))
    refused(
        tiny(dtype="bfloat16", registered={"flip_bit": (30,)}),
        "`flip_bit` 30 cannot apply with `dtype` bfloat16: bit 30 is outside",
    )
    feasibility.check(tiny(dtype="bfloat16", registered={"flip_bit": (14, 7)}))


def test_devices_the_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("auto", "cpu"):
        feasibility.check_machine(device, "none", 1)
    with pytest.raises(
        CwaError,
        match=r"`device` is 'cuda' but this machine has 0 CUDA GPU\(s\); valid here: auto, cpu$",
    ):
        feasibility.check_machine("cuda", "none", 1)
    with pytest.raises(CwaError, match="`device_map` is 'auto', which splits a model over GPUs"):
        feasibility.check_machine("auto", "auto", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    feasibility.check_machine("cuda:1", "balanced", 1)
    feasibility.check_machine("auto", "none", 2)
    with pytest.raises(CwaError, match=r"valid here: auto, cpu, cuda, cuda:0..cuda:1"):
        feasibility.check_machine("cuda:2", "none", 1)
    with pytest.raises(CwaError, match="`num_processes` is 3 but this machine has 2 GPU"):
        feasibility.check_machine("auto", "none", 3)


def test_a_hub_id_outside_the_local_cache_is_left_to_its_first_load(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert feasibility.empty_model(tiny(model="nobody/no-such-model")) is None


# ---- the property: every drawn param set is refused in one line naming a key, or runs --------


class Either(NamedTuple):
    """A key's values within its own rule, and values that may break it."""

    valid: st.SearchStrategy
    invalid: st.SearchStrategy


def mostly(either: Either) -> st.SearchStrategy:
    """Valid values four times in five, so a set of several drawn keys often passes and runs."""
    return st.integers(0, 4).flatmap(lambda i: either.invalid if i == 0 else either.valid)


def one_of(valid, bad):
    return Either(st.sampled_from(valid), st.just(bad))


def count(lo, hi):
    return Either(st.integers(lo, hi), st.integers(-2, lo - 1))


def some(elements, bad_elements=None, min_size=1):
    """A list of distinct valid elements, or any list (repeats, bad elements, empty)."""
    anything = st.lists(elements if bad_elements is None else bad_elements, max_size=3)
    return Either(st.lists(elements, min_size=min_size, max_size=3, unique=True), anything)


_K = st.integers(1, 40) | st.integers(40, POOL + 10)
_COMPONENTS = ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_gate", "mlp_down"]
_STRENGTHS = {  # each sweep's values within its rule
    "scale_alpha": st.floats(-10, 10),
    "noise_sigma": st.floats(0.01, 10),
    "abs_sigma": st.floats(0.01, 10),
    "flip_bit": st.integers(0, 15)
    | st.sampled_from(["sign", "exponent", "mantissa", "exponent_top", "mantissa_top"]),
    "flip_prob": st.floats(0.001, 1),
    "quant_bits": st.integers(2, 16),
}
KEYS = {
    "dtype": one_of(DTYPES, "float8"),
    "device": one_of(["auto", "cpu"], "cuda:7"),
    "device_map": one_of(["none"], "auto"),
    "num_processes": count(1, 3),
    "metric": one_of(METRICS.names(), "fisher"),
    "compare_metrics": some(st.sampled_from(METRICS.names()), min_size=2),
    "seeds": some(st.integers(0, 5), st.integers(-2, 5)),
    "calib_samples": count(1, 8),
    "seq_len": count(2, 200),
    "batch_size": count(1, 8),
    "mode": one_of(MODES.names(), "per_row"),
    "topk": some(_K, st.integers(-1, 40)),
    "controls": some(st.sampled_from(CONTROLS.names()), st.just("random"), min_size=0),
    "random_draws": count(1, 3),
    "include_embeddings": st.booleans(),
    "include_1d": st.booleans(),
    "layers": some(st.integers(0, 1), st.integers(-1, 3), min_size=0),
    "target_components": some(st.sampled_from(_COMPONENTS), st.just("router"), min_size=0),
    "target_layers": some(st.integers(0, 1), st.integers(-1, 3), min_size=0),
    "perturb": some(st.sampled_from(PERTURBATIONS.names()), st.just("melt")),
    "mask_ratios": some(st.floats(0.01, 0.99), st.floats(-0.5, 1.5), min_size=0),
    "spike_ratio": Either(st.floats(1.01, 200), st.floats(-1, 1)),
    "fault_protect": some(st.floats(0.01, 0.5), st.floats(0, 1)),
    "eval_samples": count(1, 64),
    "bootstrap": count(1, 100),
    "probes": count(1, 4),
    "layer_group": count(0, 3),
    "fault_rates": some(st.floats(1e-9, 0.5), st.floats(-1, 2)),
    "fault_trials": count(1, 4),
    "task_items": count(1, 64),
    "tasks": some(st.sampled_from(["kjv_lambada", "kjv_hellaswag"]), min_size=0),
    "finetune_arms": some(st.sampled_from(ARMS), st.sampled_from([*ARMS, "sparse"])),
    "bos": st.booleans(),
    "vocab_size": count(257, 320),
    "cluster_top": count(1, POOL + 100),
    "train_steps": count(1, 100),
    "train_batch": count(1, 16),
    "train_lr": Either(st.floats(1e-4, 0.5), st.floats(-1, 2)),
    "train_seed": count(0, 3),
    "train_seq_len": count(2, 200),  # 1 is a valid key alone, but leaves no window of 2
    "family": Either(
        st.fixed_dictionaries(
            {
                "kjv-tiny": st.fixed_dictionaries(
                    {
                        "hidden": st.sampled_from([8, 12, 16]),
                        "layers": st.integers(1, 2),
                        "heads": st.sampled_from([1, 2]),  # even head dims (rotary)
                        "intermediate": st.sampled_from([16, 64]),
                    }
                )
            }
        ),
        st.fixed_dictionaries(
            {
                "kjv-tiny": st.fixed_dictionaries(
                    {
                        "hidden": st.sampled_from([8, 12, 16, 0]),
                        "layers": st.integers(0, 2),
                        "heads": st.integers(1, 3),
                        "intermediate": st.sampled_from([16, 64, 0]),
                    }
                )
            }
        ),
    ),
} | {
    s.key: some(
        _STRENGTHS[s.key],
        st.integers(-2, 40) if s.ftype == "tuple[int, ...]" else st.floats(-1, 12),
    )
    for s in sweeps()
}
DRAWN = {k: mostly(v) if isinstance(v, Either) else v for k, v in KEYS.items()}
VALID = {k: v.valid if isinstance(v, Either) else v for k, v in KEYS.items()}
ONE_LINE = re.compile(r"^params: `[a-z_.-]+` [^\n]+$")


@functools.cache
def tiny_model(shape: FamilyMember, vocab: int):
    return build_model(shape, vocab, 16, seed=0).eval()


def run_cheap_stage_logic(p: Params) -> None:
    """What the stages do after loading, minus the forward passes: the pool and its targets, the
    ranking of every seed on random scores, the sweep grid and the headline setting."""
    model = tiny_model(p.family["kjv-tiny"], p.vocab_size)
    chosen = target(pool(describe(model), **p.pool_options), p.target_components, p.target_layers)
    weights = dict(model.named_parameters())
    bins = {i.name: magnitude_bins(weights[i.name]) for i in chosen}
    config = SweepConfig.of(p)
    grid = specs(config)
    headline_setting(first_settings(config))
    for seed in p.seeds:
        g = torch.Generator().manual_seed(seed)
        scores = {i.name: torch.rand(i.shape, generator=g) for i in chosen}
        table = rank(
            chosen, scores, p.mode, p.topk, p.controls, p.random_draws, seed, p.metric, bins
        )
        tops = table.filter(pl.col("selection") == "top").group_by("group", "k").len()
        assert (tops["len"] == tops["k"]).all()  # exactly k in every group, for every k
        exps = experiments(table, grid, p.headline_k, p.mask_ratios, seed)
        assert all(e.size >= 1 for e in exps)  # no experiment perturbs nothing
        assert {e.k for e in exps} == set(p.topk)


@st.composite
def param_changes(draw) -> dict:
    """A few keys changed at once (many would almost always hold one invalid value)."""
    keys = draw(st.sets(st.sampled_from(sorted(DRAWN)), min_size=1, max_size=5))
    changes = {key: draw(DRAWN[key]) for key in sorted(keys)}
    if changes.get("topk") and draw(st.integers(0, 4)):  # mostly a headline k among them
        changes["headline_k"] = draw(st.sampled_from(changes["topk"]))
    return changes


@settings(
    max_examples=int(os.environ.get("CWA_EXAMPLES", "500")),
    derandomize=os.environ.get("CI", "").lower() == "true",  # CI: the same examples every run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@pytest.mark.slow  # a subprocess or many drawn cases: `make test` only
@given(param_changes())
@example({"mode": "per_head", "target_components": ["mlp_up"]})  # heads, and no attention
@example({"mode": "per_component", "include_1d": True, "topk": [600], "headline_k": 600})
def test_every_accepted_param_set_runs_or_is_refused_in_one_line(drawn):
    try:
        params = params_from_dict(tiny_raw(drawn))
        feasibility.check(params)
    except CwaError as err:
        assert ONE_LINE.match(str(err)), str(err)
        event(f"refused: {str(err).split('`')[1]}")
        return
    event("accepted")
    try:
        run_cheap_stage_logic(params)
    except CwaError as err:  # the refusals that need the scores (a control beside a crowded top)
        assert ONE_LINE.match(str(err)) and "`controls`" in str(err), str(err)
    # what the grid promises is what runs: the headline k is ranked and perturbed
    assert params.headline_k in params.topk and np.isfinite(params.spike_ratio)


def tiny_raw(drawn: dict) -> dict:
    """The property tests' base: kjv-tiny with the smallest vocabulary, a study of it, k = 10,
    and a clustered top set every drawn family's pool holds."""
    raw = {
        "model": "builtin:kjv-tiny",
        "vocab_size": 257,
        "family": {"kjv-tiny": dataclasses.asdict(TINY["kjv-tiny"])},
        "models": {"tiny": {"model": "builtin:kjv-tiny"}},
        "cluster_top": 100,
    }
    return raw | {"topk": [10], "headline_k": 10} | drawn


@st.composite
def valid_changes(draw) -> dict:
    """Up to six keys drawn within their own rules, and the rules between keys kept by
    construction: every k within the smallest ranking group (often at the bound), the headline
    k among them, the fine-tuning sets and the clustered top set inside the smallest pool, a
    bit the dtype has, attention beside per_head ranking, layers the family has (targeted ones
    inside the pool's), checkpoints before the last step, a calibration window per process,
    windows no longer than the trained positions."""
    keys = draw(st.sets(st.sampled_from(sorted(VALID)), min_size=1, max_size=6))
    changes = {key: draw(VALID[key]) for key in sorted(keys)}
    changes["finetune_k"] = draw(st.integers(1, 100))
    if changes.get("mode") == "per_head" and changes.get("target_components"):
        changes["target_components"] = sorted({*changes["target_components"], "attn_q"})
    layers = changes.get("family", {}).get("kjv-tiny", {}).get("layers", 2)
    pooled = [layer for layer in changes.get("layers", []) if layer < layers] or range(layers)
    if "layers" in changes:
        changes["layers"] = [layer for layer in changes["layers"] if layer < layers]
    if "target_layers" in changes:  # within the pool's layers
        changes["target_layers"] = [layer for layer in changes["target_layers"] if layer in pooled]
    if changes.get("num_processes", 1) > changes.get("calib_samples", Params.calib_samples):
        changes["calib_samples"] = changes["num_processes"]  # a window per process at least
    if "train_steps" in changes:  # checkpoints before the last step
        below = [c for c in Params.train_checkpoints if c < changes["train_steps"]]
        changes["train_checkpoints"] = below
    positions = changes.get("train_seq_len", Params.train_seq_len)
    changes["seq_len"] = min(changes.get("seq_len", Params.seq_len), positions)
    shape = params_from_dict(tiny_raw(changes | {"topk": [1], "headline_k": 1}))
    limit = largest_k(shape)
    if "cluster_top" in changes:  # within the pool
        changes["cluster_top"] = min(changes["cluster_top"], pool_size(shape))
    ks = draw(st.lists(st.integers(1, limit), min_size=1, max_size=3, unique=True))
    changes["topk"] = sorted({*ks, limit}) if draw(st.booleans()) else ks  # often the bound
    changes["headline_k"] = draw(st.sampled_from(changes["topk"]))
    return changes


def pool_size(p: Params) -> int:
    model = tiny_model(p.family["kjv-tiny"], p.vocab_size)
    return sum(i.numel for i in pool(describe(model), **p.pool_options))


def largest_k(p: Params) -> int:
    """The rule on k, written out: every group the mode ranks holds k weights, twice over when
    a random control is drawn beside the top set (group sizes summed from each member's shape)."""
    model = tiny_model(p.family["kjv-tiny"], p.vocab_size)
    chosen = target(pool(describe(model), **p.pool_options), p.target_components, p.target_layers)
    sizes = [
        sum(info.numel if part is None else len(part) for info, part in members)
        for _, members in MODES.get(p.mode).groups(chosen)
    ]
    random = {"random_k", "magnitude_matched_k"} & set(p.controls)
    return min(sizes) // (2 if random else 1)


@settings(
    max_examples=int(os.environ.get("CWA_EXAMPLES", "500")),
    derandomize=os.environ.get("CI", "").lower() == "true",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@pytest.mark.slow  # many drawn cases: `make test` only
@given(valid_changes())
@example({})  # the defaults
def test_every_param_set_within_the_rules_is_accepted_and_runs(drawn):
    """No false refusals: a set that keeps every rule passes validation and feasibility, and the
    stages' cheap logic runs on it."""
    params = params_from_dict(tiny_raw(drawn))
    feasibility.check(params)
    try:
        run_cheap_stage_logic(params)
    except CwaError as err:  # the one rule that depends on the scores: a tensor the top crowds
        assert re.match(r"params: `controls` \w+ cannot match the top", str(err)), str(err)


def test_training_that_learns_nothing_or_diverges_is_refused_before_saving():
    import math

    from cwa.models.training import final_loss

    uniform = math.log(64)
    ramp = [{"step": s, "loss": uniform - 0.1 * s, "lr": 1e-3} for s in range(1, 31)]
    assert final_loss(ramp, 64, "m") == pytest.approx(uniform - 0.1 * 20.5)  # last 20: 11..30
    flat = [{"step": s, "loss": uniform * 0.995, "lr": 1e-9} for s in range(1, 4)]
    with pytest.raises(CwaError, match=r"^params: `train_steps`: m learned nothing after 3 steps"):
        final_loss(flat, 64, "m")
    nan = [*ramp[:5], {"step": 6, "loss": math.nan, "lr": 0.9}]
    with pytest.raises(CwaError, match=r"^params: `train_lr`: training m diverged after 6 steps"):
        final_loss(nan, 64, "m")
