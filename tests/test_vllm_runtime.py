"""The vLLM steering runtime's per-token rule, on vLLM's batch layout (no vLLM needed).

The layout object mirrors the fields the runtime reads from vLLM's model runner
(``input_batch``, ``query_start_loc``, ``requests``); the rule it checks is the transformers
hooks' one: steer the last prompt token and every generated token, wherever a step cuts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from sarsteer_guard.backends.vllm.protocol import EXTRA_KEY, RowSteering, cache_salt
from sarsteer_guard.backends.vllm.runtime import SteeringRuntime, VectorSetError

L, H = 3, 8


@dataclass
class Layout:
    """vLLM's runner fields for one step: request ids, computed tokens, scheduled tokens."""

    prompt_lens: dict[str, int]
    steering: dict[str, RowSteering]
    input_batch: Any = None
    query_start_loc: Any = None
    requests: dict[str, Any] = field(default_factory=dict)

    def step(self, scheduled: list[tuple[str, int, int]]) -> int:
        """``(rid, computed, count)`` per row; returns the step's token count."""
        ids = [rid for rid, _, _ in scheduled]
        counts = [c for _, _, c in scheduled]
        self.input_batch = SimpleNamespace(
            num_reqs=len(ids),
            req_ids=ids,
            num_computed_tokens_cpu=np.array([c for _, c, _ in scheduled]),
        )
        self.query_start_loc = SimpleNamespace(np=np.concatenate([[0], np.cumsum(counts)]))
        self.requests = {
            rid: SimpleNamespace(
                num_prompt_tokens=self.prompt_lens[rid],
                sampling_params=SimpleNamespace(
                    extra_args={EXTRA_KEY: self.steering[rid].to_extra()}
                ),
            )
            for rid in ids
        }
        return sum(counts)


def runtime() -> SteeringRuntime:
    rt = SteeringRuntime(
        num_layers=L, hidden=H, max_tokens=64, max_rows=4, max_sets=2, device=torch.device("cpu")
    )
    v = np.arange(L * H, dtype=np.float32).reshape(L, H) + 1
    rt.put_set(1, "set", v, np.array([1.0, 2.0, 3.0], dtype=np.float32), [0, 2])
    return rt


def test_last_prompt_token_and_generated_tokens_are_steered_across_chunks() -> None:
    rt = runtime()
    steer = RowSteering(rid="a", slot=1, set_id="set", alpha=0.5)
    plain = RowSteering(rid="b")
    layout = Layout({"a": 10, "b": 6}, {"a": steer, "b": plain})
    rt.attach(layout)
    # Step 1: a's first 6 prompt tokens (a chunk), b's whole prompt.
    n = layout.step([("a", 0, 6), ("b", 0, 6)])
    rt.before_step(n)
    assert rt.strength[:n].tolist() == [0.0] * 12
    # Step 2: a's last 4 prompt tokens (position 9 is the last prompt token), b decodes.
    n = layout.step([("a", 6, 4), ("b", 6, 1)])
    rt.before_step(n)
    assert rt.strength[:n].tolist() == [0.0, 0.0, 0.0, 0.5, 0.0]
    assert rt.set_row[3].item() == 1
    # Step 3: a resumed after preemption recomputes prompt + 2 generated tokens.
    n = layout.step([("a", 0, 12)])
    rt.before_step(n)
    assert rt.strength[:n].tolist() == [0.0] * 9 + [0.5] * 3
    assert rt.strength[n : n + 5].abs().sum().item() == 0.0  # the old tail is cleared
    assert rt.stats()["partial_prefills"] == 1
    assert rt.stats()["resumed"] == 1
    # The layer table holds beta_l * v_l on steered layers, zero on the others.
    assert torch.equal(rt.tables[1][1], torch.zeros(H))
    assert torch.equal(rt.tables[2][1], 3.0 * (torch.arange(2 * H, 3 * H).float() + 1))


def test_prompt_only_steers_one_token_and_a_stale_slot_fails_loudly() -> None:
    rt = runtime()
    only = RowSteering(rid="a", slot=1, set_id="set", alpha=2.0, prompt_only=True)
    layout = Layout({"a": 3}, {"a": only})
    rt.attach(layout)
    n = layout.step([("a", 0, 3)])
    rt.before_step(n)
    assert rt.strength[:n].tolist() == [0.0, 0.0, 2.0]
    n = layout.step([("a", 3, 1)])
    rt.before_step(n)
    assert rt.strength[:n].tolist() == [0.0]
    stale = RowSteering(rid="c", slot=1, set_id="other", alpha=1.0)
    layout = Layout({"c": 2}, {"c": stale})
    rt.attach(layout)
    with pytest.raises(VectorSetError, match="other"):
        rt.before_step(layout.step([("c", 0, 2)]))


def test_cache_salt_separates_steerings_and_not_readouts() -> None:
    base = RowSteering(rid="x", slot=0, set_id="s", alpha=0.5)
    assert cache_salt(RowSteering(rid="y")) is None
    assert cache_salt(RowSteering(rid="y", slot=0, set_id="s", alpha=0.0)) is None
    assert cache_salt(base) == cache_salt(RowSteering(rid="z", slot=3, set_id="s", alpha=0.5))
    assert cache_salt(base) != cache_salt(RowSteering(rid="x", slot=0, set_id="s", alpha=0.6))
    assert cache_salt(base) != cache_salt(RowSteering(rid="x", slot=0, set_id="t", alpha=0.5))
    assert cache_salt(base) == cache_salt(
        RowSteering(rid="x", slot=0, set_id="s", alpha=0.5, readout_layer=1)
    )
    assert RowSteering.from_extra({EXTRA_KEY: base.to_extra()}) == base
    with pytest.raises(ValueError, match="vector set"):
        RowSteering(rid="x", alpha=0.5)
