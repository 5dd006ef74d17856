"""The `cwa` CLI: old-script flags map onto params and bad values fail before DVC starts."""

import pytest

from cwa.cli import build_parser, main, overrides


def test_flags_map_onto_params_keys():
    args = build_parser().parse_args(
        [
            "run",
            "--metric",
            "grad_squared",
            "--topk",
            "10,100",
            "--seeds",
            "0,1,2",
            "--max-samples",
            "32",
            "--max-length",
            "256",
            "--controls",
            "random_k",
        ]
    )
    assert overrides(args) == {
        "metric": "grad_squared",
        "topk": [10, 100],
        "seeds": [0, 1, 2],
        "calib_samples": 32,
        "seq_len": 256,
        "controls": ["random_k"],
    }


def test_bad_metric_fails_before_dvc(capsys):
    assert main(["run", "--metric", "fisher"]) == 2
    err = capsys.readouterr().err
    valid = "act_mag, grad_squared, grad_x_weight, hutchinson_diag, magnitude, obd, obd_hutchinson"
    assert f"`metric` is 'fisher'; valid values: {valid}, super_weight, wanda" in err


def test_show_without_artifacts_says_what_to_do(tmp_path, capsys):
    assert main(["show", "--artifacts", str(tmp_path)]) == 2
    assert "run the pipeline first" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "cwa run --metric grad_squared" in capsys.readouterr().out
