"""Fine-tuning arms against direct constructions: the masks, the held-out split, the window
order, frozen weights bit for bit, masked AdamW against a reset reference, and the statistics
over seeds against Student's t written out."""

import math

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats

from cwa import CwaError
from cwa.experiments.finetuning import (
    ARMS,
    batch_order,
    check_frozen,
    finetune,
    metrics,
    seed_interval,
    split_windows,
    summary,
    trainable,
)
from cwa.experiments.perturbations import int_view
from cwa.models.anatomy import ParamInfo, describe, pool
from cwa.selection.ranking import Selected, extreme_k, matched_random
from tests.conftest import VOCAB, tiny_llama


def _infos():
    return [
        ParamInfo("a", 0, "attn_q", (2, 3), False),
        ParamInfo("b", 1, "mlp_up", (4,), False),
    ]


def test_trainable_marks_exactly_each_arms_weights():
    top = Selected(np.array([0, 1]), np.array([4, 2]), np.array([9.0, 8.0]))
    rnd = Selected(np.array([0, 1]), np.array([0, 3]), np.array([1.0, 1.0]))
    masks = {arm: trainable(arm, _infos(), top, rnd) for arm in ARMS}
    flat = {
        arm: {n: m.flatten().nonzero().flatten().tolist() for n, m in ms.items()}
        for arm, ms in masks.items()
    }
    assert flat["full"] == {"a": [0, 1, 2, 3, 4, 5], "b": [0, 1, 2, 3]}
    assert flat["only_top"] == {"a": [4], "b": [2]}
    assert flat["only_random"] == {"a": [0], "b": [3]}
    assert flat["freeze_top"] == {"a": [0, 1, 2, 3, 5], "b": [0, 1, 3]}
    assert flat["freeze_random"] == {"a": [1, 2, 3, 4, 5], "b": [0, 1, 2]}
    assert masks["full"]["a"].shape == (2, 3)


def test_held_out_windows_are_spread_evenly_and_disjoint_from_training():
    windows = torch.arange(23).view(23, 1)
    train, held = split_windows(windows, 5, 2, "x.txt")
    assert held.flatten().tolist() == [0, 4, 8, 12, 16]  # every ⌊23 / 5⌋-th
    assert sorted(train.flatten().tolist() + held.flatten().tolist()) == list(range(23))
    with pytest.raises(CwaError, match=r"`finetune_data` x\.txt gives 6 windows.*eval_samples"):
        split_windows(windows[:6], 5, 2, "x.txt")


def test_batch_order_is_seeded_permutations_epoch_after_epoch():
    order = batch_order(10, 7, 3, seed=4)
    assert order.shape == (7, 3)
    flat = order.flatten().tolist()
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert torch.equal(order, batch_order(10, 7, 3, seed=4))
    assert not torch.equal(order, batch_order(10, 7, 3, seed=5))


def _setup(arm: str):
    model = tiny_llama(seed=0)
    infos = pool(describe(model))
    weights = dict(model.named_parameters())
    scores = [weights[i.name].detach().abs() for i in infos]  # any scores: magnitude
    top = extreme_k(scores, 40)
    rnd = matched_random(top, [i.numel for i in infos], np.random.default_rng(0), scores)
    windows = torch.randint(0, VOCAB, (12, 16), generator=torch.Generator().manual_seed(0))
    return model, infos, trainable(arm, infos, top, rnd), windows


@pytest.mark.parametrize("arm", ["freeze_top", "only_top", "only_random"])
def test_frozen_weights_stay_bit_identical_and_free_ones_learn(arm):
    model, _, free, windows = _setup(arm)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    losses = finetune(model, free, windows, steps=4, batch=3, lr=1e-2, seed=0)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    after = dict(model.named_parameters())
    for name, p in after.items():  # every weight outside the pool: untouched
        if name not in free:
            assert torch.equal(int_view(p.detach()), int_view(saved[name])), name
    changed = check_frozen(model, free, saved)
    assert 0 < changed <= sum(int(m.sum()) for m in free.values())
    assert {n: p.requires_grad for n, p in after.items()} == flags
    assert not model.training


def test_check_frozen_refuses_a_moved_frozen_weight():
    model, _, free, _ = _setup("only_top")
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    name = next(n for n, m in free.items() if not m.all())
    frozen_at = (~free[name]).flatten().nonzero()[0, 0]
    with torch.no_grad():
        dict(model.named_parameters())[name].view(-1)[frozen_at] += 1e-3
    with pytest.raises(CwaError, match=f"changed 1 frozen weights of {name}"):
        check_frozen(model, free, saved)


