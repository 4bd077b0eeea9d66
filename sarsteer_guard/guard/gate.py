"""The refusal gate: hold a reply's first characters back until it is known not to be a refusal.

With a fixed refusal message, a policy wants the model's own refusal replaced before anybody
hears it. The gate keeps the first ``window`` characters of the streamed reply; once it has
that many it asks the detector: a refusal is replaced by the message (and the rest of the
reply is dropped, so the row can be cancelled), anything else is released and later text
streams straight through. A reply that ends inside the window is decided at :meth:`close`.
Refusals that start after the window were already spoken; :meth:`close` still reports them.
In shadow mode, or without a fixed message, the gate passes everything through at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sarsteer_guard.refusal import RefusalDetector

__all__ = ["GateVerdict", "RefusalGate"]


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """How a reply ended up.

    Attributes:
        tail: text still to serve (what the window held, or the message); may be empty.
        served: everything served, ``tail`` included.
        refused: the detector found a refusal in the full reply, or the message replaced it.
        keyword: the detector's keyword for the full reply (None when it found none).
        replaced: the fixed message was served instead of the model's text.
    """

    tail: str
    served: str
    refused: bool
    keyword: str | None
    replaced: bool


class RefusalGate:
    """Feed a reply's deltas in order, then :meth:`close` it with the full text.

    Args:
        detector: the refusal detector for this turn's keywords.
        message: fixed message that replaces a refusal (None: no replacement, no holding).
        window: characters held back before deciding.
        shadow: shadow mode (the unsteered reply is served as is): no holding.
    """

    def __init__(
        self, detector: RefusalDetector, message: str | None, *, window: int, shadow: bool = False
    ) -> None:
        self._detector = detector
        self._message = message
        self._window = window
        self._holding = message is not None and not shadow
        self._held: list[str] = []
        self._served: list[str] = []
        self._replaced = False

    @property
    def replaced(self) -> bool:
        """Whether the message replaced the reply (the rest of it is not needed any more)."""
        return self._replaced

    def feed(self, delta: str) -> str:
        """Take the next piece of the reply; return the text to serve now ("" = nothing yet)."""
        if self._replaced:
            return ""
        if not self._holding:
            return self._serve(delta)
        self._held.append(delta)
        text = "".join(self._held)
        if len(text) < self._window:
            return ""
        self._holding = False
        self._held.clear()
        if self._message is not None and self._detector(text).refused:
            self._replaced = True
            return self._serve(self._message)
        return self._serve(text)

    def close(self, model_text: str) -> GateVerdict:
        """End the reply (``model_text`` is all the model said) and decide what remains."""
        verdict = self._detector(model_text)
        tail = ""
        if self._held and not self._replaced:  # the reply ended inside the window
            if verdict.refused and self._message is not None:
                self._replaced = True
                tail = self._serve(self._message)
            else:
                tail = self._serve("".join(self._held))
            self._held.clear()
        return GateVerdict(
            tail=tail,
            served="".join(self._served),
            refused=verdict.refused or self._replaced,
            keyword=verdict.keyword,
            replaced=self._replaced,
        )

    def _serve(self, text: str) -> str:
        self._served.append(text)
        return text
