"""Does this workspace reproduce the outputs a committed `dvc.lock` records, and how closely?

A rerun on other hardware or library versions rarely gives the same bytes, so a hash mismatch
alone says little. For each output whose hash changed, the reference copy (from the DVC cache, or
from git for `cache: false` outputs) is compared value by value with the workspace: Parquet
columns, safetensors tensors and JSON leaves, so a float that moved by 1e-9 reads as such.

DVC 3 formats this relies on (dvc/cachemgr.py, dvc_data/hashfile/tree.py, dvc/output.py):
- a lock entry with `hash: md5` is a DVC 3 object, stored at `<cache>/files/md5/ab/cdef...`;
  one without `hash` is a DVC 2 (`md5-dos2unix`) object, stored at `<cache>/ab/cdef...`;
- a directory's md5 ends in `.dir`; its object is a JSON list of {"md5", "relpath"} sorted by
  relpath, and the md5 is that of `json.dumps(list, sort_keys=True)` (see `_dir_md5`);
- `cache: false` outputs (manifests, artifacts/metrics.json) are in the lock's `outs` too; the run
  cache copies them into the local cache (dvc/stage/cache.py), but `dvc push` does not send them,
  so their reference falls back to the copy committed to git.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from cwa import CwaError

METRICS = "artifacts/metrics.json"

IDENTICAL = "identical"
WITHIN = "within tolerance"
DIFFERS = "differs"
NOT_CACHED = "differs (reference not in cache)"
MISSING = "missing"
_ORDER = (IDENTICAL, WITHIN, DIFFERS, NOT_CACHED, MISSING)

_NOT_CACHED_HINT = "`dvc pull` from the author's remote makes the values comparable"


@dataclass
class Diff:
    """How one column, tensor, JSON key or file differs from the reference."""

    name: str
    max_abs: float | None = None
    max_rel: float | None = None
    ok: bool = False  # every element within |a - b| <= atol + rtol * |b|
    note: str = ""  # a difference that is not numeric (cells, keys, files, bytes)

    def describe(self) -> str:
        what = self.note or f"max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}"
        return f"{self.name}: {what}" if self.name else what


@dataclass
class Row:
    stage: str
    path: str
    status: str
    detail: str = ""
    diffs: list[Diff] = field(default_factory=list)  # worst first


@dataclass
class Report:
    rev: str
    rtol: float
    atol: float
    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status in (IDENTICAL, WITHIN) for r in self.rows)


@dataclass
class _Context:
    repo: Path
    commit: str
    cache: Path
    tmp: Path
    rtol: float
    atol: float


def verify(repo: Path, rev: str = "HEAD", rtol: float = 0.0, atol: float = 0.0) -> Report:
    """Compares each output that `rev`'s dvc.lock records with the workspace's lock and files."""
    repo = Path(repo).resolve()
    commit, reference = _lock_at(repo, rev)
    report = Report(rev=rev, rtol=rtol, atol=atol)
    lock = repo / "dvc.lock"
    if not lock.is_file():
        report.warnings.append("no dvc.lock in the workspace: run `dvc repro` first")
    current = _outs(yaml.safe_load(lock.read_text()) or {}) if lock.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = _Context(repo, commit, _cache_dir(repo), Path(tmp), rtol, atol)
        outs = _outs(reference)
        for key, entry in outs.items():
            if not is_run_record(entry["path"]):
                report.rows.append(_check(ctx, key[0], entry, current.get(key)))
    report.warnings.extend(_status_warnings(repo))
    return report


def is_run_record(path: str) -> bool:
    """Manifests record a run (wall time, memory, commit, versions), not a result: every rerun
    rewrites them, so they are not compared."""
    return path.endswith("manifest.json") or "/manifests/" in path


def format_report(report: Report) -> str:
    """An aligned table, one row per output (and every differing metric), then a summary."""
    table = [("stage", "path", "status", "detail")]
    table += [(r.stage, r.path, r.status, r.detail) for r in report.rows]
    widths = [max(len(cells[i]) for cells in table) for i in range(3)] + [0]
    lines = [f"verify against {report.rev} (rtol={report.rtol:g}, atol={report.atol:g})"]
    for cells, row in zip(table, [None, *report.rows], strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if row and row.path == METRICS and len(row.diffs) > 1:
            lines += [f"    {d.describe()}" for d in row.diffs]
    lines += [f"warning: {w}" for w in report.warnings]
    counts = {s: sum(r.status == s for r in report.rows) for s in _ORDER}
    parts = [f"{counts[IDENTICAL]} identical"]
    for status in _ORDER[1:]:
        if counts[status] or (status == WITHIN and (report.rtol or report.atol)):
            tol = f" (rtol={report.rtol:g}, atol={report.atol:g})" if status == WITHIN else ""
            parts.append(f"{counts[status]} {status}{tol}")
    lines.append(f"{len(report.rows)} outputs: " + ", ".join(parts))
    return "\n".join(lines)


def _git(repo: Path, *args: str) -> bytes | None:
    """Git's stdout, or None when the command fails."""
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, check=False)
    return done.stdout if done.returncode == 0 else None


