"""The one error type of the realtime endpoint, and its wire form.

Codes are the OpenAI Realtime API's where one exists, so clients that special-case them
(Pipecat treats ``response_cancel_not_active`` and ``conversation_already_has_active_response``
as benign; LiveKit retries on ``input_audio_buffer_commit_empty``) keep working; the
guard's own codes start with ``sarsteer_`` or say ``unsupported_feature``.
"""

from __future__ import annotations

from typing import Any, Literal

ErrorType = Literal["invalid_request_error", "server_error"]


class RealtimeError(Exception):
    """A client event the endpoint cannot honour; answered with one ``error`` event.

    The connection stays open: the event is dropped and the session is unchanged.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        error_type: ErrorType = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id
        self.error_type = error_type

    def with_event_id(self, event_id: str | None) -> RealtimeError:
        """The same error naming the client event that caused it."""
        if self.event_id is None:
            self.event_id = event_id
        return self


def unsupported(what: str, param: str) -> RealtimeError:
    """The guard cannot do ``what`` (audio output, tools, ...): say so, never ignore it."""
    return RealtimeError(
        "unsupported_feature",
        f"sarsteer-guard does not support {what}: it answers speech with text only",
        param=param,
    )


def error_body(error: RealtimeError) -> dict[str, Any]:
    """The ``error`` object of an ``error`` event or a failed response."""
    return {
        "type": error.error_type,
        "code": error.code,
        "message": error.message,
        "param": error.param,
        "event_id": error.event_id,
    }
