"""Sensitivity scores: the metrics, Hutchinson by groups of blocks, the super-weight detector
and the on-disk score store."""
