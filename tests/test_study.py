"""Studies across models: tags, final members, group tests, drift and the experts' routing,
each against a hand computation or the model's own router output."""

import itertools
import math

import numpy as np
import polars as pl
import pytest
import scipy.stats as sps
import torch

from cwa.analysis.experts import MIN_TOKEN_FRACTION, expert_table, routed_tokens
from cwa.analysis.study import (
    drift,
    fits,
    group_tests,
    measures,
    member_step,
    scaling_points,
    with_tags,
)
from cwa.config.params import StudyMember
from cwa.models.anatomy import describe, pool


def member_rows(specs) -> pl.DataFrame:
    """Member tables as the member stage writes them, reduced to what the study reads."""
    return pl.DataFrame(
        [
            {
                "label": label,
                "model": model,
                "revision": revision,
                "experts": experts,
                "params": params,
                "top_share": 0.01 * params**0.5,
                "max_over_median": 10.0,
                "delta_ppl_top_rel": 1e-4 * params**0.25,
                "separation": 3.0,
            }
            for label, model, revision, experts, params in specs
        ]
    )


MODELS = {
    "a": StudyMember("builtin:a"),
    "b": StudyMember("builtin:b"),
    "c": StudyMember("builtin:c", tuning="instruct"),
    "moe": StudyMember("builtin:moe"),
    "b-10": StudyMember("builtin:b", revision="step-10"),
    "hub": StudyMember("org/x", revision="step5", step=5),
    "hub-final": StudyMember("org/x", revision="step9", step=9),
}
ROWS = member_rows(
    [
        ("a", "builtin:a", "", 0, 100),
        ("b", "builtin:b", "", 0, 400),
        ("c", "builtin:c", "", 0, 900),
        ("moe", "builtin:moe", "", 4, 800),
        ("b-10", "builtin:b", "step-10", 0, 400),
        ("hub", "org/x", "step5", 0, 1600),
        ("hub-final", "org/x", "step9", 0, 1600),
    ]
)


def test_steps_kinds_and_final_members_follow_the_tags_then_the_model():
    assert member_step(StudyMember("builtin:b", revision="step-10"), 480) == 10
    assert member_step(StudyMember("builtin:b"), 480) == 480  # a built-in final model
    assert member_step(StudyMember("org/x"), 480) is None  # nothing known
    assert member_step(StudyMember("org/x", step=3), 480) == 3
    table = with_tags(ROWS, MODELS, 480)
    by = {r["label"]: r for r in table.iter_rows(named=True)}
    assert by["moe"]["kind"] == "moe" and by["a"]["kind"] == "dense"  # read from the model
    assert {label for label, r in by.items() if r["final"] == "yes"} == {
        "a",
        "b",
        "c",
        "moe",
        "hub-final",
    }  # b-10 is b's checkpoint; hub at step 5 is before step 9
    assert by["b-10"]["step"] == 10 and by["hub"]["step"] == 5 and by["c"]["tuning"] == "instruct"
    tagged = with_tags(ROWS, MODELS | {"moe": StudyMember("builtin:moe", kind="dense")}, 480)
    assert tagged.filter(pl.col("label") == "moe")["kind"][0] == "dense"  # the tag wins


def test_scaling_fits_use_final_dense_base_members_only():
    table = with_tags(ROWS, MODELS, 480)
    assert scaling_points(table)["label"].to_list() == ["a", "b", "hub-final"]
    fit = fits(table).filter(pl.col("statistic") == "top_share").row(0, named=True)
    assert fit["models"] == 3 and fit["slope"] == pytest.approx(0.5)  # planted 0.01 · p^0.5
    assert fit["r2"] == pytest.approx(1.0) and fit["loo_max_error"] == pytest.approx(0, abs=1e-9)
    assert fit["note"] == "3 models: a two-segment fit needs 5 models"


