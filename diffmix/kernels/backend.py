"""One switch for every op with a hand-written kernel.

Each such op (the branching smoother, the fused compressor/expander, the limiter's
envelope, ramp and exact correction, the true-peak meter, the loudness K-filter) takes
``backend="auto" | "numba" | "triton" | "torch"`` and asks :func:`resolve` which
implementation runs:

- ``"auto"``: numba on CPU, Triton on CUDA, the composite torch path where neither is
  available (other devices, or the package missing);
- ``"numba"``: the compiled CPU kernels (CPU tensors only);
- ``"triton"``: the Triton kernels. On CUDA tensors they are compiled; on CPU tensors they
  run under Triton's interpreter (``TRITON_INTERPRET=1`` semantics: numpy executes each
  program), which is how CI checks them without a GPU. Slow: meant for tests.
- ``"torch"``: the composite path in plain PyTorch ops, on every device (the reference).

The environment variable ``DIFFMIX_BACKEND`` (one of the four names) replaces ``"auto"``
everywhere: ``DIFFMIX_BACKEND=torch`` runs every op on the composite path. An explicit
``backend=`` argument still wins over it. ``DIFFMIX_DISABLE_NUMBA=1`` (the older switch) is
an alias for ``DIFFMIX_BACKEND=torch``. Both are read at each call, not at import.

Threading: every CPU kernel runs on torch's intra-op thread count
(``torch.get_num_threads()``): the row kernels split rows over a thread pool of that size
(:func:`diffmix.functional._dynamics_kernels.over_rows`) and the ``prange`` kernels set
numba's thread count to it first (:func:`numba_threads`), so one knob
(``torch.set_num_threads`` or ``OMP_NUM_THREADS``) governs all of them.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

BACKENDS = ("auto", "numba", "triton", "torch")
ENV = "DIFFMIX_BACKEND"
LEGACY_ENV = "DIFFMIX_DISABLE_NUMBA"


# Looked up once at import (plain constants, which torch.compile reads without tracing).
_NUMBA = importlib.util.find_spec("numba") is not None
_TRITON = importlib.util.find_spec("triton") is not None


def numba_available() -> bool:
    """Whether numba is installed (a runtime dependency; absent only on broken installs)."""
    return _NUMBA


def triton_available() -> bool:
    """Whether Triton is installed (it ships with torch's Linux wheels)."""
    return _TRITON


def forced() -> str | None:
    """The backend the environment forces in place of ``"auto"``, or ``None``."""
    value = os.environ.get(ENV, "").strip().lower()
    if value not in ("", "auto"):
        if value not in BACKENDS:
            raise ValueError(f"{ENV} must be one of {', '.join(BACKENDS)}, got {value!r}")
        return value
    if os.environ.get(LEGACY_ENV, "") not in ("", "0"):
        return "torch"
    return None


def check(backend: str, op: str) -> str:
    """Validate a ``backend`` argument (one-line ``ValueError`` naming the op)."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def resolve(backend: str, x: Tensor, op: str) -> str:
    """The implementation that serves ``op`` on ``x``'s device: ``"numba"``, ``"triton"``
    or ``"torch"`` (module docstring). Raises ``ValueError`` when an explicitly requested
    backend cannot run here."""
    check(backend, op)
    if backend == "auto":
        backend = forced() or "auto"
    device = x.device.type
    if backend == "auto":
        if device == "cpu":
            return "numba" if numba_available() else "torch"
        if device == "cuda" and triton_available():
            return "triton"
        return "torch"
    if backend == "numba" and not (numba_available() and device == "cpu"):
        raise ValueError(f"{op}: backend 'numba' needs numba and a CPU tensor, got {device}")
    if backend == "triton" and not (triton_available() and device in ("cpu", "cuda")):
        raise ValueError(f"{op}: backend 'triton' needs Triton and a CUDA (or CPU) tensor, got {device}")
    return backend


def use_numba(x: Tensor, op: str, backend: str = "auto") -> bool:
    """Shorthand for ops whose only kernel is numba: ``resolve(...) == "numba"``, with
    ``"triton"`` served by the torch path until that op has a Triton kernel."""
    return resolve(backend, x, op) == "numba"


def numba_threads() -> None:
    """Give numba's ``prange`` kernels torch's thread count (one threading knob)."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
