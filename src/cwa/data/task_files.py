"""The built-in downstream task files, made from held-out corpus paragraphs by the `tasks` stage
(cwa.evaluation.tasks scores them): `kjv_lambada` (LAMBADA-style last word) and
`kjv_hellaswag` (HellaSwag-style multiple choice), so the default pipeline runs them offline."""

from __future__ import annotations

import json
import re

import numpy as np

from cwa import CwaError


def passages(paragraphs: list[str], max_words: int = 60) -> list[list[str]]:
    """Every sentence end of every paragraph, with up to `max_words` words before it from the
    same paragraph: many task items from few held-out paragraphs, none crossing a paragraph."""
    out = []
    for p in paragraphs:
        words = p.split(" ")
        ends = [i + 1 for i, w in enumerate(words) if w.endswith((".", "?", "!", ";", ":"))]
        out += [words[max(0, end - max_words) : end] for end in ends]
    return out


def build_last_word(paragraphs: list[str], count: int, seed: int) -> list[dict]:
    """Passages of 20+ words ending in a word of 3+ letters (its punctuation removed)."""
    items = []
    for words in passages(paragraphs):
        last = re.sub(r"[^\w]+$", "", words[-1])
        if len(words) >= 20 and re.fullmatch(r"[A-Za-z]{3,}", last):
            items.append({"text": " ".join([*words[:-1], last])})
    return _sample(items, count, seed)


def build_choice(paragraphs: list[str], count: int, seed: int, endings: int = 4) -> list[dict]:
    """Context = a passage's words before its last 6-12 (at least 10), true ending = those last
    words; distractors = true endings of other items; the label position is seeded."""
    rng = np.random.default_rng(seed)
    base = []
    for words in passages(paragraphs):
        tail = min(12, max(6, len(words) // 3))
        if len(words) - tail >= 10:
            base.append((" ".join(words[:-tail]), " ".join(words[-tail:])))
    base = _sample(base, count, seed)
    pool = [end for _, end in base]
    items = []
    for i, (ctx, true) in enumerate(base):
        others = [int(j) for j in rng.permutation(len(pool)) if j != i and pool[j] != true]
        options = [pool[j] for j in others[: endings - 1]]
        label = int(rng.integers(0, endings))
        options.insert(label, true)
        items.append({"ctx": ctx, "endings": options, "label": label})
    return items


def _sample(items: list, count: int, seed: int) -> list:
    if len(items) < count:
        raise CwaError(f"task_items: asked for {count} items, the held-out text gives {len(items)}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:count])
    return [items[i] for i in keep]


def jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items)
