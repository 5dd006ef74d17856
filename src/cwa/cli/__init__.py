"""The `cwa` command line and the old runners' flags."""
