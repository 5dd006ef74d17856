"""The `prune_tasks` table."""

from cwa.schemas import FLOAT, STR, Column, Schema
from cwa.schemas.tasks import TASK_RESULT

PRUNE_TASKS_TABLE = Schema(
    "prune_tasks",
    "artifacts/prune/tasks.parquet",
    "Downstream tasks (`tasks`) on the dense model (method `dense`) and on every method's "
    "pruned model at the unstructured, uniform target of `sparsities` nearest 0.5; the deltas "
    "and their paired CIs over items are against the dense model.",
    (
        Column("method", STR, "pruning method, or `dense`"),
        Column("target", FLOAT, "fraction of every group pruned (0 for dense)"),
        Column("pattern", STR, "`unstructured` (`dense` for the dense model)"),
        Column("allocation", STR, "`uniform` (`dense` for the dense model)"),
        *TASK_RESULT,
    ),
    ("target", "method", "task"),
)
