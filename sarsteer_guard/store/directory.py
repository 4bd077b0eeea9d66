"""Embedded vector store: one signed file per set in a local directory.

The default when no Redis URL is configured, so a laptop or a single-host deployment
needs nothing running. Layout::

    <root>/                 created 0700
      <id>.vset             signed envelope (see ``signing``), replaced atomically
      locks/<id>.lock       flock(2) files for get_or_create across processes
      key                   0600, only when SARSTEER_VECTOR_KEY is unset

Keys: ``SARSTEER_VECTOR_KEY`` when set; otherwise a random key generated once into
``<root>/key`` (mode 0600, refused if others can read it). That keeps a fresh machine
working with no setup while files edited by other users, or corrupted on disk, still
fail verification. Whoever can read the key file can forge sets, so set the variable
for shared or production hosts.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import os
import secrets
import threading
from pathlib import Path

from sarsteer_guard.errors import StoreUnavailableError
from sarsteer_guard.store.base import BaseVectorStore, CreationLock, VectorSetInfo
from sarsteer_guard.store.keys import is_set_id
from sarsteer_guard.store.signing import SigningKeys, load_or_create_key_file

ENV_STORE = "SARSTEER_STORE"
SUFFIX = ".vset"


def default_store_path() -> Path:
    """``$SARSTEER_STORE`` or ``~/.cache/sarsteer-guard/vectors``."""
    configured = os.environ.get(ENV_STORE, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path("~/.cache/sarsteer-guard/vectors").expanduser()


class _FileLock(CreationLock):
    """An flock(2) lock on an open lock file.

    flock belongs to the open file description, so it also excludes other threads of
    this process, and the kernel drops it when the process dies.
    """

    expires = False

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


class DirectoryVectorStore(BaseVectorStore):
    """Vector sets as signed files under ``root`` (no I/O until first use).

    Args:
        root: Store directory; default :func:`default_store_path`.
        keys: Signing keys; default from the environment, else the store's key file.
    """

    backend = "directory"

    def __init__(
        self, root: str | os.PathLike[str] | None = None, *, keys: SigningKeys | None = None
    ):
        self.root = Path(root).expanduser() if root is not None else default_store_path()
        self._given_keys = keys
        self._keys: SigningKeys | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        """Where the store lives."""
        return f"directory store {self.root}"

    def _unavailable(self, error: OSError) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"vector store directory {self.root} is unusable ({error.strerror or error}): "
            f"fix its permissions or set {ENV_STORE} to another directory"
        )

    def open(self) -> None:
        """Create the directory (0700) and resolve the signing keys; idempotent."""
        self._open()

    def _open(self) -> SigningKeys:
        with self._lock:
            if self._keys is not None:
                return self._keys
            try:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                (self.root / "locks").mkdir(mode=0o700, exist_ok=True)
            except OSError as error:
                raise self._unavailable(error) from None
            keys = self._given_keys or SigningKeys.from_env()
            if keys is None:
                try:
                    keys = SigningKeys(load_or_create_key_file(self.root / "key"))
                except OSError as error:
                    raise self._unavailable(error) from None
            self._keys = keys
            return keys

    def close(self) -> None:
        """Nothing is held between calls; forget resolved keys so a reopen rereads them."""
        with self._lock:
            self._keys = None

    def _signing_keys(self) -> SigningKeys:
        return self._open()

    def _path(self, set_id: str) -> Path:
        return self.root / f"{set_id}{SUFFIX}"

    def _read(self, set_id: str) -> bytes | None:
        self.open()
        try:
            return self._path(set_id).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._unavailable(error) from None

    def _write(self, set_id: str, envelope: bytes, info: VectorSetInfo) -> None:
        self.open()
        final = self._path(set_id)
        tmp = self.root / f".{set_id}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(envelope)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            self._fsync_dir()
        except OSError as error:
            raise self._unavailable(error) from None

    def _fsync_dir(self) -> None:
        # Makes the rename durable across a crash; some filesystems refuse, harmlessly.
        try:
            dir_fd = os.open(self.root, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.EBADF):
                raise
        finally:
            os.close(dir_fd)

    def _remove(self, set_id: str) -> bool:
        self.open()
        try:
            self._path(set_id).unlink()
        except FileNotFoundError:
            return False
        except OSError as error:
            raise self._unavailable(error) from None
        self._fsync_dir()
        return True

    def _ids(self) -> builtins.list[str]:
        self.open()
        try:
            names = os.listdir(self.root)
        except OSError as error:
            raise self._unavailable(error) from None
        return [
            name[: -len(SUFFIX)]
            for name in names
            if name.endswith(SUFFIX) and is_set_id(name[: -len(SUFFIX)])
        ]

    def _try_lock(self, set_id: str, lock_timeout_s: float) -> CreationLock | None:
        # lock_timeout_s is not needed: the kernel releases a dead process's flock.
        self.open()
        try:
            fd = os.open(self.root / "locks" / f"{set_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise self._unavailable(error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as error:
            os.close(fd)
            raise self._unavailable(error) from None
        return _FileLock(fd)
