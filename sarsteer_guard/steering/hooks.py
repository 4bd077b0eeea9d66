"""Forward hooks on decoder layers: last-position capture and SARSteer steering.

Both work on any list of modules whose forward returns the hidden states either as a tensor or
as the first item of a tuple, shaped ``[batch, seq, hidden]``. Outputs with extra leading dims
(Gemma 3n's AltUp ``[streams, batch, seq, hidden]``) use stream 0, the active prediction that the
model reads out; the other streams are left alone.

Batches must be left padded: the last position is then every row's real last token.
Steering assumes a KV cache (``use_cache=True``): without one, every step recomputes the whole
sequence and only the newest token would be steered.

torch.compile: hooks registered after a module was compiled are ignored by the compiled code,
so keep one :class:`SteeringHooks` registered for the model's lifetime and switch steering with
its ``set_*`` methods (alpha 0 adds exact zeros), which write preallocated buffers in place. The
transformers backend does exactly that: it registers one instance per model when it starts and
writes each batch's vectors, layers, beta and per-row alpha into it (see
``sarsteer_guard.backends.transformers.steering``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sarsteer_guard.errors import VectorsError
from sarsteer_guard.steering.vectors import SteeringVectors

__all__ = ["AlphaLike", "LastPositionCapture", "SteeringHooks", "steer"]

#: Steering strength: one float for the whole batch, or one per batch row.
AlphaLike = float | Sequence[float] | torch.Tensor


def _hidden_of(output: Any) -> torch.Tensor:
    """The hidden-states tensor of a layer output (plain tensor or first tuple item)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise VectorsError(
        f"layer returned {type(output).__name__}, not a tensor or a tuple starting with one: "
        "hook the decoder layers, not another module"
    )


def _stream(hs: torch.Tensor) -> torch.Tensor:
    """``[batch, seq, hidden]`` view of a hidden-states tensor (stream 0 of a 4-D output)."""
    if hs.ndim == 3:
        return hs
    if hs.ndim > 3:
        return hs[(0,) * (hs.ndim - 3)]
    raise VectorsError(
        f"layer output has shape {tuple(hs.shape)}, expected [batch, seq, hidden]: "
        "hook the decoder layers and pass batched inputs"
    )


