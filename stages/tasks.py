"""tasks: built-in downstream task files from held-out corpus text.

kjv_lambada (LAMBADA-style last word) and kjv_hellaswag (HellaSwag-style 4-way choice), 500 items
each, from passages of the eval split (sentence ends within a paragraph, at most 60 words).
Reads: the corpus table. Writes: <out>/kjv_lambada.jsonl and <out>/kjv_hellaswag.jsonl.
"""

from pathlib import Path

import polars as pl

from cwa.core.io import atomic_write
from cwa.data.corpus import texts
from cwa.data.task_files import build_choice, build_last_word, jsonl
from cwa.pipeline.paths import CORPUS, TASK_DIR
from cwa.pipeline.stage import Stage, stage_main

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = ()

ITEMS, SEED = 500, 0


STAGE = Stage(
    "tasks",
    PARAMS,
    does=(
        "built-in downstream task files from held-out passages: `kjv_lambada` (LAMBADA-style last "
        "word) and `kjv_hellaswag` (HellaSwag-style 4-way choice), 500 items each"
    ),
    reads={
        "corpus": CORPUS,
    },
    writes={
        "out": TASK_DIR,
    },
)


def run(args, params):
    held_out = texts(pl.read_parquet(args.corpus), "eval")
    files = {
        "kjv_lambada.jsonl": build_last_word(held_out, ITEMS, SEED),
        "kjv_hellaswag.jsonl": build_choice(held_out, ITEMS, SEED),
    }

    def write(tmp: Path):
        tmp.mkdir()
        for name, items in files.items():
            (tmp / name).write_text(jsonl(items))

    atomic_write(args.out, write)
    return {"items": {name: len(items) for name, items in files.items()}}


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
