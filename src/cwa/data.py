"""Token windows: the fixed-length, unpadded units of calibration and evaluation.

Texts are joined with a blank line and tokenized once without special tokens; the stream is cut
into non-overlapping windows of `seq_len`, so padding never arises and every window predicts
seq_len - 1 tokens.
"""

from __future__ import annotations

import torch

from cwa import CwaError


def windows(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """All non-overlapping windows of the joined texts, shape (n, seq_len)."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def first_windows(all_windows: torch.Tensor, count: int, what: str) -> torch.Tensor:
    """The first `count` windows: the evaluation set is the same for every experiment."""
    if count > len(all_windows):
        raise CwaError(f"{what}: asked for {count} windows, the data holds only {len(all_windows)}")
    return all_windows[:count]


def calibration_draw(all_windows: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` windows drawn without replacement by `seed`: each seed sees its own sample."""
    if count > len(all_windows):
        raise CwaError(
            f"calib_samples: asked for {count} windows, the calibration split holds only "
            f"{len(all_windows)}"
        )
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(all_windows), generator=gen)[:count]
    return all_windows[order.sort().values]


def split_windows(tokenizer, corpus_path, split: str, seq_len: int) -> torch.Tensor:
    """All windows of one split of the corpus table."""
    import polars as pl

    from cwa.corpus import texts

    return windows(tokenizer, texts(pl.read_parquet(corpus_path), split), seq_len)


def eval_windows(tokenizer, corpus_path, seq_len: int, count: int) -> torch.Tensor:
    return first_windows(
        split_windows(tokenizer, corpus_path, "eval", seq_len), count, "eval_samples"
    )
