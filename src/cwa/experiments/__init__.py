"""Experiments on the selected weights: perturbations, the sweep and its summaries, unit sets,
fault injection, pruning and fine-tuning."""
