"""The sweep grid, masked subsets and the top-vs-control comparisons on a tiny model."""

import math

import numpy as np
import polars as pl
import pytest
import torch

from cwa.core.stats import bootstrap_indices, paired_test
from cwa.evaluation.perplexity import evaluate
from cwa.experiments.perturbations import get_perturbation
from cwa.experiments.summaries import compare, headline, pool, summarize, with_q_values
from cwa.experiments.sweep import experiments, grid, masked, selection_set, stream_seed
from cwa.experiments.sweep import run as run_experiments
from cwa.models.anatomy import describe
from cwa.models.anatomy import pool as pool_of
from cwa.scoring.metrics import compute_scores, get_metric
from cwa.selection.ranking import rank


def test_masked_keeps_a_seeded_fraction_with_matched_per_tensor_counts():
    a = {"x": torch.arange(0, 40), "y": torch.arange(100, 160)}
    b = {"x": torch.arange(500, 540), "y": torch.arange(900, 960)}
    ma, mb = masked(a, 0.25, seed=5), masked(b, 0.25, seed=5)
    assert sum(len(v) for v in ma.values()) == 25
    assert {k: len(v) for k, v in ma.items()} == {k: len(v) for k, v in mb.items()}
    for name, flat in ma.items():
        assert set(flat.tolist()) <= set(a[name].tolist())
    assert {k: v.tolist() for k, v in masked(a, 0.25, seed=5).items()} == {
        k: v.tolist() for k, v in ma.items()
    }


@pytest.fixture(scope="module")
def sweep():
    from tests.conftest import tiny_llama

    model = tiny_llama()
    infos = pool_of(describe(model))
    windows = torch.randint(0, 64, (12, 16), generator=torch.Generator().manual_seed(2))
    scores = compute_scores(model, infos, get_metric("grad_x_weight"), windows, 4)
    table = rank(infos, scores, "global", (5, 40), ("random_k", "bottom_k"), 2, 0, "gxw")
    grid = [(get_perturbation("zero"), (None,)), (get_perturbation("scale"), (2.0, 0.5))]
    exps = experiments(table, grid, headline_k=40, mask_ratios=(0.5,), seed=0)
    results = run_experiments(model, exps, windows, 4, desc=None)
    base = evaluate(model, windows, 4)
    return exps, results, base


def test_a_set_chosen_outside_the_ranking_gives_the_tables_experiments():
    """selection_set puts params in name order and indices sorted, as a ranking table's sets
    read back: the same weights get the same random numbers (gauss noise, a mask ratio)."""
    weights = {
        "b.w": torch.tensor([9, 2, 5]),
        "a.w": torch.tensor([7, 0]),
        "c.w": torch.tensor([4]),
    }
    table = pl.DataFrame(
        {
            "selection": "top",
            "k": 6,
            "draw": 0,
            "param": [n for n, f in weights.items() for _ in range(len(f))],
            "flat_index": torch.cat(list(weights.values())).numpy(),
        }
    )
    sweeps = [(get_perturbation("gauss_noise"), (0.1,)), (get_perturbation("zero"), (None,))]
    want = experiments(table, sweeps, headline_k=6, mask_ratios=(0.5,), seed=3)
    got = grid([selection_set(weights, "top", 6, 0)], sweeps, 6, (0.5,), 3)
    assert len(got) == len(want) == 4
    assert list(got[0].weights) == ["a.w", "b.w", "c.w"]
    for g, w in zip(got, want, strict=True):
        assert (g.perturbation.name, g.strength, g.mask_ratio, g.seed) == (
            w.perturbation.name,
            w.strength,
            w.mask_ratio,
            w.seed,
        )
        assert list(g.weights) == list(w.weights)
        assert all(torch.equal(g.weights[n], w.weights[n]) for n in w.weights)


def test_grid_sweeps_k_at_the_first_strength_and_everything_at_headline_k(sweep):
    exps, _, _ = sweep
    sets = 1 + 1 + 2  # top, bottom_k, two random draws
    # k=5: zero + scale(2.0); k=40: zero, scale(2.0), scale(0.5), and both at mask 0.5
    assert len(exps) == sets * (2 + 5)
    at5 = {(e.perturbation.name, e.strength, e.mask_ratio) for e in exps if e.k == 5}
    assert at5 == {("zero", None, 1.0), ("scale", 2.0, 1.0)}
    half = [e for e in exps if e.mask_ratio == 0.5 and e.selection == "top"]
    assert {e.size for e in half} == {20}
    # a top set and its controls share the random stream of their cell
    cell = {(e.perturbation.name, e.strength, e.k, e.mask_ratio): set() for e in exps}
    for e in exps:
        cell[(e.perturbation.name, e.strength, e.k, e.mask_ratio)].add(e.seed)
    assert all(len(seeds) == 1 for seeds in cell.values())


