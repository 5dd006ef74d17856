"""check_params: every param checked, registry names included, before any other stage runs.

Each stage reads and checks only its own keys, and only the registries it imports can check
names (metrics, perturbations and their strengths, ranking modes). This stage imports them all
and checks every key; every other stage depends on its output, so `dvc repro` runs it first
whenever a param or a registry changed, and a bad value anywhere stops the run before any
scoring starts. Passing checks always write the same bytes, so they rerun nothing downstream.
Writes: a fixed line naming the checked keys.
"""

import cwa.metrics
import cwa.perturbations
import cwa.ranking  # noqa: F401  (each registry adds its checks of params on import)
from cwa.io import atomic_write
from cwa.stage import stage_main

# What this stage reads: its `params:` in dvc.yaml (tests/test_docs.py keeps them equal).
PARAMS = (
    "model",
    "dtype",
    "device",
    "device_map",
    "num_processes",
    "metric",
    "compare_metrics",
    "seeds",
    "calib_samples",
    "seq_len",
    "batch_size",
    "probes",
    "layer_group",
    "mode",
    "topk",
    "controls",
    "random_draws",
    "include_embeddings",
    "include_1d",
    "layers",
    "perturb",
    "scale_alpha",
    "noise_sigma",
    "abs_sigma",
    "flip_bit",
    "flip_prob",
    "quant_bits",
    "mask_ratios",
    "tasks",
    "task_items",
    "lm_eval_tasks",
    "fault_rates",
    "fault_trials",
    "fault_protect",
    "target_components",
    "target_layers",
    "spike_ratio",
    "eval_samples",
    "bootstrap",
    "headline_k",
    "vocab_size",
    "train_steps",
    "train_batch",
    "train_seq_len",
    "train_lr",
    "train_seed",
    "family",
)


def add_args(p):
    p.add_argument("--out", required=True)


def run(args, params):
    text = f"checked: {', '.join(sorted(PARAMS))}\n"  # the same bytes whatever the values
    atomic_write(args.out, lambda tmp: tmp.write_text(text))


if __name__ == "__main__":
    stage_main(__doc__, add_args, run, PARAMS)
