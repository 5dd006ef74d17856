"""scaling: the cross-model analysis (the study) of every member of `models` (cwa.analysis.study).

Reads: each member's tables (member stage), for exactly the labels in `models` (a removed
member's directory left in the workspace is not read).
Writes: the members with their tags (schema `study_members`), the same as a tidy table
(`study_measures`), the scaling fits (`scaling_fit`), the component and depth shares
(`study_shares`), the architecture comparison (`study_groups`), the experts of mixture-of-
experts members (`study_experts`), the checkpoint drift (`study_drift`) and a CSV for
`dvc plots`.
"""

from pathlib import Path

import polars as pl

from cwa.analysis.study import FIT_STATISTICS, drift, fits, group_tests, measures, with_tags
from cwa.core.io import write_csv, write_table
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.scaling_fit import SCALING_FIT_TABLE
from cwa.schemas.study_drift import STUDY_DRIFT_TABLE
from cwa.schemas.study_experts import STUDY_EXPERTS_TABLE
from cwa.schemas.study_groups import STUDY_GROUPS_TABLE
from cwa.schemas.study_measures import STUDY_MEASURES_TABLE
from cwa.schemas.study_members import STUDY_MEMBERS_TABLE
from cwa.schemas.study_shares import STUDY_SHARES_TABLE

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = ("models", "train_steps", "topk", "bootstrap")

OUTPUTS = ("members", "measures", "fit", "shares", "groups", "experts", "drift")


STAGE = Stage(
    "scaling",
    PARAMS,
    does=(
        "the study across models: members with tags, a tidy measures table, power-law fits "
        "against parameter count with leave-one-out error and a two-segment (threshold) fit, "
        "dense vs MoE (and base vs instruct) component shares with permutation tests, experts, "
        "and checkpoint drift (Jaccard and Spearman step to step and with the last)"
    ),
    reads={
        "members_dir": "artifacts/study/members",
    },
    writes={
        "members": "artifacts/study/members.parquet",
        "measures": "artifacts/study/measures.parquet",
        "fit": "artifacts/study/fit.parquet",
        "shares": "artifacts/study/shares.parquet",
        "groups": "artifacts/study/groups.parquet",
        "experts": "artifacts/study/experts.parquet",
        "drift": "artifacts/study/drift.parquet",
    },
    records={
        "csv": "artifacts/study/scaling.csv",
    },
    manifest="artifacts/study/manifest.json",
)


def run(args, params):
    tables = {
        name: pl.concat(
            [
                pl.read_parquet(Path(args.members_dir) / label / f"{name}.parquet")
                for label in params.models
            ],
            how="vertical_relaxed",
        )
        for name in ("member", "shares", "experts", "top", "sample")
    }
    members = with_tags(tables["member"], params.models, params.train_steps)
    written = {
        "members": (members, STUDY_MEMBERS_TABLE),
        "measures": (measures(members, tables["shares"]), STUDY_MEASURES_TABLE),
        "fit": (fits(members), SCALING_FIT_TABLE),
        "shares": (tables["shares"], STUDY_SHARES_TABLE),
        "groups": (group_tests(members, tables["shares"], params.bootstrap), STUDY_GROUPS_TABLE),
        "experts": (tables["experts"], STUDY_EXPERTS_TABLE),
        "drift": (
            drift(members, tables["top"], tables["sample"], params.topk),
            STUDY_DRIFT_TABLE,
        ),
    }
    for name, (table, schema) in written.items():
        write_table(table, getattr(args, name), schema)
    points = members.filter(pl.col("final") == "yes").sort("params", "label")
    write_csv(points.select("label", "kind", "params", *FIT_STATISTICS), args.csv)
    fit = written["fit"][0].row(0, named=True)
    return {"members": len(members), "exponent": fit["slope"], "r2": fit["r2"]}


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
