"""The `study_groups` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

STUDY_GROUPS_TABLE = Schema(
    "study_groups",
    "artifacts/study/groups.parquet",
    "Architecture comparison over the final members: for each tag (`kind`, `tuning`) with two "
    "groups, each part's (component class, third of the depth) mean top-k and score share per "
    "group and a permutation test of the difference.",
    (
        Column("tag", STR, "`kind` or `tuning`"),
        Column("share", STR, "`topk_share` or `score_share`"),
        Column(
            "part",
            STR,
            "component class, or a third of the normalised depth: `depth:early` (< 1/3), "
            "`depth:middle` (< 2/3), `depth:late`; a member without the part counts 0",
        ),
        Column("group_a", STR, "first group (alphabetical)"),
        Column("group_b", STR, "second group"),
        Column("members_a", INT, "members in group_a"),
        Column("members_b", INT, "members in group_b"),
        Column("mean_a", FLOAT, "mean share in group_a"),
        Column("mean_b", FLOAT, "mean share in group_b"),
        Column("difference", FLOAT, "mean_a − mean_b"),
        Column(
            "p_value",
            FLOAT,
            "permutation test of the difference of means over every split of the members into "
            "groups of these sizes (exact up to `bootstrap` splits, random beyond); two-sided: "
            "twice the smaller one-sided p; null when a group has fewer than 2 members",
        ),
        Column("note", STR, "why there is no test, or empty"),
    ),
    ("tag", "share", "part"),
)
