"""Generation backends behind the Guard's seam (:mod:`sarsteer_guard.guard.backend`), by name.

``Guard(engine="transformers")`` (the default) and any other registered name are opened here,
so adding an engine is one :func:`register_backend` call (or one line in ``_BUILTIN``) and no
change to the turn pipeline. Factories are imported lazily: naming ``vllm`` never imports
transformers' generation code, and the reverse.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sarsteer_guard.errors import GuardError

if TYPE_CHECKING:
    from sarsteer_guard.guard.backend import GenerationBackend

__all__ = ["BackendFactory", "backend_names", "open_backend", "register_backend"]

#: ``factory(model, *, max_batch_size, batch_window_s, max_queue, **options)`` -> backend,
#: doing no I/O (``load()`` does). ``model`` is a hub id, a directory, a built-in name or,
#: where the backend supports it, an already loaded model object.
BackendFactory = Callable[..., "GenerationBackend"]

_BUILTIN: dict[str, str] = {
    "transformers": "sarsteer_guard.backends.transformers:TransformersBackend",
    "vllm": "sarsteer_guard.backends.vllm.backend:VllmBackend",
}
_registered: dict[str, BackendFactory | str] = dict(_BUILTIN)


def register_backend(name: str, factory: BackendFactory | str) -> None:
    """Make ``Guard(engine=name)`` use ``factory`` (a callable or a ``"module:attr"`` path)."""
    if not name or not name.replace("-", "_").isidentifier():
        raise GuardError(f"backend name {name!r} is not usable; use letters, digits, '-' or '_'")
    _registered[name] = factory


def backend_names() -> tuple[str, ...]:
    """Registered backend names, sorted."""
    return tuple(sorted(_registered))


def open_backend(
    name: str,
    model: Any,
    *,
    max_batch_size: int = 16,
    batch_window_s: float = 0.01,
    max_queue: int = 64,
    **options: Any,
) -> GenerationBackend:
    """Build (not load) the backend registered as ``name`` for ``model``.

    Raises:
        GuardError: no backend has that name, or its module cannot be imported (a missing
            optional dependency names the extra to install).
    """
    factory = _registered.get(name)
    if factory is None:
        raise GuardError(f"unknown engine {name!r}; use one of: {', '.join(backend_names())}")
    if isinstance(factory, str):
        factory = _import(name, factory)
    backend: GenerationBackend = factory(
        model,
        max_batch_size=max_batch_size,
        batch_window_s=batch_window_s,
        max_queue=max_queue,
        **options,
    )
    return backend


def _import(name: str, path: str) -> BackendFactory:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise GuardError(
            f"engine {name!r} needs {error.name}, which is not installed: "
            f"pip install 'sarsteer-guard[{name}]'"
        ) from error
    factory: BackendFactory = getattr(module, attr)
    return factory
