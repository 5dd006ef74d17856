"""How each stage's library call scales with model size: time, peak memory, ratio to a plain pass.

    python benchmarks/scale.py [--sizes 0,1,2,3 --windows 8 --seq-len 64 --batch-size 4 --quick
                                --stages prune,rank --out FILE]

On randomly initialised Llamas (SDPA, fp32, CPU, 2 threads) of (hidden, blocks) = (128, 2),
(256, 4), (512, 8), (1024, 12) (heads hidden/64, at least 2; MLP width 8/3 hidden to a multiple
of 8; about 0.9M to 155M parameters), the same seeded windows for every stage. Each stage's core
call (the one its stage module makes: evaluate, compute_scores, rank, sweep.run,
prune_by_activations, in_group + apply_masks, finetune, superweight.detect, reference,
unit_scores + measure_units, faults.campaign, the clusters' features + k-means + DBSCAN,
window_scores, layer_experiments + sweep.run) is measured in a fresh process of this script,
after the model and the call's inputs are built (ranking scores, saved weights, the baseline and
the KL reference the units and faults experiments are measured against: not counted), peak and
time in the same process to keep the run short (one start-up per stage and size, about 5-10 s of
imports). Peak: the first call, the process started with glibc told to map every block of 64 KiB
or more on its own and to return freed memory at once (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_), so the resident set follows the live tensors: the resident high-water
mark (Linux VmHWM, reset through /proc/self/clear_refs) above the resident set before the call.
Time: the best of two later calls (one with --quick), after glibc is switched (mallopt) to keep
freed blocks up to 32 MiB, the most its usual dynamic threshold reaches: mapping and faulting in
every fresh block cost up to 2x a pass at the small sizes. (The other order does not work: once
a heap has grown under the usual allocator, small blocks scattered over its freed pages inflate
the peak by a quarter.) Weights a call changes are put back after each call, untimed.

The threads compete with anything else on the machine: with another busy process on 2 cores, a
2-thread pass ran 10-30x slower than a 1-thread one (threads waiting at each parallel region
for one that is descheduled). Run it on an otherwise idle machine, or with --threads 1.

Memory guards: beside each stage's peak, the estimate its stage's guard makes before it runs
(cwa.models.memory: what the pass holds beyond the weights, which the resident set before the
call already holds), and the estimate over the peak; the guard is meant to be an upper bound
within 25% of it. The stages that evaluate are guarded as one evaluation pass (prepare_stage),
prune's layer-wise methods by pruning_estimate (less the dense copy, made here before the call);
denominators and rank have no guard.

Ratios: a forward-only stage's time over one inference forward over the windows; a backward
stage's (sensitivity, finetune) over one forward+backward of the summed token loss; the
denominator is named in each row. The perturb row is a sweep of several experiments (one
forward each) and is left as the raw ratio; rank and magnitude pruning make no pass at all and
are put against a forward for scale only; hutchinson_diag runs attention on the math SDPA kernel,
its denominator on the default one. The finetune stages train len(windows) / batch_size steps
(2 at the defaults), so they see the windows the forward+backward sees.

Fits per stage, over the sizes measured: the exponent of time and of peak memory in the
parameter count (least squares of log on log, 95% CI from the slope's standard error with
Student's t on n-2 degrees of freedom; none below 3 sizes; sizes with a peak at or below zero
left out of the memory fit) and the slope of the ratio in the number of blocks (its sign: does
the ratio grow with depth). Last, a projection (not a measurement) to an 8B Llama on one H100:
each stage's ratio at the largest size times the FLOP-limit time of its denominator.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import gc
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cwa.analysis.clusters import chosen_weights, dbscan, features, kmeans, matrix
from cwa.analysis.layer_correlation import correlation_estimate, window_scores
from cwa.core.stats import bootstrap_indices
from cwa.evaluation.perplexity import evaluate, reference, token_nll
from cwa.experiments.faults import campaign, campaign_estimate
from cwa.experiments.finetuning import finetune, trainable, training_plan
from cwa.experiments.layer_sweep import layer_experiments
from cwa.experiments.perturbations import get_perturbation
from cwa.experiments.pruning import Sparsity, apply_masks, in_group, prune_by_activations
from cwa.experiments.sweep import experiments
from cwa.experiments.sweep import run as run_sweep
from cwa.experiments.unit_sets import Bench as UnitBench
from cwa.experiments.unit_sets import measure_units
from cwa.models.anatomy import ParamInfo, describe, pool
from cwa.models.memory import Estimate, estimate, finetuning_estimate, pruning_estimate
from cwa.scoring.metrics import compute_scores, get_metric
from cwa.scoring.superweight import detect
from cwa.selection.ranking import extreme_k, matched_random, rank
from cwa.selection.units import ranked, unit_scores, units_of

SIZES = ((128, 2), (256, 4), (512, 8), (1024, 12))  # (hidden, blocks)
ONE_ENV = "CWA_SCALE_ONE"  # set in a child: "size index:stage name", the one measurement it makes
EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
USUAL_MMAP_THRESHOLD = 32 << 20  # the ceiling of glibc's dynamic threshold on 64-bit
TOPK = 100
CONTROLS = ("random_k", "bottom_k")
SPARSITY = 0.5
DRAWS = 2  # random sets per comparison (params.yaml's random_draws)
RESAMPLES = 1000  # bootstrap resamples (params.yaml's bootstrap)
KL_TOPK = 64  # the top-K reference's K at this vocabulary (2,048)
UNIT_K, UNIT_EACH = 5, 3  # params.yaml's unit_topk and unit_each
FAULT_RATES, FAULT_TRIALS, FAULT_PROTECT = (1e-7, 1e-6), 2, (0.01, 0.1)
CLUSTER_TOP, CLUSTER_SAMPLE, CLUSTER_MAX_K = 1000, 20000, 8  # params.yaml's cluster_*
FORWARD, BACKWARD = "forward", "forward+backward"  # the two denominators (stage names below)

PROJECTED_PARAMS = 8e9
PROJECTED_TOKENS = 128 * 2048
H100_FLOPS = 989e12  # dense BF16 peak
UTILISATIONS = (0.6, 0.4)


def peak_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))


def rss_kib() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1))


@dataclass(frozen=True)
class Bench:
    """One size's model, its ranking pool and the windows every stage runs on."""

    model: torch.nn.Module
    infos: list[ParamInfo]
    windows: torch.Tensor
    batch_size: int


