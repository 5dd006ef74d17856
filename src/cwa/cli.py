"""`cwa`: the old scripts' flags mapped onto params, run as a DVC experiment.

Examples:
  cwa run --metric grad_squared --topk 10,100 --seeds 0,1,2
      one DVC experiment (`dvc exp run -S metric=grad_squared -S topk=[10,100] ...`)
  cwa run --model ./my-llama --dtype bfloat16 --perturb zero,sign_flip --controls random_k
  cwa run --model ./llama-8b --dtype bfloat16 --num-processes 8     (one GPU per process)
  cwa run --preset configs/full.yaml --name full
      the full sweep (more windows, strengths, mask ratios and fault draws) as one experiment
  cwa run --metric grad_x_weight --perturb zero,sign_flip --out-dir results/gxw
      ... and copy the report, metrics and result tables to results/gxw afterwards
  cwa show
      the headline numbers and top-vs-control table of the workspace's last run
  cwa show --exp pally-sacs
      the same for a named DVC experiment (see `dvc exp show`), with the params it changed
  cwa readme [--write]
      check (or rewrite) README.md's results section against artifacts/metrics.json
  cwa verify [--rev HEAD] [--rtol 1e-4]
      after `dvc repro`: which outputs match what the committed dvc.lock records, and by how much
      the others differ
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from cwa import CwaError
from cwa.params import params_from_dict

# flag -> (params key, parser)
_LIST = "list"
FLAGS = {
    "model": ("model", str),
    "metric": ("metric", str),
    "mode": ("mode", str),
    "topk": ("topk", _LIST),
    "perturb": ("perturb", _LIST),
    "controls": ("controls", _LIST),
    "seeds": ("seeds", _LIST),
    "max_samples": ("calib_samples", int),
    "max_length": ("seq_len", int),
    "dtype": ("dtype", str),
    "device": ("device", str),
    "device_map": ("device_map", str),
    "num_processes": ("num_processes", int),
}


def _parse_list(text: str) -> list:
    return [yaml.safe_load(v.strip()) for v in text.split(",") if v.strip()]


def overrides(args: argparse.Namespace) -> dict:
    out = {}
    for flag, (key, kind) in FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        try:
            out[key] = _parse_list(value) if kind == _LIST else kind(value)
        except (ValueError, yaml.YAMLError) as err:
            name = flag.replace("_", "-")
            raise CwaError(
                f"--{name} {value!r} is not a valid {kind if kind == _LIST else kind.__name__}"
            ) from err
    return out


def validate_everything(raw: dict):
    """Params with every registry's names checked (each registry adds its checks on import)."""
    import cwa.registries  # noqa: F401

    return params_from_dict(raw)


def preset(path: str | None) -> dict:
    """A named set of param values (e.g. configs/full.yaml), applied as `-S` overrides."""
    if path is None:
        return {}
    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CwaError(f"--preset {path}: cannot read it ({err})") from err
    if not isinstance(values, dict):
        raise CwaError(f"--preset {path}: must hold a mapping of param keys to values")
    return values


def cmd_run(args) -> int:
    params_file = Path(args.params)
    if not params_file.exists():
        raise CwaError(f"{params_file} not found: run cwa from the project root")
    raw = yaml.safe_load(params_file.read_text()) or {}
    if not isinstance(raw, dict):
        raise CwaError(f"params file {params_file} must hold a mapping of keys to values")
    changes = preset(args.preset) | overrides(args)
    validate_everything(raw | changes)  # fail before DVC starts
    cmd = [sys.executable, "-m", "dvc", "exp", "run"]  # the dvc of this environment
    for key, value in changes.items():
        cmd += ["-S", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
    if args.name:
        cmd += ["--name", args.name]
    print("+", " ".join(cmd), file=sys.stderr)
    code = subprocess.run(cmd, check=False).returncode
    if code == 0 and args.out_dir:
        export(Path(args.artifacts), Path(args.out_dir))
        print(f"results copied to {args.out_dir}", file=sys.stderr)
    return code


# What `--out-dir` receives: the files a reader of the old scripts' output directory expects.
EXPORTS = (
    "metrics.json",
    "report",
    "perturb/effects.parquet",
    "perturb/comparisons.parquet",
    "perturb/tasks.parquet",
    "rank/ranking.parquet",
    "faults/summary.parquet",
)


def export(artifacts: Path, out_dir: Path) -> None:
    """Copies the run's results into out_dir, whole or not at all (temp dir, then rename)."""
    import shutil

    from cwa.io import atomic_write

    def write(tmp: Path):
        for item in EXPORTS:
            src, dest = artifacts / item, tmp / item
            dest.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest)

    atomic_write(out_dir, write)