def _lock_at(repo: Path, rev: str) -> tuple[str, dict]:
    """The commit `rev` names and its dvc.lock; a user's mistake becomes a one-line CwaError."""
    if not repo.is_dir() or _git(repo, "rev-parse", "--is-inside-work-tree") is None:
        raise CwaError(f"{repo} is not inside a git repository")
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if commit is None:
        raise CwaError(f"unknown git revision {rev!r}")
    commit = commit.decode().strip()
    text = _git(repo, "show", f"{commit}:./dvc.lock")
    if text is None:
        raise CwaError(f"no dvc.lock at {rev} ({commit[:10]}) in {repo}")
    lock = yaml.safe_load(text)
    if not isinstance(lock, dict) or not isinstance(lock.get("stages"), dict):
        raise CwaError(f"dvc.lock at {rev} has no stages (not a DVC 2/3 lock file)")
    return commit, lock


def _outs(lock: dict) -> dict[tuple[str, str], dict]:
    """{(stage, path): out entry}; foreach stages are already expanded (`train@kjv-base`)."""
    return {
        (stage, out["path"]): out
        for stage, body in (lock.get("stages") or {}).items()
        for out in (body or {}).get("outs", [])
    }


def _cache_dir(repo: Path) -> Path:
    """DVC's own answer (honours `cache.dir`), else the default `.dvc/cache`."""
    cmd = [sys.executable, "-m", "dvc", "cache", "dir"]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    return Path(lines[-1]) if done.returncode == 0 and lines else repo / ".dvc" / "cache"


def _status_warnings(repo: Path) -> list[str]:
    """A workspace that is not up to date has a lock that may not describe its files."""
    cmd = [sys.executable, "-m", "dvc", "status", "--json"]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    try:
        changed = json.loads(done.stdout or "{}") if done.returncode == 0 else None
    except ValueError:
        changed = None
    if changed is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"`dvc status` failed ({tail}): cannot tell whether dvc.lock is up to date"]
    # an `always_changed` stage (sources) is always listed; only a real change makes the lock stale
    changed = {k: v for k, v in changed.items() if v != ["always changed"]}
    if not changed:
        return []
    names = ", ".join(sorted(changed)[:5]) + (", ..." if len(changed) > 5 else "")
    return [
        f"{len(changed)} stage(s) not up to date ({names}): the workspace dvc.lock may be stale;"
        " run `dvc repro`"
    ]


def _check(ctx: _Context, stage: str, ref: dict, cur: dict | None) -> Row:
    """One output: by hash first, by value when the hashes differ."""
    path = ref["path"]
    if cur is None:
        return Row(stage, path, MISSING, "not in the workspace dvc.lock")
    if cur.get("md5") == ref.get("md5"):
        return Row(stage, path, IDENTICAL)
    target = ctx.repo / path
    if not target.exists():
        return Row(stage, path, MISSING, "not in the workspace")
    reference = _reference_files(ctx, ref)
    if reference is None:
        return Row(stage, path, NOT_CACHED, _NOT_CACHED_HINT)
    return _row(stage, path, _compare_files(ctx, path, reference, _workspace_files(target)))


