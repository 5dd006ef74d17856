"""Scores every data-dependent metric on a tiny Llama under whatever launcher started it.

    accelerate launch --multi_gpu --num_processes 2 tests/distributed_worker.py OUT_FILE

Run by tests/test_distributed.py; the main process writes {metric/param: scores} to OUT_FILE.
"""

import sys

import torch
from safetensors.torch import save_file

from cwa.core.distributed import init_world
from cwa.models.anatomy import describe, pool
from cwa.scoring.metrics import compute_scores, get_metric
from tests.conftest import VOCAB, tiny_llama

METRICS = ("grad_x_weight", "grad_squared", "hutchinson_diag", "obd", "wanda", "super_weight")


def all_scores(world=None) -> dict[str, torch.Tensor]:
    model = tiny_llama()
    infos = pool(describe(model))
    windows = torch.randint(0, VOCAB, (7, 12), generator=torch.Generator().manual_seed(3))
    out = {}
    for name in METRICS:
        kwargs = {"world": world} if world else {}
        scores = compute_scores(model, infos, get_metric(name), windows, 2, 3, 0, **kwargs)
        out |= {f"{name}/{param}": s for param, s in scores.items()}
    return out


if __name__ == "__main__":
    world = init_world("cpu")
    scores = all_scores(world)
    if world.main:
        save_file(scores, sys.argv[1], metadata={"processes": str(world.size)})
