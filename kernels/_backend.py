"""Backend selection shared by every op.

Backends: ``"torch"`` (the reference, plain PyTorch), ``"triton"`` (Triton kernels; CPU tensors only under the Triton
interpreter), ``"native"`` (the C++ extension; the dispatcher picks the CPU or CUDA kernel) and ``"auto"``.

Each op registers one :class:`Implementation` per backend with what it supports (devices, dtypes, and a check of the
remaining arguments). A call picks its backend from, in order: the ``backend=`` argument unless it is ``"auto"``, the
innermost :func:`use_backend` block, the process default (:func:`set_default_backend`, or the ``KERNELS_BACKEND``
environment variable), else ``"auto"``.

Rules (design.md):
* ``"auto"`` takes the first fast backend in the op's order for that device that supports the call. When none does,
  the call runs on ``"torch"`` and a warning names the unsupported argument, once per op and reason.
* A named backend that cannot serve a call raises :class:`BackendError` naming the argument and the supported values.

Cost per call: what depends only on (op, requested backend, device type, dtype) -- the order ``"auto"`` tries, the
devices, dtypes and environment (packages, interpreter, kernels built) -- is decided once and cached with the op
(a *plan*); a call runs only the backends' ``check`` of its arguments. Registering an implementation or setting an
auto order clears the op's plans; ``use_backend``, ``set_default_backend`` and ``backend=`` pick the plan per call.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch

from ._extension import has_native_kernel

BACKENDS = ("torch", "triton", "native")
CHOICES = ("auto",) + BACKENDS

# Default preference of the fast backends per device type; an op may set its own with `set_auto_order`.
_DEFAULT_AUTO_ORDER = {"cuda": ("native", "triton"), "cpu": ("native",)}


class BackendError(ValueError):
    """A backend named explicitly cannot serve a call; the message names the argument and what is supported."""


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


@dataclass(frozen=True)
class Implementation:
    """One backend of one op and what it supports.

    ``dtypes`` maps a device type ("cpu", "cuda") to the dtypes served there; devices absent from it are not served.
    ``check(**arguments)`` returns ``None`` when the call is supported, else a reason that names the argument.
    ``native_op`` is the C++ op whose registered kernels make a native implementation available on a device.
    """

    op: str
    backend: str
    fn: Callable[..., Any]
    dtypes: Mapping[str, tuple]
    tensor_arg: str = "x"
    check: Callable[..., str | None] | None = None
    native_op: str | None = None
    notes: str = ""

    def unavailable(self, device_type: str) -> str | None:
        """Why this backend cannot run at all on ``device_type`` here, or None."""
        if device_type not in self.dtypes:
            served = ", ".join(self.dtypes) or "no device"
            return f"argument `{self.tensor_arg}` is on {device_type}; backend {self.backend!r} serves {served}"
        return _environment_reason(self.backend, self.native_op or self.op, device_type, self.tensor_arg)

    def unserved(self, device_type: str, dtype: torch.dtype) -> str | None:
        """Why this backend cannot serve any call on (``device_type``, ``dtype``) here, or None."""
        reason = self.unavailable(device_type)
        if reason is not None:
            return reason
        served = self.dtypes[device_type]
        if dtype not in served:
            return (f"argument `{self.tensor_arg}` has dtype {_dtype_names([dtype])}; backend {self.backend!r} "
                    f"supports {_dtype_names(served)} on {device_type}")
        return None


@dataclass
class _OpEntry:
    implementations: dict[str, Implementation] = field(default_factory=dict)
    auto_order: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(_DEFAULT_AUTO_ORDER))
    # (backend asked for, device type, dtype) -> ((implementation, reason it cannot serve or None), ...) in the order
    # tried; for a named backend one pair, for "auto" the fast backends in order. Cleared when the op changes.
    plans: dict[tuple, tuple] = field(default_factory=dict)


_REGISTRY: dict[str, _OpEntry] = {}
_STACK: list[str] = []  # backends of the enclosing `use_backend` blocks (process-wide, innermost last)
_DEFAULT = [os.environ.get("KERNELS_BACKEND", "auto")]
_WARNED: set[tuple[str, str]] = set()
_LISTENERS: list[Callable[[str], None]] = []  # called with an op's name after its backends or auto order change


@torch.compiler.assume_constant_result
def _environment_reason(backend: str, native_op: str, device_type: str, tensor_arg: str) -> str | None:
    """Why ``backend`` cannot run on ``device_type`` in this process (missing package, interpreter off, kernel not
    built), or None. Fixed for the life of the process, so torch.compile treats it as a constant."""
    if backend == "triton":
        if not _triton_importable():
            return "backend 'triton' needs the triton package, which is not installed"
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return (f"argument `{tensor_arg}` is on cpu; backend 'triton' runs CPU tensors only under the Triton "
                    "interpreter (TRITON_INTERPRET=1)")
    if backend == "native" and not has_native_kernel(native_op, device_type):
        return f"backend 'native' has no {device_type} kernel for kernels::{native_op} in this build of kernels._C"
    return None


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _validate_name(name: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"argument `backend` must be one of {', '.join(map(repr, CHOICES))}; got {name!r}")
    return name


def register(implementation: Implementation) -> Implementation:
    """Adds (or replaces) one backend of one op in the registry."""
    _validate_name(implementation.backend)
    entry = _REGISTRY.setdefault(implementation.op, _OpEntry())
    entry.implementations[implementation.backend] = implementation
    _changed(implementation.op, entry)
    return implementation


def set_auto_order(op: str, device_type: str, order: tuple[str, ...]) -> None:
    """Sets which fast backends ``"auto"`` tries for ``op`` on ``device_type``, in order."""
    for name in order:
        _validate_name(name)
    entry = _REGISTRY.setdefault(op, _OpEntry())
    entry.auto_order[device_type] = tuple(order)
    _changed(op, entry)


def _changed(op: str, entry: _OpEntry) -> None:
    entry.plans.clear()
    for listener in _LISTENERS:
        listener(op)


def on_change(listener: Callable[[str], None]) -> None:
    """Calls ``listener(op)`` whenever ``op``'s backends or auto order change (kernels._ops._fast keeps its C++
    table of natively served dtypes up to date this way)."""
    _LISTENERS.append(listener)


def auto_native_dtypes(op: str, device_type: str, dtypes, *, checked_by_caller: bool = False) -> tuple:
    """Those of ``dtypes`` for which backend ``"auto"`` runs ``op``'s native implementation on ``device_type``
    whatever the call's other arguments: native is the first fast backend that serves them, and it has no per-call
    ``check`` -- or the caller makes the same checks itself (``checked_by_caller``)."""
    entry = _REGISTRY.get(op)
    if entry is None:
        return ()
    native = []
    for dtype in dtypes:
        for implementation, reason in _plan(op, entry, "auto", device_type, dtype):
            if reason is None:
                if implementation.backend == "native" and (implementation.check is None or checked_by_caller):
                    native.append(dtype)
                break
    return tuple(native)


def set_default_backend(name: str) -> None:
    """Sets the process-wide default backend (used when a call passes ``backend="auto"`` outside any block)."""
    _DEFAULT[0] = _validate_name(name)


def get_default_backend() -> str:
    return _DEFAULT[0]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, calls that pass ``backend="auto"`` use ``name`` instead."""
    _STACK.append(_validate_name(name))
    try:
        yield
    finally:
        _STACK.pop()


