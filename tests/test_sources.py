"""Calibration and evaluation text from files, directories and `datasets`, and its windows."""

import hashlib
import json

import polars as pl
import pytest
import torch

from cwa import CwaError
from cwa.data.sources import halves, parse_hf, read_source, read_sources, user_sources
from cwa.data.text_folder import Text
from cwa.data.windows import bos_token_id, text_windows, windows

PARAGRAPHS = ["First document, two words more.", "Second one\nspans two lines.", "Third."]


def source(path, field="text"):
    return read_source("eval_data", str(path), field, None)


def test_txt_documents_are_blank_line_separated_and_hashed(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n\n".join(PARAGRAPHS) + "\n \n\n")
    s = source(path)
    assert s.documents == PARAGRAPHS and s.kind == "file" and s.part == "whole"
    assert s.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert s.bytes == path.stat().st_size
    assert s.record()["documents"] == 3 and s.record()["characters"] == sum(map(len, PARAGRAPHS))


def test_jsonl_parquet_and_csv_read_the_named_field(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": p, "id": i}) for i, p in enumerate(PARAGRAPHS)))
    assert source(jsonl, "body").documents == PARAGRAPHS
    parquet = tmp_path / "a.parquet"
    pl.DataFrame({"content": PARAGRAPHS}).write_parquet(parquet)
    assert source(parquet, "content").documents == PARAGRAPHS
    csv = tmp_path / "a.csv"
    pl.DataFrame({"id": [1, 2, 3], "text": PARAGRAPHS}).write_csv(csv)
    assert source(csv).documents == PARAGRAPHS


def test_a_directory_reads_its_files_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "1.txt").write_text("one")
    (tmp_path / "notes.md").write_text("ignored")
    s = source(tmp_path)
    assert s.documents == ["one", "two"] and s.kind == "directory"
    h = hashlib.sha256()
    for name, body in (("1.txt", b"one"), ("b/2.txt", b"two")):
        h.update(name.encode() + b"\0" + body)
    assert s.sha256 == h.hexdigest()


def test_halves_are_disjoint_cover_the_text_and_cut_near_the_middle():
    docs = ["aaaa bbbb", "cccc dddd eeee ffff", "gggg"]
    first, second = halves(docs)
    assert first == ["aaaa bbbb", "cccc dddd"] and second == ["eeee ffff", "gggg"]
    (only,) = [" ".join(f"w{i}" for i in range(100))]
    a, b = halves([only])
    assert a[0] + " " + b[0] == only and abs(len(a[0]) - len(b[0])) <= 6


def test_one_source_named_twice_is_split_calibration_first(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n\n".join(PARAGRAPHS))
    calib, evaluation = read_sources(str(path), str(path), "text", None)
    assert (calib.key, evaluation.key) == ("calib_data", "eval_data")
    joined = " ".join(calib.documents + evaluation.documents).split()
    assert joined == " ".join(PARAGRAPHS).split()  # every word once, in order: no overlap
    assert calib.part.startswith("first half") and evaluation.part.startswith("second half")
    assert calib.sha256 == evaluation.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [s.key for s in user_sources("builtin:kjv", str(path), "builtin:web", "text")] == [
        "eval_data"
    ]


def test_hf_datasets_saved_to_disk(tmp_path):
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_dict({"text": PARAGRAPHS}).save_to_disk(str(single))
    s = source(f"hf:{single}")
    assert s.documents == PARAGRAPHS and s.kind == "hf"
    assert s.sha256 == hashlib.sha256("\n\n".join(PARAGRAPHS).encode()).hexdigest()
    both = tmp_path / "both"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t"]}),
            "test": datasets.Dataset.from_dict({"text": PARAGRAPHS}),
        }
    ).save_to_disk(str(both))
    assert source(f"hf:{both}::test").documents == PARAGRAPHS
    with pytest.raises(CwaError, match="has splits train, test: name one"):
        source(f"hf:{both}")
    with pytest.raises(CwaError, match=r"has no column 'body'.*columns: text"):
        source(f"hf:{both}::test", "body")
    assert parse_hf("hf:wikitext:wikitext-2-raw-v1:test") == (
        "wikitext",
        "wikitext-2-raw-v1",
        "test",
    )


def test_an_unreachable_hub_dataset_says_how_to_make_a_local_copy(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CwaError) as err:
        source("hf:no-such-owner/no-such-dataset:cfg:test")
    message = str(err.value)
    assert "needs the hub or a local copy" in message and "save_to_disk('DIR')" in message
    assert "hf:DIR::test" in message and "\n" not in message


class CharTokenizer:
    bos_token_id, eos_token_id = None, 99

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 64 for c in text]}


def test_bos_windows_start_with_bos_then_continue_the_stream():
    tok = CharTokenizer()
    plain = windows(tok, ["abcdefgh"], 4)
    with_bos = windows(tok, ["abcdefgh"], 4, bos_id=7)
    stream = [ord(c) % 64 for c in "abcdefgh"]
    assert plain.reshape(-1).tolist() == stream
    assert with_bos.tolist() == [[7, *stream[0:3]], [7, *stream[3:6]]]
    assert bos_token_id(tok) == 99  # no BOS: EOS, the GPT-2 convention
    tok.eos_token_id = None
    with pytest.raises(CwaError, match="neither a BOS nor an EOS"):
        bos_token_id(tok)


def test_window_counts_fail_with_both_numbers_and_the_remedy():
    text = Text(["x" * 100], {"key": "eval_data", "spec": "my.txt"})
    found = text_windows(CharTokenizer(), text, 10, False, "eval_samples", 10)
    assert found.all.shape == (10, 10) and found.record["tokens"] == 100
    assert torch.equal(found.all[0], torch.full((10,), ord("x") % 64))
    with pytest.raises(CwaError, match=r"`eval_samples` is 11 but `eval_data` my\.txt gives only"):
        text_windows(CharTokenizer(), text, 10, False, "eval_samples", 11)
    with pytest.raises(CwaError, match="100 tokens, fewer than one window of seq_len 128"):
        text_windows(CharTokenizer(), text, 128, False, "eval_samples", 1)


def test_finetune_data_reads_the_web_split_or_its_own_file(tmp_path):
    corpus = tmp_path / "corpus.parquet"
    pl.DataFrame(
        {"doc": [0, 1, 2], "split": ["calib", "eval", "finetune"], "text": ["c", "e", "web text"]}
    ).write_parquet(corpus)
    web = read_source("finetune_data", "builtin:web", "text", corpus)
    assert web.documents == ["web text"] and web.part == "finetune split"
    path = tmp_path / "new.txt"
    path.write_text("\n\n".join(PARAGRAPHS))
    found = user_sources("builtin:kjv", "builtin:kjv", str(path), "text")
    assert [(s.key, s.documents) for s in found] == [("finetune_data", PARAGRAPHS)]


def test_finetune_data_must_not_be_the_calibration_or_evaluation_text(tmp_path):
    from cwa.config.params import params_from_dict

    path = tmp_path / "a.txt"
    path.write_text("x")
    family = {"m": {"hidden": 8, "layers": 1, "heads": 2, "intermediate": 16}}
    base = {"family": family, "model": "builtin:m", "finetune_data": str(path)}
    for key in ("calib_data", "eval_data"):
        with pytest.raises(CwaError, match=f"`finetune_data` is {key} .*a text of its own"):
            params_from_dict(base | {key: str(path)})
