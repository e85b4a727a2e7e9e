"""Up-front validation of audio layout, sample rates and values.

Shape and dtype checks are free. The NaN/Inf check reads tensor values, which costs a
host sync on CUDA; fitting loops that have already validated their inputs turn it off
with ``with input_checks(False): ...``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

# The rates a preset may name: the effects' ranges are designed from 8 kHz up, and above
# 192 kHz the true-peak meter no longer oversamples (and memory grows without bound).
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000

_VALUE_CHECKS = contextvars.ContextVar("diffmix_value_checks", default=True)


@contextlib.contextmanager
def input_checks(enabled: bool) -> Iterator[None]:
    """Turn the per-call NaN/Inf scan of effect inputs on or off inside the block.

    >>> with input_checks(False):
    ...     pass
    """
    token = _VALUE_CHECKS.set(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def value_checks_enabled() -> bool:
    """Whether the NaN/Inf scans run: on unless :func:`input_checks` turned them off, and
    off inside ``torch.compile`` (a scan is a host sync, which a graph cannot hold)."""
    if torch.compiler.is_compiling():
        return False
    return _VALUE_CHECKS.get()


def all_finite(x: Tensor | np.ndarray) -> bool:
    """Whether every value of ``x`` is finite: its minimum and maximum are (both reductions
    propagate NaN, and an Inf is one of them). Reads each value once or twice and writes
    nothing, unlike ``isfinite(x).all()`` (a boolean per value) or ``abs(x).max()`` (a copy
    of ``x``): on long audio the fresh memory cost more than the scan. A host sync on CUDA.

    >>> all_finite(torch.tensor([1.0, float("nan")])), all_finite(np.ones(3))
    (False, True)
    """
    if isinstance(x, np.ndarray):
        return x.size == 0 or bool(np.isfinite(x.min()) and np.isfinite(x.max()))
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_audio(
    x: Tensor,
    effect: str,
    *,
    channels: int | Sequence[int] | None = None,
    name: str = "audio",
) -> None:
    """Check that ``x`` is finite floating ``(batch, channels, time)`` audio.

    Raises:
        ValueError: naming ``effect`` and what is wrong. Nothing is reshaped or clipped.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{effect}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 3:
        raise ValueError(
            f"{effect}: {name} must be (batch, channels, time), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{effect}: {name} must be floating point, got {x.dtype}")
    if x.dtype not in (torch.float32, torch.float64):
        # The kernels and filters are float32/float64 only; half precision would also lose
        # the filters' state (a 16-bit mantissa).
        raise ValueError(
            f"{effect}: {name} must be float32 or float64, got {x.dtype}; convert with x.float()"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{effect}: {name} is an empty batch (0 items)")
    if channels is not None:
        allowed = (channels,) if isinstance(channels, int) else tuple(channels)
        if x.shape[1] not in allowed:
            want = " or ".join(str(c) for c in allowed)
            raise ValueError(f"{effect}: {name} must have {want} channel(s), got {x.shape[1]}")
    if x.shape[-1] == 0:
        raise ValueError(f"{effect}: {name} is empty (0 samples)")
    if value_checks_enabled() and not all_finite(x):
        raise ValueError(f"{effect}: {name} contains NaN or Inf")


def check_multitrack(x: Tensor, effect: str, *, name: str = "stems") -> None:
    """Check that ``x`` is finite floating ``(batch, tracks, channels, time)`` audio."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{effect}: {name} must be (batch, tracks, channels, time), got {shape}")
    check_audio(x.flatten(0, 1), effect, name=name)


def check_sample_rate(sample_rate: float, effect: str) -> int:
    """Return ``sample_rate`` as int, or raise ValueError if it is not a positive integer."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)):
        raise ValueError(f"{effect}: sample_rate must be a number, got {sample_rate!r}")
    if not math.isfinite(sample_rate) or sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise ValueError(f"{effect}: sample_rate must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def check_choice(value: str, choices: Sequence[str], effect: str, name: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ValueError naming both."""
    if value not in choices:
        raise ValueError(f"{effect}: unknown {name} {value!r}; choose one of {list(choices)}")
    return value
