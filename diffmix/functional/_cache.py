"""A small cache for what a render derives from fixed values only (an EQ's impulse
response, a reverb's spectrum): keyed by the values themselves, so a changed value is a
different entry and the result is the same as computing it afresh.

Used only where nothing is differentiated (no value requires a gradient, no gradient
recorded) and the values are on the CPU (reading them is then no device sync) and outside
``torch.compile``; everywhere else the caller computes as before.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor


def constant_key(*values: Tensor | Hashable) -> tuple | None:
    """A hashable key of ``values`` (tensors by dtype, shape and content), or None where a
    tensor is on another device than the CPU or needs a gradient, or while compiling."""
    if torch.compiler.is_compiling():
        return None
    key: list[Hashable] = []
    for v in values:
        if isinstance(v, Tensor):
            if v.device.type != "cpu" or v.requires_grad or v.is_complex():
                return None
            raw = v.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
            key.append((str(v.dtype), tuple(v.shape), raw))
        else:
            key.append(v)
    return tuple(key)


class ValueCache:
    """At most ``size`` results holding at most ``max_bytes`` together, least recently used
    dropped first; a result larger than ``max_bytes`` is not kept (memory stays bounded
    whatever the signal's length)."""

    def __init__(self, size: int, max_bytes: int) -> None:
        self.size, self.max_bytes = size, max_bytes
        self._items: OrderedDict[tuple, Tensor] = OrderedDict()
        self._lock = threading.Lock()  # a job measures on a worker thread too

    def get(self, key: tuple | None, make: Callable[[], Tensor]) -> Tensor:
        """``make()``, or its stored result for ``key`` (None: never stored)."""
        if key is None:
            return make()
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        out = make()  # outside the lock: two threads may both make it, and agree
        if not out.requires_grad and _nbytes(out) <= self.max_bytes:
            with self._lock:
                self._items[key] = out
                items = self._items
                while len(items) > self.size or sum(map(_nbytes, items.values())) > self.max_bytes:
                    items.popitem(last=False)
        return out


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class SignalMemo:
    """What a job derives from one signal several times (an input's or a reference's band
    levels or features), kept per tensor object and its version counter (an in-place change
    is a new entry), never keyed by content: at most ``size`` entries, least recently used
    dropped first. Results must be small and are shared: callers don't modify them."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._items: OrderedDict[tuple, tuple[weakref.ref, Any]] = OrderedDict()
        self._lock = threading.Lock()  # a job measures on a worker thread too

    def get(self, x: Tensor, extra: Hashable, make: Callable[[], Any]) -> Any:
        """``make()`` for ``x`` and ``extra``, or its stored result."""
        key = (id(x), x._version, extra)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0]() is x:  # the same live tensor, not a reused id
                self._items.move_to_end(key)
                return hit[1]
        out = make()  # outside the lock: two threads may both make it, and agree
        with self._lock:
            self._items[key] = (weakref.ref(x), out)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return out
