"""Params are single-sourced: each key's default and meaning live in cwa.config.params, each stage
declares what it reads in one place (PARAMS), and every other copy is generated or checked."""

from pathlib import Path

import pytest
import yaml

from cwa import CwaError
from cwa.config.params import (
    DOCS,
    KEYS,
    Params,
    StageParams,
    all_keys,
    field_names,
    load_params,
    params_from_dict,
)
from cwa.pipeline.dvc_yaml import declarations
from cwa.pipeline.params_doc import markdown

ROOT = Path(__file__).resolve().parents[1]


def test_each_stage_declares_exactly_its_dvc_params():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {stage.name: stage.params for stage in declarations().values()}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        in_dvc = [str(k).split(".")[0] for k in body.get("params", [])]  # family.${key}
        assert list(declared[name]) == in_dvc, name


def test_params_reference_is_generated():
    assert (ROOT / "docs" / "params.md").read_text() == markdown(ROOT), (
        "run: python -m cwa.pipeline.params_doc > docs/params.md"
    )


def test_every_key_has_a_meaning_and_params_yaml_holds_the_defaults():
    assert sorted(DOCS) == sorted(field_names())  # registered keys carry their own docs
    assert all(KEYS[k].doc for k in KEYS)
    keys = all_keys()
    written = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert sorted(written) == sorted(keys)
    family, models = written.pop("family"), written.pop("models")
    defaults = params_from_dict({"family": family, "models": models, **written})
    assert defaults == Params(family=defaults.family, models=defaults.models)  # they agree


def test_a_stage_reads_only_what_it_declared():
    params = StageParams(load_params(ROOT / "params.yaml"), ("seq_len", "include_1d"))
    assert params.seq_len == 128
    with pytest.raises(AttributeError, match="`metric` is read but not declared"):
        _ = params.metric
    with pytest.raises(AttributeError, match="`include_embeddings` is read but not declared"):
        _ = params.pool_options  # a property reads through the view
    assert params.as_dict() == {"seq_len": 128, "include_1d": False}


def test_a_bad_value_is_still_refused_when_no_stage_reads_it():
    with pytest.raises(CwaError, match="`seq_len` must be >= 2"):
        params_from_dict({"seq_len": 1})


def test_a_stage_keeps_keys_it_cannot_check_and_strict_loading_refuses_them():
    model = {"model": "./tests"}  # any directory with... no: a hub id needs no family
    model = {"model": "org/some-model"}
    params = params_from_dict({**model, "seq_len": 64, "from_a_module_not_imported": [1]}, False)
    assert params.seq_len == 64
    with pytest.raises(CwaError, match="unknown key\\(s\\) from_a_module_not_imported"):
        params_from_dict({**model, "from_a_module_not_imported": [1]})


def test_a_new_perturbation_with_a_strength_touches_only_its_registration(monkeypatch):
    """Its key is then a params key with a default, checked by its rule and documented."""
    import cwa.config.params
    from cwa.experiments.perturbations import PERTURBATIONS, Perturbation, Sweep, register

    monkeypatch.setattr(PERTURBATIONS, "_items", dict(PERTURBATIONS._items))
    monkeypatch.setattr(cwa.config.params, "KEYS", dict(KEYS))
    sweep = Sweep(
        "shift_by",
        "tuple[float, ...]",
        (0.1,),
        "`shift` strengths",
        str,
        lambda s: s > 0,
        "numbers > 0",
    )
    register(Perturbation("shift", "w → w + s", lambda v, t, s, g: v + s, sweep))
    model = {"model": "org/some-model"}
    assert "shift_by" in all_keys() and Params(**model).shift_by == (0.1,)
    assert params_from_dict({**model, "shift_by": [0.5, 2]}).shift_by == (0.5, 2.0)
    with pytest.raises(
        CwaError, match="`shift_by` must be a non-empty list of distinct numbers > 0"
    ):
        params_from_dict({**model, "shift_by": [-1]})
