"""Server memory for open turns of high-rate audio, and whether it comes back (issue 10 item 9).

One process: a real uvicorn server in a thread (a model-free guard that keeps nothing, so
only the server's own buffering shows) and one WebSocket client that opens ``--turns``
turns on one connection, sends ``--seconds`` of audio to each without ending them, then
ends them all. Two formats in the same run: 16 kHz mono int16 (what the model takes) and
384 kHz stereo float32 (the largest a client may declare, 96x the bytes per second).

Reported per format: bytes sent, bytes the server holds (its audio budget), the process's
RSS growth while the turns are open and after they ended, and same-run ratios
(high-rate / 16 kHz). Before the fix the server held what the client declared (a ratio of
about 96 in held bytes; 12 turns of 30 s took +992 MiB that did not come back).

Run: .venv/bin/python bench/bench_server_audio_memory.py [--turns 12] [--seconds 10]
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, emit, machine_info, quiet_logs, ratio

from sarsteer_guard.guard.events import GuardEvent, Turn
from sarsteer_guard.log import configure_logging
from sarsteer_guard.server.protocol import encode_audio_frame
from sarsteer_guard.server.settings import ServerSettings
from sarsteer_guard.server.testing import ServerThread, serve_in_thread
from sarsteer_guard.testing.scripted import ScriptedGuard

MIB = 1 << 20
HIGH = "384k_stereo_float32"
FORMATS = {
    "16k_mono_int16": {"sample_rate": 16_000, "channels": 1, "format": "int16"},
    "384k_stereo_float32": {"sample_rate": 384_000, "channels": 2, "format": "float32"},
}


class ForgetfulGuard(ScriptedGuard):
    """The scripted guard, minus its record of turns (it would hold every turn's audio)."""

    async def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
        """Answer like ScriptedGuard, then drop the turn."""
        async for event in super().respond(turn):
            yield event
        self.turns.clear()


def rss_mib() -> float:
    """Resident set size of this process, in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tone(fmt: dict[str, Any], seconds: float) -> bytes:
    """A 440 Hz tone in ``fmt``, as the wire PCM."""
    rate, channels = fmt["sample_rate"], fmt["channels"]
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    frames = np.repeat(mono[:, None], channels, axis=1)
    if fmt["format"] == "int16":
        return (frames * 32767).astype("<i2").tobytes()
    return frames.astype("<f4").tobytes()


async def until(ws: ClientConnection, check: Any) -> list[dict[str, Any]]:
    """Messages received until ``check(message)`` is true for one."""
    seen = []
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 120))
        seen.append(message)
        if check(message):
            return seen


async def one_format(
    server: ServerThread, name: str, pcm: bytes, turns: int, chunk: int, baseline: float
) -> dict[str, Any]:
    """Open ``turns`` turns of ``pcm``, measure, end them, measure again."""
    fmt = FORMATS[name]
    async with connect(server.url, compression=None, max_size=None) as ws:
        await ws.recv()  # hello
        began = time.perf_counter()
        for i in range(turns):
            await ws.send(json.dumps({"type": "turn.start", "turn_id": f"{name}-{i}", **fmt}))
            for offset in range(0, len(pcm), chunk):
                await ws.send(encode_audio_frame(f"{name}-{i}", pcm[offset : offset + chunk]))
        # An error for an unknown turn: the server has read everything sent before it.
        await ws.send(json.dumps({"type": "turn.end", "turn_id": "fence"}))
        await until(ws, lambda m: m.get("type") == "error" and m.get("turn_id") is None)
        send_s = time.perf_counter() - began
        held = _held(server)
        rss_open = rss_mib()
        for i in range(turns):
            await ws.send(json.dumps({"type": "turn.end", "turn_id": f"{name}-{i}"}))
        finals = await _finals(ws, turns)
    await asyncio.sleep(0.2)
    gc.collect()
    return {
        "sent_mib": round(turns * len(pcm) / MIB, 1),
        "held_mib": None if held is None else round(held / MIB, 2),
        "held_after_end_bytes": _held(server),
        "rss_growth_open_mib": round(rss_open - baseline, 1),
        "rss_growth_after_end_mib": round(rss_mib() - baseline, 1),
        "decisions": finals,
        "send_s": round(send_s, 2),
    }


def _held(server: ServerThread) -> int | None:
    """Bytes of audio the server holds (None on a server without audio budgets)."""
    budget = getattr(server.service, "audio_budget", None)
    return None if budget is None else int(budget.used)


async def _finals(ws: ClientConnection, turns: int) -> int:
    decisions = 0
    for _ in range(turns):
        messages = await until(ws, lambda m: m.get("type") in ("decision", "error", "cancelled"))
        decisions += messages[-1]["type"] == "decision"
    return decisions


async def run(turns: int, seconds: float) -> dict[str, Any]:
    """Both formats against one server, the 16 kHz one first."""
    wanted = {
        "rate_limit_per_s": 0,
        "max_turn_s": max(30.0, seconds + 1),
        "max_audio_mb": 4096,
        "max_audio_mb_per_connection": 4096,
    }
    known = {f.name for f in fields(ServerSettings)}  # older servers lack the audio budgets
    settings = ServerSettings(**{k: v for k, v in wanted.items() if k in known})  # type: ignore[arg-type]
    pcms = {name: tone(fmt, seconds) for name, fmt in FORMATS.items()}
    results: dict[str, Any] = {}
    with serve_in_thread(ForgetfulGuard(reply="ok", delay_s=0.0), settings) as server:
        chunk = settings.max_message_bytes - 80
        gc.collect()
        baseline = rss_mib()
        # The high rate twice: a second round that adds nothing shows a plateau, not a leak.
        for label, name in [(n, n) for n in FORMATS] + [(f"{HIGH}_round2", HIGH)]:
            results[label] = await one_format(server, name, pcms[name], turns, chunk, baseline)
    return results


def main() -> int:
    """Run and print one JSON object; exit 1 if memory was not returned."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=12, help="open turns on one connection")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per turn")
    args = parser.parse_args()
    quiet_logs()
    configure_logging(level="WARNING")
    results = asyncio.run(run(args.turns, args.seconds))
    low, high = results["16k_mono_int16"], results[HIGH]
    result = {
        "benchmark": "server_audio_memory",
        "turns": args.turns,
        "seconds_per_turn": args.seconds,
        "formats": results,
        "ratios_high_over_16k": {
            "sent": ratio(high["sent_mib"], low["sent_mib"], 2),
            "held": ratio(high["held_mib"] or 0.0, low["held_mib"] or 0.0, 2),
            "rss_growth_open": ratio(high["rss_growth_open_mib"], low["rss_growth_open_mib"], 2),
        },
        "machine": machine_info(),
    }
    emit(result, args.out)
    returned = all(r["held_after_end_bytes"] in (0, None) for r in results.values())
    return 0 if returned else 1


if __name__ == "__main__":
    sys.exit(main())
