"""The columns that identify a perturbation experiment, shared by the tables that have one row
per experiment (or per experiment and text / task)."""

from cwa.schemas import FLOAT, INT, STR, Column

EXPERIMENT = (
    Column(
        "perturbation",
        STR,
        "perturbation name: zero, sign_flip, scale, gauss_rel, gauss_abs, bit_flip, bit_flip_p, "
        "quantize (docs/params.md)",
    ),
    Column(
        "strength",
        FLOAT,
        "α (scale), σ (gauss_rel, gauss_abs), bit position (bit_flip), p (bit_flip_p), n bits "
        "(quantize); NaN for none or for a bit field",
    ),
    Column("setting", STR, "the strength in words (`α=2`, `bit 30`, `random exponent bit`, ...)"),
    Column("selection", STR, "`top` or a control: `bottom_k`, `random_k`, `magnitude_matched_k`"),
    Column("draw", INT, "random draw number (0 for top and bottom_k)"),
    Column("k", INT, "weights selected per group (the whole pool in global mode)"),
    Column(
        "mask_ratio",
        FLOAT,
        "fraction of the selection perturbed (a seeded random subset; 1 = all of it)",
    ),
)
EXPERIMENT_ORDER = ("perturbation", "strength", "setting", "selection", "k", "mask_ratio", "draw")
