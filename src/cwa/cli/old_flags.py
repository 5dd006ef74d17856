"""`cwa run`'s flags: cwa's own and the old runners' spellings, translated into params.

Lists take spaces or commas (`--topk 50 100 500`, `--seeds 0,1,2`); old value names are mapped
(`layerwise`, `hessian_diag`, `gaussian_noise`, `bf16`, ...); switches whose work cwa always
does are accepted with a note saying so. docs/old-flags.md has the whole table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import yaml

from cwa import CwaError
from cwa.config.params import read_yaml

LIST = "list"


@dataclass(frozen=True)
class Flag:
    """A value flag: its spellings, the params key it sets, how its value parses, and the old
    value names it maps."""

    spellings: tuple[str, ...]
    key: str
    kind: type | str
    help: str
    aliases: dict[str, str] = field(default_factory=dict)


FLAGS = (
    Flag(("--model",), "model", str, "hub id, local directory or builtin:<name>"),
    Flag(
        ("--metric",),
        "metric",
        LIST,
        "sensitivity metric; several run one experiment each",
        {"hessian_diag": "hutchinson_diag"},
    ),
    Flag(("--topk",), "topk", LIST, "every k ranked and perturbed"),
    Flag(
        ("--mode",),
        "mode",
        str,
        "ranking mode",
        {"layerwise": "per_layer", "layer_wise": "per_layer", "head_wise": "per_head"},
    ),
    Flag(
        ("--perturb",),
        "perturb",
        LIST,
        "perturbations (the headline: zero if listed, else the first)",
        {"gaussian_noise": "gauss_rel", "gauss_noise": "gauss_rel", "magnitude_scale": "scale"},
    ),
    Flag(("--controls",), "controls", LIST, "control selections"),
    Flag(("--seeds",), "seeds", LIST, "calibration seeds"),
    Flag(("--max-samples",), "calib_samples", int, "calibration windows per seed"),
    Flag(("--eval-limit",), "eval_samples", int, "evaluation windows"),
    Flag(("--max-length",), "seq_len", int, "tokens per window"),
    Flag(
        ("--dtype",),
        "dtype",
        str,
        "weight dtype",
        {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16"},
    ),
    Flag(("--device",), "device", str, "auto, cpu, cuda or cuda:N"),
    Flag(("--device-map",), "device_map", str, "split one model over GPUs"),
    Flag(("--num-processes",), "num_processes", int, "data-parallel processes"),
    Flag(("--layers",), "layers", LIST, "transformer blocks kept in the pool"),
    Flag(("--headline-k",), "headline_k", int, "k of the headline (default: 100 or the middle k)"),
    Flag(("--calib-data",), "calib_data", str, "calibration text source"),
    Flag(("--eval-data",), "eval_data", str, "evaluation text source"),
    Flag(("--data-field",), "data_field", str, "JSONL field or column holding the text"),
    Flag(("--perturbation-ratios",), "mask_ratios", LIST, "fractions of each set perturbed"),
)

# Switches whose work cwa always does: accepted, and a note says what happens instead.
ALWAYS = {
    "--stability-check": "the stability stage always compares every seed's top-k sets",
    "--save-plots": "the report always draws its figures (artifacts/report/*.png)",
    "--verbose": "every stage always logs its progress to logs/<stage>.log",
    "--fast-perturbation": "the evaluation set is `eval_samples` windows; --eval-limit sets it",
    "--weight-analysis": (
        "the agreement stage (overlap and Spearman between metrics), per-tensor score "
        "statistics, the clusters stage (K-means and DBSCAN of the top weights by score, "
        "magnitude, seed spread, depth and component) and the correlation stage (how the "
        "layers' sensitivities move together across windows) always run"
    ),
    "--architecture-analysis": (
        "the report's layer x component heatmap always shows where the top-k weights sit; "
        "--mode per_component ranks within each component"
    ),
    "--temporal-stability": "the stability stage always runs over `seeds`",
    "--downstream-tasks": "`tasks` (kjv_lambada, kjv_hellaswag) and `lm_eval_tasks` always run",
}
# Switches that change what runs.
SWITCHES = {
    "--no-downstream-tasks": "no downstream tasks (tasks: [], lm_eval_tasks: [])",
    "--advanced-perturbations": "every registered perturbation, each with its strength sweep",
    "--no-perturbation": "sensitivity and ranking only (`dvc exp run rank`)",
    "--bos": "every window starts with the tokenizer's BOS token (bos: true)",
}


@dataclass
class Plan:
    """What `cwa run` will do: one set of -S overrides per experiment, the notes to print, the
    DVC targets (empty: the whole pipeline)."""

    runs: list[dict]
    notes: list[str]
    targets: list[str]


def add_flags(run: argparse.ArgumentParser) -> None:
    for flag in FLAGS:
        nargs = "+" if flag.kind == LIST else None
        hint = "list, spaces or commas" if flag.kind == LIST else flag.kind.__name__
        run.add_argument(
            *flag.spellings,
            dest=flag.key,
            nargs=nargs,
            help=f"{flag.help} (params `{flag.key}`; {hint})",
        )
    run.add_argument("--data-file", "--texts", dest="data_file", help="calib_data and eval_data")
    run.add_argument("--perturb-scale", type=float, help="intensity of scale/gauss perturbations")
    run.add_argument("--perturb-prob", type=float, help="bit_flip_p probability (flip_prob)")
    run.add_argument("--mask", help="old: the masking perturbation (zero)")
    run.add_argument("--eval", help="old: what is evaluated (ppl: always measured)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any param")
    for switch in (*ALWAYS, *SWITCHES):
        run.add_argument(switch, action="store_true", help=ALWAYS.get(switch, SWITCHES.get(switch)))


def _values(flag: Flag, given: list[str] | str):
    """Parses a flag's value(s): lists split on spaces and commas, old names mapped."""
    try:
        if flag.kind == LIST:
            items = [t.strip() for token in given for t in token.split(",") if t.strip()]
            return [read_yaml(flag.aliases.get(t, t)) for t in items]
        return flag.kind(flag.aliases.get(given, given))
    except (ValueError, yaml.YAMLError) as err:
        kind = "list" if flag.kind == LIST else flag.kind.__name__
        shown = " ".join(given) if isinstance(given, list) else given
        raise CwaError(f"{flag.spellings[0]} {shown!r} is not a valid {kind}") from err


