"""Exact top-k / bottom-k selection and matched random controls, vectorised per tensor.

Global top-k is a subset of the union of per-tensor top-k, so each tensor contributes the
candidates at or above its own k-th value (ties included) and one lexicographic sort of the
candidates by (score desc, tensor order, flat index) gives the exact, deterministic answer.
Tensors are visited one at a time (`rank` reads each from the store when visited), so no copy of
every score, let alone a concatenated one, is ever held: memory is one tensor plus candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from cwa import CwaError
from cwa.config.params import check as params_check
from cwa.config.params import check_choice
from cwa.core.registry import Registry
from cwa.models.anatomy import ParamInfo, head_features


@dataclass(frozen=True)
class Selected:
    """A set of weights: tensor positions into the pool list, flat indices, scores."""

    tensor: np.ndarray  # (k,) int64
    flat: np.ndarray  # (k,) int64
    score: np.ndarray  # (k,) float64
    cutoff_ties: int = 0


def sizes_of(scores: Sequence[torch.Tensor]) -> list[int]:
    """Element counts of the tensors, without reading a lazy store's scores."""
    return scores.sizes if isinstance(scores, MemberScores) else [s.numel() for s in scores]


def extreme_k(scores: Sequence[torch.Tensor], k: int, largest: bool = True) -> Selected:
    """The k highest (or lowest) scores over all tensors, ties broken by tensor then flat index."""
    sizes = sizes_of(scores)
    total = sum(sizes)
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


def matched_per_tensor(
    name: str,
    top: Selected,
    sizes: list[int],
    scores: Sequence[torch.Tensor],
    draw: Callable[[int, np.ndarray], np.ndarray],
) -> Selected:
    """A control with the top set's per-tensor counts: `draw(t, mine)` picks, in tensor t, as
    many weights as the top set's `mine`, none of them in it. Refuses a top set that holds more
    than half of a tensor (where it lands decides: known only from the scores)."""
    tid, idx, score = [], [], []
    for t in np.unique(top.tensor):
        mine = top.flat[top.tensor == t]
        if 2 * len(mine) > sizes[t]:
            raise CwaError(
                f"params: `controls` {name} cannot match the top {len(top.flat)}: they hold "
                f"{len(mine)} of the {sizes[t]} weights of one tensor (#{t} of its ranking "
                f"group), leaving fewer than as many to draw; lower `topk` or drop {name}"
            )
        drawn = draw(t, mine)
        tid.append(np.full(len(mine), t, dtype=np.int64))
        idx.append(drawn)
        score.append(scores[t].reshape(-1)[torch.from_numpy(drawn)].double().numpy())
    tid, idx, score = np.concatenate(tid), np.concatenate(idx), np.concatenate(score)
    order = np.lexsort((idx, tid, -score))
    return Selected(tid[order], idx[order], score[order])


def matched_random(
    top: Selected, sizes: list[int], rng: np.random.Generator, scores: Sequence[torch.Tensor]
) -> Selected:
    """Random weights with the top set's per-tensor counts, none of them in the top set."""
    return matched_per_tensor(
        "random_k",
        top,
        sizes,
        scores,
        lambda t, mine: sample_excluding(rng, sizes[t], len(mine), mine),
    )


def magnitude_matched(
    top: Selected,
    sizes: list[int],
    rng: np.random.Generator,
    scores: Sequence[torch.Tensor],
    bins: Sequence[torch.Tensor],
) -> Selected:
    """Random weights outside the top set with its per-tensor counts and, within each tensor,
    its |w|-quantile bins (scores.magnitude_bins): for each top weight one from the same bin,
    widening to the nearest bins when one runs out."""
    if bins is None:
        raise CwaError("magnitude_matched_k needs the score store's |w| bins (rank passes them)")
    return matched_per_tensor(
        "magnitude_matched_k",
        top,
        sizes,
        scores,
        lambda t, mine: draw_in_bins(rng, bins[t].numpy().astype(np.int64), mine),
    )


