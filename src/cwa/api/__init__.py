"""cwa as a library, for notebooks: load a model, cut text into windows, score the weights, rank
them, perturb a ranked set (restored bit for bit on leaving the block) and evaluate. Each
function opens onto the code the pipeline's stages run, with the pipeline's defaults; the
examples in docs/api.md are run by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import torch

from cwa import CwaError
from cwa.data.windows import bos_token_id, cut, token_ids
from cwa.evaluation.perplexity import EvalResult
from cwa.evaluation.perplexity import evaluate as _evaluate
from cwa.experiments.perturbations import get_perturbation
from cwa.experiments.perturbations import perturbed as _perturbed
from cwa.models.anatomy import ParamInfo, describe, pool
from cwa.models.loading import load_model
from cwa.scoring.metrics import ScoringConfig, get_metric
from cwa.scoring.metrics import score as _score
from cwa.selection.ranking import rank as _rank

__all__ = ["EvalResult", "evaluate", "load", "perturbed", "rank", "score", "weights", "windows"]


def load(model: str, dtype: str = "float32", device: str = "cpu", revision: str = ""):
    """(model, tokenizer) of a hub id, a save_pretrained directory or `builtin:<name>` (trained
    by the pipeline into artifacts/models), in eval mode."""
    return load_model(model, Path("artifacts/models"), dtype, device, revision=revision)


def windows(tokenizer, texts: str | list[str], seq_len: int = 128, bos: bool = False):
    """Non-overlapping windows of seq_len tokens of the joined texts, shape (n, seq_len)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    found = cut(token_ids(tokenizer, texts), seq_len, bos_token_id(tokenizer) if bos else None)
    if not len(found):
        raise CwaError(f"the text holds fewer tokens than one window of seq_len {seq_len}")
    return found


def weights(model, include_embeddings: bool = False, include_1d: bool = False) -> list[ParamInfo]:
    """The ranking pool: by default every matrix of the transformer blocks (`pool` params)."""
    return pool(describe(model), include_embeddings, include_1d)


def score(
    model,
    calibration: torch.Tensor,
    metric: str = "grad_x_weight",
    batch_size: int = 8,
    probes: int = 1,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """{pool tensor name: scores of its weights, shaped like it} on the calibration windows."""
    config = ScoringConfig(batch_size, calibration.shape[1], probes, 0)
    return _score(config, model, weights(model), get_metric(metric), calibration, seed)


def rank(
    model,
    scores: dict[str, torch.Tensor],
    k: int | tuple[int, ...] = 100,
    mode: str = "global",
    controls: tuple[str, ...] = (),
    draws: int = 1,
    seed: int = 0,
    metric: str = "",
) -> pl.DataFrame:
    """The ranking table (docs/artifacts.md, `ranking`): the top-k of `scores` per group of
    `mode`, and each control's sets, one row per weight (`metric`: its metric column)."""
    ks = (k,) if isinstance(k, int) else tuple(k)
    chosen = [i for i in weights(model) if i.name in scores]
    return _rank(chosen, scores, mode, ks, tuple(controls), draws, seed, metric)


@contextmanager
def perturbed(
    model,
    ranking: pl.DataFrame,
    perturbation: str = "zero",
    strength=None,
    selection: str = "top",
    k: int | None = None,
    draw: int = 0,
    seed: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block the model's weights of one ranked set (`selection` at `k`, the largest
    ranked k by default; a random control's `draw`) are perturbed; on leaving it every one is
    written back and checked bit for bit. Yields {tensor name: flat indices} of the set."""
    rows = ranking.filter(pl.col("selection") == selection)
    k = int(rows["k"].max()) if k is None and rows.height else k
    rows = rows.filter((pl.col("k") == k) & (pl.col("draw") == draw))
    if not rows.height:
        raise CwaError(f"the ranking holds no {selection} set at k = {k} (draw {draw})")
    chosen = {
        name: torch.tensor(group["flat_index"].sort().to_list())
        for (name,), group in rows.group_by("param", maintain_order=True)
    }
    params = dict(model.named_parameters())
    with _perturbed(params, chosen, get_perturbation(perturbation), strength, seed):
        yield chosen


def evaluate(model, windows_: torch.Tensor, batch_size: int = 8) -> EvalResult:
    """Per-window NLL, tokens and greedy hits; `.ppl` and `.accuracy` of them all."""
    return _evaluate(model, windows_, batch_size)
