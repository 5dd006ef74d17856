"""Summaries of a perturbation sweep: against the baseline (paired CIs over texts), against the
controls (p-values, effect sizes, separation CIs), pooled over seeds, and the headline cell."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from cwa.core.stats import (
    bh_q_values,
    paired_delta_ci,
    paired_test,
    per_token_ci,
    permutation_floor,
    pooled_cis,
    separation,
    separation_ci,
)
from cwa.evaluation.perplexity import EvalResult, text_rows
from cwa.experiments.sweep import (
    Experiment,
    stream_seed,
)


def summarize(
    exps: list[Experiment],
    results: list[EvalResult],
    base: EvalResult,
    boot_idx: np.ndarray,
    seed: int,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(effects, texts) tables of one seed's ranking (`seed`), without the metric/mode columns
    the caller adds."""
    effects, texts = [], []
    base_ppl = base.ppl
    for exp, res in zip(exps, results, strict=True):
        lo, hi = paired_delta_ci(base.nll, res.nll, res.tokens, boot_idx)
        effects.append(
            {
                **exp.ident,
                "weights": exp.size,
                "ppl": res.ppl,
                "delta_ppl": res.ppl - base_ppl,
                "ci_low": lo,
                "ci_high": hi,
                "rel_delta": (res.ppl - base_ppl) / base_ppl,
                "accuracy": res.accuracy,
                "delta_accuracy": res.accuracy - base.accuracy,
                **distribution_damage(res, boot_idx),
                "diverged": res.diverged,
                "seed": seed,
            }
        )
        texts.append(text_rows(exp.ident, res, seed))
    return pl.DataFrame(effects), pl.concat(texts)


def distribution_damage(res: EvalResult, boot_idx: np.ndarray) -> dict:
    """Mean KL(p_ref ‖ p) per token and its 99th percentile over tokens, the fraction of tokens
    whose top-1 prediction is unchanged, each mean with its CI over resampled texts (NaN without
    a reference)."""
    if res.kl is None:
        keys = ("kl", "kl_ci_low", "kl_ci_high", "kl_p99", "top1_same")
        return dict.fromkeys((*keys, "top1_ci_low", "top1_ci_high"), math.nan)
    tokens = res.tokens.sum()
    kl_lo, kl_hi = per_token_ci(res.kl, res.tokens, boot_idx)
    same_lo, same_hi = per_token_ci(res.same_top1.astype(float), res.tokens, boot_idx)
    return {
        "kl": float(res.kl.sum() / tokens),
        "kl_ci_low": kl_lo,
        "kl_ci_high": kl_hi,
        "kl_p99": res.kl_p99,
        "top1_same": float(res.same_top1.sum() / tokens),
        "top1_ci_low": same_lo,
        "top1_ci_high": same_hi,
    }


def compare(
    exps: list[Experiment],
    results: list[EvalResult],
    base: EvalResult,
    boot_idx: np.ndarray,
    resamples: int,
    seed: int,
) -> pl.DataFrame:
    """Top set against each control kind, per perturbation setting, k and mask ratio."""
    groups: dict[tuple, dict[str, list]] = {}
    idents = {}
    for exp, res in zip(exps, results, strict=True):
        key = (exp.perturbation.name, exp.ident["setting"], exp.k, exp.mask_ratio)
        idents[key] = {c: v for c, v in exp.ident.items() if c not in ("selection", "draw")}
        groups.setdefault(key, {}).setdefault(exp.selection, []).append(res)
    rows = []
    for key, by_selection in groups.items():
        if "top" not in by_selection:
            continue
        top = by_selection["top"][0]
        for control in sorted(set(by_selection) - {"top"}):
            stats = _comparison(
                by_selection[control],
                top,
                base,
                boot_idx,
                resamples,
                stream_seed(seed, *key, control),
            )
            rows.append({**idents[key], "control": control, **stats})
    return pl.DataFrame(rows)


