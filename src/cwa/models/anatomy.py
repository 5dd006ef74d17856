"""The anatomy of a causal LM: each parameter's layer, component, storage axes and head
geometry, the block stack, and the pool of tensors cwa scores."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from cwa import CwaError

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
