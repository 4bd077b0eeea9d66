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
from sarsteer_guard.guard.events import ContextValue
from sarsteer_guard.server.protocol import ProtocolError
from sarsteer_guard.server.protocol import _context as turn_context
from sarsteer_guard.server.realtime.errors import RealtimeError, unsupported
from sarsteer_guard.server.validation import clean_text, is_finite_number

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
    #: The policy context of every response (``sarsteer_context``; sarsteer.v1's rules).
    context: Mapping[str, ContextValue] = field(default_factory=dict)

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
            "sarsteer_context": dict(self.context),
        }


def apply_update(
    config: SessionConfig, session: Mapping[str, Any], *, max_turn_s: float
) -> SessionConfig:
    """``config`` with a ``session.update``'s ``session`` applied, or RealtimeError.

    Every value is type-checked (finite numbers, clean text) before it is kept or echoed,
    and server VAD is validated against the server's ``max_turn_s``: a refused update
    leaves ``config`` in force, never half of the new one.
    """
    if session.get("type", "realtime") != "realtime":
        raise unsupported(f"session type {session.get('type')!r}", "session.type")
    check_modalities(session.get("output_modalities", session.get("modalities")), "session")
    if session.get("tools"):
        raise unsupported("tools (function calling)", "session.tools")
    changes: dict[str, Any] = {}
    if "instructions" in session:
        text = _string(session["instructions"], "session.instructions")
        changes["instructions"] = client_text(text, "session.instructions")
    if session.get("model") is not None:
        model = _string(session["model"], "session.model")
        changes["model"] = client_text(model, "session.model", identifier=True)
    if "sarsteer_context" in session:
        changes["context"] = parse_context(session["sarsteer_context"])
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
        changes["turn_detection"] = parse_turn_detection(raw, max_turn_s)
    if "transcription" in inp or "input_audio_transcription" in session:
        raw = inp.get("transcription", session.get("input_audio_transcription"))
        changes["transcription"] = None if raw is None else _transcription(raw)
    if inp.get("noise_reduction") or session.get("input_audio_noise_reduction"):
        raise unsupported("input noise reduction", "session.audio.input.noise_reduction")
    if out:
        changes["output_audio"] = _output_audio(out)
    return dataclasses.replace(config, **changes)


def _output_audio(out: Mapping[str, Any]) -> dict[str, Any]:
    """``voice`` (text) and ``speed`` (finite number), kept only to echo them back."""
    kept: dict[str, Any] = {}
    if out.get("voice") is not None:
        kept["voice"] = client_text(
            _string(out["voice"], "session.audio.output.voice"), "session.audio.output.voice"
        )
    if out.get("speed") is not None:
        kept["speed"] = _number(out["speed"], "session.audio.output.speed")
    return kept


def _transcription(raw: object) -> dict[str, str]:
    """The transcription settings echoed back: their text fields only, checked."""
    param = "session.audio.input.transcription"
    kept: dict[str, str] = {}
    for key, value in _mapping(raw, param).items():
        if key in ("model", "language", "prompt") and value is not None:
            name = f"{param}.{key}"
            kept[key] = client_text(_string(value, name), name)
    return kept


def parse_context(value: object) -> dict[str, ContextValue]:
    """``sarsteer_context``: the policy context, with sarsteer.v1's ``turn.start`` rules.

    Strings, finite numbers and booleans only, bounded keys and values, text in NFC.
    """
    try:
        return turn_context({"context": value}, "")
    except ProtocolError as error:
        raise RealtimeError(
            "invalid_value", f"session.{error}", param="session.sarsteer_context"
        ) from None


#: Longest client id (event, item, response ids; ``model``): OpenAI's are 32 characters.
MAX_ID_CHARS = 128


def client_text(value: str, param: str, *, identifier: bool = False) -> str:
    """A client's string, checked by :func:`~..validation.clean_text` (NFC unless an id).

    Ids are also bounded (:data:`MAX_ID_CHARS`): they are kept per item and echoed.
    """
    if identifier and len(value) > MAX_ID_CHARS:
        raise RealtimeError(
            "invalid_value", f"{param} is longer than {MAX_ID_CHARS} characters", param=param
        )
    try:
        return clean_text(value, identifier=identifier)
    except ValueError as error:
        raise RealtimeError(
            "invalid_value", f"{param} {error}: send valid text", param=param
        ) from None


def optional_id(value: object, param: str) -> str | None:
    """An optional client id (``event_id``, ``item.id``...): None, or clean printable text."""
    if value is None:
        return None
    return client_text(_string(value, param), param, identifier=True)


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


def parse_turn_detection(value: object, max_turn_s: float) -> ServerVad | None:
    """``null``/``false`` (manual commit) or a ``server_vad`` object, valid for ``max_turn_s``.

    An explicit ``0`` is kept (``0`` ms of padding is a choice, not a missing value).
    """
    if value is None or value is False:
        return None
    param = "session.audio.input.turn_detection"
    td = _mapping(value, param)
    if td.get("type", "server_vad") != "server_vad":
        raise unsupported(f"turn detection {td.get('type')!r} (use server_vad or null)", param)
    d = ServerVad()
    vad = ServerVad(
        threshold=_number(td.get("threshold", d.threshold), f"{param}.threshold"),
        prefix_padding_ms=_ms(
            td.get("prefix_padding_ms", d.prefix_padding_ms), f"{param}.prefix_padding_ms"
        ),
        silence_duration_ms=_ms(
            td.get("silence_duration_ms", d.silence_duration_ms), f"{param}.silence_duration_ms"
        ),
        create_response=_flag(td.get("create_response", True), f"{param}.create_response"),
        interrupt_response=_flag(td.get("interrupt_response", True), f"{param}.interrupt_response"),
    )
    if not 0.0 <= vad.threshold <= 1.0:
        raise RealtimeError(
            "invalid_value", f"threshold must be 0..1, got {vad.threshold:g}", param=param
        )
    vad.segmenter(max_turn_s)  # validate now, against the server's turn limit
    return vad


def _number(value: object, param: str) -> float:
    """A finite JSON number (NaN, Infinity and 1e999 refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RealtimeError("invalid_value", f"{param} must be a number", param=param)
    if not is_finite_number(value):
        raise RealtimeError(
            "invalid_value", f"{param} must be a finite number, got {value}", param=param
        )
    return float(value)


def _ms(value: object, param: str) -> int:
    """A whole number of milliseconds, 0..60000 (never NaN, never 1e999)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 60_000:
        raise RealtimeError(
            "invalid_value", f"{param} must be an integer 0..60000, got {value!r}", param=param
        )
    return value


def _flag(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        raise RealtimeError("invalid_value", f"{param} must be true or false", param=param)
    return value


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