def translate(args: argparse.Namespace) -> Plan:
    """The flags given, as params overrides (one set per metric), notes and DVC targets."""
    changes, notes = {}, []
    for flag in FLAGS:
        given = getattr(args, flag.key)
        if given is not None:
            value = _values(flag, given)
            changes[flag.key] = value
            tokens = given if isinstance(given, list) else [given]
            renamed = sorted({t for tok in tokens for t in tok.split(",") if t in flag.aliases})
            notes += [f"{flag.spellings[0]} {t}: cwa calls it {flag.aliases[t]}" for t in renamed]
    if args.data_file:
        changes["calib_data"] = changes["eval_data"] = args.data_file
        notes.append(
            f"--data-file {args.data_file}: calibration and evaluation read it, cut into two "
            "disjoint halves (calib_data and eval_data)"
        )
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CwaError(f"--set {pair!r}: write KEY=VALUE, e.g. --set bos=true")
        changes[key.strip()] = read_yaml(value)
    _old_values(args, changes, notes)
    _switches(args, changes, notes)
    _strengths(args, changes, notes)
    _headline_k(changes, notes)
    metrics = changes.pop("metric", None)
    metrics = metrics if isinstance(metrics, list) else [metrics] if metrics else [None]
    runs = [changes | ({"metric": m} if m else {}) for m in metrics]
    return Plan(runs, notes, ["rank"] if args.no_perturbation else [])


