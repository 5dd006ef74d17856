"""The lm-evaluation-harness adapter against cwa's own task scorer: same items, same answers."""

import json

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from cwa.evaluation.lmeval import LmEval
from cwa.evaluation.tasks import Task, evaluate_task

WORDS = [
    "the",
    "lord",
    "said",
    "unto",
    "moses",
    "and",
    "aaron",
    "go",
    "ye",
    "into",
    "the",
    "land",
    "of",
    "egypt",
    "and",
    "speak",
    "to",
    "the",
    "people",
]


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 14)))) for _ in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from cwa.data.tokenizer import train_tokenizer

    tmp = tmp_path_factory.mktemp("lmeval")
    tok = train_tokenizer(texts(200, 0), vocab_size=300)
    import torch

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    last = [{"text": t} for t in texts(12, 1)]
    rng = np.random.default_rng(2)
    choice = [
        {"ctx": c, "endings": texts(4, 10 + i), "label": int(rng.integers(0, 4))}
        for i, c in enumerate(texts(10, 3))
    ]
    for name, items in (("last", last), ("choice", choice)):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    (tmp / "last.yaml").write_text(
        f"""task: t_last
dataset_path: json
dataset_kwargs: {{data_files: {{test: {tmp / "last.jsonl"}}}}}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}]
"""
    )
    (tmp / "choice.yaml").write_text(
        f"""task: t_choice
dataset_path: json
dataset_kwargs: {{data_files: {{test: {tmp / "choice.jsonl"}}}}}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{ctx}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{endings}}}}"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
"""
    )
    return model, tok, tmp, Task("last", "last_word", last), Task("choice", "choice", choice)


def test_harness_and_cwa_score_every_item_alike(setup):
    model, tok, tmp, last, choice = setup
    harness = LmEval(model, tok, ("t_last", "t_choice"), str(tmp), 64, 4, None).run()
    ours_last = evaluate_task(model, tok, last, 64, 4)
    ours_choice = evaluate_task(model, tok, choice, 64, 4)
    # exact: 0/1 decisions from fp32 log-likelihoods batched differently; the closest calls are
    # 1.7e-2 apart (greedy target vs best other token), 1.06 (summed choices, |lp| <= 120) and
    # 6e-2 (per character), >= 1e3 x the few-ulp rounding that could flip them
    assert harness["lm_eval:t_last"].correct.tolist() == ours_last.correct.tolist()
    assert harness["lm_eval:t_choice"].correct.tolist() == ours_choice.correct.tolist()
    assert harness["lm_eval:t_choice"].correct_norm.tolist() == ours_choice.correct_norm.tolist()
    assert len(harness["lm_eval:t_choice"].correct) == 10
    # a random model gets some right and some wrong: the comparison is not vacuous
    assert 0 < ours_choice.correct.sum() < 10


@pytest.mark.slow  # a subprocess or many drawn cases: `make test` only
def test_unknown_harness_task_is_a_clear_error(setup):
    from cwa import CwaError

    model, tok, tmp, _, _ = setup
    with pytest.raises(CwaError, match="not lm-eval tasks"):
        LmEval(model, tok, ("no_such_task_xyz",), str(tmp), 64, 4, None)
