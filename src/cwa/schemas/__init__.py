"""Parquet table schemas: column, type, meaning and row order, one module per table.

A stage imports the schemas of the tables it writes, so rewording one table's column changes only
that stage's code dependencies. `python -m cwa.schemas` prints docs/artifacts.md from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    doc: str


@dataclass(frozen=True)
class Schema:
    name: str
    path: str
    doc: str
    columns: tuple[Column, ...]
    sort_by: tuple[str, ...] = ()


STR, INT, FLOAT, BOOL = pl.String(), pl.Int64(), pl.Float64(), pl.Boolean()
