"""Client events of the realtime endpoint, parsed into typed messages.

:func:`parse_event` turns one text frame into one of the dataclasses below, or raises a
:class:`~.errors.RealtimeError` naming the event (its ``event_id``) and the bad field.
Events the guard cannot honour (tools, audio output) are refused here or in
:mod:`.session`, never dropped.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sarsteer_guard.server.realtime.errors import RealtimeError, unsupported
from sarsteer_guard.server.realtime.session import (
    check_modalities,
    client_text,
    optional_id,
    parse_max_tokens,
)
from sarsteer_guard.server.validation import load_json

Role = Literal["user", "assistant", "system"]


@dataclass(frozen=True)
class SessionUpdate:
    """``session.update``: the raw ``session`` object, applied by :mod:`.session`."""

    event_id: str | None
    session: Mapping[str, Any]


@dataclass(frozen=True)
class AudioAppend:
    """``input_audio_buffer.append``: encoded audio in the session's input format."""

    event_id: str | None
    audio: bytes


@dataclass(frozen=True)
class AudioCommit:
    """``input_audio_buffer.commit``."""

    event_id: str | None


@dataclass(frozen=True)
class AudioClear:
    """``input_audio_buffer.clear``."""

    event_id: str | None


@dataclass(frozen=True)
class NewItem:
    """A conversation item a client creates: text, or user audio in the input format."""

    id: str | None
    role: Role
    text: str = ""
    audio: bytes | None = None


@dataclass(frozen=True)
class ItemCreate:
    """``conversation.item.create``."""

    event_id: str | None
    item: NewItem
    previous_item_id: str | None = None


@dataclass(frozen=True)
class ItemRef:
    """``conversation.item.delete`` / ``.retrieve`` / ``.truncate``: an item by id."""

    event_id: str | None
    action: Literal["delete", "retrieve", "truncate"]
    item_id: str
    audio_end_ms: int = 0


@dataclass(frozen=True)
class ResponseCreate:
    """``response.create``; ``metadata`` is echoed in the response beside the guard's."""

    event_id: str | None
    metadata: Mapping[str, str]
    max_output_tokens: int | None = None


@dataclass(frozen=True)
class ResponseCancel:
    """``response.cancel`` (the barge-in of clients that detect turns themselves)."""

    event_id: str | None
    response_id: str | None = None


ClientEvent = (
    SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | ItemCreate
    | ItemRef
    | ResponseCreate
    | ResponseCancel
)


