"""Analyses across scores and models: metric agreement, layer correlation, clusters of weights,
experts and the study across models."""
