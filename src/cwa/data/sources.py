"""Calibration and evaluation text from any source, read into documents (a list of strings).

A source spec is one of:
  builtin:kjv                      the built-in corpus: its `calib` split for calibration, its
                                   `eval` split for evaluation (disjoint paragraphs)
  builtin:web                      the World English Bible (the corpus's `finetune` split), for
                                   fine-tuning only
  a .txt file                      documents separated by blank lines
  a .jsonl file                    one JSON object per line, the text in field `data_field`
  a .parquet or .csv file          the text in column `data_field`
  a directory                      every such file below it, in sorted path order
  hf:<name>[:<config>[:<split>]]   a Hugging Face `datasets` dataset, field `data_field`; <name>
                                   may be a directory written by `save_to_disk`

`cwa.data.windows` joins a role's documents with a blank line and cuts the token stream into
windows. When calibration and evaluation name the same (non-built-in) source, it is split into two
disjoint halves (`halves`): calibration text is never evaluation text. The fine-tuning text
(`finetune_data`) must be another source than both: fine-tuning on the text that ranks the
weights or measures forgetting would confound what the finetune stage compares.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cwa import CwaError
from cwa.config.params import check as params_check
from cwa.config.params import fail

BUILTIN = "builtin:"
HF = "hf:"
SUFFIXES = (".txt", ".jsonl", ".parquet", ".csv")
ROLES = ("calib_data", "eval_data", "finetune_data")
# (built-in source, key) -> the corpus split that key reads (cwa.data.corpus)
BUILTIN_SPLITS = {
    ("builtin:kjv", "calib_data"): "calib",
    ("builtin:kjv", "eval_data"): "eval",
    ("builtin:web", "finetune_data"): "finetune",
}


@dataclass(frozen=True)
class Source:
    """One role's text and where it came from (the record goes into manifests and the report)."""

    key: str  # calib_data | eval_data
    spec: str
    kind: str  # builtin | file | directory | hf
    documents: list[str]
    sha256: str  # a file's bytes; a directory's paths and bytes; builtin/hf: the joined text
    bytes: int  # size of what was read
    part: str  # which part of the source this role uses

    def record(self) -> dict:
        return {
            "key": self.key,
            "spec": self.spec,
            "kind": self.kind,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "documents": len(self.documents),
            "characters": sum(len(d) for d in self.documents),
            "part": self.part,
        }


def kind_of(spec: str) -> str:
    if spec.startswith(BUILTIN):
        return "builtin"
    if spec.startswith(HF):
        return "hf"
    return "directory" if Path(spec).expanduser().is_dir() else "file"


@params_check
def _check_specs(p) -> None:
    """What can be told without reading: a built-in name, an hf: name, a path that exists."""
    if not p.data_field:
        fail("data_field", "is empty: name the JSONL field or the column that holds the text")
    for key in ROLES:
        spec = getattr(p, key)
        kind = kind_of(spec)
        if kind == "builtin" and (spec, key) not in BUILTIN_SPLITS:
            valid = ", ".join(s for s, k in BUILTIN_SPLITS if k == key)
            fail(key, f"is {spec!r}; valid built-in sources for it: {valid}")
        elif kind == "hf" and not spec.removeprefix(HF).split(":")[0]:
            fail(key, f"is {spec!r}: write hf:<name>[:<config>[:<split>]]")
        elif kind in ("file", "directory"):
            _check_path(key, Path(spec).expanduser())
    for other in ("calib_data", "eval_data"):
        if p.finetune_data == getattr(p, other):
            fail(
                "finetune_data",
                f"is {other} ({p.finetune_data!r}): fine-tuning needs a text of its own, or the "
                f"forgetting and the ranking are measured on what it trained on",
            )


def _check_path(key: str, path: Path) -> None:
    if not path.exists():
        fail(
            key,
            f"is {str(path)!r}, which does not exist: give a .txt, .jsonl, .parquet or .csv "
            f"file, a directory of them, hf:<dataset> or a built-in source",
        )
    if path.is_file() and path.suffix not in SUFFIXES:
        fail(key, f"is {str(path)!r}: a {path.suffix or 'suffix-less'} file; valid: {SUFFIXES}")


