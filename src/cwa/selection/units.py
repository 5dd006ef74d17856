"""Structural units: the MLP neuron, the attention head, the MoE expert and the residual channel,
each a set of whole rows and columns of the pool's weights, scored and perturbed as one.

Every kind assigns units along one axis of each pool tensor it touches (an `Axis`): an output
feature, an input feature, an expert slice of a fused expert tensor, or a 1-D element. Scores
are reduced per feature in one pass over each tensor and gathered per unit, so a model with
hundreds of thousands of neurons never materialises their index sets; only the units an
experiment perturbs are expanded into flat indices (`weights_of`).

  neuron   MLP intermediate unit j of a block: row j of up and gate (rows j and ff + j of a fused
           gate_up), column j of down; elements j of up/gate biases when the pool has them.
           Dense MLPs only (an expert's neurons belong to the expert).
  head     a key/value group of a block: its query heads' q rows and o columns, its k and v rows
           (fused qkv sliced by layout, as `per_head` ranking does); one head without GQA.
  expert   MoE expert e of a block: slice e of the fused expert tensors, or its own modules.
  channel  residual-stream dimension d: every row that writes it (attention output, MLP and
           expert down projections) and every column that reads it (q/k/v, up/gate, router,
           experts' up), across blocks; with embeddings in the pool their column d too, with
           1-D parameters the norms' element d.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from cwa import CwaError
from cwa.config.params import check as params_check
from cwa.config.params import check_choice, fail
from cwa.models.anatomy import ParamInfo, head_features
from cwa.selection.ranking import feature_flat

KINDS = ("neuron", "head", "expert", "channel")
REDUCES = ("sum", "mean", "max")


@params_check
def _valid_units(p) -> None:
    for kind in p.units:
        check_choice("units", kind, KINDS)
    if len(set(p.units)) != len(p.units):
        fail("units", f"must be distinct, got {list(p.units)}")
    check_choice("unit_reduce", p.unit_reduce, REDUCES)
    if not p.unit_topk or min(p.unit_topk) < 1 or len(set(p.unit_topk)) != len(p.unit_topk):
        fail("unit_topk", f"must be distinct positive integers, got {list(p.unit_topk)}")
    if p.unit_each < 0:
        fail("unit_each", f"must be >= 0, got {p.unit_each}")


@dataclass(frozen=True)
class Axis:
    """Which unit each slice of a pool tensor along storage dimension `dim` belongs to (-1:
    none); dim None: the whole tensor is one unit's."""

    info: ParamInfo
    dim: int | None
    unit: torch.Tensor  # (slices,) int64 unit ids


def along(info: ParamInfo, feature: str) -> int:
    """The storage dimension of `out` or `in` features (nn.Linear convention; GPT-2's Conv1D
    stores [in, out]; fused experts [experts, out, in])."""
    if len(info.shape) == 1:
        return 0
    if len(info.shape) == 3:
        return 1 if feature == "out" else 2
    return int((feature == "out") == info.transposed)


@dataclass(frozen=True)
class Units:
    """Every unit of one kind: a table (unit id, layer, index, label) and the axes."""

    kind: str
    table: pl.DataFrame  # unit, layer, index, label
    axes: list[Axis]


def units_of(infos: list[ParamInfo], kind: str) -> Units:
    """Every unit of `kind` in the pool; refuses a pool without one, naming what it holds."""
    rows, axes = {"neuron": _neurons, "head": _heads, "expert": _experts, "channel": _channels}[
        kind
    ](infos)
    if not rows:
        comps = ", ".join(sorted({i.component for i in infos}))
        raise CwaError(f"params: `units` {kind}: the pool holds none (its components: {comps})")
    table = pl.DataFrame(rows, schema=["layer", "index"], orient="row").with_row_index("unit")
    noun = "kv head" if kind == "head" and _grouped(infos) else kind
    label = (
        pl.format(f"{noun} {{}}", "index")
        if kind == "channel"
        else pl.format(f"layer {{}}, {noun} {{}}", "layer", "index")
    )
    table = table.with_columns(pl.col("unit").cast(pl.Int64), label.alias("label"))
    return Units(kind, table, axes)


