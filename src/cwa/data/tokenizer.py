"""The built-in models' tokenizer: byte-level BPE trained on the corpus's train split."""

from __future__ import annotations

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style) wrapped as a PreTrainedTokenizerFast for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def save_tokenizer(tokenizer, directory) -> None:
    """save_pretrained, naming the class that transformers 4.x and 5.x both load."""
    import json
    from pathlib import Path

    tokenizer.save_pretrained(directory)
    config_path = Path(directory) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # 5.x writes TokenizersBackend
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
