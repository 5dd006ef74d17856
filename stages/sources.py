"""sources: the calibration, evaluation and fine-tuning text, read from `calib_data`,
`eval_data` and `finetune_data`.

Reads: the corpus table (for builtin:kjv), or the files or dataset the params name.
Writes, per role, a directory holding the documents (schema `documents`) and `source.json` (the
spec, kind, SHA-256, bytes, documents, characters and the part used). DVC cannot depend on a file
that a param names, so this stage always runs (`always_changed`): text that did not change
writes the same bytes and reruns nothing downstream; an edited file reruns what reads it.
"""

import polars as pl

from cwa.core.io import atomic_write, write_json, write_table
from cwa.data.sources import Source, read_source, read_sources
from cwa.data.text_folder import DOCUMENTS, SOURCE
from cwa.pipeline.paths import CALIB_TEXT, CORPUS, EVAL_TEXT, FINETUNE_TEXT
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.documents import DOCUMENTS_TABLE

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = ("calib_data", "eval_data", "finetune_data", "data_field")


STAGE = Stage(
    "sources",
    PARAMS,
    does=(
        "reads the calibration, evaluation and fine-tuning text `calib_data`, `eval_data` and "
        "`finetune_data` name (always runs; unchanged text reruns nothing) (each folder: the "
        "documents and `source.json`)"
    ),
    reads={
        "corpus": CORPUS,
    },
    writes={
        "calibration": CALIB_TEXT,
        "evaluation": EVAL_TEXT,
        "finetune": FINETUNE_TEXT,
    },
    manifest="artifacts/data/manifest.json",
    always_changed=True,
)


def write_text(source: Source, directory) -> None:
    def write(tmp):
        tmp.mkdir()
        docs = pl.DataFrame({"doc": range(len(source.documents)), "text": source.documents})
        write_table(docs, tmp / DOCUMENTS, DOCUMENTS_TABLE)
        write_json(source.record(), tmp / SOURCE)

    atomic_write(directory, write)


def run(args, params):
    calibration, evaluation = read_sources(
        params.calib_data, params.eval_data, params.data_field, args.corpus
    )
    write_text(calibration, args.calibration)
    write_text(evaluation, args.evaluation)
    tuning = read_source("finetune_data", params.finetune_data, params.data_field, args.corpus)
    write_text(tuning, args.finetune)
    return {
        "calibration": calibration.record(),
        "evaluation": evaluation.record(),
        "finetune": tuning.record(),
    }


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
