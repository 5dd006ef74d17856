"""The `cwa` CLI: old-script flags map onto params and bad values fail before DVC starts."""

import polars as pl
import pytest

from cwa.cli.export import EXPORTS, RANKING, export, top_weights
from cwa.cli.main import build_parser, main
from cwa.cli.old_flags import translate


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
            "--num-processes",
            "4",
            "--device-map",
            "auto",
        ]
    )
    assert translate(args).runs == [
        {
            "topk": [10, 100],
            "seeds": [0, 1, 2],
            "calib_samples": 32,
            "seq_len": 256,
            "controls": ["random_k"],
            "num_processes": 4,
            "device_map": "auto",
            "headline_k": 100,
            "metric": "grad_squared",
        }
    ]


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


def ranking_table(metric: str) -> pl.DataFrame:
    """A ranking table as the rank stage writes it: two seeds, k 1 and 2, a control beside."""
    rows = []
    for seed in (0, 1):
        for k in (1, 2):
            for selection in ("top", "random_k"):
                for r in range(k):
                    rows.append(
                        {
                            "metric": metric,
                            "seed": seed,
                            "group": "global",
                            "selection": selection,
                            "k": k,
                            "rank": r,
                            "param": f"h.{seed}.w",
                            "layer": seed,
                            "component": "mlp_up",
                            "row": r,
                            "col": 10 * seed + k,
                            "score": 1.0 / (r + 1) if selection == "top" else -1.0,
                        }
                    )
    return pl.DataFrame(rows)


def exported_artifacts(art, metric: str = "magnitude") -> None:
    for item in EXPORTS:
        path = art / item
        if item == RANKING:
            path.parent.mkdir(parents=True, exist_ok=True)
            ranking_table(metric).write_parquet(path)
        elif "." in path.name:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(item)
        else:
            (path / "plots").mkdir(parents=True)
            (path / "plots" / "a.png").write_text("png")


def test_out_dir_export_is_whole_or_nothing(tmp_path):
    art = tmp_path / "artifacts"
    exported_artifacts(art)
    export(art, tmp_path / "out")
    for item in EXPORTS:
        assert (tmp_path / "out" / item).exists(), item
    assert (tmp_path / "out" / "report" / "plots" / "a.png").read_text() == "png"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.csv")) == [
        "top_1_weights_magnitude.csv",
        "top_2_weights_magnitude.csv",
    ]
    (art / "perturb" / "tasks.parquet").unlink()
    with pytest.raises(FileNotFoundError):
        export(art, tmp_path / "partial")
    assert not (tmp_path / "partial").exists()  # nothing half-copied
    assert not list(tmp_path.glob(".partial*"))


def test_top_weight_csvs_hold_each_seeds_top_k_in_rank_order(tmp_path):
    tables = top_weights(ranking_table("grad_x_weight"))
    assert list(tables) == ["top_1_weights_grad_x_weight.csv", "top_2_weights_grad_x_weight.csv"]
    two = tables["top_2_weights_grad_x_weight.csv"]
    assert two.columns == [
        "rank", "group", "layer", "component", "parameter", "row", "column", "score", "seed"
    ]  # fmt: skip
    assert two.rows() == [
        (1, "global", 0, "mlp_up", "h.0.w", 0, 2, 1.0, 0),
        (2, "global", 0, "mlp_up", "h.0.w", 1, 2, 0.5, 0),
        (1, "global", 1, "mlp_up", "h.1.w", 0, 12, 1.0, 1),
        (2, "global", 1, "mlp_up", "h.1.w", 1, 12, 0.5, 1),
    ]
    art = tmp_path / "artifacts"
    exported_artifacts(art, "grad_x_weight")
    assert main(["export", str(tmp_path / "out"), "--artifacts", str(art)]) == 0
    csv = pl.read_csv(tmp_path / "out" / "top_2_weights_grad_x_weight.csv")
    assert csv.rows() == two.rows()
    assert main(["export", str(tmp_path / "x"), "--artifacts", str(tmp_path / "none")]) == 2


def test_out_dir_flag_parses():
    args = build_parser().parse_args(["run", "--metric", "magnitude", "--out-dir", "res/x"])
    assert args.out_dir == "res/x" and translate(args).runs == [{"metric": "magnitude"}]


def test_show_of_an_unknown_experiment_lists_the_known_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no DVC repository here: dvc exp show fails, cleanly reported
    assert main(["show", "--exp", "nope"]) == 2
    assert "cwa: error:" in capsys.readouterr().err


def test_the_full_preset_is_valid_params_and_overrides_params_yaml(tmp_path):
    import yaml

    from cwa.cli.main import preset
    from cwa.config.params import params_from_dict

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    full = preset(str(root / "configs" / "full.yaml"))
    assert full["eval_samples"] == 128 and "gauss_rel" in full["perturb"]
    base = yaml.safe_load((root / "params.yaml").read_text())
    merged = params_from_dict(base | full)
    assert merged.eval_samples == 128 and merged.fault_trials == 8
    assert preset(None) == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(Exception, match="mapping"):
        preset(str(bad))
    assert main(["run", "--preset", str(tmp_path / "missing.yaml")]) == 2


def test_doctor_reports_the_largest_batch_the_guards_rule_allows(tmp_path, monkeypatch, capsys):
    """For each pass the largest batch b: the need at b fits the guard's rule, at b + 1 it does
    not (estimates recomputed at those batches, not derived from the printout's arithmetic)."""
    import dataclasses
    import re

    import torch

    from cwa.cli import doctor
    from cwa.config.params import load_params
    from cwa.models.anatomy import describe, pool
    from cwa.models.memory import HEADROOM, PASSES, estimate
    from cwa.pipeline.feasibility import empty_model
    from tests.conftest import ROOT, tiny_llama

    tiny_llama().save_pretrained(tmp_path / "m")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    free = 64 * 2**20
    monkeypatch.setattr(doctor, "free_memory", lambda device: free)
    argv = ["doctor", "--model", str(tmp_path / "m"), "--batch-size", "4", "--seq-len", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (\w+) \| [^|]+ \| [\d.]+ \| (?:yes|no) \| (\d+) \|$", out, re.M))
    assert set(rows) == set(doctor.KINDS)
    params = load_params("params.yaml")
    params = dataclasses.replace(params, model=str(tmp_path / "m"), batch_size=4, seq_len=64)
    model = empty_model(params)  # the model as doctor builds it (its config's attention)
    infos = pool(describe(model), **params.pool_options)

    def fits(kind, batch):
        scored = infos if PASSES[kind].backward else []
        est = estimate(model, scored, kind, batch, 64, params.layer_group)
        need = next(iter(est.devices.values()))
        return need.beyond_weights <= HEADROOM * (free - need.weights)

    for kind, largest in rows.items():
        b = int(largest)
        assert b >= 1 and fits(kind, b) and not fits(kind, b + 1), (kind, b)
    assert "python " in out and "cuda" in out and torch.__version__ in out
