"""The old runners' documented command lines run through `cwa run` as written: the runner's name
replaced, the model made a tiny local one, `--dry-run` so that each is validated in full and
the `dvc exp run` commands it would start are checked."""

import itertools
import shlex

import polars as pl
import pytest
import yaml

from cwa.cli.main import main
from cwa.cli.old_flags import every_perturbation

RUNNERS = ("python phase1_runner.py", "python phase1_runner_enhanced.py")
MODULE = "python -m src.experiments.phase1_runner"

# (command as the old docs write it, the -S values each experiment must get, notes expected)
COMMANDS = [
    ("python phase1_runner.py --model gpt2 --metric grad_x_weight --topk 100", {"topk": [100]}),
    (
        "python phase1_runner.py --model EleutherAI/pythia-2.8b --metric grad_x_weight "
        "grad_squared --topk 50 100 500 --eval-limit 100 --output my_results/",
        {"topk": [50, 100, 500], "eval_samples": 100, "headline_k": 100},
    ),
    (
        "python phase1_runner.py --model gpt2 --metric grad_x_weight --topk 10 --eval-limit 10 "
        "--fast-perturbation --verbose",
        {"topk": [10], "headline_k": 10, "eval_samples": 10},
    ),
    ("python phase1_runner.py --model gpt2", {}),
    ("python phase1_runner.py --model EleutherAI/pythia-70m", {}),
    (
        "python phase1_runner.py --model EleutherAI/pythia-410m --metric grad_x_weight "
        "grad_squared --topk 100 500 1000 --eval-limit 100",
        {"topk": [100, 500, 1000], "headline_k": 100},
    ),
    (
        "python phase1_runner.py --model meta-llama/Llama-2-7b-hf --metric grad_x_weight "
        "--topk 100 --eval-limit 20 --no-perturbation",
        {"eval_samples": 20},
    ),
    ("python phase1_runner.py --model gpt2 --topk 100 --output gpt2_analysis/", {"topk": [100]}),
    (
        "python phase1_runner.py --model gpt2 --metric grad_x_weight grad_squared --topk 10 50 "
        "100 500 --eval-limit 100 --output gpt2_comprehensive/",
        {"topk": [10, 50, 100, 500], "headline_k": 100},
    ),
    (
        "python phase1_runner.py --model gpt2 --topk 10 --eval-limit 5 --fast-perturbation "
        "--verbose",
        {"topk": [10], "eval_samples": 5},
    ),
    (
        "python -m src.experiments.phase1_runner --model gpt2 --texts src/data/dev_small.txt "
        "--layers 2 4 6 8 --metric grad_x_weight --topk 100 --outdir outputs/run_001",
        {"layers": [2, 4, 6, 8], "calib_data": "src/data/dev_small.txt"},
    ),
    (
        "python -m src.experiments.phase1_runner --model gpt2 --texts src/data/dev_small.txt "
        "--layers 4 --metric grad_x_weight --topk 100 --mask zero --eval ppl "
        "--outdir outputs/run_002",
        {"layers": [4], "perturb": ["zero"], "eval_data": "src/data/dev_small.txt"},
    ),
    (
        "python phase1_runner_enhanced.py --model gpt2 --metric grad_x_weight --topk 100 "
        "--weight-analysis --architecture-analysis --temporal-stability --downstream-tasks "
        "--advanced-perturbations --save-plots --out-dir results/gpt2_enhanced",
        {"perturb": every_perturbation()},
    ),
    (
        "python phase1_runner_enhanced.py --model meta-llama/Llama-3.1-8B --metric "
        "hutchinson_diag --topk 500 --mode global --weight-analysis --architecture-analysis "
        "--out-dir results/llama_analysis",
        {"metric": "hutchinson_diag", "topk": [500], "headline_k": 500, "mode": "global"},
    ),
    (
        "python phase1_runner_enhanced.py --model gpt2 --metric grad_x_weight --topk 100 "
        "--temporal-stability --seeds 0,1,2,3,4 --stability-check --out-dir "
        "results/stability_analysis",
        {"seeds": [0, 1, 2, 3, 4]},
    ),
    (
        "python phase1_runner_enhanced.py --model gpt2 --metric grad_x_weight --topk 200 "
        "--advanced-perturbations --downstream-tasks --perturb sign_flip --perturb-scale 1.0 "
        "--controls random_k,bottom_k --out-dir results/perturbation_study",
        {"perturb": ["sign_flip"], "controls": ["random_k", "bottom_k"], "headline_k": 200},
    ),
    (
        "python phase1_runner_enhanced.py --model microsoft/DialoGPT-small --metric magnitude "
        "--topk 10 --max-samples 5 --out-dir results/compatibility/dialogpt_small",
        {"metric": "magnitude", "calib_samples": 5},
    ),
    (
        "python phase1_runner_enhanced.py --model gpt2 --metric grad_x_weight --topk 50 --mode "
        "per_layer --max-samples 10 --out-dir results/compatibility/gpt2_baseline",
        {"mode": "per_layer", "headline_k": 50},
    ),
    (
        "python phase1_runner_enhanced.py --model microsoft/DialoGPT-medium --metric "
        "grad_x_weight --topk 100 --max-samples 20 --max-length 1024 --out-dir "
        "results/profiling/dialogpt_medium_memory",
        {"seq_len": 1024, "calib_samples": 20},
    ),
    (
        "python phase1_runner_enhanced.py --model meta-llama/Llama-3.1-8B --metric grad_x_weight "
        "--topk 500 --mode per_layer --perturb sign_flip --controls random_k,bottom_k --seeds "
        "0,1,2 --stability-check --device cuda --max-samples 30 --save-plots --out-dir "
        "results/llama31_8b/perturbation_analysis",
        {"device": "cuda", "perturb": ["sign_flip"], "seeds": [0, 1, 2]},
    ),
    (
        "python phase1_runner_enhanced.py --model mistralai/Mistral-7B-v0.1 --metric "
        "grad_x_weight --topk 300 --mode per_layer --perturb sign_flip --perturb-scale 1.0 "
        "--controls random_k,bottom_k --seeds 0,1,2,3,4 --stability-check --device cuda "
        "--max-samples 40 --save-plots --out-dir results/mistral_7b/robustness_analysis",
        {"topk": [300], "headline_k": 300, "calib_samples": 40},
    ),
    (
        "python phase1_runner_enhanced.py --model gpt2 --metric magnitude --topk 10 "
        "--max-samples 5 --out-dir results/validation/",
        {"metric": "magnitude"},
    ),
]


