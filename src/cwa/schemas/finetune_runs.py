"""The `finetune_runs` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

FINETUNE_RUNS_TABLE = Schema(
    "finetune_runs",
    "artifacts/finetune/runs.parquet",
    "One row per fine-tuning seed and arm (cwa.experiments.finetuning): which weights could "
    "change, what "
    "the run gained on the held-out windows of `finetune_data` and what it lost on the "
    "evaluation windows of `eval_data`.",
    (
        Column("seed", INT, "fine-tuning seed (window order and random set)"),
        Column(
            "arm",
            STR,
            "`full`, `freeze_top`, `freeze_random`, `only_top` or `only_random`: which pool "
            "weights may change",
        ),
        Column("k", INT, "size of the top set and of the random set (`finetune_k`)"),
        Column("trainable", INT, "pool weights the arm lets change"),
        Column("changed", INT, "pool weights whose bits changed (frozen ones never do: checked)"),
        Column("steps", INT, "optimizer steps"),
        Column("train_loss", FLOAT, "mean training loss of the last 5 steps"),
        Column("new_ppl_before", FLOAT, "PPL on the held-out fine-tuning windows, before"),
        Column("new_ppl", FLOAT, "PPL on the held-out fine-tuning windows, after"),
        Column("gain", FLOAT, "new_ppl_before − new_ppl: what fine-tuning learned"),
        Column("gain_rel", FLOAT, "gain / new_ppl_before"),
        Column("eval_ppl_before", FLOAT, "PPL on the evaluation windows, before (baseline)"),
        Column("eval_ppl", FLOAT, "PPL on the evaluation windows, after"),
        Column("forgetting", FLOAT, "eval_ppl − eval_ppl_before: what fine-tuning forgot"),
        Column("forgetting_rel", FLOAT, "forgetting / eval_ppl_before"),
    ),
    ("seed", "arm"),
)
