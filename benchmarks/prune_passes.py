"""The cost of layer-wise pruning (wanda, sparsegpt) against depth: one pass over the blocks
(cwa) against a forward from the model's input per block (the traversal cwa used before,
kept in tests/test_architectures.py as the reference that the masks are checked against).

    python benchmarks/prune_passes.py [--hidden 256 --depths 2,4,8,16,32 --windows 16]

On randomly initialised Llamas of one width and growing depth, CPU, the same calibration
windows: the best of `--repeats` times of each traversal, divided by the time of one inference
forward of the whole model over the same windows. One pass costs about two block passes per
block (statistics from the unpruned block, outputs from the pruned one, as the reference
implementations run): its ratio should stay near 2 at every depth, while the old one grows
like depth/2. The two traversals' masks are compared too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, benchmarks/


def build(hidden: int, layers: int, vocab: int, seq_len: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        intermediate_size=hidden * 8 // 3,
        max_position_embeddings=seq_len,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def depth(args, layers: int, windows) -> list[str]:
    """The table's rows of one depth: forward, then each method by each traversal."""
    import torch

    from benchmarks.speed import best_of
    from cwa.experiments.pruning import Sparsity, prune_by_activations
    from cwa.models.anatomy import describe, pool
    from tests.test_architectures import prune_block_by_block

    model = build(args.hidden, layers, args.vocab, args.seq_len)
    infos = pool(describe(model))
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    size = sum(p.numel() for p in model.parameters())

    def forward():
        with torch.inference_mode():
            for batch in windows.split(args.batch_size):
                model(input_ids=batch, use_cache=False)

    def prune(traversal, method):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(dense[n])
        return traversal(model, infos, method, Sparsity(0.5), windows, args.batch_size)

    base, rows = best_of(forward, args.repeats), []
    for method in args.methods.split(","):
        one = best_of(lambda m=method: prune(prune_by_activations, m), args.repeats)
        old = best_of(lambda m=method: prune(prune_block_by_block, m), args.repeats)
        got, want = prune(prune_by_activations, method), prune(prune_block_by_block, method)
        same = all(torch.equal(got[n], want[n]) for n in want)
        rows.append(
            f"| {layers} | {size / 1e6:.1f}M | {base:.3f} | {method} | {one:.3f} | "
            f"{one / base:.2f} | {old:.3f} | {old / base:.2f} | {same} |"
        )
    return rows


def main():
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--depths", default="2,4,8,16,32")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--threads", type=int, default=2, help="1 when other work shares the cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    windows = torch.randint(0, args.vocab, (args.windows, args.seq_len))
    print(
        "| layers | parameters | forward (s) | method | one pass (s) | ÷ forward | "
        "block by block (s) | ÷ forward | same masks |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for layers in (int(d) for d in args.depths.split(",")):
        for row in depth(args, layers, windows):
            print(row, flush=True)


if __name__ == "__main__":
    main()
