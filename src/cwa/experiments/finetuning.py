"""Fine-tuning with the critical weights frozen, or with only them trained: does the ranking
tell which weights a fine-tuning run should leave alone, or which few it should change?

Five arms differ only in which pool weights may change (every parameter outside the pool stays
frozen in all of them); the same seed gives every arm the same windows in the same order:
  full           every pool weight
  freeze_top     all but the top-k critical weights (protection)
  freeze_random  all but a random set with the top set's count in every tensor
  only_top       only the top-k ("sparse fine-tuning")
  only_random    only the random set
A frozen weight stays exactly as it was: its gradient is replaced by zero before the optimizer
sees it, and AdamW without weight decay moves a weight whose gradients were all zero by exactly
zero (its moments stay 0, its update 0 / (0 + eps)); `check_frozen` proves it bit for bit after
every run. No gradient clipping and a constant learning rate: a clip by the global norm would
rescale each arm's steps by a norm that depends on which weights are free.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from cwa import CwaError
from cwa.config.params import check as params_check
from cwa.config.params import check_choice, fail
from cwa.core.hooks import grads_for
from cwa.core.progress import progress
from cwa.experiments.perturbations import int_view
from cwa.models.anatomy import ParamInfo
from cwa.selection.ranking import Selected

ARMS = ("full", "freeze_top", "freeze_random", "only_top", "only_random")
# (arm, against): each pair differs only in whether its set is the top set or the random one
CONTRASTS = (("freeze_top", "freeze_random"), ("only_top", "only_random"))
MEASURES = ("gain", "forgetting")


@params_check
def _valid_finetune(p) -> None:
    if not 0 < p.finetune_lr < 1:  # also refuses NaN
        fail("finetune_lr", f"must be a learning rate in (0, 1), got {p.finetune_lr}")
    arms = list(p.finetune_arms)
    if not arms or len(set(arms)) != len(arms):
        fail("finetune_arms", f"must be distinct arms, valid: {', '.join(ARMS)}; got {arms}")
    for arm in arms:
        check_choice("finetune_arms", arm, ARMS)
    seeds = list(p.finetune_seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        fail("finetune_seeds", f"must be a non-empty list of distinct integers >= 0, got {seeds}")


def split_windows(windows: torch.Tensor, held_out: int, batch: int, spec: str):
    """(training windows, held-out windows): `held_out` windows spread evenly through the text
    (every ⌊n / held_out⌋-th, from the first), the others trained on."""
    n = len(windows)
    if n < held_out + batch:
        raise CwaError(
            f"`finetune_data` {spec} gives {n} windows; the finetune stage holds out "
            f"`eval_samples` ({held_out}) and trains on batches of `finetune_batch` ({batch}) "
            f"from the rest: give more text, or lower eval_samples, finetune_batch or seq_len"
        )
    held = torch.arange(held_out) * (n // held_out)
    rest = torch.ones(n, dtype=torch.bool)
    rest[held] = False
    return windows[rest], windows[held]


def trainable(arm: str, infos: list[ParamInfo], top: Selected, random: Selected):
    """{pool tensor: bool mask of the weights `arm` lets change}."""
    chosen = {"freeze_top": top, "only_top": top, "freeze_random": random, "only_random": random}
    sel = chosen.get(arm)
    out = {}
    for t, info in enumerate(infos):
        marked = torch.zeros(info.numel, dtype=torch.bool)
        if sel is not None:
            marked[torch.from_numpy(sel.flat[sel.tensor == t])] = True
        out[info.name] = (marked if arm.startswith("only") else ~marked).view(info.shape)
    return out


def batch_order(n: int, steps: int, batch: int, seed: int) -> torch.Tensor:
    """Window indices of every step, (steps, batch): seeded permutations of the n windows, one
    after another (a new one when an epoch ends)."""
    gen = torch.Generator().manual_seed(seed)
    epochs = -(-steps * batch // n)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])
    return order[: steps * batch].view(steps, batch)


def finetune(model, free: dict[str, torch.Tensor], windows, steps, batch, lr, seed, desc=None):
    """Trains the weights `free` marks on `windows` with AdamW; every other parameter stays
    frozen. Returns each step's loss.

    A tensor with at least half its weights free trains whole, the gradients of its frozen
    weights zeroed; one with fewer trains only its free weights, gathered into a vector of their
    own (FreeEntries), so AdamW holds state for them alone: O(k) for the sparse arms, not
    O(pool). AdamW is elementwise, so both ways give the same weights bit for bit."""
    weights = dict(model.named_parameters())
    plan = training_plan(free)
    trained = {name: weights[name] for name in plan}
    gathered = {
        name: FreeEntries(trained[name], free[name])
        for name, (whole, _) in plan.items()
        if not whole
    }
    whole = [w for name, w in trained.items() if name not in gathered]
    state = whole + [entries.values for entries in gathered.values()]
    opt = torch.optim.AdamW(state, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    device = next(model.parameters()).device
    losses, hooks = [], []
    model.train()  # no dropout in the built-in configs; train mode as in training
    try:
        with grads_for(model, trained):
            for name, w in trained.items():
                if name in gathered:
                    hooks.append(w.register_post_accumulate_grad_hook(gathered[name].gather))
                elif not free[name].all():
                    hooks.append(w.register_hook(_masking(free[name].to(w.device))))
            order = batch_order(len(windows), steps, batch, seed)
            for step in progress(order, desc=desc, leave=False):
                x = windows[step].to(device)
                loss = model(input_ids=x, labels=x, use_cache=False).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                for entries in gathered.values():
                    entries.write_back()
                losses.append(loss.item())
    finally:
        model.eval()
        for h in hooks:
            h.remove()
    return losses


def training_plan(free: dict[str, torch.Tensor]) -> dict[str, tuple[bool, int]]:
    """{tensor with a free weight: (trained whole, free weights)}: a tensor trains whole when at
    least half its weights are free (its frozen weights' gradients zeroed), otherwise by its
    free entries alone (FreeEntries: AdamW state for those only)."""
    counts = {name: int(mask.sum()) for name, mask in free.items()}
    return {
        name: (2 * count >= free[name].numel(), count) for name, count in counts.items() if count
    }


class FreeEntries:
    """The free weights of one tensor as a trainable vector of their own: once backward has
    accumulated the tensor's gradient, the free entries' part is gathered into the vector's
    and the tensor's dropped (one tensor's gradient at a time); after each step the vector is
    written back into the tensor."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor):
        self.weight = weight
        self.index = torch.nonzero(mask.reshape(-1)).flatten().to(weight.device)
        self.values = torch.nn.Parameter(weight.detach().reshape(-1)[self.index].clone())

    def gather(self, weight: torch.Tensor) -> None:
        self.values.grad = weight.grad.reshape(-1)[self.index]
        weight.grad = None

    def write_back(self) -> None:
        with torch.no_grad():
            self.weight.view(-1)[self.index] = self.values