def read_sources(calib: str, evaluation: str, field: str, corpus) -> tuple[Source, Source]:
    """Both roles' text; one source named twice is read once and split into disjoint halves."""
    if calib == evaluation and kind_of(calib) != "builtin":
        whole = read_source("calib_data", calib, field, corpus)
        first, second = halves(whole.documents)
        cut = sum(map(len, first))
        return (
            _part(whole, "calib_data", first, f"first half of the shared source (to char {cut})"),
            _part(
                whole, "eval_data", second, f"second half of the shared source (from char {cut})"
            ),
        )
    return read_source("calib_data", calib, field, corpus), read_source(
        "eval_data", evaluation, field, corpus
    )


def user_sources(calib: str, evaluation: str, finetune: str, field: str) -> list[Source]:
    """The roles whose text is not built in, read and split as the sources stage reads them
    (`cwa run` checks them before DVC starts)."""
    own = kind_of(finetune) != "builtin"
    tuning = [read_source("finetune_data", finetune, field, None)] if own else []
    if calib == evaluation and kind_of(calib) != "builtin":
        return [*read_sources(calib, evaluation, field, None), *tuning]
    roles = (("calib_data", calib), ("eval_data", evaluation))
    return [read_source(k, s, field, None) for k, s in roles if kind_of(s) != "builtin"] + tuning


def _part(whole: Source, key: str, documents: list[str], part: str) -> Source:
    return Source(key, whole.spec, whole.kind, documents, whole.sha256, whole.bytes, part)


def halves(documents: list[str]) -> tuple[list[str], list[str]]:
    """Cuts the documents at the whitespace nearest the middle character: two disjoint parts of
    about equal size (whole documents on each side, the middle one cut in two)."""
    middle = sum(len(d) for d in documents) / 2
    before = 0
    for i, doc in enumerate(documents):
        if before + len(doc) >= middle:
            cut = _space_near(doc, round(middle - before))
            head, tail = doc[:cut].rstrip(), doc[cut:].lstrip()
            return documents[:i] + [head] * bool(head), [tail] * bool(tail) + documents[i + 1 :]
        before += len(doc)
    return documents, []


def _space_near(text: str, at: int) -> int:
    spaces = [m.start() for m in re.finditer(r"\s", text)]
    return min(spaces, key=lambda s: (abs(s - at), s)) if spaces else at


def read_source(key: str, spec: str, field: str, corpus) -> Source:
    kind = kind_of(spec)
    if kind in ("builtin", "hf"):  # no file of their own: the hash is the joined text's
        builtin = kind == "builtin"
        split = BUILTIN_SPLITS.get((spec, key))
        documents = _read_builtin(corpus, split) if builtin else _read_hf(key, spec, field)
        text = "\n\n".join(documents).encode()
        part = f"{split} split" if builtin else "whole"
        sha, size = hashlib.sha256(text).hexdigest(), len(text)
    else:
        path = Path(spec).expanduser()
        _check_path(key, path)
        files = _files(key, path)
        documents = [doc for f in files for doc in _read_file(key, f, field)]
        sha, size, part = _hash_files(path, files), sum(f.stat().st_size for f in files), "whole"
    if not any(d.strip() for d in documents):
        raise CwaError(f"`{key}` {spec} holds no text")
    return Source(key, spec, kind, documents, sha, size, part)


def _read_builtin(corpus, split: str) -> list[str]:
    import polars as pl

    from cwa.data.corpus import texts

    return texts(pl.read_parquet(corpus), split)


