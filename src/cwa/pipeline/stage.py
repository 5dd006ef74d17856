"""What every pipeline stage shares: argument parsing, params, clean errors and the run manifest."""

from __future__ import annotations

import argparse
import errno
import hashlib
import logging
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from cwa import CwaError
from cwa.config.params import Params, StageParams, as_dict, load_params
from cwa.core.io import write_json

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


def _lock_hash() -> str | None:
    """`sha256sum requirements.lock`: the lock the environment was installed from (the project
    root is the working directory of every stage); None outside a project that has one."""
    lock = Path("requirements.lock")
    return hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None


def content_hash(path: Path, budget: int = 1 << 30) -> str | None:
    """SHA-256 over a file, or a directory's relative paths and file contents; None past `budget`
    bytes (a multi-GB checkpoint is identified by its config and file sizes instead)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if sum(f.stat().st_size for f in files) > budget:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _paths(args: argparse.Namespace) -> dict:
    """Hashes of every path argument (inputs and outputs): what exactly this run read and wrote."""
    out = {}
    for key, value in sorted(vars(args).items()):
        if key in ("manifest",) or not isinstance(value, str) or not Path(value).exists():
            continue
        out[key] = {"path": value, "sha256": content_hash(Path(value))}
    return out


def _model_source(spec: str | None) -> dict:
    if spec is None:  # the stage loads no model under study
        return {}
    path = Path(spec).expanduser()
    if spec.startswith("builtin:") or not path.is_dir():
        return {"spec": spec}
    sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    config = path / "config.json"
    return {
        "spec": spec,
        "files": sizes,
        "config_sha256": content_hash(config) if config.exists() else None,
    }


def manifest(
    stage: str,
    params: Params | StageParams,
    seconds: float,
    extra: dict,
    args: argparse.Namespace | None = None,
) -> dict:
    """The run record: what ran where, on what, with which versions, for how long."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    declared = as_dict(params)
    device, name, threads, cuda = "cpu", platform.processor(), None, None
    torch = sys.modules.get("torch")  # a stage that never imported torch ran on the CPU alone
    if torch is not None:
        from cwa.core.devices import resolve_device

        resolved = resolve_device(declared.get("device", "cpu"))  # no `device` param: the CPU
        device, threads = str(resolved), torch.get_num_threads()
        if resolved.type == "cuda":
            name = torch.cuda.get_device_name(resolved)
            cuda = torch.cuda.max_memory_allocated() / 2**20
    return {
        "stage": stage,
        "device": device,
        "device_name": name,
        "dtype": declared.get("dtype"),
        "threads": threads,
        "model": _model_source(declared.get("model")),
        "paths": _paths(args) if args else {},
        "params": declared,
        "versions": _versions(),
        "lock_sha256": _lock_hash(),
        "git": _git(),
        "wall_seconds": round(seconds, 3),
        "peak_rss_mib": round(peak, 1),
        "peak_cuda_mib": cuda,
        "argv": sys.argv[1:],
        **extra,
    }


def setup_logging(stage: str, log_dir: Path) -> None:
    """Messages and progress lines to stderr and to `log_dir/<stage>.log` (appended, timestamped),
    so a run without a terminal can be followed with `tail -f`; on a terminal the progress bar
    replaces the lines on stderr (cwa.core.progress)."""
    from cwa.core.progress import log as progress_log

    to_stderr = logging.StreamHandler()
    to_stderr.setFormatter(logging.Formatter(f"[{stage}] %(message)s"))
    to_stderr.addFilter(lambda record: record.name != traceback_log.name)
    if sys.stderr.isatty():
        to_stderr.addFilter(lambda record: record.name != progress_log.name)
    handlers: list[logging.Handler] = [to_stderr]
    if int(os.environ.get("RANK", "0")) == 0:
        log_dir.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_dir / f"{stage}.log")
        to_file.setFormatter(logging.Formatter(f"%(asctime)s [{stage}] %(message)s"))
        handlers.append(to_file)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)


traceback_log = logging.getLogger("cwa.traceback")  # the log file only, never the terminal