def shares_of(label, attn, mlp, top_attn) -> list[dict]:
    return [
        {
            "label": label,
            "axis": "component",
            "group": "attn_q",
            "depth": None,
            "topk_share": top_attn,
            "score_share": attn,
        },
        {
            "label": label,
            "axis": "component",
            "group": "mlp_down",
            "depth": None,
            "topk_share": 1 - top_attn,
            "score_share": mlp,
        },
    ]


def test_group_tests_match_a_brute_force_permutation_test():
    members = pl.DataFrame(
        {
            "label": ["d1", "d2", "d3", "m1", "m2"],
            "kind": ["dense", "dense", "dense", "moe", "moe"],
            "tuning": ["base"] * 5,
            "final": ["yes"] * 5,
        }
    )
    attn = {"d1": 0.30, "d2": 0.35, "d3": 0.25, "m1": 0.10, "m2": 0.12}
    rows = [r for label, a in attn.items() for r in shares_of(label, a, 1 - a, a)]
    # m2 has no mlp_down: its share there counts as 0
    rows = [r for r in rows if not (r["label"] == "m2" and r["group"] == "mlp_down")]
    table = group_tests(members, pl.DataFrame(rows), resamples=1000)
    assert set(table["tag"]) == {"kind"}  # every member is base: no tuning comparison
    row = table.filter((pl.col("part") == "attn_q") & (pl.col("share") == "score_share"))
    row = row.row(0, named=True)
    values = np.array(list(attn.values()))
    observed = values[:3].mean() - values[3:].mean()
    splits = [
        values[list(c)].mean() - values[[i for i in range(5) if i not in c]].mean()
        for c in itertools.combinations(range(5), 3)
    ]
    splits = np.array(splits)  # two-sided: twice the smaller one-sided p (scipy's convention)
    above, below = (splits >= observed - 1e-12).mean(), (splits <= observed + 1e-12).mean()
    brute = min(1.0, 2 * min(above, below))
    assert row["difference"] == pytest.approx(observed) and row["p_value"] == pytest.approx(brute)
    assert (row["members_a"], row["members_b"]) == (3, 2) and row["note"] == ""
    mlp = table.filter((pl.col("part") == "mlp_down") & (pl.col("share") == "score_share"))
    assert mlp["mean_b"][0] == pytest.approx((1 - 0.10 + 0.0) / 2)


def test_group_tests_say_why_a_group_of_one_has_no_test():
    members = pl.DataFrame(
        {
            "label": ["d1", "d2", "m1"],
            "kind": ["dense", "dense", "moe"],
            "tuning": ["base"] * 3,
            "final": ["yes"] * 3,
        }
    )
    rows = [r for label in ("d1", "d2", "m1") for r in shares_of(label, 0.3, 0.7, 0.4)]
    table = group_tests(members, pl.DataFrame(rows), resamples=100)
    assert table["p_value"].is_null().all()
    assert set(table["note"]) == {"moe has 1 member: a test needs 2 in each group"}


def planted_series():
    """Three checkpoints of one model: the top set at step 10 shares 2 of 4 weights with the
    last; at step 20 all 4; scores at the sample: step 20 ranks like the last, step 10 reversed."""
    members = pl.DataFrame(
        {
            "label": ["s10", "s20", "s30", "other"],
            "model": ["m", "m", "m", "n"],
            "step": [10, 20, 30, None],
        },
        schema_overrides={"step": pl.Int64},
    )
    last = [("w", i) for i in range(4)]
    sets = {"s10": [("w", 0), ("w", 1), ("w", 8), ("w", 9)], "s20": last[::-1], "s30": last}
    tops = pl.DataFrame(
        [
            {"label": label, "rank": r, "tensor": t, "flat_index": i, "score": 1.0}
            for label, weights in sets.items()
            for r, (t, i) in enumerate(weights)
        ]
    )
    grid = np.arange(10.0)
    order = {"s10": grid[::-1], "s20": grid**2, "s30": grid}
    samples = pl.DataFrame(
        [
            {"label": label, "tensor": "w", "flat_index": i, "score": float(v)}
            for label, values in order.items()
            for i, v in enumerate(values)
        ]
    )
    return members, tops, samples


