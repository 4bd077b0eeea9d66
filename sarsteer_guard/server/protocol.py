"""The ``sarsteer.v1`` wire protocol: typed client messages and event (de)serialisation.

Shared by the server and :class:`~sarsteer_guard.remote.RemoteGuard` so both ends agree
on one definition; no web framework is imported here, so voice workers that only run
the client never need Starlette. :func:`parse_message` turns one WebSocket frame into a
:data:`ClientMessage` (``TurnStartMsg | AudioMsg | TurnEndMsg | TurnCancelMsg``), so the
server dispatches on types, not on strings. Every validation failure raises
:class:`ProtocolError` with a one-line message that tells the client what to send
instead (``docs/server.md`` describes the messages, ``docs/protocol.schema.json`` their
schema).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sarsteer_guard.audio.pcm import MAX_RATE, MIN_RATE
from sarsteer_guard.errors import GuardError, one_line
from sarsteer_guard.guard.events import (
    ContextValue,
    GuardEvent,
    TextDelta,
    Timings,
    TurnDecision,
    TurnError,
)
from sarsteer_guard.server.validation import clean_text, is_finite_number, load_json

#: Protocol name and version; the path ``/v1/turns`` carries the same major version.
PROTOCOL = "sarsteer.v1"
#: WebSocket path of the turn protocol.
TURNS_PATH = "/v1/turns"

#: Turn ids: short, printable, safe to log and to put in a binary frame header. Anchored
#: with ``\Z``, and matched with ``fullmatch``: ``$`` would accept a trailing newline.
TURN_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
MAX_SESSION_ID_CHARS = 128
MAX_CONTEXT_KEYS = 64
MAX_CONTEXT_KEY_CHARS = 64
MAX_CONTEXT_STR_CHARS = 1024
MAX_NEW_TOKENS = 4096

SampleFormat = Literal["int16", "float32"]
BYTES_PER_SAMPLE: dict[str, int] = {"int16": 2, "float32": 4}

#: WebSocket close codes the server uses (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutting down: reconnect (to another replica)
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011


class ProtocolError(GuardError):
    """A client message that breaks the protocol; the connection stays usable."""

    kind = "bad_request"

    def __init__(self, message: str, turn_id: str | None = None) -> None:
        super().__init__(message)
        self.turn_id = turn_id
        #: Raised by a ``turn.start``: the error is that new turn's final message.
        self.from_start = False


@dataclass(frozen=True, slots=True)
class TurnStartMsg:
    """A validated ``turn.start``: everything needed to build a :class:`Turn` but the audio."""

    turn_id: str
    session_id: str
    context: dict[str, ContextValue]
    sample_rate: int
    channels: int
    sample_format: SampleFormat
    max_new_tokens: int | None

    def max_audio_bytes(self, max_turn_s: float) -> int:
        """Bytes of PCM that ``max_turn_s`` seconds take in this turn's format."""
        width = BYTES_PER_SAMPLE[self.sample_format]
        return int(max_turn_s * self.sample_rate) * self.channels * width


@dataclass(frozen=True, slots=True)
class AudioMsg:
    """A chunk of a turn's PCM, from a binary frame or a ``turn.audio`` text message."""

    turn_id: str
    pcm: bytes


@dataclass(frozen=True, slots=True)
class TurnEndMsg:
    """``turn.end``: end of speech, run the turn."""

    turn_id: str


@dataclass(frozen=True, slots=True)
class TurnCancelMsg:
    """``turn.cancel``: barge-in, stop the turn."""

    turn_id: str


#: Every message a client may send, as :func:`parse_message` returns it.
ClientMessage = TurnStartMsg | AudioMsg | TurnEndMsg | TurnCancelMsg