def _masking(mask: torch.Tensor):
    return lambda grad: torch.where(
        mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)
    )


def check_frozen(model, free: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> int:
    """Proves every weight `free` does not mark bit-identical to `saved`; returns how many of
    the free ones changed."""
    weights, changed = dict(model.named_parameters()), 0
    for name, mask in free.items():
        moved = (int_view(weights[name].detach().cpu()) != int_view(saved[name])).view(mask.shape)
        if (moved & ~mask).any():
            raise CwaError(
                f"fine-tuning changed {int((moved & ~mask).sum())} frozen weights of {name}"
            )
        changed += int(moved.sum())
    return changed


def summary(runs: pl.DataFrame) -> pl.DataFrame:
    """Each arm's mean gain and forgetting over fine-tuning seeds with a t-interval, then each
    contrast's mean paired difference over seeds with its t-interval and paired t-test p."""
    rows = []
    for arm in ARMS:
        mine = runs.filter(pl.col("arm") == arm).sort("seed")
        if len(mine):
            rows.append({"arm": arm, "against": "", "seeds": len(mine)} | _cells(mine, None))
    for arm, against in CONTRASTS:
        a, b = (runs.filter(pl.col("arm") == x).sort("seed") for x in (arm, against))
        if len(a) and a["seed"].to_list() == b["seed"].to_list():
            rows.append({"arm": arm, "against": against, "seeds": len(a)} | _cells(a, b))
    return pl.DataFrame(rows, schema_overrides={"seeds": pl.Int64})


def _cells(a: pl.DataFrame, b: pl.DataFrame | None) -> dict:
    out = {}
    for m in MEASURES:
        x = a[m].to_numpy()
        diff = x if b is None else x - b[m].to_numpy()
        low, high, p = seed_interval(diff)
        out |= {m: float(diff.mean()), f"{m}_ci_low": low, f"{m}_ci_high": high}
        out[f"p_{m}"] = p if b is not None else float("nan")
    return out


def seed_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(CI low, CI high, two-sided p against 0) of the mean of per-seed values by Student's t;
    NaN with fewer than 2 seeds, or when every value is equal."""
    from scipy import stats

    if len(values) < 2 or np.ptp(values) == 0:
        return float("nan"), float("nan"), float("nan")
    test = stats.ttest_1samp(values, 0.0)
    ci = test.confidence_interval(level)
    return float(ci.low), float(ci.high), float(test.pvalue)


def metrics(summary: pl.DataFrame) -> dict:
    """metrics.json keys: each arm's mean gain and forgetting, and the p-value of each contrast's
    headline measure (protection: forgetting; sparse fine-tuning: gain)."""
    out = {}
    for row in summary.filter(pl.col("against") == "").iter_rows(named=True):
        out |= {f"finetune_{m}_{row['arm']}": row[m] for m in MEASURES}
    headline = {"freeze_top": "forgetting", "only_top": "gain"}
    for row in summary.filter(pl.col("against") != "").iter_rows(named=True):
        m = headline[row["arm"]]
        out[f"finetune_p_{m}_{row['arm']}_vs_{row['against']}"] = row[f"p_{m}"]
    return out
