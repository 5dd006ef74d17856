"""superweight: the data-free super-weight detector (Yu et al. 2024) with a causal check.

One forward pass over the first `batch_size` windows of the first seed's calibration draw finds,
in every MLP down projection, the strongest input and output activation spikes and the weight
joining them; each such weight is then zeroed alone (and restored bit for bit) and the damage
measured on the evaluation windows against the baseline.
Reads: the calibration and evaluation text (sources stage), the model, the baseline per-text table.
Writes: the spikes table (schema `spikes`).
"""

import polars as pl
import torch

from cwa.data import calibration_draw, calibration_windows
from cwa.evaluation import evaluate
from cwa.evaluation_setup import prepare_stage
from cwa.io import write_table
from cwa.perturbations import get_perturbation, perturbed
from cwa.schemas.spikes import SPIKES_TABLE
from cwa.stage import stage_main
from cwa.stats import bootstrap_indices, paired_delta_ci
from cwa.superweight import detect

# What this stage reads: its `params:` in dvc.yaml (tests/test_docs.py keeps them equal).
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


def add_args(p):
    p.add_argument("--calib-text", required=True, help="the sources stage's calibration directory")
    p.add_argument("--eval-text", required=True, help="the sources stage's evaluation directory")
    p.add_argument("--models-dir", required=True)
    p.add_argument("--baseline-texts", required=True)
    p.add_argument("--out", required=True)


def run(args, params):
    ev = prepare_stage(params, args.models_dir, args.eval_text, args.baseline_texts)
    model, windows, base = ev.model, ev.windows, ev.base
    calib = calibration_windows(
        ev.tokenizer, args.calib_text, params.seq_len, params.bos, params.calib_samples
    )
    probe = calibration_draw(calib.all, params.calib_samples, params.seeds[0])[: params.batch_size]
    idx = bootstrap_indices(len(windows), params.bootstrap, params.seeds[0])
    weights = dict(model.named_parameters())
    rows = []
    for spike in detect(model, probe, params.batch_size):
        selection = {spike.param: torch.tensor([spike.flat_index])}
        with perturbed(weights, selection, get_perturbation("zero")):
            result = evaluate(model, windows, params.batch_size)
        lo, hi = paired_delta_ci(base.nll, result.nll, result.tokens, idx)
        rows.append(
            {
                "param": spike.param,
                "layer": spike.layer,
                "row": spike.out_channel,
                "col": spike.in_channel,
                "flat_index": spike.flat_index,
                "weight": float(weights[spike.param].detach().reshape(-1)[spike.flat_index]),
                "in_max": spike.in_max,
                "out_max": spike.out_max,
                "in_ratio": spike.in_ratio,
                "out_ratio": spike.out_ratio,
                "candidate": spike.is_candidate(params.spike_ratio),
                "ppl": result.ppl,
                "delta_ppl": result.ppl - base.ppl,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    table = pl.DataFrame(rows)
    write_table(table, args.out, SPIKES_TABLE)
    return {
        "layers": len(rows),
        "candidates": int(table["candidate"].sum()),
        "memory": ev.memory,
        "calibration_text": calib.record,
        "evaluation_text": ev.text,
    }


if __name__ == "__main__":
    stage_main(__doc__, add_args, run, PARAMS)
