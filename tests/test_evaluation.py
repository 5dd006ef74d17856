"""Perplexity and accuracy against HF's own loss and a direct count."""

import math

import numpy as np
import pytest
import torch

from cwa.evaluation.perplexity import evaluate


def test_ppl_matches_hf_loss_and_accuracy_matches_argmax(llama, windows):
    res = evaluate(llama, windows, batch_size=4)
    with torch.no_grad():
        out = llama(input_ids=windows, labels=windows)
    # float32 NLLs of batches 4 + 2 summed in float64 vs HF's float32 mean over all 66 tokens:
    # that mean is off by up to 66 · eps32 · 4.2 = 3.3e-5, which is ppl's relative error
    # (observed 1e-8). Dropping a window moves ppl by 1.2%, one token by ~2e-3.
    assert res.ppl == pytest.approx(math.exp(out.loss.item()), rel=1e-4)
    hits = (out.logits[:, :-1].argmax(-1) == windows[:, 1:]).sum().item()
    # exact: hit counts; the closest top-2 logits differ by 2.6e-4, ~1e4 x their rounding
    assert res.accuracy == hits / (windows.shape[0] * (windows.shape[1] - 1))
    assert res.tokens.tolist() == [windows.shape[1] - 1] * windows.shape[0]
    assert not res.diverged


def test_divergence_is_reported_not_raised(llama, windows):
    with torch.no_grad():
        llama.model.norm.weight.fill_(float("nan"))
    res = evaluate(llama, windows, batch_size=3)
    assert res.diverged and res.ppl == math.inf


def direct_kl_and_top1(model_ref_logits: torch.Tensor, logits: torch.Tensor):
    """KL(p_ref ‖ p) per token over the whole vocabulary in float64, and unchanged argmaxes."""
    ref = torch.log_softmax(model_ref_logits[:, :-1].double(), dim=-1)
    now = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    kl = (ref.exp() * (ref - now)).sum(dim=-1)
    same = model_ref_logits[:, :-1].argmax(-1) == logits[:, :-1].argmax(-1)
    return kl, same


SELECTION = {  # a sign flip that moves the distributions well above every rounding floor
    "model.layers.0.mlp.down_proj.weight": torch.arange(0, 2048, 3),
    "model.layers.1.self_attn.o_proj.weight": torch.arange(0, 1024, 2),
}


def test_kl_and_top1_against_a_direct_full_vocabulary_computation(llama, windows):
    from cwa.evaluation.perplexity import reference
    from cwa.experiments.perturbations import get_perturbation, perturbed

    with torch.no_grad():
        before = llama(input_ids=windows).logits
    with reference(llama, windows, 4) as ref:  # two batches: 4 + 2 windows
        assert ref.logp.dtype == "float16" and ref.logp.shape == (6, 11, 64)
        same = evaluate(llama, windows, 4, ref=ref)
        # the unperturbed model against its own reference: the same fp32 operations on the same
        # logits as the reference pass's own term, so exactly 0 (the fp16 rounding floor is out)
        assert (same.kl == 0).all()
        assert (same.same_top1 == same.tokens).all()
        with perturbed(dict(llama.named_parameters()), SELECTION, get_perturbation("sign_flip")):
            hit = evaluate(llama, windows, 4, ref=ref)
            with torch.no_grad():
                after = llama(input_ids=windows).logits
    kl, top1 = direct_kl_and_top1(before, after)
    # Two errors against the float64 direct sum. The fp16 reference, its rounding floor taken
    # out: relative, of the order of its rounding (~1e-3). fp32 arithmetic: Σ p̂ log p and
    # Σ p̂ log q (each ~ −4) are subtracted, each carrying a few eps32 x 4 ~ 1e-6 per token, so
    # ~1e-5 per text of 11 tokens. A formula error (a wrong direction, no renormalisation, no
    # floor, a missing token) moves the sums by tens of percents.
    np.testing.assert_allclose(hit.kl, kl.sum(dim=1).numpy(), rtol=1e-2, atol=1e-5)
    assert (hit.same_top1 == top1.sum(dim=1).numpy()).all()
    p99 = float(np.quantile(kl.reshape(-1).numpy(), 0.99))
    assert hit.kl_p99 == pytest.approx(p99, rel=1e-2, abs=1e-6)
    assert hit.kl.sum() > 100 * same.kl.sum()  # the perturbation is far above the floor


def direct_top_k_kl(before: torch.Tensor, after: torch.Tensor, k: int) -> torch.Tensor:
    """KL per token, in float64, between the two distributions merged to the reference's k most
    likely tokens and one outcome for all the others: written out over explicit index sets."""
    p = torch.softmax(before[:, :-1].double(), dim=-1)
    q = torch.softmax(after[:, :-1].double(), dim=-1)
    out = torch.zeros(p.shape[:-1], dtype=torch.float64)
    for idx in np.ndindex(*p.shape[:-1]):
        top = torch.argsort(p[idx], descending=True)[:k]
        rest = torch.ones(p.shape[-1], dtype=torch.bool)
        rest[top] = False
        pk, qk = p[idx][top], q[idx][top]
        out[idx] = (pk * (pk / qk).log()).sum()
        if rest.any():
            p_rest, q_rest = p[idx][rest].sum(), q[idx][rest].sum()
            out[idx] += p_rest * (p_rest / q_rest).log()
    return out


