"""dvc.yaml, generated from the stage scripts' declarations (each script's `STAGE`).

A stage's command, data dependencies, outputs and params come from its declaration; its code
dependencies are its script and exactly the cwa modules it imports (imports inside functions
included), computed from the source with `ast`: a module missing from the list would be a stale
cache, a module listed but never imported a needless rerun (hours on a real model).
`python -m cwa.pipeline.dvc_yaml` rewrites the file; a test fails when file and declarations differ.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
import textwrap
from pathlib import Path

from cwa.pipeline.paths import CHECKED, LOCK
from cwa.pipeline.stage import Stage, flag

LIB = Path(__file__).resolve().parents[1]  # src/cwa
ROOT = LIB.parents[1]  # the project: dvc.yaml, stages/
WIDTH = 100

HEADER = """\
# The cwa pipeline, generated from the stage scripts' declarations (`STAGE` in stages/*.py) by
# `python -m cwa.pipeline.dvc_yaml`: edit a declaration, never this file (a test compares them).
# A stage's code deps are its script and exactly the src/cwa modules it imports; every stage but
# check_params depends on its constant output and on requirements.lock. Each stage's --manifest
# (its run record: wall time, memory, versions, commit) is in git but not a DVC output, so a
# byte-identical reproduction leaves dvc.lock unchanged.
"""

# `dvc plots show`: the side files the stages write for it (their `records`)
PLOTS = """\
metrics:
  - artifacts/metrics.json