def _grouped(infos: list[ParamInfo]) -> bool:
    return any(i.kv_heads and i.kv_heads < i.heads for i in infos)


class _Ids:
    """Global unit ids, handed out per (layer, index) in first-seen order."""

    def __init__(self):
        self.rows: list[tuple[int, int]] = []
        self._id: dict[tuple[int, int], int] = {}

    def __call__(self, layer: int, index: int) -> int:
        key = (layer, index)
        if key not in self._id:
            self._id[key] = len(self.rows)
            self.rows.append(key)
        return self._id[key]

    def many(self, layer: int, indices: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self(layer, int(j)) for j in indices], dtype=torch.long)


def _neurons(infos: list[ParamInfo]):
    ids, axes = _Ids(), []
    mlp = ("mlp_up", "mlp_gate", "mlp_gate_up", "mlp_down")
    for layer in sorted({i.layer for i in infos if i.layer >= 0}):
        parts = [i for i in infos if i.layer == layer and i.component in mlp]
        down = [i for i in parts if i.component == "mlp_down" and len(i.shape) == 2]
        if not down:
            continue
        ff = down[0].shape[along(down[0], "in")]
        unit = ids.many(layer, torch.arange(ff))
        for i in parts:
            if i.component == "mlp_down":
                if len(i.shape) == 2:  # a down bias is per output: no neuron's
                    axes.append(Axis(i, along(i, "in"), unit))
                continue
            fused = i.component == "mlp_gate_up"
            axes.append(Axis(i, along(i, "out"), torch.cat([unit, unit]) if fused else unit))
    return ids.rows, axes


def _heads(infos: list[ParamInfo]):
    ids, axes = _Ids(), []
    attn = [i for i in infos if i.component.startswith("attn_") and len(i.shape) == 2]
    for layer in sorted({i.layer for i in attn}):
        for i in (i for i in attn if i.layer == layer):
            if not i.head_dim:
                raise CwaError(f"params: `units` head: {i.name} has no known head geometry")
            dim = along(i, "in" if i.component == "attn_o" else "out")
            unit = torch.full((i.shape[dim],), -1, dtype=torch.long)
            for g in range(i.kv_heads):
                unit[head_features(i, g)] = ids(layer, g)
            axes.append(Axis(i, dim, unit))
    return ids.rows, axes


_EXPERT = re.compile(r"experts\.(\d+)\.")


def _experts(infos: list[ParamInfo]):
    ids, axes = _Ids(), []
    for i in (i for i in infos if i.component.startswith("moe_")):
        own = _EXPERT.search(i.name)
        if own:
            axes.append(Axis(i, None, torch.tensor([ids(i.layer, int(own.group(1)))])))
        else:  # fused: [experts, ...]
            axes.append(Axis(i, 0, ids.many(i.layer, torch.arange(i.shape[0]))))
    return ids.rows, axes


_WRITES = ("attn_o", "mlp_down", "moe_down")
_READS = ("attn_q", "attn_k", "attn_v", "attn_qkv", "mlp_up", "mlp_gate", "mlp_gate_up", "router")


def _channels(infos: list[ParamInfo]):
    ids, axes = _Ids(), []
    writes = (i.shape[along(i, "out")] for i in infos if i.component in _WRITES)
    reads = (i.shape[along(i, "in")] for i in infos if i.component in _READS)
    width = next(writes, 0) or next(reads, 0)
    if not width:
        return [], []
    unit = ids.many(-1, torch.arange(width))
    reads = (*_READS, "moe_gate", "moe_up", "moe_gate_up", "embed", "lm_head")
    for i in infos:
        matrix = len(i.shape) >= 2
        if i.component in _WRITES and matrix:
            axes.append(Axis(i, along(i, "out"), unit))
        elif i.component in reads and matrix:
            axes.append(Axis(i, along(i, "in"), unit))
        elif i.component == "norm" and i.shape == (width,):
            axes.append(Axis(i, 0, unit))
    return ids.rows, axes


