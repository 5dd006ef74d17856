"""Progress bars on long loops; quiet under CI=true or when stderr is not a terminal."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress(iterable, desc: str | None = None, total: int | None = None, leave: bool = True):
    quiet = os.environ.get("CI", "").lower() == "true" or desc is None
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        leave=leave,
        disable=True if quiet else None,
        dynamic_ncols=True,
    )