def parse_message(
    frame: str | bytes,
    *,
    max_bytes: int | None = None,
    default_session_id: str | None = None,
) -> ClientMessage:
    """One WebSocket frame as a typed client message; :class:`ProtocolError` if it is not one.

    A binary frame is audio; a text frame is one JSON object. ``max_bytes`` (the server's
    ``max_message_bytes``) refuses bigger frames; an oversized audio frame names its turn
    when the header is readable, so that turn ends. ``default_session_id`` fills a
    ``turn.start`` without one (see :func:`parse_turn_start`).
    """
    if isinstance(frame, bytes):
        if max_bytes is not None and len(frame) > max_bytes:
            raise ProtocolError(
                f"binary frame of {len(frame)} bytes exceeds max_message_bytes={max_bytes}: "
                "send audio in smaller chunks",
                _peek_frame_turn_id(frame),
            )
        return parse_audio_frame(frame)
    if max_bytes is not None and (len(frame) > max_bytes or len(frame.encode()) > max_bytes):
        raise ProtocolError(
            f"text message exceeds max_message_bytes={max_bytes}: send audio in smaller "
            "chunks (binary frames carry it without base64 overhead)"
        )
    message = parse_json(frame)
    kind = message["type"]
    if kind == "turn.start":
        try:
            return parse_turn_start(message, default_session_id=default_session_id)
        except ProtocolError as error:
            error.from_start = True
            raise
    if kind == "turn.audio":
        return parse_audio_b64(message)
    if kind == "turn.end":
        return TurnEndMsg(_turn_id(message))
    if kind == "turn.cancel":
        return TurnCancelMsg(_turn_id(message))
    raise ProtocolError(
        f"unknown message type {one_line(kind, limit=40)!r}: expected turn.start, turn.audio, "
        "turn.end or turn.cancel"
    )


def _turn_id(message: Mapping[str, Any]) -> str:
    value = message.get("turn_id")
    if not isinstance(value, str) or not TURN_ID_RE.fullmatch(value):
        raise ProtocolError(
            f"turn_id must be 1-64 characters of [A-Za-z0-9_.:-], got {_shown(value)}",
            turn_id=None,
        )
    return value


def _shown(value: object) -> str:
    """A client's value for an error message: repr, bounded (the peer chose its size)."""
    return one_line(repr(value), limit=60)


def parse_json(text: str) -> dict[str, Any]:
    """Parse one text frame into a message object with a string ``type``.

    Raises only :class:`ProtocolError`, whatever the frame holds (see
    :func:`~.validation.load_json` for the bounds on nesting and integers).
    """
    try:
        message = load_json(text)
    except json.JSONDecodeError as error:
        raise ProtocolError(
            f"malformed JSON at line {error.lineno} column {error.colno}: send one JSON object "
            "per text frame"
        ) from None
    except ValueError as error:
        raise ProtocolError(
            f"refused JSON: {error}; send one small JSON object per frame"
        ) from None
    if not isinstance(message, dict):
        raise ProtocolError("a text frame must hold a JSON object with a 'type' field")
    if not isinstance(message.get("type"), str):
        raise ProtocolError('the message has no string \'type\': e.g. {"type": "turn.start"}')
    return message


def new_session_id() -> str:
    """A fresh, unguessable session id for a client that did not name its session."""
    return f"anon-{uuid.uuid4().hex}"


def parse_turn_start(
    message: Mapping[str, Any], *, default_session_id: str | None = None
) -> TurnStartMsg:
    """Validate a ``turn.start`` message.

    A missing ``session_id`` becomes ``default_session_id`` (the server passes one per
    connection), or a fresh :func:`new_session_id` when that is None: never a shared
    constant, so clients that omit it never see each other's conversation history.
    Errors name the turn (the server ends that turn with them).
    """
    turn_id = _turn_id(message)
    sample_rate, channels, sample_format = _audio_format(message, turn_id)
    return TurnStartMsg(
        turn_id=turn_id,
        session_id=_session_id(message, turn_id, default_session_id),
        context=_context(message, turn_id),
        sample_rate=sample_rate,
        channels=channels,
        sample_format=sample_format,
        max_new_tokens=_max_new_tokens(message, turn_id),
    )