plots:
  - artifacts/report/effects_vs_k.csv:
      x: k
      y: [top, random_k, bottom_k]
      title: ΔPPL of the headline perturbation (zero) of k weights (mean over draws)
  - artifacts/stability/stability_vs_k.csv:
      x: k
      y: [jaccard, spearman, spearman_pool]
      title: Agreement of top-k sets across seeds
  - artifacts/study/scaling.csv:
      x: params
      y: [top_share, delta_ppl_top_rel]
      title: Concentration and damage vs model size (the study's final members)
"""


def module_files(dotted: str) -> set[str]:
    """Files (relative to src/cwa, no suffix) that importing `dotted` runs: each package's
    __init__ on the way, then the module itself."""
    parts = dotted.split(".")[1:]
    found = {"__init__"}
    for depth in range(1, len(parts) + 1):
        path = "/".join(parts[:depth])
        if (LIB / path / "__init__.py").exists():
            found.add(f"{path}/__init__")
        elif (LIB / f"{path}.py").exists():
            found.add(path)
        else:
            break  # a name inside the module (from cwa.x import name)
    return found


def cwa_imports(path: Path) -> set[str]:
    """Module files of cwa that `path` imports anywhere (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # module or name
    found = set()
    for name in names:
        if name == "cwa" or name.startswith("cwa."):
            found |= module_files(name)
    return found


def closure(script: Path) -> set[str]:
    """Every cwa module file `script` runs when imported, transitively."""
    seen, todo = set(), [script]
    while todo:
        for module in cwa_imports(todo.pop()) - seen:
            seen.add(module)
            todo.append(LIB / f"{module}.py")
    return seen


def declarations(stages_dir: Path = ROOT / "stages") -> dict[str, Stage]:
    """Script path (relative to the project) -> its STAGE, level by level: first the stages that
    read no other stage's output, then those that read only theirs, and so on (by name within a
    level)."""
    found = {}
    for script in sorted(stages_dir.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"stage_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found[f"stages/{script.name}"] = module.STAGE
    return _in_data_order(found)


def _in_data_order(found: dict[str, Stage]) -> dict[str, Stage]:
    writer = {
        path: script
        for script, stage in found.items()
        for path in [*stage.writes.values(), *stage.records.values()]
    }
    needs = {
        script: {  # a stage reading a folder follows every stage writing inside it
            source
            for read in stage.reads.values()
            for path, source in writer.items()
            if path == read or path.startswith(f"{read}/")
        }
        - {script}
        for script, stage in found.items()
    }
    ordered: dict[str, Stage] = {}
    while len(ordered) < len(found):
        level = [s for s in found if s not in ordered and needs[s] <= set(ordered)]
        if not level:
            raise ValueError(f"stages read each other's outputs in a cycle: {sorted(needs)}")
        ordered |= {script: found[script] for script in level}
    return ordered


def _item(text: str) -> str:
    """A YAML flow-sequence item: plain where that is unambiguous, else double-quoted."""
    return text if re.fullmatch(r"[\w./@-]+", text) else json.dumps(text, ensure_ascii=False)


def _flow(field: str, items: list[str], indent: str) -> list[str]:
    """`field: [a, b, ...]` wrapped to WIDTH columns, continuation lines under the first item."""
    head = f"{indent}{field}: ["
    lines = textwrap.wrap(
        ", ".join(map(_item, items)),
        WIDTH - len(head),
        break_long_words=False,
        break_on_hyphens=False,
    )
    pad = " " * len(head)
    return [head + f"\n{pad}".join(lines) + "]"]


def _block(field: str, paths: list[str], uncached: list[str], indent: str) -> list[str]:
    lines = [f"{indent}{field}:"]
    for path in paths:
        lines.append(f"{indent}  - {_item(path)}")
    for path in uncached:
        lines += [f"{indent}  - {_item(path)}:", f"{indent}      cache: false"]
    return lines


def command(script: str, stage: Stage) -> list[str]:
    """The command's words: the script, then each `--flag path` as one item."""
    flags = [f"--{flag(stage.key_flag)} ${{key}}"] if stage.key_flag else []
    flags += [f"--{flag(name)} {path}" for name, path in stage.paths().items()]
    if stage.manifest:
        flags.append(f"--manifest {stage.manifest}")
    return [f"python {script}", *flags]


def _cmd(words: list[str], indent: str) -> list[str]:
    """`cmd:` on one line, or folded (`>-` joins lines with a space) between flags."""
    text = " ".join(words)
    if len(indent) + len("cmd: ") + len(text) <= WIDTH:
        return [f"{indent}cmd: {text}"]
    lines, width = [], WIDTH - len(indent) - 2
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return [f"{indent}cmd: >-", *(f"{indent}  {line}" for line in lines)]


def stage_lines(script: str, stage: Stage) -> list[str]:
    """One stage's entry: the command, deps (script, its import closure, check_params' output
    and the lock, then what it reads), params, outputs."""
    code = [script] + [f"src/cwa/{m}.py" for m in sorted(closure(ROOT / script))]
    checks = [] if stage.name == "check_params" else [CHECKED, LOCK]
    params = [
        f"{key}.${{key}}" if key == stage.foreach else key for key in stage.params
    ]  # a foreach stage reads its own member of `family` or `models`
    indent = "      " if stage.foreach else "    "
    lines = [f"  {stage.name}:"]
    if stage.foreach:
        lines += [f"    foreach: ${{{stage.foreach}}}", "    do:"]
    lines += _cmd(command(script, stage), indent)
    lines += _flow("deps", code + checks + list(stage.reads.values()), indent)
    if params:
        lines += _flow("params", params, indent)
    if stage.always_changed:
        lines.append(f"{indent}always_changed: true")
    outs, uncached = list(stage.writes.values()), list(stage.records.values())
    if outs or uncached:
        lines += _block("outs", outs, uncached, indent)
    if stage.metrics:
        lines += _block("metrics", [], list(stage.metrics.values()), indent)
    return lines


def render(stages: dict[str, Stage] | None = None) -> str:
    stages = declarations() if stages is None else stages
    body = ["stages:"]
    for script, stage in stages.items():
        body += [*stage_lines(script, stage), ""]
    return HEADER + "\n" + "\n".join(body) + PLOTS


TABLE_BEGIN = (
    "<!-- stages: generated from the declarations by `python -m cwa.pipeline.dvc_yaml` -->"
)
TABLE_END = "<!-- end of stages -->"


def stage_table(stages: dict[str, Stage] | None = None) -> str:
    """The stage table of docs/pipeline.md: name, what it does, what it writes."""
    stages = declarations() if stages is None else stages
    rows = ["| stage | does | writes (under `artifacts/` unless noted) |", "|---|---|---|"]
    for stage in stages.values():
        member = {"family": "<name>", "models": "<label>"}.get(stage.foreach or "", "")
        name = f"{stage.name}@{member}" if member else stage.name
        outputs = [*stage.writes.values(), *stage.records.values(), *stage.metrics.values()]
        shown = (
            f"`{path.removeprefix('artifacts/').replace('${key}', member)}`" for path in outputs
        )
        does = stage.does.replace("|", "\\|")
        rows.append(f"| `{name}` | {does} | {', '.join(shown)} |")
    return "\n".join(rows)


def with_table(doc: str, table: str) -> str:
    """`doc` with the text between the table markers replaced by `table`."""
    before, rest = doc.split(TABLE_BEGIN)
    _, after = rest.split(TABLE_END)
    return f"{before}{TABLE_BEGIN}\n{table}\n{TABLE_END}{after}"


def main(argv: list[str]) -> int:
    """`python -m cwa.pipeline.dvc_yaml` writes dvc.yaml and the stage table of
    docs/pipeline.md; with `--check`, exit 1 if either differs from the declarations."""
    stages = declarations()
    docs = ROOT / "docs" / "pipeline.md"
    want = {
        ROOT / "dvc.yaml": render(stages),
        docs: with_table(docs.read_text(), stage_table(stages)),
    }
    if "--check" in argv:
        stale = [path.name for path, text in want.items() if path.read_text() != text]
        print(f"stale: {', '.join(stale)}" if stale else "dvc.yaml and the stage table match")
        return 1 if stale else 0
    for path, text in want.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
