"""A LiveKit voice agent whose replies come from a SARSteer-guarded audio-language model.

The model hears the caller directly (no STT) and its text replies are spoken by the
session's TTS. Run it against your LiveKit server::

    export LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    export TTS_MODEL=cartesia/sonic-2   # any TTS the AgentSession accepts
    python examples/livekit_agent.py dev

Optional: SARSTEER_MODEL (hub id or path, default "tiny"), SARSTEER_POLICY (YAML path),
SARSTEER_STORE / SARSTEER_AUDIT (URLs), SARSTEER_CHANNEL (turn context for the policy).
"""

from __future__ import annotations

import logging
import os

from livekit.agents import Agent, AgentSession, JobContext, JobProcess, WorkerOptions, cli
from livekit.plugins import sarsteer

from sarsteer_guard.guard.events import TurnDecision

logger = logging.getLogger("sarsteer-agent")


def prewarm(proc: JobProcess) -> None:
    """Load the guarded model once per worker process, before any call arrives."""
    from sarsteer_guard import Guard  # imported here: it pulls torch

    guard = Guard(
        model=os.environ.get("SARSTEER_MODEL", "tiny"),
        policy=os.environ.get("SARSTEER_POLICY"),
        store=os.environ.get("SARSTEER_STORE"),
        audit=os.environ.get("SARSTEER_AUDIT"),
    )
    guard.load()
    proc.userdata["guard"] = guard


async def entrypoint(ctx: JobContext) -> None:
    """One call: the shared guard behind a per-call RealtimeModel."""
    await ctx.connect()
    model = sarsteer.RealtimeModel(
        ctx.proc.userdata["guard"],
        context={"channel": os.environ.get("SARSTEER_CHANNEL", "voice")},
        session_id=ctx.room.name,  # audit records carry the room name
    )

    def log_refusal(decision: TurnDecision) -> None:
        if decision.refused:
            logger.info("refused turn %s (rule %s)", decision.turn_id, decision.rule)

    model.on("sarsteer_decision", log_refusal)

    session: AgentSession[None] = AgentSession(
        llm=model,  # was: stt=..., llm=...
        tts=os.environ.get("TTS_MODEL", "cartesia/sonic-2"),
        vad=None,  # the model detects turns itself (webrtcvad)
        turn_handling={"turn_detection": "realtime_llm"},
    )
    await session.start(
        agent=Agent(instructions="You are a helpful voice assistant."), room=ctx.room
    )
    await session.say("Hello! What can I do for you?")


if __name__ == "__main__":
    cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint, prewarm_fnc=prewarm))
