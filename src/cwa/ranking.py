"""Exact top-k / bottom-k selection and matched random controls, vectorised per tensor.

Global top-k is a subset of the union of per-tensor top-k, so each tensor contributes the
candidates at or above its own k-th value (ties included) and one lexicographic sort of the
candidates by (score desc, tensor order, flat index) gives the exact, deterministic answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from cwa import CwaError
from cwa.models import ParamInfo
from cwa.registry import Registry


@dataclass(frozen=True)
class Selected:
    """A set of weights: tensor positions into the pool list, flat indices, scores."""

    tensor: np.ndarray  # (k,) int64
    flat: np.ndarray  # (k,) int64
    score: np.ndarray  # (k,) float64
    cutoff_ties: int = 0


def extreme_k(scores: list[torch.Tensor], k: int, largest: bool = True) -> Selected:
    """The k highest (or lowest) scores over all tensors, ties broken by tensor then flat index."""
    total = sum(s.numel() for s in scores)
    if k > total:
        raise CwaError(f"topk {k} exceeds the {total} weights in the ranking pool")
    tid, idx, val = [], [], []
    for t, s in enumerate(scores):
        flat = s.reshape(-1)  # stays in its own dtype: only the candidates become float64
        if torch.isnan(flat).any():
            raise CwaError(f"NaN scores in pool tensor #{t}: sensitivity diverged")
        keyed = flat if largest else -flat
        cut = torch.topk(keyed, min(k, flat.numel()), sorted=False).values.min()
        hit = torch.nonzero(keyed >= cut).flatten()
        tid.append(np.full(hit.numel(), t, dtype=np.int64))
        idx.append(hit.numpy())
        val.append(keyed[hit].double().numpy())
    tid, idx, val = np.concatenate(tid), np.concatenate(idx), np.concatenate(val)
    order = np.lexsort((idx, tid, -val))[:k]  # last key is primary: keyed score descending
    boundary = val[order[-1]]
    ties = int((val == boundary).sum() - (val[order] == boundary).sum())
    sign = 1.0 if largest else -1.0
    return Selected(tid[order], idx[order], sign * val[order], ties)


def sample_excluding(
    rng: np.random.Generator, n: int, count: int, exclude: np.ndarray
) -> np.ndarray:
    """`count` distinct integers in [0, n) outside `exclude`, in draw order (rejection sampling)."""
    if count > n - len(exclude):
        raise CwaError(
            f"cannot draw {count} random weights from a tensor of {n} minus {len(exclude)}"
        )
    got = np.empty(0, dtype=np.int64)
    while len(got) < count:
        cand = rng.integers(0, n, size=max(2 * (count - len(got)), 16))
        got = np.concatenate([got, cand[~np.isin(cand, exclude)]])
        _, first = np.unique(got, return_index=True)
        got = got[np.sort(first)]
    return got[:count]


def matched_random(
    top: Selected, sizes: list[int], rng: np.random.Generator, scores: list[torch.Tensor]
) -> Selected:
    """Random weights with the top set's per-tensor counts, none of them in the top set."""
    tid, idx, score = [], [], []
    for t in np.unique(top.tensor):
        mine = top.flat[top.tensor == t]
        drawn = sample_excluding(rng, sizes[t], len(mine), mine)
        tid.append(np.full(len(mine), t, dtype=np.int64))
        idx.append(drawn)
        score.append(scores[t].reshape(-1)[torch.from_numpy(drawn)].double().numpy())
    tid, idx, score = np.concatenate(tid), np.concatenate(idx), np.concatenate(score)
    order = np.lexsort((idx, tid, -score))
    return Selected(tid[order], idx[order], score[order])


def select(
    scores: list[torch.Tensor], k: int, controls: tuple[str, ...], draws: int, seed: int
) -> list[tuple[str, int, Selected]]:
    """(selection, draw, weights) for the top set and each control, over `scores`."""
    top = extreme_k(scores, k, largest=True)
    out = [("top", 0, top)]
    if "bottom_k" in controls:
        out.append(("bottom_k", 0, extreme_k(scores, k, largest=False)))
    if "random_k" in controls:
        sizes = [s.numel() for s in scores]
        for draw in range(draws):
            rng = np.random.default_rng([seed, k, draw])
            out.append(("random_k", draw, matched_random(top, sizes, rng, scores)))
    return out


# A group member: a pool tensor, or a sorted subset of its flat storage indices (one head's rows).
Member = tuple[ParamInfo, torch.Tensor | None]


@dataclass(frozen=True)
class Mode:
    """A ranking mode: how the pool splits into groups, each ranked on its own."""

    name: str
    doc: str
    groups: Callable[[list[ParamInfo]], list[tuple[str, list[Member]]]]


def _by_component(infos: list[ParamInfo]) -> list[tuple[str, list[Member]]]:
    comps = sorted({i.component for i in infos})
    return [(c, [(i, None) for i in infos if i.component == c]) for c in comps]


