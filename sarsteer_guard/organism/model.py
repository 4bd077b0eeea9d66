"""The organism's architecture, tokenizer and processor (Qwen2-Audio, head size 64).

A real ``Qwen2AudioForConditionalGeneration``, small enough to train on 2 shared CPU cores: a
2-layer audio encoder and a 4-layer text decoder of width 64, each with one 64-wide attention head
(what vLLM's CPU attention runs). The Whisper front end uses a 5 s window (``chunk_length=5``,
500 mel frames, encoder ``max_source_positions=250``), six times cheaper than the 30 s default;
every organism clip is shorter than that (longest 4.7 s).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

from sarsteer_guard.models.builtin import AUDIO_TOKEN, CHAT_TEMPLATE, SPECIAL_TOKENS

#: Seconds of audio the front end sees (longer clips are cut).
CHUNK_SECONDS = 5
VOCAB_SIZE = 1000
#: Width of the text decoder and the audio encoder: one attention head of 64 each.
WIDTH = 64


def build_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``corpus`` with the Qwen chat tokens (deterministic)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(corpus)), trainer)
    fast_cls: Any = PreTrainedTokenizerFast  # untyped __init__ in transformers
    fast: PreTrainedTokenizerFast = fast_cls(
        tokenizer_object=tok,
        eos_token="<|im_end|>",  # noqa: S106  # chat-format token, not a secret
        pad_token="<|endoftext|>",  # noqa: S106  # chat-format token, not a secret
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        padding_side="left",
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(tokenizer: PreTrainedTokenizerFast) -> Qwen2AudioProcessor:
    """128-bin Whisper features over a 6 s window, plus the organism's tokenizer."""
    processor_cls: Any = Qwen2AudioProcessor  # untyped __init__ in transformers
    features_cls: Any = WhisperFeatureExtractor
    processor: Qwen2AudioProcessor = processor_cls(
        feature_extractor=features_cls(feature_size=128, chunk_length=CHUNK_SECONDS),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    return processor


def organism_config(
    tokenizer: PreTrainedTokenizerFast, audio_width: int = WIDTH
) -> Qwen2AudioConfig:
    """4 text layers of width :data:`WIDTH` and 2 encoder layers of ``audio_width``.

    Every attention head is 64 wide (what vLLM's CPU attention runs), so both widths are
    multiples of 64; the projector maps ``audio_width`` to the text width.
    """
    if audio_width % 64:
        raise ValueError(f"audio_width must be a multiple of 64, got {audio_width}")
    tok: Any = tokenizer  # convert_tokens_to_ids is typed as returning int | list[int]
    ids = {t: int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}
    text = {
        "model_type": "qwen2",
        "vocab_size": len(tokenizer),
        "hidden_size": WIDTH,
        "intermediate_size": 4 * WIDTH,
        "num_hidden_layers": 4,
        "num_attention_heads": WIDTH // 64,
        "num_key_value_heads": WIDTH // 64,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0},
        "tie_word_embeddings": False,
        "initializer_range": 0.05,
        "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
    }
    audio = {
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": 128,
        "encoder_layers": 2,
        "encoder_attention_heads": audio_width // 64,
        "encoder_ffn_dim": 4 * audio_width,
        "d_model": audio_width,
        "max_source_positions": CHUNK_SECONDS * 50,
    }
    return Qwen2AudioConfig(
        audio_config=audio, text_config=text, audio_token_index=ids[AUDIO_TOKEN]
    )


def generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """Greedy, stopping at ``<|im_end|>``."""
    config_cls: Any = GenerationConfig  # untyped __init__ in transformers
    tok: Any = tokenizer  # convert_tokens_to_ids is typed as returning int | list[int]
    pad = int(tok.convert_tokens_to_ids("<|endoftext|>"))
    end = int(tok.convert_tokens_to_ids("<|im_end|>"))
    config: GenerationConfig = config_cls(
        pad_token_id=pad, eos_token_id=[end, pad], do_sample=False
    )
    return config