def _row(stage: str, path: str, diffs: list[Diff]) -> Row:
    if not diffs:  # other bytes, same values (e.g. another compression)
        return Row(stage, path, WITHIN, "bytes differ, values equal")
    diffs = sorted(diffs, key=lambda d: (d.ok, -(math.inf if d.max_rel is None else d.max_rel)))
    failing = sum(not d.ok for d in diffs)
    detail = diffs[0].describe()
    more = failing - 1 if failing else len(diffs) - 1
    detail += f" (+{more} more)" if more else ""
    return Row(stage, path, DIFFERS if failing else WITHIN, detail, diffs)


def _cache_path(cache: Path, md5: str, legacy: bool) -> Path:
    root = cache if legacy else cache / "files" / "md5"
    return root / md5[:2] / md5[2:]


def _dir_md5(md5s: dict[str, str]) -> str:
    """DVC 3's hash of a directory from {relpath: md5} (dvc_data Tree.digest / as_bytes)."""
    entries = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(md5s.items())]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reference_files(ctx: _Context, ref: dict) -> dict[str, Path] | None:
    """{relpath ('' for a file): reference copy}, from the cache or git; None if neither has it."""
    md5, legacy = ref["md5"], ref.get("hash") != "md5"
    obj = _cache_path(ctx.cache, md5, legacy)
    if obj.is_file() and not md5.endswith(".dir"):
        return {"": obj}
    if obj.is_file():
        entries = json.loads(obj.read_text())
        files = {e["relpath"]: _cache_path(ctx.cache, e["md5"], legacy) for e in entries}
        return files if all(p.is_file() for p in files.values()) else None
    files = _git_files(ctx, ref["path"])  # `cache: false` outputs are committed to git
    if not files:
        return None
    md5s = {rel: _md5(p) for rel, p in files.items()}
    found = md5s[""] if set(md5s) == {""} else _dir_md5(md5s)
    return files if found == md5 else None  # a copy the lock does not describe is no reference


def _git_files(ctx: _Context, path: str) -> dict[str, Path]:
    """The file or directory `path` as committed at the reference, written to a temp dir."""
    listing = _git(ctx.repo, "ls-tree", "-r", "--name-only", "-z", ctx.commit, "--", path)
    names = [n for n in (listing or b"").decode().split("\0") if n]
    files = {}
    for name in names:
        if name != path and not name.startswith(path.rstrip("/") + "/"):
            continue
        data = _git(ctx.repo, "show", f"{ctx.commit}:./{name}") or b""
        dest = ctx.tmp / hashlib.md5(data).hexdigest()
        dest.write_bytes(data)
        files["" if name == path else name[len(path.rstrip("/")) + 1 :]] = dest
    return files


def _workspace_files(target: Path) -> dict[str, Path]:
    if not target.is_dir():
        return {"": target}
    return {p.relative_to(target).as_posix(): p for p in sorted(target.rglob("*")) if p.is_file()}


def _compare_files(
    ctx: _Context, path: str, ref: dict[str, Path], cur: dict[str, Path]
) -> list[Diff]:
    """Per-file differences; a file inside a directory names its diffs `relpath:column`. A run
    record inside a directory (the report's manifest.json) is no result: skipped."""
    ref = {rel: f for rel, f in ref.items() if not is_run_record(f"{path}/{rel}")}
    cur = {rel: f for rel, f in cur.items() if not is_run_record(f"{path}/{rel}")}
    diffs = [Diff(rel, note="removed") for rel in sorted(ref.keys() - cur.keys())]
    diffs += [Diff(rel, note="added") for rel in sorted(cur.keys() - ref.keys())]
    for rel in sorted(ref.keys() & cur.keys()):
        if filecmp.cmp(ref[rel], cur[rel], shallow=False):
            continue
        suffix = Path(rel or path).suffix
        for d in _compare_file(ref[rel], cur[rel], suffix, ctx.rtol, ctx.atol):
            d.name = f"{rel}:{d.name}" if rel and d.name else rel or d.name
            diffs.append(d)
    return diffs


