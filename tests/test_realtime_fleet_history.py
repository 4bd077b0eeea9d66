"""Session history in Redis: what one replica appends, another reads; same budgets as memory."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from sarsteer_guard.guard.conversation import ConversationStore
from sarsteer_guard.guard.history_redis import RedisConversationStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except redis.RedisError:
        return False


pytestmark = pytest.mark.skipif(not redis_up(), reason=f"no Redis at {REDIS_URL}")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix unique to the test; its keys are deleted afterwards (never a flush)."""
    value = f"test:history:{uuid.uuid4().hex}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{value}*"):
        client.delete(key)


def replica(prefix: str, **budgets: float) -> RedisConversationStore:
    return RedisConversationStore(REDIS_URL, prefix=prefix, **budgets)  # type: ignore[arg-type]


def audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 0.5, int(seconds * 16000)).astype(np.float32)


@pytest.mark.parametrize(
    ("budgets", "turns"),
    [
        ({"max_exchanges": 3}, [0.5] * 5),  # the count budget
        ({"max_tokens": 120}, [1.0, 2.0, 1.5, 0.5, 3.0]),  # the token budget (25 tok/s audio)
        ({"max_exchanges": 0}, [0.5, 0.5]),  # history off
        ({"max_session_bytes": 200_000}, [1.0, 2.0, 0.5, 1.5]),  # the per-session bytes
        ({"max_bytes": 150_000}, [1.0, 1.5, 0.5, 0.2]),  # a session never exceeds the total
    ],
)
def test_same_budgets_as_the_memory_store(
    prefix: str, budgets: dict[str, int], turns: list[float]
) -> None:
    memory = ConversationStore(**budgets)
    shared = replica(prefix, **budgets)
    for n, seconds in enumerate(turns):
        memory.append("s", audio(seconds, n), 16000, f"reply {n}")
        shared.append("s", audio(seconds, n), 16000, f"reply {n}")
        expected = [i.text for i in memory.history("s") if i.role == "assistant"]
        assert [i.text for i in shared.history("s") if i.role == "assistant"] == expected


def test_one_replica_appends_another_reads_and_forgets(prefix: str) -> None:
    a, b = replica(prefix), replica(prefix)
    clip = audio(1.2, seed=7)
    a.append("call-1", clip, 16000, "Sure, here are the steps.")
    history = b.history("call-1")
    assert [i.role for i in history] == ["user", "assistant"]
    assert history[1].text == "Sure, here are the steps."
    assert history[0].sample_rate == 16000
    np.testing.assert_allclose(history[0].audio, clip, atol=1 / 32767 + 1e-6)  # int16 exact
    assert b.history("another-call") == []
    b.forget("call-1")
    assert a.history("call-1") == []


def test_idle_sessions_expire(prefix: str) -> None:
    store = replica(prefix, idle_expiry_s=0.3)
    store.append("s", audio(0.2), 16000, "hi")
    assert len(store) == 1
    time.sleep(0.5)
    assert store.history("s") == []
    assert len(store) == 0


def test_concurrent_appends_from_two_replicas_lose_nothing(prefix: str) -> None:
    stores = [replica(prefix, max_exchanges=64), replica(prefix, max_exchanges=64)]

    def worker(n: int) -> None:
        for k in range(10):
            stores[n].append("s", audio(0.05), 16000, f"{n}-{k}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    replies = [i.text for i in stores[0].history("s") if i.role == "assistant"]
    assert sorted(replies) == sorted(f"{n}-{k}" for n in (0, 1) for k in range(10))
    for n in (0, 1):  # each replica's own appends stay in order
        mine = [r for r in replies if r.startswith(f"{n}-")]
        assert mine == [f"{n}-{k}" for k in range(10)]


def test_an_unreachable_redis_costs_the_history_not_the_turn() -> None:
    from sarsteer_guard.server.testing import free_port

    store = RedisConversationStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5)
    started = time.monotonic()
    store.append("s", audio(0.2), 16000, "hi")  # dropped, logged, not raised
    assert store.history("s") == []
    store.forget("s")
    assert time.monotonic() - started < 3.0


def test_a_foreign_element_is_skipped_logged_and_trimmed(prefix: str) -> None:
    from structlog.testing import capture_logs

    store = replica(prefix)
    store.append("s", audio(0.2), 16000, "first")
    client = redis.Redis.from_url(REDIS_URL)
    client.lpush(f"{prefix}x:s", b"not json\n\x00")  # written by something else
    client.lpush(f"{prefix}m:s", b"garbage")
    with capture_logs() as logs:
        texts = [i.text for i in store.history("s") if i.role == "assistant"]
        store.append("s", audio(0.2), 16000, "second")
    assert texts == ["first"]
    assert "history.bad_element" in [entry["event"] for entry in logs]
    # the unparseable size list made every held exchange oversize: only the new one stays
    assert [i.text for i in store.history("s") if i.role == "assistant"] == ["second"]


def test_appends_read_sizes_not_audio(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = replica(prefix)
    store.append("s", audio(1.0), 16000, "one")
    seen: list[tuple[object, ...]] = []
    execute = redis.client.Pipeline.execute_command

    def spy(self: redis.client.Pipeline, *args: object, **kwargs: object) -> object:
        seen.append(args)
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute_command", spy)
    store.append("s", audio(1.0), 16000, "two")
    reads = [args for args in seen if args[0] == "LRANGE"]
    assert reads
    assert all(str(args[1]).startswith(f"{prefix}m:") for args in reads)


def test_sessions_beyond_the_cap_are_evicted_least_recently_used_first(prefix: str) -> None:
    store = replica(prefix, max_sessions=2)
    for session in ("a", "b"):
        store.append(session, audio(0.1), 16000, session)
    store.history("a")
    store.append("a", audio(0.1), 16000, "a again")  # a is now the most recent
    store.append("c", audio(0.1), 16000, "c")
    assert len(store) == 2
    assert store.history("b") == []
    assert [i.text for i in store.history("a") if i.role == "assistant"] == ["a", "a again"]
    assert store.history("c") != []


def test_len_is_answered_without_a_key_scan(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = replica(prefix)
    store.append("s", audio(0.1), 16000, "hi")

    def no_scan(*_: object, **__: object) -> object:
        raise AssertionError("len() scanned the keyspace")

    monkeypatch.setattr(store._redis, "scan_iter", no_scan)
    assert len(store) == 1
