"""Hessian-vector products one group of transformer blocks at a time, each group recomputed.

This is how `layer_group` bounds activation memory. The model is cut into embedding -> groups
of blocks -> head. A forward-mode pass carries the hidden state entering each block, h, and its
derivative along the probe, ḣ (z on every scored tensor), keeping both only where a group
starts. The reverse pass goes top-down: the head gives the loss's gradient with respect to the
last hidden state, a, and its derivative ȧ; each group is then recomputed from its stored
(h, ḣ), and forward mode through its vector-Jacobian product with a (tangents: z on its
weights, ḣ, ȧ) gives the group's rows of Hz and the (a, ȧ) entering the group below. The
cross-group Hessian terms travel in ḣ and ȧ, so the products equal the all-at-once pass to
float rounding, while only one group's activations (and the boundary states) exist at a time.

Blocks are called as the model calls them: their extra arguments (masks, rotary embeddings)
are recorded from the model's own forward, once per batch, and must not depend on a scored
weight (checked); the first batch checks that the recomputed blocks reproduce the forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from cwa import CwaError
from cwa.core.hooks import grads_for
from cwa.evaluation.perplexity import token_nll
from cwa.models.anatomy import block_stack, group_ranges

Params = dict[str, torch.Tensor]


class _Reached(Exception):
    """Raised by a stand-in to stop the model's forward once the wanted hidden state is known."""

    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


class _StandIn(nn.Module):
    """Takes block `index`'s place in its ModuleList and hands the call to `fn`."""

    def __init__(self, index: int, fn: Callable):
        super().__init__()
        self.index = index
        self.fn = fn

    def forward(self, *args, **kwargs):
        if args:
            return self.fn(self.index, args[0], args[1:], kwargs)
        kwargs = dict(kwargs)
        return self.fn(self.index, kwargs.pop("hidden_states"), (), kwargs)


@contextmanager
def eager_experts(model: nn.Module) -> Iterator[None]:
    """Mixture-of-experts layers loop over their experts: the fused kernel (grouped_mm) has no
    forward-mode rule."""
    if not getattr(model, "_can_set_experts_implementation", lambda: False)():
        yield
        return
    before = model.get_experts_implementation()
    model.set_experts_implementation("eager")
    try:
        yield
    finally:
        model.set_experts_implementation(before)


@contextmanager
def standing_in(blocks: nn.ModuleList, fn: Callable) -> Iterator[None]:
    """Each block replaced by a stand-in calling fn(index, hidden, args, kwargs); restored after."""
    originals = list(blocks)
    try:
        for i in range(len(blocks)):
            blocks[i] = _StandIn(i, fn)
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


def _padding_rows(model: nn.Module, outside: Params) -> dict[str, int]:
    """Scored embedding matrices with a padding row: name -> padding_idx."""
    by_tensor = {p: n for n, p in model.named_parameters() if n in outside}
    return {
        by_tensor[m.weight]: m.padding_idx
        for m in model.modules()
        if isinstance(m, nn.Embedding) and m.padding_idx is not None and m.weight in by_tensor
    }