def _compare_file(ref: Path, cur: Path, suffix: str, rtol: float, atol: float) -> list[Diff]:
    compare = {".parquet": _compare_parquet, ".safetensors": _compare_safetensors}.get(suffix)
    compare = _compare_json if suffix == ".json" else compare
    if compare is None:
        return [Diff("", note="bytes differ")]
    try:
        return compare(ref, cur, rtol, atol)
    except Exception as err:  # an unreadable file is a finding of the report, not a crash
        return [Diff("", note=f"could not compare: {type(err).__name__}: {err}"[:200])]


def _numeric(name: str, ref, cur, rtol: float, atol: float) -> Diff | None:
    """Max abs/rel difference of two arrays (NaN == NaN, equal infinities equal); None if equal."""
    b, a = np.asarray(ref, dtype=np.float64).ravel(), np.asarray(cur, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return Diff(name, note=f"shape {np.shape(ref)} -> {np.shape(cur)}")
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if same.all():
        return None
    a, b = a[~same], b[~same]
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.nan_to_num(np.abs(a - b), nan=np.inf)  # NaN against a number: infinitely off
        rel = diff / np.abs(b)
    ok = bool(np.all(diff <= atol + rtol * np.abs(b)))
    return Diff(name, float(diff.max()), float(np.nan_to_num(rel, nan=np.inf).max()), ok)


def _key_diffs(ref: set[str], cur: set[str], what: str) -> list[Diff]:
    return [Diff(k, note=f"{what} removed") for k in sorted(ref - cur)] + [
        Diff(k, note=f"{what} added") for k in sorted(cur - ref)
    ]


def _compare_parquet(ref: Path, cur: Path, rtol: float, atol: float) -> list[Diff]:
    a, b = pl.read_parquet(ref), pl.read_parquet(cur)
    if set(a.columns) != set(b.columns):
        return _key_diffs(set(a.columns), set(b.columns), "column")
    if a.height != b.height:
        return [Diff("", note=f"{a.height} rows -> {b.height} rows")]
    diffs = []
    for col in a.columns:
        x, y = a[col], b[col]
        if x.dtype.is_numeric() and y.dtype.is_numeric():
            d = _numeric(col, *(s.cast(pl.Float64).to_numpy() for s in (x, y)), rtol, atol)
        elif x.dtype != y.dtype:
            d = Diff(col, note=f"dtype {x.dtype} -> {y.dtype}")
        else:
            n = int(x.ne_missing(y).sum())
            d = Diff(col, note=f"{n} of {a.height} cells differ") if n else None
        diffs += [d] if d else []
    return diffs


def _compare_safetensors(ref: Path, cur: Path, rtol: float, atol: float) -> list[Diff]:
    import torch  # not safetensors.numpy: it cannot read bfloat16
    from safetensors import safe_open

    with safe_open(str(ref), "pt") as f, safe_open(str(cur), "pt") as g:
        diffs = _key_diffs(set(f.keys()), set(g.keys()), "tensor")
        if f.metadata() != g.metadata():
            diffs.append(Diff("(metadata)", note="metadata differs"))
        for name in sorted(set(f.keys()) & set(g.keys())):
            x, y = (t.get_tensor(name).to(torch.float64).numpy() for t in (f, g))
            diffs += [d] if (d := _numeric(name, x, y, rtol, atol)) else []
    return diffs


def _leaves(obj, prefix: str = "") -> dict:
    """{'a.b[0]': leaf} for a JSON document; empty containers are leaves."""
    if isinstance(obj, dict) and obj:
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in obj.items()]
    elif isinstance(obj, list) and obj:
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(obj)]
    else:
        return {prefix: obj}
    return {key: leaf for k, v in items for key, leaf in _leaves(v, k).items()}


def _compare_json(ref: Path, cur: Path, rtol: float, atol: float) -> list[Diff]:
    a, b = _leaves(json.loads(ref.read_text())), _leaves(json.loads(cur.read_text()))
    diffs = _key_diffs(set(a), set(b), "key")
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y)):
            diffs += [d] if (d := _numeric(key, [x], [y], rtol, atol)) else []
        elif x != y:
            diffs.append(Diff(key, note=f"{x!r} -> {y!r}"[:80]))
    return diffs
