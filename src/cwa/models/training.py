"""The built-in model family: small Llama models, and Mixtral-style mixtures of experts, trained
here (their tokenizer: cwa.data.tokenizer).

Training is a fixed step budget (not a time budget) from fixed seeds, so it is deterministic.
A mixture of experts trains with Mixtral's load-balancing loss (coefficient ROUTER_AUX_LOSS, the
published Mixtral 8x7B value), so its experts share the tokens rather than collapse onto one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from cwa import CwaError
from cwa.config.params import FamilyMember
from cwa.core.progress import progress

ROUTER_AUX_LOSS = 0.02


def builtin_config(shape: FamilyMember, vocab_size: int, seq_len: int):
    """The LlamaConfig (MixtralConfig with experts) of a built-in model; its context length is
    the training windows'."""
    from transformers import LlamaConfig, MixtralConfig

    common = dict(
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
    if not shape.experts:
        return LlamaConfig(**common)
    return MixtralConfig(
        **common,
        num_local_experts=shape.experts,
        num_experts_per_tok=shape.active,
        router_aux_loss_coef=ROUTER_AUX_LOSS,
    )


def build_model(shape: FamilyMember, vocab_size: int, seq_len: int, seed: int):
    """A randomly initialised causal LM of the given shape."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(builtin_config(shape, vocab_size, seq_len))


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
    checkpoints: tuple[int, ...] = (),
    save: Callable[[int], None] | None = None,
) -> list[dict]:
    """Trains on random windows of the token stream; returns the per-step log. After each step
    in `checkpoints`, `save(step)` (the model in eval mode, then back to training)."""
    gen = torch.Generator().manual_seed(seed)
    moe = getattr(model.config, "num_local_experts", 0) > 0  # adds the load-balancing loss
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()  # no dropout in Llama configs (attention_dropout=0); train mode for clarity
    log = []
    for step in progress(range(steps), desc=desc):
        starts = torch.randint(0, len(stream) - seq_len, (batch,), generator=gen)
        x = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])  # (B, T)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        extra = {"output_router_logits": True} if moe else {}
        out = model(input_ids=x, labels=x, use_cache=False, **extra)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lm_loss = out.loss - model.config.router_aux_loss_coef * out.aux_loss if moe else out.loss
        log.append({"step": step + 1, "loss": lm_loss.item(), "lr": opt.param_groups[0]["lr"]})
        if step + 1 in checkpoints and save is not None:
            model.eval()
            save(step + 1)
            model.train()
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
