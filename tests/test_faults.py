"""Fault injection: the fault draw, mask building, and the paired arms on a tiny model."""

from contextlib import contextmanager

import numpy as np
import polars as pl
import pytest
import torch

from cwa.evaluation.perplexity import evaluate
from cwa.experiments.faults import campaign, draw_faults, masks, summary
from cwa.experiments.perturbations import fingerprint, flip_bits
from cwa.models.anatomy import describe, pool


def test_draw_faults_follows_the_bit_error_rate():
    weights, bits = draw_faults([1000, 3000], 32, 1e-3, np.random.default_rng(0))
    assert abs(len(weights) - 128) < 4 * np.sqrt(128)  # Binomial(128 000, 1e-3)
    assert weights.min() >= 0 and weights.max() < 4000 and bits.min() >= 0 and bits.max() < 32
    assert len(set(zip(weights.tolist(), bits.tolist(), strict=True))) == len(weights)
    again = draw_faults([1000, 3000], 32, 1e-3, np.random.default_rng(0))
    assert np.array_equal(again[0], weights) and np.array_equal(again[1], bits)


def test_masks_combine_several_flips_of_one_weight():
    got = masks(np.array([3, 3, 12]), np.array([0, 5, 31]), np.array([0, 10]), ["a", "b"])
    assert got["a"][0].tolist() == [3] and got["a"][1].tolist() == [1 | 32]
    assert got["b"][0].tolist() == [2] and got["b"][1].tolist() == [1 << 31]


@contextmanager
def flipped_by_hand(params, names, offsets, weights, bits):
    """The model with each drawn bit flipped one at a time, restored afterwards."""
    saved = {n: params[n].detach().clone() for n in names}
    with torch.no_grad():
        for w, b in zip(weights, bits, strict=True):
            t = int(np.searchsorted(offsets, w, side="right") - 1)
            data = params[names[t]].data.view(-1)
            data[w - offsets[t]] = flip_bits(data[w - offsets[t]], int(b))
    try:
        yield
    finally:
        with torch.no_grad():
            for n in names:
                params[n].data.copy_(saved[n])


@pytest.fixture(scope="module")
def tiny():
    from tests.conftest import tiny_llama

    model = tiny_llama()
    infos = pool(describe(model))
    names = [i.name for i in infos]
    params = dict(model.named_parameters())
    scores = [params[n].detach().abs().reshape(-1) for n in names]  # magnitude
    windows = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(4))
    return model, names, scores, windows, evaluate(model, windows, 4)


def test_arms_are_paired_and_match_a_flip_by_flip_reference(tiny):
    model, names, scores, windows, base = tiny
    params = dict(model.named_parameters())
    before = fingerprint(list(params.values()))
    rate = 1e-5
    rows = campaign(model, names, scores, windows, base, (rate,), 2, (0.3,), 7, 4)
    assert fingerprint(list(params.values())) == before
    assert len(rows) == 2 * (1 + 2)
    assert (rows.group_by("trial").agg(pl.col("flips").n_unique())["flips"] == 1).all()
    sizes = [s.numel() for s in scores]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    weights, bits = draw_faults(sizes, 32, rate, np.random.default_rng([7, 0, 0]))
    assert len(weights) > 0
    # the top arm blocks exactly the flips that land in the top 30% by score (brute-force sort)
    flat = torch.cat(scores).numpy()
    top = np.argsort(-flat, kind="stable")[: round(0.3 * len(flat))]
    top_row = rows.filter((pl.col("trial") == 0) & (pl.col("arm") == "top"))
    assert top_row["blocked"][0] == np.isin(weights, top).sum()
    assert top_row["protected"][0] == len(top)
    # the random arm blocks the flips in the first len(top) others by priority (brute force)
    from cwa.experiments.faults import priority

    key = int(np.random.SeedSequence([7, len(top)]).generate_state(1, np.uint64)[0])
    others = np.setdiff1d(np.arange(len(flat)), top)
    chosen = others[np.argsort(priority(others, key))[: len(top)]]
    random_row = rows.filter((pl.col("trial") == 0) & (pl.col("arm") == "random"))
    assert random_row["blocked"][0] == np.isin(weights, chosen).sum() > 0
    assert random_row["protected"][0] == len(top)
    # the unprotected arm of trial 0 equals flipping each drawn bit by hand
    with flipped_by_hand(params, names, offsets, weights, bits):
        want = evaluate(model, windows, 4).ppl
    got = rows.filter((pl.col("trial") == 0) & (pl.col("arm") == "none"))["ppl"][0]
    # exact: the same bits flipped (XOR masks vs one flip at a time), then the same evaluate call
    # in this process: bit-identical weights give a bit-identical ppl (inf == inf if diverged)
    assert got == want
    table = summary(rows)
    assert len(table) == 3 and set(table["arm"]) == {"none", "top", "random"}
    none = table.filter(pl.col("arm") == "none")
    assert none["median_gain"][0] == 0.0 and none["gain_per_weight"][0] is None


