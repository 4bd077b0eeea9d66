"""Audio-language model adapters (transformers ``from_pretrained``) and ``load_model``."""

from .base import AudioLanguageModel, Message, ModelFacts, config_fingerprint, find_decoder_layers
from .loading import BUILTIN_MODELS, builtin_model_dir, ensure_builtin_model, load_model

__all__ = [
    "BUILTIN_MODELS",
    "AudioLanguageModel",
    "Message",
    "ModelFacts",
    "builtin_model_dir",
    "config_fingerprint",
    "ensure_builtin_model",
    "find_decoder_layers",
    "load_model",
]
