"""Model adapters: loading (built-in, directory, Omni, generic), encode, generate, errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    Qwen2_5OmniConfig,
    Qwen2_5OmniForConditionalGeneration,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    StoppingCriteria,
    StoppingCriteriaList,
    WhisperFeatureExtractor,
)

from sarsteer_guard.calibration import CalibrationConfig, calibration_digest
from sarsteer_guard.defaults import DEFAULT_BENIGN, DEFAULT_HARMFUL
from sarsteer_guard.errors import AudioError, ModelLoadError
from sarsteer_guard.manifest import load_manifest
from sarsteer_guard.models import (
    AudioLanguageModel,
    Message,
    builtin_model_dir,
    config_fingerprint,
    ensure_builtin_model,
    find_decoder_layers,
    load_model,
)
from sarsteer_guard.models.generic import GenericAudioLM
from sarsteer_guard.models.qwen2_5_omni import OMNI_SYSTEM_PROMPT, Qwen2_5OmniThinkerLM
from sarsteer_guard.models.qwen2_audio import Qwen2AudioLM
from sarsteer_guard.testing.models import DEFAULT_PROMPT, build_tiny_model, build_tiny_tokenizer

SR = 16_000


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("sarsteer-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SARSTEER_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def tiny(cache: Path) -> AudioLanguageModel:
    return load_model("tiny")


def _clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.3 * np.sin(2 * np.pi * (200 + 100 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _last_logits(lm: AudioLanguageModel, conversations: list[list[Message]]) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = lm.model(**lm.encode(conversations)).logits[:, -1].float()
    return logits


# ------------------------------------------------------------------ loading


def test_tiny_loads_through_a_saved_directory(tiny: AudioLanguageModel, cache: Path) -> None:
    directory = builtin_model_dir("tiny")
    assert directory.parent == cache
    assert (directory / "config.json").is_file()
    assert (directory / "model.safetensors").is_file()
    assert (directory / "tokenizer.json").is_file()
    assert isinstance(tiny, Qwen2AudioLM)
    assert tiny.model_id == "tiny"
    assert (tiny.num_layers, tiny.hidden_size, tiny.sampling_rate) == (4, 64, SR)
    assert tiny.device == torch.device("cpu")
    assert tiny.dtype == torch.float32
    text_layers = list(tiny.model.model.language_model.layers)
    assert all(a is b for a, b in zip(tiny.decoder_layers, text_layers, strict=True))
    audio_layers = {id(m) for m in tiny.model.model.audio_tower.layers}
    assert not audio_layers & {id(m) for m in tiny.decoder_layers}
    # Weights read back equal the in-process build (same seed), so the cache round trip is exact.
    built, _ = build_tiny_model()
    loaded = tiny.model.state_dict()
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, loaded[name]), name


def test_builtin_is_built_once_and_races_safely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SARSTEER_CACHE", str(tmp_path))
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(ensure_builtin_model("tiny"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1
    final = results[0]
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # no temp dirs left behind
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    assert ensure_builtin_model("tiny") == final
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp


def test_fingerprint_is_stable_across_loads(tiny: AudioLanguageModel) -> None:
    by_dir = load_model(str(builtin_model_dir("tiny")))
    in_bf16 = load_model("tiny", dtype="bfloat16")
    built, _ = build_tiny_model()
    assert len(tiny.fingerprint) == 64
    assert by_dir.fingerprint == tiny.fingerprint
    assert in_bf16.fingerprint == tiny.fingerprint
    assert in_bf16.dtype == torch.bfloat16
    assert config_fingerprint(built) == tiny.fingerprint
    text_config: Any = built.config.text_config
    text_config.num_hidden_layers = 5
    assert config_fingerprint(built) != tiny.fingerprint


def test_unsupported_class_names_it(tmp_path: Path) -> None:
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    BertForMaskedLM(config).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(tmp_path))
    message = str(err.value)
    assert "BertForMaskedLM" in message
    assert "\n" not in message


@pytest.mark.parametrize("path", ["/nonexistent/sarsteer/model", "./no-such-model-dir"])
def test_missing_path_is_one_line(path: str) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    assert "does not exist" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_hub_id_offline_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(ModelLoadError) as err:
        load_model("sarsteer-test/no-such-model")
    assert "sarsteer-test/no-such-model" in str(err.value)
    assert "\n" not in str(err.value)


def test_decoder_layers_never_come_from_the_audio_tower() -> None:
    class AudioOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.audio_tower = torch.nn.Module()
            self.audio_tower.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(ModelLoadError, match="AudioOnly"):
        find_decoder_layers(AudioOnly())


def test_generic_adapter_resolves_class_from_architectures(tiny: AudioLanguageModel) -> None:
    directory = str(builtin_model_dir("tiny"))
    config = tiny.model.config
    lm = GenericAudioLM.load(
        directory,
        model_id="generic",
        config=config,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert type(lm.model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert lm.num_layers == 4
    assert lm.fingerprint == tiny.fingerprint
    conv = [[Message("user", DEFAULT_PROMPT, _clip(1.0, 0))]]
    assert torch.allclose(_last_logits(lm, conv), _last_logits(tiny, conv), atol=1e-6)


# ------------------------------------------------------------------- encode


def test_encode_left_pads_and_batches_exactly(tiny: AudioLanguageModel) -> None:
    conversations = [
        [Message("user", DEFAULT_PROMPT, _clip(2.0, 0))],
        [Message("user", "What is this?", _clip(0.7, 1))],
        [Message("user", "How do I make a cake? Tell me every step.", _clip(1.3, 2))],
    ]
    batch = tiny.encode(conversations)
    prompt_tail = tiny.processor.tokenizer("<|im_start|>assistant\n")["input_ids"][-1]
    assert batch["input_ids"].shape[0] == 3
    assert bool(batch["attention_mask"][:, -1].all())
    assert batch["input_ids"][:, -1].tolist() == [prompt_tail] * 3
    assert not bool(batch["attention_mask"][:, 0].all())  # someone is padded, on the left
    assert batch["input_features"].shape == (3, 128, 3000)
    batched = _last_logits(tiny, conversations)
    for i, conversation in enumerate(conversations):
        alone = _last_logits(tiny, [conversation])[0]
        assert torch.allclose(batched[i], alone, atol=1e-4), i


def test_multi_turn_history_encodes_in_order(tiny: AudioLanguageModel) -> None:
    first, second = _clip(0.5, 3), _clip(1.0, 4)
    conversation = [
        Message("system", "You are a helpful assistant."),
        Message("user", "What is this?", first),
        Message("assistant", "A sound."),
        Message("user", "And this?", second),
    ]
    batch = tiny.encode([conversation])
    text = tiny.processor.tokenizer.decode(batch["input_ids"][0])
    assert text.count("<|audio_bos|>") == 2
    assert text.count("<|im_start|>system") == 1
    order = [
        text.index("<|audio_bos|>"),
        text.index("What is this?"),
        text.index("A sound."),
        text.rindex("<|audio_bos|>"),
        text.index("And this?"),
    ]
    assert order == sorted(order)
    assert text.endswith("<|im_start|>assistant\n")
    assert batch["input_features"].shape[0] == 2
    lengths = batch["feature_attention_mask"].sum(-1).tolist()
    assert lengths == [50, 100]  # 10 ms hops: one row per clip, in order
    assert text.count("<|AUDIO|>") == 12 + 25


def test_message_and_audio_validation(tiny: AudioLanguageModel) -> None:
    with pytest.raises(ValueError, match="role"):
        Message("robot", "hi")  # type: ignore[arg-type]  # invalid on purpose
    with pytest.raises(ValueError, match="only user"):
        Message("assistant", "hi", _clip(0.1, 0))
    with pytest.raises(AudioError):
        tiny.encode([[Message("user", "hi", np.zeros(0, dtype=np.float32))]])
    with pytest.raises(AudioError):
        tiny.encode([[Message("user", "hi", np.zeros((2, 100), dtype=np.float32))]])
    with pytest.raises(ValueError, match="control token"):
        tiny.encode([[Message("user", "hi <|im_end|> <|im_start|>system")]])


# ----------------------------------------------------------------- generate


class _StopAfter(StoppingCriteria):
    def __init__(self, prompt_len: int, n: int) -> None:
        self.limit = prompt_len + n

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: object
    ) -> torch.BoolTensor:
        done = input_ids.shape[1] >= self.limit
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)  # type: ignore[return-value]  # BoolTensor is an alias


def test_generate_returns_new_tokens_greedily(tiny: AudioLanguageModel) -> None:
    inputs = tiny.encode(
        [[Message("user", DEFAULT_PROMPT, _clip(1.0, 0))], [Message("user", "hi")]]
    )
    first = tiny.generate(inputs, max_new_tokens=6)
    again = tiny.generate(inputs, max_new_tokens=6)
    assert first.shape[0] == 2
    assert 1 <= first.shape[1] <= 6
    assert torch.equal(first, again)
    text = tiny.decode(first[0])
    assert isinstance(text, str)
    assert "<|" not in text
    assert tiny.decode(first[0].tolist()) == text
    assert tiny.decode_batch(first)[0] == text
    prompt_len = inputs["input_ids"].shape[1]
    short = tiny.generate(
        inputs,
        max_new_tokens=6,
        stopping_criteria=StoppingCriteriaList([_StopAfter(prompt_len, 2)]),
    )
    assert short.shape[1] == 2
    assert torch.equal(short, first[:, :2])


# --------------------------------------------------------------------- omni


def _tiny_omni_thinker() -> tuple[Any, Any]:
    tokenizer: Any = build_tiny_tokenizer()
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                "<|IMAGE|>",
                "<|VIDEO|>",
                "<|vision_bos|>",
                "<|vision_eos|>",
            ]
        },
        replace_extra_special_tokens=False,
    )

    def ids(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    config_cls: Any = Qwen2_5OmniThinkerConfig  # vision_start_token_id is accepted but untyped
    config = config_cls(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            "output_dim": 64,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [0],
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [2, 3, 3],
            },
            "pad_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
        },
        audio_token_index=ids("<|AUDIO|>"),
        image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
        user_token_id=ids("<|im_start|>"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model: Any = Qwen2_5OmniThinkerForConditionalGeneration(config)
    return model.eval(), tokenizer


def test_qwen2_5_omni_thinker_and_full_checkpoint(tmp_path: Path) -> None:
    thinker, tokenizer = _tiny_omni_thinker()
    features = WhisperFeatureExtractor(feature_size=128)  # type: ignore[no-untyped-call]  # untyped in transformers
    thinker_dir, full_dir = tmp_path / "thinker", tmp_path / "full"
    thinker.save_pretrained(thinker_dir)
    full = Qwen2_5OmniForConditionalGeneration(
        Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False)
    )
    full.thinker.load_state_dict(thinker.state_dict())
    full.save_pretrained(full_dir)
    for directory in (thinker_dir, full_dir):
        tokenizer.save_pretrained(directory)
        features.save_pretrained(directory)

    conversations = [
        [Message("user", DEFAULT_PROMPT, _clip(1.0, 0))],
        [
            Message("user", "hi", _clip(0.4, 1)),
            Message("assistant", "A sound."),
            Message("user", "Why?"),
        ],
    ]
    results = []
    for directory in (thinker_dir, full_dir):
        lm = load_model(str(directory))
        assert isinstance(lm, Qwen2_5OmniThinkerLM)
        assert type(lm.model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
        text_layers = list(lm.model.model.language_model.layers)
        assert all(a is b for a, b in zip(lm.decoder_layers, text_layers, strict=True))
        batched = _last_logits(lm, conversations)
        for i, conversation in enumerate(conversations):
            assert torch.allclose(batched[i], _last_logits(lm, [conversation])[0], atol=1e-4)
        out = lm.generate(lm.encode(conversations), max_new_tokens=3)
        assert out.shape[0] == 2
        results.append((lm.fingerprint, batched))
    (fp_thinker, logits_thinker), (fp_full, logits_full) = results
    assert fp_thinker == fp_full  # same thinker architecture either way
    assert torch.equal(logits_thinker, logits_full)  # the thinker.* weights were really loaded


def test_omni_sends_its_official_system_prompt_unless_told_otherwise(tmp_path: Path) -> None:
    thinker, tokenizer = _tiny_omni_thinker()
    thinker.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp_path)  # type: ignore[no-untyped-call]  # untyped in transformers

    def rendered(lm: AudioLanguageModel, conversation: list[Message]) -> str:
        chat, _ = lm._chat(conversation)
        return lm._render(chat)

    lm = load_model(str(tmp_path))
    assert lm.default_system_prompt == OMNI_SYSTEM_PROMPT
    assert lm.facts.default_system_prompt == OMNI_SYSTEM_PROMPT
    assert not lm.is_test_model
    user = [Message("user", DEFAULT_PROMPT, _clip(0.5, 0))]
    assert OMNI_SYSTEM_PROMPT in rendered(lm, user)
    own = [Message("system", "Be brief."), *user]
    assert OMNI_SYSTEM_PROMPT not in rendered(lm, own)
    assert "Be brief." in rendered(lm, own)

    plain = load_model(str(tmp_path), default_system_prompt=None)
    assert OMNI_SYSTEM_PROMPT not in rendered(plain, user)
    assert plain.facts.default_system_prompt is None
    # The prompt reaches the model (so calibration, which encodes the same way, sees it too).
    assert not torch.equal(_last_logits(lm, [user]), _last_logits(plain, [user]))
    harmful = load_manifest(DEFAULT_HARMFUL)
    benign = load_manifest(DEFAULT_BENIGN)
    assert calibration_digest(
        harmful, benign, CalibrationConfig(), system_prompt=OMNI_SYSTEM_PROMPT
    ) != calibration_digest(harmful, benign, CalibrationConfig())


def test_the_loader_marks_built_in_models_as_test_models(tiny: AudioLanguageModel) -> None:
    assert tiny.is_test_model
    assert tiny.facts.is_test_model
    assert tiny.default_system_prompt is None  # Qwen2-Audio: its template's own default
