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


@dataclass(frozen=True)
class Mode:
    """A ranking mode: how the pool splits into groups, each ranked on its own."""

    name: str
    doc: str
    groups: Callable[[list[ParamInfo]], list[tuple[str, list[ParamInfo]]]]


def _by_component(infos: list[ParamInfo]) -> list[tuple[str, list[ParamInfo]]]:
    comps = sorted({i.component for i in infos})
    return [(c, [i for i in infos if i.component == c]) for c in comps]


MODES: Registry[Mode] = Registry("mode")
MODES.register(Mode("global", "top-k over the whole pool", lambda infos: [("global", infos)]))
MODES.register(
    Mode("per_layer", "top-k in each pool tensor", lambda infos: [(i.name, [i]) for i in infos])
)
MODES.register(
    Mode(
        "per_component",
        "top-k in each component class (attn_q, mlp_down, ...) across layers",
        _by_component,
    )
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
    groups = MODES.get(mode).groups(infos)
    frames = []
    for group, members in groups:
        tensors = [scores[i.name].abs() for i in members]  # signed metrics rank by |score|
        for k in ks:
            for selection, draw, sel in select(tensors, k, controls, draws, seed):
                frames.append(_rows(members, sel, metric, mode, seed, group, selection, draw, k))
    return pl.concat(frames)


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