def test_a_lazy_score_store_gives_the_same_campaign(tiny, tmp_path):
    """The stage reads |score| tensor by tensor from the store (no copy of every score)."""
    from cwa.scoring.store import StoredScores, save_scores
    from cwa.selection.ranking import MemberScores

    model, names, scores, windows, base = tiny
    infos = {i.name: i for i in pool(describe(model))}
    signed = {n: -s.reshape(infos[n].shape) for n, s in zip(names, scores, strict=True)}
    save_scores(signed, tmp_path, 0, "magnitude")
    lazy = MemberScores(StoredScores(tmp_path, 0), [(infos[n], None) for n in names])
    args = (windows, base, (1e-5,), 1, (0.3,), 7, 4)
    assert campaign(model, names, lazy, *args).equals(campaign(model, names, scores, *args))


def test_fault_arms_measure_the_kl_to_the_unperturbed_model(tiny):
    """With a reference, the unprotected arm's KL and unchanged top-1 equal a direct evaluation
    of the same flipped model against the unperturbed one (per-token means, plain torch); a draw
    that flips nothing has KL exactly 0."""
    from cwa.evaluation.perplexity import reference

    model, names, scores, windows, base = tiny
    params = dict(model.named_parameters())
    rates = (1e-9, 1e-4)
    with reference(model, windows, 4) as ref:
        rows = campaign(model, names, scores, windows, base, rates, 1, (0.3,), 7, 4, ref)
    quiet = rows.filter((pl.col("rate") == 1e-9) & (pl.col("arm") == "none"))
    assert quiet["flips"][0] == 0
    assert (quiet["kl"][0], quiet["top1_same"][0]) == (0.0, 1.0)  # the reference model itself

    def next_token_logp():
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=windows).logits[:, :-1].double(), -1)

    sizes = [s.numel() for s in scores]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    weights, bits = draw_faults(sizes, 32, rates[1], np.random.default_rng([7, 0, 1]))
    clean = next_token_logp()
    with flipped_by_hand(params, names, offsets, weights, bits):
        hit = next_token_logp()
    assert torch.isfinite(hit).all()
    kl = (clean.exp() * (clean - hit)).sum(-1).mean().item()
    same = (clean.argmax(-1) == hit.argmax(-1)).double().mean().item()
    got = rows.filter((pl.col("rate") == rates[1]) & (pl.col("arm") == "none"))
    assert got["flips"][0] == len(weights) > 0 and not got["diverged"][0]
    # the reference holds fp16 log-probabilities (about 1e-3 relative on each p; 6e-5 seen)
    assert kl > 1e-4 and got["kl"][0] == pytest.approx(kl, rel=1e-3)
    assert same < 1 and got["top1_same"][0] == pytest.approx(same, abs=1e-12)
    table = summary(rows)
    assert {"median_kl", "median_top1_same"} <= set(table.columns)
    assert rows.filter(pl.col("diverged"))["kl"].is_nan().all()
    assert campaign(model, names, scores, windows, base, (1e-9,), 1, (), 7, 4)["kl"].is_nan().all()


def test_priority_is_the_splitmix64_stream():
    """Published outputs of SplitMix64 seeded with 1234567 (Vigna's reference), and a
    pure-Python transcription of the mixer for large indices."""
    from cwa.experiments.faults import priority

    first = [6457827717110365317, 3203168211198807973, 9817491932198370423]
    assert priority(np.arange(1, 4), 1234567).tolist() == first
    mask = (1 << 64) - 1

    def mix(i, key):
        z = (key + i * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    index = np.array([0, 7, 2**40 + 3, 2**62 - 1])
    assert priority(index, 2**63 + 5).tolist() == [mix(int(i), 2**63 + 5) for i in index]


def _tied_scores(sizes, seed):
    """|scores| on a few levels, so the k-th largest ties across tensors."""
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, 6, n).astype(np.float32) * 0.25) for n in sizes]