def current_backend(backend: str | None = "auto") -> str:
    """The backend a call with ``backend=`` would ask for before the support checks."""
    if backend in BACKENDS:
        return backend
    if backend not in (None, "auto"):
        return _validate_name(backend)
    if _STACK:
        return _STACK[-1]
    return _validate_name(_DEFAULT[0])


def _warn_fallback_once(op: str, reason: str) -> None:
    if torch.compiler.is_compiling() or (op, reason) in _WARNED:
        return
    _WARNED.add((op, reason))
    warnings.warn(f"kernels.{op}: running on the 'torch' backend because {reason}", RuntimeWarning, stacklevel=4)


def _plan(op: str, entry: _OpEntry, name: str, device_type: str, dtype: torch.dtype) -> tuple:
    if name != "auto":
        implementation = entry.implementations.get(name)
        if implementation is None:
            have = ", ".join(repr(b) for b in entry.implementations)
            raise BackendError(f"kernels.{op}: backend {name!r} is not implemented for this op; available: {have}")
        return ((implementation, implementation.unserved(device_type, dtype)),)
    candidates = [entry.implementations[candidate] for candidate in entry.auto_order.get(device_type, ())
                  if candidate in entry.implementations]
    return tuple((implementation, implementation.unserved(device_type, dtype)) for implementation in candidates)


def select(op: str, backend: str | None, *, device: torch.device, dtype: torch.dtype, **arguments) -> Implementation:
    """Picks the implementation of ``op`` that serves a call, by the rules in the module docstring.

    ``arguments`` are passed to each backend's ``check``; every op passes the same names to every backend.
    """
    entry = _REGISTRY[op]
    name = current_backend(backend)
    key = (name, device.type, dtype)
    plan = entry.plans.get(key)
    if plan is None:
        plan = entry.plans[key] = _plan(op, entry, name, device.type, dtype)
    if name != "auto":
        implementation, reason = plan[0]
        if reason is None and implementation.check is not None:
            reason = implementation.check(**arguments)
        if reason is not None:
            raise BackendError(f"kernels.{op}: backend {name!r} cannot serve this call: {reason}")
        return implementation
    reasons = []
    for implementation, reason in plan:
        if reason is None and implementation.check is not None:
            reason = implementation.check(**arguments)
        if reason is None:
            return implementation
        reasons.append(reason)
    if reasons:
        _warn_fallback_once(op, reasons[0])
    return entry.implementations["torch"]


def registered_ops() -> list[str]:
    return sorted(_REGISTRY)


def implementations(op: str) -> dict[str, Implementation]:
    return dict(_REGISTRY[op].implementations)


def backend_table() -> list[dict[str, str]]:
    """One row per (op, backend): devices and dtypes served, availability on this machine, limits."""
    rows = []
    for op in registered_ops():
        entry = _REGISTRY[op]
        for backend in BACKENDS:
            implementation = entry.implementations.get(backend)
            if implementation is None:
                continue
            served = "; ".join(f"{dev}: {_dtype_names(types)}" for dev, types in implementation.dtypes.items())
            here = []
            for device_type in implementation.dtypes:
                if device_type == "cuda" and not torch.cuda.is_available():
                    continue
                if implementation.unavailable(device_type) is None:
                    here.append(device_type)
            rows.append({
                "op": op,
                "backend": backend,
                "dtypes by device": served,
                "usable here": ", ".join(here) or "-",
                "auto tries": "; ".join(
                    f"{dev}: {' > '.join(order)}" for dev, order in entry.auto_order.items()) if backend == "torch" else "",
                "limits": implementation.notes,
            })
    return rows
