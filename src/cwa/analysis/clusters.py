"""Clusters of weights: which kinds of weight are there, and where do the critical ones fall?

The clustered weights are the top `cluster_top` of the pool by the first seed's scores and a
uniform seeded sample of `cluster_sample` others, each described by a feature vector:

  log10 |score|          the metric's score on the first seed's calibration draw
  log10 |w|              the weight's magnitude
  seed spread            the standard deviation of log10 |score| over the seeds (0 with one)
  depth                  normalised block depth, 0 = first block, 1 = last
  component              one-hot over the pool's component classes

Numeric features are standardised (zero mean, unit variance over the clustered weights); the
one-hot columns are kept as 0/1. K-means (scikit-learn, 10 seeded restarts) runs for every k in
2..`cluster_max_k`, and the k with the highest silhouette (on a seeded subsample of at most
5,000 points) is kept. DBSCAN runs with min_samples = 2 x features and eps the 90th percentile of
each point's distance to its min_samples-th neighbour (the knee of the k-distance curve, read
as a percentile); its label -1 is noise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl
import torch

from cwa.config.params import check as params_check
from cwa.config.params import fail
from cwa.models.anatomy import ParamInfo
from cwa.selection.ranking import Selected, extreme_k

SILHOUETTE_SAMPLE = 5000
FLOOR = 1e-30  # |score| and |w| below this count as this (log of 0)


@params_check
def _valid_clusters(p) -> None:
    if p.cluster_max_k < 2:
        fail(
            "cluster_max_k",
            f"must be >= 2 (K-means compares k = 2..cluster_max_k), got {p.cluster_max_k}",
        )
    if p.cluster_sample < 1 or p.cluster_top < 1:
        fail("cluster_sample", "and `cluster_top` must be >= 1")


def chosen_weights(scores, sizes: list[int], top: int, sample: int, seed: int) -> Selected:
    """The top `top` weights and `sample` others drawn uniformly without replacement (seeded),
    as one Selected (tensor position, flat index), the top ones first."""
    best = extreme_k(scores, min(top, sum(sizes)))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    taken = offsets[best.tensor] + best.flat
    rng = np.random.default_rng(seed)
    count = min(sample, offsets[-1] - len(taken))
    drawn = rng.choice(offsets[-1], size=min(offsets[-1], count + len(taken)), replace=False)
    rest = np.sort(drawn[~np.isin(drawn, taken)][:count])  # in draw order, then sorted
    tensor = np.searchsorted(offsets, rest, side="right") - 1
    return Selected(
        np.concatenate([best.tensor, tensor]),
        np.concatenate([best.flat, rest - offsets[tensor]]),
        np.zeros(len(taken) + len(rest)),
    )


def features(
    infos: list[ParamInfo],
    chosen: Selected,
    top: int,
    weights: Mapping[str, torch.Tensor],
    stores: list[Mapping[str, torch.Tensor]],
) -> pl.DataFrame:
    """One row per chosen weight (the first `top` of `chosen` are the top set): where it is
    and its raw features (see the module doc)."""
    is_top = np.arange(len(chosen.flat)) < top
    blocks = max(i.layer for i in infos) if any(i.layer >= 0 for i in infos) else 0
    rows = []
    for t, info in enumerate(infos):
        at = chosen.tensor == t
        if not at.any():
            continue
        flat = torch.from_numpy(chosen.flat[at])
        logs = np.stack(
            [
                np.log10(np.maximum(s[info.name].reshape(-1)[flat].abs().double().numpy(), FLOOR))
                for s in stores
            ]
        )
        w = weights[info.name].detach().reshape(-1)[flat].abs().double().cpu().numpy()
        rows.append(
            pl.DataFrame(
                {
                    "param": info.name,
                    "flat_index": chosen.flat[at],
                    "top": is_top[at],
                    "layer": info.layer,
                    "component": info.component,
                    "log_score": logs[0],
                    "log_abs_w": np.log10(np.maximum(w, FLOOR)),
                    "seed_spread": logs.std(axis=0),
                    "depth": info.layer / blocks if blocks and info.layer >= 0 else 0.0,
                }
            )
        )
    return pl.concat(rows)


def matrix(table: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The clustering matrix: standardised numeric features, then 0/1 component columns."""
    numeric = ["log_score", "log_abs_w", "seed_spread", "depth"]
    x = table.select(numeric).to_numpy().astype(np.float64)
    spread = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    comps = sorted(table["component"].unique())
    onehot = np.stack([(table["component"] == c).to_numpy() for c in comps], axis=1)
    return np.hstack([x, onehot.astype(np.float64)]), numeric + [f"is_{c}" for c in comps]


def kmeans(x: np.ndarray, max_k: int, seed: int) -> tuple[np.ndarray, int, dict[int, float]]:
    """(labels, chosen k, silhouette per k): the k in 2..max_k with the best silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    sub = rng.choice(len(x), size=min(len(x), SILHOUETTE_SAMPLE), replace=False)
    fits, quality = {}, {}
    for k in range(2, min(max_k, len(x) - 1) + 1):
        fits[k] = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
        labels = fits[k][sub]
        quality[k] = float(silhouette_score(x[sub], labels)) if len(set(labels)) > 1 else -1.0
    best = max(quality, key=lambda k: (quality[k], -k))
    return fits[best], best, quality


def dbscan(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(labels, eps) of DBSCAN with the module doc's eps and min_samples."""
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import NearestNeighbors

    min_samples = 2 * x.shape[1]
    distances, _ = NearestNeighbors(n_neighbors=min_samples).fit(x).kneighbors(x)
    eps = float(np.quantile(distances[:, -1], 0.9))
    return DBSCAN(eps=max(eps, 1e-12), min_samples=min_samples).fit_predict(x), eps


def summary(table: pl.DataFrame, method: str, label: str, top: int) -> pl.DataFrame:
    """Per cluster of `label`: size, the share of the top set it holds, mean features, and
    where it sits (the most common block and component, ties to the first in sort order, with
    their shares). Means by numpy over the rows in table order: a parallel group-by sums in
    a varying order, and the table's bytes must not vary."""
    rows = []
    for cluster in sorted(table[label].unique()):
        mine = table.filter(pl.col(label) == cluster)
        row = {"method": method, "cluster": int(cluster), "size": len(mine)}
        row |= {"top_members": int(mine["top"].sum()), "top_share": mine["top"].sum() / top}
        for feature in ("log_score", "log_abs_w", "seed_spread", "depth"):
            row[feature] = float(np.mean(mine[feature].to_numpy()))
        for key in ("layer", "component"):
            counts = mine[key].value_counts().sort(["count", key], descending=[True, False])
            row[f"main_{key}"] = counts[key][0]
            row[f"main_{key}_share"] = counts["count"][0] / len(mine)
        rows.append(row)
    return pl.DataFrame(rows)
