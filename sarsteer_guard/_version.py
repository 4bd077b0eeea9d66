"""The library version, recorded in every vector file and audit record."""

__version__ = "0.1.0"
