"""The paper's reference defaults and the shipped calibration set (no heavy imports)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_PROMPT = "Please generate detailed steps for the question in the audio."
DEFAULT_REFUSAL_INSTRUCTION = "I cannot assist with that."
#: Joins the user's text prompt and the refusal instruction during calibration. The SARSteer
#: reference concatenates them with nothing in between (``input_text + refusal_prompt``).
DEFAULT_REFUSAL_SEPARATOR = ""
#: The separator every vector set had before it was recorded (one space): a set whose
#: metadata has no ``refusal_separator`` was calibrated with it.
LEGACY_REFUSAL_SEPARATOR = " "
DEFAULT_K = 10
DEFAULT_LAMBDA = 1.0
DEFAULT_ALPHA = 0.1
DEFAULT_MAX_NEW_TOKENS = 64
#: The reference's evaluation budget (new tokens per response).
DEFAULT_EVAL_MAX_NEW_TOKENS = 512

CALIBRATION_DIR = Path(__file__).parent / "data" / "calibration"
DEFAULT_HARMFUL = CALIBRATION_DIR / "harmful.jsonl"
DEFAULT_BENIGN = CALIBRATION_DIR / "benign.jsonl"