# Failures with a known remedy: the exception class's name and what to do (by name, so that
# a stage that never needs torch does not import it to name torch.OutOfMemoryError).
_REMEDIES = {
    "OutOfMemoryError": "lower `batch_size` (or `seq_len`; `layer_group` for Hutchinson)",
    "MemoryError": "lower `batch_size` (or `seq_len`), or free memory on this machine",
}


def failure_line(stage: str, err: BaseException, log_file: Path) -> str:
    """One line for an unexpected exception (a bug, out of memory, a full disk): the stage, what
    it was doing, the error and the innermost project frame; the traceback goes to the log."""
    from cwa.core.progress import doing

    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "/cwa/" in f.filename or "/stages/" in f.filename] or frames
    where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
    message = " ".join(str(err).split())[:300] or "(no message)"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        message += "; free disk space"
    kinds = (kind.__name__ for kind in type(err).__mro__)
    remedy = next((f"; {_REMEDIES[kind]}" for kind in kinds if kind in _REMEDIES), "")
    return (
        f"cwa {stage}: failed {doing()}: {type(err).__name__}: {message}{where}{remedy}. "
        f"Full error in {log_file}; the previous outputs are in the DVC cache "
        f"(`dvc checkout {stage}` puts them back)"
    )


@dataclass(frozen=True)
class Stage:
    """What a stage script declares, and all dvc.yaml says of it (cwa.pipeline.dvc_yaml generates
    the file and the stage table of docs/pipeline.md from these): the params it reads, what it
    does, the paths it reads and writes by the name of their command-line flag (`eval_text` is
    `--eval-text`), and how DVC runs it.

    `writes` are cached outputs; `records` are outputs DVC keeps out of its cache (plot side
    files, the report folder) and `metrics` metrics files. With `foreach` ("family" or "models")
    DVC runs one stage per member, `${key}` in a path is the member's name and `key_flag` the
    flag that receives it. `always_changed`: DVC cannot see what it reads (files a param names).
    """

    name: str
    params: tuple[str, ...]
    does: str  # for users: the row of the stage table in docs/pipeline.md
    reads: dict[str, str] = field(default_factory=dict)
    writes: dict[str, str] = field(default_factory=dict)
    records: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    manifest: str | None = None
    foreach: str | None = None
    key_flag: str | None = None
    always_changed: bool = False

    def paths(self) -> dict[str, str]:
        """Every flag and its path, in command-line order."""
        return {**self.reads, **self.writes, **self.records, **self.metrics}

    def parser(self, doc: str) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        parser.add_argument("--params", default="params.yaml", help="params file")
        parser.add_argument("--manifest", help="where to write this run's manifest (JSON)")
        if self.key_flag:
            parser.add_argument(f"--{flag(self.key_flag)}", required=True, help=self.foreach)
        for name, path in self.paths().items():
            parser.add_argument(f"--{flag(name)}", required=True, help=f"(dvc.yaml: {path})")
        return parser


def flag(name: str) -> str:
    """The command-line flag of a declared name: `eval_text` is `--eval-text`."""
    return name.replace("_", "-")


def stage_main(
    doc: str,
    stage: Stage,
    run: Callable[[argparse.Namespace, StageParams], dict | None],
) -> None:
    """Parses the declared flags, loads params, runs the stage on the keys it declared; a
    CwaError exits 2 with one clear line, any other exception 1 with one line (`failure_line`)."""
    args = stage.parser(doc).parse_args()
    name = stage.name
    log_dir = Path(os.environ.get("CWA_LOG_DIR", "logs"))
    setup_logging(name, log_dir)
    log = logging.getLogger(f"cwa.{name}")
    log.info("started: %s", " ".join(sys.argv[1:]))
    started = time.perf_counter()
    try:
        params = StageParams(load_params(args.params, strict=False), stage.params)
        extra = run(args, params) or {}
    except CwaError as err:
        print(f"cwa {name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # an outright bug, out of memory, a full disk: see failure_line
        traceback_log.error("%s failed", name, exc_info=err)
        print(failure_line(name, err, log_dir / f"{name}.log"), file=sys.stderr)
        sys.exit(1)
    seconds = time.perf_counter() - started
    if args.manifest and int(os.environ.get("RANK", "0")) == 0:  # data parallel: main writes
        write_json(manifest(name, params, seconds, extra, args), args.manifest)
    log.info("done in %.1f s", seconds)
