"""Perplexity, next-token accuracy and the distance to the unperturbed model's next-token
distribution, kept per text so paired statistics are possible.

Distribution-level damage (`Reference`): perplexity hardly moves when a perturbation reshuffles
probability among unlikely tokens, so each experiment also measures, per predicted token, the KL
divergence KL(p_ref ‖ p) from the unperturbed model's next-token distribution to the perturbed
one over the whole vocabulary, and whether the top-1 prediction is unchanged. The reference
log-probabilities are computed once per stage and kept in fp16 in a memory-mapped file (2·V bytes
per token: kjv-base's 64 × 127 tokens take 66 MB; a 128k vocabulary at 64 windows of 2048 tokens
34 GB, in TMPDIR), so memory holds one batch whatever the size. At use they are renormalised in
fp32 (p̂). Their rounding alone puts KL(p̂ ‖ p) ≈ ½ Σ p δ² (δ: the fp16 error of log p, ~1e-3)
between the stored and the exact reference, about 1e-6 per token: as large as the KL of a weak
control. So the reference pass also records, per token and exactly, Σ p̂ log p (fp32 log p), and
an experiment reports Σ p̂ log p − Σ p̂ log q = Σ p̂ (log p − log q): exactly 0 for the unperturbed
model, and otherwise within a relative error of order δ of the exact KL(p ‖ q), plus the fp32
arithmetic's ~1e-6 per token (tests/test_evaluation.py measures both against a float64 direct
sum). Per experiment that costs one softmax of the stored reference and one log-softmax of the
logits beside the perplexity's cross-entropy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from cwa.core.progress import progress
from cwa.core.stats import ppl


@dataclass(frozen=True)
class EvalResult:
    nll: np.ndarray  # (n,) float64: summed NLL per text
    tokens: np.ndarray  # (n,) int64: predicted tokens per text
    correct: np.ndarray  # (n,) int64: greedy hits per text
    kl: np.ndarray | None = None  # (n,) float64: summed KL(p_ref ‖ p) per text (with a Reference)
    same_top1: np.ndarray | None = None  # (n,) int64: tokens whose top-1 matches the reference's
    kl_p99: float = math.nan  # 99th percentile of the per-token KL over every token

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
    """Per-token next-token NLL in fp32, shape (B, T-1): cross-entropy over the flattened tokens
    (rows of V contiguous logits), whose gradient is as accurate as the plain computation's;
    the (B, V, T) layout of a transposed call took its log-softmax across strided memory and
    doubled the gradient's rounding error (tests/test_metrics.py)."""
    logits = logits[:, :-1].float()  # (B, T-1, V)
    targets = input_ids[:, 1:].to(logits.device)  # a split model's logits sit on its last GPU
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    return flat.view(targets.shape)


@dataclass(frozen=True)
class Reference:
    """The unperturbed model's next-token log-probabilities on the evaluation windows (fp16,
    memory-mapped, (n, T−1, V)), its top-1 predictions and, per token, Σ p̂ log p (float64)."""

    logp: np.memmap
    top1: torch.Tensor
    self_term: torch.Tensor

    def batch(self, start: int, stop: int, device):
        """(p̂ in fp32, top-1, Σ p̂ log p) of windows start..stop, the first two on `device`."""
        stored = torch.as_tensor(np.asarray(self.logp[start:stop])).to(device)
        return _distribution(stored), self.top1[start:stop].to(device), self.self_term[start:stop]


def _distribution(stored: torch.Tensor) -> torch.Tensor:
    """p̂: fp16 log-probabilities as a normalised fp32 distribution."""
    return torch.softmax(stored.float(), dim=-1)


def _cross(p_hat: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ_v p̂_v log q_v per token, q the next-token distribution of `logits` (B, T, V)."""
    return (p_hat * torch.log_softmax(logits[:, :-1].float(), dim=-1)).sum(dim=-1).double()


@torch.inference_mode()
def reference(model, windows: torch.Tensor, batch_size: int, directory: Path) -> Reference:
    """One pass of the unperturbed model, its log-probabilities written to directory/ref.npy."""
    device = next(model.parameters()).device
    n, t = windows.shape
    logp, top1, self_term, start = None, [], [], 0
    for batch in windows.split(batch_size):
        logits = model(input_ids=batch.to(device), use_cache=False).logits
        if logp is None:
            shape = (n, t - 1, logits.shape[-1])
            logp = np.lib.format.open_memmap(directory / "ref.npy", "w+", np.float16, shape)
        stored = torch.log_softmax(logits[:, :-1].float(), -1).half()
        logp[start : start + len(batch)] = stored.cpu().numpy()
        self_term.append(_cross(_distribution(stored), logits).cpu())
        top1.append(logits[:, :-1].argmax(dim=-1).cpu())
        start += len(batch)
    logp.flush()
    return Reference(logp, torch.cat(top1), torch.cat(self_term))


@torch.inference_mode()
def evaluate(
    model,
    windows: torch.Tensor,
    batch_size: int,
    desc: str | None = None,
    ref: Reference | None = None,
) -> EvalResult:
    """Per-text NLL and greedy hits; with `ref`, also the KL to it and the unchanged top-1s."""
    device = next(model.parameters()).device
    nll, correct, kl, same = [], [], [], []
    batches = windows.split(batch_size)
    start = 0
    for batch in progress(batches, desc=desc, total=len(batches), leave=False):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        nll.append(token_nll(logits, batch).double().sum(dim=1).cpu())
        top1 = logits[:, :-1].argmax(dim=-1)
        correct.append((top1 == batch[:, 1:].to(logits.device)).sum(dim=1).cpu())
        if ref is not None:
            p_hat, ref_top1, self_term = ref.batch(start, start + len(batch), logits.device)
            kl.append(self_term - _cross(p_hat, logits).cpu())
            same.append((top1 == ref_top1).sum(dim=1).cpu())
        start += len(batch)
    n, t = windows.shape
    out = EvalResult(
        nll=torch.cat(nll).numpy(),
        tokens=np.full(n, t - 1, dtype=np.int64),
        correct=torch.cat(correct).numpy().astype(np.int64),
    )
    if ref is None:
        return out
    per_token = torch.cat(kl)
    return dataclasses.replace(
        out,
        kl=per_token.sum(dim=1).numpy(),
        same_top1=torch.cat(same).numpy().astype(np.int64),
        kl_p99=float(np.quantile(per_token.numpy(), 0.99)),
    )


def text_rows(ident: dict, res: EvalResult, seed: int | None = None) -> pl.DataFrame:
    """Per-text rows (schema `eval_texts`); `seed`: the calibration seed of the ranking
    perturbed, None for the unperturbed model."""
    n = len(res.nll)
    return pl.DataFrame(
        {
            "seed": pl.Series([seed] * n, dtype=pl.Int64),
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
