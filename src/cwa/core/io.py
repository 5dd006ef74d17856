"""Atomic, deterministic artifact writes: a killed stage never leaves a half-written file."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl

from cwa.schemas import Schema


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Calls `write(tmp)` on a temporary sibling of `path` (file or directory), then renames it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.[to][ml][pd]-*"):  # left by a killed writer
        _remove(stale)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        write(tmp)
        if tmp.is_dir() and path.is_dir():  # a directory cannot replace a non-empty one
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        _remove(tmp)
        _remove(old)
    return path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_table(df: pl.DataFrame, path: str | Path, schema: Schema) -> Path:
    """Writes `df` as Parquet with `schema`: columns cast, ordered and rows sorted.

    The same content always gives the same bytes, so DVC sees unchanged outputs as unchanged.
    """
    names = [c.name for c in schema.columns]
    missing = sorted(set(names) - set(df.columns))
    extra = sorted(set(df.columns) - set(names))
    if missing or extra:
        raise ValueError(
            f"table {schema.name!r}: missing columns {missing}, unexpected columns {extra}"
        )
    df = df.select([pl.col(c.name).cast(c.dtype) for c in schema.columns])
    if schema.sort_by:
        df = df.sort(list(schema.sort_by), maintain_order=True)
    return atomic_write(path, lambda tmp: df.write_parquet(tmp, compression="zstd"))


def _json_safe(obj):
    """Replaces inf/NaN (invalid JSON) with None, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(obj, path: str | Path) -> Path:
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(df: pl.DataFrame, path: str | Path) -> Path:
    """Small CSV side files for `dvc plots` (DVC cannot read Parquet)."""
    return atomic_write(path, lambda tmp: df.write_csv(tmp, float_precision=6))
