"""Bad input through the CLI: exit code 2, one clear line naming what is valid, no traceback,
DVC never started and existing artifacts untouched."""

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from cwa.cli import main

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    (["--metric", "fisher"], "`metric` is 'fisher'; valid values: act_mag, grad_squared"),
    (["--mode", "per_row"], "valid values: global, per_component, per_head, per_layer"),
    (["--perturb", "zero,melt"], "`perturb` is 'melt'; valid values: bit_flip"),
    (["--perturb", "zero,zero"], "`perturb` must be a non-empty list of distinct perturbations"),
    (["--controls", "random"], "`controls` is 'random'; valid values: bottom_k, random_k"),
    (["--topk", "10,abc"], "`topk` must be int, got 'abc'"),
    (["--topk", "0"], "`topk` must be a non-empty list of positive integers"),
    (["--topk", "10,1000"], "`headline_k` (100) must be one of topk [10, 1000]"),
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
    (
        ["--model", "builtin:kjv-huge"],
        "valid: builtin:kjv-tiny, builtin:kjv-small, builtin:kjv-base",
    ),
]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with the real params and some artifacts, DVC forbidden."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "artifacts" / "rank").mkdir(parents=True)
    (tmp_path / "artifacts" / "metrics.json").write_text('{"separation": 37.9}\n')
    (tmp_path / "artifacts" / "rank" / "ranking.parquet").write_bytes(b"PAR1 stand-in")
    monkeypatch.chdir(tmp_path)

    def no_dvc(*args, **kwargs):
        raise AssertionError(f"DVC was started: {args}")

    monkeypatch.setattr("cwa.cli.subprocess.run", no_dvc)
    return tmp_path


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
    assert "Traceback" not in err and err.startswith("cwa: error: ")
    assert snapshot(project) == before


@pytest.mark.parametrize(("flags", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_flag(project, flags, message, capsys):
    check(project, ["run", *flags], message, capsys)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"metrc": "grad_x_weight"}, "unknown key(s) metrc; valid keys: model, dtype"),
        ({"family": {"m": {"hidden": 8}}}, "`family.m` must be a mapping with exactly the keys"),
        ({"bootstrap": "many"}, "`bootstrap` must be int, got 'many'"),
        ({"include_embeddings": "yes"}, "`include_embeddings` must be bool, got 'yes'"),
        ({"layers": [0, "last"]}, "`layers` must be int, got 'last'"),
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