def draw_in_bins(rng: np.random.Generator, bins: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """As many indices as `taken`, none of them taken, with the same multiset of `bins` values:
    for each bin b (in increasing order) its count drawn uniformly from the free weights of bin
    b, then of b ± 1, b ± 2, ... when those run out."""
    free = np.ones(len(bins), dtype=bool)
    free[taken] = False
    order = np.argsort(bins, kind="stable")
    edges = np.searchsorted(bins[order], np.arange(bins.max(initial=0) + 2))
    out = []
    for b, count in enumerate(np.bincount(bins[taken])):
        if not count:
            continue
        for width in range(len(edges)):
            lo, hi = max(0, b - width), min(len(edges) - 1, b + width + 1)
            cand = order[edges[lo] : edges[hi]]
            cand = cand[free[cand]]
            if len(cand) >= count:
                break
        chosen = rng.choice(np.sort(cand), size=count, replace=False)
        free[chosen] = False
        out.append(chosen)
    return np.concatenate(out) if out else np.empty(0, np.int64)


@dataclass(frozen=True)
class Control:
    """A kind of control set for the top-k: `pick(scores, k, top, rng, bins)` draws it (`bins`:
    each member's |w| bins, for the controls that match magnitude); a random one is drawn
    `random_draws` times."""

    name: str
    doc: str
    random: bool
    pick: Callable[..., Selected]
    by_magnitude: bool = False  # draws by the store's |w| bins


CONTROLS: Registry[Control] = Registry("control")
CONTROLS.register(
    Control(
        "bottom_k",
        "the k lowest scores (ties broken by tensor order, then flat index)",
        random=False,
        pick=lambda scores, k, top, rng, bins: extreme_k(scores, k, largest=False),
    )
)
CONTROLS.register(
    Control(
        "random_k",
        "random weights with the top set's per-tensor counts, none of them in the top set",
        random=True,
        pick=lambda scores, k, top, rng, bins: matched_random(top, sizes_of(scores), rng, scores),
    )
)
CONTROLS.register(
    Control(
        "magnitude_matched_k",
        "random weights with the top set's per-tensor counts and its distribution of |w| within "
        "each tensor (the same 1/256 |w|-quantile bins), none of them in the top set: separates "
        "'large weights matter' from what the metric found beyond magnitude",
        random=True,
        pick=lambda scores, k, top, rng, bins: magnitude_matched(
            top, sizes_of(scores), rng, scores, bins
        ),
        by_magnitude=True,
    )
)


def select(
    scores: Sequence[torch.Tensor],
    k: int,
    controls: tuple[str, ...],
    draws: int,
    seed: int,
    bins: Sequence[torch.Tensor] | None = None,
) -> list[tuple[str, int, Selected]]:
    """(selection, draw, weights) for the top set and each control, over `scores` (`bins`: the
    members' |w| bins, for magnitude_matched_k)."""
    top = extreme_k(scores, k, largest=True)
    out = [("top", 0, top)]
    for name in sorted(controls):
        control = CONTROLS.get(name)
        for draw in range(draws if control.random else 1):
            rng = np.random.default_rng([seed, k, draw])
            out.append((name, draw, control.pick(scores, k, top, rng, bins)))
    return out


# A group member: a pool tensor, or a sorted subset of its flat storage indices (one head's rows).
Member = tuple[ParamInfo, torch.Tensor | None]


class MemberScores(Sequence):
    """|score| of each member of a group as a flat vector, read from the store when indexed."""

    def __init__(self, scores: Mapping[str, torch.Tensor], members: list[Member]):
        self.scores, self.members = scores, members
        self.sizes = [info.numel if sub is None else len(sub) for info, sub in members]

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, t: int) -> torch.Tensor:
        info, subset = self.members[t]
        flat = self.scores[info.name].abs().reshape(-1)  # signed metrics rank by |score|
        return flat if subset is None else flat[subset]


