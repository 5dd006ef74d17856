"""`cwa`: the old scripts' flags mapped onto params, run as a DVC experiment.

Examples:
  cwa run --metric grad_squared --topk 10,100 --seeds 0,1,2
      one DVC experiment (`dvc exp run -S metric=grad_squared -S topk=[10,100] ...`)
  cwa run --model gpt2 --metric grad_x_weight grad_squared --topk 50 100 500 --eval-limit 100
      an old runner's command as written: one experiment per metric, then both side by side
  cwa run --calib-data c4-sample.jsonl --eval-data hf:wikitext:wikitext-2-raw-v1:test --bos
      your own calibration and evaluation text (docs/params.md: calib_data, eval_data)
  cwa run --dry-run ...
      check everything and print the `dvc exp run` command(s), starting nothing
  cwa run --model ./my-llama --dtype bfloat16 --perturb zero,sign_flip --controls random_k
  cwa run --model ./llama-8b --dtype bfloat16 --num-processes 8     (one GPU per process)
  cwa run --preset configs/full.yaml --name full
      the full sweep (more windows, strengths, mask ratios and fault draws) as one experiment
  cwa run --metric grad_x_weight --perturb zero,sign_flip --out-dir results/gxw
      ... and copy the report, metrics and result tables to results/gxw afterwards (several
      metrics: results/gxw/<metric>/ each), with top_<k>_weights_<metric>.csv from the ranking
  cwa export results/last
      the same copy of the workspace's last run
  cwa show
      the headline numbers and top-vs-control table of the workspace's last run
  cwa show --exp pally-sacs
      the same for a named DVC experiment (see `dvc exp show`), with the params it changed
  cwa doctor [--model ./llama-8b --dtype bfloat16 --batch-size 4 --seq-len 2048]
      versions, devices with their free memory, and what the memory guard would allow for the
      model here (estimated from its config; nothing is loaded)
  cwa readme [--write]
      check (or rewrite) README.md's results section against artifacts/metrics.json
  cwa verify [--rev HEAD] [--rtol 1e-4]
      after `dvc repro`: which outputs match what the committed dvc.lock records, and by how much
      the others differ
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from cwa import CwaError
from cwa.cli.export import RANKING, export
from cwa.cli.old_flags import Plan, add_flags, translate
from cwa.config.params import params_from_dict, read_yaml


def validate_everything(raw: dict):
    """Params with every registry's names checked (each registry adds its checks on import), and
    what the machine and the model's shape allow (cwa.pipeline.feasibility)."""
    import cwa.pipeline.load_registries  # noqa: F401
    from cwa.pipeline.feasibility import check

    params = params_from_dict(raw)
    check(params)
    return params


