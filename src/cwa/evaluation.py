"""Perplexity and next-token accuracy, kept per text so paired statistics are possible."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from cwa.progress import progress
from cwa.stats import ppl


@dataclass(frozen=True)
class EvalResult:
    nll: np.ndarray  # (n,) float64: summed NLL per text
    tokens: np.ndarray  # (n,) int64: predicted tokens per text
    correct: np.ndarray  # (n,) int64: greedy hits per text

    @property
    def ppl(self) -> float:
        return ppl(self.nll, self.tokens)

    @property
    def accuracy(self) -> float:
        return float(self.correct.sum() / self.tokens.sum())

    @property
    def diverged(self) -> bool:
        return not bool(np.isfinite(self.nll).all())


def read_baseline(path, windows: int) -> EvalResult:
    """The baseline stage's per-text table as an EvalResult, checked against the current windows."""
    from cwa import CwaError

    rows = pl.read_parquet(path).sort("text")
    if len(rows) != windows:
        raise CwaError("baseline texts and evaluation windows differ: rerun the baseline stage")
    return EvalResult(rows["nll"].to_numpy(), rows["tokens"].to_numpy(), rows["correct"].to_numpy())


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token next-token NLL in fp32, shape (B, T-1)."""
    logits = logits[:, :-1].float()  # (B, T-1, V)
    targets = input_ids[:, 1:].to(logits.device)  # a split model's logits sit on its last GPU
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


@torch.inference_mode()
def evaluate(model, windows: torch.Tensor, batch_size: int, desc: str | None = None) -> EvalResult:
    device = next(model.parameters()).device
    nll, correct = [], []
    batches = windows.split(batch_size)
    for batch in progress(batches, desc=desc, total=len(batches), leave=False):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        nll.append(token_nll(logits, batch).double().sum(dim=1).cpu())
        hits = logits[:, :-1].argmax(dim=-1) == batch[:, 1:].to(logits.device)
        correct.append(hits.sum(dim=1).cpu())
    n, t = windows.shape
    return EvalResult(
        nll=torch.cat(nll).numpy(),
        tokens=np.full(n, t - 1, dtype=np.int64),
        correct=torch.cat(correct).numpy().astype(np.int64),
    )


def text_rows(ident: dict, res: EvalResult) -> pl.DataFrame:
    n = len(res.nll)
    return pl.DataFrame(
        {
            **{k: [v] * n for k, v in ident.items()},
            "text": np.arange(n),
            "nll": res.nll,
            "tokens": res.tokens,
            "correct": res.correct,
        }
    )


# The identity columns of the unperturbed model in per-text and task tables.
BASELINE = {
    "perturbation": "none",
    "strength": math.nan,
    "setting": "",
    "selection": "none",
    "draw": 0,
    "k": 0,
    "mask_ratio": 1.0,
}
