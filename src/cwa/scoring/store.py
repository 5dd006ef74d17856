"""The score store: one fp32 tensor per scored parameter and seed, plus its pool description.

Scores are kept whole (safetensors, one file per seed) so `rank` can serve any k and any control,
and `stability` can correlate seeds, without recomputing sensitivity. Later stages read them back
tensor by tensor (`StoredScores`), so a big model's store is never in memory at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cwa.core.io import atomic_write
from cwa.models.anatomy import ParamInfo


def store_path(directory: str | Path, seed: int) -> Path:
    return Path(directory) / f"seed_{seed}.safetensors"


def save_scores(
    scores: dict[str, torch.Tensor],
    directory: str | Path,
    seed: int,
    metric: str,
    windows: list[int] | None = None,
) -> Path:
    """Writes one seed's store; its header records the metric, the seed and `windows`: the
    indices, into the calibration text's windows, of the draw the scores were computed on."""
    tensors = {name: t.contiguous() for name, t in scores.items()}
    # one key: safetensors writes metadata keys in a random order (a Rust HashMap), which would
    # make identical scores differ byte for byte (and rerun every stage downstream in DVC)
    record = {"metric": metric, "seed": seed, "windows": windows}
    meta = {"cwa": json.dumps(record, sort_keys=True)}
    return atomic_write(
        store_path(directory, seed), lambda tmp: save_file(tensors, str(tmp), metadata=meta)
    )


class TensorFile(Mapping):
    """A safetensors file whose tensors are read (memory-mapped) only when asked for: a big
    model's store is never held in memory at once."""

    def __init__(self, path: str | Path):
        self._file = safe_open(str(path), "pt")
        self._names = list(self._file.keys())

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._file.get_tensor(name)

    def sizes(self) -> dict[str, int]:
        """Weights per tensor, from the file header (no tensor is read)."""
        return {n: int(np.prod(self._file.get_slice(n).get_shape())) for n in self._names}

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class StoredScores(TensorFile):
    """One seed's scores (store_path)."""

    def __init__(self, directory: str | Path, seed: int):
        super().__init__(store_path(directory, seed))

    @property
    def record(self) -> dict:
        """What the scores were computed on: metric, seed and calibration window indices."""
        return json.loads(self._file.metadata()["cwa"])


MAGNITUDE_BINS = "magnitude_bins.safetensors"  # beside the seeds' files in the store
BINS = 256


def magnitude_bins(weight: torch.Tensor, sample: int = 100_000) -> torch.Tensor:
    """The |w|-quantile bin (uint8, 0..255) of every weight of one tensor, flat: 255 edges at the
    quantiles of a fixed uniform sample of |w| (the whole tensor when smaller), so each bin holds
    about 1/256 of it. Chunked: no fp32 copy of a large embedding."""
    flat = weight.detach().reshape(-1)
    gen = torch.Generator().manual_seed(0)
    picked = torch.randint(0, flat.numel(), (sample,), generator=gen).to(flat.device)
    probe = flat if flat.numel() <= sample else flat[picked]
    edges = torch.quantile(
        probe.abs().float(), torch.linspace(0, 1, BINS + 1)[1:-1].to(flat.device)
    )
    chunks = [torch.bucketize(c.abs().float(), edges) for c in flat.split(1 << 24)]
    return torch.cat(chunks).to(torch.uint8).cpu()


def save_magnitude_bins(params: Mapping[str, torch.Tensor], infos: list[ParamInfo], directory):
    """The pool's |w| bins, once per store: what the magnitude_matched_k control draws by."""
    bins = {i.name: magnitude_bins(params[i.name]) for i in infos}
    return atomic_write(Path(directory) / MAGNITUDE_BINS, lambda tmp: save_file(bins, str(tmp)))


def read_magnitude_bins(directory: str | Path) -> Mapping[str, torch.Tensor]:
    """The store's |w| bins, each tensor read when asked for."""
    path = Path(directory) / MAGNITUDE_BINS
    if not path.exists():
        from cwa import CwaError

        raise CwaError(f"{path} is missing: rerun the sensitivity stage (`dvc repro sensitivity`)")
    return TensorFile(path)


def seeds_in(directory: str | Path) -> list[int]:
    return sorted(
        int(p.stem.removeprefix("seed_")) for p in Path(directory).glob("seed_*.safetensors")
    )


def pool_table(infos: list[ParamInfo]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "position": list(range(len(infos))),
            "param": [i.name for i in infos],
            "layer": [i.layer for i in infos],
            "component": [i.component for i in infos],
            "shape": [list(i.shape) for i in infos],
            "transposed": [i.transposed for i in infos],
            "heads": [i.heads for i in infos],
            "kv_heads": [i.kv_heads for i in infos],
            "head_dim": [i.head_dim for i in infos],
            "qkv_layout": [i.qkv_layout for i in infos],
        }
    )