Call = Callable[[], object]
Restore = Callable[[], None]


@dataclass(frozen=True)
class Stage:
    """A stage's core call, the stage whose time divides it, and how its inputs are made."""

    denominator: str
    prepare: Callable[[Bench], tuple[Call, Restore]]
    estimate: Callable[[Bench], int] | None = None  # bytes beyond the weights, as guarded


def build(args, size: int) -> Bench:
    hidden, blocks = SIZES[size]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=hidden,
        num_hidden_layers=blocks,
        num_attention_heads=max(2, hidden // 64),
        intermediate_size=8 * round(hidden * 8 / 3 / 8),
        max_position_embeddings=args.seq_len,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, args.vocab, (args.windows, args.seq_len), generator=gen)
    return Bench(model, pool(describe(model)), windows, args.batch_size)


def unchanged() -> None:
    """The restore of a call that leaves the weights as they were."""


def restorer(model) -> Restore:
    """Puts the weights back as they are now: a pruned or trained model is not the next call's."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}

    def restore() -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])

    return restore


def magnitudes(b: Bench) -> dict[str, torch.Tensor]:
    """|w| of the pool: the magnitude method's scores, and any scores where only cost matters."""
    params = dict(b.model.named_parameters())
    return {i.name: params[i.name].detach().abs() for i in b.infos}


def forward(b: Bench) -> tuple[Call, Restore]:
    def call() -> None:
        with torch.inference_mode():
            for batch in b.windows.split(b.batch_size):
                b.model(input_ids=batch, use_cache=False)

    return call, unchanged


def forward_backward(b: Bench) -> tuple[Call, Restore]:
    def call() -> None:
        for batch in b.windows.split(b.batch_size):
            token_nll(b.model(input_ids=batch, use_cache=False).logits, batch).sum().backward()
        b.model.zero_grad(set_to_none=True)

    return call, unchanged


def baseline(b: Bench) -> tuple[Call, Restore]:
    return lambda: evaluate(b.model, b.windows, b.batch_size), unchanged


