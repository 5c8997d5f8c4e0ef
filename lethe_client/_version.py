"""The client's version (also sent as its User-Agent)."""

__version__ = "0.1.0"