def _head_rows(info: ParamInfo, heads: range) -> torch.Tensor:
    """Flat indices of the storage rows of `heads` (q/k/v: [heads·head_dim, in])."""
    cols = info.shape[1]
    rows = torch.cat([torch.arange(h * info.head_dim, (h + 1) * info.head_dim) for h in heads])
    return (rows[:, None] * cols + torch.arange(cols)[None, :]).reshape(-1)


def _head_cols(info: ParamInfo, heads: range) -> torch.Tensor:
    """Flat indices of the storage columns of `heads` (o: [out, heads·head_dim])."""
    cols = torch.cat([torch.arange(h * info.head_dim, (h + 1) * info.head_dim) for h in heads])
    flat = torch.arange(info.shape[0])[:, None] * info.shape[1] + cols[None, :]
    return flat.reshape(-1).sort().values


def _by_head(infos: list[ParamInfo]) -> list[tuple[str, list[Member]]]:
    """One group per layer and key/value head: its query heads' q rows and o columns, and its k
    and v rows (GQA-aware; with as many kv heads as query heads this is one group per head)."""
    attn = [i for i in infos if i.component in ("attn_q", "attn_k", "attn_v", "attn_o")]
    if not attn or any(i.transposed or i.head_dim == 0 for i in attn):
        raise CwaError(
            "per_head mode needs separate q/k/v/o projection weights with known head "
            "geometry in the pool (not fused qkv, not GPT-2 Conv1D)"
        )
    groups = []
    for layer in sorted({i.layer for i in attn}):
        parts = {i.component: i for i in attn if i.layer == layer}
        kv_heads = parts["attn_k"].heads if "attn_k" in parts else parts["attn_q"].heads
        per_kv = parts["attn_q"].heads // kv_heads if "attn_q" in parts else 1
        for g in range(kv_heads):
            q_heads = range(g * per_kv, (g + 1) * per_kv)
            members = []
            for comp, info in sorted(parts.items()):
                if comp == "attn_o":
                    members.append((info, _head_cols(info, q_heads)))
                else:
                    members.append(
                        (info, _head_rows(info, q_heads if comp == "attn_q" else range(g, g + 1)))
                    )
            groups.append((f"layers.{layer}.head.{g}", members))
    return groups


MODES: Registry[Mode] = Registry("mode")
MODES.register(
    Mode(
        "global",
        "top-k over the whole pool",
        lambda infos: [("global", [(i, None) for i in infos])],
    )
)
MODES.register(
    Mode(
        "per_layer",
        "top-k in each pool tensor",
        lambda infos: [(i.name, [(i, None)]) for i in infos],
    )
)
MODES.register(
    Mode(
        "per_component",
        "top-k in each component class (attn_q, mlp_down, ...) across layers",
        _by_component,
    )
)
MODES.register(
    Mode("per_head", "top-k in each attention head (q/k/v rows, o columns; GQA-aware)", _by_head)
)


def rank(
    infos: list[ParamInfo],
    scores: dict[str, torch.Tensor],
    mode: str,
    ks: tuple[int, ...],
    controls: tuple[str, ...],
    draws: int,
    seed: int,
    metric: str,
) -> pl.DataFrame:
    """The ranking table (schema `ranking`) for one seed's scores over the pool `infos`."""
    frames = []
    for group, members in MODES.get(mode).groups(infos):
        vectors = []
        for info, subset in members:
            flat = scores[info.name].abs().reshape(-1)  # signed metrics rank by |score|
            vectors.append(flat if subset is None else flat[subset])
        tensors = [info for info, _ in members]
        for k in ks:
            for selection, draw, sel in select(vectors, k, controls, draws, seed):
                sel = _to_storage(sel, members)
                frames.append(_rows(tensors, sel, metric, mode, seed, group, selection, draw, k))
    return pl.concat(frames)


def _to_storage(sel: Selected, members: list[Member]) -> Selected:
    """Maps member-local indices back to flat storage indices of the whole tensor."""
    flat = sel.flat.copy()
    for t, (_, subset) in enumerate(members):
        if subset is not None:
            at = sel.tensor == t
            flat[at] = subset.numpy()[sel.flat[at]]
    return Selected(sel.tensor, flat, sel.score, sel.cutoff_ties)


def _rows(members, sel: Selected, metric, mode, seed, group, selection, draw, k) -> pl.DataFrame:
    rows, cols = np.empty(len(sel.flat), np.int64), np.empty(len(sel.flat), np.int64)
    for t in np.unique(sel.tensor):
        at = sel.tensor == t
        r, c = members[t].row_col(torch.from_numpy(sel.flat[at]))
        rows[at], cols[at] = r.numpy(), c.numpy()
    n = len(sel.flat)
    return pl.DataFrame(
        {
            "metric": [metric] * n,
            "mode": [mode] * n,
            "seed": [seed] * n,
            "group": [group] * n,
            "selection": [selection] * n,
            "draw": [draw] * n,
            "k": [k] * n,
            "rank": np.arange(n),
            "param": [members[t].name for t in sel.tensor],
            "layer": [members[t].layer for t in sel.tensor],
            "component": [members[t].component for t in sel.tensor],
            "flat_index": sel.flat,
            "row": rows,
            "col": cols,
            "score": sel.score,
            "cutoff_ties": [sel.cutoff_ties] * n,
        }
    )