def test_drift_measures_planted_overlaps_against_the_previous_and_the_last_step():
    members, tops, samples = planted_series()
    table = drift(members, tops, samples, (2, 4))
    got = {(r["label"], r["against"], r["k"]): r for r in table.iter_rows(named=True)}
    assert set(table["model"]) == {"m"}  # `other` has no step: no series
    assert got[("s10", "last", 4)]["jaccard"] == pytest.approx(2 / 6)  # |{0,1}| / |{0,1,2,3,8,9}|
    assert got[("s20", "last", 4)]["jaccard"] == 1.0
    assert got[("s20", "last", 2)]["jaccard"] == 0.0  # reversed order: top 2 are {3,2} vs {0,1}
    assert got[("s20", "previous", 4)]["other"] == "s10"
    assert got[("s30", "previous", 4)]["jaccard"] == 1.0
    assert got[("s10", "last", 4)]["spearman"] == pytest.approx(-1.0)
    assert got[("s20", "last", 4)]["spearman"] == pytest.approx(1.0)  # monotone: ρ = 1
    assert ("s30", "last", 4) not in got  # the last step is not compared with itself
    assert len(table) == 2 * (2 + 2)  # (2 previous + 2 last pairs) x 2 k


def test_measures_are_tidy_rows_of_every_member_and_measure():
    table = with_tags(ROWS, MODELS, 480)
    shares = pl.DataFrame([r for label in table["label"] for r in shares_of(label, 0.2, 0.8, 0.5)])
    long = measures(table, shares)
    assert long.columns == ["label", "measure", "value"]
    assert len(long.unique(["label", "measure"])) == len(long)
    a = dict(long.filter(pl.col("label") == "a").select("measure", "value").iter_rows())
    assert a["params"] == 100 and a["score_share:attn_q"] == 0.2 and a["topk_share:mlp_down"] == 0.5


@pytest.fixture
def mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=32,
    )
    return MixtralForCausalLM(config).eval()


def test_routed_tokens_equal_the_routers_own_choices(mixtral):
    from cwa.core.hooks import forward_hooks

    infos = describe(mixtral)
    windows = torch.randint(0, 64, (6, 12), generator=torch.Generator().manual_seed(1))
    routed = routed_tokens(mixtral, infos, windows, batch_size=4)
    own = {}  # transformers' router returns (logits, weights, indices): count its indices

    def hook(name, module, inputs, output):
        seen = torch.bincount(output[2].reshape(-1), minlength=4)
        own[name] = own.get(name, 0) + seen

    routers = {f"model.layers.{i}.mlp.gate": mixtral.model.layers[i].mlp.gate for i in (0, 1)}
    with forward_hooks(routers, hook), torch.inference_mode():
        for batch in windows.split(4):
            mixtral(input_ids=batch)
    for layer in (0, 1):
        counts = routed.filter(pl.col("layer") == layer).sort("expert")["tokens"].to_list()
        assert counts == own[f"model.layers.{layer}.mlp.gate"].tolist()
        assert sum(counts) == 6 * 12 * 2  # every token to its 2 experts


def test_expert_table_shares_by_hand(mixtral):
    infos = pool(describe(mixtral))
    scores = {i.name: torch.zeros(i.shape) for i in infos}
    gate_up = "model.layers.0.mlp.experts.gate_up_proj"
    scores[gate_up][1] = 1.0  # expert 1 of block 0 holds every score of its gate_up slice
    scores["model.layers.0.self_attn.q_proj.weight"][0, 0] = 100.0
    total = float(sum(s.abs().sum() for s in scores.values()))
    routed = pl.DataFrame(
        {
            "layer": [0] * 4 + [1] * 4,
            "expert": list(range(4)) * 2,
            "tokens": [10, 60, 60, 70, 50, 50, 50, 50],
        }
    )
    table = expert_table(infos, scores, routed, total).sort("layer", "expert")
    slice_weights = scores[gate_up][1].numel()
    assert table["score_share"][1] == pytest.approx(slice_weights / total)
    assert table.filter(pl.col("expert") != 1)["score_share"].sum() == 0
    assert table["token_share"][0] == pytest.approx(10 / 200)
    # a tenth of a uniform quarter is 0.025: 10 / 200 = 0.05 is enough, none flagged
    assert MIN_TOKEN_FRACTION == 0.1 and not table["few_tokens"].any()
    few = routed.with_columns(tokens=pl.Series([2, 68, 60, 70, 50, 50, 50, 50]))
    assert expert_table(infos, scores, few, total).sort("layer", "expert")["few_tokens"][0]


