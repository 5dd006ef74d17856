"""Downstream tasks: scoring on a hand-checked bigram model, batching, files and builders."""

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cwa import CwaError
from cwa.data.task_files import build_choice, build_last_word
from cwa.evaluation.tasks import (
    Task,
    encode_pair,
    evaluate_task,
    load_task,
    loglikelihoods,
)

VOCAB = ["a", " b", " c", " d", " x", " y", " z", " q"]
NEXT = {0: 1, 1: 2, 2: 3, 3: 7, 4: 5, 5: 6, 6: 7, 7: 4}  # the one token each token favours
L = math.log(math.exp(10) + 7)  # -log p of a disfavoured token; a favoured one costs L - 10


class WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [VOCAB.index(t) for t in re.findall(r" ?[^ ]+", text)]}


class BigramModel(torch.nn.Module):
    """logits[t] = 10 at NEXT[ids[t]], 0 elsewhere: every log-probability is known by hand."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        favoured = torch.tensor([NEXT[i] for i in range(len(VOCAB))])[input_ids]
        return SimpleNamespace(logits=10.0 * torch.nn.functional.one_hot(favoured, len(VOCAB)))


def test_last_word_accuracy_and_target_ppl_by_hand():
    task = Task("t", "last_word", [{"text": "a b c d"}, {"text": "a b c q"}])
    res = evaluate_task(BigramModel(), WordTokenizer(), task, max_len=16, batch_size=2)
    assert res.correct.tolist() == [1.0, 0.0]  # " d" follows " c"; " q" does not
    # fp32 log-softmax of logits 10 and 0: a rounding or two at magnitude 10, ulp(10) = 9.5e-7;
    # the wrong token would cost 10 nats
    assert res.nll == pytest.approx([L - 10, L], abs=4e-6)
    # exp of the mean of those NLLs: their absolute error (<= 4e-6, above) is ppl's relative error
    assert res.target_ppl == pytest.approx(math.exp((2 * L - 10) / 2), rel=1e-5)


def test_choice_acc_and_acc_norm_by_hand():
    items = [
        {"ctx": "a b", "endings": ["c d", "x", "q x y"], "label": 0},
        # "x": -L over 1 character; "c d d d": 20 - 4L over 7 characters.
        {"ctx": "a b", "endings": ["x", "c d d d"], "label": 1},
    ]
    res = evaluate_task(BigramModel(), WordTokenizer(), Task("c", "choice", items), 16, 3)
    assert res.correct.tolist() == [1.0, 0.0]  # summed: -L beats 20 - 4L
    assert res.correct_norm.tolist() == [1.0, 1.0]  # per character: -(4L-20)/7 beats -L/1


def test_encode_pair_moves_trailing_spaces_like_lm_eval():
    ctx, cont = encode_pair(WordTokenizer(), "a b ", "c")
    assert ctx == [0, 1] and cont == [2]


def test_batching_and_padding_do_not_change_loglikelihoods():
    from tests.conftest import tiny_llama

    model = tiny_llama()
    gen = torch.Generator().manual_seed(0)
    pairs = [
        (
            torch.randint(0, 64, (n,), generator=gen).tolist(),
            torch.randint(0, 64, (m,), generator=gen).tolist(),
        )
        for n, m in ((5, 1), (11, 3), (2, 2), (20, 4))
    ]
    one = loglikelihoods(model, pairs, max_len=16, batch_size=1)
    many = loglikelihoods(model, pairs, max_len=16, batch_size=4)
    assert [g for _, g, _ in one] == [g for _, g, _ in many]
    # fp32 log-likelihoods (|lp| <= 17, ulp 2e-6) of padded and unpadded batches, whose matmuls
    # and masked softmaxes may sum in other orders: a few ulp per token; one context token more
    # or less moves lp by ~7e-3, 70x atol
    assert np.allclose([lp for lp, _, _ in one], [lp for lp, _, _ in many], rtol=0, atol=1e-4)
    # direct computation for the last pair, truncated to its last 16 + 1 tokens as lm-eval does
    ctx, cont = pairs[3]
    seq = torch.tensor((ctx + cont)[-17:])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=seq[None, :-1]).logits[0].float(), -1)
    want = float(logp[-4:].gather(1, seq[-4:, None]).sum())
    # the same fp32 forward (here without the all-ones mask), the 4 log-probs summed in another
    # order: a few ulp(17) = 2e-6
    assert one[3][0] == pytest.approx(want, abs=1e-4) and one[3][2] == 4
    # a continuation longer than the window is scored on its last max_len tokens
    ((lp, _, n),) = loglikelihoods(model, [([1, 2], list(range(3, 23)))], max_len=8, batch_size=1)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([list(range(14, 22))])).logits[0], -1)
    # as above (|lp| ~ 34, ulp 4e-6); a window shifted by one token moves lp by 2.5e-2
    assert n == 8 and lp == pytest.approx(
        float(logp.gather(1, torch.arange(15, 23)[:, None]).sum()), abs=1e-4
    )


def test_task_files_are_checked(tmp_path):
    with pytest.raises(CwaError, match="not found; use a built-in task"):
        load_task(str(tmp_path / "none.jsonl"), tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b"}\nnot json\n')
    with pytest.raises(CwaError, match="line 2: not JSON"):
        load_task(str(bad), tmp_path)
    bad.write_text('{"question": "?"}\n')
    with pytest.raises(CwaError, match="items need fields"):
        load_task(str(bad), tmp_path)
    bad.write_text(json.dumps({"ctx": "a", "endings": ["b"], "label": 3}) + "\n")
    with pytest.raises(CwaError, match="item 1: not a valid choice item"):
        load_task(str(bad), tmp_path)
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"a b {i}"}) + "\n" for i in range(5)))
    task = load_task(str(good), tmp_path, limit=3)
    assert task.kind == "last_word" and len(task.items) == 3


PARAGRAPHS = [
    " ".join(f"w{i}x{j}" for j in range(30))
    + ". And then the people went home again to rest. "
    + " ".join(f"v{i}y{j}" for j in range(12))
    + " ending."
    for i in range(40)
]


def test_builders_are_seeded_and_well_formed():
    words = build_last_word(PARAGRAPHS, 20, seed=1)
    assert words == build_last_word(PARAGRAPHS, 20, seed=1)
    assert all(re.search(r" [A-Za-z]{3,}$", it["text"]) for it in words)
    assert all(len(it["text"].split(" ")) >= 20 for it in words)
    choice = build_choice(PARAGRAPHS, 30, seed=1)
    assert choice == build_choice(PARAGRAPHS, 30, seed=1)
    for it in choice:
        assert len(it["endings"]) == 4 and len(set(it["endings"])) == 4
        true = it["endings"][it["label"]]
        # the true ending continues its context within one paragraph
        assert any(f"{it['ctx']} {true}" in p for p in PARAGRAPHS)
    assert len({it["label"] for it in choice}) > 1
    with pytest.raises(CwaError, match="task_items: asked for 1000"):
        build_choice(PARAGRAPHS, 1000, seed=1)
