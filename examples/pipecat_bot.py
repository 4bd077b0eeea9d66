"""A Pipecat voice bot whose "brain" is a SARSteer-guarded audio-language model.

The guard node replaces the usual ``stt, llm`` pair: the user's speech goes straight to
the audio-language model (with refusal steering), and the guarded answer streams to
TTS as ordinary LLM text frames.

Transport: Pipecat's WebSocket server (protobuf frames, no extra install), so any
Pipecat WebSocket client can talk to it. TTS: Cartesia.

Environment:
    CARTESIA_API_KEY   required, for the bot's voice
    CARTESIA_VOICE_ID  optional voice id
    SARSTEER_MODEL     "tiny" (default, for trying it out) or a hub id / local dir
    SARSTEER_POLICY    optional policy YAML
    SARSTEER_AUDIT     optional audit log URL (sqlite:///audit.db, redis://...)
    SARSTEER_REMOTE_URL optional sarsteer-guard server URL (use instead of a local model)
    HOST, PORT         where the WebSocket server listens (localhost:8765)

Run: ``python examples/pipecat_bot.py``
"""

from __future__ import annotations

import asyncio
import os
import sys

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.transports.websocket.server import (
    SingleClientWebsocketServerParams,
    SingleClientWebsocketServerTransport,
)
from pipecat.workers.runner import WorkerRunner
from pipecat_sarsteer import SARSteerGuardService

from sarsteer_guard.guard.events import TurnDecision

DEFAULT_VOICE = "71a7ad14-091c-4e8e-a314-022ece01c121"  # a Cartesia stock voice


def build_worker(cartesia_api_key: str) -> PipelineWorker:
    """Wire the bot: transport in -> user turns -> guard -> TTS -> transport out."""
    transport = SingleClientWebsocketServerTransport(
        params=SingleClientWebsocketServerParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=ProtobufFrameSerializer(),
        ),
        host=os.environ.get("HOST", "localhost"),
        port=int(os.environ.get("PORT", "8765")),
    )

    # The guard replaces `stt, llm`; it keeps the conversation history itself.
    guard = SARSteerGuardService(
        model=os.environ.get("SARSTEER_MODEL", "tiny"),
        policy=os.environ.get("SARSTEER_POLICY"),
        audit=os.environ.get("SARSTEER_AUDIT"),
        remote_url=os.environ.get("SARSTEER_REMOTE_URL"),
        context={"channel": "voice"},
    )

    # Every turn's verdict (a SARSteerDecisionFrame also goes downstream).
    @guard.event_handler("on_decision")  # type: ignore[untyped-decorator]  # pipecat: unannotated
    async def on_decision(_service: SARSteerGuardService, decision: TurnDecision) -> None:
        print(f"refused={decision.refused} policy={decision.policy} rule={decision.rule}")

    tts = CartesiaTTSService(
        api_key=cartesia_api_key,
        settings=CartesiaTTSService.Settings(
            voice=os.environ.get("CARTESIA_VOICE_ID", DEFAULT_VOICE)
        ),
    )

    # VAD lives in the user aggregator; it sends the turn frames the guard listens to.
    aggregators = LLMContextAggregatorPair(
        LLMContext(), user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )

    pipeline = Pipeline(
        [
            transport.input(),
            aggregators.user(),
            guard,  # was: stt, llm
            tts,
            transport.output(),
            aggregators.assistant(),
        ]
    )
    worker = PipelineWorker(pipeline, params=PipelineParams(enable_metrics=True))

    @transport.event_handler("on_client_disconnected")  # type: ignore[untyped-decorator]  # ditto
    async def on_client_disconnected(_transport: object, _client: object) -> None:
        await worker.cancel()

    return worker


def missing_env() -> list[str]:
    """Environment variables the bot cannot run without."""
    return [name for name in ("CARTESIA_API_KEY",) if not os.environ.get(name)]


async def main() -> int:
    """Run the bot until the client disconnects."""
    missing = missing_env()
    if missing:
        print(f"set {', '.join(missing)} to run the bot (see this file's docstring)")
        return 2
    worker = build_worker(os.environ["CARTESIA_API_KEY"])
    runner = WorkerRunner()
    await runner.add_workers(worker)
    await runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
