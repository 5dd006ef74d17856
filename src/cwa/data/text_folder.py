"""A role's text folder, as the `sources` stage writes it and the stages that tokenize read it:
the documents table and the record of their source. Free of torch, so the `sources` stage
starts in a fraction of a second."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

DOCUMENTS, SOURCE = "documents.parquet", "source.json"


@dataclass(frozen=True)
class Text:
    """One role's documents and the record of their source (see cwa.data.sources)."""

    documents: list[str]
    source: dict


def read_text(directory: str | Path) -> Text:
    directory = Path(directory)
    documents = pl.read_parquet(directory / DOCUMENTS).sort("doc")["text"].to_list()
    return Text(documents, json.loads((directory / SOURCE).read_text()))
