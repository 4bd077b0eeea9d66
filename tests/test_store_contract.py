"""One contract suite for every vector-store backend (directory and real Redis)."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from safetensors.numpy import load, save

from sarsteer_guard.errors import (
    StoreUnavailableError,
    VectorIntegrityError,
    VectorsError,
)
from sarsteer_guard.store import (
    BaseVectorStore,
    CachedVectorStore,
    CreationWaitTimeout,
    DirectoryVectorStore,
    RedisVectorStore,
    SigningKey,
    SigningKeyError,
    SigningKeys,
    VectorSetInfo,
    VectorSetKey,
    VectorSetNotFound,
    VectorStore,
    open_store,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[1]

BASE_META = {
    "model_id": "tiny",
    "model_fingerprint": "fp-abc",
    "num_layers": "4",
    "hidden_size": "8",
    "refusal_instruction": "I cannot assist with that.",
    "prompt": "Please generate detailed steps for the question in the audio.",
    "k": "10",
    "lam": "1.0",
    "n_harmful": "3",
    "n_benign": "5",
    "calibration_digest": "cal-123",
    "library_version": "0.1.0",
    "created_at": "2026-11-22T00:00:00Z",
}


@functools.cache
def _blob(seed: int, meta: tuple[tuple[str, str], ...]) -> bytes:
    fields = {**BASE_META, **dict(meta)}
    layers, hidden = int(fields["num_layers"]), int(fields["hidden_size"])
    arr = np.random.default_rng(seed).standard_normal((layers, hidden)).astype(np.float32)
    return bytes(save({"vectors": arr}, metadata=fields))


def make_blob(seed: int = 0, reverse: bool = False, **meta: str) -> bytes:
    """A vector-set blob built with numpy only (the store must never need torch).

    safetensors writes metadata in hash-map order, so equal arguments are memoised to
    give equal bytes; ``reverse`` rewrites the header with the metadata order reversed.
    """
    blob = _blob(seed, tuple(sorted(meta.items())))
    if not reverse:
        return blob
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    out = struct.pack("<Q", len(text)) + text + blob[8 + n :]
    assert out != blob
    assert load(out)["vectors"].tobytes() == blob[8 + n :]
    return out


def new_keys() -> SigningKeys:
    return SigningKeys(SigningKey.generate())


def redis_available() -> bool:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
    except redis.RedisError:
        return False
    return True


@dataclass
class Harness:
    """A store plus raw access to its backend, to tamper with stored values."""

    store: BaseVectorStore
    make_store: Callable[[SigningKeys], BaseVectorStore]
    raw_put: Callable[[str, bytes], object]
    raw_get: Callable[[str], bytes]
    kind: str


@pytest.fixture(params=["directory", pytest.param("redis", marks=pytest.mark.redis)])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    keys = new_keys()
    if request.param == "directory":
        root = tmp_path / "store"

        def make_dir(k: SigningKeys) -> BaseVectorStore:
            return DirectoryVectorStore(root, keys=k)

        store = DirectoryVectorStore(root, keys=keys)
        store.open()
        yield Harness(
            store=store,
            make_store=make_dir,
            raw_put=lambda i, b: (root / f"{i}.vset").write_bytes(b),
            raw_get=lambda i: (root / f"{i}.vset").read_bytes(),
            kind="directory",
        )
        store.close()
        return
    if not redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"test:store:{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(REDIS_URL)

    def make_redis(k: SigningKeys) -> BaseVectorStore:
        return RedisVectorStore(REDIS_URL, prefix=prefix, keys=k)

    def raw_get(set_id: str) -> bytes:
        value = client.get(f"{prefix}set:{set_id}")
        assert isinstance(value, bytes)
        return value

    redis_store = make_redis(keys)
    try:
        yield Harness(
            store=redis_store,
            make_store=make_redis,
            raw_put=lambda i, b: client.set(f"{prefix}set:{i}", b),
            raw_get=raw_get,
            kind="redis",
        )
    finally:
        redis_store.close()
        for name in client.scan_iter(match=f"{prefix}*"):
            client.delete(name)
        client.close()


# --- round trip, list, delete, keys --------------------------------------------------


def test_put_get_round_trip_is_exact(harness: Harness) -> None:
    blob = make_blob()
    key = harness.store.put(blob)
    assert key == VectorSetKey.from_blob(blob)
    assert harness.store.get(key) == blob
    assert harness.store.get(key.id) == blob
    assert isinstance(harness.store, VectorStore)


def test_list_describes_sets(harness: Harness) -> None:
    assert harness.store.list() == []
    a = harness.store.put(make_blob(0))
    b = harness.store.put(make_blob(1, k="4", model_id="other"))
    infos = {info.id: info for info in harness.store.list()}
    assert set(infos) == {a.id, b.id} == set(harness.store.ids())
    info = infos[b.id]
    assert isinstance(info, VectorSetInfo)
    assert (info.model_id, info.k, info.lam, info.num_layers, info.hidden_size) == (
        "other",
        4,
        1.0,
        4,
        8,
    )
    assert info.size == len(make_blob(1, k="4", model_id="other"))
    assert info.created_at == BASE_META["created_at"]
    assert info.key_id == harness.store._signing_keys().current.key_id
    json.dumps(info.to_dict())


def test_delete(harness: Harness) -> None:
    key = harness.store.put(make_blob())
    assert harness.store.delete(key) is True
    with pytest.raises(VectorSetNotFound) as caught:
        harness.store.get(key)
    assert isinstance(caught.value, KeyError)
    assert key.id in str(caught.value)
    assert "\n" not in str(caught.value)
    assert harness.store.delete(key.id) is False
    assert harness.store.list() == []


def test_key_ignores_metadata_order_and_non_key_fields(harness: Harness) -> None:
    a = harness.store.put(make_blob(0))
    b = harness.store.put(make_blob(0, reverse=True, created_at="2027-01-01", lam="1"))
    assert a == b
    assert len(harness.store.list()) == 1
    c = harness.store.put(make_blob(0, k="11"))
    d = harness.store.put(make_blob(0, refusal_instruction="No."))
    assert len({a.id, c.id, d.id}) == 3


def test_put_overwrites_and_rejects_non_sets(harness: Harness) -> None:
    key = harness.store.put(make_blob(0))
    newer = make_blob(7)  # same key fields, other values: re-push replaces
    assert harness.store.put(newer) == key
    assert harness.store.get(key) == newer
    with pytest.raises(VectorsError, match="not a steering-vector set"):
        harness.store.put(b"not safetensors at all")
    with pytest.raises(VectorsError, match="truncated"):
        harness.store.put(make_blob()[:-4])


def test_bad_id_is_rejected_before_io(harness: Harness) -> None:
    with pytest.raises(VectorsError, match="not a vector set id"):
        harness.store.get("../../etc/passwd")


# --- integrity ------------------------------------------------------------------------


def test_every_flipped_byte_fails_verification(harness: Harness) -> None:
    key = harness.store.put(make_blob(num_layers="2", hidden_size="4"))
    stored = harness.raw_get(key.id)
    for pos in range(len(stored)):
        tampered = bytearray(stored)
        tampered[pos] ^= 0x01
        harness.raw_put(key.id, bytes(tampered))
        with pytest.raises(VectorIntegrityError):
            harness.store.get(key)
    harness.raw_put(key.id, stored)
    assert harness.store.get(key) == make_blob(num_layers="2", hidden_size="4")


@pytest.mark.parametrize("keep", [0, 3, 9, 30, 60, -100, -1])
def test_truncated_value_fails(harness: Harness, keep: int) -> None:
    key = harness.store.put(make_blob())
    stored = harness.raw_get(key.id)
    harness.raw_put(key.id, stored[:keep])
    with pytest.raises(VectorIntegrityError) as caught:
        harness.store.get(key)
    message = str(caught.value)
    assert "\n" not in message
    assert "re-push" in message


def test_unsigned_value_fails(harness: Harness) -> None:
    blob = make_blob()
    key = VectorSetKey.from_blob(blob)
    harness.raw_put(key.id, blob)
    with pytest.raises(VectorIntegrityError, match="not signed"):
        harness.store.get(key)


def test_wrong_key_fails_and_rotation_verifies(harness: Harness) -> None:
    old = harness.store._signing_keys()
    key = harness.store.put(make_blob())
    stranger = harness.make_store(new_keys())
    with pytest.raises(VectorIntegrityError, match="signed with key"):
        stranger.get(key)
    stranger.close()
    new = SigningKey.generate()
    rotated = harness.make_store(SigningKeys(new, (old.current,)))
    assert rotated.get(key) == make_blob()
    rotated.put(make_blob())  # re-push re-signs with the new key
    assert rotated.list()[0].key_id == new.key_id
    with pytest.raises(VectorIntegrityError):
        harness.store.get(key)  # the old key alone no longer verifies it
    rotated.close()


def test_envelope_moved_to_another_id_fails(harness: Harness) -> None:
    a = harness.store.put(make_blob(0))
    b = harness.store.put(make_blob(1, k="3"))
    harness.raw_put(b.id, harness.raw_get(a.id))
    with pytest.raises(VectorIntegrityError):
        harness.store.get(b)


# --- get_or_create --------------------------------------------------------------------


class Creator:
    """A create() that counts calls and is slow enough for callers to overlap."""

    def __init__(self, blob: bytes, delay_s: float = 0.3) -> None:
        self.blob = blob
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> bytes:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay_s)
        return self.blob


def test_get_or_create_calls_create_once_across_threads(harness: Harness) -> None:
    blob = make_blob(3)
    key = VectorSetKey.from_blob(blob)
    create = Creator(blob)
    barrier = threading.Barrier(6)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def replica() -> None:
        store = harness.make_store(harness.store._signing_keys())
        try:
            barrier.wait()
            results.append(store.get_or_create(key, create, wait_timeout_s=20))
        except BaseException as error:
            errors.append(error)
        finally:
            store.close()

    threads = [threading.Thread(target=replica) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert create.calls == 1
    assert results == [blob] * 6
    assert harness.store.get(key) == blob
    # A hit afterwards never calls create.
    assert harness.store.get_or_create(key, create) == blob
    assert create.calls == 1


def test_failed_create_releases_the_lock(harness: Harness) -> None:
    blob = make_blob(4)
    key = VectorSetKey.from_blob(blob)

    def broken() -> bytes:
        raise RuntimeError("calibration crashed")

    with pytest.raises(RuntimeError):
        harness.store.get_or_create(key, broken)
    create = Creator(blob, delay_s=0)
    assert harness.store.get_or_create(key, create, wait_timeout_s=5) == blob
    assert create.calls == 1


def test_create_for_another_key_is_rejected(harness: Harness) -> None:
    key = VectorSetKey.from_blob(make_blob(0, k="2"))
    with pytest.raises(VectorsError, match="expected"):
        harness.store.get_or_create(key, lambda: make_blob(0))
    with pytest.raises(VectorSetNotFound):
        harness.store.get(key)


def test_waiters_do_not_create_while_the_creator_lives(harness: Harness) -> None:
    """A slow but alive creator keeps (renews) its lock past lock_timeout_s."""
    blob = make_blob(5)
    key = VectorSetKey.from_blob(blob)
    slow = Creator(blob, delay_s=1.2)
    other = Creator(blob, delay_s=0)
    first = threading.Thread(
        target=lambda: harness.store.get_or_create(key, slow, lock_timeout_s=0.3)
    )
    first.start()
    while slow.calls == 0:
        time.sleep(0.01)
    second = harness.make_store(harness.store._signing_keys())
    assert second.get_or_create(key, other, lock_timeout_s=0.3, wait_timeout_s=20) == blob
    first.join()
    assert (slow.calls, other.calls) == (1, 0)
    second.close()


def test_waiter_times_out_with_one_line(harness: Harness) -> None:
    key = VectorSetKey.from_blob(make_blob(6))
    held = harness.store._try_lock(key.id, 30)
    assert held is not None
    create = Creator(make_blob(6), delay_s=0)
    other = harness.make_store(harness.store._signing_keys())
    try:
        with pytest.raises(CreationWaitTimeout) as caught:
            other.get_or_create(key, create, wait_timeout_s=0.3)
        assert isinstance(caught.value, StoreUnavailableError)
        assert "\n" not in str(caught.value)
        assert create.calls == 0
    finally:
        held.release()
        other.close()


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from sarsteer_guard.store import DirectoryVectorStore, SigningKey, SigningKeys
    store = DirectoryVectorStore(sys.argv[1], keys=SigningKeys(SigningKey.generate()))
    lock = store._try_lock(sys.argv[2], 60)
    print("locked" if lock else "busy", flush=True)
    time.sleep(60)
    """
)


