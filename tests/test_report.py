"""The report: section functions over typed inputs, the headline and figures before the tables."""

from pathlib import Path

import polars as pl

from cwa.params import load_params
from cwa.report import (
    ReportInputs,
    figures_section,
    headline_section,
    render_markdown,
    superweight_section,
    tasks_section,
)

ROOT = Path(__file__).resolve().parents[1]


SOURCE = {
    "key": "eval_data",
    "spec": "builtin:kjv",
    "kind": "builtin",
    "sha256": "ab" * 32,
    "bytes": 1000,
    "documents": 10,
    "characters": 990,
    "part": "eval split",
}


def inputs(**changes) -> ReportInputs:
    one = pl.DataFrame({"a": [1.0]})
    values = {
        "params": load_params(ROOT / "params.yaml"),
        "metrics": {
            "headline_k": 100,
            "baseline_ppl": 46.774,
            "delta_ppl_top": 0.19162,
            "delta_ppl_random": 0.0036674,
            "delta_ppl_bottom": -8.5e-05,
            "separation": 37.923,
            "separation_ci_low": 16.05,
            "separation_ci_high": 93.03,
            "p_value": 0.000999,
            "jaccard_top": 0.101,
        },
        "baseline": pl.DataFrame({"texts": [64], "tokens": [8128], "params": [2098304]}),
        "pool_weights": 1048576,
        "pool_tensors": 28,
        "top": one,
        "headline": pl.DataFrame({"perturbation": ["zero"], "ΔPPL": [0.19162]}),
        "comparisons": one,
        "tasks": one,
        "effects": one,
        "faults": one,
        "perturbation_docs": [("zero", "w → 0")],
        "stability": one,
        "agreement": one,
        "spikes": pl.DataFrame({"candidate": [True, False, False]}),
        "scaling": one,
        "fits": one,
        "has_training": True,
        "setting": {"zero": ""},
        "sources": (SOURCE | {"key": "calib_data", "part": "calib split"}, SOURCE),
    }
    return ReportInputs(**(values | changes))


def test_headline_states_the_numbers_of_metrics_json():
    text = "\n".join(headline_section(inputs()))
    assert "changes perplexity by **0.192** (baseline 46.77)" in text
    assert "**37.9** (95% CI 16.1 – 93)" in text and "**0.000999**" in text
    assert "| zero | 0.192 |" in text  # the headline table


def test_figures_come_before_every_long_table():
    text = render_markdown(inputs())
    headline, figures, tables = (text.index(h) for h in ("## Headline", "## Figures", "## Tables"))
    assert headline < figures < tables
    assert text.index("![") > headline and text.rindex("![") < tables  # every figure up front
    assert text.rindex("### Every experiment") > text.index("### Top set against the controls")


def test_training_figure_only_when_there_are_training_logs():
    assert "training.png" in "\n".join(figures_section(inputs()))
    assert "training.png" not in "\n".join(figures_section(inputs(has_training=False)))


def test_sections_say_what_they_counted():
    assert "**1 of 3** down projections hold a candidate" in "\n".join(
        superweight_section(inputs())
    )
    assert "kjv_lambada, kjv_hellaswag: 128 items each" in "\n".join(tasks_section(inputs()))
