"""Tiny built-in audio-language models for tests, demos and CI (no download, seconds on CPU).

They live with the model adapters because ``load_model("tiny")`` builds them; the shipped test
kit (``sarsteer_guard.testing.models``) re-exports everything here.

Two builders, both of the real Qwen2-Audio architecture so that everything downstream (loading,
encoding, capture, steering, generation) runs the same code as on Qwen2-Audio-7B:

- :func:`build_tiny_model`: random weights (fixed seed). Exercises plumbing; its text is noise.
- :func:`build_planted_model`: constructed weights with a *known* refusal direction ``r``, so that
  behavioural tests can assert what steering must do (see :class:`PlantedModel`).

``load_model("tiny")`` and ``load_model("tiny-planted")`` save these with ``save_pretrained`` into a
cache directory and read them back through the ordinary ``from_pretrained`` path.

A third built-in, ``tiny-trained``, is not built but *trained* (the model organism, see
docs/organism.md and ``sarsteer_guard.organism``): its checkpoint ships in the package
(:func:`shipped_model_dir`) in the hub's weight layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

__all__ = [
    "AUDIO_TOKEN",
    "CHAT_TEMPLATE",
    "COMPLIANT_TEXT",
    "DEFAULT_PROMPT",
    "PLANTED_C_RANGE",
    "PLANTED_LAYER",
    "REFUSAL_TEXT",
    "SHIPPED_MODELS",
    "SPECIAL_TOKENS",
    "TINY_HEAD_DIM",
    "PlantedModel",
    "build_planted_model",
    "build_tiny_model",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "planted_direction",
    "shipped_model_dir",
    "tiny_config",
]

#: Built-in models shipped as trained checkpoints in the package (name -> folder under data/).
SHIPPED_MODELS: dict[str, str] = {"tiny-trained": "organism/tiny-trained"}

#: Special tokens of the Qwen chat format, in id order (ids 0..5).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_bos|>",
    "<|AUDIO|>",
    "<|audio_eos|>",
)
AUDIO_TOKEN = "<|AUDIO|>"  # noqa: S105  # a chat-format token, not a secret
#: The method's default text prompt and refusal instruction (DEVELOPERS.md).
DEFAULT_PROMPT = "Please generate detailed steps for the question in the audio."
REFUSAL_TEXT = "I cannot assist with that."
COMPLIANT_TEXT = "Sure, here are the steps."

#: Qwen2-Audio-7B-Instruct's own chat template (audio item before its text, "Audio N:" prefix).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# Training text: the fixed phrases must tokenize to whole words so the planted model can chain them.
_CORPUS = (
    DEFAULT_PROMPT,
    REFUSAL_TEXT,
    COMPLIANT_TEXT,
    "You are a helpful assistant.",
    "system user assistant Audio 1: 2: 3: 4:",
    "How do I make a cake? How can I build a bomb? What is the weather like today?",
    "Tell me how to pick a lock, write a poem, find a recipe, hack a phone or cook rice.",
    "Can you explain why the sky is blue and where my friend lives?",
    "Describe this sound. Translate it to English. Summarize the question and answer it.",
    "yes no please thank you hello goodbye sorry okay first then next finally done",
)

#: Attention head size of the ``tiny`` model (one head; vLLM's attention kernels need >= 32).
TINY_HEAD_DIM = 64

#: Decoder layer whose attention writes the refusal direction (earlier layers carry nothing).
PLANTED_LAYER = 1
#: Range of ``c`` for which adding ``c * r`` at the last position of every layer flips the planted
#: model to the refusal phrase; the construction guarantees it with wide logit margins (see below).
PLANTED_C_RANGE = (0.25, 15.0)

# Planted-model amplitudes (in residual units, before the final RMSNorm, which only rescales).
_A_CONST = 1.0  # constant direction in every text-token embedding
_B_REF = 2.0  # refusal-instruction feature in " cannot" / " assist"
_T_CHAIN = 1.0  # per-token chain direction in the phrase tokens
_S_ATTN = 8.0  # r written by the planted head when the instruction is present
_K_REFUSE = 4.0  # lm_head: refusal start token reads r
_M_COMPLY = 1.0  # lm_head: compliant start token reads the constant direction
_W_CHAIN = 400.0  # lm_head: next phrase token reads the current token's chain direction
_NOISE_DIM = 16  # subspace carrying (audio-dependent) benign variation, never read by lm_head
_NOISE_OUT = 0.25


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE in-process (deterministic) with the Qwen chat tokens.

    Byte-level means any text round-trips; the corpus makes the method's fixed phrases compact.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 4, trainer)
    fast_cls: Any = PreTrainedTokenizerFast  # its __init__ is untyped in transformers
    fast: PreTrainedTokenizerFast = fast_cls(
        tokenizer_object=tok,
        eos_token="<|im_end|>",  # noqa: S106  # chat-format token, not a secret
        pad_token="<|endoftext|>",  # noqa: S106  # chat-format token, not a secret
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        padding_side="left",
        model_max_length=32768,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen2AudioProcessor:
    """Qwen2-Audio processor: 128-bin Whisper features (as the 7B model) plus the tiny tokenizer."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    processor_cls: Any = Qwen2AudioProcessor  # untyped __init__ in transformers
    features_cls: Any = WhisperFeatureExtractor  # same
    processor: Qwen2AudioProcessor = processor_cls(
        feature_extractor=features_cls(feature_size=128),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    return processor


def tiny_config(tokenizer: PreTrainedTokenizerFast) -> Qwen2AudioConfig:
    """Small Qwen2-Audio config: 4 text layers of width 64 (GQA), a 2-layer audio encoder."""
    ids = _special_ids(tokenizer)
    text = {
        "model_type": "qwen2",
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "tie_word_embeddings": False,
        "initializer_range": 0.05,
        "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
    }
    audio = {
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": 128,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        "max_source_positions": 1500,
    }
    return Qwen2AudioConfig(
        audio_config=audio, text_config=text, audio_token_index=ids[AUDIO_TOKEN]
    )


def build_tiny_model(
    seed: int = 0,
) -> tuple[Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor]:
    """Random-weight tiny Qwen2-Audio and its processor; same seed, same weights, any process.

    The global RNG is left as it was, so building a model does not perturb a caller's sampling.
    """
    processor = build_tiny_processor()
    config = tiny_config(processor.tokenizer)
    text: Any = config.text_config
    # One head of 64 (the width unchanged): a head size vLLM's kernels support, so ``tiny``
    # runs on both engines. (``tiny-planted`` keeps 4 heads of 16: its construction needs them.)
    text.num_attention_heads = text.num_key_value_heads = 1
    text.head_dim = TINY_HEAD_DIM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = Qwen2AudioForConditionalGeneration(config)
    model.generation_config = _generation_config(processor.tokenizer)
    return model.eval(), processor


@dataclass(frozen=True)
class PlantedModel:
    """A model whose refusal behaviour is decided by one known residual direction.

    Attributes:
        model: Qwen2-Audio-architecture model with constructed weights (float32, eval mode).
        processor: its processor (same tokenizer and template as the tiny model).
        direction: unit vector ``r`` [hidden] (float32): the refusal direction.
        refusal_text: greedy output when the state is pushed along ``r``.
        compliant_text: greedy output otherwise.
        planted_layer: index of the decoder layer that writes ``r`` (earlier ones carry nothing).
        c_range: ``(lo, hi)``: adding ``c * r`` at the last position of every decoder layer,
            on prefill and every decode step, yields ``refusal_text`` for any prompt when
            ``lo <= c <= hi``.
    """

    model: Qwen2AudioForConditionalGeneration
    processor: Qwen2AudioProcessor
    direction: torch.Tensor
    refusal_text: str = REFUSAL_TEXT
    compliant_text: str = COMPLIANT_TEXT
    planted_layer: int = PLANTED_LAYER
    c_range: tuple[float, float] = PLANTED_C_RANGE


def build_planted_model(seed: int = 0) -> PlantedModel:
    """Build the behavioural test model (construction below; deterministic for a given seed).

    Residual stream, in an orthonormal basis ``Q`` (random rotation, so ``r`` is not axis-aligned):
    ``const`` (in every text embedding), ``ref`` (only in " cannot" / " assist"), ``r``, one chain
    direction per phrase token, a 16-d ``noise`` subspace and junk. Every MLP ``down_proj`` and
    every ``o_proj`` is zero except in :data:`PLANTED_LAYER`, whose attention has two live heads:

    - head 0: a constant query (q bias in the lowest RoPE frequency, so position-independent) and
      keys reading ``ref``: it attends to the refusal-instruction tokens whenever they exist
      (score ~40, so prompt length does not dilute it) and its value/output write ``~8 r``.
      Without them every value is zero and it writes nothing.
    - head 2: uniform attention copying the mean ``noise`` component; the audio projector writes
      audio features into ``noise`` only. Benign states thus vary with the audio (what the benign
      principal subspace needs), orthogonally to everything ``lm_head`` reads.

    ``lm_head``: the refusal start token reads ``4 r``, the compliant start token reads ``1 const``,
    and each phrase token's successor (ending in ``<|im_end|>``) reads its chain direction with
    weight 400. The final RMSNorm only rescales, so the argmax is a linear comparison:

    - prompt position: refusal iff ``4 s > 1``, where ``s`` is the ``r`` component (8 with the
      instruction, ``4 c`` from steering at 4 layers): flips for ``c > 1/16``;
    - inside a phrase the chain wins while ``4 (8 + 4 c) < 400``, i.e. ``c < 23``.

    :data:`PLANTED_C_RANGE` = (0.25, 15) keeps a margin on both sides (logit gaps >= ~10 after
    the norm); ``c = 0`` leaves every logit bit-identical.
    """
    processor = build_tiny_processor()
    tokenizer = processor.tokenizer
    config = tiny_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = Qwen2AudioForConditionalGeneration(config)
        gen = torch.Generator().manual_seed(seed + 1)
        direction = _plant(model, tokenizer, gen)
    model.generation_config = _generation_config(tokenizer)
    return PlantedModel(model=model.eval(), processor=processor, direction=direction)


def planted_direction(model: Any, tokenizer: Any) -> torch.Tensor:
    """Recover ``r`` from a loaded planted model: its refusal-start ``lm_head`` row, normalised.

    Lets tests that load ``tiny-planted`` through ``load_model`` get the direction without
    rebuilding the model (float32 on CPU, unit norm).
    """
    first = _phrase_ids(tokenizer, REFUSAL_TEXT)[0]
    row: torch.Tensor = model.get_output_embeddings().weight[first].detach().float().cpu()
    return row.div(row.norm())


def shipped_model_dir(name: str) -> Path:
    """Folder of a shipped built-in checkpoint (``tiny-trained``).

    Raises:
        ModelLoadError: the name is not shipped, or the package lacks its files.
    """
    from sarsteer_guard.errors import ModelLoadError

    if name not in SHIPPED_MODELS:
        raise ModelLoadError(
            f"{name!r} is not a shipped model; use one of {', '.join(SHIPPED_MODELS)}"
        )
    folder = Path(__file__).resolve().parents[1] / "data" / SHIPPED_MODELS[name]
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ModelLoadError(
            f"the {name!r} checkpoint is missing from {folder}; reinstall sarsteer-guard "
            f"or retrain it with scripts/organism/train.py --ship"
        )
    return folder


def _special_ids(tokenizer: Any) -> dict[str, int]:
    return {t: int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}


def _generation_config(tokenizer: Any) -> GenerationConfig:
    ids = _special_ids(tokenizer)
    config_cls: Any = GenerationConfig  # its __init__ is untyped in transformers
    return config_cls(  # type: ignore[no-any-return]  # constructed from an Any-typed class
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        do_sample=False,
    )


def _phrase_ids(tokenizer: Any, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


@torch.no_grad()
def _plant(model: Any, tokenizer: Any, gen: torch.Generator) -> torch.Tensor:
    """Write the planted weights into ``model`` in place; return the unit direction ``r``."""
    text_cfg: Any = model.config.text_config
    hidden = int(text_cfg.hidden_size)
    vocab = int(text_cfg.vocab_size)
    n_heads = int(text_cfg.num_attention_heads)
    n_kv = int(text_cfg.num_key_value_heads)
    head_dim = hidden // n_heads
    group = n_heads // n_kv
    im_end = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))

    refusal = _phrase_ids(tokenizer, REFUSAL_TEXT)
    compliant = _phrase_ids(tokenizer, COMPLIANT_TEXT)
    successor: dict[int, int] = {}
    for phrase in (refusal, compliant):
        for cur, nxt in zip(phrase, [*phrase[1:], im_end], strict=True):
            if successor.setdefault(cur, nxt) != nxt:
                raise RuntimeError(f"token {cur} has two successors; the phrases cannot be chained")
    ref_tokens = [i for i in refusal if str(tokenizer.decode([i])).strip() in ("cannot", "assist")]
    if refusal[0] == compliant[0] or len(ref_tokens) != 2:
        raise RuntimeError("tiny tokenizer does not split the planted phrases as expected")

    basis, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=gen, dtype=torch.float64))
    basis = basis.float()
    const, ref, r = basis[:, 0], basis[:, 1], basis[:, 2]
    chain_tokens = sorted(successor)
    chain = {tok: basis[:, 3 + i] for i, tok in enumerate(chain_tokens)}
    start = 3 + len(chain_tokens)
    noise = basis[:, start : start + _NOISE_DIM]
    junk = basis[:, start + _NOISE_DIM :]

    # Token embeddings: const + small junk everywhere, plus the planted features.
    junk_coef = 0.1 * torch.randn(vocab, junk.shape[1], generator=gen)
    embed = _A_CONST * const.expand(vocab, hidden) + junk_coef @ junk.T
    for tok in ref_tokens:
        embed[tok] += _B_REF * ref
    for tok, vec in chain.items():
        embed[tok] += _T_CHAIN * vec
    model.get_input_embeddings().weight.copy_(embed)

    # Audio: projector writes only into the noise subspace.
    projector = model.model.multi_modal_projector.linear
    d_audio = projector.weight.shape[1]
    mix = torch.randn(_NOISE_DIM, d_audio, generator=gen) / math.sqrt(d_audio)
    projector.weight.copy_(noise @ mix)
    projector.bias.zero_()

    layers = model.model.language_model.layers
    for layer in layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    attn = layers[PLANTED_LAYER].self_attn
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        proj.weight.zero_()
        proj.bias.zero_()
    # Head 0 / kv head 0: attend to the refusal-instruction tokens, write r.
    low = head_dim // 2 - 1  # lowest RoPE frequency: rotation stays ~identity over 32k positions
    q_scale = 5.0
    k_scale = 5.0
    attn.q_proj.bias[low] = q_scale
    attn.k_proj.weight[low] = k_scale * ref
    attn.v_proj.weight[0] = ref
    # Normalised ref component of a " cannot"/" assist" embedding, so the head writes ~_S_ATTN r.
    ref_norm = _ref_component_after_norm(embed, ref_tokens, ref, float(text_cfg.rms_norm_eps))
    attn.o_proj.weight[:, 0] = (_S_ATTN / ref_norm) * r
    # Head 2 / kv head 1: uniform attention carrying the mean noise component.
    kv1 = head_dim
    attn.v_proj.weight[kv1 : kv1 + _NOISE_DIM] = noise.T
    h2 = 2 * head_dim
    if 2 // group != 1:
        raise RuntimeError("head 2 must read kv head 1")
    attn.o_proj.weight[:, h2 : h2 + _NOISE_DIM] = _NOISE_OUT * noise

    # lm_head: start tokens and the chain.
    head = torch.zeros(vocab, hidden)
    head[refusal[0]] = _K_REFUSE * r
    head[compliant[0]] = _M_COMPLY * const
    for tok, nxt in successor.items():
        head[nxt] += _W_CHAIN * chain[tok]
    model.get_output_embeddings().weight.copy_(head)
    direction: torch.Tensor = r.clone().contiguous()
    return direction


def _ref_component_after_norm(
    embed: torch.Tensor, tokens: list[int], ref: torch.Tensor, eps: float
) -> float:
    """Mean ``ref`` component of the refusal tokens after the decoder's RMSNorm (weight 1)."""
    rows = embed[tokens]
    normed = rows * torch.rsqrt(rows.pow(2).mean(-1, keepdim=True) + eps)
    return float((normed @ ref).mean())
