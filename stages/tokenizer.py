"""tokenizer: a byte-level BPE tokenizer for the built-in models, trained on the train split.

Reads: the corpus table. Writes: a tokenizer directory loadable with AutoTokenizer.
"""

import polars as pl

from cwa.data.corpus import texts
from cwa.data.tokenizer import save_tokenizer, train_tokenizer
from cwa.pipeline.paths import CORPUS, TOKENIZER
from cwa.pipeline.stage import Stage, stage_main

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = ("vocab_size",)


STAGE = Stage(
    "tokenizer",
    PARAMS,
    does=("byte-level BPE, 2,048 tokens, trained on the train split"),
    reads={
        "corpus": CORPUS,
    },
    writes={
        "out": TOKENIZER,
    },
)


def run(args, params):
    tokenizer = train_tokenizer(texts(pl.read_parquet(args.corpus), "train"), params.vocab_size)
    save_tokenizer(tokenizer, args.out)
    return {"vocab_size": len(tokenizer)}


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