def sensitivity(metric: str, probes: int = 16) -> Callable[[Bench], tuple[Call, Restore]]:
    def prepare(b: Bench) -> tuple[Call, Restore]:
        m = get_metric(metric)

        def call() -> None:
            compute_scores(b.model, b.infos, m, b.windows, b.batch_size, probes)

        return call, unchanged

    return prepare


def ranking(b: Bench) -> tuple[Call, Restore]:
    """Ranks grad_x_weight scores, as the rank stage does after a sensitivity pass."""
    scores = compute_scores(b.model, b.infos, get_metric("grad_x_weight"), b.windows, b.batch_size)

    def call() -> None:
        rank(b.infos, scores, "global", (TOPK,), CONTROLS, 1, 0, "grad_x_weight")

    return call, unchanged


def perturb(b: Bench) -> tuple[Call, Restore]:
    """Zeroes each selection set of a ranking (top, random, bottom) in turn, one evaluation
    each; which weights are chosen does not change the cost, so |w| ranks them."""
    table = rank(b.infos, magnitudes(b), "global", (TOPK,), CONTROLS, 1, 0, "magnitude")
    exps = experiments(table, [(get_perturbation("zero"), (None,))])
    return lambda: run_sweep(b.model, exps, b.windows, b.batch_size, desc=None), unchanged


def prune_layerwise(method: str) -> Callable[[Bench], tuple[Call, Restore]]:
    def prepare(b: Bench) -> tuple[Call, Restore]:
        def call() -> None:
            prune_by_activations(
                b.model, b.infos, method, Sparsity(SPARSITY), b.windows, b.batch_size
            )

        return call, restorer(b.model)

    return prepare


def prune_magnitude(b: Bench) -> tuple[Call, Restore]:
    def call() -> None:
        apply_masks(b.model, in_group(magnitudes(b), b.infos, Sparsity(SPARSITY), "per_row"))

    return call, restorer(b.model)


def free_weights(b: Bench, arm: str) -> dict[str, torch.Tensor]:
    """The weights `arm` trains; top and random sets of TOPK built as tests/test_finetuning
    builds them (|w| scores: the sets' size, not their place, sets the cost)."""
    scores = list(magnitudes(b).values())
    top = extreme_k(scores, TOPK)
    random = matched_random(top, [i.numel for i in b.infos], np.random.default_rng(0), scores)
    return trainable(arm, b.infos, top, random)


