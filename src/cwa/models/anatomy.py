"""The anatomy of a causal LM: each parameter's layer, component, storage axes and head
geometry, the block stack, and the pool of tensors cwa scores."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from cwa import CwaError

# The families cwa classifies, each tested on a tiny model built from its config
# (tests/test_architectures.py).
ARCHITECTURES = (
    "Llama", "Mistral", "Mixtral", "Qwen2", "Qwen3", "Gemma", "Gemma-2", "OLMo", "Phi", "Phi-3",
    "GPT-2", "GPT-J", "GPT-Neo", "GPT-NeoX", "CodeGen", "GPTBigCode", "Falcon", "OPT",
)  # fmt: skip

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
    (r"(up_proj|fc1|fc_in|c_fc|dense_h_to_4h|w3)$", "mlp_up"),
    (r"(down_proj|fc2|fc_out|mlp\.c_proj|dense_4h_to_h|w2)$", "mlp_down"),
    (r"(embed_tokens|wte|embed_in|word_embeddings)$", "embed"),
    (r"(wpe|embed_positions)$", "pos_embed"),
    (r"(lm_head|embed_out)$", "lm_head"),
    (r"(norm|ln_\w+|layernorm|ln_f|final_layer_norm)$", "norm"),
)
# How a fused q/k/v projection orders its output features, by the config's model_type, read from
# each architecture's attention code: "split" [every q head | every k head | every v head];
# "grouped" per key/value head g [its query heads, k_g, v_g] (GPT-NeoX: per head [q, k, v];
# multi-query GPTBigCode and Falcon-7B: [every q head, k, v]); "codegen" 4 partitions,
# each [q | v | k] of a quarter of the heads.
_FUSED_QKV = {
    "gpt2": "split",
    "phi3": "split",
    "gpt_neox": "grouped",
    "falcon": "grouped",
    "gpt_bigcode": "grouped",
    "codegen": "codegen",
}
_CODEGEN_PARTITIONS = 4  # CodeGen's attention fixes mp_num = 4
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
    qkv_layout: str = ""  # a fused qkv weight's layout (_FUSED_QKV); "" elsewhere or unknown

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
        f"architectures: {', '.join(ARCHITECTURES)})"
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
    config = getattr(model, "config", None)
    geometry = _head_geometry(config)
    layout = _FUSED_QKV.get(getattr(config, "model_type", None), "")
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
                qkv_layout=layout if attention and component == "attn_qkv" else "",
            )
        )
    return infos


def _head_geometry(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) from the model config; zeros if unknown."""
    n_heads = getattr(config, "num_attention_heads", None)
    if not n_heads:
        return 0, 0, 0
    if getattr(config, "multi_query", False) and not getattr(
        config, "new_decoder_architecture", False
    ):
        n_kv = 1  # GPTBigCode, Falcon-7B: one key/value head for all query heads
    else:  # Falcon names it num_kv_heads
        n_kv = (
            getattr(config, "num_key_value_heads", None)
            or getattr(config, "num_kv_heads", None)
            or n_heads
        )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return n_heads, n_kv, head_dim


def head_chunks(info: ParamInfo) -> list[tuple[str, int]]:
    """(role, head) of each head_dim-wide slice of an attention weight's head axis, in order:
    the output features of q/k/v/qkv, the input features of o (one per query head). Role "q"
    names a query head; "k" and "v" a key/value head."""
    heads, kv, component = info.heads, info.kv_heads, info.component
    q = [("q", h) for h in range(heads)]
    if component in ("attn_q", "attn_o"):
        return q
    if component in ("attn_k", "attn_v"):
        return [(component[-1], g) for g in range(kv)]
    if info.qkv_layout == "split":
        return q + [("k", g) for g in range(kv)] + [("v", g) for g in range(kv)]
    if info.qkv_layout == "grouped":
        per_kv = heads // kv
        return [
            c for g in range(kv) for c in (*q[g * per_kv : (g + 1) * per_kv], ("k", g), ("v", g))
        ]
    if info.qkv_layout == "codegen":
        share = heads // _CODEGEN_PARTITIONS
        return [
            (role, p * share + j)
            for p in range(_CODEGEN_PARTITIONS)
            for role in ("q", "v", "k")
            for j in range(share)
        ]
    raise CwaError(f"unknown fused attention layout of {info.name}: its heads cannot be sliced")


def head_features(info: ParamInfo, g: int) -> torch.Tensor:
    """Features of key/value head g (with its query heads, heads // kv_heads of them) along an
    attention weight's head axis (head_chunks), ascending."""
    per_kv = info.heads // info.kv_heads
    slices = [
        n
        for n, (role, head) in enumerate(head_chunks(info))
        if (head // per_kv if role == "q" else head) == g
    ]
    hd = info.head_dim
    return (torch.tensor(slices)[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)


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
            keep = (matrix or include_1d) and (
                (include_embeddings and i.component in outside)
                or (not matrix and i.component == "norm" and not layers)
            )  # a 1-d lm_head bias (Phi, GPT-J, CodeGen) is a bias: only with include_1d
        if keep:
            chosen.append(i)
    if not chosen:
        raise CwaError("the ranking pool is empty: check `layers`, `include_embeddings`")
    return chosen


def group_ranges(blocks: int, size: int) -> list[range]:
    """Consecutive runs of `size` block indices covering `blocks` blocks."""
    return [range(k, min(k + size, blocks)) for k in range(0, blocks, size)]
