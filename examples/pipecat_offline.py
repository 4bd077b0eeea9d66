"""Play a WAV file through the guard's Pipecat pipeline and print what the bot would say.

The same pipeline shape as ``pipecat_bot.py``, minus the network: the file is cut into
20 ms ``InputAudioRawFrame``s as a transport would deliver them, the guard node finds
the turns with its own VAD (or, with ``--user-frames``, the whole file is one turn
bracketed by ``UserStarted/StoppedSpeakingFrame`` as a pipeline VAD would send), and a
printer at the end shows each response: text, refused, policy, rule.

Usage:
    python examples/pipecat_offline.py question.wav [--model tiny] [--policy p.yaml]
        [--context channel=kids --context age=9] [--user-frames]

Context values are typed as ``sarsteer-guard respond --context`` types them: ``9`` is a
number, ``true``/``false`` booleans, anything else text (quote to keep ``"02139"`` text).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner
from pipecat_sarsteer import SARSteerDecisionFrame, SARSteerGuardService, SARSteerParams

from sarsteer_guard.audio import float_to_pcm16, load_audio
from sarsteer_guard.cli._common import DefaultsHelpFormatter, parse_context
from sarsteer_guard.errors import GuardError

RATE = 16000
FRAME_MS = 20


class ResponsePrinter(FrameProcessor):
    """Prints each response as the bot would speak it, then its decision."""

    def __init__(self) -> None:
        super().__init__()
        self._text: list[str] = []
        self.responses = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Collect text; print on the decision and at the end of the response."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            self._text.append(frame.text)
        elif isinstance(frame, SARSteerDecisionFrame):
            d = frame.decision
            self.responses += 1
            print(f"bot says: {''.join(self._text)!r}")
            print(f"  refused={d.refused} policy={d.policy}@{d.policy_version} rule={d.rule}")
            print(f"  mode={d.mode} alpha={d.alpha} tokens={d.tokens} audit={d.audit_id}")
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._text.clear()
        elif isinstance(frame, ErrorFrame):
            print(f"error: {frame.error}", file=sys.stderr)
        await self.push_frame(frame, direction)


def audio_frames(x: np.ndarray) -> list[Frame]:
    """Cut float32 16 kHz audio into 20 ms int16 frames, as a transport delivers them."""
    pcm = float_to_pcm16(x)
    step = RATE * FRAME_MS // 1000 * 2
    return [
        InputAudioRawFrame(audio=pcm[i : i + step], sample_rate=RATE, num_channels=1)
        for i in range(0, len(pcm), step)
    ]


async def run(args: argparse.Namespace) -> int:
    """Build the pipeline, play the file through it, and wait for the answers."""
    if not args.verbose:
        logger.remove()  # Pipecat logs every frame link at DEBUG
        logger.add(sys.stderr, level="WARNING")
    x = load_audio(args.wav, target_rate=RATE)
    tail = np.zeros(RATE, dtype=np.float32)  # 1 s of silence lets the VAD close the turn
    frames = audio_frames(np.concatenate([x, tail]))
    if args.user_frames:
        frames = [UserStartedSpeakingFrame(), *frames, UserStoppedSpeakingFrame()]

    guard = SARSteerGuardService(
        model=args.model,
        policy=args.policy,
        audit=args.audit,
        context=parse_context(args.context),
        params=SARSteerParams(
            turn_detection="pipeline" if args.user_frames else "own",
            end_timeout_secs=args.timeout,
        ),
    )
    printer = ResponsePrinter()
    worker = PipelineWorker(
        Pipeline([guard, printer]),
        params=PipelineParams(audio_in_sample_rate=RATE),
        cancel_on_idle_timeout=False,
    )

    async def play(_worker: PipelineWorker, _frame: Frame) -> None:
        # Processors drop frames that arrive before the pipeline has started.
        await worker.queue_frames([*frames, EndFrame()])

    worker.add_event_handler("on_pipeline_started", play)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    if printer.responses == 0:
        print("no response (no speech found, or the guard failed: see errors above)")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("wav", help="a speech recording (WAV, FLAC, OGG or MP3)")
    parser.add_argument("--model", default="tiny", help="hub id, path, tiny or tiny-planted")
    parser.add_argument("--policy", default=None, help="policy YAML (default: shipped)")
    parser.add_argument("--audit", default=None, help="audit log URL, e.g. sqlite:///audit.db")
    parser.add_argument(
        "--context",
        "-c",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="turn context, repeatable; typed as `sarsteer-guard respond -c` types it",
    )
    parser.add_argument(
        "--user-frames",
        action="store_true",
        help="send the file as one turn between user speaking frames (pipeline VAD shape)",
    )
    parser.add_argument("--verbose", action="store_true", help="show Pipecat's debug log")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    try:
        return asyncio.run(run(parser.parse_args(argv)))
    except GuardError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
