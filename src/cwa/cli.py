"""`cwa`: the old scripts' flags mapped onto params, run as a DVC experiment.

Examples:
  cwa run --metric grad_squared --topk 10,100 --seeds 0,1,2
      one DVC experiment (`dvc exp run -S metric=grad_squared -S topk=[10,100] ...`)
  cwa run --model ./my-llama --dtype bfloat16 --perturb zero,sign_flip --controls random_k
  cwa show
      the headline numbers and effects table of the workspace's last run
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


def cmd_run(args) -> int:
    params_file = Path(args.params)
    if not params_file.exists():
        raise CwaError(f"{params_file} not found: run cwa from the project root")
    raw = yaml.safe_load(params_file.read_text()) or {}
    if not isinstance(raw, dict):
        raise CwaError(f"params file {params_file} must hold a mapping of keys to values")
    changes = overrides(args)
    params_from_dict(raw | changes)  # fail before DVC starts
    cmd = ["dvc", "exp", "run"]
    for key, value in changes.items():
        cmd += ["-S", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
    if args.name:
        cmd += ["--name", args.name]
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=False).returncode


def cmd_show(args) -> int:
    import polars as pl

    from cwa.report import comparisons_table, fmt, table

    metrics_path = Path(args.artifacts) / "metrics.json"
    if not metrics_path.exists():
        raise CwaError(f"{metrics_path} not found: run the pipeline first (`dvc repro`)")
    metrics = json.loads(metrics_path.read_text())
    for key in sorted(metrics):
        print(f"{key:>18}: {fmt(metrics[key])}")
    comparisons = pl.read_parquet(Path(args.artifacts) / "perturb" / "comparisons.parquet")
    print()
    print(table(comparisons_table(comparisons, metrics["headline_k"])))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cwa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline as a DVC experiment with these settings")
    for flag, (key, kind) in FLAGS.items():
        hint = "comma-separated list" if kind == _LIST else kind.__name__
        run.add_argument(f"--{flag.replace('_', '-')}", help=f"params `{key}` ({hint})")
    run.add_argument("--name", help="experiment name for `dvc exp show`")
    run.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)
    show = sub.add_parser("show", help="print the headline metrics and effects table")
    show.add_argument("--artifacts", default="artifacts")
    show.set_defaults(func=cmd_show)
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