def _session_id(message: Mapping[str, Any], turn_id: str, default: str | None) -> str:
    session_id = message["session_id"] if "session_id" in message else default or new_session_id()
    if not isinstance(session_id, str) or not 1 <= len(session_id) <= MAX_SESSION_ID_CHARS:
        raise ProtocolError(
            f"session_id must be a string of 1-{MAX_SESSION_ID_CHARS} characters", turn_id
        )
    try:
        return clean_text(session_id, identifier=True)
    except ValueError as error:
        raise ProtocolError(f"session_id {error}: send printable text", turn_id) from None


def _context(message: Mapping[str, Any], turn_id: str) -> dict[str, ContextValue]:
    context = message.get("context", {})
    if not isinstance(context, dict) or len(context) > MAX_CONTEXT_KEYS:
        raise ProtocolError(
            f"context must be a JSON object with at most {MAX_CONTEXT_KEYS} keys", turn_id
        )
    clean: dict[str, ContextValue] = {}
    for key, value in context.items():
        name = _context_key(key, turn_id)
        clean[name] = _context_value(name, value, turn_id)
    return clean


def _context_key(key: str, turn_id: str) -> str:
    if len(key) > MAX_CONTEXT_KEY_CHARS:
        raise ProtocolError(
            f"context key {_shown(key[:20])}... is longer than {MAX_CONTEXT_KEY_CHARS} characters",
            turn_id,
        )
    try:
        return clean_text(key)
    except ValueError as error:
        raise ProtocolError(f"context key {_shown(key)} {error}", turn_id) from None


def _context_value(name: str, value: object, turn_id: str) -> ContextValue:
    """One context value, checked (type, size, finite) and its text normalised (NFC)."""
    if not isinstance(value, str | int | float | bool):
        raise ProtocolError(
            f"context[{name!r}] must be a string, number or boolean, not {type(value).__name__}",
            turn_id,
        )
    if not is_finite_number(value):
        raise ProtocolError(
            f"context[{name!r}] is {value}: send a finite number (JSON has no NaN or Infinity)",
            turn_id,
        )
    if not isinstance(value, str):
        return value
    if len(value) > MAX_CONTEXT_STR_CHARS:
        raise ProtocolError(
            f"context[{name!r}] is longer than {MAX_CONTEXT_STR_CHARS} characters", turn_id
        )
    try:
        return clean_text(value)
    except ValueError as error:
        raise ProtocolError(f"context[{name!r}] {error}: send valid text", turn_id) from None


def _int_field(message: Mapping[str, Any], name: str, default: int, turn_id: str) -> int:
    value = message.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{name} must be an integer, got {_shown(value)}", turn_id)
    return value


def _audio_format(message: Mapping[str, Any], turn_id: str) -> tuple[int, int, SampleFormat]:
    sample_rate = _int_field(message, "sample_rate", 16000, turn_id)
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise ProtocolError(
            f"sample_rate {sample_rate} is outside {MIN_RATE}-{MAX_RATE} Hz: send the rate in Hz",
            turn_id,
        )
    channels = _int_field(message, "channels", 1, turn_id)
    if channels not in (1, 2):
        raise ProtocolError(f"channels must be 1 or 2, got {channels}", turn_id)
    sample_format = message.get("format", "int16")
    if sample_format not in BYTES_PER_SAMPLE:
        raise ProtocolError(
            f"format must be 'int16' or 'float32' (little-endian PCM), got {_shown(sample_format)}",
            turn_id,
        )
    return sample_rate, channels, sample_format


def _max_new_tokens(message: Mapping[str, Any], turn_id: str) -> int | None:
    value = message.get("max_new_tokens")
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NEW_TOKENS
    ):
        raise ProtocolError(
            f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS} or absent", turn_id
        )
    return value


