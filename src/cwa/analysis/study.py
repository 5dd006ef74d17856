"""Studies across models: the comparisons the study stage draws from its members' tables.

- Scaling: each statistic of the final dense base members against parameter count, a power law
  with its slope CI and R², the leave-one-out error of predicting each member from the others,
  and a two-segment law with its breakpoint (cwa.core.stats).
- Architecture: each component class's and each third of the depth's share of the top-k and of
  the total score, compared between the groups of a tag (kind: dense / moe; tuning: base /
  instruct) by a permutation test.
- Checkpoints: members of one model at several training steps; the Jaccard overlap of their
  top-k sets and the Spearman correlation of their scores, step to step and with the last.

A model's *final* member is the one without a revision, else the one at its largest step:
checkpoints take part in the drift analysis only, so a series of checkpoints does not weigh
one model many times in a fit or a group.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from cwa.config.params import StudyMember
from cwa.core.stats import (
    MIN_BREAKPOINT_POINTS,
    fit_power_law,
    jaccard,
    leave_one_out,
    loglog,
    spearman,
    two_segment_fit,
)

# Columns of the members table that get a power-law fit against parameter count.
FIT_STATISTICS = ("top_share", "max_over_median", "delta_ppl_top_rel", "separation")
TAGS = ("kind", "tuning")
SHARES = ("topk_share", "score_share")


def member_step(member: StudyMember, train_steps: int) -> int | None:
    """The tag, else what a built-in model's revision says (its final model: train_steps)."""
    if member.step is not None:
        return member.step
    if member.model.startswith("builtin:"):
        return int(member.revision.removeprefix("step-")) if member.revision else train_steps
    return None


def with_tags(rows: pl.DataFrame, models: dict[str, StudyMember], train_steps: int):
    """The members' rows with family, kind, tuning, step and final."""
    tags = pl.DataFrame(
        [
            {
                "label": label,
                "family": m.family,
                "kind_tag": m.kind,
                "tuning": m.tuning,
                "step": member_step(m, train_steps),
            }
            for label, m in models.items()
        ],
        schema={
            "label": pl.String,
            "family": pl.String,
            "kind_tag": pl.String,
            "tuning": pl.String,
            "step": pl.Int64,
        },
    )
    table = rows.join(tags, on="label", how="left")
    detected = pl.when(pl.col("experts") > 0).then(pl.lit("moe")).otherwise(pl.lit("dense"))
    table = table.with_columns(
        kind=pl.when(pl.col("kind_tag") != "").then("kind_tag").otherwise(detected)
    ).drop("kind_tag")
    whole = pl.col("revision") == ""
    last_step = pl.col("step").is_null().all().over("model") | (
        pl.col("step") == pl.col("step").max().over("model")
    ).fill_null(False)
    final = pl.when(whole.any().over("model")).then(whole).otherwise(last_step)
    return table.with_columns(final=pl.when(final).then(pl.lit("yes")).otherwise(pl.lit("no")))


def scaling_points(members: pl.DataFrame) -> pl.DataFrame:
    """The members a scaling law is fitted to: final, dense, base."""
    return members.filter(
        (pl.col("final") == "yes") & (pl.col("kind") == "dense") & (pl.col("tuning") == "base")
    ).sort("params", "label")


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


def fits(members: pl.DataFrame) -> pl.DataFrame:
    points = scaling_points(members)
    x = points["params"].to_numpy()
    return pl.DataFrame([scaling_fit(s, x, points[s].to_numpy()) for s in FIT_STATISTICS])


def member_parts(shares: pl.DataFrame) -> pl.DataFrame:
    """(label, part, topk_share, score_share): each member's shares per component class and per
    third of its normalised depth (`depth:early` < 1/3 <= `depth:middle` < 2/3 <= `depth:late`),
    a part a member lacks at 0 so every member has every part."""
    columns = ["label", "part", *SHARES]
    components = shares.filter(pl.col("axis") == "component").rename({"group": "part"})
    third = pl.when(pl.col("depth") < 1 / 3).then(pl.lit("depth:early"))
    third = third.when(pl.col("depth") < 2 / 3).then(pl.lit("depth:middle"))
    depths = (
        shares.filter(pl.col("axis") == "depth")
        .with_columns(part=third.otherwise(pl.lit("depth:late")))
        .group_by("label", "part")
        .agg(pl.col(s).sum() for s in SHARES)
    )
    rows = pl.concat([components.select(columns), depths.select(columns)])
    grid = rows.select("label").unique().join(rows.select("part").unique(), how="cross")
    filled = grid.join(rows, on=["label", "part"], how="left")
    return filled.with_columns(pl.col(s).fill_null(0.0) for s in SHARES).sort("label", "part")


def permutation_p(a: np.ndarray, b: np.ndarray, resamples: int) -> float:
    """Two-sided permutation test of mean(a) − mean(b): exact over every split when there are
    at most `resamples` of them, else `resamples` random splits (seed 0)."""
    from scipy import stats as sps

    test = sps.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="independent",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        rng=0,
    )
    return float(test.pvalue)


