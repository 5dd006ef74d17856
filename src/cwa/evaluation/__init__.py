"""Measuring a model: perplexity and KL over evaluation windows, downstream tasks, and the
lm-evaluation-harness adapter."""
