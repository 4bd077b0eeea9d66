"""A realtime session's configuration: what ``session.update`` may set, validated.

:class:`SessionConfig` is immutable; :func:`apply_update` returns a new one or raises a
:class:`~.errors.RealtimeError` and leaves the old one in force (as the OpenAI API does:
a refused update changes nothing). Both the GA shape (``output_modalities``,
``audio.input.format``) and the beta one (``modalities``, ``input_audio_format``) are
read; the GA shape is what the session reports back.

Server VAD maps onto our webrtcvad segmenter: ``prefix_padding_ms`` is the pre-roll,
``silence_duration_ms`` the end of turn, ``threshold`` (0..1) picks the webrtcvad mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sarsteer_guard.audio.vad import SegmenterSettings
from sarsteer_guard.errors import GuardError, one_line
from sarsteer_guard.server.realtime.errors import RealtimeError, unsupported

Encoding = Literal["pcm16", "pcmu", "pcma"]

#: Rates accepted for ``audio/pcm`` (OpenAI's is 24000; the others save a resample).
PCM_RATES = (8000, 16000, 24000, 32000, 48000)
_BETA_FORMATS: dict[str, Encoding] = {"pcm16": "pcm16", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}
_GA_FORMATS: dict[str, Encoding] = {
    "audio/pcm": "pcm16",
    "audio/pcmu": "pcmu",
    "audio/pcma": "pcma",
}
_GA_NAMES = {v: k for k, v in _GA_FORMATS.items()}


@dataclass(frozen=True)
class AudioFormat:
    """Input audio encoding and rate (G.711 is always 8 kHz)."""

    encoding: Encoding = "pcm16"
    rate: int = 24000

    def to_wire(self) -> dict[str, Any]:
        """The GA ``format`` object."""
        if self.encoding == "pcm16":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": _GA_NAMES[self.encoding]}

    @property
    def bytes_per_second(self) -> int:
        """Bytes of encoded input per second of audio."""
        return self.rate * (2 if self.encoding == "pcm16" else 1)


@dataclass(frozen=True)
class ServerVad:
    """Server turn detection, as the client configured it."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True

    def segmenter(self, max_turn_s: float) -> SegmenterSettings:
        """The webrtcvad settings this configuration means (raises RealtimeError if invalid)."""
        try:
            return SegmenterSettings(
                aggressiveness=min(3, max(0, int(self.threshold * 4))),
                padding_ms=self.prefix_padding_ms,
                end_silence_ms=max(30, self.silence_duration_ms),
                max_turn_s=max_turn_s,
            )
        except GuardError as error:
            raise RealtimeError(
                "invalid_value", one_line(error), param="session.audio.input.turn_detection"
            ) from error

    def to_wire(self) -> dict[str, Any]:
        """The GA ``turn_detection`` object."""
        return {"type": "server_vad", **dataclasses.asdict(self), "idle_timeout_ms": None}


@dataclass(frozen=True)
class SessionConfig:
    """What a session was configured with; ``turn_detection=None`` means manual commit."""

    id: str
    model: str = "sarsteer-guard"
    instructions: str = ""
    input_format: AudioFormat = field(default_factory=AudioFormat)
    turn_detection: ServerVad | None = field(default_factory=ServerVad)
    transcription: Mapping[str, Any] | None = None
    max_output_tokens: int | None = None
    output_audio: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """The session object of ``session.created`` / ``session.updated`` (GA shape)."""
        td = self.turn_detection
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": ["text"],
            "instructions": self.instructions,
            "audio": {
                "input": {
                    "format": self.input_format.to_wire(),
                    "transcription": None
                    if self.transcription is None
                    else dict(self.transcription),
                    "noise_reduction": None,
                    "turn_detection": None if td is None else td.to_wire(),
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, **self.output_audio},
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": self.max_output_tokens or "inf",
        }