def parse_event(frame: str | bytes, *, max_bytes: int) -> ClientEvent:
    """One client frame as a typed event; RealtimeError says what is wrong."""
    if isinstance(frame, bytes):
        raise RealtimeError(
            "invalid_value",
            "binary frames are not part of this protocol: "
            "send JSON events (audio base64 in input_audio_buffer.append)",
        )
    if len(frame) > max_bytes:
        raise RealtimeError(
            "invalid_value",
            f"event of {len(frame)} bytes is larger than "
            f"{max_bytes}: append audio in smaller chunks",
        )
    try:
        data = load_json(frame)  # bounded depth and integers; raises only ValueError
    except ValueError as error:
        raise RealtimeError("invalid_json", f"event is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise RealtimeError("invalid_json", "an event must be a JSON object")
    event_id = optional_id(data.get("event_id"), "event_id")
    try:
        return _parse(data, event_id)
    except RealtimeError as error:
        raise error.with_event_id(event_id) from None


def _parse(data: Mapping[str, Any], event_id: str | None) -> ClientEvent:
    kind = data.get("type")
    if kind == "session.update":
        return SessionUpdate(event_id, _object(data.get("session"), "session"))
    if kind == "input_audio_buffer.append":
        return AudioAppend(event_id, _base64(data.get("audio"), "audio"))
    if kind == "input_audio_buffer.commit":
        return AudioCommit(event_id)
    if kind == "input_audio_buffer.clear":
        return AudioClear(event_id)
    if kind == "conversation.item.create":
        return ItemCreate(
            event_id,
            _item(_object(data.get("item"), "item")),
            optional_id(data.get("previous_item_id"), "previous_item_id"),
        )
    if kind in (
        "conversation.item.delete",
        "conversation.item.retrieve",
        "conversation.item.truncate",
    ):
        end = data.get("audio_end_ms", 0)
        return ItemRef(
            event_id,
            kind.rsplit(".", 1)[1],
            client_text(_str(data.get("item_id"), "item_id"), "item_id", identifier=True),
            end if isinstance(end, int) else 0,
        )
    if kind == "response.create":
        return _response_create(_object(data.get("response") or {}, "response"), event_id)
    if kind == "response.cancel":
        return ResponseCancel(event_id, optional_id(data.get("response_id"), "response_id"))
    if kind == "output_audio_buffer.clear":
        raise unsupported("output audio (output_audio_buffer.clear)", "type")
    raise RealtimeError(
        "invalid_value",
        f"unknown event type {kind!r}: see docs/realtime.md for the supported events",
        param="type",
    )


def _response_create(response: Mapping[str, Any], event_id: str | None) -> ResponseCreate:
    check_modalities(response.get("output_modalities", response.get("modalities")), "response")
    if response.get("tools"):
        raise unsupported("tools (function calling)", "response.tools")
    if response.get("conversation") == "none" or response.get("input"):
        raise unsupported("out-of-band responses (conversation/input)", "response.conversation")
    tokens = response.get("max_output_tokens", response.get("max_response_output_tokens"))
    limit = None if tokens is None else parse_max_tokens(tokens, "response.max_output_tokens")
    return ResponseCreate(event_id, _metadata(response.get("metadata") or {}), limit)


#: OpenAI's metadata limits: 16 pairs, keys of 64 characters, values of 512.
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
#: Metadata keys the guard writes itself (its decision): a client may not send them.
RESERVED_METADATA_PREFIX = "sarsteer_"


def _metadata(raw: object) -> dict[str, str]:
    """``response.metadata`` within OpenAI's limits, clean text, no ``sarsteer_`` keys.

    The guard's decision goes into the same metadata under ``sarsteer_`` keys: a client
    key there would spoof (or be overwritten by) the guard's own, so it is refused.
    """
    param = "response.metadata"
    if (
        not isinstance(raw, Mapping)
        or len(raw) > MAX_METADATA_KEYS
        or not all(isinstance(v, str) for v in raw.values())
    ):
        raise RealtimeError(
            "invalid_value",
            f"response.metadata must map at most {MAX_METADATA_KEYS} strings to strings",
            param=param,
        )
    clean: dict[str, str] = {}
    for key, value in raw.items():
        if len(key) > MAX_METADATA_KEY_CHARS or len(value) > MAX_METADATA_VALUE_CHARS:
            raise RealtimeError(
                "invalid_value",
                f"response.metadata keys hold at most {MAX_METADATA_KEY_CHARS} characters "
                f"and values {MAX_METADATA_VALUE_CHARS}",
                param=param,
            )
        if key.startswith(RESERVED_METADATA_PREFIX):
            raise RealtimeError(
                "invalid_value",
                f"response.metadata key {key[:20]!r}: keys starting with "
                f"{RESERVED_METADATA_PREFIX!r} are the guard's own; rename it",
                param=param,
            )
        name = client_text(key, f"{param} key", identifier=True)
        clean[name] = client_text(value, f"{param}[{name!r}]")
    return clean


def _item(item: Mapping[str, Any]) -> NewItem:
    if item.get("type", "message") != "message":
        raise unsupported(f"{item.get('type')} items (tools)", "item.type")
    role = item.get("role")
    if role not in ("user", "assistant", "system"):
        raise RealtimeError(
            "invalid_value", "item.role must be user, assistant or system", param="item.role"
        )
    content = item.get("content") or []
    if not isinstance(content, list) or not content:
        raise RealtimeError(
            "invalid_value", "item.content must be a non-empty list", param="item.content"
        )
    item_id = optional_id(item.get("id"), "item.id")
    texts: list[str] = []
    audio: list[bytes] = []
    for part in content:
        part = _object(part, "item.content[]")
        kind = part.get("type")
        if kind in ("input_text", "text", "output_text"):
            text = _str(part.get("text", ""), "item.content[].text")
            texts.append(client_text(text, "item.content[].text"))
        elif kind == "input_audio" and role == "user":
            audio.append(_base64(part.get("audio"), "item.content[].audio"))
        else:
            raise unsupported(f"{kind!r} content in {role} items", "item.content")
    if role == "user" and texts:
        raise RealtimeError(
            "unsupported_content",
            "the guard answers speech: a user item must carry input_audio, not text",
            param="item.content",
        )
    return NewItem(item_id, role, "".join(texts), b"".join(audio) if audio else None)


def _object(value: object, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RealtimeError("missing_required_parameter", f"{param} must be an object", param=param)
    return value


def _str(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise RealtimeError("missing_required_parameter", f"{param} must be a string", param=param)
    return value


def _base64(value: object, param: str) -> bytes:
    try:
        return base64.b64decode(_str(value, param), validate=True)
    except (binascii.Error, ValueError) as error:
        raise RealtimeError("invalid_value", f"{param} is not valid base64", param=param) from error