class Segments:
    """The model cut at block boundaries for one batch: Hz one group of blocks at a time.

    targets: the scored tensors (detached), by parameter name; layer_group: blocks per group.
    """

    def __init__(
        self, model: nn.Module, targets: Params, batch: torch.Tensor, layer_group: int, verify=False
    ):
        self.model = model
        self.prefix, self.blocks = block_stack(model)
        self.batch = batch.to(next(model.parameters()).device)
        self.groups = group_ranges(len(self.blocks), layer_group)
        self.outside = {k: v for k, v in targets.items() if not k.startswith(self.prefix)}
        self.inside = [
            {k: v for k, v in targets.items() if self._block_of(k) in group}
            for group in self.groups
        ]
        self.padding = _padding_rows(model, self.outside)
        self.calls: list[tuple[tuple, dict]] = []
        self.extra: tuple | None = None  # blocks return (hidden, *extra) when not None
        self._record()
        if verify:
            self._verify()

    def _block_of(self, name: str) -> int:
        if not name.startswith(self.prefix):
            return -1
        return int(name[len(self.prefix) :].split(".", 1)[0])

    def _shaped(self, hidden: torch.Tensor):
        """`hidden` as a block's output."""
        return hidden if self.extra is None else (hidden, *self.extra)

    def _record(self) -> None:
        """The model's own call of every block (its arguments besides the hidden state), with
        the blocks skipped; refuses arguments that carry a scored weight's gradient."""
        first = self.blocks[0]
        last = len(self.blocks) - 1

        def record(i, hidden, args, kwargs):
            if i == 0:
                with torch.no_grad():
                    out = first(hidden, *args, **kwargs)
                self.extra = tuple(out[1:]) if isinstance(out, tuple) else None
            self.calls.append((args, kwargs))
            bad = [t for t in tree_leaves((args, kwargs)) if torch.is_tensor(t) and t.requires_grad]
            if bad:
                raise CwaError(
                    f"layer_group: the blocks of {type(self.model).__name__} take inputs computed "
                    f"from scored weights, so they cannot be recomputed one group at a time; use "
                    f"layer_group: 0"
                )
            if i == last:
                raise _Reached(hidden)
            return self._shaped(hidden)

        leaves = {k: v.detach().requires_grad_() for k, v in self.outside.items()}
        # no weight of the model requires grad, so only what depends on `leaves` does
        with grads_for(self.model, {}), torch.enable_grad():
            self._forward(record, leaves)

    def _forward(self, fn: Callable, params: Params | None = None):
        """The model's forward with stand-ins; the hidden state a stand-in reached, or the loss."""
        from torch.func import functional_call

        with standing_in(self.blocks, fn):
            try:
                out = functional_call(
                    self.model, params or {}, (), {"input_ids": self.batch, "use_cache": False}
                )
            except _Reached as stop:
                return stop.hidden
        return token_nll(out.logits, self.batch).sum()

    def _verify(self) -> None:
        """The chained groups must give the hidden state the model's forward gives its head."""
        seen = []
        hook = self.blocks[-1].register_forward_hook(
            lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o)
        )
        try:
            with torch.no_grad():
                self.model(input_ids=self.batch, use_cache=False)
                h = self.embed(self.outside)
                for g in range(len(self.groups)):
                    h = self.run(g, self.inside[g], h)
        finally:
            hook.remove()
        # same kernels, same order: equal up to nondeterministic reductions (atomics on GPUs);
        # a missed step between blocks differs by O(1)
        tolerance = 1e-3 if h.dtype == torch.float32 else 3e-2
        diff = float((h.float() - seen[0].float()).abs().max())
        if diff > tolerance * float(seen[0].float().abs().max()):
            raise CwaError(
                f"layer_group: recomputing the blocks of {type(self.model).__name__} a group at a "
                f"time does not reproduce its forward pass (max difference {diff:.3g}); use "
                f"layer_group: 0"
            )

    def embed(self, outside: Params) -> torch.Tensor:
        """(B, T, H) the hidden state entering block 0."""

        def stop(i, hidden, args, kwargs):
            raise _Reached(hidden)

        return self._forward(stop, outside)

    def run(self, g: int, params: Params, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) group g's output for its input `hidden`, its scored weights from `params`."""
        from torch.func import functional_call

        for i in self.groups[g]:
            own = f"{self.prefix}{i}."
            local = {k[len(own) :]: v for k, v in params.items() if k.startswith(own)}
            args, kwargs = self.calls[i]
            out = functional_call(self.blocks[i], local, (hidden, *args), kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def head_loss(self, outside: Params, last: torch.Tensor) -> torch.Tensor:
        """Summed NLL of the batch when the last block outputs `last`."""
        final = len(self.blocks) - 1
        return self._forward(
            lambda i, hidden, args, kwargs: self._shaped(last if i == final else hidden), outside
        )

    def _lookup_tangents(self, z_out: Params) -> Params:
        """z for the embedding lookups: zero on padding rows, which backward treats as constant
        (nn.Embedding's gradient skips padding_idx), as the all-at-once pass does."""
        out = dict(z_out)
        for name, row in self.padding.items():
            out[name] = out[name].clone()
            out[name][row] = 0
        return out

    def products(self, z: Params, sink: Callable[[Params], None]) -> None:
        """Hz (H: Hessian of the batch's summed NLL over the targets) in parts: one per group
        from the top, and for the tensors outside the blocks a head and an embedding part
        (a tied tensor appears in both: its product is their sum), each handed to `sink`."""
        # no weight requires grad: no graph forms outside the function transforms, which need
        # grad mode on (their forward-mode rules for backward ops live there)
        with grads_for(self.model, {}), eager_experts(self.model), torch.enable_grad():
            self._products(z, sink)

    def _products(self, z: Params, sink: Callable[[Params], None]) -> None:
        from torch.func import grad, jvp, vjp

        z_out = {k: z[k] for k in self.outside}
        z_lookup = self._lookup_tangents(z_out)
        z_in = [{k: z[k] for k in group} for group in self.inside]
        if z_out:
            h, h_dot = jvp(self.embed, (self.outside,), (z_lookup,))
        else:
            h, h_dot = self.embed({}), None
        states = []  # (h, ḣ) entering each group
        for g in range(len(self.groups)):
            states.append((h, h_dot))
            if z_in[g] or h_dot is not None:
                tangent = h_dot if h_dot is not None else torch.zeros_like(h)
                h, h_dot = jvp(
                    lambda p, x, g=g: self.run(g, p, x), (self.inside[g], h), (z_in[g], tangent)
                )
            else:
                h = self.run(g, self.inside[g], h)
        h_dot = h_dot if h_dot is not None else torch.zeros_like(h)
        head_grads = grad(self.head_loss, argnums=(0, 1))
        (_, a), (hz, a_dot) = jvp(head_grads, (self.outside, h), (z_out, h_dot))
        if hz:
            sink(hz)
        lowest = 0 if z_out else min((g for g, zg in enumerate(z_in) if zg), default=0)
        for g in reversed(range(lowest, len(self.groups))):
            h_in, h_in_dot = states.pop()
            if h_in_dot is None:
                h_in_dot = torch.zeros_like(h_in)

            def pull(p, x, adjoint, g=g):
                _, back = vjp(lambda p_, x_: self.run(g, p_, x_), p, x)
                return back(adjoint)

            (_, a), (hz, a_dot) = jvp(pull, (self.inside[g], h_in, a), (z_in[g], h_in_dot, a_dot))
            if hz:
                sink(hz)
        if z_out:

            def pull_embed(p, adjoint):
                _, back = vjp(self.embed, p)
                return back(adjoint)[0]

            _, hz = jvp(pull_embed, (self.outside, a), (z_lookup, a_dot))
            sink(hz)