def preset(path: str | None) -> dict:
    """A named set of param values (e.g. configs/full.yaml), applied as `-S` overrides."""
    if path is None:
        return {}
    try:
        values = read_yaml(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CwaError(f"--preset {path}: cannot read it ({err})") from err
    if not isinstance(values, dict):
        raise CwaError(f"--preset {path}: must hold a mapping of param keys to values")
    return values


def read_params_file(path: str) -> dict:
    """The project's params.yaml as a mapping (cwa run and doctor start from it)."""
    params_file = Path(path)
    if not params_file.exists():
        raise CwaError(f"{params_file} not found: run cwa from the project root")
    raw = read_yaml(params_file.read_text()) or {}
    if not isinstance(raw, dict):
        raise CwaError(f"params file {params_file} must hold a mapping of keys to values")
    return raw


def cmd_run(args) -> int:
    raw = read_params_file(args.params)
    plan = translate(args)
    for note in plan.notes:
        print(f"cwa: {note}", file=sys.stderr)
    commands = []
    for changes in plan.runs:  # fail before DVC starts: every key, every text source
        changes = preset(args.preset) | changes
        check_text(validate_everything(raw | changes), Path(args.artifacts))
        commands.append(exp_command(changes, _name(args, plan, changes), plan.targets))
    if args.dry_run:
        print("\n".join(shlex.join(cmd) for cmd in commands))
        return 0
    for cmd, changes in zip(commands, plan.runs, strict=True):
        print("+", shlex.join(cmd), file=sys.stderr)
        code = subprocess.run(cmd, check=False).returncode
        if code != 0:
            return code
        if args.out_dir:  # each run's results before the next run replaces them
            out = Path(args.out_dir)
            out = out / changes["metric"] if len(plan.runs) > 1 else out
            export(Path(args.artifacts), out, plan.targets)
            print(f"results copied to {out}", file=sys.stderr)
    if len(commands) > 1:
        print(side_by_side([_name(args, plan, c) for c in plan.runs]))
    return 0


def exp_command(changes: dict, name: str | None, targets: list[str]) -> list[str]:
    """`dvc exp run` (the dvc of this environment) with one -S per changed key."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", *targets]
    for key, value in changes.items():
        text = json.dumps(value) if isinstance(value, list | bool) else str(value)
        cmd += ["-S", f"{key}={text}"]
    return cmd + (["--name", name] if name else [])


def _name(args, plan: Plan, changes: dict) -> str | None:
    """The experiment's name: --name, with the metric appended when one command runs several."""
    if len(plan.runs) == 1:
        return args.name
    return f"{args.name or 'run'}-{changes['metric']}".replace("_", "-")


def check_text(params, artifacts: Path) -> None:
    """Reads the text sources that are not built in, as the sources stage will, and counts
    their windows with the model's tokenizer when it is at hand (built, local or cached)."""
    from cwa.data.sources import user_sources
    from cwa.data.text_folder import Text
    from cwa.data.windows import text_windows

    sources = user_sources(
        params.calib_data, params.eval_data, params.finetune_data, params.data_field
    )
    tokenizer = _tokenizer(params.model, artifacts / "models") if sources else None
    for s in sources if tokenizer is not None else ():
        key, count = (
            ("calib_samples", params.calib_samples)
            if s.key == "calib_data"
            else ("eval_samples", params.eval_samples)
        )
        text_windows(
            tokenizer, Text(s.documents, s.record()), params.seq_len, params.bos, key, count
        )


def _tokenizer(model: str, models_dir: Path):
    """The model's tokenizer from its directory or the local cache; None where it needs the hub
    (the stage reports that later, when it loads the model)."""
    from transformers import AutoTokenizer

    from cwa.models.loading import BUILTIN

    source = models_dir / model.removeprefix(BUILTIN) if model.startswith(BUILTIN) else model
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError):
        return None


def cmd_show(args) -> int:
    from cwa.report.sections import fmt

    if args.exp and len(args.exp) > 1:
        print(side_by_side(args.exp))
        return 0
    name = args.exp[0] if args.exp else None
    metrics, pooled, changed = _experiment(name) if name else _workspace(args)
    if name:
        print(
            f"experiment {name}: "
            + (", ".join(f"{k}={v}" for k, v in changed) or "no param changes")
        )
    for key in sorted(metrics):
        print(f"{key:>24}: {fmt(metrics[key])}")
    summary = Path(args.artifacts) / "report" / "summary.json"
    if not name and summary.exists():  # the run summary: what caused the largest ΔPPL
        by = json.loads(summary.read_text()).get("run", {}).get("largest_delta_ppl_by")
        if by:
            print(f"{'largest_delta_ppl_by':>24}: {by}")
    if pooled is not None:
        from cwa.report.sections import comparisons_table, table

        print()
        print(table(comparisons_table(pooled, metrics["headline_k"])))
    return 0


def side_by_side(names: list[str]) -> str:
    """Several experiments' changed params and headline metrics, one column each."""
    from cwa.report.sections import fmt

    runs = {name: _experiment(name) for name in names}
    changed = sorted({k for _, _, c in runs.values() for k, _ in c})
    keys = sorted({k for m, _, _ in runs.values() for k in m})
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in changed:
        values = [dict(runs[n][2]).get(key, "") for n in names]
        lines.append(f"| {key} | " + " | ".join(str(v) for v in values) + " |")
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(fmt(runs[n][0].get(key)) for n in names) + " |")
    return "\n".join(lines)


