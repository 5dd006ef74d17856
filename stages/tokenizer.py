"""tokenizer: a byte-level BPE tokenizer for the built-in models, trained on the train split.

Reads: the corpus table. Writes: a tokenizer directory loadable with AutoTokenizer.
"""

import polars as pl

from cwa.data.corpus import texts
from cwa.data.tokenizer import save_tokenizer, train_tokenizer
from cwa.pipeline.stage import stage_main

# What this stage reads: its `params:` in dvc.yaml (tests/test_docs.py keeps them equal).
PARAMS = ("vocab_size",)


def add_args(p):
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)


def run(args, params):
    tokenizer = train_tokenizer(texts(pl.read_parquet(args.corpus), "train"), params.vocab_size)
    save_tokenizer(tokenizer, args.out)
    return {"vocab_size": len(tokenizer)}


if __name__ == "__main__":
    stage_main(__doc__, add_args, run, PARAMS)
