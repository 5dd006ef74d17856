"""The `tasks` table, and the task-result columns every table of task results shares."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema
from cwa.schemas.experiment import EXPERIMENT, EXPERIMENT_ORDER

TASK_RESULT = (
    Column("task", STR, "task name (built-in name or the JSONL path given)"),
    Column(
        "kind",
        STR,
        "`last_word` (LAMBADA-style), `choice` (HellaSwag-style) or `lm_eval` (a "
        "harness task, named `lm_eval:<task>`, scored by lm-eval's own acc / acc_norm)",
    ),
    Column("items", INT, "items scored"),
    Column(
        "accuracy",
        FLOAT,
        "last_word: every target token greedy; choice: argmax of summed log-likelihood",
    ),
    Column("acc_norm", FLOAT, "choice: argmax of log-likelihood / characters (else NaN)"),
    Column("target_ppl", FLOAT, "last_word: exp(target NLL / target tokens) (else NaN)"),
    Column("delta_accuracy", FLOAT, "accuracy − the unperturbed model's"),
    Column("ci_low", FLOAT, "2.5% paired-bootstrap quantile of delta_accuracy (items)"),
    Column("ci_high", FLOAT, "97.5% quantile of delta_accuracy"),
    Column("delta_acc_norm", FLOAT, "acc_norm − the unperturbed model's"),
    Column("delta_target_ppl", FLOAT, "target_ppl − the unperturbed model's"),
)

TASKS_TABLE = Schema(
    "tasks",
    "artifacts/perturb/tasks.parquet",
    "Downstream tasks (docs/params.md `tasks`) on the unperturbed model (perturbation `none`) "
    "and under every experiment at headline_k (first strength, whole selections).",
    (
        Column("metric", STR, "sensitivity metric the selection came from"),
        Column("mode", STR, "ranking mode"),
        Column("seed", INT, "calibration seed of the ranking"),
        *EXPERIMENT,
        *TASK_RESULT,
    ),
    (*EXPERIMENT_ORDER, "task"),
)