def apply_update(config: SessionConfig, session: Mapping[str, Any]) -> SessionConfig:
    """``config`` with a ``session.update``'s ``session`` applied, or RealtimeError."""
    if session.get("type", "realtime") != "realtime":
        raise unsupported(f"session type {session.get('type')!r}", "session.type")
    check_modalities(session.get("output_modalities", session.get("modalities")), "session")
    if session.get("tools"):
        raise unsupported("tools (function calling)", "session.tools")
    changes: dict[str, Any] = {}
    if "instructions" in session:
        changes["instructions"] = _string(session["instructions"], "session.instructions")
    if isinstance(session.get("model"), str):
        changes["model"] = session["model"]
    tokens = session.get("max_output_tokens", session.get("max_response_output_tokens"))
    if tokens is not None:
        changes["max_output_tokens"] = parse_max_tokens(tokens, "session.max_output_tokens")
    audio = _mapping(session.get("audio") or {}, "session.audio")
    inp = _mapping(audio.get("input") or {}, "session.audio.input")
    out = _mapping(audio.get("output") or {}, "session.audio.output")
    fmt = inp.get("format", session.get("input_audio_format"))
    if fmt is not None:
        changes["input_format"] = parse_format(fmt)
    if "turn_detection" in inp or "turn_detection" in session:
        raw = inp["turn_detection"] if "turn_detection" in inp else session["turn_detection"]
        changes["turn_detection"] = parse_turn_detection(raw)
    if "transcription" in inp or "input_audio_transcription" in session:
        raw = inp.get("transcription", session.get("input_audio_transcription"))
        changes["transcription"] = None if raw is None else _mapping(raw, "transcription")
    if inp.get("noise_reduction") or session.get("input_audio_noise_reduction"):
        raise unsupported("input noise reduction", "session.audio.input.noise_reduction")
    if out:
        changes["output_audio"] = {k: v for k, v in out.items() if k in ("voice", "speed")}
    return dataclasses.replace(config, **changes)


def check_modalities(value: object, where: str) -> None:
    """Refuse audio output: the guard answers with text only."""
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise RealtimeError(
            "invalid_value",
            "output_modalities must be a list of strings",
            param=f"{where}.output_modalities",
        )
    if "audio" in value:
        raise unsupported(
            'audio output (set output_modalities to ["text"])', f"{where}.output_modalities"
        )


def parse_format(value: object) -> AudioFormat:
    """A GA format object or a beta format name."""
    param = "session.audio.input.format"
    if isinstance(value, str) and value in _BETA_FORMATS:
        encoding = _BETA_FORMATS[value]
        return AudioFormat(encoding, 24000 if encoding == "pcm16" else 8000)
    if isinstance(value, Mapping) and value.get("type") in _GA_FORMATS:
        encoding = _GA_FORMATS[value["type"]]
        if encoding != "pcm16":
            return AudioFormat(encoding, 8000)
        rate = value.get("rate", 24000)
        if rate not in PCM_RATES or isinstance(rate, bool):
            raise RealtimeError(
                "invalid_value",
                f"audio/pcm rate must be one of {PCM_RATES}, got {rate!r}",
                param=f"{param}.rate",
            )
        return AudioFormat("pcm16", int(rate))
    raise RealtimeError(
        "invalid_value",
        f"unsupported input audio format {value!r}: use "
        '{"type": "audio/pcm", "rate": 24000}, audio/pcmu or audio/pcma',
        param=param,
    )


def parse_turn_detection(value: object) -> ServerVad | None:
    """``null``/``false`` (manual commit) or a ``server_vad`` object."""
    if value is None or value is False:
        return None
    param = "session.audio.input.turn_detection"
    td = _mapping(value, param)
    if td.get("type", "server_vad") != "server_vad":
        raise unsupported(f"turn detection {td.get('type')!r} (use server_vad or null)", param)
    defaults = ServerVad()
    try:
        vad = ServerVad(
            threshold=float(td.get("threshold") or defaults.threshold),
            prefix_padding_ms=int(td.get("prefix_padding_ms") or defaults.prefix_padding_ms),
            silence_duration_ms=int(td.get("silence_duration_ms") or defaults.silence_duration_ms),
            create_response=bool(td.get("create_response", True)),
            interrupt_response=bool(td.get("interrupt_response", True)),
        )
    except (TypeError, ValueError) as error:
        raise RealtimeError(
            "invalid_value", f"bad server_vad setting: {error}", param=param
        ) from error
    vad.segmenter(30.0)  # validate now, not at the first audio
    return vad


def parse_max_tokens(value: object, param: str) -> int | None:
    """``"inf"`` (None: the server's cap) or a positive integer."""
    if value == "inf":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RealtimeError(
            "invalid_value",
            f'max_output_tokens must be a positive integer or "inf", got {value!r}',
            param=param,
        )
    return value


def _string(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise RealtimeError("invalid_value", f"{param} must be a string", param=param)
    return value


def _mapping(value: object, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RealtimeError("invalid_value", f"{param} must be an object", param=param)
    return value