def finetuning(arm: str) -> Callable[[Bench], tuple[Call, Restore]]:
    """Trains one arm on the windows (free_weights)."""

    def prepare(b: Bench) -> tuple[Call, Restore]:
        free = free_weights(b, arm)
        steps = max(1, len(b.windows) // b.batch_size)

        def call() -> None:
            finetune(b.model, free, b.windows, steps, b.batch_size, lr=1e-3, seed=0)

        return call, restorer(b.model)

    return prepare


def superweight(b: Bench) -> tuple[Call, Restore]:
    return lambda: detect(b.model, b.windows, b.batch_size), unchanged


def kl_reference(topk: int) -> Callable[[Bench], tuple[Call, Restore]]:
    """The unperturbed pass every KL-measuring stage makes first, written to TMPDIR."""

    def prepare(b: Bench) -> tuple[Call, Restore]:
        def call() -> None:
            with reference(b.model, b.windows, b.batch_size, topk):
                pass

        return call, unchanged

    return prepare


def opened_reference(b: Bench):
    """A whole-vocabulary reference held open until the process ends (not timed): the stages
    below measure their experiments against one, as theirs do."""
    stack = contextlib.ExitStack()
    atexit.register(stack.close)
    return stack.enter_context(reference(b.model, b.windows, b.batch_size))


def flat_magnitudes(b: Bench) -> list[torch.Tensor]:
    return [t.reshape(-1) for t in magnitudes(b).values()]


def units(kind: str) -> Callable[[Bench], tuple[Call, Restore]]:
    """The units stage for one kind: score the units, then the top UNIT_K (at most half the
    units) together and the top UNIT_EACH one at a time, each zeroed against DRAWS matched
    random sets."""

    def prepare(b: Bench) -> tuple[Call, Restore]:
        bench = UnitBench(
            b.model,
            b.windows,
            evaluate(b.model, b.windows, b.batch_size),
            opened_reference(b),
            bootstrap_indices(len(b.windows), RESAMPLES, 0),
            b.batch_size,
            RESAMPLES,
            0,
            DRAWS,
        )
        scores, zero = magnitudes(b), [(get_perturbation("zero"), (None,))]

        def call() -> None:
            mine = units_of(b.infos, kind)
            table = ranked(unit_scores(mine, scores, "sum"))
            top = table["unit"].to_list()
            k = min(UNIT_K, len(top) // 2)  # as the stage: leave as many to draw from
            for chosen in [top[:k], *([u] for u in top[:UNIT_EACH])]:
                measure_units(bench, mine, table, chosen, zero)

        return call, unchanged

    return prepare


def faults(b: Bench) -> tuple[Call, Restore]:
    """The fault campaign: every rate x trial, unprotected and with each protected fraction
    (top and random), one evaluation against the reference each."""
    base, ref = evaluate(b.model, b.windows, b.batch_size), opened_reference(b)
    names, scores = [i.name for i in b.infos], flat_magnitudes(b)

    def call() -> None:
        campaign(
            b.model,
            names,
            scores,
            b.windows,
            base,
            FAULT_RATES,
            FAULT_TRIALS,
            FAULT_PROTECT,
            0,
            b.batch_size,
            ref,
        )

    return call, unchanged


def clusters(b: Bench) -> tuple[Call, Restore]:
    """The clusters stage's analysis: the top weights and a uniform sample, their features
    over three seeds' stores, K-means over k and DBSCAN (its perturbations are the units row's
    kind of work)."""
    scores, stores = flat_magnitudes(b), [magnitudes(b)] * 3
    weights = dict(b.model.named_parameters())

    def call() -> None:
        chosen = chosen_weights(scores, [len(s) for s in scores], CLUSTER_TOP, CLUSTER_SAMPLE, 0)
        x, _ = matrix(features(b.infos, chosen, CLUSTER_TOP, weights, stores))
        kmeans(x, CLUSTER_MAX_K, 0)
        dbscan(x)

    return call, unchanged


def correlation(b: Bench) -> tuple[Call, Restore]:
    """Each pool tensor's Σ|g·w| on every window alone: one backward per window."""
    return lambda: window_scores(b.model, b.infos, b.windows), unchanged


def layer_sweep(b: Bench) -> tuple[Call, Restore]:
    """Each block's top-TOPK zeroed against DRAWS random sets of that block: 1 + DRAWS
    evaluations per block, so its ratio to a forward grows with depth by design."""
    scores, zero = magnitudes(b), (get_perturbation("zero"), (None,))

    def call() -> None:
        exps = layer_experiments(b.infos, scores, TOPK, zero, DRAWS, 0, "magnitude")
        for mine in exps.values():
            run_sweep(b.model, mine, b.windows, b.batch_size, desc=None)

    return call, unchanged


def beyond_weights(est: Estimate) -> int:
    return sum(need.beyond_weights for need in est.devices.values())


def evaluation_guard(b: Bench) -> int:
    """What prepare_stage's guard estimates for the stages that evaluate (a forward pass)."""
    return beyond_weights(estimate(b.model, [], "forward", b.batch_size, b.windows.shape[1]))


def scoring_guard(metric: str) -> Callable[[Bench], int]:
    def guess(b: Bench) -> int:
        needs = get_metric(metric).needs
        return beyond_weights(estimate(b.model, b.infos, needs, b.batch_size, b.windows.shape[1]))

    return guess


def finetuning_guard(arm: str) -> Callable[[Bench], int]:
    def guess(b: Bench) -> int:
        plan = training_plan(free_weights(b, arm))
        return beyond_weights(finetuning_estimate(b.model, plan, b.batch_size, b.windows.shape[1]))

    return guess


def pruning_guard(hessian: bool) -> Callable[[Bench], int]:
    """The prune stage's estimate less its dense copy of the pool, which here the restorer
    makes before the call (so the measured peak does not hold it)."""

    def guess(b: Bench) -> int:
        est = pruning_estimate(
            b.model, b.infos, hessian, len(b.windows), b.batch_size, b.windows.shape[1]
        )
        params = dict(b.model.named_parameters())
        dense = sum(params[i.name].numel() * params[i.name].element_size() for i in b.infos)
        return beyond_weights(est) - dense

    return guess


def faults_guard(b: Bench) -> int:
    """The faults stage's estimate less its reads of the store (8 bytes per weight of the
    largest tensor: the stored scores and their absolute values), which here are made before
    the call. The estimate is the larger of an evaluation pass and the passes (one device)."""
    sizes = [i.numel for i in b.infos]
    est = campaign_estimate(b.model, sizes, b.batch_size, b.windows.shape[1])
    return max(evaluation_guard(b), beyond_weights(est) - 8 * max(sizes))


def correlation_guard(b: Bench) -> int:
    return beyond_weights(correlation_estimate(b.model, b.infos, b.windows.shape[1]))


STAGES = {
    FORWARD: Stage(FORWARD, forward),
    BACKWARD: Stage(FORWARD, forward_backward),
    "baseline": Stage(FORWARD, baseline, evaluation_guard),
    "sensitivity grad_x_weight": Stage(
        BACKWARD, sensitivity("grad_x_weight"), scoring_guard("grad_x_weight")
    ),
    "sensitivity hutchinson_diag, 1 probe": Stage(
        BACKWARD, sensitivity("hutchinson_diag", 1), scoring_guard("hutchinson_diag")
    ),
    f"rank global top-{TOPK} + 2 controls": Stage(FORWARD, ranking),
    f"perturb zero, {1 + len(CONTROLS)} experiments": Stage(FORWARD, perturb, evaluation_guard),
    "prune wanda": Stage(FORWARD, prune_layerwise("wanda"), pruning_guard(False)),
    "prune sparsegpt": Stage(FORWARD, prune_layerwise("sparsegpt"), pruning_guard(True)),
    "prune magnitude per_row": Stage(FORWARD, prune_magnitude),
    "finetune only_top": Stage(BACKWARD, finetuning("only_top"), finetuning_guard("only_top")),
    "finetune full": Stage(BACKWARD, finetuning("full"), finetuning_guard("full")),
    "superweight": Stage(FORWARD, superweight, evaluation_guard),
    "KL reference, whole vocabulary": Stage(FORWARD, kl_reference(0), evaluation_guard),
    f"KL reference, top {KL_TOPK}": Stage(FORWARD, kl_reference(KL_TOPK), evaluation_guard),
    f"units head, top {UNIT_K} + {UNIT_EACH} alone": Stage(
        FORWARD, units("head"), evaluation_guard
    ),
    f"units neuron, top {UNIT_K} + {UNIT_EACH} alone": Stage(
        FORWARD, units("neuron"), evaluation_guard
    ),
    f"faults, {len(FAULT_RATES) * FAULT_TRIALS * (1 + 2 * len(FAULT_PROTECT))} evaluations": Stage(
        FORWARD, faults, faults_guard
    ),
    "clusters, features + k-means + DBSCAN": Stage(FORWARD, clusters, evaluation_guard),
    "correlation, one backward per window": Stage(BACKWARD, correlation, correlation_guard),
    f"layer_sweep, {1 + DRAWS} evaluations per block": Stage(
        FORWARD, layer_sweep, evaluation_guard
    ),
}


def timed(call: Call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def usual_allocator() -> None:
    """glibc from here on keeps freed blocks for reuse, as its dynamic threshold does once it
    has risen: the exact setting's fresh mappings would slow the timed calls."""
    libc = ctypes.CDLL("libc.so.6")
    usual = (M_MMAP_THRESHOLD, USUAL_MMAP_THRESHOLD), (M_TRIM_THRESHOLD, 2 * USUAL_MMAP_THRESHOLD)
    if not all(libc.mallopt(param, value) for param, value in usual):
        raise RuntimeError("glibc mallopt refused the usual allocator settings")


def measure(stage: Stage, bench: Bench, repeats: int) -> dict:
    """The first call's peak above the resident set before it (exact allocator), then the best
    time of `repeats` more calls (usual allocator), the weights restored after each call."""
    call, restore = stage.prepare(bench)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = rss_kib()
    call()
    peak_mib = (peak_kib() - before) / 1024
    restore()
    usual_allocator()
    times = []
    for _ in range(repeats):
        times.append(timed(call))
        restore()
    return {"seconds": min(times), "peak_mib": peak_mib}


def one(args, size: int, name: str) -> dict:
    """One stage at one size, in this process; a failing call is reported, not raised."""
    torch.set_num_threads(args.threads)
    bench = build(args, size)
    out = {"params": sum(p.numel() for p in bench.model.parameters())}
    stage = STAGES[name]
    if stage.estimate is not None:
        out["estimate_mib"] = stage.estimate(bench) / 2**20
    try:
        out |= measure(stage, bench, 1 if args.quick else 2)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def child(size: int, name: str) -> dict:
    """Runs one measurement in a fresh process of this script (a clean peak)."""
    env = {**os.environ, **EXACT_MALLOC, ONE_ENV: f"{size}:{name}"}
    done = subprocess.run([sys.executable, *sys.argv], env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()
        return {"error": tail[-1] if tail else f"exit status {done.returncode}"}
    return json.loads(lines[-1])


def exponent(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Slope of log y on log x and its 95% CI (Student's t, n-2 dof); NaN where undefined."""
    from scipy import stats  # here: the children, which only measure, skip its import

    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a > 0 and b > 0 and math.isfinite(b)]
    if len({a for a, _ in pairs}) < 2:
        return math.nan, math.nan, math.nan
    fit = stats.linregress(np.log([a for a, _ in pairs]), np.log([b for _, b in pairs]))
    if len(pairs) < 3:
        return fit.slope, math.nan, math.nan
    half = stats.t.ppf(0.975, len(pairs) - 2) * fit.stderr
    return fit.slope, fit.slope - half, fit.slope + half


def depth_slope(blocks: list[int], ratios: list[float]) -> float:
    """Change of the ratio per added block (least squares): positive, it grows with depth."""
    from scipy import stats

    pairs = [(a, r) for a, r in zip(blocks, ratios, strict=True) if math.isfinite(r)]
    if len({a for a, _ in pairs}) < 2:
        return math.nan
    return stats.linregress([a for a, _ in pairs], [r for _, r in pairs]).slope


def with_ci(fit: tuple[float, float, float]) -> str:
    slope, lo, hi = fit
    if math.isnan(slope):
        return "n/a"
    ci = "n/a" if math.isnan(lo) else f"{lo:.2f}, {hi:.2f}"
    return f"{slope:.2f} [{ci}]"


def cell(value: float, spec: str) -> str:
    return "n/a" if not math.isfinite(value) else format(value, spec)


def measured(results: dict) -> list[tuple[str, Stage]]:
    """The stages this run measured, in STAGES' order."""
    names = {name for _, name in results}
    return [(name, stage) for name, stage in STAGES.items() if name in names]


def ratio(results: dict, size: int, name: str) -> float:
    """The stage's time over its denominator's at the same size (NaN if either failed)."""
    mine, theirs = results[size, name], results[size, STAGES[name].denominator]
    if "seconds" not in mine or "seconds" not in theirs:
        return math.nan
    return mine["seconds"] / theirs["seconds"]


def share(estimate_mib: float, peak_mib: float) -> float:
    return estimate_mib / peak_mib if peak_mib > 0 else math.nan


def per_size_table(results: dict, sizes: list[int]) -> list[str]:
    lines = [
        "| hidden x blocks | params | stage | time s | peak MiB | guard's estimate MiB | "
        "estimate / peak | ratio | denominator |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in sizes:
        hidden, blocks = SIZES[s]
        for name, stage in measured(results):
            r = results[s, name]
            params = f"{r['params'] / 1e6:.2f}M" if "params" in r else "n/a"
            if "error" in r:
                why = r["error"].replace("|", "/")[:160]
                skipped = f"| {hidden} x {blocks} | {params} | {name} | skipped: {why} | | | | |"
                lines.append(f"{skipped} {stage.denominator} |")
                continue
            lines.append(
                f"| {hidden} x {blocks} | {params} | {name} | {r['seconds']:.3f} | "
                f"{r['peak_mib']:.1f} | {cell(r.get('estimate_mib', math.nan), '.1f')} | "
                f"{cell(share(r.get('estimate_mib', math.nan), r['peak_mib']), '.2f')} | "
                f"{cell(ratio(results, s, name), '.2f')} | "
                f"{stage.denominator} |"
            )
    return lines


def fit_table(results: dict, sizes: list[int]) -> list[str]:
    lines = [
        "| stage | denominator | time exponent [95% CI] | memory exponent [95% CI] | "
        "ratio, smallest | ratio, largest | ratio per block |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for name, stage in measured(results):
        done = [s for s in sizes if "seconds" in results[s, name]]
        params = [results[s, name]["params"] for s in done]
        ratios = [ratio(results, s, name) for s in sizes]
        time_fit = exponent(params, [results[s, name]["seconds"] for s in done])
        memory_fit = exponent(params, [results[s, name]["peak_mib"] for s in done])
        lines.append(
            f"| {name} | {stage.denominator} | {with_ci(time_fit)} | {with_ci(memory_fit)} | "
            f"{cell(ratios[0], '.2f')} | {cell(ratios[-1], '.2f')} | "
            f"{cell(depth_slope([SIZES[s][1] for s in sizes], ratios), '+.3f')} |"
        )
    return lines


def projection_table(results: dict, largest: int) -> list[str]:
    """Each stage's largest-size ratio times its denominator's FLOP-limit time on an H100."""
    flops = 6 * PROJECTED_PARAMS * PROJECTED_TOKENS
    backward = {u: flops / (H100_FLOPS * u) for u in UTILISATIONS}
    lines = [
        f"Projection (not measured): an 8B Llama on one H100, {PROJECTED_TOKENS:,} tokens "
        f"(128 x 2048). Forward+backward at the FLOP limit: 6 x 8e9 x {PROJECTED_TOKENS} FLOPs / "
        f"(989e12 FLOP/s x utilisation) = "
        + ", ".join(f"{backward[u]:.1f} s at {u:.0%}" for u in UTILISATIONS)
        + "; a forward, one third of that. Each stage: its ratio at the largest size measured "
        "(CPU, fp32) times its denominator's time. Costs that do not grow as params x tokens "
        "(ranking, magnitude pruning, SparseGPT's per-layer solves, AdamW's update, Python "
        "overhead) carry over least.",
        "",
        "| stage | ratio, largest | denominator | "
        + " | ".join(f"projected s, {u:.0%} utilisation" for u in UTILISATIONS)
        + " |",
        "|---|---:|---|" + "---:|" * len(UTILISATIONS),
    ]
    for name, stage in measured(results):
        r = ratio(results, largest, name)
        share = 1.0 if stage.denominator == BACKWARD else 1.0 / 3.0
        times = " | ".join(cell(r * share * backward[u], ".1f") for u in UTILISATIONS)
        lines.append(f"| {name} | {cell(r, '.2f')} | {stage.denominator} | {times} |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=",".join(str(i) for i in range(len(SIZES))))
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one call per stage, not the best of 2")
    ap.add_argument("--out", help="also write the tables to this markdown file")
    ap.add_argument(
        "--stages",
        help="comma-separated words; measure the stages whose name holds one (and the two "
        "denominators); default every stage",
    )
    args = ap.parse_args()
    if ONE_ENV in os.environ:
        size, name = os.environ[ONE_ENV].split(":", 1)
        print(json.dumps(one(args, int(size), name)))
        return
    sizes = sorted({int(s) for s in args.sizes.split(",")})  # smallest first
    words = args.stages.split(",") if args.stages else [""]
    chosen = [n for n in STAGES if n in (FORWARD, BACKWARD) or any(w in n for w in words)]
    results = {}
    for s in sizes:
        for name in chosen:
            start = time.perf_counter()
            results[s, name] = r = child(s, name)
            got = f"{r['seconds']:.3f} s" if "seconds" in r else r["error"]
            took = time.perf_counter() - start
            print(f"size {s} {SIZES[s]}: {name}: {got} ({took:.0f} s)", file=sys.stderr, flush=True)
    text = [
        f"Llama (hidden, blocks) {[SIZES[s] for s in sizes]}, vocab {args.vocab}, "
        f"{args.windows} windows x {args.seq_len} tokens in batches of {args.batch_size}, fp32, "
        f"CPU {args.threads} threads, best of {1 if args.quick else 2}",
        "",
        *per_size_table(results, sizes),
        "",
        *fit_table(results, sizes),
        "",
        *projection_table(results, sizes[-1]),
    ]
    print("\n".join(text))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
