"""The built-in test models, re-exported for tests (from ``sarsteer_guard.models.builtin``)."""

from sarsteer_guard.models.builtin import (
    AUDIO_TOKEN,
    CHAT_TEMPLATE,
    COMPLIANT_TEXT,
    DEFAULT_PROMPT,
    PLANTED_C_RANGE,
    PLANTED_LAYER,
    REFUSAL_TEXT,
    SPECIAL_TOKENS,
    PlantedModel,
    build_planted_model,
    build_tiny_model,
    build_tiny_processor,
    build_tiny_tokenizer,
    planted_direction,
    tiny_config,
)

__all__ = [
    "AUDIO_TOKEN",
    "CHAT_TEMPLATE",
    "COMPLIANT_TEXT",
    "DEFAULT_PROMPT",
    "PLANTED_C_RANGE",
    "PLANTED_LAYER",
    "REFUSAL_TEXT",
    "SPECIAL_TOKENS",
    "PlantedModel",
    "build_planted_model",
    "build_tiny_model",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "planted_direction",
    "tiny_config",
]