def group_tests(members: pl.DataFrame, shares: pl.DataFrame, resamples: int) -> pl.DataFrame:
    """Per tag with two groups among the final members: each part's (member_parts) mean shares
    per group and the permutation p-value where each group holds at least 2 members."""
    finals = members.filter(pl.col("final") == "yes")
    by_member = member_parts(shares.filter(pl.col("label").is_in(finals["label"].implode())))
    rows = []
    for tag in TAGS:
        groups = sorted(set(finals[tag]))
        if len(groups) != 2:
            continue
        sides = [finals.filter(pl.col(tag) == g)["label"] for g in groups]
        few = [f"{g} has {len(s)} member" for g, s in zip(groups, sides, strict=True) if len(s) < 2]
        for (part,), rows_ in by_member.group_by("part", maintain_order=True):
            for share in SHARES:
                a, b = (
                    rows_.filter(pl.col("label").is_in(s.implode()))[share].to_numpy()
                    for s in sides
                )
                rows.append(
                    {
                        "tag": tag,
                        "share": share,
                        "part": part,
                        "group_a": groups[0],
                        "group_b": groups[1],
                        "members_a": len(a),
                        "members_b": len(b),
                        "mean_a": float(a.mean()),
                        "mean_b": float(b.mean()),
                        "difference": float(a.mean() - b.mean()),
                        "p_value": None if few else permutation_p(a, b, resamples),
                        "note": "; ".join(few) + ": a test needs 2 in each group" if few else "",
                    }
                )
    return pl.DataFrame(rows, schema=GROUP_COLUMNS)


GROUP_COLUMNS = {
    "tag": pl.String,
    "share": pl.String,
    "part": pl.String,
    "group_a": pl.String,
    "group_b": pl.String,
    "members_a": pl.Int64,
    "members_b": pl.Int64,
    "mean_a": pl.Float64,
    "mean_b": pl.Float64,
    "difference": pl.Float64,
    "p_value": pl.Float64,
    "note": pl.String,
}


def drift(members: pl.DataFrame, tops: pl.DataFrame, samples: pl.DataFrame, ks) -> pl.DataFrame:
    """For each model with members at 2 or more steps: Jaccard of the top-k sets (each k of
    `ks`) and Spearman of the sampled scores, each step against the previous one and the last."""
    rows = []
    timed = members.filter(pl.col("step").is_not_null())
    for (model,), series in timed.sort("step", "label").group_by("model", maintain_order=True):
        if series["step"].n_unique() < 2:
            continue
        labels, steps = series["label"].to_list(), series["step"].to_list()
        pairs = [("previous", i, i - 1) for i in range(1, len(labels))]
        pairs += [("last", i, len(labels) - 1) for i in range(len(labels) - 1)]
        for against, i, j in pairs:
            rho = sample_spearman(samples, labels[i], labels[j])
            for k in ks:
                rows.append(
                    {
                        "model": model,
                        "label": labels[i],
                        "step": steps[i],
                        "against": against,
                        "other": labels[j],
                        "other_step": steps[j],
                        "k": k,
                        "jaccard": jaccard(
                            top_set(tops, labels[i], k), top_set(tops, labels[j], k)
                        ),
                        "spearman": rho,
                    }
                )
    return pl.DataFrame(rows, schema=DRIFT_COLUMNS)


DRIFT_COLUMNS = {
    "model": pl.String,
    "label": pl.String,
    "step": pl.Int64,
    "against": pl.String,
    "other": pl.String,
    "other_step": pl.Int64,
    "k": pl.Int64,
    "jaccard": pl.Float64,
    "spearman": pl.Float64,
}


def top_set(tops: pl.DataFrame, label: str, k: int) -> set:
    rows = tops.filter((pl.col("label") == label) & (pl.col("rank") < k))
    return set(zip(rows["tensor"], rows["flat_index"], strict=True))


def sample_spearman(samples: pl.DataFrame, a: str, b: str) -> float:
    """Spearman ρ of two members' scores at the coordinates both sampled (NaN: none shared)."""
    left = samples.filter(pl.col("label") == a).select("tensor", "flat_index", "score")
    right = samples.filter(pl.col("label") == b).select("tensor", "flat_index", "score")
    both = left.join(right, on=["tensor", "flat_index"], suffix="_b")
    if len(both) < 2:
        return math.nan
    return spearman(both["score"].to_numpy(), both["score_b"].to_numpy())


def measures(members: pl.DataFrame, shares: pl.DataFrame) -> pl.DataFrame:
    """The tidy (label, measure, value) table: numeric member columns and the parts' shares."""
    numeric = [c for c, t in members.schema.items() if t.is_numeric() and c not in ("step",)]
    long = members.select("label", *[pl.col(c).cast(pl.Float64) for c in numeric]).unpivot(
        index="label", variable_name="measure", value_name="value"
    )
    parts = member_parts(shares).unpivot(
        index=["label", "part"], on=list(SHARES), variable_name="share", value_name="value"
    )
    parts = parts.select("label", pl.format("{}:{}", "share", "part").alias("measure"), "value")
    return pl.concat([long, parts]).sort("label", "measure")
