"""scaling: how concentration and damage change with model size across the built-in family.

Reads: one row per model from scale_model, and its component and depth shares. Writes: the
combined tables (schemas `scaling_model`, `scaling_shares`), per statistic a power-law fit
against parameter count with its leave-one-out prediction error and a two-segment fit (schema
`scaling_fit`), and a CSV for `dvc plots`.
"""

from pathlib import Path

import numpy as np
import polars as pl

from cwa.io import write_csv, write_table
from cwa.schemas.scaling_fit import SCALING_FIT_TABLE
from cwa.schemas.scaling_model import SCALING_MODEL_TABLE
from cwa.schemas.scaling_shares import SCALING_SHARES_TABLE
from cwa.stage import stage_main
from cwa.stats import (
    MIN_BREAKPOINT_POINTS,
    SCALING_STATISTICS,
    fit_power_law,
    leave_one_out,
    loglog,
    two_segment_fit,
)

# What this stage reads: its `params:` in dvc.yaml (tests/test_docs.py keeps them equal).
PARAMS = ()


def add_args(p):
    p.add_argument("--rows", required=True, help="directory of scale_model rows")
    p.add_argument("--shares", required=True, help="directory of scale_model shares")
    p.add_argument("--shares-out", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fit", required=True)
    p.add_argument("--csv", required=True)


def run(args, params):
    table = pl.concat([pl.read_parquet(p) for p in sorted(Path(args.rows).glob("*.parquet"))])
    table = table.sort("params", "model")
    fits = [
        scaling_fit(stat, table["params"].to_numpy(), table[stat].to_numpy())
        for stat in SCALING_STATISTICS
    ]
    shares = pl.concat([pl.read_parquet(p) for p in sorted(Path(args.shares).glob("*.parquet"))])
    write_table(shares, args.shares_out, SCALING_SHARES_TABLE)
    write_table(table, args.out, SCALING_MODEL_TABLE)
    write_table(pl.DataFrame(fits), args.fit, SCALING_FIT_TABLE)
    write_csv(table.select("model", "params", *SCALING_STATISTICS), args.csv)
    return {"fits": {f["statistic"]: f["slope"] for f in fits}}


def scaling_fit(stat: str, x: np.ndarray, y: np.ndarray) -> dict:
    """One row of the fit table: power law, leave-one-out error, two-segment fit, and a note
    where there are too few points for a number."""
    fit, errors, hinge = fit_power_law(x, y), leave_one_out(x, y), two_segment_fit(x, y)
    usable = len(loglog(x, y)[2])
    missing = []
    if usable < 3:
        missing.append("leave-one-out needs 3 models")
    if usable < MIN_BREAKPOINT_POINTS:
        missing.append(f"a two-segment fit needs {MIN_BREAKPOINT_POINTS} models")
    finite = errors[np.isfinite(errors)]
    return {
        "statistic": stat,
        "slope": fit.slope,
        "intercept": fit.intercept,
        "r2": fit.r2,
        "slope_ci_low": fit.slope_ci[0],
        "slope_ci_high": fit.slope_ci[1],
        "models": usable,
        "loo_mean_error": float(finite.mean()) if len(finite) else None,
        "loo_max_error": float(finite.max()) if len(finite) else None,
        "breakpoint": hinge.at,
        "slope_below": hinge.below,
        "slope_above": hinge.above,
        "breakpoint_p": hinge.p_value,
        "note": f"{usable} models: " + "; ".join(missing) if missing else "",
    }


if __name__ == "__main__":
    stage_main(__doc__, add_args, run, PARAMS)