def test_comparisons_agree_with_the_effects_table(sweep):
    exps, results, base = sweep
    idx = bootstrap_indices(len(base.nll), 200, 0)
    effects, texts = summarize(exps, results, base, idx, 0)
    one_seed = pool([(exps, results)], base, idx, np.zeros((200, 1), np.int64), 200, 0)
    comp, pooled = with_q_values(compare(exps, results, base, idx, 200, 0), one_seed)
    assert len(comp) == len(pooled) == 7 * 2  # every cell x {random_k, bottom_k}
    assert (comp["q_value"] >= comp["p_value"]).all() and (comp["q_value"] <= 1).all()
    assert (comp["p_floor"] == 1 / 201).all()  # 12 texts: 4096 patterns > 200 resamples
    row = comp.filter(
        (pl.col("perturbation") == "zero")
        & (pl.col("k") == 40)
        & (pl.col("mask_ratio") == 1.0)
        & (pl.col("control") == "random_k")
    )
    cell = effects.filter(
        (pl.col("perturbation") == "zero") & (pl.col("k") == 40) & (pl.col("mask_ratio") == 1.0)
    )
    top = cell.filter(pl.col("selection") == "top")["delta_ppl"][0]
    rand = cell.filter(pl.col("selection") == "random_k")["delta_ppl"]
    assert row["top_delta_ppl"][0] == top  # exact: the same float64 subtraction
    # float64, the same numbers in another order (mean of ppls − base vs mean of ppl − base): a
    # few eps64 of ppl ~64, ~1e-14 of deltas ~1e-3 (observed 4e-15); approx's rel=1e-6 is loose
    assert row["control_delta_ppl"][0] == pytest.approx(rand.mean())
    assert row["separation"][0] == pytest.approx(top / rand.abs().mean())
    assert row["draws"][0] == 2
    assert 0 < row["p_value"][0] <= 1 and 0 < row["p_wilcoxon"][0] <= 1
    h = headline(effects, pooled, 40, {"zero": ""})
    assert h["delta_ppl_top"] == top  # exact: the mean of the one top row
    one = pooled.filter(
        (pl.col("perturbation") == "zero")
        & (pl.col("k") == 40)
        & (pl.col("mask_ratio") == 1.0)
        & (pl.col("control") == "random_k")
    )
    assert h["p_value"] == one["p_value"][0] and h["q_value"] == one["q_value"][0]
    # one seed pooled: the seed's own numbers (the bootstrap picks that seed every time)
    assert one["top_delta_ppl"][0] == pytest.approx(top) and one["seeds"][0] == 1
    assert one["separation"][0] == pytest.approx(row["separation"][0])
    assert one["separation_ci_low"][0] == pytest.approx(row["separation_ci_low"][0])
    assert (one["top_ci_low"][0], one["top_ci_high"][0]) == pytest.approx(
        (
            cell.filter(pl.col("selection") == "top")["ci_low"][0],
            cell.filter(pl.col("selection") == "top")["ci_high"][0],
        )
    )
    assert len(texts) == len(exps) * 12
    assert set(effects["setting"]) == {"", "α=2", "α=0.5"}
    assert effects.filter(pl.col("perturbation") == "zero")["strength"].is_nan().all()


def test_a_consistent_top_effect_is_significant_and_noise_is_not():
    """Hand-built per-text NLLs: the top set adds 0.3 nats/token to every text, the random
    draws add zero-mean noise; the p-value must be tiny and the separation CI above 1."""
    from cwa.evaluation.perplexity import EvalResult
    from cwa.experiments.sweep import Experiment

    rng = np.random.default_rng(0)
    n, tok = 40, np.full(40, 20)
    base = EvalResult(rng.normal(60, 5, n), tok, np.zeros(n, np.int64))
    zero = get_perturbation("zero")

    def exp(selection, draw):
        return Experiment(zero, None, selection, draw, 10, 1.0, {}, 0)

    def res(extra):
        return EvalResult(base.nll + tok * extra, tok, np.zeros(n, np.int64))

    exps = [exp("top", 0), *(exp("random_k", d) for d in range(3))]
    results = [res(0.3 + rng.normal(0, 0.05, n)), *(res(rng.normal(0, 0.05, n)) for _ in range(3))]
    row = compare(exps, results, base, bootstrap_indices(n, 1000, 0), 2000, 0).row(0, named=True)
    # no sign pattern beats the observed one: (0 + 1) / (2000 + 1), float64 (approx's rel 1e-6)
    assert row["p_value"] == pytest.approx(1 / 2001) == row["p_floor"]
    assert row["p_wilcoxon"] < 1e-6 and row["effect_size"] > 3
    assert row["separation_ci_low"] > 1 and not math.isnan(row["separation_ci_high"])
    assert not row["top_diverged"] and row["control_diverged"] == 0
    null = compare(exps[1:2], results[1:2], base, bootstrap_indices(n, 10, 0), 100, 0)
    assert null.is_empty()  # no top set, nothing to compare


