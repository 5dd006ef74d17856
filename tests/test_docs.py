"""Params are single-sourced: each key's default and meaning live in cwa.params, each stage
declares what it reads in one place (PARAMS), and every other copy is generated or checked."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from cwa import CwaError
from cwa.params import DOCS, Params, StageParams, load_params, params_from_dict
from cwa.params_doc import markdown

ROOT = Path(__file__).resolve().parents[1]


def declared(script: Path) -> tuple[str, ...]:
    """A stage script's PARAMS, read from its source (check_params: every key, computed)."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PARAMS":
            if script.stem == "check_params":
                return tuple(f.name for f in dataclasses.fields(Params))
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{script} declares no PARAMS")


def test_each_stage_declares_exactly_its_dvc_params():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        script = ROOT / re.search(r"python (stages/\w+\.py)", body["cmd"]).group(1)
        in_dvc = [str(k).split(".")[0] for k in body.get("params", [])]  # family.${key}
        assert list(declared(script)) == in_dvc, name


def test_params_reference_is_generated():
    assert (ROOT / "docs" / "params.md").read_text() == markdown(ROOT), (
        "run: python -m cwa.params_doc > docs/params.md"
    )


def test_every_key_has_a_meaning_and_params_yaml_holds_the_defaults():
    keys = [f.name for f in dataclasses.fields(Params)]
    assert sorted(DOCS) == sorted(keys)
    written = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert sorted(written) == sorted(keys)
    family = written.pop("family")
    defaults = params_from_dict({"family": family, **written})
    assert defaults == Params(family=defaults.family)  # the file and the dataclass agree


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