def _files(key: str, path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not found:
        raise CwaError(f"`{key}` directory {path} holds no {', '.join(SUFFIXES)} file")
    return found


def _hash_files(root: Path, files: list[Path]) -> str:
    """A file's SHA-256; for a directory, over each file's relative path and bytes."""
    if root.is_file():
        return hashlib.sha256(root.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _read_file(key: str, path: Path, field: str) -> list[str]:
    if path.suffix == ".parquet":
        return _read_parquet(key, path, field)
    text = _decode(key, path)
    if path.suffix == ".txt":
        return [d.strip() for d in re.split(r"\n[ \t\r\f\v]*\n", text) if d.strip()]
    if path.suffix == ".jsonl":
        return _read_jsonl(key, path, text, field)
    rows = csv.DictReader(io.StringIO(text))
    return [_field(key, path, row, field, f"row {i + 2}") for i, row in enumerate(rows)]


def _decode(key: str, path: Path) -> str:
    raw = path.read_bytes()
    try:
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL")
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CwaError(
            f"`{key}` file {path} is not UTF-8 text (byte {err.start} is binary): give a "
            f".txt, .jsonl or .csv in UTF-8, or a .parquet"
        ) from None


def _read_jsonl(key: str, path: Path, text: str, field: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CwaError(f"`{key}` file {path}: line {number} is not JSON ({err.msg})") from None
        documents.append(_field(key, path, row, field, f"line {number}"))
    return documents


def _field(key: str, path: Path, row, field: str, where: str) -> str:
    if not isinstance(row, dict) or field not in row:
        present = ", ".join(map(str, row)) if isinstance(row, dict) else "none (not an object)"
        raise CwaError(
            f"`{key}` file {path}: {where} has no field {field!r} (set `data_field`); fields "
            f"present: {present}"
        )
    value = row[field]
    if not isinstance(value, str):
        raise CwaError(f"`{key}` file {path}: {where} field {field!r} is not text: {value!r:.60}")
    return value


def _read_parquet(key: str, path: Path, field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise CwaError(f"`{key}` file {path} is not a readable Parquet file ({err})") from None
    if field not in table.column_names:
        raise CwaError(
            f"`{key}` file {path} has no column {field!r} (set `data_field`); columns: "
            f"{', '.join(table.column_names)}"
        )
    column = table.column(field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise CwaError(f"`{key}` file {path}: column {field!r} is {column.type}, not text")
    return [v for v in column.to_pylist() if v is not None]


def parse_hf(spec: str) -> tuple[str, str | None, str | None]:
    """hf:<name>[:<config>[:<split>]] -> (name, config, split); empty parts are None."""
    parts = spec.removeprefix(HF).split(":")
    name, config, split = [*parts, None, None][:3]
    return name, config or None, split or None


def _read_hf(key: str, spec: str, field: str) -> list[str]:
    name, config, split = parse_hf(spec)
    data = _load_hf(key, spec, name, config, split)
    if hasattr(data, "keys"):  # a DatasetDict: one split must be chosen
        splits = list(data.keys())
        if split is None and len(splits) != 1:
            raise CwaError(
                f"`{key}` {spec} has splits {', '.join(splits)}: name one, e.g. "
                f"hf:{name}:{config or ''}:{splits[0]}"
            )
        chosen = split or splits[0]
        if chosen not in splits:
            raise CwaError(f"`{key}` {spec} has no split {chosen!r}; splits: {', '.join(splits)}")
        data = data[chosen]
    if field not in data.column_names:
        raise CwaError(
            f"`{key}` {spec} has no column {field!r} (set `data_field`); columns: "
            f"{', '.join(data.column_names)}"
        )
    return [v for v in data[field] if v is not None]


def _load_hf(key: str, spec: str, name: str, config: str | None, split: str | None):
    """load_from_disk for a `save_to_disk` directory, else datasets.load_dataset (the hub or its
    cache; HF_DATASETS_OFFLINE=1 keeps it off the network)."""
    import datasets
    import huggingface_hub

    datasets.logging.set_verbosity_error()  # our one line says what failed, not their retries
    huggingface_hub.logging.set_verbosity_error()
    saved = Path(name).expanduser()
    try:
        if (saved / "dataset_info.json").exists() or (saved / "dataset_dict.json").exists():
            return datasets.load_from_disk(str(saved))
        return datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many kinds: offline, unknown, bad config
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CwaError(
            f"`{key}` {spec} could not be loaded ({reason}): a hub dataset needs the hub or a "
            f'local copy; on a machine with internet run `python -c "import datasets; '
            f"datasets.load_dataset('{name}'{f', {config!r}' if config else ''})"
            f".save_to_disk('DIR')\"` and give hf:DIR{f'::{split}' if split else ''}"
        ) from None
