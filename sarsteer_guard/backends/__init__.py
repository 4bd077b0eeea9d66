"""Generation backends other than the in-process transformers engine (``guard/engine.py``)."""