def _comparison(draws, top, base, boot_idx, resamples, seed) -> dict:
    per_token = lambda r: (r.nll - base.nll) / r.tokens  # noqa: E731  ΔNLL per token, per text
    control_delta = float(np.mean([r.ppl for r in draws])) - base.ppl
    top_delta = top.ppl - base.ppl
    diff = per_token(top) - np.mean([per_token(r) for r in draws], axis=0)
    test = paired_test(diff, resamples, seed)
    lo, hi = separation_ci(
        base.nll, top.nll, np.stack([r.nll for r in draws]), top.tokens, boot_idx
    )
    return {
        "draws": len(draws),
        "top_delta_ppl": top_delta,
        "control_delta_ppl": control_delta,
        "separation": separation(top_delta, [r.ppl - base.ppl for r in draws]),
        "separation_ci_low": lo,
        "separation_ci_high": hi,
        "effect_size": test.effect_size,
        "p_value": test.p_permutation,
        "p_floor": permutation_floor(len(diff), resamples),
        "q_value": math.nan,  # over every comparison of the run: with_q_values
        "p_wilcoxon": test.p_wilcoxon,
        "top_diverged": top.diverged,
        "control_diverged": int(sum(r.diverged for r in draws)),
    }


def pool(
    runs: list[tuple[list[Experiment], list[EvalResult]]],
    base: EvalResult,
    boot_idx: np.ndarray,
    seed_idx: np.ndarray,
    resamples: int,
    seed: int,
) -> pl.DataFrame:
    """Top set against each control kind pooled over seeds (`runs`: one (experiments, results)
    per seed, the same grid on each seed's ranking). ΔPPLs are means over seeds (and draws), the
    test is on per-text differences averaged over seeds, the CIs resample seeds and texts
    (stats.pooled_cis; seed_idx: (resamples, seeds))."""
    cells: dict[tuple, dict[str, list[list[EvalResult]]]] = {}
    idents = {}
    for i, (exps, results) in enumerate(runs):
        for exp, res in zip(exps, results, strict=True):
            key = (exp.perturbation.name, exp.ident["setting"], exp.k, exp.mask_ratio)
            idents[key] = {c: v for c, v in exp.ident.items() if c not in ("selection", "draw")}
            per_seed = cells.setdefault(key, {}).setdefault(exp.selection, [[] for _ in runs])
            per_seed[i].append(res)
    rows = []
    for key, by_selection in cells.items():
        if "top" not in by_selection:
            continue
        tops = [draws[0] for draws in by_selection["top"]]
        for control in sorted(set(by_selection) - {"top"}):
            stream = stream_seed(seed, *key, control, "pooled")
            stats = _pooled(
                by_selection[control], tops, base, boot_idx, seed_idx, resamples, stream
            )
            rows.append({**idents[key], "control": control, **stats})
    return pl.DataFrame(rows)


def _pooled(controls, tops, base, boot_idx, seed_idx, resamples, stream) -> dict:
    """One pooled comparison: controls[s] are seed s's draws, tops[s] its top set."""
    per_token = lambda r: (r.nll - base.nll) / r.tokens  # noqa: E731  ΔNLL per token, per text
    top_delta = float(np.mean([t.ppl for t in tops])) - base.ppl
    control_deltas = [r.ppl - base.ppl for draws in controls for r in draws]
    diff = np.mean(
        [
            per_token(t) - np.mean([per_token(r) for r in d], axis=0)
            for t, d in zip(tops, controls, strict=True)
        ],
        axis=0,
    )
    test = paired_test(diff, resamples, stream)
    cis = pooled_cis(
        base.nll,
        np.stack([t.nll for t in tops]),
        np.stack([[r.nll for r in d] for d in controls]),
        base.tokens,
        boot_idx,
        seed_idx,
    )
    return {
        "seeds": len(tops),
        "draws": len(controls[0]),
        "top_delta_ppl": top_delta,
        "top_ci_low": cis.top[0],
        "top_ci_high": cis.top[1],
        "control_delta_ppl": float(np.mean(control_deltas)),
        "control_ci_low": cis.control[0],
        "control_ci_high": cis.control[1],
        "separation": separation(top_delta, control_deltas),
        "separation_ci_low": cis.separation[0],
        "separation_ci_high": cis.separation[1],
        "effect_size": test.effect_size,
        "p_value": test.p_permutation,
        "p_floor": permutation_floor(len(diff), resamples),
        "q_value": math.nan,  # over every comparison of the run: with_q_values
        "p_wilcoxon": test.p_wilcoxon,
        "top_diverged": sum(t.diverged for t in tops),
        "control_diverged": int(sum(r.diverged for d in controls for r in d)),
    }


