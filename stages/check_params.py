"""check_params: every param checked, registry names included, before any other stage runs.

Each stage reads and checks only its own keys, and only the registries it imports can check
names (metrics, perturbations and their strengths, ranking modes). This stage imports them all
and checks every key, then what this machine and the model's shape allow (cwa.pipeline.feasibility:
the device, each k against the ranking groups, the window length against the positions). Every
other stage depends on its output, so `dvc repro` runs it first whenever a param or a registry
changed, and a bad value anywhere stops the run before any scoring starts. Passing checks
always write the same bytes, so they rerun nothing downstream.
Writes: a fixed line, so adding a param to the code reruns only the stages that declare it.
"""

import cwa.pipeline.load_registries  # noqa: F401  (every registry adds its checks and keys on import)
from cwa.config.params import all_keys, load_params
from cwa.core.io import atomic_write
from cwa.pipeline.feasibility import check
from cwa.pipeline.paths import CHECKED
from cwa.pipeline.stage import Stage, stage_main

# What this stage reads: every key (dvc.yaml lists them all; tests/test_docs.py keeps them equal).
PARAMS = tuple(all_keys())


STAGE = Stage(
    "check_params",
    PARAMS,
    does=("checks every param (names included) before any other stage runs"),
    writes={
        "out": CHECKED,
    },
)


def run(args, params):
    check(load_params(args.params))  # strict: a key no module registers is a typo
    text = "checked\n"  # the same bytes whatever the values and whatever keys exist
    atomic_write(args.out, lambda tmp: tmp.write_text(text))


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
