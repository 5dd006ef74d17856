"""Bad input through the CLI: exit code 2, one clear line naming what is valid, no traceback,
DVC never started and existing artifacts untouched."""

import hashlib
from pathlib import Path

import pytest
import yaml

from cwa.cli.main import main

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    (["--metric", "fisher"], "`metric` is 'fisher'; valid values: act_mag, grad_squared"),
    (["--mode", "per_row"], "valid values: global, per_component, per_head, per_layer"),
    (["--perturb", "zero,melt"], "`perturb` is 'melt'; valid values: bit_flip"),
    (["--perturb", "zero,zero"], "`perturb` must be a non-empty list of distinct perturbations"),
    (
        ["--controls", "random"],
        "`controls` is 'random'; valid values: bottom_k, magnitude_matched_k, random_k",
    ),
    (["--topk", "10,abc"], "`topk` must be int, got 'abc'"),
    (["--topk", "0"], "`topk` must be a non-empty list of distinct positive integers"),
    (["--topk", "10,10"], "`topk` must be a non-empty list of distinct positive integers"),
    (["--topk", "10,1000", "--headline-k", "100"], "`headline_k` (100) must be one of topk"),
    (["--seeds", "0,one"], "`seeds` must be int, got 'one'"),
    (["--seeds", "1,1"], "`seeds` must be a non-empty list of distinct integers"),
    (["--seeds", ""], "`seeds` must be a non-empty list"),
    (["--max-samples", "abc"], "--max-samples 'abc' is not a valid int"),
    (["--max-samples", "0"], "`calib_samples` must be >= 1, got 0"),
    (["--max-length", "1"], "`seq_len` must be >= 2"),
    (["--max-length", "1.5"], "--max-length '1.5' is not a valid int"),
    (["--dtype", "float8"], "`dtype` is 'float8'; valid values: float32, bfloat16, float16"),
    (
        ["--model", "./no/such/dir"],
        "holds no config.json: give a directory saved with save_pretrained",
    ),
    (["--model", "/"], "is the path '/', which holds no config.json"),
    (["--set", "prune_methods=[magnitude,obs]"], "`prune_methods` is 'obs'; valid values: "),
    (["--set", "sparsities=[0.5,1.0]"], "`sparsities` must be distinct fractions in (0, 1)"),
    (["--set", "prune_group=per_col"], "valid values: global, per_tensor, per_row"),
    (["--set", "prune_nm=[4:2]"], "`prune_nm` entries are N:M with 0 < N < M (e.g. 2:4)"),
    # valid alone, not for this machine or model (cwa.pipeline.feasibility)
    (
        ["--max-length", "256"],
        "`seq_len` is 256 but builtin:kjv-base serves windows of at most 128 tokens",
    ),
    (["--topk", "10,100,600000"], "`topk` 600000 does not fit: mode global ranks 1 group(s)"),
    (["--mode", "per_layer", "--topk", "100,9000"], "valid: every k <= 8192"),
    (["--layers", "9"], "`layers` [9] do not exist; the model has layers 0..3"),
    (["--set", "target_components=[router]"], "`target_components` ['router'] are not in"),
    (["--device", "cuda:99"], "`device` is 'cuda:99' but this machine has"),
    (  # a bit position the user names and the dtype lacks (the default names exist in all)
        ["--dtype", "bfloat16", "--set", "flip_bit=[30]"],
        "`flip_bit` 30 cannot apply with `dtype` bfloat16",
    ),
    (["--set", "seeds=[-1,0]"], "`seeds` must be integers >= 0, got [-1, 0]"),
    (
        ["--num-processes", "4", "--max-samples", "2"],
        "`num_processes` is 4 but there are 2 calibration windows per seed",
    ),
    (
        ["--model", "builtin:kjv-huge"],
        "valid: builtin:kjv-tiny, builtin:kjv-mini, builtin:kjv-small, builtin:kjv-base",
    ),
]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def check(project, argv, message, capsys):
    before = snapshot(project)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    errors = [line for line in err.splitlines() if line.startswith("cwa: error: ")]
    assert "Traceback" not in err and errors == [err.splitlines()[-1]]  # notes, then one line
    assert snapshot(project) == before