def pool_infos(table: pl.DataFrame) -> list[ParamInfo]:
    return [
        ParamInfo(
            r["param"],
            r["layer"],
            r["component"],
            tuple(r["shape"]),
            r["transposed"],
            r["heads"],
            r["kv_heads"],
            r["head_dim"],
            r["qkv_layout"],
        )
        for r in table.sort("position").iter_rows(named=True)
    ]


def tensor_stats(
    infos: list[ParamInfo], scores: dict[str, torch.Tensor], metric: str, seed: int
) -> pl.DataFrame:
    rows = []
    for info in infos:
        s = scores[info.name].reshape(-1).double()
        rows.append(
            {
                "metric": metric,
                "seed": seed,
                "param": info.name,
                "layer": info.layer,
                "component": info.component,
                "numel": s.numel(),
                "score_sum": float(s.sum()),
                "score_mean": float(s.mean()),
                "score_median": float(s.median()),
                "score_max": float(s.max()),
                "zeros": int((s == 0).sum()),
            }
        )
    return pl.DataFrame(rows)


def concentration(scores: list[torch.Tensor], top_fraction: float = 1e-3) -> dict:
    """Share of the total |score| in the top `top_fraction` of weights, and max / median."""
    flat = torch.cat([s.reshape(-1) for s in scores]).double().abs()
    n_top = max(1, int(flat.numel() * top_fraction))
    top = torch.topk(flat, n_top).values
    median = float(flat.median())
    return {
        "top_share": float(top.sum() / flat.sum()),
        "max_over_median": float(top[0] / median) if median > 0 else float("inf"),
    }


def shares(infos: list[ParamInfo], scores: Mapping[str, torch.Tensor], top: pl.DataFrame):
    """Where a model's sensitivity sits: for each component class, and each transformer block at
    normalised depth (0 = first block, 1 = last), the share of the top-k weights (`top`: the
    ranking's top rows, with `component` and `layer`) and of the total |score|."""
    total, by_component, by_layer = 0.0, {}, {}
    for info in infos:
        mass = float(scores[info.name].double().abs().sum())
        total += mass
        by_component[info.component] = by_component.get(info.component, 0.0) + mass
        by_layer[info.layer] = by_layer.get(info.layer, 0.0) + mass
    k = max(len(top), 1)
    in_top = {axis: dict(top.group_by(axis).len().iter_rows()) for axis in ("component", "layer")}
    rows = [
        ("component", c, None, in_top["component"].get(c, 0) / k, by_component[c] / total)
        for c in sorted(by_component)
    ]
    blocks = sorted(layer for layer in by_layer if layer >= 0)
    last = max(blocks[-1], 1) if blocks else 1
    rows += [
        ("depth", str(b), b / last, in_top["layer"].get(b, 0) / k, by_layer[b] / total)
        for b in blocks
    ]
    columns = ["axis", "group", "depth", "topk_share", "score_share"]
    return pl.DataFrame(rows, schema=columns, orient="row")


def pool_sample(sizes: Mapping[str, int], size: int = 100_000) -> dict[str, torch.Tensor]:
    """A fixed uniform sample of pool coordinates (the same for every seed): bulk agreement.
    `sizes`: weights per pool tensor."""
    sizes = dict(sorted(sizes.items()))
    total = sum(sizes.values())
    picks = np.sort(np.random.default_rng(0).choice(total, size=min(size, total), replace=False))
    out, start = {}, 0
    for name, n in sizes.items():
        mine = picks[(picks >= start) & (picks < start + n)] - start
        out[name] = torch.from_numpy(mine)
        start += n
    return out


def bulk(store: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> np.ndarray:
    """|score| at the fixed pool sample of `sizes`: the same weights for every seed and metric,
    so two bulks compare rank for rank."""
    sample = pool_sample(sizes)
    return np.abs(torch.cat([store[n].reshape(-1)[i].double() for n, i in sample.items()]).numpy())


def scores_at(store: Mapping[str, torch.Tensor], coords: list[tuple[str, int]]) -> np.ndarray:
    """The scores at (tensor name, flat index) coordinates, in order, each tensor read once."""
    out = np.empty(len(coords))
    by_name: dict[str, list[int]] = {}
    for pos, (name, _) in enumerate(coords):
        by_name.setdefault(name, []).append(pos)
    for name, positions in by_name.items():
        flat = store[name].reshape(-1)
        index = torch.tensor([coords[p][1] for p in positions])
        out[positions] = flat[index].double().numpy()
    return out