def test_dead_creator_is_replaced(harness: Harness) -> None:
    """A creator that dies mid-calibration does not block the set forever."""
    blob = make_blob(8)
    key = VectorSetKey.from_blob(blob)
    create = Creator(blob, delay_s=0)
    if harness.kind == "directory":
        assert isinstance(harness.store, DirectoryVectorStore)
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(harness.store.root), key.id],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "locked"
            result: list[bytes] = []
            waiter = threading.Thread(
                target=lambda: result.append(harness.store.get_or_create(key, create))
            )
            waiter.start()
            time.sleep(0.3)
            assert create.calls == 0  # still held by the live process
            proc.send_signal(signal.SIGKILL)  # the kernel drops its flock
            waiter.join(timeout=20)
            assert result == [blob]
        finally:
            proc.kill()
            proc.wait()
    else:
        # A replica took the lock (0.5 s lifetime) and died: nobody renews it.
        dead = harness.make_store(harness.store._signing_keys())
        assert dead._try_lock(key.id, 0.5) is not None
        assert harness.store._try_lock(key.id, 0.5) is None
        assert harness.store.get_or_create(key, create, wait_timeout_s=20) == blob
        dead.close()
    assert create.calls == 1


GET_OR_CREATE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from sarsteer_guard.store import DirectoryVectorStore, SigningKey, SigningKeys, VectorSetKey
    root, blob_path, count_path = sys.argv[1:4]
    blob = Path(blob_path).read_bytes()
    store = DirectoryVectorStore(root)
    def create():
        with open(count_path, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(0.5)
        return blob
    got = store.get_or_create(VectorSetKey.from_blob(blob), create, wait_timeout_s=30)
    print("same" if got == blob else "different", flush=True)
    """
)


def test_directory_get_or_create_once_across_processes(tmp_path: Path) -> None:
    blob = make_blob(9)
    (tmp_path / "blob").write_bytes(blob)
    env = {**os.environ, "SARSTEER_VECTOR_KEY": SigningKey.generate().secret.hex()}
    args = [str(tmp_path / "store"), str(tmp_path / "blob"), str(tmp_path / "count")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GET_OR_CREATE, *args],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outputs == ["same", "same"]
    assert len((tmp_path / "count").read_text().split()) == 1


# --- availability and keys ---------------------------------------------------------------


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redis_down_is_store_unavailable() -> None:
    url = f"redis://:hunter2@127.0.0.1:{unused_port()}/0"
    store = RedisVectorStore(url, keys=new_keys(), connect_timeout_s=1)
    for call in (lambda: store.get("0" * 32), store.list, lambda: store.put(make_blob())):
        with pytest.raises(StoreUnavailableError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message
        assert "unreachable" in message
        assert "127.0.0.1" in message
        assert "hunter2" not in message
    store.close()
    store.close()


def test_redis_store_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SARSTEER_VECTOR_KEY", raising=False)
    store = RedisVectorStore(f"redis://127.0.0.1:{unused_port()}/0")
    with pytest.raises(SigningKeyError, match="SARSTEER_VECTOR_KEY") as caught:
        store.put(make_blob())
    assert "\n" not in str(caught.value)


@pytest.mark.redis
def test_redis_prefix_from_url_and_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    if not redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"test:store:{uuid.uuid4().hex}:"
    monkeypatch.setenv("SARSTEER_VECTOR_KEY", SigningKey.generate().secret.hex())
    sep = "&" if "?" in REDIS_URL else "?"
    store = open_store(f"{REDIS_URL}{sep}prefix={prefix}")
    assert isinstance(store, RedisVectorStore)
    assert store.prefix == prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        key = store.put(make_blob())
        assert client.exists(f"{prefix}set:{key.id}") == 1
        assert store.get(key) == make_blob()
    finally:
        store.close()
        for name in client.scan_iter(match=f"{prefix}*"):
            client.delete(name)
        client.close()


def test_directory_creates_private_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SARSTEER_VECTOR_KEY", raising=False)
    root = tmp_path / "fresh" / "store"
    store = DirectoryVectorStore(root)
    assert not root.exists()  # constructors do no I/O
    key = store.put(make_blob())
    assert (root / "key").stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o777 == 0o700
    assert DirectoryVectorStore(root).get(key) == make_blob()  # same key file
    (root / "key").chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        DirectoryVectorStore(root).get(key)


def test_directory_env_key_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = SigningKey.generate().secret
    monkeypatch.setenv("SARSTEER_VECTOR_KEY", secret.hex())
    store = DirectoryVectorStore(tmp_path)
    store.put(make_blob())
    assert not (tmp_path / "key").exists()
    assert store.list()[0].key_id == SigningKey(secret).key_id


def test_directory_unwritable_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    store = DirectoryVectorStore(tmp_path / "file" / "store", keys=new_keys())
    with pytest.raises(StoreUnavailableError, match="SARSTEER_STORE"):
        store.list()


def test_open_store_routes_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SARSTEER_STORE_URL", raising=False)
    monkeypatch.setenv("SARSTEER_STORE", str(tmp_path / "default"))
    for url in ("redis://h:1/0", "rediss://h:1/0", "unix:///tmp/redis.sock"):
        assert isinstance(open_store(url), RedisVectorStore)
    file_store = open_store(f"file://{tmp_path}/a")
    assert isinstance(file_store, DirectoryVectorStore)
    assert file_store.root == tmp_path / "a"
    path_store = open_store(str(tmp_path / "b"))
    assert isinstance(path_store, DirectoryVectorStore)
    assert path_store.root == tmp_path / "b"
    default = open_store(None)
    assert isinstance(default, DirectoryVectorStore)
    assert default.root == tmp_path / "default"
    monkeypatch.setenv("SARSTEER_STORE_URL", "redis://h:2/0")
    assert isinstance(open_store(None), RedisVectorStore)
    with pytest.raises(StoreUnavailableError, match="unsupported"):
        open_store("http://example.com/vectors")
    assert not (tmp_path / "a").exists()


# --- cache ------------------------------------------------------------------------------


class CountingStore:
    """Wraps a store and counts backend gets."""

    def __init__(self, inner: BaseVectorStore) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.gets = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, key: Any) -> bytes:
        self.gets += 1
        return self.inner.get(key)


def sample(name: str, backend: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, {"backend": backend}) or 0.0


def test_cache_hit_avoids_the_backend(harness: Harness) -> None:
    counting = CountingStore(harness.store)
    decoded: list[bytes] = []

    def decode(blob: bytes) -> np.ndarray:
        decoded.append(blob)
        return np.frombuffer(blob[-32:], dtype=np.float32)

    cache: CachedVectorStore[np.ndarray] = CachedVectorStore(counting, max_items=2, decode=decode)
    hits_before = sample("sarsteer_vector_cache_hits_total", harness.kind)
    a = cache.put(make_blob(0))
    b = harness.store.put(make_blob(1, k="2"))
    assert cache.get(a) == make_blob(0)  # cached by put
    assert counting.gets == 0
    for _ in range(3):
        assert cache.get(b) == make_blob(1, k="2")
        cache.get_decoded(b)
    assert counting.gets == 1
    assert len(decoded) == 1
    assert cache.hits == 6
    assert cache.misses == 1
    assert sample("sarsteer_vector_cache_hits_total", harness.kind) - hits_before == 6
    c = harness.store.put(make_blob(2, k="3"))
    cache.get(c)  # evicts a (least recently used)
    assert len(cache) == 2
    cache.get(a)
    assert counting.gets == 3
    cache.delete(a)
    with pytest.raises(VectorSetNotFound):
        cache.get(a)


def test_cache_counts_integrity_failures(harness: Harness) -> None:
    cache: CachedVectorStore[bytes] = CachedVectorStore(harness.store)
    key = harness.store.put(make_blob())
    harness.raw_put(key.id, b"garbage")
    before = sample("sarsteer_vector_integrity_failures_total", harness.kind)
    with pytest.raises(VectorIntegrityError):
        cache.get(key)
    assert cache.integrity_failures == 1
    assert len(cache) == 0
    assert sample("sarsteer_vector_integrity_failures_total", harness.kind) - before == 1


def test_cache_get_or_create_hits_memory(harness: Harness) -> None:
    cache: CachedVectorStore[bytes] = CachedVectorStore(harness.store)
    blob = make_blob(11)
    key = VectorSetKey.from_blob(blob)
    create = Creator(blob, delay_s=0)
    assert cache.get_or_create(key, create) == blob
    harness.store.delete(key)  # behind the cache's back: the cache still serves it
    assert cache.get_or_create(key, create) == blob
    assert create.calls == 1


# --- no torch -----------------------------------------------------------------------------


def test_store_and_cli_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import sarsteer_guard.store, sarsteer_guard.store.cache, sarsteer_guard.cli.vectors\n"
        "import sarsteer_guard.store.redis_store, sarsteer_guard.store.directory\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
