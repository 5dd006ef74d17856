"""Recheck mutmut's survivors and timeouts, each in a fresh process (`make mutation` runs it
after `mutmut run`).

mutmut 3 runs every mutant in a child forked from one warm process. After torch's and polars'
thread pools exist, a forked child can wait forever on a pool thread that fork did not copy: the
mutant is reported as a timeout, or its test session ends early and it is reported as surviving
(seen here for mutants that crash on their first line). Here every mutant not already killed
runs its own tests (mutmut's map from function to tests) in a new interpreter:
python tests/recheck_mutants.py [workers]. Prints one line per mutant and the totals."""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

MUTANTS = "mutants"


def unkilled() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = (line.strip().split(": ") for line in out.splitlines() if ": " in line)
    return [name for name, status in rows if status != "killed"]


def recheck(name: str, tests: dict[str, list[str]]) -> str:
    covering = sorted(tests.get(re.sub(r"__mutmut_\d+$", "", name), []))
    if not covering:
        return "no tests"
    env = dict(os.environ, MUTANT_UNDER_TEST=name, PYTHONPATH="src:.", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x"]
    try:
        run = subprocess.run(
            [*command, "-m", "not slow", *covering],
            cwd=MUTANTS,
            env=env,
            capture_output=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    return {0: "survived", 1: "killed"}.get(run.returncode, f"error (exit {run.returncode})")


def main(workers: int) -> None:
    with open(os.path.join(MUTANTS, "mutmut-stats.json")) as f:
        tests = json.load(f)["tests_by_mangled_function_name"]
    names = unkilled()
    totals: dict[str, int] = {}
    with ThreadPoolExecutor(workers) as pool:
        for name, status in zip(names, pool.map(lambda n: recheck(n, tests), names), strict=True):
            print(f"{name}: {status}", flush=True)
            totals[status] = totals.get(status, 0) + 1
    print(f"rechecked {len(names)}: {totals}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