def with_q_values(
    comparisons: pl.DataFrame, pooled: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Benjamini-Hochberg q-values over every top-versus-control comparison of the run: each
    seed's (every perturbation, strength, k, mask ratio and control) and the pooled ones are
    one family of tests. The pooled rows also count the seeds whose own comparison has
    q < 0.05 (`seeds_fdr05`)."""
    if comparisons.is_empty():  # no controls: nothing was tested
        return comparisons, pooled
    p = np.concatenate([comparisons["p_value"].to_numpy(), pooled["p_value"].to_numpy()])
    q = bh_q_values(p)
    comparisons = comparisons.with_columns(q_value=pl.Series(q[: len(comparisons)]))
    keys = ["perturbation", "setting", "k", "mask_ratio", "control"]
    passed = comparisons.group_by(keys).agg(seeds_fdr05=(pl.col("q_value") < 0.05).sum())
    pooled = (
        pooled.with_columns(q_value=pl.Series(q[len(comparisons) :]))
        .join(passed, on=keys, how="left", maintain_order="left")
        .with_columns(pl.col("seeds_fdr05").fill_null(0))
    )
    return comparisons, pooled


def first_strength(first: dict[str, str]) -> pl.Expr:
    """Rows at the first strength of their perturbation's sweep (`first`: first_settings)."""
    return pl.any_horizontal(
        [(pl.col("perturbation") == p) & (pl.col("setting") == s) for p, s in first.items()]
    )


def headline_cell(k: int, first: dict[str, str]) -> pl.Expr:
    """The headline cells: each perturbation at its first strength on whole selections of k
    weights. Their downstream tasks run, the report's headline table shows them."""
    return first_strength(first) & (pl.col("k") == k) & (pl.col("mask_ratio") == 1.0)


ZERO = {"zero": ""}  # the headline setting whenever `zero` runs (it has no strength)


def headline_rows(table: pl.DataFrame, k: int, setting: dict[str, str]) -> pl.DataFrame:
    """Rows of the headline experiment (`setting`: headline_setting)."""
    return table.filter(headline_cell(k, setting))


def headline(
    effects: pl.DataFrame, pooled: pl.DataFrame | None, k: int, setting: dict[str, str]
) -> dict:
    """ΔPPL of perturbing (by default zeroing) the top-k, random_k, bottom_k and
    magnitude_matched_k (means over every seed and draw in `effects`), the separation from
    random_k; from the pooled comparisons (schema `pooled`) the top set's CI, the separation's
    CI, the p- and q-values of top beating random_k, the q-value of top beating
    magnitude_matched_k and how many seeds' own comparison with random_k has q < 0.05."""
    zero = headline_rows(effects, k, setting)

    def mean(selection, col="delta_ppl"):
        vals = zero.filter(pl.col("selection") == selection)[col]
        return float(vals.mean()) if len(vals) else float("nan")

    top = mean("top")
    random = zero.filter(pl.col("selection") == "random_k")["delta_ppl"].to_list()
    out = {
        "delta_ppl_top": top,
        "delta_ppl_random": mean("random_k"),
        "delta_ppl_bottom": mean("bottom_k"),
        "separation": separation(top, random),
        "kl_top": mean("top", "kl"),
        "kl_random": mean("random_k", "kl"),
        "top1_same_top": mean("top", "top1_same"),
        "delta_ppl_magnitude": mean("magnitude_matched_k"),
    }
    if pooled is not None:
        rows = headline_rows(pooled, k, setting)

        def first(control: str, col: str) -> float:
            row = rows.filter(pl.col("control") == control)[col]
            return float(row[0]) if len(row) else float("nan")

        control = "random_k" if "random_k" in rows["control"] else next(iter(rows["control"]), "")
        out |= {
            "delta_ppl_top_ci_low": first(control, "top_ci_low"),
            "delta_ppl_top_ci_high": first(control, "top_ci_high"),
            "separation_ci_low": first("random_k", "separation_ci_low"),
            "separation_ci_high": first("random_k", "separation_ci_high"),
            "p_value": first("random_k", "p_value"),
            "q_value": first("random_k", "q_value"),
            "q_value_magnitude": first("magnitude_matched_k", "q_value"),
            "seeds_fdr05": first("random_k", "seeds_fdr05"),
        }
    return out