def test_a_built_in_model_saves_its_checkpoints_and_loads_them_by_revision(tmp_path):
    from cwa.config.params import FamilyMember
    from cwa.models.loading import load_model
    from cwa.models.training import build_model, train
    from tests.conftest import save_with_tokenizer

    model = build_model(FamilyMember(16, 1, 2, 32, experts=2, active=1), 64, 16, 0)
    saved = {}

    def save(step):
        save_with_tokenizer(model, tmp_path / "m" / "checkpoints" / f"step-{step}")
        saved[step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    stream = torch.randint(0, 64, (500,), generator=torch.Generator().manual_seed(0))
    train(model, stream, 4, 2, 8, 1e-2, 0, checkpoints=(1, 3), save=save)
    save_with_tokenizer(model, tmp_path / "m")
    assert sorted(saved) == [1, 3]
    early, _ = load_model("builtin:m", tmp_path, revision="step-1")
    final, _ = load_model("builtin:m", tmp_path)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(early.get_parameter(name), saved[1][name])
    assert not torch.equal(final.get_parameter(name), saved[1][name])
    assert type(final).__name__ == "MixtralForCausalLM"


def test_permutation_floor_of_two_by_two_is_one_third():
    """Sanity of the exact test the groups rely on: 2 vs 2 has 6 splits, the extreme pair 2."""
    from cwa.analysis.study import permutation_p

    p = permutation_p(np.array([1.0, 1.1]), np.array([0.0, 0.1]), resamples=1000)
    assert p == pytest.approx(2 / 6)
    assert math.isclose(
        p,
        sps.permutation_test(
            (np.array([1.0, 1.1]), np.array([0.0, 0.1])),
            lambda x, y: np.mean(x) - np.mean(y),
            permutation_type="independent",
        ).pvalue,
    )


def test_member_parts_sum_blocks_into_thirds_of_the_depth_and_fill_missing_parts():
    from cwa.analysis.study import member_parts

    depth = [
        {
            "label": "a",
            "axis": "depth",
            "group": str(b),
            "depth": d,
            "topk_share": t,
            "score_share": s,
        }
        for b, d, t, s in (
            (0, 0.0, 0.1, 0.2),
            (1, 0.25, 0.2, 0.2),
            (2, 0.5, 0.3, 0.3),
            (3, 1.0, 0.4, 0.3),
        )
    ]
    rows = pl.DataFrame(depth + shares_of("a", 0.6, 0.4, 0.5) + shares_of("b", 1.0, 0.0, 1.0))
    rows = rows.filter(~((pl.col("label") == "b") & (pl.col("group") == "mlp_down")))
    parts = member_parts(rows)
    a = {r["part"]: r for r in parts.filter(pl.col("label") == "a").iter_rows(named=True)}
    assert a["depth:early"]["topk_share"] == pytest.approx(0.3)  # blocks at depth 0 and 0.25
    assert a["depth:middle"]["score_share"] == pytest.approx(0.3)
    assert a["depth:late"]["topk_share"] == pytest.approx(0.4)
    b = dict(parts.filter(pl.col("label") == "b").select("part", "score_share").iter_rows())
    assert b["mlp_down"] == 0 and b["depth:late"] == 0  # parts b lacks count 0
    assert len(parts) == 2 * 5  # every member has every part
