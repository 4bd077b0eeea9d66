"""Run the review console in a background thread, for tests and benchmarks.

A real uvicorn server on a free loopback port, so browser tests go through the same
sockets, headers and cookies as production.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import uvicorn

from sarsteer_guard.audit.base import AuditLog
from sarsteer_guard.audit.record import AuditDraft, audio_sha256, encode_audio
from sarsteer_guard.console.app import create_app
from sarsteer_guard.console.settings import ConsoleSettings
from sarsteer_guard.console.web import Console
from sarsteer_guard.testing.audit import sample_draft


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ConsoleThread:
    """A started console: ``url`` (base URL), ``console`` (its state), ``stop()``."""

    def __init__(self, settings: ConsoleSettings, audit: AuditLog | None = None) -> None:
        self.settings = settings
        self.app = create_app(settings, audit)
        self.console: Console = self.app.state.console
        config = uvicorn.Config(
            self.app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="console", daemon=True)
        self.url = f"http://{settings.host}:{settings.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until the socket listens."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the console did not start in time")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop uvicorn (the lifespan closes the store); idempotent."""
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def console_in_thread(
    settings: ConsoleSettings, audit: AuditLog | None = None
) -> Iterator[ConsoleThread]:
    """Serve the console on a free loopback port for the duration of the block."""
    running = ConsoleThread(replace(settings, host="127.0.0.1", port=free_port()), audit)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def spoken_draft(said: str, answer: str, **fields: Any) -> AuditDraft:
    """A refused-turn draft whose kept audio is ``said`` spoken by espeak-ng (16 kHz FLAC).

    The audio is hashed the way the Guard hashes it (16-bit PCM), so the console's
    "matches the record's audio_sha256" check holds; ``fields`` override anything.
    """
    import io

    import soundfile as sf

    from sarsteer_guard.audio.pcm import float_to_pcm16
    from sarsteer_guard.testing.speech import synthesize

    audio = synthesize(said)
    buffer = io.BytesIO()
    sf.write(buffer, audio, 16000, format="FLAC", subtype="PCM_16")
    values: dict[str, Any] = {
        "response_text": answer,
        "served_text": answer,
        "audio": encode_audio(buffer.getvalue()),
        "audio_format": "flac",
        "audio_sha256": audio_sha256(float_to_pcm16(audio)),
    }
    values.update(fields)
    return sample_draft(**values)
