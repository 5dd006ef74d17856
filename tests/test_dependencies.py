"""dvc.yaml is generated from the stage declarations, and what it says holds: a stage's code
dependencies are exactly its script and the cwa modules it imports, every path it is given is a
dependency or an output, and the library's subpackages import only downward.

DVC reruns a stage when a dependency changes: a module missing from the list is a stale cache,
a module listed but never imported is a needless rerun (hours on a real model).
"""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from cwa.pipeline.dvc_yaml import (
    closure,
    cwa_imports,
    declarations,
    render,
    stage_table,
    with_table,
)
from cwa.pipeline.paths import CHECKED, KJV_WHEEL, LM_EVAL_CONFIGS, LOCK, WEB_WHEEL

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "src" / "cwa"


def test_dvc_yaml_and_the_stage_table_are_generated_from_the_stage_declarations():
    """Run `python -m cwa.pipeline.dvc_yaml` after changing a stage's STAGE or imports."""
    stages = declarations()
    assert (ROOT / "dvc.yaml").read_text() == render(stages), "dvc.yaml is stale: regenerate it"
    docs = (ROOT / "docs" / "pipeline.md").read_text()
    assert docs == with_table(docs, stage_table(stages)), "docs/pipeline.md's stage table is stale"
    assert "| `member@<label>` |" in docs and "`study/members/<label>`" in docs


def test_every_path_a_stage_reads_is_written_by_a_stage_or_is_a_source():
    """A typo in a path (or a table nobody writes) fails here, not after an hour of `dvc repro`."""
    stages = declarations()
    written = {p for s in stages.values() for p in [*s.writes.values(), *s.records.values()]}
    sources = {KJV_WHEEL, WEB_WHEEL, LM_EVAL_CONFIGS}
    unknown = {
        f"{stage.name}: {path}"
        for stage in stages.values()
        for path in stage.reads.values()
        if path not in written | sources and not any(w.startswith(f"{path}/") for w in written)
    }
    assert not unknown, f"read but never written: {sorted(unknown)}"


def stages() -> dict[str, dict]:
    """name -> {cmd, deps, outs} as dvc.yaml writes them (foreach bodies once)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    out = {}
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        out[name] = {
            "cmd": body["cmd"],
            "deps": [str(d) for d in body["deps"]],
            "outs": [
                next(iter(o)) if isinstance(o, dict) else str(o)
                for field in ("outs", "metrics", "plots")
                for o in body.get(field, [])
            ],
        }
    return out


def test_every_stage_depends_on_exactly_its_script_and_import_closure():
    wrong = {}
    for name, stage in stages().items():
        script = re.search(r"python (stages/\w+\.py)", stage["cmd"]).group(1)
        want = {script} | {f"src/cwa/{m}.py" for m in closure(ROOT / script)}
        code = {d for d in stage["deps"] if d.startswith(("stages/", "src/"))}
        if code != want:
            wrong[name] = sorted(want)
        checked = CHECKED in stage["deps"]
        assert checked == (name != "check_params"), f"{name}: depends on check_params' output?"
        locked = LOCK in stage["deps"]
        assert locked == (name != "check_params"), f"{name}: depends on the environment lock?"
    assert not wrong, "dvc.yaml code deps should be:\n" + "\n".join(
        f"  {name}: {deps}" for name, deps in wrong.items()
    )


def test_every_path_a_stage_is_given_is_a_dependency_or_an_output():
    """A path on a stage's command line that is neither a dep nor an out is read without DVC
    knowing (a stale cache) or written without DVC keeping it. Manifests and logs are run records
    kept in git; `${key}` is the foreach member's own name."""
    unknown = {}
    for name, stage in stages().items():
        args = re.findall(r"--([\w-]+) (\S+)", stage["cmd"])
        known = set(stage["deps"]) | set(stage["outs"])
        missing = [
            f"--{flag} {path}"
            for flag, path in args
            if flag not in ("manifest", "name", "label")
            and path not in known
            and not any(out.startswith(f"{path}/") for out in stage["outs"])  # an output folder
            and not any(path.startswith(f"{out}/") for out in stage["outs"])  # a file in one
        ]
        if missing:
            unknown[name] = missing
    assert not unknown, f"paths DVC does not track: {unknown}"


