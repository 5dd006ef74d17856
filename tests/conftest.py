"""Tiny models built from configs (no hub), shared by the unit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import cwa.pipeline.load_registries  # noqa: F401  (every registry's checks and params keys, as `cwa run` has)

ROOT = Path(__file__).resolve().parents[1]

VOCAB = 64


def tiny_llama(seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0, positions: int = 64, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=layers,
        n_head=4,
        n_positions=positions,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config).eval()


def window_nll(model, windows) -> torch.Tensor:
    """Summed next-token NLL per window, plain torch in float64: the reference that evaluation
    results are checked against (no cwa code)."""
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1].double()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="none"
    )
    return nll.view(len(windows), -1).sum(dim=1)


def save_with_tokenizer(model, directory) -> None:
    """A local model directory as save_pretrained writes it, with a one-word tokenizer."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(directory)
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    ).save_pretrained(directory)


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def windows():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (6, 12), generator=gen)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with the real params and some artifacts, DVC forbidden."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "artifacts" / "rank").mkdir(parents=True)
    (tmp_path / "artifacts" / "metrics.json").write_text('{"separation": 37.9}\n')
    (tmp_path / "artifacts" / "rank" / "ranking.parquet").write_bytes(b"PAR1 stand-in")
    monkeypatch.chdir(tmp_path)

    def no_dvc(*args, **kwargs):
        raise AssertionError(f"DVC was started: {args}")

    monkeypatch.setattr("cwa.cli.main.subprocess.run", no_dvc)
    return tmp_path


@pytest.fixture
def word_model(project):
    """A local model directory whose tokenizer makes one token per whitespace-separated word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory = project / "word-model"
    # GPT-2 small's 12 blocks and 1024 positions, as the old commands assume
    tiny_gpt2(positions=1024, layers=12).save_pretrained(directory)
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "w": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<unk>").save_pretrained(directory)
    return directory
