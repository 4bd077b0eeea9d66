"""The ``transformers`` generation backend (the default engine behind ``Guard``)."""

from .backend import TransformersBackend

__all__ = ["TransformersBackend"]
