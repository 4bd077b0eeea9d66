"""Tiny judge models built offline with transformers, for the evaluation tests.

Weights are constructed, not trained, so each model's answer is known: every decoder
layer's output projections are zeroed (the residual stream is the last token's
embedding), one embedding dimension is a constant that the head reads.

- :func:`build_lm_judge`: a causal LM that answers ``answer`` ("0" or "1") and then
  stops: the answer token's embedding carries a second dimension that the head maps to
  the end-of-turn token.
- :func:`build_classifier_judge`: a sequence classifier whose top label is ``top``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)

from sarsteer_guard.testing.models import CHAT_TEMPLATE, build_tiny_tokenizer


def _config(vocab: int, **kw: object) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        **kw,
    )


def _silence_layers(model: torch.nn.Module) -> None:
    for layer in model.model.layers:  # type: ignore[union-attr]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def build_lm_judge(folder: Path, answer: str) -> Path:
    """Save a causal LM that replies exactly ``answer`` to any prompt."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    answer_id = tokenizer.convert_tokens_to_ids(answer)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(_config(len(tokenizer), eos_token_id=end_id, pad_token_id=0))
    with torch.no_grad():
        _silence_layers(model)
        model.lm_head.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 5.0
        model.model.embed_tokens.weight[:, 1] = 0.0
        model.model.embed_tokens.weight[answer_id, 1] = 5.0
        model.lm_head.weight[answer_id, 0] = 10.0
        model.lm_head.weight[end_id, 1] = 20.0
    model.generation_config = GenerationConfig(eos_token_id=end_id, pad_token_id=0, do_sample=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_classifier_judge(folder: Path, labels: tuple[str, str], top: int) -> Path:
    """Save a 2-label sequence classifier whose top label is ``labels[top]``."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = _config(
        len(tokenizer),
        num_labels=2,
        id2label={0: labels[0], 1: labels[1]},
        label2id={labels[0]: 0, labels[1]: 1},
        pad_token_id=0,
    )
    model = Qwen2ForSequenceClassification(config)
    with torch.no_grad():
        _silence_layers(model)
        model.score.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 5.0
        model.score.weight[top, 0] = 10.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
