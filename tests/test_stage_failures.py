"""A stage that fails unexpectedly (a bug, out of memory, a full disk) ends with one line naming
the stage, where it was and its log; the traceback goes to the log file, and the previous output
stays in place."""

import os
import subprocess
import sys

import pytest

SCRIPT = '''"""demo: a stage that fails inside its loop."""
import errno
from pathlib import Path

import torch

from cwa.core.io import atomic_write
from cwa.core.progress import progress
from cwa.pipeline.stage import Stage, stage_main

FAILURES = {{
    "bug": lambda: {{}}["missing key"],
    "oom": lambda: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory. Tried")),
    "disk": lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
}}


STAGE = Stage("demo", (), "fails on purpose", writes={{"out": "out.txt"}})


def run(args, params):
    if "{failure}" == "early":
        raise RuntimeError("boom")

    def write(tmp):
        for i in progress(range(5), desc="experiments"):
            tmp.write_text(str(i))
            if i == 3:
                FAILURES["{failure}"]()

    atomic_write(args.out, write)


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
'''


def run_stage(tmp_path, failure: str, params: str = "") -> subprocess.CompletedProcess:
    script = tmp_path / "stages" / "demo.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(SCRIPT.format(failure=failure))
    (tmp_path / "params.yaml").write_text(f"model: org/any-hub-id\n{params}")
    env = {k: v for k, v in os.environ.items() if k != "CWA_LOG_DIR"} | {"CI": "true"}
    return subprocess.run(
        [sys.executable, str(script), "--out", "out.txt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        ("bug", "KeyError: 'missing key' at demo.py:"),
        ("oom", "OutOfMemoryError: CUDA out of memory. Tried at demo.py:"),
        ("disk", "OSError: [Errno 28] No space left on device; free disk space at demo.py:"),
    ],
)
def test_one_line_names_stage_place_and_log_and_keeps_the_previous_output(tmp_path, failure, says):
    (tmp_path / "out.txt").write_text("previous")
    done = run_stage(tmp_path, failure)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if not line.startswith("[demo]")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    line = errors[0]
    assert line.startswith("cwa demo: failed during experiments (3/5): "), line
    assert says in line
    assert "Full error in logs/demo.log;" in line and "`dvc checkout demo`" in line
    if failure == "oom":
        assert "lower `batch_size`" in line
    log = (tmp_path / "logs" / "demo.log").read_text()
    assert "Traceback (most recent call last)" in log and "demo failed" in log
    assert (tmp_path / "out.txt").read_text() == "previous"  # the atomic write never landed


def test_a_failure_before_any_loop_says_so(tmp_path):
    done = run_stage(tmp_path, "early")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(
        "cwa demo: failed before its first loop (loading inputs or the model): RuntimeError: boom"
    )
    refused = run_stage(tmp_path, "bug", params="seeds: [0, 0]\n")  # bad input: exit 2
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("cwa demo: error: params: `seeds`")


def test_where_a_stage_is_before_during_and_after_its_loop():
    from cwa.core import progress

    progress._place.update(desc=None)
    assert progress.doing() == "before its first loop (loading inputs or the model)"
    loop = progress.progress(range(4), desc="baseline")
    next(loop), next(loop)
    assert progress.doing() == "during baseline (1/4)"
    list(loop)
    assert progress.doing() == "after baseline (4/4) ended"
