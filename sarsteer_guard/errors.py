"""One exception hierarchy for the whole package.

Every message is one line that says what went wrong *and what to do next*, because
the people who read them (bot builders, trust-and-safety editors, compliance staff)
act on the message rather than on a traceback. The CLI prints ``str(error)`` and
exits with code 2; the Guard turns them into per-turn error events.
"""

from __future__ import annotations

#: Longest detail :func:`one_line` keeps: a library's message can be a whole config dump.
ONE_LINE_LIMIT = 300


def one_line(value: object, *, limit: int = ONE_LINE_LIMIT) -> str:
    """``value`` as one line: whitespace collapsed, cut to ``limit`` characters.

    For messages built from other libraries' errors (multi-line, sometimes huge) and for
    user-supplied names that must not break a log line. An exception with no message
    becomes its class name, so the result is never empty for an error.
    """
    text = " ".join(str(value).split())
    if not text and isinstance(value, BaseException):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GuardError(Exception):
    """Base class: a problem the user can fix; the message says how."""

    #: Short machine-readable kind, used in metrics labels and error events.
    kind: str = "error"


#: The one "no model given" message (Guard, adapters; the CLI adds its flag). There is no
#: default model: the old default was the random ``tiny``, which guards nothing.
MODEL_REQUIRED = (
    "no model given: pass model=<hub id or local directory> (e.g. "
    "Qwen/Qwen2-Audio-7B-Instruct), or to an adapter guard= or remote_url=; the built-in "
    "test models (tiny, tiny-planted) guard nothing and must be named explicitly"
)


class GuardOptionsError(GuardError, ValueError):
    """Options that contradict each other or are missing: a configuration error.

    A ValueError too, as the adapters documented.
    """

    kind = "config"


class AudioError(GuardError):
    """Audio that cannot be used: missing, empty, corrupt, unsupported format or rate."""

    kind = "audio"


class ManifestError(GuardError):
    """A calibration manifest line that cannot be used (message names file and line)."""

    kind = "manifest"


class ModelLoadError(GuardError):
    """A model that cannot be loaded or is of an unsupported class."""

    kind = "model"


class VectorsError(GuardError):
    """A steering-vector set that is unreadable or made for another model."""

    kind = "vectors"


class VectorIntegrityError(VectorsError):
    """A stored vector set whose signature or digest does not verify (tampered or truncated)."""

    kind = "integrity"


class PolicyError(GuardError):
    """An invalid policy file (message carries ``file:line:column``)."""

    kind = "policy"


class StoreUnavailableError(GuardError):
    """The vector store or audit backend cannot be reached right now."""

    kind = "store"


class AuditError(GuardError):
    """An audit log that cannot be written, read or verified."""

    kind = "audit"


class AuditChainError(AuditError):
    """The audit hash chain is broken: a record was edited, removed or reordered."""

    kind = "audit_chain"


class OverloadedError(GuardError):
    """The guard's queue is full; the turn was not accepted."""

    kind = "overloaded"
