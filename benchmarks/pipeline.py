"""The budget of a newcomer's first run, measured as they would meet it.

    python benchmarks/pipeline.py [--keep DIR]

Clones this repository's HEAD into a fresh directory and times, separately: `make setup`, the
first `make repro` (the pipeline), a second `make repro` (nothing to do), and `cwa verify`
against the committed dvc.lock; then prints each stage's wall time from its manifest. The goal
(docs/benchmarks.md): first pipeline run <= 10 min on 2 CPU cores.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode not in ok:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def stage_seconds(clone: Path) -> list[tuple[str, float]]:
    rows = []
    for path in sorted((clone / "artifacts").rglob("*.json")):
        if path.name.endswith("manifest.json") or path.parent.name == "manifests":
            record = json.loads(path.read_text())
            if "wall_seconds" in record:
                rows.append((str(path.relative_to(clone / "artifacts")), record["wall_seconds"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="clone here and keep it (default: a temporary directory)")
    args = parser.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="cwa-fresh-"))
    clone = base / "cwa"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    results = {}
    for name, cmd in (
        ("make setup", ["make", "setup"]),
        ("first make repro", ["make", "repro"]),
        ("second make repro (no-op)", ["make", "repro"]),
        ("cwa verify", [".venv/bin/cwa", "verify"]),
    ):
        results[name], out = timed(cmd, clone, (0, 1) if name == "cwa verify" else (0,))
        print(f"{name:28} {results[name]:8.1f} s", flush=True)
        if name == "cwa verify":
            print(out.strip())
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout
    changed = [line for line in status.splitlines() if "manifest" not in line]
    print("git status beyond manifests:", changed or "clean")
    print("\nstage wall times (manifests):")
    rows = stage_seconds(clone)
    for path, seconds in rows:
        print(f"  {path:44} {seconds:7.1f} s")
    print(f"  {'sum of stages':44} {sum(s for _, s in rows):7.1f} s")


if __name__ == "__main__":
    main()
