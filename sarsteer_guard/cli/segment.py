"""``sarsteer-guard segment FILE``: find speech turns in a recording, as JSON.

Lets bot builders check the turn segmenter's settings against their own recordings
before wiring it into a pipeline. Output goes to stdout as one JSON object; errors
are one line on stderr (exit 2) via the CLI main.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``segment`` command to the CLI."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "segment",
        help="detect speech turns in an audio file (webrtcvad) and print them as JSON",
        description=(
            "Decode FILE (WAV/FLAC/OGG/MP3, any rate, mono or stereo), run the webrtcvad "
            "turn segmenter and print {file, sample_rate, duration_s, turns:[{start, end}]}."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="audio file to segment")
    parser.add_argument(
        "--aggressiveness", type=int, default=2, help="webrtcvad mode 0-3 (default 2)"
    )
    parser.add_argument(
        "--frame-ms", type=int, default=30, choices=(10, 20, 30), help="VAD frame (default 30)"
    )
    parser.add_argument(
        "--min-speech-ms", type=int, default=250, help="drop shorter turns (default 250)"
    )
    parser.add_argument(
        "--end-silence-ms", type=int, default=600, help="silence that ends a turn (default 600)"
    )
    parser.add_argument(
        "--padding-ms", type=int, default=150, help="pre-roll before speech (default 150)"
    )
    parser.add_argument(
        "--max-turn-s", type=float, default=30.0, help="cut turns at this length (default 30)"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sarsteer_guard.audio.decode import read_audio
    from sarsteer_guard.audio.vad import segment_audio

    audio, rate = read_audio(args.file)
    turns = segment_audio(
        audio,
        rate,
        aggressiveness=args.aggressiveness,
        frame_ms=args.frame_ms,
        padding_ms=args.padding_ms,
        min_speech_ms=args.min_speech_ms,
        end_silence_ms=args.end_silence_ms,
        max_turn_s=args.max_turn_s,
    )
    result = {
        "file": args.file,
        "sample_rate": rate,
        "duration_s": round(audio.size / rate, 3),
        "turns": [{"start": round(t.start_s, 3), "end": round(t.end_s, 3)} for t in turns],
    }
    print(json.dumps(result))
    return 0