@pytest.mark.parametrize(("fraction", "margin"), [(0.1, 8.0), (0.37, 8.0), (0.5, 1e-9)])
def test_protected_sets_are_the_top_k_and_the_first_k_others_by_priority(fraction, margin):
    """Tested for every weight: the top set is extreme_k's (ties by tensor, then index, across
    tied tensors), the random set is the k weights outside it with the smallest priority
    (brute-force sort), the two are disjoint and of size k. A bracket too narrow to hold the
    cut-off (margin 1e-9) is widened and gives the same sets."""
    from cwa.experiments.faults import ProtectedSets, priority
    from cwa.selection.ranking import extreme_k

    sizes = [300, 1000, 7, 2000]
    scores = _tied_scores(sizes, 3)
    total = sum(sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sets = ProtectedSets(scores, sizes, np.arange(total), margin=margin)
    got = sets.pair(fraction, seed=11)
    k = min(round(fraction * total), total // 2)  # 0.5 of an odd pool: half, rounded down
    best = extreme_k(scores, k)
    want_top = np.zeros(total, bool)
    want_top[offsets[best.tensor] + best.flat] = True
    assert best.cutoff_ties > 0  # the boundary falls inside a tie
    assert np.array_equal(got["top"].holds, want_top)
    key = int(np.random.SeedSequence([11, k]).generate_state(1, np.uint64)[0])
    others = np.flatnonzero(~want_top)
    first = others[np.argsort(priority(others, key))[:k]]
    want_random = np.zeros(total, bool)
    want_random[first] = True
    assert np.array_equal(got["random"].holds, want_random)
    assert got["top"].size == got["random"].size == k == want_random.sum()


def test_a_protected_set_tested_for_a_few_weights_agrees_with_the_whole():
    from cwa.experiments.faults import ProtectedSets

    sizes = [500, 1500]
    scores = _tied_scores(sizes, 5)
    whole = ProtectedSets(scores, sizes, np.arange(2000)).pair(0.2, 3)
    few = np.array([0, 17, 499, 500, 1234, 1999])
    part = ProtectedSets(scores, sizes, few).pair(0.2, 3)
    for arm in ("top", "random"):
        assert np.array_equal(part[arm].holds, whole[arm].holds[few])


def test_the_random_protected_set_is_uniform_over_the_rest():
    """Chi-square of the random set's members over 20 equal slices of the non-top weights (in
    index order): no slice is favoured (p > 0.001 at this fixed seed), and the expected share
    of members equals k / (N - k)."""
    from scipy.stats import chisquare

    from cwa.experiments.faults import ProtectedSets

    rng = np.random.default_rng(0)
    sizes = [40_000, 60_000]
    scores = [torch.from_numpy(rng.lognormal(0, 2, n).astype(np.float32)) for n in sizes]
    got = ProtectedSets(scores, sizes, np.arange(100_000)).pair(0.1, 2)
    others = np.flatnonzero(~got["top"].holds)
    counts = [got["random"].holds[part].sum() for part in np.array_split(others, 20)]
    assert sum(counts) == 10_000
    assert chisquare(counts).pvalue > 1e-3


def test_nan_scores_are_refused_in_one_line():
    from cwa import CwaError
    from cwa.experiments.faults import ProtectedSets

    with pytest.raises(CwaError, match="NaN scores"):
        ProtectedSets([torch.tensor([1.0, float("nan")])], [2], np.arange(2))


def test_the_campaign_guard_adds_the_protected_set_passes_to_an_evaluation(tiny):
    """On the host, the larger of an evaluation pass and the protected-set passes (14 bytes per
    weight of the largest score tensor, 34 per weight of a chunk of at most 2**22 weights),
    written out; the passes end before the arms' evaluations start."""
    from cwa.experiments.faults import campaign_estimate
    from cwa.models.memory import estimate

    model, _, scores, _, _ = tiny
    sizes = [s.numel() for s in scores]
    plain = estimate(model, [], "forward", 4, 12).devices["cpu"]
    got = campaign_estimate(model, sizes, 4, 12).devices["cpu"]
    assert got.beyond_weights == max(plain.beyond_weights, 48 * max(sizes))
    assert (got.weights, got.activations) == (plain.weights, plain.activations)
    huge = campaign_estimate(model, [3 << 22, 5], 4, 12).devices["cpu"]
    assert huge.beyond_weights == 14 * (3 << 22) + 34 * (1 << 22) > plain.beyond_weights
