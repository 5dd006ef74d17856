"""Loading causal LMs (built-in, hub id or local directory) and describing their parameters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cwa import CwaError
from cwa.devices import resolve_device

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


# Parameter path (less a trailing .weight/.bias) -> component, for the architectures cwa knows.
# Order matters: first match wins.
_COMPONENTS: tuple[tuple[str, str], ...] = (
    (r"experts\.gate_up_proj$", "moe_gate_up"),  # fused [experts, 2·ff, hidden] (transformers 5)
    (r"experts\.(\d+\.)?(w1|gate_proj)$", "moe_gate"),
    (r"experts\.(\d+\.)?(w3|up_proj)$", "moe_up"),
    (r"experts\.(\d+\.)?(w2|down_proj)$", "moe_down"),
    (r"(mlp\.gate|block_sparse_moe\.gate|router)$", "router"),
    (r"\.(c_attn|query_key_value|qkv_proj|Wqkv)$", "attn_qkv"),
    (r"\.(q_proj|query)$", "attn_q"),
    (r"\.(k_proj|key)$", "attn_k"),
    (r"\.(v_proj|value)$", "attn_v"),
    (r"(o_proj|out_proj|attn\.c_proj|attention\.dense|self_attn\.dense)$", "attn_o"),
    (r"gate_up_proj$", "mlp_gate_up"),
    (r"(gate_proj|w1)$", "mlp_gate"),
    (r"(up_proj|fc1|c_fc|dense_h_to_4h|w3)$", "mlp_up"),
    (r"(down_proj|fc2|mlp\.c_proj|dense_4h_to_h|w2)$", "mlp_down"),
    (r"(embed_tokens|wte|embed_in|word_embeddings)$", "embed"),
    (r"(wpe|embed_positions)$", "pos_embed"),
    (r"(lm_head|embed_out)$", "lm_head"),
    (r"(norm|ln_\w+|layernorm|ln_f|final_layer_norm)$", "norm"),
)
_LAYER = re.compile(r"\.(?:layers|h|layer|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class ParamInfo:
    """Where a parameter sits: layer, component and the axis convention of its storage."""

    name: str
    layer: int  # -1 outside the transformer blocks
    component: str
    shape: tuple[int, ...]
    transposed: bool  # GPT-2 Conv1D stores [in, out]; nn.Linear stores [out, in]
    # The model's attention geometry, on attention weights (q/k/v/qkv/o); 0 elsewhere.
    heads: int = 0  # query heads
    kv_heads: int = 0  # key/value heads (GQA: fewer than heads)
    head_dim: int = 0

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    def row_col(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output feature, input feature) of flat storage indices, nn.Linear convention."""
        if len(self.shape) < 2:
            return flat, torch.zeros_like(flat)
        cols = self.shape[-1]
        a, b = flat // cols, flat % cols
        return (b, a) if self.transposed else (a, b)


def block_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(parameter-name prefix of block 0 less its index, e.g. "model.layers.", the blocks)."""
    for name, _ in model.named_parameters():
        found = _LAYER.search(f".{name}")
        if found:
            path = name[: found.start(1) - 2]
            blocks = model.get_submodule(path)
            if isinstance(blocks, nn.ModuleList):
                return f"{path}.", blocks
    raise CwaError(f"{type(model).__name__}: no list of transformer blocks found")


def classify(name: str) -> str:
    path = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    for pattern, component in _COMPONENTS:
        if re.search(pattern, path):
            return component
    raise CwaError(
        f"cannot classify parameter {name!r}: its name matches no known component (known "
        f"architectures: Llama, Mistral, Mixtral, Qwen2, Gemma, Phi-3, GPT-2, GPT-NeoX, OPT)"
    )


def owning_modules(model: nn.Module, names) -> dict[str, nn.Module | None]:
    """The module each parameter belongs to (`a.b.weight` -> module `a.b`; None if absent)."""
    modules = dict(model.named_modules())
    return {name: modules.get(name.rsplit(".", 1)[0]) for name in names}


def along_inputs(info: ParamInfo, per_input: torch.Tensor) -> torch.Tensor:
    """A per-input-feature vector shaped to broadcast against the stored weight: columns of
    nn.Linear's [out, in], rows of GPT-2 Conv1D's [in, out]."""
    return per_input[:, None] if info.transposed else per_input[None, :]


def describe(model: nn.Module) -> list[ParamInfo]:
    """One ParamInfo per parameter (tied ones once), in named_parameters order."""
    from transformers.pytorch_utils import Conv1D

    owners = owning_modules(model, [name for name, _ in model.named_parameters()])
    geometry = _head_geometry(getattr(model, "config", None))
    infos = []
    for name, p in model.named_parameters():
        layer = _LAYER.search(f".{name}")
        owner = owners[name]
        component = classify(name)
        attention = component.startswith("attn_") and p.dim() == 2
        n_heads, n_kv, head_dim = geometry if attention else (0, 0, 0)
        infos.append(
            ParamInfo(
                name=name,
                layer=int(layer.group(1)) if layer else -1,
                component=component,
                shape=tuple(p.shape),
                transposed=isinstance(owner, Conv1D) and name.endswith("weight"),
                heads=n_heads,
                kv_heads=n_kv,
                head_dim=head_dim,
            )
        )
    return infos


def _head_geometry(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) from the model config; zeros if unknown."""
    n_heads = getattr(config, "num_attention_heads", None)
    if not n_heads:
        return 0, 0, 0
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return n_heads, n_kv, head_dim


def pool(
    infos: list[ParamInfo],
    include_embeddings: bool = False,
    include_1d: bool = False,
    layers: tuple[int, ...] = (),
) -> list[ParamInfo]:
    """The weights that compete for 'critical': by default every matrix of the transformer blocks.

    include_embeddings adds embeddings and lm_head; include_1d adds norm gains and biases (block
    ones, and the final norm); `layers` keeps only those block indices (embeddings stay if asked).
    """
    known = sorted({i.layer for i in infos if i.layer >= 0})
    unknown = sorted(set(layers) - set(known))
    if unknown:
        raise CwaError(
            f"params: `layers` {unknown} do not exist; the model has layers {known[0]}..{known[-1]}"
        )
    outside = ("embed", "lm_head", "pos_embed")
    chosen = []
    for i in infos:
        matrix = len(i.shape) >= 2
        if i.layer >= 0:
            keep = (matrix or include_1d) and (not layers or i.layer in layers)
        else:
            keep = (include_embeddings and i.component in outside) or (
                include_1d and not matrix and i.component == "norm" and not layers
            )
        if keep:
            chosen.append(i)
    if not chosen:
        raise CwaError("the ranking pool is empty: check `layers`, `include_embeddings`")
    return chosen


def group_ranges(blocks: int, size: int) -> list[range]:
    """Consecutive runs of `size` block indices covering `blocks` blocks."""
    return [range(k, min(k + size, blocks)) for k in range(0, blocks, size)]
