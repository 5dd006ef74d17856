"""Loading through the Auto classes from local directories, and parameter classification."""

import pytest
import torch

from cwa import CwaError
from cwa.models.anatomy import classify, describe, pool
from cwa.models.loading import count_parameters, load_model, refuse_offload
from tests.conftest import save_with_tokenizer


def test_llama_parameters_are_classified_and_pooled(llama):
    infos = describe(llama)
    comps = {i.name: i.component for i in infos}
    assert comps["model.layers.1.self_attn.k_proj.weight"] == "attn_k"
    assert comps["model.layers.0.mlp.gate_proj.weight"] == "mlp_gate"
    assert comps["model.embed_tokens.weight"] == "embed"
    assert comps["model.norm.weight"] == "norm"
    assert {i.layer for i in infos if i.name.startswith("model.layers.1.")} == {1}
    blocks = pool(infos)
    assert len(blocks) == 2 * 7 and all(len(i.shape) == 2 and i.layer >= 0 for i in blocks)
    with_embed = {i.component for i in pool(infos, include_embeddings=True)}
    assert {"embed", "lm_head"} <= with_embed


def test_a_lm_head_bias_is_pooled_as_a_bias_not_as_an_embedding():
    """Phi, GPT-J and CodeGen give lm_head a bias: include_embeddings adds its matrix only."""
    import transformers as T

    model = T.PhiForCausalLM(
        T.PhiConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    outside = lambda infos: {i.name for i in infos if i.layer < 0}  # noqa: E731
    infos = describe(model)
    assert outside(pool(infos, include_embeddings=True)) == {
        "model.embed_tokens.weight",
        "lm_head.weight",
    }
    assert outside(pool(infos, include_embeddings=True, include_1d=True)) == {
        "model.embed_tokens.weight",
        "lm_head.weight",
        "lm_head.bias",
        "model.final_layernorm.weight",
        "model.final_layernorm.bias",
    }


def test_tied_embeddings_counted_once(gpt2):
    names = [i.name for i in describe(gpt2)]
    assert "lm_head.weight" not in names  # tied to transformer.wte.weight
    assert count_parameters(gpt2) == sum(p.numel() for p in gpt2.parameters())


def test_unknown_module_fails_clearly():
    with pytest.raises(CwaError, match=r"cannot classify parameter 'encoder\.mystery\.weight'"):
        classify("encoder.mystery.weight")


def test_load_from_save_pretrained_directory(llama, tmp_path):
    save_with_tokenizer(llama, tmp_path)
    model, _ = load_model(str(tmp_path), "unused", "float32", "cpu")
    assert not model.training
    for (n, a), (_, b) in zip(llama.named_parameters(), model.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    model16, _ = load_model(str(tmp_path), "unused", "bfloat16", "cpu")
    assert next(model16.parameters()).dtype == torch.bfloat16


def test_device_map_loads_the_same_weights_and_refuses_offload(llama, tmp_path):
    save_with_tokenizer(llama, tmp_path)
    # No GPU here: accelerate's plan keeps every block on the CPU, which is not offloading.
    model, _ = load_model(str(tmp_path), "unused", device_map="auto")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    for (n, a), (_, b) in zip(llama.named_parameters(), model.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    # Too little memory: the plan sends blocks to disk, refused before any weight is read.
    with pytest.raises(CwaError, match=r"offload .* perturbations would not persist"):
        load_model(str(tmp_path), "unused", device_map="sequential", max_memory={"cpu": 20_000})
    with pytest.raises(
        CwaError, match=r"offload 2 module\(s\) to CPU/disk \(lm_head, model.layers.1\)"
    ):
        refuse_offload(
            {
                "model.embed_tokens": 0,
                "model.layers.0": 1,
                "model.layers.1": "cpu",
                "lm_head": "disk",
            },
            "m",
        )
    refuse_offload({"model.layers.0": 0, "model.layers.1": 1}, "m")  # split over GPUs: fine


def test_missing_models_say_what_to_do(tmp_path):
    with pytest.raises(CwaError, match="dvc repro train"):
        load_model("builtin:kjv-huge", tmp_path)
    with pytest.raises(CwaError, match="does not exist"):
        load_model(str(tmp_path / "no" / "such" / "dir"), tmp_path)


def test_non_finite_weights_are_reported_by_name(llama, tmp_path):
    with torch.no_grad():
        llama.model.layers[1].mlp.up_proj.weight[0, :3] = float("nan")
        llama.model.norm.weight[0] = float("inf")
    save_with_tokenizer(llama, tmp_path)
    with pytest.raises(CwaError) as err:
        load_model(str(tmp_path), "unused", "float32", "cpu")
    assert "model.layers.1.mlp.up_proj.weight (3 of 2048)" in str(err.value)
    assert "model.norm.weight (1 of 32)" in str(err.value)


def test_a_hub_revision_reaches_both_loaders_and_a_directory_ignores_none(llama, monkeypatch):
    """Offline, the hub is replaced by recording loaders: a Pythia-style checkpoint revision
    goes to the tokenizer's and the model's from_pretrained alike."""
    import transformers

    seen = []

    def record(kind):
        def load(source, **kwargs):
            seen.append((kind, source, kwargs.get("revision")))
            return llama

        return load

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record("tokenizer"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record("model"))
    load_model("EleutherAI/pythia-70m", "unused", revision="step3000")
    assert seen == [
        ("tokenizer", "EleutherAI/pythia-70m", "step3000"),
        ("model", "EleutherAI/pythia-70m", "step3000"),
    ]
    seen.clear()
    load_model("EleutherAI/pythia-70m", "unused")
    assert [revision for *_, revision in seen] == [None, None]