def _feature_reduce(axis: Axis, scores: torch.Tensor, op: str) -> torch.Tensor:
    """Per slice along the axis: the sum (op `sum`), max or count of |score| over the rest."""
    s = scores.abs().float()
    if axis.dim is None:
        s = s.reshape(1, -1)
    else:
        s = s.movedim(axis.dim, 0).reshape(s.shape[axis.dim], -1)
    if op == "count":
        return torch.full((s.shape[0],), float(s.shape[1]))
    return s.sum(dim=1) if op == "sum" else s.amax(dim=1)


def unit_scores(units: Units, scores, reduce: str) -> pl.DataFrame:
    """units.table with `weights` and `score`: each unit's |scores| reduced by `reduce` over its
    weights; `scores` maps each pool tensor's name to its scores (read one at a time)."""
    n = len(units.table)
    total, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    peak = torch.full((n,), -np.inf, dtype=torch.float64)
    for axis in units.axes:
        s = scores[axis.info.name]
        inside = axis.unit >= 0
        u = axis.unit[inside]
        total.index_add_(0, u, _feature_reduce(axis, s, "sum")[inside].double())
        count.index_add_(0, u, _feature_reduce(axis, s, "count")[inside].double())
        peak.scatter_reduce_(0, u, _feature_reduce(axis, s, "max")[inside].double(), "amax")
    score = {"sum": total, "mean": total / count, "max": peak}[reduce]
    return units.table.with_columns(
        weights=pl.Series(count.numpy().astype(np.int64)), score=pl.Series(score.numpy())
    )


def weights_of(units: Units, chosen: list[int]) -> dict[str, torch.Tensor]:
    """{param: sorted flat indices} of every weight of the `chosen` unit ids."""
    wanted = torch.tensor(sorted(chosen), dtype=torch.long)
    out: dict[str, list[torch.Tensor]] = {}
    for axis in units.axes:
        features = torch.nonzero(torch.isin(axis.unit, wanted)).flatten()
        if not len(features):
            continue
        out.setdefault(axis.info.name, []).append(_flat(axis, features))
    return {name: torch.cat(parts).unique() for name, parts in out.items()}


def _flat(axis: Axis, slices: torch.Tensor) -> torch.Tensor:
    """Flat storage indices of the given slices along the axis."""
    info = axis.info
    if axis.dim is None:
        return torch.arange(info.numel)
    if len(info.shape) == 2:  # without an index tensor of the whole matrix
        return feature_flat(info, slices, "out" if axis.dim == along(info, "out") else "in")
    index = torch.arange(info.numel).view(info.shape)
    return index.index_select(axis.dim, slices).reshape(-1).sort().values


def ranked(table: pl.DataFrame) -> pl.DataFrame:
    """Units by score, highest first (ties: lower unit id first), with their rank."""
    order = table.sort(["score", "unit"], descending=[True, False])
    return order.with_row_index("rank").with_columns(pl.col("rank").cast(pl.Int64))


def matched_random(table: pl.DataFrame, chosen: list[int], rng: np.random.Generator) -> list[int]:
    """As many random units in each layer as `chosen` holds there, none of them chosen; where a
    layer has fewer other units than that (the top heads of a small model crowd into one
    block), the shortfall is drawn from the other layers' free units."""
    out, short = [], 0
    free_of = lambda layer: table.filter(  # noqa: E731
        (pl.col("layer") == layer) & ~pl.col("unit").is_in(chosen)
    )["unit"].to_numpy()
    layers = table.filter(pl.col("unit").is_in(chosen))["layer"].value_counts().sort("layer")
    for layer, count in layers.iter_rows():
        free = free_of(layer)
        take = min(count, len(free))
        out += rng.choice(free, size=take, replace=False).tolist()
        short += count - take
    if short:
        rest = table.filter(~pl.col("unit").is_in(chosen + out))["unit"].to_numpy()
        if len(rest) < short:
            raise CwaError(
                f"params: `unit_topk`: {len(chosen)} units leave too few of the {len(table)} to "
                f"draw as many random ones; lower it"
            )
        out += rng.choice(rest, size=short, replace=False).tolist()
    return sorted(int(u) for u in out)
