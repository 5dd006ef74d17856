"""superweight: the data-free super-weight detector (Yu et al. 2024) with a causal check.

One forward pass over the first `batch_size` windows of the first seed's calibration draw finds,
in every MLP down projection, where its output spikes (token and output channel) and the weight
contributing most to that spike (cwa.scoring.superweight.detect); each such weight is then set alone
to 0, and to the mean of its row (the mean-ablation control), each time restored bit for bit, and
the damage measured on the evaluation windows against the baseline.
Reads: the calibration and evaluation text (sources stage), the model, the baseline per-text table.
Writes: the spikes table (schema `spikes`).
"""

import polars as pl
import torch

from cwa.core.io import write_table
from cwa.core.stats import bootstrap_indices, paired_delta_ci
from cwa.data.windows import calibration_draw, calibration_windows
from cwa.evaluation.perplexity import evaluate
from cwa.experiments.perturbations import edited
from cwa.pipeline.evaluation_setup import prepare_stage
from cwa.pipeline.paths import BASELINE_TEXTS, CALIB_TEXT, EVAL_TEXT, MODELS
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.spikes import SPIKES_TABLE
from cwa.scoring.superweight import detect

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = (
    "model",
    "dtype",
    "device",
    "device_map",
    "seeds",
    "calib_samples",
    "seq_len",
    "bos",
    "batch_size",
    "eval_samples",
    "spike_ratio",
    "bootstrap",
)


STAGE = Stage(
    "superweight",
    PARAMS,
    does=(
        "data-free super-weight detector: where each MLP down projection's output spikes (token, "
        "channel) and the weight contributing most to that spike, ranked by contribution; the "
        "damage of setting each alone to 0 and to its row's mean"
    ),
    reads={
        "calib_text": CALIB_TEXT,
        "eval_text": EVAL_TEXT,
        "models_dir": MODELS,
        "baseline_texts": BASELINE_TEXTS,
    },
    writes={
        "out": "artifacts/superweight/spikes.parquet",
    },
    manifest="artifacts/superweight/manifest.json",
)


def run(args, params):
    ev = prepare_stage(params, args.models_dir, args.eval_text, args.baseline_texts)
    calib = calibration_windows(
        ev.tokenizer, args.calib_text, params.seq_len, params.bos, params.calib_samples
    )
    probe = calibration_draw(calib.all, params.calib_samples, params.seeds[0])[: params.batch_size]
    idx = bootstrap_indices(len(ev.windows), params.bootstrap, params.seeds[0])
    weights = dict(ev.model.named_parameters())
    rows = []
    for spike in detect(ev.model, probe, params.batch_size):
        row = described(spike, weights, probe, params.spike_ratio)
        for control, value in (("zero", 0.0), ("mean", spike.row_mean)):
            row |= set_alone(ev, weights, spike, value, idx, params.batch_size, control)
        rows.append(row)
    table = pl.DataFrame(rows)
    write_table(table, args.out, SPIKES_TABLE)
    return {
        "layers": len(rows),
        "candidates": int(table["candidate"].sum()),
        "memory": ev.memory,
        "calibration_text": calib.record,
        "evaluation_text": ev.text,
    }


def described(spike, weights, probe, spike_ratio: float) -> dict:
    """The spikes table's description of one candidate (schema `spikes`)."""
    return {
        "param": spike.param,
        "layer": spike.layer,
        "row": spike.out_channel,
        "col": spike.in_channel,
        "flat_index": spike.flat_index,
        "weight": float(weights[spike.param].detach().reshape(-1)[spike.flat_index]),
        "window": spike.window,
        "token": spike.token,
        "token_id": int(probe[spike.window, spike.token]),
        "in_act": spike.in_act,
        "out_act": spike.out_act,
        "in_ratio": spike.in_ratio,
        "out_ratio": spike.out_ratio,
        "contribution": spike.contribution,
        "share": spike.share,
        "candidate": spike.is_candidate(spike_ratio),
        "row_mean": spike.row_mean,
    }


def set_alone(ev, weights, spike, value: float, idx, batch_size: int, control: str) -> dict:
    """Sets the one weight to `value` (0, or its row's mean), measures ΔPPL with its paired CI,
    restores it bit for bit."""
    edit = {spike.param: (torch.tensor([spike.flat_index]), value)}
    with edited(weights, edit, lambda old, tensor, v: torch.full_like(old, v)):
        result = evaluate(ev.model, ev.windows, batch_size)
    lo, hi = paired_delta_ci(ev.base.nll, result.nll, result.tokens, idx)
    delta = result.ppl - ev.base.ppl
    return {f"delta_ppl_{control}": delta, f"ci_low_{control}": lo, f"ci_high_{control}": hi}


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
