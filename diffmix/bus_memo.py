"""A bus's renders of one fixed input, kept while a fit tries stage after stage.

The mix fit's closed-form stages render the strips on the whole song over and over, and
most change only what comes late in the strip (a compressor, the placement) or nothing
before the judge scores them: the input gain, high-pass and EQ outputs repeat. Inside
:func:`remember_prefixes` a :class:`~diffmix.console.Bus` run from its first effect on
keeps each output of its leading pure effects (:data:`PURE`), keyed by the input tensor
(the same live storage, offset, shape, strides and version counter) and each effect's
values; a later run on that input whose leading values are equal starts after the last
equal one, from the kept output. A kept output is the very tensor computed then, so a
render is the same to the bit; one changed in place since (its version counter moved) is
computed afresh. Without a gradient only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from diffmix.effects.base import Effect
from diffmix.effects.dynamics import Compressor
from diffmix.effects.eq import HighPass, LowPass, ParametricEQ
from diffmix.effects.gain import Gain

# Effects whose output is a function of the input and their values alone (their options
# are fixed at construction): a kept output serves every later run with equal values.
PURE = (Gain, HighPass, LowPass, ParametricEQ, Compressor)


def _fingerprint(x: Tensor) -> tuple:
    return (x.data_ptr(), x.dtype, tuple(x.shape), x.stride(), x._version)


@dataclass(eq=False)  # entries are told apart by identity (their fields hold tensors)
class _Entry:
    source: Tensor  # held, so its storage (and data_ptr) cannot be reused while kept
    key: tuple
    # per effect run: (its values, its output, the output's version when kept)
    steps: list[tuple[dict[str, Tensor], Tensor, int]] = field(default_factory=list)


# Kept outputs of one bus together at most (a long song's renders are kept only in part,
# or not at all: each is computed as without the memo).
MAX_BYTES = 1 << 30


class PrefixMemo:
    """The kept renders of one bus: at most ``inputs`` inputs, least recently used dropped,
    and at most ``max_bytes`` of outputs (an output past that is not kept)."""

    def __init__(self, inputs: int = 2, of: PrefixMemo | None = None, max_bytes: int = MAX_BYTES) -> None:
        self.inputs, self.of, self.max_bytes = inputs, of, max_bytes
        self._entries: list[_Entry] = []

    def _bytes(self) -> int:
        return sum(out.numel() * out.element_size() for e in self._entries for _, out, _ in e.steps)

    def holds(self, x: Tensor) -> bool:
        """Whether ``x`` is an output kept here (its storage, offset, shape and strides),
        unchanged since."""
        key = _fingerprint(x)
        return any(_fingerprint(out) == key and out._version == version
                   for e in self._entries for _, out, version in e.steps)

    def run(self, effects: list[nn.Module], x: Tensor) -> Tensor:
        """``effects`` in order on ``x``, from the kept outputs where they still hold (with
        ``of``: only for an output that memo keeps; anything else runs as it is)."""
        if self.of is not None and not self.of.holds(x):
            for effect in effects:
                x = effect(x)
            return x
        key = _fingerprint(x)
        entry = next((e for e in self._entries if e.key == key), None)
        if entry is None:
            entry = _Entry(x, key)
            self._entries.append(entry)
            del self._entries[: -self.inputs]
        else:
            self._entries.remove(entry)
            self._entries.append(entry)
        y = x
        keeping = True
        for i, effect in enumerate(effects):
            keeping = keeping and isinstance(effect, PURE)
            if not keeping:
                y = effect(y)
                continue
            values = {k: v.detach() for k, v in cast(Effect, effect).values().items()}
            if i < len(entry.steps):
                was, out, version = entry.steps[i]
                if out._version == version and _equal(was, values):
                    y = out
                    continue
                del entry.steps[i:]
            y = effect(y)
            size = y.numel() * y.element_size()
            for other in [e for e in self._entries if e is not entry]:  # the oldest first
                if self._bytes() + size <= self.max_bytes:
                    break
                self._entries.remove(other)
            if self._bytes() + size > self.max_bytes:
                keeping = False  # this output and the rest of the run are not kept
                continue
            entry.steps.append(({k: v.clone() for k, v in values.items()}, y, y._version))
        return y


def _equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


@contextlib.contextmanager
def remember_prefixes(
    *buses: nn.Module, inputs: int = 2, of: nn.Module | None = None, max_bytes: int = MAX_BYTES
) -> Iterator[None]:
    """Within: each of ``buses`` (:class:`~diffmix.console.Bus`) keeps its renders as the
    module docstring says (memory: up to ``inputs`` inputs' outputs of each pure effect,
    ``max_bytes`` together per bus).
    ``of``: a bus already keeping its renders; ``buses`` then keep theirs only of its kept
    outputs (the master bus's lead stages on the strips' fixed outputs, not on every mix)."""
    upstream = getattr(of, "_memo", None) if of is not None else None
    if of is not None and upstream is None:
        raise ValueError("remember_prefixes: `of` keeps no renders (enter its context first)")
    for bus in buses:
        bus._memo = PrefixMemo(inputs, of=upstream, max_bytes=max_bytes)  # type: ignore[assignment]
    try:
        yield
    finally:
        for bus in buses:
            bus._memo = None  # type: ignore[assignment]