def parse_audio_b64(message: Mapping[str, Any]) -> AudioMsg:
    """Validate a ``turn.audio`` message (base64 PCM)."""
    turn_id = _turn_id(message)
    data = message.get("audio_b64")
    if not isinstance(data, str):
        raise ProtocolError("turn.audio needs 'audio_b64': base64 of raw PCM", turn_id)
    try:
        return AudioMsg(turn_id, base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        raise ProtocolError("audio_b64 is not valid base64 (standard alphabet)", turn_id) from None


def encode_audio_frame(turn_id: str, pcm: bytes) -> bytes:
    """A binary audio frame: one byte id length, the ASCII turn id, then raw PCM."""
    raw = turn_id.encode("ascii")
    return bytes((len(raw),)) + raw + pcm


def parse_audio_frame(frame: bytes) -> AudioMsg:
    """Split a binary audio frame into its turn id and PCM bytes."""
    if not frame:
        raise ProtocolError("empty binary frame: a binary frame starts with the turn id header")
    size = frame[0]
    raw = frame[1 : 1 + size]
    try:
        turn_id = raw.decode("ascii")
    except UnicodeDecodeError:
        turn_id = ""
    if size == 0 or len(raw) != size or not TURN_ID_RE.fullmatch(turn_id):
        raise ProtocolError(
            "binary frame header is invalid: send <1 byte id length><ASCII turn_id><PCM bytes>"
        )
    return AudioMsg(turn_id, frame[1 + size :])


def _peek_frame_turn_id(frame: bytes) -> str | None:
    """The turn id of a binary frame's header, if readable (to address an error)."""
    try:
        return parse_audio_frame(frame[:80]).turn_id
    except ProtocolError:
        return None


def audio_frame_overhead(turn_id: str) -> int:
    """Header bytes a binary frame for ``turn_id`` carries (to size chunks under a limit)."""
    return 1 + len(turn_id.encode("ascii"))


# -- events ---------------------------------------------------------------------------------
def event_to_message(event: GuardEvent) -> dict[str, Any]:
    """A Guard event as its wire message (``type`` is delta, decision or error)."""
    if isinstance(event, TextDelta):
        return {"type": "delta", "turn_id": event.turn_id, "text": event.text}
    if isinstance(event, TurnError):
        return error_message(event.turn_id, event.kind, event.message)
    data = dataclasses.asdict(event)
    data["flags"] = list(event.flags)
    data["shadow"] = None if event.shadow is None else dict(event.shadow)
    score = event.refusal_score
    data["refusal_score"] = score if score is None or math.isfinite(score) else None
    data["type"] = "decision"
    return data


def error_message(turn_id: str | None, kind: str, message: str) -> dict[str, Any]:
    """An ``error`` message (``turn_id`` null for connection-level errors)."""
    return {"type": "error", "turn_id": turn_id, "kind": kind, "message": message}


_DECISION_FIELDS = frozenset(f.name for f in dataclasses.fields(TurnDecision))
_TIMING_FIELDS = frozenset(f.name for f in dataclasses.fields(Timings))


def message_to_event(message: Mapping[str, Any]) -> GuardEvent | None:
    """Rebuild a Guard event from a server message; None for other message types.

    Unknown fields are ignored so that a newer server can add fields without
    breaking older clients.
    """
    kind = message.get("type")
    turn_id = str(message.get("turn_id") or "")
    if kind == "delta":
        return TextDelta(turn_id=turn_id, text=str(message.get("text", "")))
    if kind == "error":
        return TurnError(
            turn_id=turn_id,
            kind=str(message.get("kind", "error")),
            message=str(message.get("message", "")),
        )
    if kind == "cancelled":
        return TurnError(turn_id=turn_id, kind="cancelled", message="the turn was cancelled")
    if kind != "decision":
        return None
    fields = {k: v for k, v in message.items() if k in _DECISION_FIELDS and k != "type"}
    timings = message.get("timings") or {}
    fields["timings"] = Timings(**{k: float(v) for k, v in timings.items() if k in _TIMING_FIELDS})
    fields["flags"] = tuple(str(f) for f in message.get("flags") or ())
    return TurnDecision(**fields)


def dumps(message: Mapping[str, Any]) -> str:
    """Compact JSON for the wire (non-ASCII kept: responses are multilingual text)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
