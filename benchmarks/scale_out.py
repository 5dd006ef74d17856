"""Data-parallel speed-up of a sensitivity pass: 1 process against N under `accelerate launch`.

    python benchmarks/scale_out.py [--processes 1 2 --metric grad_x_weight --windows 64]

Each run scores the same draw on a randomly initialised Llama of the built-in base shape; the
main process reports the scoring time between two barriers (model building and process start-up
excluded) and the launcher's wall time (included). CPU runs split the cores evenly between the
processes (accelerate's --num_cpu_threads_per_process), so on a 2-core machine 2 processes of 1
thread compete with 1 process of 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cwa.core.distributed import launch_command

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One process of the launched run: score, time between barriers, main writes the time."""
    import torch.distributed as dist

    from cwa.config.params import FamilyMember
    from cwa.core.distributed import init_world
    from cwa.models.anatomy import describe, pool
    from cwa.models.training import build_model
    from cwa.scoring.metrics import compute_scores, get_metric

    world = init_world("cpu")
    shape = FamilyMember(args.hidden, args.layers, max(1, args.hidden // 32), 4 * args.hidden)
    model = build_model(shape, 4096, args.seq_len, seed=0).eval()
    infos = pool(describe(model))
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 4096, (args.windows, args.seq_len), generator=gen)
    metric = get_metric(args.metric)
    times = []
    for _ in range(args.repeats):
        if world.size > 1:
            dist.barrier()
        start = time.perf_counter()
        compute_scores(model, infos, metric, windows, args.batch_size, world=world)
        if world.size > 1:
            dist.barrier()
        times.append(time.perf_counter() - start)
    if world.main:
        Path(args.out).write_text(
            json.dumps({"processes": world.size, "threads": torch.get_num_threads(), "s": times})
        )


def launch(n: int, args) -> dict:
    out = Path(tempfile.mkdtemp()) / "time.json"
    script = [
        __file__,
        "--worker",
        "--out",
        str(out),
        *[
            f"--{k.replace('_', '-')}={v}"
            for k, v in vars(args).items()
            if k not in ("worker", "out", "processes")
        ],
    ]
    # one process: no launcher, every core
    cmd = launch_command(n, script) if n > 1 else [sys.executable, *script]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CI": "true"}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    result = json.loads(out.read_text())
    return {**result, "wall_s": wall, "best_s": min(result["s"])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--metric", default="grad_x_weight")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    runs = {n: launch(n, args) for n in args.processes}
    base = runs[args.processes[0]]["best_s"]
    print(f"{args.metric}, {args.windows} windows x {args.seq_len} tokens, {os.cpu_count()} cores")
    print("| processes | threads each | scoring s (best of repeats) | speed-up | launch wall s |")
    print("|---|---|---|---|---|")
    for n, r in runs.items():
        print(
            f"| {n} | {r['threads']} | {r['best_s']:.3f} | {base / r['best_s']:.2f} | "
            f"{r['wall_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