def _with_hidden(output: Any, hs: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced by ``hs`` (same container type)."""
    if isinstance(output, torch.Tensor):
        return hs
    if isinstance(output, list):
        return [hs, *output[1:]]
    if hasattr(output, "_fields"):  # namedtuple: positional constructor
        return type(output)(hs, *output[1:])
    return (hs, *output[1:])


def _float_device_dtype(layer: nn.Module) -> tuple[torch.device, torch.dtype] | None:
    for t in itertools.chain(layer.parameters(), layer.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return None


class _LayerHooks:
    """Lifecycle shared by capture and steering: register on start, remove on close/exit."""

    _handles: list[RemovableHandle]

    def start(self) -> Self:
        """Register the hooks (idempotent)."""
        raise NotImplementedError

    def _register(self, pairs: Sequence[tuple[nn.Module, Any]]) -> None:
        """Register ``(layer, hook)`` pairs; on any failure remove those already registered."""
        try:
            for layer, hook in pairs:
                self._handles.append(layer.register_forward_hook(hook))
        except BaseException:
            self.close()
            raise

    @property
    def active(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def close(self) -> None:
        """Remove the hooks (idempotent); what they recorded stays readable."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LastPositionCapture(_LayerHooks):
    """Record the last-position output of each given layer on every forward call.

    Each hook copies ``hs[:, -1, :]`` into one preallocated float32 buffer
    ``[batch, layers, hidden]`` on the device (a copy, so later in-place edits of the stream
    cannot alias it; no Python list grows per call, which would make dynamo recompile). The
    buffer holds the most recent forward call; :attr:`states` moves it to the host in one copy.
    Hooks run in registration order: start a capture before :class:`SteeringHooks` on the same
    layers to record unsteered states, after it to record steered ones.

    Example:
        >>> with LastPositionCapture(model_layers) as cap:  # doctest: +SKIP
        ...     model(**inputs)
        >>> cap.states.shape  # [batch, layers, hidden]  # doctest: +SKIP
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self._layers = list(layers)
        if not self._layers:
            raise VectorsError("LastPositionCapture needs at least one layer")
        self._handles: list[RemovableHandle] = []
        self._buf: torch.Tensor | None = None
        self._written = False

    def start(self) -> LastPositionCapture:
        """Register the hooks (idempotent). Earlier captures are forgotten."""
        if self._handles:
            return self
        self._written = False
        self._register([(layer, self._make_hook(j)) for j, layer in enumerate(self._layers)])
        return self

    def _make_hook(self, j: int) -> Any:
        n_layers = len(self._layers)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            last = _stream(_hidden_of(output))[:, -1, :]
            buf = self._buf
            if buf is None or buf.shape[0] != last.shape[0] or buf.shape[2] != last.shape[1]:
                # A normal tensor even under inference_mode, so later no_grad runs can write it.
                with torch.inference_mode(False):
                    buf = torch.empty(
                        (last.shape[0], n_layers, last.shape[1]),
                        dtype=torch.float32,
                        device=last.device,
                    )
                self._buf = buf
            buf[:, j].copy_(last.detach())  # converts dtype and device on the device side
            self._written = True

        return hook

    @property
    def device_states(self) -> torch.Tensor:
        """``[batch, layers, hidden]`` float32 on the device (a clone; no host transfer).

        Raises:
            VectorsError: no forward pass has run since :meth:`start`.
        """
        if self._buf is None or not self._written:
            raise VectorsError("no forward pass was captured: run the model inside the context")
        return self._buf.clone()

    @property
    def states(self) -> torch.Tensor:
        """``[batch, layers, hidden]`` float32 on the CPU, copied from the device once.

        Raises:
            VectorsError: no forward pass has run since :meth:`start`.
        """
        if self._buf is None or not self._written:
            raise VectorsError("no forward pass was captured: run the model inside the context")
        return self._buf.to("cpu", copy=True)


def _alpha_tensor(alpha: AlphaLike) -> torch.Tensor:
    """Normalise ``alpha`` to a non-empty finite float32 CPU vector ``[rows]``."""
    if isinstance(alpha, bool):
        raise VectorsError(f"alpha must be a number or one number per row, got {alpha!r}")
    if isinstance(alpha, torch.Tensor):
        if alpha.ndim > 1:
            raise VectorsError(
                f"alpha tensor must be a scalar or [batch], got {tuple(alpha.shape)}"
            )
        t = alpha.detach().to("cpu", torch.float32).reshape(-1).clone()
    elif isinstance(alpha, int | float):
        t = torch.tensor([float(alpha)], dtype=torch.float32)
    else:
        try:
            t = torch.tensor([float(a) for a in alpha], dtype=torch.float32)
        except (TypeError, ValueError):
            raise VectorsError(
                f"alpha must be a number or one number per row, got {alpha!r}"
            ) from None
    if t.numel() == 0:
        raise VectorsError("alpha is empty: pass a number or one number per batch row")
    if not bool(torch.isfinite(t).all()):
        raise VectorsError("alpha contains NaN or Inf: pass finite values")
    return t


def _vectors_tensor(vectors: torch.Tensor | SteeringVectors) -> torch.Tensor:
    if isinstance(vectors, SteeringVectors):
        return vectors.vectors  # already a private float32 CPU clone
    if not isinstance(vectors, torch.Tensor) or vectors.ndim != 2:
        raise VectorsError(
            f"vectors must be a [layers, hidden] tensor or SteeringVectors, got "
            f"{getattr(vectors, 'shape', type(vectors).__name__)}"
        )
    t = vectors.detach().to("cpu", torch.float32, copy=True)
    if not bool(torch.isfinite(t).all()):
        raise VectorsError("vectors contain NaN or Inf: recalibrate")
    return t


class SteeringHooks(_LayerHooks):
    """Add ``alpha * beta_l * v_l`` to the last position of each steered layer's output.

    Applied on every forward call: prefill (the prompt's last token) and each decode step (the
    new token, sequence length 1 with a KV cache). With ``prompt_only=True`` calls whose sequence
    length is 1 are skipped, so only the prefill is steered (a one-token prompt therefore counts
    as a decode step and is not steered).

    On :meth:`start` each hooked layer gets ``beta_l * v_l`` in float32 on its device and the
    per-call offset ``alpha * beta_l * v_l`` in the layer's dtype (computed in float32, cast
    once: a bf16 stream stays bf16). The ``set_*`` methods rewrite those buffers in place, so
    steering can be switched without re-registering hooks. Offsets that are zero are stored as
    ``-0.0``, the exact additive identity in IEEE 754 (``x + -0.0 == x`` bit for bit, ``-0.0``
    included), so rows with alpha 0 are bit-identical to an unhooked run.

    Long-lived use, one instance per model (what compiled or graph-captured engines need, since
    they ignore hooks registered after compilation): build it over every layer
    (``layer_ids=None``) with ``max_rows`` set to the largest batch, start it once, and write
    each batch's steering with :meth:`set_vectors`, :meth:`set_beta`, :meth:`set_layer_ids`,
    :meth:`set_readout_layer`, :meth:`set_alpha` and :meth:`set_enabled`. With ``max_rows`` the
    offsets are preallocated ``[max_rows, hidden]`` buffers: ``set_alpha`` with up to
    ``max_rows`` values (or one for all rows) rewrites them in place, rows past the given values
    get exact zeros, and the hooks add the rows in use (a view kept ready, so a call never
    slices). More values than ``max_rows`` grow the buffers once (a new allocation). A disabled
    instance leaves every output untouched and records no readout.

    The hooks edit the output in place when autograd does not need it (``no_grad`` /
    ``inference_mode`` / outputs without grad) and out of place otherwise. The hook path has
    no host synchronisation.

    Args:
        layers: all decoder layers, in order; ``len(layers)`` must equal ``vectors.shape[0]``.
        vectors: ``[layers, hidden]`` or a :class:`SteeringVectors`.
        alpha: steering strength, one float or one per batch row (see :meth:`set_alpha`).
        beta: per-layer weights ``[layers]`` (default all 1).
        layer_ids: indices of the layers to steer (default all); only these (and the readout
            layer) get hooks.
        prompt_only: steer the prefill only.
        readout_layer: if set, record at prefill the projection of that layer's last-position
            state (before this layer's own offset) onto ``unit(v_l)``; see :meth:`readout`.
        max_rows: preallocate offsets for this many batch rows (see above); None sizes them to
            ``alpha``.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        vectors: torch.Tensor | SteeringVectors,
        *,
        alpha: AlphaLike = 0.1,
        beta: Sequence[float] | torch.Tensor | None = None,
        layer_ids: Sequence[int] | None = None,
        prompt_only: bool = False,
        readout_layer: int | None = None,
        max_rows: int | None = None,
    ) -> None:
        self._layers = list(layers)
        self._vectors = _vectors_tensor(vectors)
        n_layers, self._hidden = self._vectors.shape
        if len(self._layers) != n_layers:
            raise VectorsError(
                f"vectors have {n_layers} layers but {len(self._layers)} layers were given: "
                "pass all decoder layers (select with layer_ids) or recalibrate for this model"
            )
        if max_rows is not None and max_rows < 1:
            raise VectorsError(f"max_rows must be at least 1, got {max_rows}")
        self._beta = self._beta_tensor(beta)
        self._alpha = _alpha_tensor(alpha)
        self._max_rows = None if max_rows is None else max(max_rows, self._alpha.numel())
        ids = self._valid_ids(layer_ids)
        self._steered = frozenset(ids)
        if readout_layer is not None and not 0 <= readout_layer < n_layers:
            raise VectorsError(f"readout_layer must be in [0, {n_layers}), got {readout_layer}")
        self._readout_layer = readout_layer
        self.prompt_only = bool(prompt_only)
        self._enabled = True
        hooked = set(ids) | ({readout_layer} if readout_layer is not None else set())
        self._hooked = tuple(sorted(hooked))
        self._handles: list[RemovableHandle] = []
        # Device state, built by start(): per hooked layer (keyed by layer index).
        self._bv: dict[int, torch.Tensor] = {}  # beta_l * v_l, float32, layer device
        self._delta: dict[int, torch.Tensor] = {}  # alpha * beta_l * v_l, [rows, H], layer dtype
        # What the hooks add: ``_delta`` itself, or with ``max_rows`` a view of its first rows
        # (one row when one alpha is given: it broadcasts). Kept ready so a call never slices.
        self._active: dict[int, torch.Tensor] = {}
        self._unit: torch.Tensor | None = None  # unit(v_readout), float32, layer device
        self._readout: torch.Tensor | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> SteeringHooks:
        """Move the vectors to each layer's device and dtype and register the hooks (idempotent).

        A fresh start forgets the previous :meth:`readout`.
        """
        if self._handles:
            return self
        self._readout = None
        for idx in self._hooked:
            dd = _float_device_dtype(self._layers[idx])
            device, dtype = dd if dd is not None else (torch.device("cpu"), torch.float32)
            self._place(idx, device, dtype)
        self._register([(self._layers[idx], self._make_hook(idx)) for idx in self._hooked])
        return self

    # -- settings ------------------------------------------------------------------------------

    @property
    def alpha(self) -> torch.Tensor:
        """Current alpha as float32 ``[rows]`` (one row broadcasts over the batch)."""
        return self._alpha.clone()

    @property
    def enabled(self) -> bool:
        """Whether the hooks act (a disabled instance leaves outputs untouched)."""
        return self._enabled

    def set_enabled(self, enabled: bool) -> None:
        """Switch the hooks on or off without touching their buffers or registrations."""
        self._enabled = bool(enabled)

    def set_alpha(self, alpha: AlphaLike) -> None:
        """Set the strength: one float for all rows, or one per batch row (``[batch]``).

        A row with alpha 0 is left bit-identical. Buffers are rewritten in place when their row
        count is unchanged (always, with ``max_rows``, up to ``max_rows`` values), so compiled
        code keeps working without recompiling.
        """
        self._alpha = _alpha_tensor(alpha)
        if self._max_rows is not None and self._alpha.numel() > self._max_rows:
            self._max_rows = self._alpha.numel()  # grows once: the buffers are reallocated
        self._refresh()

    def set_beta(self, beta: Sequence[float] | torch.Tensor | None) -> None:
        """Set per-layer weights ``[layers]`` (None = all 1), in place."""
        self._beta = self._beta_tensor(beta)
        self._refresh_vectors()

    def set_vectors(self, vectors: torch.Tensor | SteeringVectors) -> None:
        """Swap in another vector set of the same shape, in place (no re-registration)."""
        new = _vectors_tensor(vectors)
        if new.shape != self._vectors.shape:
            raise VectorsError(
                f"new vectors have shape {tuple(new.shape)}, expected "
                f"{tuple(self._vectors.shape)}: use a set calibrated for this model"
            )
        self._vectors = new
        self._refresh_vectors()

    def set_layer_ids(self, layer_ids: Sequence[int] | None) -> None:
        """Steer only these layers (None = every layer); each must have a hook.

        Raises:
            VectorsError: an index is out of range, repeated, or has no hook (build the hooks
                with ``layer_ids=None`` to choose layers later).
        """
        ids = self._valid_ids(layer_ids)
        missing = sorted(set(ids) - set(self._hooked))
        if missing:
            raise VectorsError(
                f"layers {missing} have no steering hook: build SteeringHooks with "
                "layer_ids=None to choose the steered layers later"
            )
        self._steered = frozenset(ids)

    def set_readout_layer(self, readout_layer: int | None) -> None:
        """Read out at another hooked layer (None = no readout); forgets the last readout.

        Raises:
            VectorsError: the layer has no hook.
        """
        if readout_layer is not None and readout_layer not in self._hooked:
            raise VectorsError(
                f"readout_layer {readout_layer} has no hook: build SteeringHooks with "
                "layer_ids=None (every layer hooked) to move the readout"
            )
        self._readout_layer = readout_layer
        self._readout = None
        if self._handles:
            self._refresh_unit()

    def readout(self) -> torch.Tensor | None:
        """Projection onto ``unit(v_l)`` at the readout layer for the latest prefill, ``[batch]``.

        float32 on the CPU (one host copy, hence a method), or None when no readout layer was
        set or no prefill ran yet. Decode steps do not overwrite it. It is read before this
        layer's own offset, but after earlier layers' steering.
        """
        return None if self._readout is None else self._readout.to("cpu", copy=True)

    # -- internals -----------------------------------------------------------------------------

    def _valid_ids(self, layer_ids: Sequence[int] | None) -> list[int]:
        n_layers = self._vectors.shape[0]
        ids = list(range(n_layers)) if layer_ids is None else [int(i) for i in layer_ids]
        if len(set(ids)) != len(ids) or any(not 0 <= i < n_layers for i in ids):
            raise VectorsError(
                f"layer_ids must be distinct indices in [0, {n_layers}), got {list(ids)}"
            )
        return ids

    def _beta_tensor(self, beta: Sequence[float] | torch.Tensor | None) -> torch.Tensor:
        n_layers = self._vectors.shape[0]
        if beta is None:
            return torch.ones(n_layers, dtype=torch.float32)
        b = torch.as_tensor(beta).detach().to("cpu", torch.float32).reshape(-1).clone()
        if b.numel() != n_layers:
            raise VectorsError(
                f"beta has {b.numel()} weights but there are {n_layers} layers: "
                "pass one weight per layer"
            )
        if not bool(torch.isfinite(b).all()):
            raise VectorsError("beta contains NaN or Inf: pass finite weights")
        return b

    def _row_alpha(self) -> torch.Tensor:
        """Alpha per buffer row: as given, or padded to ``max_rows`` (one value fills all)."""
        alpha, rows = self._alpha, self._max_rows
        if rows is None or alpha.numel() == rows:
            return alpha
        if alpha.numel() == 1:
            return alpha.expand(rows)
        return torch.cat([alpha, torch.zeros(rows - alpha.numel(), dtype=alpha.dtype)])

    @torch.inference_mode(False)
    @torch.no_grad()
    def _place(self, idx: int, device: torch.device, dtype: torch.dtype) -> None:
        """Build layer ``idx``'s device buffers (start, or a layer that moved device/dtype).

        Buffers are normal tensors even when built under ``inference_mode``, so that later
        in-place updates outside it are allowed.
        """
        v = self._vectors[idx].to(device)
        self._bv[idx] = v * self._beta[idx].item()
        if idx == self._readout_layer:
            self._unit = _unit_of(v)
        self._set_delta(idx, self._offset(idx).to(dtype))

    def _set_delta(self, idx: int, delta: torch.Tensor) -> None:
        self._delta[idx] = delta
        given = self._alpha.numel()
        self._active[idx] = delta if self._max_rows is None else delta[:given]

    def _offset(self, idx: int) -> torch.Tensor:
        bv = self._bv[idx]
        out = self._row_alpha().to(bv.device)[:, None] * bv[None, :]
        return torch.where(out == 0, -0.0, out)  # -0.0: the exact additive identity

    @torch.inference_mode(False)
    @torch.no_grad()
    def _refresh_unit(self) -> None:
        idx = self._readout_layer
        if idx is None or idx not in self._bv:
            self._unit = None
            return
        unit = _unit_of(self._vectors[idx].to(self._bv[idx].device))
        if self._unit is not None and self._unit.device == unit.device:
            self._unit.copy_(unit)
        else:
            self._unit = unit

    @torch.inference_mode(False)
    @torch.no_grad()
    def _refresh_vectors(self) -> None:
        if not self._handles:
            return
        for idx in self._hooked:
            bv = self._bv[idx]
            bv.copy_(self._vectors[idx].to(bv.device) * self._beta[idx].item())
        self._refresh_unit()
        self._refresh()

    @torch.inference_mode(False)
    @torch.no_grad()
    def _refresh(self) -> None:
        if not self._handles:
            return
        for idx in self._hooked:
            old = self._delta[idx]
            new = self._offset(idx).to(old.dtype)
            if new.shape == old.shape:
                old.copy_(new)
                self._set_delta(idx, old)  # the rows in use may have changed
            else:
                self._set_delta(idx, new)

    def _make_hook(self, idx: int) -> Any:
        hidden = self._hidden

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not self._enabled:
                return None
            full = _hidden_of(output)
            hs = _stream(full)
            if hs.shape[-1] != hidden:
                raise VectorsError(
                    f"layer {idx} outputs hidden size {hs.shape[-1]} but the vectors have "
                    f"{hidden}: recalibrate vectors for this model"
                )
            seq = hs.shape[-2]
            if idx == self._readout_layer and seq > 1 and self._unit is not None:
                unit = self._unit
                if unit.device != hs.device:
                    unit = self._unit = unit.to(hs.device)
                self._readout = hs[:, -1, :].detach().float() @ unit
            if idx not in self._steered or (self.prompt_only and seq == 1):
                return None
            delta = self._active[idx]
            rows = hs.shape[0]
            if (delta.shape[0] != rows and delta.shape[0] != 1) or (
                delta.device != hs.device or delta.dtype != hs.dtype
            ):
                delta = self._fit(idx, hs)
            if torch.is_grad_enabled() and full.requires_grad:
                full = full.clone()  # autograd may need the original: edit a copy
                _stream(full)[:, -1, :].add_(delta)
                return _with_hidden(output, full)
            hs[:, -1, :].add_(delta)
            return None

        return hook

    def _fit(self, idx: int, hs: torch.Tensor) -> torch.Tensor:
        """Slow path: move layer ``idx``'s buffers to ``hs``'s device/dtype, or explain a misfit."""
        delta = self._active[idx]
        if delta.device != hs.device or delta.dtype != hs.dtype:
            self._place(idx, hs.device, hs.dtype)  # layer moved or autocast: once
            delta = self._active[idx]
        rows, given = hs.shape[0], delta.shape[0]
        if given != 1 and given != rows:
            raise VectorsError(
                f"alpha has {given} rows but the batch has {rows}: "
                "call set_alpha with one value per row (or one for all)"
            )
        return delta


def _unit_of(v: torch.Tensor) -> torch.Tensor:
    norm = v.norm()
    return v / norm if float(norm) > 0 else torch.zeros_like(v)


def steer(
    layers: Sequence[nn.Module],
    vectors: torch.Tensor | SteeringVectors,
    alpha: AlphaLike = 0.1,
    *,
    beta: Sequence[float] | torch.Tensor | None = None,
    layer_ids: Sequence[int] | None = None,
    prompt_only: bool = False,
    readout_layer: int | None = None,
) -> SteeringHooks:
    """Build (not start) a :class:`SteeringHooks`; use it as a context manager around generation."""
    return SteeringHooks(
        layers,
        vectors,
        alpha=alpha,
        beta=beta,
        layer_ids=layer_ids,
        prompt_only=prompt_only,
        readout_layer=readout_layer,
    )