def test_headline_cells_are_first_strengths_of_whole_selections_at_k():
    from cwa.experiments.summaries import headline_cell, headline_rows

    rows = pl.DataFrame(
        {
            "perturbation": ["zero", "zero", "zero", "scale", "scale", "scale"],
            "setting": ["", "", "", "α=2", "α=10", "α=2"],
            "k": [100, 10, 100, 100, 100, 100],
            "mask_ratio": [1.0, 1.0, 0.5, 1.0, 1.0, 0.5],
        }
    ).with_row_index()
    first = {"zero": "", "scale": "α=2"}
    assert rows.filter(headline_cell(100, first))["index"].to_list() == [0, 3]
    assert headline_rows(rows, 100, {"zero": ""})["index"].to_list() == [0]


def test_pooled_over_two_seeds_against_the_per_seed_numbers(sweep):
    """A second seed's ranking (another calibration draw): the pooled ΔPPLs are the seeds'
    means, the test runs on the per-text differences averaged over seeds, the q-values are one
    Benjamini-Hochberg family over each seed's comparisons and the pooled ones."""
    from scipy import stats as sps

    from tests.conftest import tiny_llama

    exps0, results0, base = sweep
    model = tiny_llama()
    infos = pool_of(describe(model))
    windows = torch.randint(0, 64, (12, 16), generator=torch.Generator().manual_seed(2))
    calib = torch.randint(0, 64, (12, 16), generator=torch.Generator().manual_seed(7))
    scores = compute_scores(model, infos, get_metric("grad_x_weight"), calib, 4)
    table = rank(infos, scores, "global", (5, 40), ("random_k", "bottom_k"), 2, 1, "gxw")
    grid = [(get_perturbation("zero"), (None,)), (get_perturbation("scale"), (2.0, 0.5))]
    exps1 = experiments(table, grid, headline_k=40, mask_ratios=(0.5,), seed=1)
    results1 = run_experiments(model, exps1, windows, 4, desc=None)
    idx = bootstrap_indices(12, 300, 0)
    seed_idx = bootstrap_indices(2, 300, 5)
    runs = [(exps0, results0), (exps1, results1)]
    per_seed = [compare(e, r, base, idx, 300, s) for s, (e, r) in enumerate(runs)]
    per_seed = [c.with_columns(seed=pl.lit(s)) for s, c in enumerate(per_seed)]
    comp, pooled = with_q_values(pl.concat(per_seed), pool(runs, base, idx, seed_idx, 300, 0))
    key = (pl.col("perturbation") == "zero") & (pl.col("k") == 40) & (pl.col("mask_ratio") == 1.0)
    row = pooled.filter(key & (pl.col("control") == "random_k")).row(0, named=True)
    seeds = comp.filter(key & (pl.col("control") == "random_k")).sort("seed")
    assert row["seeds"] == 2 and row["draws"] == 2
    # float64 means of the same numbers in another order: approx's rel=1e-6 is loose for that
    assert row["top_delta_ppl"] == pytest.approx(seeds["top_delta_ppl"].mean())
    assert row["control_delta_ppl"] == pytest.approx(seeds["control_delta_ppl"].mean())

    def cell(exps, results, selection):
        return [
            r
            for e, r in zip(exps, results, strict=True)
            if e.perturbation.name == "zero"
            and e.k == 40
            and e.mask_ratio == 1.0
            and e.selection == selection
        ]

    per_token = lambda r: (r.nll - base.nll) / r.tokens  # noqa: E731
    diff = np.mean(
        [
            per_token(cell(e, r, "top")[0])
            - np.mean([per_token(c) for c in cell(e, r, "random_k")], axis=0)
            for e, r in runs
        ],
        axis=0,
    )
    stream = stream_seed(0, "zero", "", 40, 1.0, "random_k", "pooled")
    assert row["p_value"] == paired_test(diff, 300, stream).p_permutation
    p = np.concatenate([comp["p_value"].to_numpy(), pooled["p_value"].to_numpy()])
    q = sps.false_discovery_control(p, method="bh")
    assert np.allclose(np.concatenate([comp["q_value"], pooled["q_value"]]), q, rtol=1e-12)
    assert row["seeds_fdr05"] == int((seeds["q_value"] < 0.05).sum())
    assert row["top_ci_low"] <= row["top_delta_ppl"] <= row["top_ci_high"]


def test_a_sweep_that_leaves_a_touched_tensor_changed_stops(sweep):
    """The effects table has no `restored` column because a failed restore raises: a measure
    that edits a touched tensor outside the selection is caught by the sweep's checksum."""
    from cwa import CwaError
    from cwa.experiments.sweep import sweep as run_sweep
    from tests.conftest import tiny_llama

    exps, _, _ = sweep
    model = tiny_llama()
    exp = exps[0]
    name, flat = next(iter(exp.weights.items()))
    params = dict(model.named_parameters())
    outside = next(i for i in range(params[name].numel()) if i not in set(flat.tolist()))

    def careless(m):
        with torch.no_grad():
            params[name].view(-1)[outside] += 1.0

    with pytest.raises(CwaError, match="differ from the start of the sweep"):
        run_sweep(model, [exp], careless, desc=None)
    assert run_sweep(model, [exp], lambda m: 1, desc=None) == [1]  # a clean measure passes
