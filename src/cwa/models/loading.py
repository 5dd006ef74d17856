"""Loading causal LMs (built-in, hub id or local directory) and describing their parameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cwa import CwaError
from cwa.core.devices import resolve_device

BUILTIN = "builtin:"


def resolve_model(spec: str, builtin_dir: str | Path, revision: str = "") -> str:
    """`builtin:<name>` -> its directory under `builtin_dir` (a `revision`: its checkpoint
    directory there); anything else is passed through."""
    if not spec.startswith(BUILTIN):
        return spec
    path = Path(builtin_dir) / spec.removeprefix(BUILTIN)
    if revision:
        path = path / "checkpoints" / revision
    if not (path / "config.json").exists():
        raise CwaError(
            f"built-in model {spec} not found at {path}: train it with `dvc repro train` "
            f"(or `make repro`)"
        )
    return str(path)


def load_model(
    spec: str,
    builtin_dir: str | Path,
    dtype: str = "float32",
    device: str = "auto",
    attn_implementation: str | None = None,
    device_map: str = "none",
    max_memory: dict | None = None,
    revision: str = "",
):
    """Loads (model, tokenizer) through AutoModelForCausalLM / AutoTokenizer, in eval mode;
    `revision`: a hub branch, tag or commit, or a built-in model's checkpoint (`step-<n>`).

    device_map "none" puts the whole model on `device`; any other strategy (auto, balanced,
    balanced_low_0, sequential) splits it over the visible GPUs with accelerate, planned before
    any weight is read, and refuses a plan that offloads to CPU or disk. transformers 5 always
    loads through the meta device (what `low_cpu_mem_usage=True` did in 4.x).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec, builtin_dir, revision)
    local = Path(source).exists()
    if not local and (source.startswith((".", "/")) or source.count("/") > 1):
        raise CwaError(f"model directory {source} does not exist")
    kwargs = {"dtype": getattr(torch, dtype)}
    hub = {"revision": revision} if revision and not local else {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
        if device_map != "none":
            kwargs["device_map"] = plan_devices(
                spec, source, kwargs["dtype"], device_map, max_memory, hub
            )
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs, **hub)
    except OSError as err:
        raise CwaError(
            f"could not load model {spec!r}: it is not a local directory with config.json and "
            f"the Hugging Face Hub could not provide it (offline? set HF_HUB_OFFLINE=1 to use "
            f"the local cache only, or pass a directory saved with save_pretrained): {err}"
        ) from err
    if device_map == "none":
        model.to(resolve_device(device))
    model.eval()  # dropout off for every scoring and evaluation pass
    check_finite(model, spec)
    return model, tokenizer


@dataclass(frozen=True)
class ModelConfig:
    """How the model under study loads and the windows it must serve (params: model, dtype,
    device, device_map, seq_len)."""

    model: str
    dtype: str
    device: str
    device_map: str
    seq_len: int

    @classmethod
    def of(cls, params) -> ModelConfig:
        return cls(params.model, params.dtype, params.device, params.device_map, params.seq_len)


def check_positions(config, seq_len: int, model: str) -> None:
    """A window must fit the positions the model was built for (learned position embeddings
    fail beyond them; rotary ones run, but measure extrapolation rather than the model)."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0)
    if limit and seq_len > limit:
        raise CwaError(
            f"params: `seq_len` is {seq_len} but {model} serves windows of at most {limit} "
            f"tokens (max_position_embeddings in its config): lower `seq_len`"
        )


def load_studied(config: ModelConfig, builtin_dir: str | Path, device: str | None = None):
    """(model, tokenizer) of the model under study (`device` overrides the config's, e.g. a
    data-parallel process's own GPU); refuses a `seq_len` beyond its positions (check_params
    refused it earlier unless the model's config was not at hand then)."""
    model, tokenizer = load_model(
        config.model,
        builtin_dir,
        config.dtype,
        device or config.device,
        device_map=config.device_map,
    )
    check_positions(model.config, config.seq_len, config.model)
    return model, tokenizer


def plan_devices(
    spec: str,
    source: str,
    dtype: torch.dtype,
    strategy: str,
    max_memory: dict | None = None,
    hub: dict | None = None,
) -> dict[str, int | str]:
    """accelerate's placement of each block for `strategy`, computed on an empty (meta) model
    (`hub`: from_pretrained's revision)."""
    from accelerate import init_empty_weights
    from accelerate.utils import get_balanced_memory, get_max_memory, infer_auto_device_map
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        config = AutoConfig.from_pretrained(source, **(hub or {}))
        empty = AutoModelForCausalLM.from_config(config, dtype=dtype)
    keep_whole = empty._no_split_modules
    if strategy == "sequential":
        memory = get_max_memory(max_memory)
    else:
        memory = get_balanced_memory(
            empty,
            max_memory=max_memory,
            no_split_module_classes=keep_whole,
            dtype=dtype,
            low_zero=strategy == "balanced_low_0",
        )
    plan = infer_auto_device_map(
        empty, max_memory=memory, no_split_module_classes=keep_whole, dtype=dtype
    )
    refuse_offload(plan, spec)
    return plan


def refuse_offload(plan: dict[str, int | str], spec: str) -> None:
    """cwa edits weights in place and takes their gradients; offloaded modules (kept on CPU or
    disk by accelerate hooks, copied in at each forward) would keep neither."""
    places = set(plan.values())
    offloaded = "disk" in places or ("cpu" in places and places != {"cpu"})
    if offloaded:
        where = sorted(
            name or "the whole model" for name, p in plan.items() if p in ("cpu", "disk")
        )
        listed = ", ".join(where[:4]) + (", ..." if len(where) > 4 else "")
        raise CwaError(
            f"model {spec!r} does not fit on the available devices: device_map would offload "
            f"{len(where)} module(s) to CPU/disk ({listed}). Offloaded weights "
            f"live outside the model between forwards, so perturbations would not persist and "
            f"gradients would not reach them. Use more or larger GPUs, dtype bfloat16, or a "
            f"smaller model"
        )


def check_finite(model: nn.Module, spec: str) -> None:
    """A checkpoint with NaN/inf weights fails here, naming where, not later as a NaN loss."""
    bad = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            count = int((~torch.isfinite(p)).sum())
            if count:
                bad.append(f"{name} ({count} of {p.numel()})")
    if bad:
        raise CwaError(f"model {spec!r} has non-finite weights in: {'; '.join(bad[:10])}")


def count_parameters(model: nn.Module) -> int:
    """Parameter count with tied parameters once (named_parameters deduplicates)."""
    return sum(p.numel() for p in model.parameters())
