"""Typed, validated params: every stage reads params.yaml through `load_params`.

A typo fails here, before any model loads, with a message that names the key and what is valid.
Checks that need a registry's names (metrics, perturbations, ranking modes) live with the
registry, which adds them with `@check` when imported: this module imports none of them, so a
stage's code dependencies stay its own, and a stage validates the names of what it can run.
`cwa run` imports every registry and so checks every key before DVC starts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from cwa import CwaError

DTYPES = ("float32", "bfloat16", "float16")
DEVICE_MAPS = ("none", "auto", "balanced", "balanced_low_0", "sequential")
BYTE_LEVEL_TOKENS = 257  # the built-in tokenizer's alphabet: 256 bytes and the end-of-text token


@dataclass(frozen=True)
class FamilyMember:
    """Shape of one built-in model: Llama, or Mixtral when it has experts (`intermediate` is
    then each expert's width, and `active` experts serve each token)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    experts: int = 0
    active: int = 0


KINDS = ("dense", "moe")
TUNINGS = ("base", "instruct")


@dataclass(frozen=True)
class StudyMember:
    """One model of a study (`models`): what to load and the tags that place it. Untagged
    `kind` is read from the model (experts or not); an untagged built-in's `step` is its
    checkpoint's, or train_steps for the final model (cwa.analysis.study.member_step)."""

    model: str
    revision: str = ""
    family: str = ""
    kind: str = ""
    tuning: str = "base"
    step: int | None = None
    dtype: str = ""


@dataclass(frozen=True)
class Params:
    # model under study
    model: str = "builtin:kjv-base"
    dtype: str = "float32"
    device: str = "auto"
    device_map: str = "none"  # none | auto | balanced | sequential: split one model over GPUs
    num_processes: int = 1  # sensitivity: data-parallel processes (one per GPU)
    # text: calibration and evaluation sources (cwa.data.sources)
    calib_data: str = "builtin:kjv"
    eval_data: str = "builtin:kjv"
    data_field: str = "text"
    bos: bool = False
    # sensitivity
    metric: str = "grad_x_weight"
    compare_metrics: tuple[str, ...] = (
        "magnitude",
        "grad_x_weight",
        "grad_squared",
        "obd",
        "wanda",
        "super_weight",
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    calib_samples: int = 64
    seq_len: int = 128
    batch_size: int = 16
    probes: int = 16
    layer_group: int = 0  # second-order metrics: blocks per pass (0: all at once)
    # ranking
    mode: str = "global"
    topk: tuple[int, ...] = (10, 100, 1000)
    controls: tuple[str, ...] = ("random_k", "magnitude_matched_k", "bottom_k")
    random_draws: int = 2
    include_embeddings: bool = False
    include_1d: bool = False
    layers: tuple[int, ...] = ()
    # perturbation and evaluation
    perturb: tuple[str, ...] = ("zero", "sign_flip", "scale", "bit_flip", "quantize")
    # (each perturbation's strength sweep is a key its registration adds: see `Key`)
    mask_ratios: tuple[float, ...] = (0.5,)
    tasks: tuple[str, ...] = ("kjv_lambada", "kjv_hellaswag")
    task_items: int = 128
    lm_eval_tasks: tuple[str, ...] = ()
    # fault-injection campaign
    fault_rates: tuple[float, ...] = (1e-7, 1e-6)
    fault_trials: int = 4
    fault_protect: tuple[float, ...] = (0.01, 0.1)
    # pruning
    prune_methods: tuple[str, ...] = (
        "magnitude",
        "grad_x_weight",
        "obd",
        "wanda",
        "ria",
        "sparsegpt",
        "random",
    )
    sparsities: tuple[float, ...] = (0.3, 0.5, 0.7)
    prune_group: str = "per_row"
    prune_nm: tuple[str, ...] = ()
    prune_owl: bool = False
    # fine-tuning with critical weights frozen, or only they trained (finetune stage)
    finetune_data: str = "builtin:web"
    finetune_k: int = 1000
    finetune_steps: int = 24
    finetune_batch: int = 8
    finetune_lr: float = 1e-3
    finetune_seeds: tuple[int, ...] = (0, 1, 2)
    finetune_arms: tuple[str, ...] = (
        "full",
        "freeze_top",
        "freeze_random",
        "only_top",
        "only_random",
    )
    # structural units (units stage)
    units: tuple[str, ...] = ("neuron", "head")
    unit_reduce: str = "sum"
    unit_topk: tuple[int, ...] = (5,)
    unit_each: int = 3
    # clusters of weights (clusters stage)
    cluster_sample: int = 20000
    cluster_top: int = 1000
    cluster_max_k: int = 8
    target_components: tuple[str, ...] = ()
    target_layers: tuple[int, ...] = ()
    spike_ratio: float = 100.0
    eval_samples: int = 64
    bootstrap: int = 1000
    headline_k: int = 100
    # built-in corpus and model family
    vocab_size: int = 2048
    train_steps: int = 480
    train_batch: int = 16
    train_seq_len: int = 128
    train_lr: float = 3e-3
    train_seed: int = 0
    train_checkpoints: tuple[int, ...] = (60, 120, 240)
    family: dict[str, FamilyMember] = field(default_factory=dict)
    # the study: models compared by the member and scaling stages
    models: dict[str, StudyMember] = field(default_factory=dict)
    # values of the keys modules register (`Key`), filled with their defaults
    registered: dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        defaults = {k.name: k.default for k in KEYS.values()}
        object.__setattr__(self, "registered", defaults | self.registered)
        _validate(self)

    def __getattr__(self, key: str):
        registered = self.__dict__.get("registered", {})
        if key in registered:
            return registered[key]
        raise AttributeError(f"params has no key {key!r}")

    @property
    def pool_options(self) -> dict:
        """Keyword arguments of `cwa.models.anatomy.pool`."""
        return {
            "include_embeddings": self.include_embeddings,
            "include_1d": self.include_1d,
            "layers": self.layers,
        }


@dataclass(frozen=True)
class Key:
    """A params key a module adds where its meaning lives (a perturbation's strength sweep): its
    type as Params annotations write it, default and docs; the module's `@check` rules check it.
    A stage reads it like any key (declared in its PARAMS)."""

    name: str
    ftype: str
    default: object
    doc: str


KEYS: dict[str, Key] = {}


def register_key(key: Key) -> Key:
    KEYS[key.name] = key
    return key


# What each field means; docs/params.md is generated from DOCS and KEYS (python -m
# cwa.pipeline.params_doc).
DOCS = {
    "model": (
        "model under study: `builtin:<name>` (a member of `family`, trained by the `train` "
        "stage), a Hugging Face hub id (needs the hub or its local cache; set `HF_HUB_OFFLINE=1` "
        "to use the cache only) or a local directory saved with `save_pretrained`"
    ),
    "dtype": (
        "`float32`, `bfloat16` or `float16`: the dtype weights are loaded, scored and perturbed "
        "in (bit flips act on this storage). Scores always accumulate in fp32."
    ),
    "device": "`auto` (CUDA if available, else CPU), `cpu`, `cuda`, `cuda:N`",
    "device_map": (
        "`none`: the whole model on `device`. `auto`, `balanced`, `balanced_low_0` or "
        "`sequential`: accelerate splits one model over the visible GPUs by blocks (a model "
        "larger than one GPU), planned on an empty model before any weight is read; a plan that "
        "would offload blocks to CPU or disk is refused (perturbations would not persist in "
        "offloaded weights, gradients would not reach them). See docs/scale-out.md"
    ),
    "num_processes": (
        "sensitivity: data-parallel processes. Above 1 the stage relaunches itself under "
        "`accelerate launch` (gloo on CPU, NCCL on GPUs, one process per GPU): each process "
        "scores a contiguous share of every calibration draw, the fp32 accumulators are "
        "all-reduced once per seed, and only the main process writes. Scores equal the 1-process "
        "ones to float rounding. Needs `calib_samples` >= `num_processes` and `device_map: none`"
    ),
    "calib_data": (
        "calibration text: `builtin:kjv` (the built-in corpus's calib split), a local `.txt` "
        "(documents separated by blank lines), `.jsonl` (field `data_field`), `.parquet` or "
        "`.csv` (column `data_field`), a directory of such files (sorted path order), or "
        "`hf:<name>[:<config>[:<split>]]` (a Hugging Face `datasets` dataset from the hub or its "
        "cache, `HF_DATASETS_OFFLINE=1` honoured; <name> may be a directory written by "
        "`save_to_disk`). Documents are joined with a blank line, tokenized by the studied "
        "model's tokenizer and cut into windows of `seq_len`; each seed draws `calib_samples` "
        "of them. The `sources` stage reads it on every `dvc repro` (it always runs; an edited "
        "file changes its outputs and reruns what reads them)"
    ),
    "eval_data": (
        "evaluation text, any source `calib_data` accepts (`builtin:kjv`: the eval split). The "
        "joined text is cut into non-overlapping windows of `seq_len` and the first "
        "`eval_samples` are evaluated (the Wanda/SparseGPT WikiText-2 protocol). When it names "
        "the same source as `calib_data` (other than builtin:kjv), the source is cut at the "
        "whitespace nearest its middle character: calibration reads the first half, evaluation "
        "the second, and the report says so"
    ),
    "data_field": "the field (`.jsonl`, `hf:`) or column (`.parquet`, `.csv`) holding the text",
    "bos": (
        "start every calibration and evaluation window with the tokenizer's BOS token (its EOS "
        "token when it has no BOS, the GPT-2 convention; the built-in tokenizer's "
        "`<|endoftext|>`), followed by `seq_len` − 1 text tokens. Massive activations and super "
        "weights are tied to the first token; published super-weight numbers use BOS"
    ),
    "metric": (
        "sensitivity metric: `magnitude` (|w|), `grad_x_weight` (|ḡ·w|, ḡ = gradient of the mean "
        "token loss over the calibration draw), `grad_squared` (empirical Fisher diagonal (1/N) "
        "Σₙ gₙ², gₙ = gradient of window n's mean loss), `hutchinson_diag` (Hessian diagonal of "
        "the mean token loss, (1/S) Σₛ zₛ ⊙ Hzₛ with Rademacher zₛ; signed), `obd` (½·F·w² with "
        "the Fisher diagonal F), `obd_hutchinson` (½·h·w² with the Hutchinson diagonal h; "
        "signed), `wanda` or its alias `act_mag` (|W_ij|·‖X_j‖₂/√N over all calibration tokens "
        "of the N windows, X_j = input feature j of the linear layer, as the original code "
        "normalises; linear weights only), `super_weight` "
        "(|W_ij|·max_t |x_tj| on MLP down projections, 0 elsewhere: the super-weight spike "
        "score). Signed metrics keep their sign in the score store and are ranked by |score|."
    ),
    "compare_metrics": (
        "metrics compared pairwise by the `agreement` stage on the first seed's draw (at least 2)"
    ),
    "seeds": (
        "one calibration draw per seed (each seed draws its own `calib_samples` windows); "
        "the study's members use the first seed. Distinct integers >= 0"
    ),
    "calib_samples": (
        "calibration windows per seed, drawn without replacement from the calibration split"
    ),
    "seq_len": (
        "tokens per calibration and evaluation window (non-overlapping, unpadded); at most the "
        "model's `max_position_embeddings` (the built-in models': `train_seq_len`)"
    ),
    "batch_size": (
        "windows per forward pass. Scores do not depend on it (sums over batches); activation "
        "memory scales with it. `grad_squared` forms per-window gradients of linear weights "
        "inside each batch and backpropagates one window at a time only for other pool tensors "
        "(norms, biases, embeddings, fused MoE experts)"
    ),
    "probes": (
        "Hutchinson probes (`hutchinson_diag`, `obd_hutchinson`): each probe is one "
        "Hessian-vector product per batch over every pool tensor at once; a probe's ±1 vector is "
        "seeded by the calibration seed and reused across batches"
    ),
    "layer_group": (
        "`hutchinson_diag` and `obd_hutchinson`: compute the Hessian-vector products this many "
        "transformer blocks at a time (0: the whole model in one pass). A forward-mode pass keeps"
        " the hidden state entering each group and its derivative along the probe; the reverse "
        "pass then recomputes one group at a time from that state and differentiates it "
        "forward-over-reverse, so the cross-group terms are kept and the scores equal the "
        "one-pass scores to float rounding, while only one group's activations (plus two "
        "hidden-state tensors per group) and one group's products exist at once. It costs "
        "2.2–2.5× the one-pass time at 4 probes on CPU (every probe recomputes the model; "
        "docs/benchmarks.md). Needs blocks that the model calls one after another with arguments "
        "that do not depend on scored weights (every supported architecture; checked, with a "
        "clear error otherwise). Other metrics ignore it"
    ),
    "mode": (
        "`global`: top-k over the whole pool; `per_layer`: top-k in each pool tensor; "
        "`per_component`: top-k in each component class (attn_q, attn_k, attn_v, attn_o, "
        "mlp_gate, mlp_up, mlp_down, moe_*, router, embed, lm_head, norm) across layers; "
        "`per_head`: top-k in each attention head of each layer, a head being its q rows, its k "
        "and v rows and its o columns (under GQA one group per key/value head with all its query "
        "heads, one group under multi-query attention; a fused qkv weight is sliced by its "
        "architecture's layout, docs/science.md; MLP weights are not ranked in this mode)"
    ),
    "topk": "every k ranked, perturbed and compared across seeds in one run",
    "controls": (
        "`random_k`: random weights with the same per-tensor counts as the top set, excluding it;"
        " `bottom_k`: the lowest scores (ties broken by tensor order, then flat index)"
    ),
    "random_draws": "independent random_k draws per k",
    "include_1d": (
        "add 1-D parameters (norm gains, biases) to the pool; they are not comparable with "
        "projection weights in a global ranking, so prefer `per_layer` or `per_component` with it"
    ),
    "layers": (
        "keep only these transformer-block indices in the pool (empty: every block); an index the"
        " model lacks is an error"
    ),
    "include_embeddings": (
        "add embeddings and lm_head to the pool (by default: every ≥2-D weight of the transformer"
        " blocks, tied parameters once)"
    ),
    "target_components": (
        "targeted experiments: only these components (`attn_q`, `mlp_down`, ...) of the pool are "
        "ranked, so the top set and its controls, and every perturbation, stay inside them (no "
        "rescoring needed); an absent component is an error listing the pool's"
    ),
    "target_layers": (
        "targeted experiments: only these block indices are ranked (a layer range, e.g. `[2, "
        "3]`); unlike `layers` the scores are reused"
    ),
    "perturb": (
        "perturbations applied to each selection, distinct; the headline is `zero` when listed, "
        "else the first. `zero` w → 0; `set_mean` w → the mean of its whole tensor (not of its "
        "row: one value per tensor, whatever the layout); `sign_flip` w → −w; `scale` w → αw; "
        "`gauss_rel` (old name `gauss_noise`) w → w(1 + σε), ε ~ N(0, 1), relative to each "
        "weight; `gauss_abs` w → w + σε, σ in weight units; "
        "`bit_flip` flips one IEEE-754 bit in the storage dtype; `bit_flip_p` flips each storage "
        "bit with probability p; `quantize` rounds to the n-bit symmetric absmax grid of the "
        "weight's tensor (2^(n−1)−1 levels each side). A top set and its controls receive the "
        "same random numbers (ε, bit positions, masks)."
    ),
    "mask_ratios": (
        "at `headline_k`, also perturb this seeded random fraction of every selection (first "
        "strength of each perturbation; 1.0, the whole set, is always run)"
    ),
    "tasks": (
        "downstream tasks run on the unperturbed model and under every experiment at `headline_k`"
        " (first strength, whole selections): a built-in name (files made by the `tasks` stage "
        "from held-out passages: `kjv_lambada` LAMBADA-style last word, `kjv_hellaswag` "
        'HellaSwag-style 4-way choice) or a path to a JSONL file with `{"text"}` lines (last '
        'word) or `{"ctx", "endings", "label"}` lines (choice). A user file is not a DVC '
        "dependency: its SHA-256 goes into the perturb manifest; change its name to rerun"
    ),
    "task_items": "items used from the start of each task file",
    "lm_eval_tasks": (
        "lm-evaluation-harness tasks run like `tasks` (unperturbed, and under every headline "
        "experiment) on the in-memory model through `HFLM(pretrained=model)`: names of YAML task "
        "definitions under `configs/lm_eval/` (shipped: `lm_kjv_lambada`, `lm_kjv_hellaswag` over"
        " the built-in task files) or of lm-eval's own tasks (their data must be available "
        "offline, e.g. in the Hugging Face cache). Per-document acc / acc_norm land in the tasks "
        "table as `lm_eval:<task>`; `task_items` limits the documents"
    ),
    "fault_rates": (
        "fault-injection bit error rates: every storage bit of every pool weight flips "
        "independently with this probability (kjv-base: 33.5M bits, so ~3 and ~34 flips per draw)"
    ),
    "fault_trials": "fault draws per rate (each evaluated in every arm)",
    "fault_protect": (
        "fractions of the pool, in (0, 0.5], protected (flips there are not applied): the "
        "top-scored weights by the first seed's scores, and a random set of the same size drawn "
        "uniformly from the rest of the pool"
    ),
    "prune_methods": (
        "pruning methods, each removing the lowest-scored fraction of the pool's weights: any "
        "metric (`metric` names; compared within `prune_group`, scores of the first seed's "
        "calibration draw); `wanda` |W_ij|·‖X_j‖₂ within each output row, `ria` (|W_ij|/Σ_k|W_kj|"
        " + |W_ij|/Σ_k|W_ik|)·‖X_j‖₂^0.5 within each tensor and `sparsegpt` (second-order, the "
        "remaining weights updated to reconstruct each layer's outputs), all three block by "
        "block on the pruned model's activations; `random` uniform scores within `prune_group`"
    ),
    "sparsities": "fractions of every comparison group pruned, each in (0, 1)",
    "prune_group": (
        "comparison group of the metric methods and `random`: `per_row` (each output row, as "
        "Wanda), `per_tensor` (each weight matrix), `global` (the whole pool)"
    ),
    "prune_nm": (
        "N:M semi-structured patterns also run, e.g. `[2:4, 4:8]`: N of every M consecutive "
        "input weights of each row pruned, for every method (`prune_group` does not apply)"
    ),
    "prune_owl": (
        "also run every method at every sparsity with OWL's non-uniform block sparsities (Yin "
        "et al. 2024): blocks with more Wanda-score outliers (> 5× the block's mean) pruned "
        "less, spread over ±0.08 around the target, the mean over blocks equal to it"
    ),
    "finetune_data": (
        "the finetune stage's new text, any source `calib_data` accepts other than "
        "`calib_data` and `eval_data` themselves (`builtin:web`: the World English Bible, modern "
        "English the built-in models never saw). Its windows of `seq_len` are split: "
        "`eval_samples` of them, spread evenly through the text, measure the gain; the others "
        "are trained on"
    ),
    "finetune_k": (
        "size of the critical set the fine-tuning arms freeze or train alone: the top "
        "`finetune_k` pool weights by `metric` (the first seed's scores), against a random set "
        "with the same count in every tensor drawn by each fine-tuning seed"
    ),
    "finetune_steps": "optimizer steps of each fine-tuning run (AdamW, constant learning rate)",
    "finetune_batch": "windows per fine-tuning step, drawn without replacement by the seed",
    "finetune_lr": (
        "AdamW learning rate of every fine-tuning arm (betas 0.9/0.95, no weight decay, no "
        "clipping: arms differ only in which weights may change)"
    ),
    "finetune_seeds": (
        "one fine-tuning run per seed and arm: the seed orders the training windows and draws "
        "the random set; the CIs are over these seeds"
    ),
    "finetune_arms": (
        "the fine-tuning arms to run: `full` (every pool weight), `freeze_top`, `freeze_random` "
        "(all but the top or a random set), `only_top`, `only_random` (only that set: AdamW "
        "holds state for those weights alone, so they fit where the others cannot). A contrast "
        "needs both its arms. The memory guard names the arms that fit"
    ),
    "units": (
        "kinds of structural unit the units stage ranks and perturbs whole: `neuron` (an MLP "
        "intermediate unit: its rows of up and gate, its column of down), `head` (a key/value "
        "group: its query heads' q rows and o columns, its k and v rows; one head without GQA; "
        "fused qkv sliced by layout), `expert` (an MoE expert's matrices), `channel` (a "
        "residual-stream dimension: every row that writes it and every column that reads it, "
        "across blocks). Empty: no unit analysis"
    ),
    "unit_reduce": (
        "`sum`, `mean` or `max`: how a unit's score aggregates the |scores| of its weights "
        "(`metric`, the first seed's)"
    ),
    "unit_topk": (
        "numbers of top units perturbed together (every perturbation at its first strength), "
        "each against `random_draws` sets of random units with the same count in every layer "
        "(as far as a layer has other units: the rest from other layers). A k above half a "
        "kind's units is capped there (the tables' k says what ran). The top unit alone is "
        "`unit_each`'s first experiment"
    ),
    "unit_each": (
        "the top this-many units of each kind are also zeroed one at a time, each against "
        "`random_draws` random units of its own layer (0: none)"
    ),
    "cluster_sample": (
        "clusters stage: pool weights drawn uniformly (seeded, the top ones excluded) and "
        "clustered beside the top ones"
    ),
    "cluster_top": (
        "clusters stage: the top this-many weights by `metric` (first seed) clustered (at most "
        "the pool's size)"
    ),
    "cluster_max_k": (
        "clusters stage: K-means runs for k = 2..cluster_max_k and keeps the best silhouette"
    ),
    "spike_ratio": (
        "super-weight detector: a down projection's strongest input and output activations are "
        "spikes when each is at least this many times the layer's median |activation| (Yu et al. "
        "eyeball > 50 in absolute terms; a ratio is scale-free)"
    ),
    "eval_samples": (
        "evaluation windows: the first ones of the evaluation split; the texts of every paired "
        "bootstrap"
    ),
    "bootstrap": "bootstrap resamples per CI, and sign-flip permutations per p-value",
    "headline_k": (
        "the k of the headline numbers in `metrics.json`, of the strength and mask sweeps and of "
        "the study members' experiments; must be in `topk`"
    ),
    "vocab_size": "built-in tokenizer's vocabulary (>= 257: its 256 bytes and end-of-text)",
    "train_steps": (
        "optimizer steps per built-in model (a step budget, so training is deterministic)"
    ),
    "train_batch": "windows per training step",
    "train_seq_len": "tokens per training window (also the models' context length)",
    "train_lr": "AdamW peak learning rate, in (0, 1) (5% warm-up, cosine to 10%)",
    "train_seed": "initialisation and data-order seed",
    "train_checkpoints": (
        "training steps at which every built-in model also saves a checkpoint (a model "
        "directory `checkpoints/step-<n>` inside its own), for the study's drift analysis; "
        "each below train_steps"
    ),
    "family": (
        "built-in model shapes: `{name: {hidden, layers, heads, intermediate}}`, `hidden` a "
        "multiple of `heads` with an even head size (rotary embeddings rotate pairs); with "
        "`experts: E, active: A` a Mixtral-style mixture of E experts of width `intermediate`, A "
        "per token; each member is one `train@<name>` stage"
    ),
    "models": (
        "the study (at least one model): `{label: {model, revision, family, kind, tuning, step, "
        "dtype}}`, one "
        "`member@<label>` stage each and one `scaling` stage over all. `model`: builtin:<name>, a "
        "hub id or a local directory; `revision`: a hub branch, tag or commit (a Pythia "
        "checkpoint: step3000), for a built-in model a checkpoint `step-<n>` of "
        "train_checkpoints; tags: `family` (free text), `kind` dense | moe (default: read from "
        "the model), `tuning` base | instruct (default base), `step` (training step of a "
        "checkpoint; a built-in's is known), `dtype` (default: `dtype`). Labels are letters, "
        "digits, - and _; add one with `dvc exp run -S \"+models.<label>={model: 'org/name'}\"`"
    ),
}


def fail(key: str, message: str):
    raise CwaError(f"params: `{key}` {message}")


def check_choice(key: str, value, valid):
    if value not in valid:
        fail(key, f"is {value!r}; valid values: {', '.join(valid)}")


_CHECKS: list[Callable[[Params], None]] = []


def check(rule: Callable[[Params], None]) -> Callable[[Params], None]:
    """Registers a rule every Params built afterwards must pass (a registry's names)."""
    _CHECKS.append(rule)
    return rule


def _validate(params: Params):
    if len(set(params.compare_metrics)) < 2:
        fail(
            "compare_metrics",
            f"needs at least 2 distinct metrics, got {list(params.compare_metrics)}",
        )
    check_choice("dtype", params.dtype, DTYPES)
    check_choice("device_map", params.device_map, DEVICE_MAPS)
    _validate_counts(params)
    if params.layer_group < 0:
        fail("layer_group", f"must be >= 0 (0: every block in one pass), got {params.layer_group}")
    if params.num_processes > params.calib_samples:
        fail(
            "num_processes",
            f"is {params.num_processes} but there are {params.calib_samples} calibration windows "
            "per seed (`calib_samples`) to split among the processes: lower it or raise "
            "calib_samples",
        )
    if params.num_processes > 1 and params.device_map != "none":
        fail(
            "num_processes",
            f"is {params.num_processes} with device_map {params.device_map!r}: data parallelism "
            "copies the whole model to each process; split a model over devices in one process "
            "(num_processes: 1) or replicate it (device_map: none)",
        )
    if params.seq_len < 2:
        fail("seq_len", "must be >= 2 (one token predicts the next)")
    if not params.seeds or len(set(params.seeds)) != len(params.seeds):
        fail("seeds", f"must be a non-empty list of distinct integers, got {list(params.seeds)}")
    if (
        not params.topk
        or any(k < 1 for k in params.topk)
        or len(set(params.topk)) != len(params.topk)
    ):
        fail(
            "topk",
            f"must be a non-empty list of distinct positive integers, got {list(params.topk)}",
        )
    if params.headline_k not in params.topk:
        fail("headline_k", f"({params.headline_k}) must be one of topk {list(params.topk)}")
    if params.vocab_size < BYTE_LEVEL_TOKENS:
        fail(
            "vocab_size",
            f"must be >= {BYTE_LEVEL_TOKENS} (the built-in byte-level tokenizer's 256 bytes and "
            f"its end-of-text token), got {params.vocab_size}",
        )
    if params.spike_ratio <= 1:
        fail(
            "spike_ratio",
            f"must be > 1 (a spike is many times the median), got {params.spike_ratio}",
        )
    _validate_ranges(params)
    if params.model.startswith(("/", "./", "../", "~")):
        directory = Path(params.model).expanduser()
        if not (directory / "config.json").exists():
            fail(
                "model",
                f"is the path {params.model!r}, which holds no config.json: give a directory "
                f"saved with save_pretrained, a hub id, or builtin:<name>",
            )
    if (
        params.model.startswith("builtin:")
        and params.model.removeprefix("builtin:") not in params.family
    ):
        fail(
            "model",
            f"names no built-in model; valid: {', '.join('builtin:' + n for n in params.family)}",
        )
    for rule in _CHECKS:
        rule(params)


def _validate_counts(params: Params):
    """Sizes and counts: at least one of each."""
    for key in (
        "calib_samples",
        "seq_len",
        "batch_size",
        "probes",
        "random_draws",
        "eval_samples",
        "bootstrap",
        "headline_k",
        "task_items",
        "fault_trials",
        "num_processes",
        "train_steps",
        "train_batch",
        "train_seq_len",
        "finetune_k",
        "finetune_steps",
        "finetune_batch",
    ):
        if getattr(params, key) < 1:
            fail(key, f"must be >= 1, got {getattr(params, key)}")


def _validate_ranges(params: Params):
    if len(set(params.mask_ratios)) != len(params.mask_ratios) or not all(
        0 < r < 1 for r in params.mask_ratios
    ):
        fail("mask_ratios", f"must be distinct fractions in (0, 1), got {list(params.mask_ratios)}")
    if not params.fault_rates or not all(0 < r < 1 for r in params.fault_rates):
        fail("fault_rates", f"must be bit error rates in (0, 1), got {list(params.fault_rates)}")
    if not all(0 < f <= 0.5 for f in params.fault_protect):
        fail(
            "fault_protect",
            f"must be pool fractions in (0, 0.5] (a random set of the same size must fit "
            f"beside the top set), got {list(params.fault_protect)}",
        )
    if any(layer < 0 for layer in params.target_layers):
        fail("target_layers", f"must be block indices >= 0, got {list(params.target_layers)}")
    if any(s < 0 for s in params.seeds):  # numpy's seed sequences take non-negative integers
        fail("seeds", f"must be integers >= 0, got {list(params.seeds)}")
    if params.train_seed < 0:
        fail("train_seed", f"must be >= 0, got {params.train_seed}")
    if not 0 < params.train_lr < 1:  # also refuses NaN; a larger peak diverges at once
        fail("train_lr", f"must be a learning rate in (0, 1), got {params.train_lr}")
    for name, metrics in params.family.items():
        _validate_member(f"family.{name}", metrics)
    steps = params.train_checkpoints
    if len(set(steps)) != len(steps) or not all(0 < n < params.train_steps for n in steps):
        fail(
            "train_checkpoints",
            f"must be distinct steps in 1..{params.train_steps - 1} (below train_steps), got "
            f"{list(steps)}",
        )
    for label, member in params.models.items():
        _validate_study_member(params, label, member)


def _validate_member(key: str, member: FamilyMember):
    """A shape Llama can build: positive sizes, heads dividing the width into even head sizes
    (rotary embeddings rotate pairs of dimensions)."""
    if min(member.hidden, member.layers, member.heads, member.intermediate) < 1:
        fail(key, f"sizes must be >= 1, got {member}")
    if member.experts and not (member.experts >= 2 and 1 <= member.active <= member.experts):
        fail(
            key,
            f"a mixture of experts needs experts >= 2 and 1 <= active <= experts, got "
            f"experts {member.experts}, active {member.active}",
        )
    if not member.experts and member.active:
        fail(key, f"active ({member.active}) needs experts: set experts >= 2 or drop active")
    if member.hidden % member.heads or (member.hidden // member.heads) % 2:
        fail(
            key,
            f"hidden ({member.hidden}) must be heads ({member.heads}) x an even head size; "
            f"e.g. hidden {member.heads * max(2, 2 * round(member.hidden / member.heads / 2))}",
        )


def _validate_study_member(params: Params, label: str, member: StudyMember):
    """A label DVC and `-S` can address, known tags, and a built-in model (and checkpoint) that
    `family` and `train_checkpoints` will produce."""
    key = f"models.{label}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", label):
        fail(key, "label must be letters, digits, - and _ (it names a DVC stage and a file)")
    if member.kind:
        check_choice(f"{key}.kind", member.kind, KINDS)
    check_choice(f"{key}.tuning", member.tuning, TUNINGS)
    if member.dtype:
        check_choice(f"{key}.dtype", member.dtype, DTYPES)
    if member.step is not None and member.step < 0:
        fail(f"{key}.step", f"must be a training step >= 0, got {member.step}")
    if member.model.startswith("builtin:"):
        if member.model.removeprefix("builtin:") not in params.family:
            valid = ", ".join("builtin:" + n for n in params.family)
            fail(f"{key}.model", f"names no built-in model; valid: {valid}")
        saved = [f"step-{n}" for n in params.train_checkpoints]
        if member.revision and member.revision not in saved:
            fail(
                f"{key}.revision",
                f"is {member.revision!r}; a built-in model's checkpoints: "
                f"{', '.join(saved) or 'none'} (train_checkpoints)",
            )
    elif member.model.startswith(("/", "./", "../", "~")):
        if not (Path(member.model).expanduser() / "config.json").exists():
            fail(f"{key}.model", f"is the path {member.model!r}, which holds no config.json")
        if member.revision:
            fail(f"{key}.revision", "applies to hub ids and built-in models, not a directory")


def _coerce(name: str, ftype: str, value):
    """Converts YAML values to the declared field types; rejects the wrong kind by name."""
    scalar = {"int": int, "float": float, "str": str, "bool": bool, "int | str": (int, str)}
    if ftype.startswith("tuple["):
        if not isinstance(value, list | tuple):
            value = [value]
        inner = ftype[len("tuple[") :].split(",")[0].strip()
        return tuple(_coerce(name, inner, v) for v in value)
    if ftype.startswith("dict["):
        if not isinstance(value, dict):
            fail(name, f"must be a mapping, got {value!r}")
        entry = _study_member if "StudyMember" in ftype else _member
        return {str(k): entry(f"{name}.{k}", v) for k, v in value.items()}
    kind = scalar[ftype]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        fail(name, f"must be {ftype}, got {value!r}")
    return value


def _member(name: str, value) -> FamilyMember:
    valid = [f.name for f in fields(FamilyMember)]
    required = [f.name for f in fields(FamilyMember) if f.default is dataclasses.MISSING]
    if not isinstance(value, dict) or not set(required) <= set(value) <= set(valid):
        fail(
            name,
            f"must be a mapping with the keys {', '.join(required)} (and optionally "
            f"{', '.join(sorted(set(valid) - set(required)))}), got {value!r}",
        )
    return FamilyMember(**{k: _coerce(f"{name}.{k}", "int", v) for k, v in value.items()})


def _study_member(name: str, value) -> StudyMember:
    if isinstance(value, str):  # `label: builtin:kjv-tiny` is the model alone
        value = {"model": value}
    valid = {f.name: f for f in fields(StudyMember)}
    if not isinstance(value, dict) or "model" not in value or not set(value) <= set(valid):
        fail(name, f"must be a model or a mapping with `model` and any of {', '.join(valid)}")
    if value.get("step") is not None:
        value = value | {"step": _coerce(f"{name}.step", "int", value["step"])}
    text = {
        k: _coerce(f"{name}.{k}", "str", str(v) if k == "revision" else v)
        for k, v in value.items()
        if k != "step"
    }
    return StudyMember(**text, step=value.get("step"))


def field_names() -> list[str]:
    """Params' own keys (the registered ones aside)."""
    return [f.name for f in fields(Params) if f.name != "registered"]


def all_keys() -> list[str]:
    """Every key: Params' own, then those the imported modules registered."""
    return [*field_names(), *KEYS]


def params_from_dict(raw: dict, strict: bool = True) -> Params:
    """Typed, checked Params. `strict` refuses a key that is neither a field nor registered;
    a stage loads non-strictly, keeping keys of modules it does not import unread (the
    check_params stage, which imports every registry, has refused typos before it runs)."""
    types = {f.name: str(f.type) for f in fields(Params)} | {k.name: k.ftype for k in KEYS.values()}
    types.pop("registered")
    unknown = sorted(set(raw) - set(types))
    if unknown and strict:
        raise CwaError(
            f"params: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(types)}"
        )
    values = {k: _coerce(k, types[k], v) for k, v in raw.items() if k in types}
    own = {k: v for k, v in values.items() if k not in KEYS}
    registered = {k: v for k, v in values.items() if k in KEYS}
    return Params(**own, registered=registered | {k: raw[k] for k in unknown})


class ParamsLoader(yaml.SafeLoader):
    """YAML as DVC writes params.yaml (ruamel, YAML 1.2): no base-60 numbers, and 1e-7 is a
    float. DVC writes the string 2:4 unquoted after `dvc exp run -S`, which YAML 1.1 would read
    as the number 124."""


ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if not tag.endswith((":int", ":float"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
ParamsLoader.add_implicit_resolver(  # YAML 1.2's floats: 1e-7 too, not only 1.0e-7
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str):
    """Params YAML (params.yaml, presets, `--set` values), read as DVC writes it."""
    return yaml.load(text, Loader=ParamsLoader)


def load_params(path: str | Path = "params.yaml", strict: bool = True) -> Params:
    path = Path(path)
    if not path.exists():
        raise CwaError(f"params file {path} not found")
    raw = read_yaml(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise CwaError(f"params file {path} must hold a mapping of keys to values")
    return params_from_dict(raw, strict)


class StageParams:
    """The params one stage declared (its PARAMS, which dvc.yaml lists too): reading any other
    key raises, so DVC reruns a stage for every key that can change what it computes. Properties
    of Params (pool_options) read through the view and are checked the same way."""

    def __init__(self, params: Params, keys: tuple[str, ...]):
        self._params, self._keys = params, frozenset(keys)

    def __getattr__(self, key: str):
        if key in _FIELDS or key in KEYS:
            if key not in self._keys:
                raise AttributeError(
                    f"params `{key}` is read but not declared: add it to the stage's PARAMS and "
                    f"its `params:` in dvc.yaml"
                )
            return getattr(self._params, key)
        attr = getattr(Params, key)
        return attr.fget(self) if isinstance(attr, property) else attr

    def as_dict(self) -> dict:
        return {k: v for k, v in as_dict(self._params).items() if k in self._keys}


_FIELDS = frozenset(field_names())


def as_dict(params: Params | StageParams) -> dict:
    """Plain-data form for manifests, flat like params.yaml (a stage's: the keys it declared)."""
    if isinstance(params, StageParams):
        return params.as_dict()
    plain = dataclasses.asdict(params)
    return plain | plain.pop("registered")
