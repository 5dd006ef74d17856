"""train: trains one built-in model of the family on the train split.

Reads: the corpus table and the tokenizer.
Writes: a save_pretrained model directory (with its tokenizer) holding the checkpoints of
train_checkpoints as model directories `checkpoints/step-<n>`, and the training curve (schema
`train_log`).
"""

import math
import shutil
import tempfile
from pathlib import Path

import polars as pl
import torch
from transformers import AutoTokenizer

from cwa import CwaError
from cwa.core.io import atomic_write, write_table
from cwa.data.corpus import texts
from cwa.data.tokenizer import save_tokenizer
from cwa.data.windows import windows
from cwa.models.loading import count_parameters
from cwa.models.memory import guard_training
from cwa.models.training import build_model, final_loss, train
from cwa.pipeline.paths import CORPUS, TOKENIZER
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.train_log import TRAIN_LOG_TABLE

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = (
    "family",
    "train_steps",
    "train_batch",
    "train_seq_len",
    "train_lr",
    "train_seed",
    "train_checkpoints",
)


STAGE = Stage(
    "train",
    PARAMS,
    does=(
        "trains each built-in model (one DVC stage per family member: Llama, or a Mixtral-style "
        "mixture of experts), saving the steps of `train_checkpoints` as checkpoints (checkpoints "
        "in `models/<name>/checkpoints/step-<n>/`)"
    ),
    reads={
        "corpus": CORPUS,
        "tokenizer": TOKENIZER,
    },
    writes={
        "out": "artifacts/models/${key}",
        "log": "artifacts/train/${key}.parquet",
    },
    manifest="artifacts/train/${key}.manifest.json",
    foreach="family",
    key_flag="name",
)


def run(args, params):
    if args.name not in params.family:
        raise CwaError(
            f"--name {args.name!r} is not in params `family`: {', '.join(params.family)}"
        )
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    stream = windows(tokenizer, texts(pl.read_parquet(args.corpus), "train"), 1).view(-1)
    model = build_model(
        params.family[args.name], len(tokenizer), params.train_seq_len, params.train_seed
    )
    memory = guard_training(model, params.train_batch, params.train_seq_len)
    # checkpoints wait outside the models directory, which other stages hash as a whole
    staging = Path(tempfile.mkdtemp(prefix=f"cwa-{args.name}-checkpoints-"))

    def save_checkpoint(step: int):
        model.save_pretrained(staging / f"step-{step}")
        save_tokenizer(tokenizer, staging / f"step-{step}")

    try:
        log = train(
            model,
            stream,
            params.train_steps,
            params.train_batch,
            params.train_seq_len,
            params.train_lr,
            params.train_seed,
            desc=f"train {args.name}",
            checkpoints=params.train_checkpoints,
            save=save_checkpoint,
        )
        final = final_loss(log, len(tokenizer), args.name)  # before saving: a useless model is not

        def save(tmp):
            model.save_pretrained(tmp)
            save_tokenizer(tokenizer, tmp)
            shutil.move(staging, tmp / "checkpoints")

        atomic_write(args.out, save)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_table(pl.DataFrame(log).with_columns(model=pl.lit(args.name)), args.log, TRAIN_LOG_TABLE)
    return {
        "params": count_parameters(model),
        "tokens_seen": params.train_steps * params.train_batch * params.train_seq_len,
        "final_loss": final,
        "final_train_ppl": math.exp(final),
        "threads": torch.get_num_threads(),
        "memory": memory,
    }


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
