"""`cwa verify` on a tiny git + DVC repo: hashes first, then values within a tolerance."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cwa import CwaError
from cwa.pipeline.verify import (
    DIFFERS,
    IDENTICAL,
    NOT_CACHED,
    WITHIN,
    _cache_path,
    _dir_md5,
    _md5,
    format_report,
    verify,
)

MAKE = """\
import json, sys
from pathlib import Path
import numpy as np, polars as pl
from safetensors.numpy import save_file
EPS = 0.0
what = sys.argv[1]
if what == "table":
    Path("out").mkdir(exist_ok=True)
    x = np.array([1.0, 2.0, 3.5]) * (1 + EPS)
    pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"], "x": x}).write_parquet(
        "out/table.parquet")
    Path("artifacts").mkdir(exist_ok=True)
    Path("artifacts/metrics.json").write_text(json.dumps({"loss": 0.5 * (1 + EPS), "n": 3}))
else:
    d = Path("out/models") / what
    d.mkdir(parents=True, exist_ok=True)
    w = np.arange(6, dtype=np.float64).reshape(2, 3) * (1 + EPS)
    save_file({"w": w}, str(d / "model.safetensors"))
    (d / "config.json").write_text('{"layers": 1}')
"""

PY = shlex.quote(sys.executable)
DVC_YAML = f"""\
stages:
  table:
    cmd: {PY} make.py table
    deps: [make.py]
    outs: [out/table.parquet]
    metrics:
      - artifacts/metrics.json:
          cache: false
  model:
    foreach: [tiny]
    do:
      cmd: {PY} make.py ${{item}}
      deps: [make.py]
      outs: ["out/models/${{item}}"]
"""

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "DVC_NO_ANALYTICS": "1",
}


def sh(repo: Path, *cmd: str) -> None:
    done = subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"


def dvc(repo: Path, *args: str) -> None:
    sh(repo, sys.executable, "-m", "dvc", *args)


def commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """A repo whose pipeline ran once, lock and metrics committed (HEAD~1 has no dvc.lock)."""
    repo = tmp_path_factory.mktemp("verify") / "repo"
    repo.mkdir()
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    commit(repo, "init")
    (repo / "make.py").write_text(MAKE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    dvc(repo, "repro")
    commit(repo, "run")
    return repo


@pytest.fixture
def repo(committed, tmp_path) -> Path:
    """A private copy (cache included) that a test may rerun or damage."""
    return Path(shutil.copytree(committed, tmp_path / "repo", symlinks=True))


def lock_outs(repo: Path) -> dict[str, dict]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o for stage in lock["stages"].values() for o in stage.get("outs", [])}


def rows(report) -> dict[str, object]:
    return {r.path: r for r in report.rows}


def test_lock_and_cache_layout_as_dvc_3_writes_them(committed):
    outs = lock_outs(committed)
    assert set(outs) == {"out/table.parquet", "artifacts/metrics.json", "out/models/tiny"}
    model = outs["out/models/tiny"]
    assert model["hash"] == "md5" and model["nfiles"] == 2
    files = {p.name: _md5(p) for p in (committed / "out/models/tiny").iterdir()}
    assert _dir_md5(files) == model["md5"]
    cache = committed / ".dvc" / "cache"
    listing = json.loads(_cache_path(cache, model["md5"], legacy=False).read_text())
    assert sorted(e["relpath"] for e in listing) == ["config.json", "model.safetensors"]
    assert _cache_path(cache, outs["out/table.parquet"]["md5"], legacy=False).is_file()
    # `cache: false` outputs are in the lock, and the run cache copies them into the cache too
    # (dvc/stage/cache.py, StageCache.save); `dvc push` does not send them, git has them
    assert _cache_path(cache, outs["artifacts/metrics.json"]["md5"], legacy=False).is_file()


def test_a_fresh_run_is_identical(committed):
    report = verify(committed)
    assert report.ok and not report.warnings
    assert {r.status for r in report.rows} == {IDENTICAL}
    assert {r.stage for r in report.rows} == {"table", "model@tiny"}
    text = format_report(report)
    assert text.splitlines()[-1] == "3 outputs: 3 identical"


def test_a_small_change_is_within_tolerance_or_differs(repo):
    make = repo / "make.py"
    make.write_text(make.read_text().replace("EPS = 0.0", "EPS = 1e-9"))
    stale = verify(repo)  # make.py changed, not rerun: the lock still says identical
    assert stale.ok and "not up to date" in stale.warnings[0]

    dvc(repo, "repro")
    loose = verify(repo, rtol=1e-6)
    assert loose.ok and not loose.warnings
    assert {r.status for r in loose.rows} == {WITHIN}
    table, metrics, model = (
        rows(loose)[p] for p in ("out/table.parquet", "artifacts/metrics.json", "out/models/tiny")
    )
    (x,) = table.diffs
    assert x.name == "x" and x.max_abs == pytest.approx(3.5e-9, rel=1e-6)
    assert x.max_rel == pytest.approx(1e-9, rel=1e-6)
    (w,) = model.diffs  # config.json is unchanged
    assert w.name == "model.safetensors:w" and w.max_abs == pytest.approx(5e-9, rel=1e-6)
    (loss,) = metrics.diffs
    assert loss.name == "loss" and loss.max_rel == pytest.approx(1e-9, rel=1e-6)
    assert format_report(loose).splitlines()[-1] == (
        "3 outputs: 0 identical, 3 within tolerance (rtol=1e-06, atol=0)"
    )

    strict = verify(repo)
    assert not strict.ok
    assert {r.status for r in strict.rows} == {DIFFERS}
    assert rows(strict)["out/table.parquet"].detail.startswith("x: max abs 3.5e-09, max rel 1e-09")
    text = format_report(strict)
    assert text.startswith("verify against HEAD (rtol=0, atol=0)\n")
    assert "differs  loss: max abs 5e-10, max rel 1e-09" in text


def test_a_reference_missing_from_the_cache(repo):
    """A cached output can no longer be compared; a `cache: false` one still can, from git."""
    outs = lock_outs(repo)
    make = repo / "make.py"
    make.write_text(make.read_text().replace("EPS = 0.0", "EPS = 1e-9"))
    dvc(repo, "repro")
    for path in ("out/table.parquet", "artifacts/metrics.json"):
        _cache_path(repo / ".dvc" / "cache", outs[path]["md5"], legacy=False).unlink()
    report = verify(repo, rtol=1e-6)
    assert not report.ok
    table, metrics = rows(report)["out/table.parquet"], rows(report)["artifacts/metrics.json"]
    assert table.status == NOT_CACHED and "dvc pull" in table.detail
    assert metrics.status == WITHIN and metrics.diffs[0].name == "loss"


def test_user_errors(committed, tmp_path):
    with pytest.raises(CwaError, match="unknown git revision"):
        verify(committed, rev="no-such-branch")
    with pytest.raises(CwaError, match=r"no dvc\.lock at HEAD~1"):
        verify(committed, rev="HEAD~1")
    with pytest.raises(CwaError, match="not inside a git repository"):
        verify(tmp_path)


def test_run_records_are_not_compared():
    from cwa.pipeline.verify import is_run_record

    assert is_run_record("artifacts/perturb/manifest.json")
    assert is_run_record("artifacts/train/kjv-base.manifest.json")
    assert is_run_record("artifacts/study/manifests/kjv-base.json")
    assert not is_run_record("artifacts/metrics.json")
    assert not is_run_record("artifacts/perturb/effects.parquet")
