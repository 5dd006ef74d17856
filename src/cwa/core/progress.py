"""Progress of long loops: a bar on a terminal, whole log lines everywhere else.

A cluster job, `nohup` or a CI log has no terminal, and a redrawn bar shows nothing there. So every
top-level loop also logs `desc: n/total (p%), elapsed, about t left` through the `cwa.core.progress`
logger at most every CWA_PROGRESS_SECONDS (default 20) and once at the end; the stage sends those
lines to its log file always and to stderr when stderr is not a terminal (cwa.pipeline.stage). Inner
loops (leave=False: the batches of one evaluation) only draw a bar. CI=true (tests) is quiet.
Whatever is drawn, the last top-level loop's place is kept (`doing`): a stage that fails says
where it was.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger("cwa.progress")
_NOWHERE = open(os.devnull, "w")  # noqa: SIM115  (where a log-only tqdm draws its bar)
LINE = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%), {elapsed} elapsed, about {remaining} left"


def interval() -> float:
    return float(os.environ.get("CWA_PROGRESS_SECONDS", "20"))


class _Progress(tqdm):
    """tqdm's counts and rate estimate, drawn as a bar on a terminal and logged as lines."""

    def __init__(self, *args, bar: bool, **kwargs):
        self._bar = bar
        self._logged_at, self._logged_n = -1.0, -1
        kwargs.setdefault("mininterval", 0.1 if bar else 1.0)
        super().__init__(*args, file=sys.stderr if bar else _NOWHERE, **kwargs)

    def display(self, msg=None, pos=None):
        if self.leave:
            now = time.monotonic()
            done = self.total is not None and self.n >= self.total
            due = done or now - self._logged_at >= interval()
            if msg is None and due and self.n != self._logged_n:  # close() redraws the end
                self._logged_at, self._logged_n = now, self.n
                log.info(self.line())
        return super().display(msg, pos) if self._bar else True

    def line(self) -> str:
        meter = dict(self.format_dict, bar_format=LINE if self.total else "{desc}: {n_fmt}")
        return self.format_meter(**meter)


_place = {"desc": None, "done": 0, "total": None, "finished": False}


def doing() -> str:
    """Where the stage is: the last top-level loop, its count and whether it ended."""
    desc, done, total = _place["desc"], _place["done"], _place["total"]
    if desc is None:
        return "before its first loop (loading inputs or the model)"
    count = f"{done}/{total}" if total is not None else str(done)
    return f"after {desc} ({count}) ended" if _place["finished"] else f"during {desc} ({count})"


def _tracked(items, desc: str, total: int | None):
    _place.update(desc=desc, done=0, total=total, finished=False)
    for item in items:
        yield item
        _place["done"] += 1
    _place["finished"] = True


def progress(iterable, desc: str | None = None, total: int | None = None, leave: bool = True):
    bar = sys.stderr.isatty()
    quiet = os.environ.get("CI", "").lower() == "true" or desc is None
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if quiet or not (bar or leave):
        shown = tqdm(iterable, total=total, disable=True)
    else:
        shown = _Progress(iterable, desc=desc, total=total, leave=leave, bar=bar, dynamic_ncols=bar)
    return _tracked(shown, desc, total) if leave and desc else shown