def test_top_k_kl_against_the_merged_distributions_written_out(llama, windows):
    """`kl_topk`: the KL of the distributions merged to the reference's top K and the rest is a
    float64 sum over explicit index sets; it is exactly 0 for the unperturbed model, never above
    the full KL (merging outcomes cannot raise a KL), and the full KL when K covers the
    vocabulary (64 tokens here)."""
    from cwa.evaluation.perplexity import reference
    from cwa.experiments.perturbations import get_perturbation, perturbed

    with torch.no_grad():
        before = llama(input_ids=windows).logits
    results = {}
    for k in (4, 64, 500):
        with reference(llama, windows, 4, topk=k) as ref:
            kept = min(k, 64)
            assert ref.logp.dtype == "float32" and ref.logp.shape == (6, 11, kept)
            assert ref.ids.dtype == "int32" and ref.ids.shape == (6, 11, kept)
            same = evaluate(llama, windows, 4, ref=ref)
            assert (same.kl == 0).all() and (same.same_top1 == same.tokens).all()
            with perturbed(
                dict(llama.named_parameters()), SELECTION, get_perturbation("sign_flip")
            ):
                results[k] = evaluate(llama, windows, 4, ref=ref)
                with torch.no_grad():
                    after = llama(input_ids=windows).logits
    full, _ = direct_kl_and_top1(before, after)
    for k, res in results.items():
        want = direct_top_k_kl(before, after, k).sum(dim=1).numpy()
        # fp32 log-probabilities (a few eps32 · |log p| ~ 1e-6 per token) summed in float64 over
        # 11 tokens; leaving out the rest's term or using fp16 would move the sums by percents
        np.testing.assert_allclose(res.kl, want, rtol=1e-4, atol=1e-5)
        assert (res.kl <= full.sum(dim=1).numpy() + 1e-5).all()
    assert results[4].kl.sum() < 0.99 * results[64].kl.sum()  # the merge loses something
    np.testing.assert_allclose(results[500].kl, results[64].kl, rtol=0, atol=0)
    np.testing.assert_allclose(results[64].kl, full.sum(dim=1).numpy(), rtol=1e-4, atol=1e-5)


def test_the_reference_is_refused_before_its_pass_when_the_disk_cannot_hold_it(
    llama, windows, monkeypatch
):
    """The reference's size is 2·V bytes per token, 8·K + 4 with `kl_topk`; more than the free
    disk is refused in one line naming the key, before any forward pass and with nothing left."""
    import shutil
    import tempfile
    from pathlib import Path

    from cwa import CwaError
    from cwa.evaluation import perplexity
    from cwa.evaluation.perplexity import reference, reference_bytes

    assert reference_bytes(1000, 128_256, 0) == 1000 * 2 * 128_256
    assert reference_bytes(1000, 128_256, 256) == 1000 * (8 * 256 + 4)
    assert reference_bytes(1000, 64, 256) == 1000 * (8 * 64 + 4)  # K beyond V keeps V
    need = reference_bytes(6 * 11, 64, 0)
    usage = shutil.disk_usage(tempfile.gettempdir())
    monkeypatch.setattr(perplexity.shutil, "disk_usage", lambda _: usage._replace(free=need - 1))
    calls = []
    llama.register_forward_hook(lambda *_: calls.append(1))
    before = set(Path(tempfile.gettempdir()).glob("cwa-reference-*"))
    refused = r"^`kl_topk` is 0: the KL reference needs .* set `kl_topk`"
    with pytest.raises(CwaError, match=refused), reference(llama, windows, 4):
        pass
    assert calls == [] and set(Path(tempfile.gettempdir()).glob("cwa-reference-*")) == before
    with reference(llama, windows, 4, topk=8) as ref:  # 8·8 + 4 bytes per token fit
        assert ref.ids.shape == (6, 11, 8)


def test_the_experiment_table_reports_kl_and_top1_as_token_means_with_ci():
    from cwa.evaluation.perplexity import EvalResult
    from cwa.experiments.summaries import distribution_damage

    res = EvalResult(
        np.zeros(3),
        np.array([10, 10, 20]),
        np.zeros(3, np.int64),
        kl=np.array([1.0, 2.0, 5.0]),
        same_top1=np.array([10, 5, 20]),
        kl_p99=0.9,
    )
    identity = np.array([[0, 1, 2], [0, 1, 2]])  # every resample the original texts
    row = distribution_damage(res, identity)
    assert row["kl"] == row["kl_ci_low"] == row["kl_ci_high"] == 8 / 40
    assert row["top1_same"] == row["top1_ci_low"] == 35 / 40 and row["kl_p99"] == 0.9
    # two resamples, text 0 thrice (3/30 = 0.1) and text 2 thrice (15/60 = 0.25): the 2.5% and
    # 97.5% quantiles interpolate linearly between them
    extremes = distribution_damage(res, np.array([[0, 0, 0], [2, 2, 2]]))
    low, high = 0.1 + 0.025 * 0.15, 0.1 + 0.975 * 0.15
    assert (extremes["kl_ci_low"], extremes["kl_ci_high"]) == pytest.approx((low, high))
    no_reference = EvalResult(res.nll, res.tokens, res.correct)
    assert math.isnan(distribution_damage(no_reference, identity)["kl"])
