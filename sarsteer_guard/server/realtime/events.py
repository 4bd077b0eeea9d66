"""Client events of the realtime endpoint, parsed into typed messages.

:func:`parse_event` turns one text frame into one of the dataclasses below, or raises a
:class:`~.errors.RealtimeError` naming the event (its ``event_id``) and the bad field.
Events the guard cannot honour (tools, audio output) are refused here or in
:mod:`.session`, never dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sarsteer_guard.server.realtime.errors import RealtimeError, unsupported
from sarsteer_guard.server.realtime.session import check_modalities, parse_max_tokens

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
        data = json.loads(frame)
    except ValueError as error:
        raise RealtimeError("invalid_json", f"event is not JSON: {error}") from error
    if not isinstance(data, dict):
        raise RealtimeError("invalid_json", "an event must be a JSON object")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
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
        previous = data.get("previous_item_id")
        return ItemCreate(
            event_id,
            _item(_object(data.get("item"), "item")),
            previous if isinstance(previous, str) else None,
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
            _str(data.get("item_id"), "item_id"),
            end if isinstance(end, int) else 0,
        )
    if kind == "response.create":
        return _response_create(_object(data.get("response") or {}, "response"), event_id)
    if kind == "response.cancel":
        rid = data.get("response_id")
        return ResponseCancel(event_id, rid if isinstance(rid, str) else None)
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
    raw = response.get("metadata") or {}
    if not isinstance(raw, Mapping) or not all(isinstance(v, str) for v in raw.values()):
        raise RealtimeError(
            "invalid_value",
            "response.metadata must map strings to strings",
            param="response.metadata",
        )
    tokens = response.get("max_output_tokens", response.get("max_response_output_tokens"))
    limit = None if tokens is None else parse_max_tokens(tokens, "response.max_output_tokens")
    return ResponseCreate(event_id, {str(k): v for k, v in raw.items()}, limit)


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
    item_id = item.get("id") if isinstance(item.get("id"), str) else None
    texts: list[str] = []
    audio: list[bytes] = []
    for part in content:
        part = _object(part, "item.content[]")
        kind = part.get("type")
        if kind in ("input_text", "text", "output_text"):
            texts.append(_str(part.get("text", ""), "item.content[].text"))
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
