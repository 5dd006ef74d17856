"""The README's results section is generated from the artifacts and checked against them."""

from pathlib import Path

import pytest

from cwa import CwaError
from cwa.report.readme import BEGIN, END, num, results_markdown, split, sync

ROOT = Path(__file__).resolve().parents[1]

METRICS = {
    "baseline_ppl": 46.774,
    "delta_ppl_top": 0.19162,
    "delta_ppl_top_ci_low": 0.1234,
    "delta_ppl_top_ci_high": 0.2541,
    "delta_ppl_random": 0.0036674,
    "delta_ppl_bottom": -8.5459e-05,
    "separation": 37.923,
    "separation_ci_low": 16.052,
    "separation_ci_high": 93.033,
    "p_value": 0.000999,
    "q_value": 0.0021,
    "comparisons": 130,
    "comparisons_fdr05": 57,
    "kl_top": 0.0042,
    "kl_random": 6.1e-05,
    "top1_same_top": 0.981,
    "delta_ppl_magnitude": 0.012,
    "q_value_magnitude": 0.004,
    "jaccard_top": 0.1011,
    "seeds_perturbed": 3,
    "seeds_fdr05": 3.0,
    "headline_k": 100,
}
ZERO = {
    "perturbation": "zero",
    "setting": "",
    "top_delta_ppl": 0.19162,
    "top_diverged": False,
    "random_k_delta_ppl": 0.0036674,
    "random_k_diverged": False,
    "bottom_k_delta_ppl": -8.5459e-05,
    "bottom_k_diverged": False,
    "top_ci": [0.1234, 0.2541],
    "random_k_runs": 3,
    "separation": 37.923,
    "separation_ci": [16.052, 93.033],
    "p_value": 0.000999,
    "p_wilcoxon": 4e-8,
}
SUMMARY = {
    "setup": {
        "model": "builtin:kjv-base",
        "metric": "grad_x_weight",
        "mode": "global",
        "pool_weights": 1048576,
        "seeds": 3,
        "calib_samples": 64,
        "eval_windows": 128,
        "eval_tokens": 16256,
        "random_draws": 3,
        "bootstrap": 1000,
    },
    "perturbations": [
        ZERO,
        ZERO | {"perturbation": "bit_flip", "setting": "bit 30", "top_diverged": True},
    ],
    "models": [{"label": "kjv-base", "kind": "dense", "params": 2098304, "baseline_ppl": 46.774}],
}


def test_the_committed_readme_shows_the_committed_artifacts():
    assert sync(ROOT / "README.md", ROOT / "artifacts", write=False), (
        "README.md's results differ from artifacts/metrics.json: run `cwa readme --write`"
    )


def test_numbers_are_rendered_from_the_metrics():
    text = results_markdown(METRICS, SUMMARY)
    assert "| baseline perplexity | 46.77 |" in text
    assert "| ΔPPL, zero the top-100 | +0.192 (95% CI 0.123 – 0.254) |" in text
    assert "| ΔPPL, zero the bottom-100 | −8.55·10^−5 |" in text
    assert "| seeds whose own top-100 beats random at q < 0.05 | 3 of 3 |" in text
    assert "37.9 (95% CI 16.1 – 93)" in text
    assert "| bit_flip bit 30 | diverged | +0.00367 |" in text
    assert "| zero | +0.192 (0.123 – 0.254) | +0.00367 | −8.55·10^−5 | 37.9 (16.1 – 93) |" in text
    assert "| `kjv-base` | dense | 2,098,304 | 46.8 |" in text
    assert "1,048,576 pool weights, 3 seeds × 64 calibration windows" in text


def test_num_formats():
    assert num(0.000999) == "0.000999"
    assert num(1590.4) == "1,590"
    assert num(float("inf")) == "∞" and num(None) == "–" and num(float("nan")) == "–"
    assert num(0.5, sign=True) == "+0.5" and num(-0.5, sign=True) == "−0.5"


def test_sync_rewrites_only_the_block_and_a_changed_metric_is_caught(tmp_path):
    art = tmp_path / "artifacts"
    (art / "report").mkdir(parents=True)
    import json

    (art / "metrics.json").write_text(json.dumps(METRICS))
    (art / "report" / "summary.json").write_text(json.dumps(SUMMARY))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\nstale numbers\n{END}\n\n## after\n")
    assert not sync(readme, art, write=False)
    assert sync(readme, art, write=True)
    before, block, after = split(readme.read_text())
    assert before == "# title\n\n" and after == "\n\n## after\n"
    assert block == results_markdown(METRICS, SUMMARY)
    assert sync(readme, art, write=False)
    (art / "metrics.json").write_text(json.dumps(METRICS | {"baseline_ppl": 46.9}))
    assert not sync(readme, art, write=False)


def test_missing_markers_are_a_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(CwaError, match="markers"):
        split(readme.read_text())
