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
import logging
import math
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from cwa.config.params import Key, fail, register_key
from cwa.config.params import check as params_check
from cwa.core.progress import progress
from cwa.core.stats import ppl

log = logging.getLogger(__name__)


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


register_key(
    Key(
        "kl_topk",
        "int",
        0,
        "the KL to the unperturbed model: 0 over the whole vocabulary (the reference on disk "
        "takes 2·V bytes per evaluated token: 34 GB for a 128k vocabulary at 64 windows of "
        "2,048), K > 0 over the reference's K most likely tokens and the rest as one outcome "
        "(8·K + 4 bytes per token; a lower bound of the full KL, docs/science.md)",
    )
)


@params_check
def _valid_kl_topk(p) -> None:
    if p.kl_topk < 0:
        fail(
            "kl_topk",
            f"must be 0 (the whole vocabulary) or a number of tokens >= 1, got {p.kl_topk}",
        )


@dataclass(frozen=True)
class Reference:
    """The unperturbed model's next-token log-probabilities on the evaluation windows, memory-
    mapped: the whole vocabulary in fp16 ((n, T−1, V), `ids` None), or its top K in fp32 with
    their token ids ((n, T−1, K) each) and the log of the rest's mass (`log_tail`). Also its
    top-1 predictions and, with the whole vocabulary, Σ p̂ log p per token (float64)."""

    logp: np.memmap
    top1: torch.Tensor
    self_term: torch.Tensor | None
    ids: np.memmap | None = None
    log_tail: torch.Tensor | None = None

    def kl(self, start: int, stop: int, logits: torch.Tensor) -> torch.Tensor:
        """Per-token KL(p_ref ‖ q) of windows start..stop, q the distribution of `logits`."""
        stored = torch.as_tensor(np.asarray(self.logp[start:stop])).to(logits.device)
        if self.ids is None:
            return self.self_term[start:stop] - _cross(_distribution(stored), logits).cpu()
        ids = torch.as_tensor(np.asarray(self.ids[start:stop])).to(logits.device).long()
        log_q = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return _bucket_kl(
            stored, self.log_tail[start:stop], log_q.gather(-1, ids), _log_rest(log_q, ids)
        ).cpu()


def _distribution(stored: torch.Tensor) -> torch.Tensor:
    """p̂: fp16 log-probabilities as a normalised fp32 distribution."""
    return torch.softmax(stored.float(), dim=-1)


def _cross(p_hat: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ_v p̂_v log q_v per token, q the next-token distribution of `logits` (B, T, V)."""
    return (p_hat * torch.log_softmax(logits[:, :-1].float(), dim=-1)).sum(dim=-1).double()


def _log_rest(log_p: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability outside `ids`, from the full log-probabilities (no 1 − Σ
    cancellation); −inf when `ids` cover the vocabulary."""
    return log_p.scatter(-1, ids, -math.inf).logsumexp(dim=-1)


def _bucket_kl(log_p, log_p_rest, log_q, log_q_rest) -> torch.Tensor:
    """KL between p and q coarse-grained to the top-K outcomes and one for the rest, in float64:
    Σ_K p (log p − log q) + P_rest (log P_rest − log Q_rest). Merging outcomes never increases
    a KL (log-sum inequality), so this is a lower bound of the full KL, equal when the rest
    holds nothing or q is proportional to p on it."""
    log_p, log_q = log_p.double(), log_q.double()
    log_p_rest, log_q_rest = log_p_rest.double(), log_q_rest.double()
    top = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    rest = torch.where(log_p_rest > -math.inf, log_p_rest.exp() * (log_p_rest - log_q_rest), 0.0)
    return top + rest


def reference_bytes(tokens: int, vocab: int, topk: int) -> int:
    """Disk the reference takes: 2·V bytes per token (fp16), or 8·K + 4 (fp32 log-probabilities,
    int32 ids, the rest's mass) with `topk`."""
    return tokens * (2 * vocab if topk == 0 else 8 * min(topk, vocab) + 4)


def _check_disk(directory: Path, need: int, topk: int) -> None:
    from cwa import CwaError

    free = shutil.disk_usage(directory).free
    if need > free:
        raise CwaError(
            f"`kl_topk` is {topk}: the KL reference needs {need / 1e9:.2f} GB in "
            f"{directory.parent} and {free / 1e9:.2f} GB are free: set `kl_topk` (e.g. 256) or "
            f"TMPDIR to a larger disk"
        )


@contextmanager
def reference(model, windows: torch.Tensor, batch_size: int, topk: int = 0):
    """The Reference of one pass of the unperturbed model, on disk in TMPDIR for the duration
    of the `with` block; refused in one line, before the pass, when the disk cannot hold it."""
    device = next(model.parameters()).device
    n, t = windows.shape
    vocab = model.get_output_embeddings().weight.shape[0]
    keep = vocab if topk == 0 else min(topk, vocab)
    with tempfile.TemporaryDirectory(prefix="cwa-reference-") as tmp:
        directory = Path(tmp)
        need = reference_bytes(n * (t - 1), vocab, topk)
        _check_disk(directory, need, topk)
        log.info(
            "KL reference: %.1f MB in %s (%s)",
            need / 1e6,
            directory,
            "the whole vocabulary" if topk == 0 else f"the top {keep} tokens and the rest",
        )
        shape = (n, t - 1, keep)
        dtype = np.float16 if topk == 0 else np.float32
        logp = np.lib.format.open_memmap(directory / "ref.npy", "w+", dtype, shape)
        ids = (
            None
            if topk == 0
            else np.lib.format.open_memmap(directory / "ids.npy", "w+", np.int32, shape)
        )
        top1, self_term, tail, start = [], [], [], 0
        with torch.inference_mode():
            for batch in windows.split(batch_size):
                logits = model(input_ids=batch.to(device), use_cache=False).logits
                rows = slice(start, start + len(batch))
                log_p = torch.log_softmax(logits[:, :-1].float(), -1)
                if ids is None:
                    stored = log_p.half()
                    logp[rows] = stored.cpu().numpy()
                    self_term.append(_cross(_distribution(stored), logits).cpu())
                else:
                    best = log_p.topk(keep, dim=-1)
                    logp[rows], ids[rows] = (
                        best.values.cpu().numpy(),
                        best.indices.int().cpu().numpy(),
                    )
                    tail.append(_log_rest(log_p, best.indices).cpu())
                top1.append(logits[:, :-1].argmax(dim=-1).cpu())
                start += len(batch)
        logp.flush()
        yield Reference(
            logp,
            torch.cat(top1),
            torch.cat(self_term) if self_term else None,
            ids,
            torch.cat(tail) if tail else None,
        )


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
            kl.append(ref.kl(start, start + len(batch), logits))
            same.append(
                (top1 == ref.top1[start : start + len(batch)].to(top1.device)).sum(dim=1).cpu()
            )
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
