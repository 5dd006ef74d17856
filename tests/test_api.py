"""The Python API: docs/api.md's example runs as written, and each call agrees with an
independent computation."""

import re

import numpy as np
import torch

from tests.conftest import ROOT, VOCAB, tiny_gpt2, window_nll


def word_model(directory):
    """tiny_gpt2 and a word-level tokenizer of VOCAB words (`w0`..), saved like a hub model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tiny_gpt2().save_pretrained(directory)
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="w0").save_pretrained(directory)


def test_the_documented_example_runs_and_each_call_agrees_with_a_direct_computation(
    tmp_path, monkeypatch
):
    word_model(tmp_path / "my-model")
    rng = np.random.default_rng(0)
    (tmp_path / "my-text.txt").write_text(" ".join(f"w{i}" for i in rng.integers(0, VOCAB, 1200)))
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)

    cwa, model = namespace["cwa"], namespace["model"]
    evaluation, scores, ranking = namespace["evaluation"], namespace["scores"], namespace["ranking"]
    # windows: the text's words in order, 64 to a window
    words = (tmp_path / "my-text.txt").read_text().split()
    assert namespace["every"][0].tolist() == [int(w[1:]) for w in words[:64]]
    # evaluate: the summed NLL per window of plain torch
    base = namespace["base"]
    assert np.allclose(base.nll, window_nll(model, evaluation).numpy(), rtol=1e-5)
    # score: grad_x_weight is |∂L/∂w · w| of the mean token loss over the calibration windows
    model.zero_grad()
    calibration = namespace["calibration"]
    logits = model(input_ids=calibration).logits[:, :-1]
    torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), calibration[:, 1:].reshape(-1)
    ).backward()
    params = dict(model.named_parameters())
    name = "transformer.h.0.mlp.c_fc.weight"
    want = (params[name].grad * params[name].detach()).abs()
    # the metric takes the loss in float64 (docs/science.md), this backward in float32: errors
    # of float32 sums, which scale with the largest entries
    assert torch.allclose(scores[name], want, rtol=1e-3, atol=1e-4 * float(want.max()))
    model.zero_grad()
    # rank: the 10 largest scores over the pool, found by a full sort
    flat = [(float(v), n, i) for n, s in scores.items() for i, v in enumerate(s.reshape(-1))]
    best = {(n, i) for _, n, i in sorted(flat, reverse=True)[:10]}
    top = ranking.filter(ranking["selection"] == "top")
    assert set(zip(top["param"], top["flat_index"], strict=True)) == best
    # perturbed: exactly the top set is zero inside the block, and everything is back after it
    before = {n: p.detach().clone() for n, p in params.items()}
    with cwa.perturbed(model, ranking, "zero") as chosen:
        for n, p in params.items():  # nothing outside the set moves (a weight at 0 stays)
            changed = set((p.detach() != before[n]).reshape(-1).nonzero().flatten().tolist())
            assert changed <= set(chosen.get(n, torch.tensor([], dtype=torch.long)).tolist())
        assert all(float(params[n].detach().reshape(-1)[i]) == 0.0 for n, i in best)
    assert all(torch.equal(p.detach(), before[n]) for n, p in params.items())
    assert namespace["zeroed"].ppl != base.ppl
