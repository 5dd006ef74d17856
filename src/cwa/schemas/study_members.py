"""The `study_members` table."""

from cwa.schemas import INT, STR, Column, Schema
from cwa.schemas.study_member import MEMBER_COLUMNS

STUDY_MEMBERS_TABLE = Schema(
    "study_members",
    "artifacts/study/members.parquet",
    "Every study member's row (schema `study_member`) with its tags resolved.",
    (
        *MEMBER_COLUMNS[:3],
        Column("family", STR, "`family` tag (free text; empty if untagged)"),
        Column("kind", STR, "dense | moe: the tag, else read from the model"),
        Column("tuning", STR, "base | instruct"),
        Column(
            "step",
            INT,
            "training step: the tag, else a built-in checkpoint's step or train_steps for a "
            "built-in final model; null for other untagged models",
        ),
        Column(
            "final",
            STR,
            "`yes` when the member is its model's last step (no revision, or the largest step "
            "among the members of that model): the scaling fits and group comparisons use these",
        ),
        *MEMBER_COLUMNS[3:],
    ),
    ("params", "step", "label"),
)
