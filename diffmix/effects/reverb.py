"""Reverb module (see :mod:`diffmix.functional.reverb`)."""

from __future__ import annotations

import math

import torch  # noqa: F401  (doctest namespace)
from torch import Tensor

from diffmix.effects.base import Effect
from diffmix.functional import reverb as F
from diffmix.params import ParamSpec, ParamValue


class Reverb(Effect):
    """Deterministic algorithmic reverb: a synthesized IR convolved by FFT.

    Args:
        sample_rate: Hz.
        rt60_s: mid-band decay time, 0.1 to 10 s (log), default 1.5.
        rt60_low_ratio: low-band RT60 / ``rt60_s``, 0.25 to 4 (log), default 1.2.
        rt60_high_ratio: high-band RT60 / ``rt60_s``, 0.25 to 4 (log), default 0.6.
        pre_delay_ms: 0 to 250 ms, default 10.
        early_late: 0 early reflections only to 1 late tail only, default 0.7.
        width: 0 mono tail to 1 fully decorrelated, default 1.
        mix: 0 dry to 1 wet, default 0.3.
        crossover_hz: (low/mid, mid/high) band edges in Hz, default (250, 4000).
        tail_s: IR length in s; ``None`` is 1.5 x the longest band RT60, 90 dB down (a
            host read per call). Give a number to keep CUDA fitting loops free of syncs.
        seed: noise and reflection pattern, default 0.

    Shape:
        ``(B, 1 or 2, T)`` -> same; the tail past ``T`` is cut (pad to keep it).

    Differentiable: every parameter. CUDA: yes.

    >>> Reverb(44100, rt60_s=0.8, tail_s=1.0)(torch.randn(1, 2, 44100)).shape
    torch.Size([1, 2, 44100])
    """

    specs = (
        ParamSpec("rt60_s", 0.1, 10.0, 1.5, scale="log"),
        ParamSpec("rt60_low_ratio", 0.25, 4.0, 1.2, scale="log"),
        ParamSpec("rt60_high_ratio", 0.25, 4.0, 0.6, scale="log"),
        ParamSpec("pre_delay_ms", 0.0, F.MAX_PRE_DELAY_MS, 10.0),
        ParamSpec("early_late", 0.0, 1.0, 0.7),
        ParamSpec("width", 0.0, 1.0, 1.0),
        ParamSpec("mix", 0.0, 1.0, 0.3),
    )
    channels = (1, 2)

    def __init__(
        self,
        sample_rate: int,
        rt60_s: ParamValue | None = None,
        rt60_low_ratio: ParamValue | None = None,
        rt60_high_ratio: ParamValue | None = None,
        pre_delay_ms: ParamValue | None = None,
        early_late: ParamValue | None = None,
        width: ParamValue | None = None,
        mix: ParamValue | None = None,
        crossover_hz: tuple[float, float] | list[float] = (250.0, 4000.0),
        tail_s: float | None = None,
        seed: int = 0,
    ) -> None:
        crossover = F.check_crossovers(tuple(crossover_hz), sample_rate, "Reverb")  # type: ignore[arg-type]
        if tail_s is not None and not (
            isinstance(tail_s, (int, float)) and math.isfinite(tail_s) and tail_s > 0
        ):
            raise ValueError(f"Reverb: tail_s must be a positive number of seconds or None, got {tail_s!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Reverb: seed must be an integer, got {seed!r}")
        self._set_options(crossover_hz=list(crossover), tail_s=tail_s, seed=seed)
        super().__init__(
            sample_rate,
            rt60_s=rt60_s,
            rt60_low_ratio=rt60_low_ratio,
            rt60_high_ratio=rt60_high_ratio,
            pre_delay_ms=pre_delay_ms,
            early_late=early_late,
            width=width,
            mix=mix,
        )
        self.crossover_hz = crossover
        self.tail_s = tail_s
        self.seed = seed

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        tail_s = self.tail_s
        if tail_s is None and torch.compiler.is_compiling():
            # The automatic tail reads the RT60 values (a host sync a graph cannot hold):
            # a compiled graph sizes the tail for the longest RT60 the ranges allow.
            specs = {spec.name: spec for spec in self.param_specs()}
            ratio = max(specs["rt60_low_ratio"].max, specs["rt60_high_ratio"].max)
            tail_s = F.AUTO_TAIL * specs["rt60_s"].max * ratio
        return F.reverb(
            x,
            self.sample_rate,
            **self.values(),
            crossover_hz=self.crossover_hz,
            tail_s=tail_s,
            seed=self.seed,
        )