def test_no_import_cycle_in_the_library():
    graph = {
        str(p.relative_to(LIB).with_suffix("")): cwa_imports(p) - {"__init__"}
        for p in LIB.rglob("*.py")
    }

    def visit(module, path):
        assert module not in path, "import cycle: " + " -> ".join([*path, module])
        for other in sorted(graph[module]):
            visit(other, [*path, module])

    for module in sorted(graph):
        visit(module, [])


# The library's subpackages, lowest first: each may import only itself and those before it, so a
# concern never reaches up into what is built on it (the pipeline, the report, the command line,
# the notebook API).
LAYERS = (
    "schemas", "core", "config", "data", "models", "evaluation", "scoring", "selection",
    "experiments", "analysis", "report", "pipeline", "cli", "api",
)  # fmt: skip


def test_every_module_sits_in_a_layer_and_imports_no_layer_above_its_own():
    flat = sorted(p.name for p in LIB.glob("*.py") if p.name != "__init__.py")
    assert not flat, f"modules outside any subpackage: {flat}"
    packages = {p.name for p in LIB.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS), f"subpackages not in LAYERS: {packages ^ set(LAYERS)}"
    upward = []
    for path in LIB.rglob("*.py"):
        own = path.relative_to(LIB).parts[0]
        for module in cwa_imports(path) - {"__init__"}:
            other = module.split("/")[0]
            if LAYERS.index(other) > LAYERS.index(own):
                upward.append(f"{path.relative_to(LIB)} imports {module}")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check reads what a module imports: a core module that imported the report would show."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from cwa.report.plots import stability\n")
    assert "report/plots" in cwa_imports(module)


def test_closures_stay_small():
    """The edges that made every stage import most of the library stay cut: validation imports
    no registry, training and the corpus import no metric, and nothing imports the report."""
    assert "scoring/metrics" not in closure(ROOT / "stages" / "train.py")
    assert "scoring/metrics" not in closure(ROOT / "stages" / "baseline.py")
    assert "report/plots" not in closure(ROOT / "stages" / "perturb.py")
    assert closure(ROOT / "stages" / "corpus.py") == {
        "__init__", "core/__init__", "core/devices", "core/io", "core/progress",
        "config/__init__", "config/params", "data/__init__", "data/corpus",
        "pipeline/__init__", "pipeline/paths", "pipeline/stage", "schemas/__init__",
        "schemas/corpus",
    }  # fmt: skip
    assert "schemas/effects" not in closure(ROOT / "stages" / "train.py")


# Stages that read and write text and tables only: each starts in well under a second.
TORCH_FREE_STAGES = ("corpus", "tokenizer", "tasks", "sources", "scaling")
HEAVY = ("torch", "transformers", "scipy", "sklearn", "matplotlib", "accelerate", "datasets")


def test_stages_import_heavy_packages_only_where_they_need_them():
    """Every stage is a fresh process, and importing torch takes about 2 s on 2 cores, scipy.stats
    and transformers over 1 s each: the text and table stages import none of them, and no stage
    imports scipy or scikit-learn before the line that computes with them."""
    probe = (
        "import importlib.util, sys\n"
        "for name in sys.argv[1:]:\n"
        "    spec = importlib.util.spec_from_file_location(name, f'stages/{name}.py')\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "    print(name, *sorted({m.split('.')[0] for m in sys.modules}))\n"
    )
    names = sorted(p.stem for p in (ROOT / "stages").glob("*.py"))
    light = [n for n in names if n in TORCH_FREE_STAGES]
    rest = [n for n in names if n not in TORCH_FREE_STAGES]
    assert len(light) == len(TORCH_FREE_STAGES)
    for group in (light, rest):
        run = subprocess.run(
            [sys.executable, "-c", probe, *group], cwd=ROOT, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        for line in run.stdout.splitlines():
            name, *modules = line.split()
            loaded = [m for m in modules if m in HEAVY]
            if name in TORCH_FREE_STAGES:
                assert loaded == [], f"stages/{name}.py imports {loaded}"
            else:  # one process for these: what an earlier stage loaded stays loaded
                assert not {"scipy", "sklearn"} & set(loaded), f"stages/{name}.py: {loaded}"
