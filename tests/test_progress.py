"""Progress shows up as whole lines when stderr is not a terminal (a log file, a cluster job)."""

import os
import subprocess
import sys

SCRIPT = """
import time
from pathlib import Path
from cwa.pipeline.stage import setup_logging
from cwa.core.progress import progress
setup_logging("demo", Path(r"{logs}"))
for i in progress(range(6), desc="experiments"):
    for j in progress(range(2), desc="batches", leave=False):
        pass
    time.sleep(0.25)
"""


def run(tmp_path, **env):
    logs = tmp_path / "logs"
    environ = {k: v for k, v in os.environ.items() if k != "CI"} | env
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(logs=logs)],
        env=environ,
        capture_output=True,  # stderr is a pipe, not a terminal
        text=True,
        check=True,
    )
    log = logs / "demo.log"
    return done.stderr, log.read_text() if log.exists() else ""


def test_lines_with_count_elapsed_and_estimate_reach_stderr_and_the_log_file(tmp_path):
    stderr, log = run(tmp_path, CWA_PROGRESS_SECONDS="0.2")
    lines = [line for line in stderr.splitlines() if "experiments:" in line]
    assert lines[0].startswith("[demo] experiments: 0/6 (0%)")
    assert lines[-1].startswith("[demo] experiments: 6/6 (100%)")
    assert len(lines) >= 3  # throttled by time, but more than start and end
    assert all("elapsed, about" in line and "left" in line for line in lines)
    assert "batches" not in stderr  # inner loops draw no lines
    assert "\r" not in stderr  # whole lines, never a redrawn bar
    assert log.count("experiments:") == len(lines)
    assert len(set(lines)) == len(lines) and stderr.count("6/6 (100%)") == 1  # the end once


def test_quiet_under_ci(tmp_path):
    stderr, log = run(tmp_path, CI="true")
    assert "experiments" not in stderr and "experiments" not in log
