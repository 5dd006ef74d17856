"""The params: every key, its validation and its meaning, read from params.yaml."""
