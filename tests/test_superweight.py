"""The super-weight detector finds a planted super weight and nothing in a plain model."""

import pytest
import torch

from cwa.models.anatomy import describe, pool
from cwa.scoring.metrics import compute_scores, get_metric
from cwa.scoring.superweight import detect
from tests.conftest import tiny_gpt2, tiny_llama

ROW, COL, LAYER = 5, 17, 0  # planted at layers.0.mlp.down_proj.weight[5, 17]


def planted_llama():
    """A massive input activation on channel COL of layer 0's down projection, meeting a large
    weight at [ROW, COL]: the mechanism Yu et al. describe."""
    model = tiny_llama(seed=4)
    mlp = model.model.layers[LAYER].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[COL] *= 40
        mlp.up_proj.weight[COL] *= 40
        mlp.down_proj.weight[ROW, COL] = 2.0
    return model


@pytest.fixture(scope="module")
def windows():
    return torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(2))


def test_detector_finds_the_planted_super_weight(windows):
    spikes = {s.layer: s for s in detect(planted_llama(), windows, batch_size=2)}
    found = spikes[LAYER]
    assert (found.out_channel, found.in_channel) == (ROW, COL)
    assert found.is_candidate(100.0)
    assert found.flat_index == ROW * 64 + COL  # intermediate size 64
    assert not spikes[1].is_candidate(100.0)


def planted_behind_a_louder_channel():
    """A super weight whose input channel is quieter than an ordinary channel's peak: channel
    LOUD's input is boosted 10x everywhere (as SwiGLU intermediates spike in every layer of a
    small model), the planted weight [ROW, COL] is large and COL's input ordinary."""
    model = tiny_llama(seed=4)
    mlp = model.model.layers[LAYER].mlp
    with torch.no_grad():
        mlp.up_proj.weight[LOUD] *= 10
        mlp.down_proj.weight[ROW, COL] = 25.0
    return model


LOUD = 40


def test_detector_locates_the_super_weight_where_the_spike_happens(windows):
    """Pairing the largest input channel with the largest output channel reports LOUD; the
    contribution at the spike token finds the planted weight."""
    from cwa.scoring.superweight import spike_sites

    model = planted_behind_a_louder_channel()
    name = f"model.layers.{LAYER}.mlp.down_proj.weight"
    sites = spike_sites(model, windows, 2)[name]
    with torch.no_grad():  # every input channel's peak |x| over the probe, directly
        hidden = []
        handle = model.model.layers[LAYER].mlp.down_proj.register_forward_hook(
            lambda m, i, o: hidden.append(i[0].abs().amax(dim=(0, 1)))
        )
        model(input_ids=windows)
        handle.remove()
        peaks = hidden[0]
    assert int(peaks.argmax()) == LOUD and peaks[LOUD] > peaks[COL]  # the old pairing's choice
    found = {s.layer: s for s in detect(model, windows, batch_size=2)}[LAYER]
    assert (found.out_channel, found.in_channel) == (ROW, COL)
    w = model.model.layers[LAYER].mlp.down_proj.weight.detach()
    x = sites["x"]
    assert found.contribution == pytest.approx(float((w[ROW, COL] * x[COL]).abs()), rel=1e-6)
    assert found.share == pytest.approx(
        float((w[ROW, COL] * x[COL]).abs() / (w[ROW] * x).abs().sum()), rel=1e-5
    )
    assert found.row_mean == pytest.approx(float(w[ROW].mean()), rel=1e-6)
    # the spike token: the largest |output| of that channel, found again by a direct pass
    with torch.no_grad():
        out = []
        handle = model.model.layers[LAYER].mlp.down_proj.register_forward_hook(
            lambda m, i, o: out.append(o.abs())
        )
        model(input_ids=windows)
        handle.remove()
    y = out[0]
    window, token, channel = torch.unravel_index(y.argmax(), y.shape)
    assert (found.window, found.token, found.out_channel) == (window, token, channel)
    assert found.out_act == pytest.approx(float(y.max()))


def test_plain_model_has_no_candidate(windows):
    spikes = detect(tiny_llama(seed=4), windows, batch_size=4)
    assert len(spikes) == 2
    assert not any(s.is_candidate(100.0) for s in spikes)
    assert all(s.in_ratio < 100 and s.out_ratio > 1 for s in spikes)


def test_zeroing_the_detected_weight_removes_the_residual_spike(windows):
    """The causal signature (Yu et al., R12): zeroing the weight `detect` reports, through the
    perturbation the stages apply (param + flat index), removes the residual stream's massive
    activation; zeroing its neighbour does not; the model is restored after each."""
    from cwa.experiments.perturbations import get_perturbation, perturbed

    def residual_max(model):
        with torch.no_grad():
            out = model(input_ids=windows, output_hidden_states=True)
        return float(out.hidden_states[LAYER + 1].abs().max())

    model = planted_llama()
    found = {s.layer: s for s in detect(model, windows, batch_size=2)}[LAYER]
    params, zero = dict(model.named_parameters()), get_perturbation("zero")
    spike = residual_max(model)
    with perturbed(params, {found.param: torch.tensor([found.flat_index + 1])}, zero):
        # not a rounding check: an ordinary weight's own share may move the maximum (here 8e-8
        # relative); 5% is the "nothing happens" band, zeroing the super weight cuts it ~35x
        assert residual_max(model) == pytest.approx(spike, rel=0.05)
    with perturbed(params, {found.param: torch.tensor([found.flat_index])}, zero):
        assert residual_max(model) < spike / 5
    assert residual_max(model) == spike


def test_super_weight_metric_ranks_the_planted_weight_first(windows):
    model = planted_llama()
    infos = pool(describe(model))
    scores = compute_scores(model, infos, get_metric("super_weight"), windows, 2)
    name = f"model.layers.{LAYER}.mlp.down_proj.weight"
    assert int(scores[name].argmax()) == ROW * 64 + COL
    # exact: the metric defines 0 off the MLP down projections
    assert float(scores["model.layers.0.self_attn.q_proj.weight"].abs().sum()) == 0.0


def test_gpt2_conv1d_coordinates(windows):
    model = tiny_gpt2(seed=1)
    with torch.no_grad():  # GPT-2 mlp.c_proj is Conv1D [in=128, out=32]
        model.transformer.h[1].mlp.c_fc.weight[:, 7] *= 60
        model.transformer.h[1].mlp.c_proj.weight[7, 3] = 3.0
    spike = {s.layer: s for s in detect(model, windows, 4)}[1]
    assert (spike.out_channel, spike.in_channel) == (3, 7)
    assert spike.flat_index == 7 * 32 + 3