def _workspace(args):
    import polars as pl

    metrics_path = Path(args.artifacts) / "metrics.json"
    if not metrics_path.exists():
        raise CwaError(f"{metrics_path} not found: run the pipeline first (`dvc repro`)")
    pooled = pl.read_parquet(Path(args.artifacts) / "perturb" / "pooled.parquet")
    return json.loads(metrics_path.read_text()), pooled, []


def _experiment(name: str):
    """Metrics, pooled comparisons table and changed params of a named experiment, from DVC."""
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
                    path = "artifacts/perturb/pooled.parquet"
                    with dvc.api.open(path, rev=rev["rev"], mode="rb") as f:
                        pooled = pl.read_parquet(io.BytesIO(f.read()))
                    return metrics, pooled, changed
    known = ", ".join(n for n in names if n) or "none"
    raise CwaError(f"no experiment named {name!r}; experiments: {known}")


def cmd_readme(args) -> int:
    from cwa.report.readme import sync

    if sync(Path(args.readme), Path(args.artifacts), args.write):
        return 0
    print(
        f"{args.readme}: the results section disagrees with {args.artifacts}/metrics.json; "
        "`cwa readme --write` rewrites it",
        file=sys.stderr,
    )
    return 1


def cmd_export(args) -> int:
    artifacts = Path(args.artifacts)
    if not (artifacts / RANKING).exists():
        raise CwaError(f"{artifacts / RANKING} not found: run the pipeline first")
    export(artifacts, Path(args.out_dir))
    print(f"results copied to {args.out_dir}", file=sys.stderr)
    return 0


def cmd_doctor(args) -> int:
    from cwa.cli.doctor import report

    raw = read_params_file(args.params)
    given = {
        "model": args.model,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
    }
    params = validate_everything(raw | {k: v for k, v in given.items() if v is not None})
    print("\n".join(report(params)))
    return 0


def cmd_verify(args) -> int:
    from cwa.pipeline.verify import format_report, verify

    report = verify(Path("."), args.rev, args.rtol, args.atol)
    print(format_report(report))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cwa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the pipeline as a DVC experiment with these settings",
        description="Old runner flags are accepted as written; docs/old-flags.md maps each.",
    )
    add_flags(run)
    run.add_argument("--preset", help="a params file whose keys override params.yaml")
    run.add_argument("--name", "--experiment-id", help="experiment name for `dvc exp show`")
    run.add_argument(
        "--out-dir",
        "--output",
        "--outdir",
        help="copy the report, metrics and result tables here afterwards",
    )
    run.add_argument("--dry-run", action="store_true", help="validate, print the commands, stop")
    run.add_argument("--artifacts", default="artifacts", help=argparse.SUPPRESS)
    run.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)
    show = sub.add_parser("show", help="print the headline metrics and top-vs-control table")
    show.add_argument("--artifacts", default="artifacts")
    show.add_argument(
        "--exp",
        nargs="+",
        help="named DVC experiment(s) instead of the workspace; several: side by side",
    )
    show.set_defaults(func=cmd_show)
    out = sub.add_parser(
        "export",
        help="copy the report, metrics, tables and top_<k>_weights_<metric>.csv to a directory",
    )
    out.add_argument("out_dir", help="the directory to write (replaced whole)")
    out.add_argument("--artifacts", default="artifacts")
    out.set_defaults(func=cmd_export)
    doctor = sub.add_parser(
        "doctor", help="versions, devices and free memory, and what the memory guard allows"
    )
    doctor.add_argument("--model", help="instead of params.yaml's model")
    doctor.add_argument("--dtype", help="instead of params.yaml's dtype")
    doctor.add_argument("--batch-size", type=int, help="instead of params.yaml's batch_size")
    doctor.add_argument("--seq-len", type=int, help="instead of params.yaml's seq_len")
    doctor.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    doctor.set_defaults(func=cmd_doctor)
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
    args, unknown = build_parser().parse_known_args(argv)
    try:
        if unknown:
            raise CwaError(
                f"unknown flag(s) {' '.join(unknown)}: set any param with --set KEY=VALUE "
                "(docs/params.md); the old runners' flags: docs/old-flags.md"
            )
        return args.func(args)
    except CwaError as err:
        print(f"cwa: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