def cmd_show(args) -> int:
    from cwa.report import fmt

    metrics, comparisons, changed = _experiment(args.exp) if args.exp else _workspace(args)
    if args.exp:
        print(
            f"experiment {args.exp}: "
            + (", ".join(f"{k}={v}" for k, v in changed) or "no param changes")
        )
    for key in sorted(metrics):
        print(f"{key:>24}: {fmt(metrics[key])}")
    if comparisons is not None:
        from cwa.report import comparisons_table, table

        print()
        print(table(comparisons_table(comparisons, metrics["headline_k"])))
    return 0


def _workspace(args):
    import polars as pl

    metrics_path = Path(args.artifacts) / "metrics.json"
    if not metrics_path.exists():
        raise CwaError(f"{metrics_path} not found: run the pipeline first (`dvc repro`)")
    comparisons = pl.read_parquet(Path(args.artifacts) / "perturb" / "comparisons.parquet")
    return json.loads(metrics_path.read_text()), comparisons, []


def _experiment(name: str):
    """Metrics, comparisons table and changed params of a named experiment, from DVC."""
    import io

    import dvc.api
    import polars as pl

    done = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise CwaError(f"`dvc exp show` failed: {done.stderr.strip()[-300:]}")
    names = []
    for commit in json.loads(done.stdout):
        base = (commit.get("data") or {}).get("params", {}).get("params.yaml", {}).get("data", {})
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                names.append(rev.get("name"))
                if rev.get("name") == name:
                    data = rev["data"]
                    metrics = data["metrics"]["artifacts/metrics.json"]["data"]
                    params = data["params"]["params.yaml"]["data"]
                    changed = [(k, v) for k, v in params.items() if base.get(k) != v]
                    path = "artifacts/perturb/comparisons.parquet"
                    with dvc.api.open(path, rev=rev["rev"], mode="rb") as f:
                        comparisons = pl.read_parquet(io.BytesIO(f.read()))
                    return metrics, comparisons, changed
    known = ", ".join(n for n in names if n) or "none"
    raise CwaError(f"no experiment named {name!r}; experiments: {known}")


def cmd_readme(args) -> int:
    from cwa.readme import sync

    if sync(Path(args.readme), Path(args.artifacts), args.write):
        return 0
    print(
        f"{args.readme}: the results section disagrees with {args.artifacts}/metrics.json; "
        "`cwa readme --write` rewrites it",
        file=sys.stderr,
    )
    return 1


def cmd_verify(args) -> int:
    from cwa.verify import format_report, verify

    report = verify(Path("."), args.rev, args.rtol, args.atol)
    print(format_report(report))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cwa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline as a DVC experiment with these settings")
    for flag, (key, kind) in FLAGS.items():
        hint = "comma-separated list" if kind == _LIST else kind.__name__
        run.add_argument(f"--{flag.replace('_', '-')}", help=f"params `{key}` ({hint})")
    run.add_argument("--preset", help="a params file whose keys override params.yaml")
    run.add_argument("--name", help="experiment name for `dvc exp show`")
    run.add_argument("--out-dir", help="copy the report, metrics and result tables here afterwards")
    run.add_argument("--artifacts", default="artifacts", help=argparse.SUPPRESS)
    run.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)
    show = sub.add_parser("show", help="print the headline metrics and top-vs-control table")
    show.add_argument("--artifacts", default="artifacts")
    show.add_argument("--exp", help="a named DVC experiment instead of the workspace")
    show.set_defaults(func=cmd_show)
    readme = sub.add_parser("readme", help="check README.md's results section (--write: update)")
    readme.add_argument("--write", action="store_true", help="rewrite it from the artifacts")
    readme.add_argument("--readme", default="README.md")
    readme.add_argument("--artifacts", default="artifacts")
    readme.set_defaults(func=cmd_readme)
    check = sub.add_parser(
        "verify", help="compare the workspace's outputs with those a committed dvc.lock records"
    )
    check.add_argument("--rev", default="HEAD", help="git revision of the reference dvc.lock")
    check.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for values")
    check.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for values")
    check.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CwaError as err:
        print(f"cwa: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
