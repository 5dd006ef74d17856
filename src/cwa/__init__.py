"""cwa: critical weight analysis for Hugging Face causal language models."""

__version__ = "0.1.0"


class CwaError(Exception):
    """A user-facing error: bad params, a missing model or data. Printed without a traceback."""
