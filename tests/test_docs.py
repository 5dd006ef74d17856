"""Docs that cannot drift: every param documented, with the stages that declare it in dvc.yaml."""

import re
from pathlib import Path

import yaml

from cwa.params import Params


def declared_stages() -> dict[str, set[str]]:
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    users: dict[str, set[str]] = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for key in body.get("params", []):
            top = re.sub(r"\..*", "", str(key))  # family.${key} -> family
            users.setdefault(top, set()).add(name)
    return users


def documented() -> dict[str, set[str]]:
    rows = {}
    for line in Path("docs/params.md").read_text().splitlines():
        m = re.match(r"\| `(\w+)` \|.*\| ([\w, ]+) \|$", line)
        if m:
            rows[m.group(1)] = {s.strip() for s in m.group(2).split(",")}
    return rows


def test_every_param_is_documented_with_the_stages_that_read_it():
    docs = documented()
    assert set(docs) == set(Params.__dataclass_fields__)
    declared = declared_stages()
    for key, stages in docs.items():
        assert stages == declared.get(key, set()), key
