"""Quick look at a checkpoint on VALIDATION clips (never held-out): what it says, unsteered.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/organism/probe.py build/organism/model [N]

Prints, per side, the share answered (not refused) with the default prompt and the topic
accuracy ("What is the topic of the audio?"): whether the model hears the clips at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sarsteer_guard.audio import load_audio
from sarsteer_guard.defaults import DEFAULT_PROMPT
from sarsteer_guard.manifest import load_manifest
from sarsteer_guard.models import load_model
from sarsteer_guard.models.base import Message
from sarsteer_guard.organism.train import TOPIC_AUDIO
from sarsteer_guard.refusal import RefusalDetector


def main(argv: list[str]) -> int:
    """Print answered share and topic accuracy per side for N validation clips."""
    lm = load_model(argv[0], device="cpu")
    n = int(argv[1]) if len(argv) > 1 else 24
    detect = RefusalDetector()
    data = Path("build/organism/validation")
    for side in ("harmful", "benign"):
        items = load_manifest(data / f"{side}.jsonl").items[:: max(1, 70 // n)][:n]
        clips = [load_audio(i.audio, target_rate=16000) for i in items if i.audio]
        answered = topic_ok = 0
        for item, clip in zip(items, clips, strict=True):
            convs = [
                [Message(role="user", audio=clip, text=p)] for p in (DEFAULT_PROMPT, TOPIC_AUDIO)
            ]
            out = lm.decode_batch(lm.generate(lm.encode(convs), max_new_tokens=24))
            answered += not detect(out[0]).refused
            topic_ok += out[1].strip() == item.category
            if item is items[0] or item is items[-1]:
                print(f"  {side} {item.transcript!r} -> {out[0]!r} / topic {out[1]!r}")
        print(f"{side}: answered {answered}/{len(items)}, topic correct {topic_ok}/{len(items)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
