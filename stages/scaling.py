"""scaling: how concentration and damage change with model size across the built-in family.

Reads: one row per model from scale_model. Writes: the combined table (schema
`scaling_model`), power-law fits of each statistic against parameter count (schema
`scaling_fit`) and a CSV for `dvc plots`.
"""

from pathlib import Path

import polars as pl

from cwa.io import write_csv, write_table
from cwa.schemas.scaling_fit import SCALING_FIT_TABLE
from cwa.schemas.scaling_model import SCALING_MODEL_TABLE
from cwa.stage import stage_main
from cwa.stats import SCALING_STATISTICS, fit_power_law

# What this stage reads: its `params:` in dvc.yaml (tests/test_docs.py keeps them equal).
PARAMS = ()


def add_args(p):
    p.add_argument("--rows", required=True, help="directory of scale_model outputs")
    p.add_argument("--out", required=True)
    p.add_argument("--fit", required=True)
    p.add_argument("--csv", required=True)


def run(args, params):
    table = pl.concat([pl.read_parquet(p) for p in sorted(Path(args.rows).glob("*.parquet"))])
    table = table.sort("params", "model")
    fits = []
    for stat in SCALING_STATISTICS:
        fit = fit_power_law(table["params"].to_numpy(), table[stat].to_numpy())
        fits.append(
            {
                "statistic": stat,
                "slope": fit.slope,
                "intercept": fit.intercept,
                "r2": fit.r2,
                "slope_ci_low": fit.slope_ci[0],
                "slope_ci_high": fit.slope_ci[1],
                "models": len(table),
            }
        )
    write_table(table, args.out, SCALING_MODEL_TABLE)
    write_table(pl.DataFrame(fits), args.fit, SCALING_FIT_TABLE)
    write_csv(table.select("model", "params", *SCALING_STATISTICS), args.csv)
    return {"fits": {f["statistic"]: f["slope"] for f in fits}}


if __name__ == "__main__":
    stage_main(__doc__, add_args, run, PARAMS)