def _old_values(args, changes: dict, notes: list[str]) -> None:
    if "mask_ratios" in changes:
        ratios = [r for r in changes["mask_ratios"] if r != 1.0]
        if len(ratios) != len(changes["mask_ratios"]):
            notes.append("--perturbation-ratios 1.0: the whole set always runs")
        changes["mask_ratios"] = ratios  # empty: whole selections only
    if args.mask is not None:
        if args.mask != "zero":
            raise CwaError(f"--mask {args.mask!r}: only zero masks; other perturbations: --perturb")
        changes["perturb"] = ["zero", *[p for p in changes.get("perturb", []) if p != "zero"]]
    if args.eval is not None and args.eval != "ppl":
        raise CwaError(
            f"--eval {args.eval!r}: cwa always measures perplexity (ppl) and next-token "
            "accuracy; downstream tasks are params `tasks` and `lm_eval_tasks`"
        )


def _switches(args, changes: dict, notes: list[str]) -> None:
    for switch, what in ALWAYS.items():
        if getattr(args, switch.lstrip("-").replace("-", "_")):
            notes.append(f"{switch}: nothing to switch on, {what}")
    if args.no_downstream_tasks:
        changes |= {"tasks": [], "lm_eval_tasks": []}
    if args.advanced_perturbations and "perturb" not in changes:
        changes["perturb"] = every_perturbation()
        notes.append(f"--advanced-perturbations: perturb = {changes['perturb']}")
    if args.bos:
        changes["bos"] = True


def _strengths(args, changes: dict, notes: list[str]) -> None:
    """--perturb-scale / --perturb-prob: the strength of every listed perturbation whose sweep is
    an intensity / a probability (cwa.experiments.perturbations.Sweep.kind)."""
    from cwa.experiments.perturbations import PERTURBATIONS, get_perturbation

    for value, kind, flag in (
        (args.perturb_scale, "intensity", "--perturb-scale"),
        (args.perturb_prob, "probability", "--perturb-prob"),
    ):
        if value is None:
            continue
        listed = changes.get("perturb") or []
        if flag == "--perturb-prob" and "bit_flip" in listed and "bit_flip_p" not in listed:
            listed = [p if p != "bit_flip" else "bit_flip_p" for p in listed]
            changes["perturb"] = listed
            notes.append(
                f"--perturb bit_flip --perturb-prob {value:g}: the old runner's probabilistic bit "
                f"flip is bit_flip_p (each bit of each weight flips with probability {value:g}); "
                f"perturb = {listed}"
            )
        known = [get_perturbation(p) for p in listed if p in PERTURBATIONS]
        hits = [p.sweep.key for p in known if p.sweep and p.sweep.kind == kind]
        for key in hits:
            changes[key] = [value]
        if hits:
            continue
        if flag == "--perturb-scale" and value == 1.0:
            notes.append(
                f"--perturb-scale 1.0: {', '.join(listed) or 'no perturbation listed'} has no "
                "intensity (sign_flip is w → −w): nothing to scale"
            )
            continue
        takers = [p for p in PERTURBATIONS.items() if p.sweep and p.sweep.kind == kind]
        raise CwaError(
            f"{flag} {value}: none of the perturbations {listed or '(none given)'} takes it; "
            f"it sets {', '.join(p.sweep.key for p in takers)} of "
            f"{', '.join(p.name for p in takers)}: add one to --perturb"
        )


def every_perturbation() -> list[str]:
    """Every registered perturbation once (aliases left out), `zero` first: the headline."""
    from cwa.experiments.perturbations import PERTURBATIONS

    names = sorted(p.name for p in PERTURBATIONS.items())
    return ["zero", *[n for n in names if n != "zero"]]


def _headline_k(changes: dict, notes: list[str]) -> None:
    """headline_k follows topk when not given: 100 when listed, otherwise the middle k."""
    topk = changes.get("topk")
    valid = topk and all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in topk)
    if not valid or "headline_k" in changes:
        return  # params validation names what is wrong with topk
    ordered = sorted(set(topk))
    changes["headline_k"] = 100 if 100 in ordered else ordered[len(ordered) // 2]
    if changes["headline_k"] != 100:
        notes.append(f"--topk {topk}: the headline uses k = {changes['headline_k']}")
