"""What every pipeline stage shares: argument parsing, params, clean errors and the run manifest."""

from __future__ import annotations

import argparse
import logging
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata

import torch

from cwa import CwaError
from cwa.io import write_json
from cwa.params import Params, as_dict, load_params

_PACKAGES = (
    "cwa",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "dvc",
    "polars",
    "pyarrow",
    "numpy",
    "scipy",
)


def _git() -> dict:
    def out(*cmd):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    status = out("git", "status", "--porcelain", "--untracked-files=no")
    return {"commit": out("git", "rev-parse", "HEAD"), "dirty": bool(status)}


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def manifest(stage: str, params: Params, seconds: float, extra: dict) -> dict:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "stage": stage,
        "params": as_dict(params),
        "versions": _versions(),
        "git": _git(),
        "wall_seconds": round(seconds, 3),
        "peak_rss_mib": round(peak, 1),
        "peak_cuda_mib": cuda,
        "argv": sys.argv[1:],
        **extra,
    }


def stage_main(
    doc: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, Params], dict | None],
) -> None:
    """Parses args, loads params, runs the stage; a CwaError exits 2 with one clear line."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--manifest", help="where to write this run's manifest (JSON)")
    add_args(parser)
    args = parser.parse_args()
    stage = doc.strip().split(":", 1)[0]
    logging.basicConfig(level=logging.INFO, format=f"[{stage}] %(message)s")
    started = time.perf_counter()
    try:
        params = load_params(args.params)
        extra = run(args, params) or {}
    except CwaError as err:
        print(f"cwa {stage}: error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.manifest:
        write_json(manifest(stage, params, time.perf_counter() - started, extra), args.manifest)
