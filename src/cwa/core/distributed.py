"""Data parallelism on accelerate / torch.distributed: who this process is, its share of the
calibration draw, and one all-reduce of the score accumulators at the end.

Any launcher that sets WORLD_SIZE works (`accelerate launch`, `torchrun`); the pipeline launches
itself through `accelerate launch` when `num_processes` > 1. Every process holds the whole model
(data parallel); process r takes the r-th contiguous slice of the calibration windows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cwa import CwaError
from cwa.core.devices import resolve_device


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes (1 process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    device: str | None = None  # the device this process must use (its own GPU), None: params'

    @property
    def main(self) -> bool:
        """Only the main process writes artifacts and shows progress."""
        return self.rank == 0

    def shard(self, windows: torch.Tensor) -> torch.Tensor:
        """This process's contiguous slice of the draw; slices differ in length by at most one."""
        if len(windows) < self.size:
            raise CwaError(
                f"{len(windows)} calibration windows cannot be split over {self.size} processes: "
                f"raise calib_samples or lower num_processes"
            )
        return windows.tensor_split(self.size)[self.rank]

    def reduce(self, tensors: Iterable[torch.Tensor], op: str = "sum") -> None:
        """All-reduces each accumulator in place (sum or max), in the caller's order."""
        if self.size == 1:
            return
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        for t in tensors:
            dist.all_reduce(t, op=ops[op])


SINGLE_PROCESS = World()


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: str = "auto") -> World:
    """The World of this process: joins the process group a launcher set up (gloo on CPU, NCCL on
    GPUs, through accelerate), or a single-process World when no launcher is present."""
    if not launched():
        return SINGLE_PROCESS
    from accelerate import PartialState

    state = PartialState(cpu=resolve_device(device).type == "cpu")
    return World(state.process_index, state.num_processes, str(state.device))


def relaunch(num_processes: int, device: str = "auto") -> None:
    """Runs this script again under `accelerate launch` with `num_processes` processes and exits
    with its status; returns at once when there is nothing to do (one process, or launched)."""
    if num_processes <= 1 or launched():
        return
    if resolve_device(device).type == "cuda" and num_processes > torch.cuda.device_count():
        raise CwaError(
            f"num_processes {num_processes} exceeds the {torch.cuda.device_count()} visible GPUs: "
            f"data parallelism runs one process per GPU"
        )
    cmd = launch_command(num_processes, [sys.argv[0], *sys.argv[1:]])
    sys.exit(subprocess.run(cmd, check=False).returncode)


def launch_command(num_processes: int, script_and_args: list[str]) -> list[str]:
    """`accelerate launch` of a script in `num_processes` processes on this machine."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # accelerate's multi-process launcher; on CPU the processes use gloo
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        str(max(1, (os.cpu_count() or 1) // num_processes)),  # CPU runs share the cores
        "--main_process_port",
        "0",  # a free port: several runs may share a machine
        *script_and_args,
    ]