@pytest.mark.parametrize(("flags", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_flag(project, flags, message, capsys):
    check(project, ["run", *flags], message, capsys)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"metrc": "grad_x_weight"}, "unknown key(s) metrc; valid keys: model, dtype"),
        (
            {"family": {"m": {"hidden": 8}}},
            "`family.m` must be a mapping with the keys hidden, layers",
        ),
        ({"bootstrap": "many"}, "`bootstrap` must be int, got 'many'"),
        ({"include_embeddings": "yes"}, "`include_embeddings` must be bool, got 'yes'"),
        ({"layers": [0, "last"]}, "`layers` must be int, got 'last'"),
        ({"train_lr": 0}, "`train_lr` must be a learning rate in (0, 1), got 0.0"),
        (
            {"family": {"kjv-base": {"hidden": 100, "layers": 2, "heads": 3, "intermediate": 8}}},
            "`family.kjv-base` hidden (100) must be heads (3) x an even head size",
        ),
    ],
)
def test_bad_params_file(project, edit, message, capsys):
    params = yaml.safe_load((project / "params.yaml").read_text()) | edit
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    check(project, ["run"], message, capsys)


def test_missing_and_malformed_params_file(project, capsys):
    (project / "params.yaml").write_text("- just\n- a list\n")
    check(
        project, ["run", "--metric", "magnitude"], "must hold a mapping of keys to values", capsys
    )
    (project / "params.yaml").unlink()
    check(project, ["run"], "params.yaml not found: run cwa from the project root", capsys)


def test_show_without_results(project, capsys):
    (project / "artifacts" / "metrics.json").unlink()
    check(project, ["show"], "run the pipeline first (`dvc repro`)", capsys)


def test_unknown_command_is_a_usage_error(project, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err


def _write(project, name, content):
    path = project / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return name


DATA_CASES = [
    ("missing.txt", None, "`eval_data` is 'missing.txt', which does not exist"),
    ("empty.txt", "\n \n", "`eval_data` empty.txt holds no text"),
    ("bad.jsonl", '{"text": "a"}\n{"text": \n', "`eval_data` file bad.jsonl: line 2 is not JSON"),
    (
        "field.jsonl",
        '{"body": "a", "id": 1}\n',
        "line 1 has no field 'text' (set `data_field`); fields present: body, id",
    ),
    ("binary.txt", b"text\x00\xff\xfe", "`eval_data` file binary.txt is not UTF-8 text"),
    ("data.md", "# a", "a .md file; valid: ('.txt', '.jsonl', '.parquet', '.csv')"),
]


@pytest.mark.parametrize(("name", "content", "message"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_text_source(project, name, content, message, capsys):
    if content is not None:
        _write(project, name, content)
    check(project, ["run", "--eval-data", name], message, capsys)


def test_parquet_without_the_column_lists_the_columns(project, capsys):
    import polars as pl

    pl.DataFrame({"body": ["a"], "id": [1]}).write_parquet(project / "t.parquet")
    message = (
        "`calib_data` file t.parquet has no column 'text' (set `data_field`); columns: body, id"
    )
    check(project, ["run", "--calib-data", "t.parquet"], message, capsys)


def test_text_too_short_for_a_window_or_for_the_samples(project, word_model, capsys):
    _write(project, "short.txt", "w " * 40)
    model = ["--model", str(word_model), "--eval-data", "short.txt"]
    too_short = "`eval_data` short.txt gives 40 tokens, fewer than one window of seq_len 64"
    check(project, ["run", *model, "--max-length", "64"], too_short, capsys)
    few = (
        "`eval_samples` is 64 but `eval_data` short.txt gives only 5 windows of seq_len 8 "
        "(40 tokens): lower `eval_samples` or `seq_len`, or give more text"
    )
    check(project, ["run", *model, "--max-length", "8"], few, capsys)
    calib = "`calib_samples` is 64 but `calib_data` short.txt gives only 2 windows of seq_len 8"
    check(project, ["run", *model, "--max-length", "8", "--data-file", "short.txt"], calib, capsys)


def test_unreachable_hub_dataset(project, monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = "needs the hub or a local copy; on a machine with internet run"
    check(project, ["run", "--eval-data", "hf:nobody/nothing"], message, capsys)


def test_unknown_flag_names_the_way_to_set_any_param(project, capsys):
    check(project, ["run", "--frobnicate", "3"], "unknown flag(s) --frobnicate 3: set any", capsys)
