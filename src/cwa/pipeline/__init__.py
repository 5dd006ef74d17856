"""The DVC pipeline's machinery: the stage wrapper, the set-up stages share, feasibility checks,
the registries loader, the params reference and `cwa verify`."""
