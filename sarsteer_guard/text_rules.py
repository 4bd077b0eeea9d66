r"""One set of text rules for everything a client or end user sends (no dependencies).

Used by the server's protocol checks (:mod:`sarsteer_guard.server.validation`), the Guard's
edge (:mod:`sarsteer_guard.guard.edge`) and the audit log's storable copies
(:mod:`sarsteer_guard.audit.storable`), so an id or a value accepted in-process is
accepted over the wire and stored the same way:

* a lone UTF-16 surrogate (``json.loads('"\\ud800"')``, a split emoji) cannot be encoded
  as UTF-8, so every store would fail on it after the turn ran: refused by
  :func:`clean_text`; :func:`repair_surrogates` is the repair for places that document why
  they repair (surrogate pairs joined, lone ones become U+FFFD);
* control characters are refused in text (tab, newline and carriage return allowed) and
  in ids (none allowed);
* text is normalised to NFC so the same words compare, hash and encode the same way; ids
  are checked, never rewritten (a client compares them byte for byte);
* numbers must be finite (JSON has no NaN or Infinity).
"""

from __future__ import annotations

import math
import re
import unicodedata

#: Any UTF-16 surrogate code point (paired or lone) held in a Python string.
SURROGATE_RE = re.compile("[\ud800-\udfff]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ID_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: What :func:`clean_text` says about a lone surrogate (one wording everywhere).
NOT_UNICODE = "is not valid Unicode (it holds a lone UTF-16 surrogate)"


def repair_surrogates(value: str) -> str:
    """``value`` as valid Unicode: surrogate pairs joined, lone surrogates -> U+FFFD.

    Returns ``value`` itself (the same object) when there is nothing to repair.
    """
    if value.isascii() or SURROGATE_RE.search(value) is None:
        return value
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def clean_text(value: str, *, identifier: bool = False) -> str:
    """``value`` in NFC, or :class:`ValueError` saying what is wrong with it.

    Refused: lone surrogates and control characters; ``identifier=True`` also refuses tab
    and newlines and returns the id unchanged (checked, never rewritten).
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(NOT_UNICODE) from None
    if (_ID_CONTROL_RE if identifier else _CONTROL_RE).search(value):
        raise ValueError("holds control characters")
    return value if identifier else unicodedata.normalize("NFC", value)


def check_id(value: object) -> str:
    """An id (session, turn) as sent, or :class:`ValueError`: text, valid, no controls."""
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {type(value).__name__}")
    return clean_text(value, identifier=True)


def is_finite_number(value: object) -> bool:
    """False for ``NaN``/``Infinity`` (and ``1e999``, which parses as infinity)."""
    return not isinstance(value, float) or math.isfinite(value)


__all__ = [
    "NOT_UNICODE",
    "SURROGATE_RE",
    "check_id",
    "clean_text",
    "is_finite_number",
    "repair_surrogates",
]