@dataclass(frozen=True)
class Mode:
    """A ranking mode: how the pool splits into groups, each ranked on its own."""

    name: str
    doc: str
    groups: Callable[[list[ParamInfo]], list[tuple[str, list[Member]]]]


def _by_component(infos: list[ParamInfo]) -> list[tuple[str, list[Member]]]:
    comps = sorted({i.component for i in infos})
    return [(c, [(i, None) for i in infos if i.component == c]) for c in comps]


def feature_flat(info: ParamInfo, features: torch.Tensor, axis: str) -> torch.Tensor:
    """Sorted flat storage indices of whole output (axis 'out') or input ('in') features."""
    out_dim, in_dim = (info.shape[1], info.shape[0]) if info.transposed else info.shape
    if axis == "out":
        rows, cols = features[:, None], torch.arange(in_dim)[None, :]
    else:
        rows, cols = torch.arange(out_dim)[:, None], features[None, :]
    flat = cols * out_dim + rows if info.transposed else rows * in_dim + cols
    return flat.reshape(-1).sort().values


def _by_head(infos: list[ParamInfo]) -> list[tuple[str, list[Member]]]:
    """One group per layer and key/value head: its query heads' q rows and o columns, its k and
    v rows (fused qkv by layout); GQA-aware, and one group per head when kv heads = heads."""
    attn = [i for i in infos if i.component.startswith("attn_")]
    unknown = [
        i for i in attn if i.head_dim == 0 or (i.component == "attn_qkv" and not i.qkv_layout)
    ]
    if not attn or unknown:
        raise CwaError(
            "params: `mode` per_head needs attention weights with known head geometry "
            "(num_attention_heads in the model config, a known fused qkv layout) in the pool"
            f"{f' ({unknown[0].name} has none)' if unknown else ''}: check `target_components`"
        )
    groups = []
    for layer in sorted({i.layer for i in attn}):
        parts = [i for i in attn if i.layer == layer]
        for g in range(parts[0].kv_heads):
            members = []
            for i in parts:
                axis = "in" if i.component == "attn_o" else "out"
                members.append((i, feature_flat(i, head_features(i, g), axis)))
            groups.append((f"layers.{layer}.head.{g}", members))
    return groups


def target(
    infos: list[ParamInfo], components: tuple[str, ...] = (), layers: tuple[int, ...] = ()
) -> list[ParamInfo]:
    """The pool tensors of the given components and blocks (empty: all): targeted experiments
    rank, and so perturb, only there, with controls drawn from the same tensors."""
    for key, wanted, have in (
        ("target_components", components, sorted({i.component for i in infos})),
        ("target_layers", layers, sorted({i.layer for i in infos})),
    ):
        missing = sorted(set(wanted) - set(have))
        if missing:
            raise CwaError(f"params: `{key}` {missing} are not in the ranking pool; it has {have}")
    return [
        i
        for i in infos
        if (not components or i.component in components) and (not layers or i.layer in layers)
    ]


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


@params_check
def _valid_mode_and_controls(p) -> None:
    check_choice("mode", p.mode, MODES.names())
    for name in p.controls:
        check_choice("controls", name, CONTROLS.names())


def rank(
    infos: list[ParamInfo],
    scores: Mapping[str, torch.Tensor],
    mode: str,
    ks: tuple[int, ...],
    controls: tuple[str, ...],
    draws: int,
    seed: int,
    metric: str,
    bins: Mapping[str, torch.Tensor] | None = None,
) -> pl.DataFrame:
    """The ranking table (schema `ranking`) for one seed's scores over the pool `infos` (`bins`:
    the store's |w| bins, scores.read_magnitude_bins, when magnitude_matched_k is a control)."""
    frames = []
    for group, members in MODES.get(mode).groups(infos):
        vectors = MemberScores(scores, members)
        member_bins = MemberScores(bins, members) if bins is not None else None  # uint8: |.| = .
        tensors = [info for info, _ in members]
        for k in ks:
            for selection, draw, sel in select(vectors, k, controls, draws, seed, member_bins):
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
