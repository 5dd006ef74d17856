"""Mixture-of-experts: how much of a model's sensitivity each expert holds, and how many tokens
its router sent it.

The router's top-k choice is read from its logits (top-k of the logits = top-k of the softmax)
with k = the config's experts per token, so Mixtral (transformers 4.x Linear gate, 5.x router
module returning (logits, weights, indices)), Qwen-MoE and OLMoE read alike. An expert that saw
fewer than MIN_TOKEN_FRACTION of its uniform share of the routed tokens is flagged: its
gradient-based scores rest on few tokens and say little about it.
"""

from __future__ import annotations

import polars as pl
import torch

from cwa.core.hooks import forward_hooks
from cwa.models.anatomy import ParamInfo, owning_modules
from cwa.selection.units import unit_scores, units_of

MIN_TOKEN_FRACTION = 0.1


def is_moe(infos: list[ParamInfo]) -> bool:
    return any(i.component.startswith("moe_") for i in infos)


def experts_in(config) -> int:
    """Experts per block from the model config (0: dense)."""
    return int(getattr(config, "num_local_experts", 0) or getattr(config, "num_experts", 0) or 0)


def active_parameters(infos: list[ParamInfo], config, total: int) -> int:
    """Parameters one token uses: all of them less the unchosen experts' share of the expert
    weights (`infos`: every parameter of the model)."""
    experts = experts_in(config)
    if not experts or not is_moe(infos):
        return total
    in_experts = sum(i.numel for i in infos if i.component.startswith("moe_"))
    return round(total - in_experts * (1 - experts_per_token(config) / experts))


def experts_per_token(config) -> int:
    for key in ("num_experts_per_tok", "moe_topk", "top_k"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return 1


def routed_tokens(model, infos: list[ParamInfo], windows: torch.Tensor, batch_size: int):
    """(layer, expert, tokens): how many of the windows' tokens each block's router sent to each
    expert (a token counts once for each of the k experts it is routed to)."""
    routers = [i for i in infos if i.component == "router" and i.name.endswith("weight")]
    modules = owning_modules(model, [i.name for i in routers])
    layer = {i.name: i.layer for i in routers}
    k = experts_per_token(model.config)
    counts: dict[str, torch.Tensor] = {}

    def hook(name, module, inputs, output):
        logits = output[0] if isinstance(output, tuple) else output
        logits = logits.detach().float().reshape(-1, logits.shape[-1])
        chosen = logits.topk(k, dim=-1).indices.reshape(-1).cpu()
        seen = torch.bincount(chosen, minlength=logits.shape[-1])
        counts[name] = counts[name] + seen if name in counts else seen

    device = next(model.parameters()).device
    with forward_hooks(modules, hook), torch.inference_mode():
        for batch in windows.split(batch_size):
            model(input_ids=batch.to(device), use_cache=False)
    rows = [(layer[name], e, int(n)) for name, seen in counts.items() for e, n in enumerate(seen)]
    return pl.DataFrame(rows, schema=["layer", "expert", "tokens"], orient="row")


def expert_table(infos: list[ParamInfo], scores, routed: pl.DataFrame, total: float):
    """Per expert: its share of the pool's total |score| (`total`), the tokens routed to it, its
    share of its block's routed tokens, and whether it saw too few (MIN_TOKEN_FRACTION)."""
    units = unit_scores(units_of(infos, "expert"), scores, "sum")
    table = units.select("layer", pl.col("index").alias("expert"), "score").join(
        routed, on=["layer", "expert"], how="left"
    )
    experts = table.group_by("layer").len().rename({"len": "experts"})
    table = table.join(experts, on="layer").with_columns(
        score_share=pl.col("score") / total,
        token_share=pl.col("tokens") / pl.col("tokens").sum().over("layer"),
    )
    return table.with_columns(
        few_tokens=pl.col("token_share") < MIN_TOKEN_FRACTION / pl.col("experts")
    ).select("layer", "expert", "score_share", "tokens", "token_share", "few_tokens")
