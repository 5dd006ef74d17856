"""Perplexity and accuracy against HF's own loss and a direct count."""

import math

import torch

from cwa.evaluation import evaluate


def test_ppl_matches_hf_loss_and_accuracy_matches_argmax(llama, windows):
    res = evaluate(llama, windows, batch_size=4)
    with torch.no_grad():
        out = llama(input_ids=windows, labels=windows)
    assert res.ppl == __import__("pytest").approx(math.exp(out.loss.item()), rel=1e-5)
    hits = (out.logits[:, :-1].argmax(-1) == windows[:, 1:]).sum().item()
    assert res.accuracy == hits / (windows.shape[0] * (windows.shape[1] - 1))
    assert res.tokens.tolist() == [windows.shape[1] - 1] * windows.shape[0]
    assert not res.diverged


def test_divergence_is_reported_not_raised(llama, windows):
    with torch.no_grad():
        llama.model.norm.weight.fill_(float("nan"))
    res = evaluate(llama, windows, batch_size=3)
    assert res.diverged and res.ppl == math.inf
