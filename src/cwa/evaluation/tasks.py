"""Downstream tasks from local JSONL files, scored per item the way lm-evaluation-harness does.

Two kinds, told apart by their fields:
- last word (LAMBADA-style), `{"text": ...}`: the target is the last space-separated word with
  its leading space; an item is correct iff every target token is the greedy prediction; the
  target NLL gives the target perplexity.
- multiple choice (HellaSwag-style), `{"ctx": ..., "endings": [...], "label": i}`: each ending
  is scored by the summed log-likelihood of " " + ending given the context; acc takes the
  argmax, acc_norm the argmax after dividing by the ending's length in characters (lm-eval's
  definition: the ending without the joining space).
Built-in files (`kjv_lambada`, `kjv_hellaswag`) are made from held-out corpus paragraphs by the
`tasks` stage (cwa.data.task_files), so the default pipeline runs them offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cwa import CwaError

BUILTIN = ("kjv_lambada", "kjv_hellaswag")
_FIELDS = {"last_word": {"text"}, "choice": {"ctx", "endings", "label"}}


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "last_word" | "choice"
    items: list[dict]


@dataclass(frozen=True)
class TaskResult:
    """Per item: correct (0/1), correct after length normalisation (choice; else = correct),
    target NLL and target tokens (last word; zeros for choice)."""

    correct: np.ndarray
    correct_norm: np.ndarray
    nll: np.ndarray
    tokens: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def acc_norm(self) -> float:
        return float(self.correct_norm.mean())

    @property
    def target_ppl(self) -> float:
        total = float(self.tokens.sum())
        return float(np.exp(self.nll.sum() / total)) if total else float("nan")


def task_path(spec: str, tasks_dir: str | Path) -> Path:
    return Path(tasks_dir) / f"{spec}.jsonl" if spec in BUILTIN else Path(spec)


def load_task(spec: str, tasks_dir: str | Path, limit: int | None = None) -> Task:
    """A built-in task name or a path to a JSONL file; the kind follows from the fields."""
    path = task_path(spec, tasks_dir)
    if not path.is_file():
        raise CwaError(
            f"task {spec!r}: {path} not found; use a built-in task ({', '.join(BUILTIN)}) or a "
            f"JSONL file with {{'text'}} (last word) or {{'ctx', 'endings', 'label'}} lines"
        )
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise CwaError(f"task file {path}, line {n}: not JSON ({err.msg})") from None
    if not items:
        raise CwaError(f"task file {path} holds no items")
    kind = next((k for k, f in _FIELDS.items() if f <= set(items[0])), None)
    if kind is None:
        raise CwaError(f"task file {path}: items need fields {_FIELDS} , got {sorted(items[0])}")
    for n, item in enumerate(items, 1):
        if not _FIELDS[kind] <= set(item) or (
            kind == "choice" and not 0 <= item["label"] < len(item["endings"])
        ):
            raise CwaError(f"task file {path}, item {n}: not a valid {kind} item: {item}")
    name = path.stem if spec in BUILTIN else spec
    return Task(name, kind, items[:limit] if limit else items)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing spaces of the context move to the continuation; the
    continuation's tokens are those of the joined string after the context's."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx) :]


@torch.inference_mode()
def loglikelihoods(
    model, pairs: list[tuple[list[int], list[int]]], max_len: int, batch_size: int
) -> list[tuple[float, bool, int]]:
    """(summed log-probability of the continuation, every continuation token greedy, tokens
    scored) per pair. Inputs keep the last max_len tokens, as lm-eval truncates; a continuation
    longer than that is scored on its last max_len tokens."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        seqs = [(ctx + cont)[-(max_len + 1) :][:-1] for ctx, cont in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logp = F.log_softmax(logits.float(), dim=-1).cpu()  # (B, T, V)
        for i, ((_, cont), s) in enumerate(zip(chunk, seqs, strict=True)):
            n = min(len(cont), len(s))
            at = logp[i, len(s) - n : len(s)]  # positions predicting the continuation
            target = torch.tensor(cont[len(cont) - n :])
            lp = float(at.gather(1, target[:, None]).sum())
            out.append((lp, bool((at.argmax(-1) == target).all()), n))
    return out


def evaluate_task(model, tokenizer, task: Task, max_len: int, batch_size: int) -> TaskResult:
    if task.kind == "last_word":
        pairs = [encode_pair(tokenizer, *split_last_word(it["text"])) for it in task.items]
        scores = loglikelihoods(model, pairs, max_len, batch_size)
        correct = np.array([greedy for _, greedy, _ in scores], dtype=float)
        return TaskResult(
            correct,
            correct,
            np.array([-lp for lp, _, _ in scores]),
            np.array([n for _, _, n in scores], dtype=np.int64),
        )
    conts = [[" " + e for e in it["endings"]] for it in task.items]
    pairs = [
        encode_pair(tokenizer, it["ctx"], c)
        for it, cs in zip(task.items, conts, strict=True)
        for c in cs
    ]
    lps = iter(lp for lp, _, _ in loglikelihoods(model, pairs, max_len, batch_size))
    correct, norm = [], []
    for it, cs in zip(task.items, conts, strict=True):
        lp = np.array([next(lps) for _ in cs])
        lengths = np.array([len(e) for e in it["endings"]], dtype=float)
        correct.append(float(np.argmax(lp) == it["label"]))
        norm.append(float(np.argmax(lp / lengths) == it["label"]))
    n = len(task.items)
    return TaskResult(np.array(correct), np.array(norm), np.zeros(n), np.zeros(n, np.int64))


def split_last_word(text: str) -> tuple[str, str]:
    """(context, " " + last word), LAMBADA's target definition."""
    context, word = text.rsplit(" ", 1)
    return context, " " + word
