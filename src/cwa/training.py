"""The built-in model family: small Llama models trained here (their tokenizer: cwa.tokenizer).

Training is a fixed step budget (not a time budget) from fixed seeds, so it is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cwa import CwaError
from cwa.params import FamilyMember
from cwa.progress import progress


def builtin_config(shape: FamilyMember, vocab_size: int, seq_len: int):
    """The LlamaConfig of a built-in model (its context length: the training windows')."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=seq_len,
        tie_word_embeddings=False,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=None,
    )


def build_model(shape: FamilyMember, vocab_size: int, seq_len: int, seed: int):
    """A randomly initialised LlamaForCausalLM of the given shape."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(builtin_config(shape, vocab_size, seq_len))


def lr_at(step: int, steps: int, peak: float, warmup_frac: float = 0.05) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    warmup = max(1, int(steps * warmup_frac))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress_ = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_)))


def train(
    model,
    stream: torch.Tensor,
    steps: int,
    batch: int,
    seq_len: int,
    lr: float,
    seed: int,
    desc: str | None = None,
) -> list[dict]:
    """Trains on random windows of the token stream; returns the per-step log."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()  # no dropout in Llama configs (attention_dropout=0); train mode for clarity
    log = []
    for step in progress(range(steps), desc=desc):
        starts = torch.randint(0, len(stream) - seq_len, (batch,), generator=gen)
        x = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])  # (B, T)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.append({"step": step + 1, "loss": loss.item(), "lr": opt.param_groups[0]["lr"]})
    model.eval()
    return log


def final_loss(log: list[dict], vocab: int, name: str) -> float:
    """The mean loss of the last 20 steps. Refuses a run that diverged, or that ended within 1% of
    a uniform guess over the vocabulary (ln V): every analysis of such a model measures noise."""
    losses = [r["loss"] for r in log]
    final = float(np.mean(losses[-20:]))
    settings = f"after {len(log)} steps at train_lr peak {max(r['lr'] for r in log):.3g}"
    if not np.isfinite(losses).all():
        raise CwaError(f"params: `train_lr`: training {name} diverged {settings}; lower it")
    if final >= 0.99 * math.log(vocab):
        raise CwaError(
            f"params: `train_steps`: {name} learned nothing {settings} (final loss {final:.3f}, "
            f"a uniform guess: {math.log(vocab):.3f}); raise train_steps or train_lr"
        )
    return final
