"""Token windows: the fixed-length, unpadded units of calibration and evaluation.

A role's documents (written by the `sources` stage) are joined with a blank line and tokenized
once without special tokens; the stream is cut into non-overlapping windows of `seq_len`, so
padding never arises and every window predicts seq_len - 1 tokens. With `bos`, each window is the
BOS token followed by seq_len - 1 text tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cwa import CwaError
from cwa.data.text_folder import Text, read_text


def token_ids(tokenizer, texts: list[str]) -> list[int]:
    """The joined texts' token stream, without special tokens."""
    return tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]


def windows(tokenizer, texts: list[str], seq_len: int, bos_id: int | None = None) -> torch.Tensor:
    """All non-overlapping windows of the joined texts, shape (n, seq_len)."""
    return cut(token_ids(tokenizer, texts), seq_len, bos_id)


def cut(ids: list[int], seq_len: int, bos_id: int | None = None) -> torch.Tensor:
    """A token stream as non-overlapping windows (BOS + seq_len − 1 tokens with `bos_id`)."""
    body = seq_len - (bos_id is not None)
    n = len(ids) // body
    out = torch.tensor(ids[: n * body], dtype=torch.long).view(n, body)
    if bos_id is not None:
        out = torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), out], dim=1)
    return out


def bos_token_id(tokenizer) -> int:
    """The BOS token, or EOS where the tokenizer has no BOS (GPT-2: one token starts and ends)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise CwaError("`bos` is true but the model's tokenizer has neither a BOS nor an EOS token")


@dataclass(frozen=True)
class TextWindows:
    """Every window of one role's text, and the record for manifests (tokens, windows used)."""

    all: torch.Tensor  # (n, seq_len)
    record: dict


def text_windows(tokenizer, text: Text, seq_len: int, bos: bool, count_key: str, count: int):
    """All windows of `text`; fails, naming both numbers and the remedy, when fewer than
    `count` (the value of `count_key`) exist."""
    ids = token_ids(tokenizer, text.documents)  # tokenized once: windows and the token count
    found, tokens = cut(ids, seq_len, bos_token_id(tokenizer) if bos else None), len(ids)
    key, spec = text.source["key"], text.source["spec"]
    if len(found) == 0:
        raise CwaError(
            f"`{key}` {spec} gives {tokens} tokens, fewer than one window of seq_len {seq_len}: "
            f"lower `seq_len` or give more text"
        )
    if count > len(found):
        raise CwaError(
            f"`{count_key}` is {count} but `{key}` {spec} gives only {len(found)} windows of "
            f"seq_len {seq_len} ({tokens:,} tokens): lower `{count_key}` or `seq_len`, or give "
            f"more text"
        )
    record = {**text.source, "tokens": tokens, "windows": len(found), count_key: count}
    return TextWindows(found, record)


def calibration_indices(available: int, count: int, seed: int) -> torch.Tensor:
    """Which `count` of `available` windows `seed` draws, without replacement, sorted."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(available, generator=gen)[:count].sort().values


def calibration_draw(all_windows: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` windows drawn without replacement by `seed`: each seed sees its own sample."""
    return all_windows[calibration_indices(len(all_windows), count, seed)]


def calibration_windows(tokenizer, directory, seq_len: int, bos: bool, count: int):
    """The calibration pool each seed draws `count` (calib_samples) windows from."""
    return text_windows(tokenizer, read_text(directory), seq_len, bos, "calib_samples", count)


def evaluation_windows(tokenizer, directory, seq_len: int, bos: bool, count: int):
    """The evaluation set: the first `count` (eval_samples) windows, the same for every
    experiment."""
    found = text_windows(tokenizer, read_text(directory), seq_len, bos, "eval_samples", count)
    return TextWindows(found.all[:count], found.record)
