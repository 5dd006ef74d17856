"""Choosing weights from scores: the top, bottom and matched control sets (ranking) and whole
structural units (neurons, heads, experts, channels)."""
