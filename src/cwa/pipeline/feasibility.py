"""Params this machine or this model cannot serve, refused before any stage reads a weight.

Validation (cwa.config.params) checks each value on its own. Some values are valid only for a
machine or a model: a `device` the machine lacks, a k larger than a ranking group or a clustered
top set larger than the pool, a block the model does not have, a window longer than its position
embeddings. These checks need only the model's config: an empty (meta-device) model built from
it gives every tensor's name and shape in a second, even for a 70B model. Two more look beyond
one value: a study must name a model, and an `lm_eval_tasks` name must be a task lm-eval knows
(its task index, read here rather than in the perturb stage's set-up). The check_params stage and
`cwa run` run them all before DVC starts any stage that loads weights, so such a value never
costs a sensitivity pass.

The one refusal that must wait for the scores is a random_k control the top set leaves too few
weights for in one tensor (ranking.sample_excluding): it depends on where the top set lands. It
comes from the rank stage, which is cheap, before any perturbation runs.
"""

from __future__ import annotations

import torch
from torch import nn

from cwa.config.params import Params, fail
from cwa.models.anatomy import ParamInfo, describe, pool
from cwa.models.loading import BUILTIN, check_positions
from cwa.pipeline.paths import LM_EVAL_CONFIGS
from cwa.selection.ranking import CONTROLS, MODES, MemberScores, target


def check_machine(device: str, device_map: str, num_processes: int) -> None:
    """`device`, `device_map` and `num_processes` against the GPUs this machine has."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    here = "auto, cpu" + (f", cuda, cuda:0..cuda:{gpus - 1}" if gpus else "")
    kind, _, index = device.partition(":")
    if kind == "cuda" and (not gpus or (index and int(index) >= gpus)):
        fail("device", f"is {device!r} but this machine has {gpus} CUDA GPU(s); valid here: {here}")
    if device_map != "none" and not gpus:
        fail("device_map", f"is {device_map!r}, which splits a model over GPUs; here are none")
    if num_processes > 1 and device != "cpu" and gpus and num_processes > gpus:
        fail("num_processes", f"is {num_processes} but this machine has {gpus} GPU(s): one each")


def empty_model(params: Params) -> nn.Module | None:
    """The model under study without its weights (meta device), from `family` for a built-in
    model and from config.json otherwise. A hub id's config comes from the local Hugging Face
    cache only (offline, the hub's retries would take half a minute); None when it is not
    there: the model's first load downloads it, and checks its positions (models.load_model)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from cwa.models.training import builtin_config

    if params.model.startswith(BUILTIN):
        shape = params.family[params.model.removeprefix(BUILTIN)]
        config = builtin_config(shape, params.vocab_size, params.train_seq_len)
    else:
        try:
            config = AutoConfig.from_pretrained(params.model, local_files_only=True)
        except (OSError, ValueError):
            return None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check_ranking(infos: list[ParamInfo], params: Params) -> None:
    """Every k of `topk` fits every group of the ranking mode, twice over with random_k (the
    random set is drawn beside the top set), over the pool and the targeted tensors."""
    chosen = target(
        pool(infos, **params.pool_options), params.target_components, params.target_layers
    )
    groups = MODES.get(params.mode).groups(chosen)
    groups = [(name, sum(MemberScores({}, members).sizes)) for name, members in groups]
    random = any(CONTROLS.get(c).random for c in params.controls)
    factor = 2 if random else 1
    name, smallest = min(groups, key=lambda g: g[1])
    k = max(params.topk)
    if factor * k > smallest:
        need = " (random_k draws as many again beside the top set)" if random else ""
        fail(
            "topk",
            f"{k} does not fit: mode {params.mode} ranks {len(groups)} group(s) and the smallest, "
            f"{name}, holds {smallest} weights{need}; valid: every k <= {smallest // factor}",
        )


def check_finetune(infos: list[ParamInfo], params: Params) -> None:
    """The fine-tuning sets fit the pool: the random set is drawn beside the top set."""
    size = sum(i.numel for i in pool(infos, **params.pool_options))
    if 2 * params.finetune_k > size:
        fail(
            "finetune_k",
            f"is {params.finetune_k} but the pool holds {size} weights and the random set is drawn "
            f"beside the top set; valid: finetune_k <= {size // 2}",
        )


def check_clusters(infos: list[ParamInfo], params: Params) -> None:
    """The clustered top set fits the pool (the clusters stage takes the top `cluster_top`)."""
    size = sum(i.numel for i in pool(infos, **params.pool_options))
    if params.cluster_top > size:
        fail(
            "cluster_top",
            f"is {params.cluster_top} but the pool holds {size} weights; valid: cluster_top <= "
            f"{size}",
        )


def check_study(params: Params) -> None:
    """The study has a member: the member@ stages and the scaling stage read `models`."""
    if not params.models:
        fail(
            "models",
            "is empty, but the study (member@<label> stages, the scaling stage) needs a model; "
            "add one with `dvc exp run -S \"+models.<label>={model: 'org/name'}\"`",
        )


def check_lm_eval_tasks(params: Params, include: str = LM_EVAL_CONFIGS) -> None:
    """Every `lm_eval_tasks` name is a task lm-eval knows, under `include` or its own (the
    perturb stage would find out only after the sweep's set-up)."""
    if params.lm_eval_tasks:
        from cwa.evaluation.lmeval import task_manager

        task_manager(params.lm_eval_tasks, include)


def check_units(infos: list[ParamInfo], params: Params) -> None:
    """Each kind of `units` exists in the pool (unit_topk is capped per kind by the stage)."""
    from cwa.selection.units import units_of

    chosen = pool(infos, **params.pool_options)
    for kind in params.units:
        units_of(chosen, kind)


def check_strengths(params: Params) -> None:
    """Every strength of every listed perturbation applies in `dtype` (bit 30 exists in fp32,
    not in bf16): what the sweep checks again before it starts."""
    from cwa.experiments.perturbations import check as applies
    from cwa.experiments.sweep import SweepConfig, specs

    for perturbation, strengths in specs(SweepConfig.of(params)):
        for strength in strengths:
            applies(perturbation, strength, getattr(torch, params.dtype))


def check(params: Params) -> None:
    """Every check above for params (already validated on their own)."""
    check_machine(params.device, params.device_map, params.num_processes)
    check_strengths(params)
    check_study(params)
    check_lm_eval_tasks(params)
    model = empty_model(params)
    if model is None:
        return
    check_positions(model.config, params.seq_len, params.model)
    infos = describe(model)
    check_ranking(infos, params)
    check_finetune(infos, params)
    check_clusters(infos, params)
    check_units(infos, params)
