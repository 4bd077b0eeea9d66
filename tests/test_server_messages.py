"""The typed client-message parser of sarsteer.v1 (``protocol.parse_message``), without a server."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sarsteer_guard.server.protocol import (
    MAX_NEW_TOKENS,
    AudioMsg,
    ClientMessage,
    ProtocolError,
    TurnCancelMsg,
    TurnEndMsg,
    TurnStartMsg,
    encode_audio_frame,
    parse_message,
)

PCM = bytes(range(256)) * 4


def text(message: dict[str, Any]) -> str:
    return json.dumps(message)


def refused(frame: str | bytes, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_message(frame, **kwargs)
    error = caught.value
    assert error.kind == "bad_request"
    assert "\n" not in str(error)
    assert len(str(error)) < 300  # one short line, whatever the client sent
    return error


# -- every message kind ----------------------------------------------------------------------
def test_turn_start_with_every_field() -> None:
    message = parse_message(
        text(
            {
                "type": "turn.start",
                "turn_id": "t-1.a:b_c",
                "session_id": "call-42",
                "context": {"tier": "minor", "age": 12, "score": 0.5, "vip": False},
                "sample_rate": 24000,
                "channels": 2,
                "format": "float32",
                "max_new_tokens": 64,
                "future_field": "ignored",
            }
        )
    )
    assert message == TurnStartMsg(
        turn_id="t-1.a:b_c",
        session_id="call-42",
        context={"tier": "minor", "age": 12, "score": 0.5, "vip": False},
        sample_rate=24000,
        channels=2,
        sample_format="float32",
        max_new_tokens=64,
    )
    assert message.max_audio_bytes(2.0) == 2 * 24000 * 2 * 4


def test_turn_start_defaults_and_sessions() -> None:
    message = parse_message(text({"type": "turn.start", "turn_id": "t"}), default_session_id="c1")
    assert message == TurnStartMsg("t", "c1", {}, 16000, 1, "int16", None)
    anonymous = parse_message(text({"type": "turn.start", "turn_id": "t"}))
    assert isinstance(anonymous, TurnStartMsg)
    assert anonymous.session_id.startswith("anon-")
    assert parse_message(text({"type": "turn.start", "turn_id": "t"})) != anonymous  # fresh ids
    null_cap = parse_message(text({"type": "turn.start", "turn_id": "t", "max_new_tokens": None}))
    assert isinstance(null_cap, TurnStartMsg)
    assert null_cap.max_new_tokens is None


def test_audio_as_base64_and_as_binary_frame() -> None:
    b64 = text({"type": "turn.audio", "turn_id": "t", "audio_b64": base64.b64encode(PCM).decode()})
    assert parse_message(b64) == AudioMsg("t", PCM)
    assert parse_message(encode_audio_frame("turn-7", PCM)) == AudioMsg("turn-7", PCM)
    assert parse_message(encode_audio_frame("t", b"")) == AudioMsg("t", b"")
    assert parse_message(encode_audio_frame("x" * 64, PCM)) == AudioMsg("x" * 64, PCM)


def test_end_and_cancel() -> None:
    assert parse_message(text({"type": "turn.end", "turn_id": "t"})) == TurnEndMsg("t")
    assert parse_message(text({"type": "turn.cancel", "turn_id": "t"})) == TurnCancelMsg("t")


def describe(message: ClientMessage) -> str:
    match message:
        case TurnStartMsg(turn_id=turn_id, sample_rate=rate):
            return f"start {turn_id} @{rate}"
        case AudioMsg(turn_id=turn_id, pcm=pcm):
            return f"audio {turn_id} {len(pcm)}"
        case TurnEndMsg(turn_id=turn_id):
            return f"end {turn_id}"
        case TurnCancelMsg(turn_id=turn_id):
            return f"cancel {turn_id}"


def test_messages_dispatch_with_one_match() -> None:
    frames: list[str | bytes] = [
        text({"type": "turn.start", "turn_id": "a", "sample_rate": 8000}),
        encode_audio_frame("a", PCM),
        text({"type": "turn.end", "turn_id": "a"}),
        text({"type": "turn.cancel", "turn_id": "a"}),
    ]
    assert [describe(parse_message(f)) for f in frames] == [
        "start a @8000",
        "audio a 1024",
        "end a",
        "cancel a",
    ]


# -- malformed messages: connection-level (no turn to end) -----------------------------------
@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("{not json", "malformed JSON at line 1 column 2"),
        ("[1, 2]", "must hold a JSON object"),
        ('"turn.start"', "must hold a JSON object"),
        (text({"turn_id": "x"}), "no string 'type'"),
        (text({"type": 7, "turn_id": "x"}), "no string 'type'"),
        (text({"type": "turn.explode", "turn_id": "x"}), "unknown message type 'turn.explode'"),
        (text({"type": "turn.end"}), "turn_id must be 1-64 characters"),
        (text({"type": "turn.cancel", "turn_id": 5}), "turn_id must be"),
        (text({"type": "turn.end", "turn_id": ""}), "turn_id must be"),
        (text({"type": "turn.end", "turn_id": "x" * 65}), "turn_id must be"),
        (text({"type": "turn.start", "turn_id": "bad id!"}), "turn_id must be"),
        (text({"type": "turn.audio", "turn_id": "é"}), "turn_id must be"),
    ],
)
def test_malformed_messages_name_no_turn(frame: str, needle: str) -> None:
    error = refused(frame)
    assert needle in str(error)
    assert error.turn_id is None


def test_unknown_type_lists_the_known_ones_and_bounds_the_echo() -> None:
    error = refused(text({"type": "x" * 10_000, "turn_id": "t"}))
    assert "expected turn.start, turn.audio, turn.end or turn.cancel" in str(error)
    huge_id = refused(text({"type": "turn.end", "turn_id": "y" * 10_000}))
    assert "y" * 100 not in str(huge_id)


# -- malformed turn.start fields: that turn ends ---------------------------------------------
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"session_id": 7}, "session_id must be a string of 1-128"),
        ({"session_id": ""}, "session_id must be a string of 1-128"),
        ({"session_id": "s" * 129}, "session_id must be a string of 1-128"),
        ({"context": ["tier"]}, "context must be a JSON object with at most 64 keys"),
        ({"context": {f"k{i}": 1 for i in range(65)}}, "at most 64 keys"),
        ({"context": {"k" * 65: 1}}, "is longer than 64 characters"),
        ({"context": {"tier": {"nested": 1}}}, "context['tier'] must be a string, number"),
        ({"context": {"tier": None}}, "not NoneType"),
        ({"context": {"note": "n" * 1025}}, "context['note'] is longer than 1024"),
        ({"sample_rate": "16000"}, "sample_rate must be an integer"),
        ({"sample_rate": True}, "sample_rate must be an integer"),
        ({"sample_rate": 16000.0}, "sample_rate must be an integer"),
        ({"sample_rate": 16}, "sample_rate 16 is outside"),
        ({"sample_rate": 10_000_000}, "is outside"),
        ({"channels": 3}, "channels must be 1 or 2, got 3"),
        ({"channels": "1"}, "channels must be an integer"),
        ({"format": "pcm8"}, "format must be 'int16' or 'float32'"),
        ({"max_new_tokens": 0}, f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}"),
        ({"max_new_tokens": MAX_NEW_TOKENS + 1}, "max_new_tokens must be"),
        ({"max_new_tokens": "5"}, "max_new_tokens must be"),
        ({"max_new_tokens": True}, "max_new_tokens must be"),
    ],
)
def test_bad_turn_start_fields_end_that_turn(fields: dict[str, Any], needle: str) -> None:
    error = refused(text({"type": "turn.start", "turn_id": "t9", **fields}))
    assert needle in str(error)
    assert error.turn_id == "t9"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({}, "turn.audio needs 'audio_b64'"),
        ({"audio_b64": 12}, "turn.audio needs 'audio_b64'"),
        ({"audio_b64": "not base64!"}, "audio_b64 is not valid base64"),
        ({"audio_b64": "QUJ"}, "audio_b64 is not valid base64"),  # missing padding
    ],
)
def test_bad_base64_audio_ends_that_turn(fields: dict[str, Any], needle: str) -> None:
    error = refused(text({"type": "turn.audio", "turn_id": "t3", **fields}))
    assert needle in str(error)
    assert error.turn_id == "t3"


# -- binary frames and sizes -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (b"", "empty binary frame"),
        (b"\x00abc", "binary frame header is invalid"),
        (b"\x05ab", "binary frame header is invalid"),  # id shorter than announced
        (b"\x02\xff\xfe" + PCM, "binary frame header is invalid"),  # not ASCII
        (b"\x03a b" + PCM, "binary frame header is invalid"),  # not a turn id
    ],
)
def test_bad_binary_headers(frame: bytes, needle: str) -> None:
    error = refused(frame)
    assert needle in str(error)
    assert error.turn_id is None


def test_oversized_frames() -> None:
    big = encode_audio_frame("big", bytes(2048))
    assert parse_message(big, max_bytes=len(big)) == AudioMsg("big", bytes(2048))
    error = refused(big, max_bytes=len(big) - 1)
    assert f"binary frame of {len(big)} bytes exceeds max_message_bytes={len(big) - 1}" in str(
        error
    )
    assert error.turn_id == "big"  # the header is readable: that turn ends
    headless = refused(b"\x00" + bytes(4096), max_bytes=1024)
    assert headless.turn_id is None
    # Text is measured in bytes, not characters: 600 two-byte characters are 1200 bytes.
    wide = json.dumps({"type": "turn.end", "turn_id": "t", "pad": "é" * 600}, ensure_ascii=False)
    assert len(wide) < 1024 < len(wide.encode())
    error = refused(wide, max_bytes=1024)
    assert "text message exceeds max_message_bytes=1024" in str(error)
    assert error.turn_id is None
    assert parse_message(wide, max_bytes=2048) == TurnEndMsg("t")
