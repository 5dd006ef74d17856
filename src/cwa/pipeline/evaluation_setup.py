"""What every stage that evaluates the studied model sets up first, in one place: the model and
tokenizer as params load them, the memory guard of an evaluation pass, the evaluation windows
and, after the baseline stage, the baseline's per-window results (checked against the windows)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cwa import CwaError
from cwa.data.windows import evaluation_windows
from cwa.evaluation.perplexity import EvalResult, evaluate, read_baseline
from cwa.models.loading import ModelConfig, load_studied
from cwa.models.memory import guard_evaluation


@dataclass(frozen=True)
class EvalConfig:
    """How the evaluation set is built and run (params: seq_len, bos, eval_samples,
    batch_size)."""

    seq_len: int
    bos: bool
    eval_samples: int
    batch_size: int

    @classmethod
    def of(cls, params) -> EvalConfig:
        return cls(params.seq_len, params.bos, params.eval_samples, params.batch_size)


@dataclass
class Evaluation:
    model: torch.nn.Module
    tokenizer: object
    windows: torch.Tensor  # (eval_samples, seq_len) token ids
    memory: dict  # the guard's estimate, for the manifest
    base: EvalResult | None  # the baseline stage's per-window results, when asked for
    text: dict  # the evaluation text's source, tokens and windows, for the manifest

    def check_unchanged(self, batch_size: int) -> None:
        """After a sweep that restored the model: one batch must reproduce the baseline's NLL."""
        check = evaluate(self.model, self.windows[:batch_size], batch_size)
        if not np.allclose(check.nll, self.base.nll[:batch_size], rtol=1e-5, atol=1e-4):
            raise CwaError("after restoring, the model no longer reproduces the baseline NLL")


def prepare(
    model_config: ModelConfig, config: EvalConfig, models_dir, eval_text, baseline_texts=None
) -> Evaluation:
    """Loads and guards before tokenizing, so a model that cannot fit fails first."""
    model, tokenizer = load_studied(model_config, models_dir)
    memory = guard_evaluation(model, config.batch_size, config.seq_len)
    found = evaluation_windows(
        tokenizer, eval_text, config.seq_len, config.bos, config.eval_samples
    )
    base = read_baseline(baseline_texts, len(found.all)) if baseline_texts else None
    return Evaluation(model, tokenizer, found.all, memory, base, found.record)


def prepare_stage(params, models_dir, eval_text, baseline_texts=None) -> Evaluation:
    """`prepare` as every evaluating stage calls it: its configs read from the params it declared
    (model, dtype, device, device_map, seq_len, bos, eval_samples, batch_size)."""
    return prepare(
        ModelConfig.of(params), EvalConfig.of(params), models_dir, eval_text, baseline_texts
    )