def as_cwa(command: str, model) -> list[str]:
    """The runner replaced by `cwa run --dry-run`, the model by the tiny local one."""
    for runner in (*RUNNERS, MODULE):
        command = command.replace(runner, "cwa run --dry-run")
    argv = shlex.split(command)[1:]
    at = argv.index("--model") + 1
    argv[at] = str(model)
    return argv


def listed(argv: list[str], flag: str) -> list[str]:
    """The values after `flag` up to the next flag."""
    if flag not in argv:
        return []
    rest = argv[argv.index(flag) + 1 :]
    return rest[: next((i for i, t in enumerate(rest) if t.startswith("--")), len(rest))]


def settings(line: str) -> tuple[dict, list[str]]:
    """The -S values and the targets of one printed `dvc exp run` command."""
    tokens = shlex.split(line)
    assert tokens[1:5] == ["-m", "dvc", "exp", "run"]
    values = {}
    for flag, value in itertools.pairwise(tokens):
        if flag == "-S":
            key, _, text = value.partition("=")
            values[key] = yaml.safe_load(text)
    targets = [t for t in tokens[5:] if not t.startswith("-")][:1] if tokens[5] == "rank" else []
    return values, targets


DTYPES = {None: None, "bf16": "bfloat16", "fp16": "float16"}  # as given, as cwa names it


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("command", "expected"), COMMANDS, ids=range(len(COMMANDS)))
def test_old_command_runs_through_cwa(
    project, word_model, command, expected, dtype, capsys, monkeypatch
):
    """Each command as written, and with --dtype bf16 / fp16 added (the default bit positions
    exist in every dtype)."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # --device cuda: a GPU machine
    monkeypatch.setattr("torch.cuda.device_count", lambda: 8)
    data = project / "src" / "data"
    data.mkdir(parents=True)
    (data / "dev_small.txt").write_text("w " * 20_000)  # enough windows for both halves
    argv = as_cwa(command, word_model) + (["--dtype", dtype] if dtype else [])
    assert main(argv) == 0, capsys.readouterr().err
    if dtype:
        expected = expected | {"dtype": DTYPES[dtype]}
    out = capsys.readouterr().out.strip().splitlines()
    metrics = listed(shlex.split(command), "--metric")
    assert len(out) == max(1, len(metrics))  # one experiment per metric
    for line, metric in zip(out, metrics or [None], strict=True):
        values, targets = settings(line)
        assert values["model"] == str(word_model)
        assert {k: values[k] for k in expected if k != "metric"} == {
            k: v for k, v in expected.items() if k != "metric"
        }
        if metric:
            assert values["metric"] == expected.get("metric", metric)
        if len(out) > 1:
            assert f"--name run-{metric.replace('_', '-')}" in line
        assert targets == (["rank"] if "--no-perturbation" in command else [])


def test_documented_only_flags_and_old_names(project, capsys):
    argv = [
        "run",
        "--dry-run",
        "--perturbation-ratios",
        "0.1",
        "0.5",
        "1.0",
        "--experiment-id",
        "exp1",
        "--no-downstream-tasks",
        "--mode",
        "head_wise",
        "--metric",
        "hessian_diag",
        "--perturb",
        "zero",
        "gaussian_noise",
        "magnitude_scale",
        "--perturb-scale",
        "0.02",
        "--dtype",
        "bf16",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    values, _ = settings(captured.out.strip())
    assert values["mask_ratios"] == [0.1, 0.5] and values["tasks"] == []
    assert values["lm_eval_tasks"] == [] and values["mode"] == "per_head"
    assert values["metric"] == "hutchinson_diag" and values["dtype"] == "bfloat16"
    assert values["perturb"] == ["zero", "gauss_rel", "scale"]
    assert values["noise_sigma"] == [0.02] and values["scale_alpha"] == [0.02]
    assert captured.out.strip().endswith("--name exp1")
    assert "--mode head_wise: cwa calls it per_head" in captured.err
    assert "--perturbation-ratios 1.0: the whole set always runs" in captured.err


def test_a_strength_flag_without_a_perturbation_that_takes_it_names_the_param(project, capsys):
    assert main(["run", "--perturb", "zero", "sign_flip", "--perturb-scale", "2.0"]) == 2
    err = capsys.readouterr().err
    assert "it sets scale_alpha, noise_sigma, abs_sigma of scale, gauss_rel, gauss_abs" in err


def test_the_old_probabilistic_bit_flip_runs_as_bit_flip_p(project, capsys):
    argv = ["run", "--dry-run", "--perturb", "zero", "bit_flip", "--perturb-prob", "0.05"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    values, _ = settings(captured.out.strip())
    assert values["perturb"] == ["zero", "bit_flip_p"] and values["flip_prob"] == [0.05]
    assert "the old runner's probabilistic bit flip is bit_flip_p" in captured.err
    # with bit_flip_p listed, bit_flip stays the fixed-position flip beside it
    argv = ["run", "--dry-run", "--perturb", "bit_flip", "bit_flip_p", "--perturb-prob", "0.1"]
    assert main(argv) == 0
    values, _ = settings(capsys.readouterr().out.strip())
    assert values["perturb"] == ["bit_flip", "bit_flip_p"] and values["flip_prob"] == [0.1]


def test_out_dir_holds_each_metric_run_whole_and_nothing_of_another_run(
    project, word_model, monkeypatch
):
    """Two metrics: each run's results in <out-dir>/<metric>/, copied before the next run
    replaces them; --no-perturbation: the ranking alone, never an earlier run's report."""
    from cwa.cli.export import EXPORTS, RANKING
    from tests.test_cli import ranking_table

    art = project / "artifacts"

    def dvc_run(cmd, check):  # what `dvc exp run` leaves in artifacts/: this run's outputs
        metric = next(a for a in cmd if a.startswith("metric=")).removeprefix("metric=")
        targets = [a for a in cmd[5:] if a in ("rank",)]
        for item, stage in EXPORTS.items():
            if targets and stage not in targets:
                continue
            path = art / item / "figure.png" if "." not in item else art / item
            path.parent.mkdir(parents=True, exist_ok=True)
            if item == RANKING:
                ranking_table(metric).write_parquet(path)
            else:
                path.write_text(metric)
        return type("Done", (), {"returncode": 0})

    def written_by(directory) -> set[str]:
        """The metric each exported file was written for."""
        out = set()
        for item in EXPORTS:
            path = directory / item
            path = path / "figure.png" if "." not in item else path
            out.add(pl.read_parquet(path)["metric"][0] if item == RANKING else path.read_text())
        return out

    monkeypatch.setattr("cwa.cli.main.subprocess.run", dvc_run)
    monkeypatch.setattr("cwa.cli.main.side_by_side", lambda names: "")  # reads dvc exp show
    model = str(word_model)
    argv = ["run", "--model", model, "--metric", "magnitude", "grad_x_weight", "--out-dir", "res"]
    assert main(argv) == 0
    for metric in ("magnitude", "grad_x_weight"):
        assert written_by(project / "res" / metric) == {metric}
        assert (project / "res" / metric / f"top_100_weights_{metric}.csv").exists() is False
        assert (project / "res" / metric / f"top_2_weights_{metric}.csv").exists()
    (art / "metrics.json").write_text("an earlier run's")
    argv = ["run", "--model", model, "--metric", "grad_squared", "--no-perturbation"]
    assert main([*argv, "--out-dir", "ranking-only"]) == 0
    out = project / "ranking-only"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == [
        "rank/ranking.parquet",
        "top_1_weights_grad_squared.csv",
        "top_2_weights_grad_squared.csv",
    ]
