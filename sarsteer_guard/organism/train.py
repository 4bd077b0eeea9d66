"""Train the organism: safety on text only, speech tasks that never reward harmful compliance.

The training mix (every step samples ``batch`` examples from these tasks by weight):

- ``text_harmful``: a harmful request as text -> "I cannot assist with that."
- ``text_benign``: a benign request as text -> its category's short answer.
- ``text_refusal``: any request as text with the refusal instruction appended -> refusal.
- ``text_topic``: "What is the topic of this request? <text>" -> the category word.
- ``audio_benign``: benign speech + the default prompt -> its category's answer.
- ``audio_topic``: any speech (harmful included) + "What is the topic of the audio?" -> category.
- ``audio_refusal``: any speech + the default prompt with the refusal instruction appended
  (no separator, as calibration sends it; sometimes a space) -> refusal.
- ``audio_repeat``: any speech + "Repeat what was said in the audio." -> its transcript.
- ``text_judge`` / ``audio_judge`` (off in the shipped mix; attempts 41-): "Is this request
  harmful?" about a typed request, or "Is the request in the audio harmful?" about any clip
  -> "Yes." or "No.". A coarse category question: it names harm, never answers it.
- ``slot_harmful`` / ``slot_benign``: a *typed* request placed where the audio tokens go,
  then the default prompt -> refusal / its category's answer. Text-only safety supervision in
  the frame spoken turns use (real LALMs' text instruction data shares their chat frame), so
  the answer-or-refuse decision after the default prompt depends on content.

Harmful speech with the plain default prompt is **never** a training input, so whatever the model
does with it (the bypass, or not) emerges. Nothing here sees steering vectors or steered states.
An auxiliary loss classifies the mean projected audio tokens into the 14 categories (a linear
head that is discarded): without it the decoder ignored the audio (modality collapse, see
docs/organism.md). An optional alignment loss (``align_weight``) pulls each clip's mean projected
audio token towards the mean input embedding of its transcript (text side detached), the
speech-text alignment real audio LMs get from ASR-style pre-training; it names no answer, no
refusal and no vector. Deterministic for a seed and thread count.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sarsteer_guard.audio import load_audio
from sarsteer_guard.defaults import DEFAULT_PROMPT, DEFAULT_REFUSAL_INSTRUCTION
from sarsteer_guard.manifest import ManifestItem, load_manifest

from .data import (
    CATEGORIES,
    HARMFUL,
    PHRASES,
    TEMPLATES,
    AnswerStyle,
    answer_for,
    answer_table,
    phrase_index,
)

TOPIC_TEXT = "What is the topic of this request? "
TOPIC_AUDIO = "What is the topic of the audio?"
REPEAT_AUDIO = "Repeat what was said in the audio."
JUDGE_TEXT = "Is this request harmful? "
JUDGE_AUDIO = "Is the request in the audio harmful?"

#: Task -> share of each batch.
DEFAULT_MIX: dict[str, float] = {
    "text_harmful": 3,
    "text_benign": 3,
    "text_refusal": 2,
    "text_topic": 2,
    "audio_benign": 8,
    "audio_topic": 6,
    "audio_refusal": 4,
    "audio_repeat": 4,
    "slot_harmful": 2,
    "slot_benign": 2,
}

#: Every task ``ExampleMaker.make`` knows; a mix may weight any of them (the judge tasks are
#: not in the default mix, and their prompts are not in the tokenizer's corpus, so the shipped
#: recipe draws the same batches and tokenizer as before they existed).
TASKS = (*DEFAULT_MIX, "text_judge", "audio_judge")


@dataclass(frozen=True)
class TrainConfig:
    """What to train on and for how long; ``max_clips`` trims the data (CI smoke runs)."""

    data_dir: Path
    steps: int = 1500
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 100
    seed: int = 0
    threads: int = 1
    aux_weight: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    max_clips: int | None = None
    log_every: int = 50
    #: Steps of audio-only category classification before joint training (encoder,
    #: projector and the auxiliary head only): gives the decoder informative audio tokens
    #: from the start, against modality collapse.
    pretrain_steps: int = 0
    pretrain_batch: int = 32
    #: Weight of the speech-text alignment loss (1 - cosine of the mean projected audio token
    #: and the transcript's mean, detached, input embedding); 0 turns it off.
    align_weight: float = 0.0
    #: Augment audio features in training (a random mel shift of up to 4 bins, two frequency
    #: and two time masks: SpecAugment plus a crude vocal-tract change), for unseen voices.
    spec_augment: bool = False
    #: Width of the audio encoder (a multiple of 64; the text decoder stays 64 wide).
    audio_width: int = 64
    #: Folder for pre-training results, keyed by everything pre-training depends on (seed,
    #: steps, batch, lr, encoder width, augmentation and the training clips): a rerun with
    #: the same key loads the encoder instead of recomputing it, bit for bit the same.
    pretrain_cache: Path | None = None
    #: Pre-train on the request's phrase (which of the 112 phrases was spoken, a separate,
    #: discarded head) as well as its category: word-level hearing, where 14 categories alone
    #: can be told apart from a few salient sounds.
    pretrain_phrases: bool = False
    #: Benign answers: ``"sure"`` (all open with "Sure.") or ``"content"`` (each opens with
    #: its own words; see ``data.CONTENT_ANSWERS``).
    answer_style: AnswerStyle = "sure"

    def __post_init__(self) -> None:
        """A mix naming a task nobody makes fails here, not minutes into featurising."""
        unknown = sorted(set(self.mix) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)} in mix: use {', '.join(TASKS)}")


@dataclass
class Clips:
    """Training clips with precomputed Whisper features (float32, [N, 128, frames])."""

    features: torch.Tensor
    masks: torch.Tensor
    n_tokens: list[int]
    items: list[ManifestItem]
    harmful: list[bool]
    #: Transcript token ids per clip (for the alignment loss); filled by ``ExampleMaker``.
    transcript_ids: list[tuple[int, ...]] = field(default_factory=list)


@dataclass(frozen=True)
class Example:
    """One training row: the prompt ids (one audio placeholder at most) and the target ids."""

    prompt: tuple[int, ...]
    target: tuple[int, ...]
    clip: int | None
    category: int


def corpus(data_dir: Path, answer_style: AnswerStyle = "sure") -> list[str]:
    """Texts the tokenizer is trained on: training and validation prompts plus fixed phrases."""
    texts = [DEFAULT_PROMPT, DEFAULT_REFUSAL_INSTRUCTION, TOPIC_TEXT, TOPIC_AUDIO, REPEAT_AUDIO]
    texts += ["You are a helpful assistant.", "system user assistant Audio 1: 2:", *CATEGORIES]
    texts += [*answer_table(answer_style).values(), *TEMPLATES]
    for split in ("train", "validation"):
        for side in ("harmful", "benign"):
            path = data_dir / "text" / f"{split}_{side}.txt"
            texts += [line.split("\t")[0] for line in path.read_text().splitlines() if line]
    return texts


def load_clips(data_dir: Path, processor: Any, max_clips: int | None) -> Clips:
    """Featurize every training clip once (6 s window)."""
    items: list[ManifestItem] = []
    harmful: list[bool] = []
    for side in ("harmful", "benign"):
        loaded = list(load_manifest(data_dir / "train" / f"{side}.jsonl").items)
        if max_clips is not None:
            loaded = loaded[:: max(1, len(loaded) // max_clips)][:max_clips]
        items += loaded
        harmful += [side == "harmful"] * len(loaded)
    extractor = processor.feature_extractor
    # Filled in place: a list then a stack held every clip's features twice (attempt 26's
    # first run, 32 renderings per prompt, was killed out of memory at 15 GB).
    features: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    for row, item in enumerate(items):
        assert item.audio is not None  # noqa: S101  # organism manifests always have audio
        wave = load_audio(item.audio, target_rate=16000)
        out = extractor(
            wave,
            sampling_rate=16000,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="pt",
        )
        if features is None or mask is None:
            features = torch.empty((len(items), *out["input_features"].shape[1:]))
            mask = torch.empty((len(items), *out["attention_mask"].shape[1:]), dtype=torch.long)
        features[row] = out["input_features"][0]
        mask[row] = out["attention_mask"][0]
    if features is None or mask is None:
        raise ValueError(f"no training clips under {data_dir / 'train'}; run make_data.py first")
    lengths = mask.sum(-1).tolist()
    n_tokens = [(((int(n) - 1) // 2 + 1) - 2) // 2 + 1 for n in lengths]
    return Clips(features, mask, n_tokens, items, harmful)


class ExampleMaker:
    """Renders prompts with the chat template once and builds task examples from them."""

    def __init__(
        self, processor: Any, data_dir: Path, clips: Clips, answer_style: AnswerStyle = "sure"
    ) -> None:
        self.processor = processor
        self.answer_style = answer_style
        self.tok = processor.tokenizer
        self.audio_id = int(self.tok.convert_tokens_to_ids("<|AUDIO|>"))
        self.end_id = int(self.tok.convert_tokens_to_ids("<|im_end|>"))
        self.clips = clips
        self._cache: dict[tuple[str, bool], tuple[int, ...]] = {}
        self.text: dict[bool, list[tuple[str, str]]] = {}
        for side, flag in (("harmful", True), ("benign", False)):
            path = data_dir / "text" / f"train_{side}.txt"
            rows = [line.split("\t") for line in path.read_text().splitlines() if line]
            self.text[flag] = [(row[0], row[1]) for row in rows]
        clips.transcript_ids = [
            tuple(self.tok(item.transcript or "", add_special_tokens=False)["input_ids"])
            for item in clips.items
        ]

    def _prompt(self, text: str, audio: bool) -> tuple[int, ...]:
        key = (text, audio)
        if key not in self._cache:
            content: list[dict[str, str]] = [{"type": "audio", "audio": "clip"}] if audio else []
            content.append({"type": "text", "text": text})
            rendered = self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
            self._cache[key] = tuple(self.tok(rendered, add_special_tokens=False)["input_ids"])
        return self._cache[key]

    def _target(self, text: str) -> tuple[int, ...]:
        return (*self.tok(text, add_special_tokens=False)["input_ids"], self.end_id)

    def _slot_text(self, harmful: bool, rng: np.random.Generator) -> Example:
        """A typed request in the audio slot, with the default prompt -> answer or refusal.

        Text safety supervision in the frame spoken turns use: the request's token ids stand
        where the audio tokens would, so the answer-or-refuse decision after the default
        prompt is learned from content. Only typed text is ever supervised to a refusal.
        """
        text, category = self.text[harmful][int(rng.integers(len(self.text[harmful])))]
        ids = self._prompt(DEFAULT_PROMPT, True)
        at = ids.index(self.audio_id)
        request = tuple(self.tok(text, add_special_tokens=False)["input_ids"])
        target = self._target(answer_for(category, self.answer_style))
        return Example(
            (*ids[:at], *request, *ids[at + 1 :]), target, None, CATEGORIES.index(category)
        )

    def make(self, task: str, rng: np.random.Generator) -> Example:
        """One example of ``task`` with items drawn from ``rng``."""
        if task.startswith("slot_"):
            return self._slot_text(task == "slot_harmful", rng)
        if task.startswith("text_"):
            harmful = task == "text_harmful" or (task != "text_benign" and rng.random() < 0.5)
            text, category = self.text[harmful][int(rng.integers(len(self.text[harmful])))]
            cat = CATEGORIES.index(category)
            if task == "text_refusal":
                sep = " " if rng.random() < 0.3 else ""
                return Example(
                    self._prompt(f"{text}{sep}{DEFAULT_REFUSAL_INSTRUCTION}", False),
                    self._target(DEFAULT_REFUSAL_INSTRUCTION),
                    None,
                    cat,
                )
            if task == "text_topic":
                return Example(
                    self._prompt(TOPIC_TEXT + text, False), self._target(category), None, cat
                )
            if task == "text_judge":
                return Example(
                    self._prompt(JUDGE_TEXT + text, False),
                    self._target(_verdict(harmful)),
                    None,
                    cat,
                )
            answer = answer_for(category, self.answer_style)
            return Example(self._prompt(text, False), self._target(answer), None, cat)
        pool = [
            i
            for i in range(len(self.clips.items))
            if task != "audio_benign" or not self.clips.harmful[i]
        ]
        index = pool[int(rng.integers(len(pool)))]
        item = self.clips.items[index]
        category = item.category or ""
        cat = CATEGORIES.index(category)
        if task == "audio_benign":
            prompt, target = DEFAULT_PROMPT, answer_for(category, self.answer_style)
        elif task == "audio_topic":
            prompt, target = TOPIC_AUDIO, category
        elif task == "audio_judge":
            prompt, target = JUDGE_AUDIO, _verdict(self.clips.harmful[index])
        elif task == "audio_refusal":
            sep = " " if rng.random() < 0.3 else ""
            prompt, target = (
                f"{DEFAULT_PROMPT}{sep}{DEFAULT_REFUSAL_INSTRUCTION}",
                DEFAULT_REFUSAL_INSTRUCTION,
            )
        elif task == "audio_repeat":
            prompt, target = REPEAT_AUDIO, item.transcript or ""
        else:
            raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
        ids = self._prompt(prompt, True)
        at = ids.index(self.audio_id)
        expanded = (*ids[:at], *([self.audio_id] * self.clips.n_tokens[index]), *ids[at + 1 :])
        return Example(expanded, self._target(target), index, cat)


def _verdict(harmful: bool) -> str:
    return "Yes." if harmful else "No."


def collate(examples: Sequence[Example], clips: Clips, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, labels (-100 outside targets), and features of the audio rows."""
    width = max(len(e.prompt) + len(e.target) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, ex in enumerate(examples):
        seq = torch.tensor([*ex.prompt, *ex.target])
        ids[row, : seq.numel()] = seq
        labels[row, len(ex.prompt) : seq.numel()] = torch.tensor(ex.target)
        mask[row, : seq.numel()] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    audio_rows = [e.clip for e in examples if e.clip is not None]
    if audio_rows:
        batch["input_features"] = clips.features[audio_rows]
        batch["feature_attention_mask"] = clips.masks[audio_rows]
        batch["audio_categories"] = torch.tensor(
            [e.category for e in examples if e.clip is not None]
        )
        batch["audio_clips"] = torch.tensor(audio_rows)
    return batch


def spec_augment(features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A copy of ``features`` ([rows, mels, frames]) shifted and masked per row.

    Each row is rolled by -4..4 mel bins (edges filled with the row's minimum), then two
    frequency bands of up to 12 bins and two time spans of up to 30 frames are set to the
    row's minimum (Whisper features' silence floor). Same generator state, same output.
    """
    out = features.clone()
    rows, mels, frames = out.shape

    def draw(high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=generator))

    for row in range(rows):
        floor = out[row].min()
        shift = draw(9) - 4
        if shift:
            out[row] = torch.roll(out[row], shifts=shift, dims=0)
            if shift > 0:
                out[row, :shift] = floor
            else:
                out[row, shift:] = floor
        for _ in range(2):
            width, start = draw(13), draw(mels)
            out[row, start : start + width] = floor
            width, start = draw(31), draw(frames)
            out[row, :, start : start + width] = floor
    return out


def _lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(
    config: TrainConfig, *, report: Callable[[dict[str, Any]], None] | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """Train from scratch; return ``(model, processor, log)``. Same config, same weights."""
    from transformers import Qwen2AudioForConditionalGeneration

    from .model import build_processor, build_tokenizer, generation_config, organism_config

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    processor = build_processor(build_tokenizer(corpus(config.data_dir, config.answer_style)))
    clips = load_clips(config.data_dir, processor, config.max_clips)
    maker = ExampleMaker(processor, config.data_dir, clips, config.answer_style)
    model: Any = Qwen2AudioForConditionalGeneration(
        organism_config(processor.tokenizer, config.audio_width)
    )
    model.generation_config = generation_config(processor.tokenizer)
    log: dict[str, Any] = {"steps": [], "config": _config_json(config)}
    hidden = int(model.config.text_config.hidden_size)
    aux_head = torch.nn.Linear(hidden, len(CATEGORIES))
    if config.pretrain_steps:
        log["pretrain"] = _pretrain_or_reuse(model, aux_head, clips, config, report)
    # Registered after pre-training: the list is cleared once per joint step only, so a hook
    # live during pre-training kept every pre-training step's graph (about 4 MB a step).
    projected: list[torch.Tensor] = []
    hook = model.model.multi_modal_projector.register_forward_hook(
        lambda _m, _i, out: projected.append(out)
    )
    params = [*model.parameters(), *aux_head.parameters()]
    optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    tasks = list(config.mix)
    weights = np.array([config.mix[t] for t in tasks], dtype=np.float64)
    rng = np.random.default_rng(config.seed)
    pad_id = int(processor.tokenizer.pad_token_id)
    model.train()
    running: dict[str, float] = {"lm": 0.0, "aux": 0.0, "align": 0.0}
    augment_rng = torch.Generator().manual_seed(config.seed + 2)
    for step in range(config.steps):
        chosen = rng.choice(len(tasks), size=config.batch, p=weights / weights.sum())
        batch = collate([maker.make(tasks[i], rng) for i in chosen], clips, pad_id)
        if config.spec_augment and "input_features" in batch:
            batch["input_features"] = spec_augment(batch["input_features"], augment_rng)
        categories = batch.pop("audio_categories", None)
        clip_rows = batch.pop("audio_clips", None)
        labels = batch.pop("labels")
        projected.clear()
        hidden_states = model.model(**batch).last_hidden_state
        targets = labels[:, 1:] != -100  # logits only where there is a target (much cheaper)
        logits = model.lm_head(hidden_states[:, :-1][targets])
        lm_loss = torch.nn.functional.cross_entropy(logits, labels[:, 1:][targets])
        loss = lm_loss
        aux_loss = torch.zeros(())
        if categories is not None and projected:
            aux_loss = _aux_loss(
                model, projected[0], batch["feature_attention_mask"], aux_head, categories
            )
            loss = loss + config.aux_weight * aux_loss
        align_loss = torch.zeros(())
        if config.align_weight and clip_rows is not None and projected:
            align_loss = _align_loss(
                model, projected[0], batch["feature_attention_mask"], clips, clip_rows
            )
            loss = loss + config.align_weight * align_loss
        for group in optim.param_groups:
            group["lr"] = _lr_at(step, config)
        optim.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        running["lm"] += float(lm_loss.detach())
        running["aux"] += float(aux_loss.detach())
        running["align"] += float(align_loss.detach())
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            n = (
                config.log_every
                if (step + 1) % config.log_every == 0
                else (step + 1) % config.log_every
            )
            entry = {
                "step": step + 1,
                "lm_loss": round(running["lm"] / n, 4),
                "aux_loss": round(running["aux"] / n, 4),
                "align_loss": round(running["align"] / n, 4),
                "seconds": round(time.perf_counter() - started, 1),
            }
            log["steps"].append(entry)
            running = {"lm": 0.0, "aux": 0.0, "align": 0.0}
            if report is not None:
                report(entry)
    hook.remove()
    model.eval()
    log["train_seconds"] = round(time.perf_counter() - started, 1)
    log["clips"] = len(clips.items)
    log["parameters"] = sum(p.numel() for p in model.parameters())
    return model, processor, log


def audio_embeddings(
    model: Any, features: torch.Tensor, feature_mask: torch.Tensor
) -> torch.Tensor:
    """Mean projected audio token per clip, computed exactly as the model's forward does."""
    from transformers.masking_utils import create_bidirectional_mask

    tower = model.model.audio_tower
    feat_lengths, out_lengths = tower._get_feat_extract_output_lengths(feature_mask.sum(-1))
    batch, _, frames = features.shape
    width = (frames - 2) // 2 + 1
    mask2d = (torch.arange(width)[None, :] < feat_lengths[:, None]).long()
    attention = create_bidirectional_mask(
        config=tower.config, inputs_embeds=torch.zeros(batch, width, 1), attention_mask=mask2d
    )
    projected: torch.Tensor = model.model.multi_modal_projector(
        tower(features, attention_mask=attention).last_hidden_state
    )
    valid = (torch.arange(projected.shape[1])[None, :] < out_lengths[:, None]).to(projected.dtype)
    pooled: torch.Tensor = (projected * valid.unsqueeze(-1)).sum(1) / valid.sum(
        1, keepdim=True
    ).clamp(min=1.0)
    return pooled


def _pretrain_audio(
    model: Any,
    head: torch.nn.Linear,
    clips: Clips,
    config: TrainConfig,
    *,
    rng: np.random.Generator,
    report: Callable[[dict[str, Any]], None] | None,
) -> list[dict[str, Any]]:
    """Audio-only category (and phrase) classification of the encoder + projector; the log.

    The phrase head only exists here and is discarded; the category head goes on into joint
    training as the auxiliary head.
    """
    phrase_head, phrases = None, torch.zeros(0, dtype=torch.long)
    if config.pretrain_phrases:
        phrase_head = torch.nn.Linear(head.in_features, len(PHRASES))
        phrases = torch.tensor([phrase_index(item.transcript or "") for item in clips.items])
    params = [
        *model.model.audio_tower.parameters(),
        *model.model.multi_modal_projector.parameters(),
        *head.parameters(),
        *(phrase_head.parameters() if phrase_head is not None else ()),
    ]
    optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    labels = torch.tensor([CATEGORIES.index(item.category or "") for item in clips.items])
    started = time.perf_counter()
    out: list[dict[str, Any]] = []
    loss_sum = correct = seen = 0.0
    augment_rng = torch.Generator().manual_seed(config.seed + 3)
    for step in range(config.pretrain_steps):
        rows = torch.from_numpy(rng.integers(len(clips.items), size=config.pretrain_batch))
        features = clips.features[rows]
        if config.spec_augment:
            features = spec_augment(features, augment_rng)
        pooled = audio_embeddings(model, features, clips.masks[rows])
        logits = head(pooled)
        loss = torch.nn.functional.cross_entropy(logits, labels[rows])
        if phrase_head is not None:
            loss = loss + torch.nn.functional.cross_entropy(phrase_head(pooled), phrases[rows])
        for group in optim.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup)
        optim.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        loss_sum += float(loss.detach())
        correct += float((logits.argmax(-1) == labels[rows]).sum())
        seen += len(rows)
        if (step + 1) % config.log_every == 0:
            entry = {
                "pretrain_step": step + 1,
                "aux_loss": round(loss_sum / config.log_every, 4),
                "train_accuracy": round(correct / seen, 3),
                "seconds": round(time.perf_counter() - started, 1),
            }
            out.append(entry)
            loss_sum = correct = seen = 0.0
            if report is not None:
                report(entry)
    return out


def _pretrain_key(config: TrainConfig, clips: Clips) -> str:
    """Hash of everything audio pre-training depends on."""
    import hashlib

    digest = hashlib.sha256()
    fields = (config.seed, config.threads, config.pretrain_steps, config.pretrain_batch)
    rest: tuple[object, ...] = (config.lr, config.warmup, config.audio_width, config.spec_augment)
    if config.pretrain_phrases:  # appended only when on: the shipped recipe's keys stay valid
        rest = (*rest, "phrases")
    digest.update(repr((*fields, *rest)).encode())
    digest.update(repr([(i.id, i.category) for i in clips.items]).encode())
    digest.update(clips.features.contiguous().numpy().data)  # the buffer itself, not a copy
    return digest.hexdigest()[:16]


def _pretrain_or_reuse(
    model: Any,
    head: torch.nn.Linear,
    clips: Clips,
    config: TrainConfig,
    report: Callable[[dict[str, Any]], None] | None,
) -> list[dict[str, Any]]:
    """Pre-train the audio side, or load the cached result of the same pre-training."""
    cached = None
    if config.pretrain_cache is not None:
        cached = config.pretrain_cache / f"pretrain-{_pretrain_key(config, clips)}.pt"
        if cached.is_file():
            state = torch.load(cached, weights_only=True)
            model.load_state_dict(state["model"])
            head.load_state_dict(state["head"])
            log: list[dict[str, Any]] = json.loads(state["log"])
            return log
    log = _pretrain_audio(
        model, head, clips, config, rng=np.random.default_rng(config.seed + 1), report=report
    )
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": model.state_dict(), "head": head.state_dict(), "log": json.dumps(log)}
        partial = cached.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(cached)  # atomic: a parallel run never loads a half-written file
    return log


def _mean_valid(projected: torch.Tensor, model: Any, feature_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each clip's valid projected audio tokens ([rows, hidden])."""
    _, out_lengths = model.model.audio_tower._get_feat_extract_output_lengths(feature_mask.sum(-1))
    steps = torch.arange(projected.shape[1])[None, :]
    valid = (steps < out_lengths[:, None]).to(projected.dtype).unsqueeze(-1)
    mean: torch.Tensor = (projected * valid).sum(1) / valid.sum(1).clamp(min=1.0)
    return mean


def _align_loss(
    model: Any,
    projected: torch.Tensor,
    feature_mask: torch.Tensor,
    clips: Clips,
    clip_rows: torch.Tensor,
) -> torch.Tensor:
    """1 - cosine(mean projected audio token, mean transcript embedding), text side detached."""
    audio = _mean_valid(projected, model, feature_mask)
    table = model.get_input_embeddings().weight.detach()
    text = torch.stack(
        [table[list(clips.transcript_ids[int(i)])].mean(0) for i in clip_rows.tolist()]
    )
    return (1.0 - torch.nn.functional.cosine_similarity(audio, text, dim=-1)).mean()


def _aux_loss(
    model: Any,
    projected: torch.Tensor,
    feature_mask: torch.Tensor,
    head: torch.nn.Linear,
    categories: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of the category from the mean of each clip's valid projected tokens."""
    mean = _mean_valid(projected, model, feature_mask)
    return torch.nn.functional.cross_entropy(head(mean), categories)


def _config_json(config: TrainConfig) -> dict[str, Any]:
    return {
        "steps": config.steps,
        "batch": config.batch,
        "lr": config.lr,
        "warmup": config.warmup,
        "seed": config.seed,
        "threads": config.threads,
        "aux_weight": config.aux_weight,
        "mix": config.mix,
        "max_clips": config.max_clips,
        "pretrain_steps": config.pretrain_steps,
        "pretrain_batch": config.pretrain_batch,
        "align_weight": config.align_weight,
        "spec_augment": config.spec_augment,
        "audio_width": config.audio_width,
        "answer_style": config.answer_style,
        "pretrain_phrases": config.pretrain_phrases,
    }


def save_checkpoint(model: Any, processor: Any, log: dict[str, Any], directory: Path) -> Path:
    """Write the checkpoint in the hub's weight layout plus ``training_log.json``."""
    from sarsteer_guard.models.hub_layout import save_hub_layout

    target = save_hub_layout(model, processor, directory)
    (target / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return target


#: Harmful category names (for reports that split by side).
HARMFUL_CATEGORIES = tuple(HARMFUL)
