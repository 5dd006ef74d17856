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