@pytest.mark.parametrize("arm", ["freeze_top", "only_top", "only_random"])
def test_masked_adamw_equals_plain_adamw_with_frozen_weights_written_back(arm):
    """The reference trains every pool tensor whole with plain AdamW and writes the frozen
    weights back after each step: the model is the same at every step, so each free weight must
    follow the same trajectory bit for bit (AdamW is elementwise), whether its tensor trains
    whole with masked gradients (freeze arms) or only its free entries train (only arms)."""
    model, _, free, windows = _setup(arm)
    reference = tiny_llama(seed=0)
    finetune(model, free, windows, steps=3, batch=4, lr=1e-2, seed=1)

    weights = dict(reference.named_parameters())
    for p in weights.values():
        p.requires_grad_(False)
    trained = [weights[n].requires_grad_(True) for n in free]
    original = {n: weights[n].detach().clone() for n in free}
    opt = torch.optim.AdamW(trained, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    reference.train()
    for step in batch_order(len(windows), 3, 4, seed=1):
        x = windows[step]
        reference(input_ids=x, labels=x, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for n, mask in free.items():
                weights[n][~mask] = original[n][~mask]
    got = dict(model.named_parameters())
    for n in free:
        assert torch.equal(int_view(got[n].detach()), int_view(weights[n].detach())), n


@pytest.mark.parametrize("arm", ["full", "freeze_top", "only_top", "only_random"])
def test_the_optimizer_holds_state_for_the_trainable_weights_only(arm, monkeypatch):
    """AdamW's moments (exp_avg, exp_avg_sq) cover every pool weight in the full and freeze
    arms, and only the k free weights in the only arms."""
    made = []

    class Recorded(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    model, infos, free, windows = _setup(arm)
    finetune(model, free, windows, steps=2, batch=3, lr=1e-2, seed=0)
    (opt,) = made
    sizes = {
        key: sum(s[key].numel() for s in opt.state.values()) for key in ("exp_avg", "exp_avg_sq")
    }
    pool_size, k = sum(i.numel for i in infos), sum(int(m.sum()) for m in free.values())
    expected = k if arm.startswith("only") else pool_size
    assert sizes == {"exp_avg": expected, "exp_avg_sq": expected}
    assert (k == 40) if arm.startswith("only") else (k >= pool_size - 40)


def test_seed_interval_is_students_t_written_out():
    x = np.array([1.0, 2.5, 0.5, 3.0])
    low, high, p = seed_interval(x)
    n, mean, sd = len(x), x.mean(), x.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    t = mean / (sd / math.sqrt(n))
    assert low == pytest.approx(mean - half) and high == pytest.approx(mean + half)
    assert p == pytest.approx(2 * stats.t.sf(abs(t), n - 1))
    assert all(math.isnan(v) for v in seed_interval(np.array([1.0])))
    assert all(math.isnan(v) for v in seed_interval(np.array([2.0, 2.0])))


def _runs():
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1, 2):
        for arm in ARMS:
            rows.append(
                {"seed": seed, "arm": arm, "gain": rng.normal(), "forgetting": rng.normal()}
            )
    return pl.DataFrame(rows)


def test_summary_means_arms_and_pairs_contrasts_by_seed():
    runs = _runs()
    table = summary(runs)
    assert table["arm"].to_list() == [*ARMS, "freeze_top", "only_top"]
    assert table["against"].to_list() == [""] * 5 + ["freeze_random", "only_random"]
    full = table.row(0, named=True)
    mine = runs.filter(pl.col("arm") == "full")["gain"].to_numpy()
    assert full["gain"] == pytest.approx(mine.mean()) and math.isnan(full["p_gain"])
    assert (full["gain_ci_low"], full["gain_ci_high"]) == pytest.approx(seed_interval(mine)[:2])
    contrast = table.row(6, named=True)
    a, b = (runs.filter(pl.col("arm") == x).sort("seed") for x in ("only_top", "only_random"))
    diff = a["forgetting"].to_numpy() - b["forgetting"].to_numpy()
    assert contrast["forgetting"] == pytest.approx(diff.mean())
    paired = stats.ttest_rel(a["forgetting"].to_numpy(), b["forgetting"].to_numpy())
    assert contrast["p_forgetting"] == pytest.approx(paired.pvalue)
    keys = metrics(table)
    assert keys["finetune_gain_only_top"] == pytest.approx(a["gain"].mean())
    assert keys["finetune_p_gain_only_top_vs_only_random"] == pytest.approx(table["p_gain"][6])
    assert "finetune_p_forgetting_freeze_top_vs_freeze_random" in keys and len(keys) == 12
