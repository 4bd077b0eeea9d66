"""Store-specific exceptions, all inside the package's one hierarchy.

They subclass :mod:`sarsteer_guard.errors` classes so callers that catch
``VectorsError`` or ``StoreUnavailableError`` (the Guard, the CLI) handle them without
knowing about the store.
"""

from __future__ import annotations

from sarsteer_guard.errors import StoreUnavailableError, VectorsError


class VectorSetNotFound(VectorsError, KeyError):
    """No vector set is stored under the requested id.

    Also a ``KeyError`` so mapping-style callers can catch the miss they expect.
    """

    kind = "vectors_not_found"

    def __str__(self) -> str:
        # KeyError quotes its argument; keep the one-line message readable.
        return str(self.args[0]) if self.args else ""


class SigningKeyError(VectorsError):
    """The signing key is missing or unusable (bad encoding, too short, loose file permissions)."""

    kind = "signing_key"


class CreationWaitTimeout(StoreUnavailableError):
    """Waited too long for another replica to calibrate a missing vector set."""

    kind = "store_wait_timeout"
