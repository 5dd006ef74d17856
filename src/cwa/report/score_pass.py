"""Everything the report takes from the first seed's score store, in one read of each tensor:
its moments (the per-layer statistics), its part of the fixed pool sample (the criteria's bulk)
and its range of log10 |score| (the distribution figure's shared bins). A 7B model's store is
tens of GB; the report used to read it five times."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from cwa.report.layer_stats import moments
from cwa.scoring.store import pool_sample


@dataclass(frozen=True)
class ScorePass:
    moments: pl.DataFrame  # one row per pool tensor: layer, component, weights, mean, m2, max
    bulk: np.ndarray  # |score| at the fixed pool sample, as scoring.store.bulk gives it
    log_range: tuple[float, float] | None  # min and max log10 |score| over nonzero scores
    weights: int  # pool weights scored


def read_once(scores: Mapping[str, torch.Tensor], pool: pl.DataFrame) -> ScorePass:
    """`scores`: a score store (or a dict) holding exactly the pool table's tensors."""
    shapes = zip(pool["param"], pool["shape"].to_list(), strict=True)
    sizes = {name: int(np.prod(shape)) for name, shape in shapes}
    sample = pool_sample(sizes)
    rows, parts, lows, highs = [], {}, [], []
    for info in pool.sort("position").iter_rows(named=True):
        name = info["param"]
        values = scores[name].reshape(-1).double().abs()
        rows.append({"layer": info["layer"], "component": info["component"], **moments(values)})
        parts[name] = values[sample[name]]
        logs = torch.log10(values[values > 0])
        if logs.numel():
            lows.append(float(logs.min()))
            highs.append(float(logs.max()))
    bulk = torch.cat([parts[name] for name in sample]).numpy()
    log_range = (min(lows), max(highs)) if lows else None
    return ScorePass(pl.DataFrame(rows), bulk, log_range, sum(sizes.values()))
