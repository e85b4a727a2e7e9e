"""Chorus and phaser modules (see :mod:`diffmix.functional.modulation`)."""

from __future__ import annotations

import torch  # noqa: F401  (doctest namespace)
from torch import Tensor

from diffmix.effects.base import Effect
from diffmix.functional import modulation as F
from diffmix.params import ParamSpec, ParamValue


class Chorus(Effect):
    """Chorus: modulated delay lines with recirculation.

    Args:
        sample_rate: Hz.
        rate_hz: LFO rate, 0.05 to 10 Hz (log), default 0.8.
        depth: modulation as a fraction of the centre delay, 0 to 0.95, default 0.3.
        centre_ms: mean delay, 1 to 40 ms (log), default 12.
        feedback: -0.7 to 0.7, default 0.
        mix: 0 dry to 1 wet, default 0.5.
        voices: 1 to 8 delay lines, default 2.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Differentiable: every parameter (the LFO and the read position are smooth). CUDA: yes.

    >>> Chorus(44100, voices=3)(torch.randn(1, 2, 4410)).shape
    torch.Size([1, 2, 4410])
    """

    specs = (
        ParamSpec("rate_hz", 0.05, 10.0, 0.8, scale="log"),
        ParamSpec("depth", 0.0, 0.95, 0.3),
        ParamSpec("centre_ms", 1.0, 40.0, 12.0, scale="log"),
        ParamSpec("feedback", -F.CHORUS_FEEDBACK_MAX, F.CHORUS_FEEDBACK_MAX, 0.0),
        ParamSpec("mix", 0.0, 1.0, 0.5),
    )

    def __init__(
        self,
        sample_rate: int,
        rate_hz: ParamValue | None = None,
        depth: ParamValue | None = None,
        centre_ms: ParamValue | None = None,
        feedback: ParamValue | None = None,
        mix: ParamValue | None = None,
        voices: int = 2,
    ) -> None:
        if isinstance(voices, bool) or not isinstance(voices, int) or not 1 <= voices <= 8:
            raise ValueError(f"Chorus: voices must be an integer from 1 to 8, got {voices!r}")
        self._set_options(voices=voices)
        super().__init__(
            sample_rate, rate_hz=rate_hz, depth=depth, centre_ms=centre_ms, feedback=feedback, mix=mix
        )
        self.voices = voices

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.chorus(
            x, self.sample_rate, **{n: self.p(n) for n in self.params}, voices=self.voices
        )


class Phaser(Effect):
    """Phaser: a swept cascade of first-order all-passes with feedback.

    Args:
        sample_rate: Hz.
        rate_hz: LFO rate, 0.025 to 10 Hz (log), default 0.5.
        depth: sweep in octaves either side of the centre, 0 to 1, default 0.8.
        centre_hz: centre break frequency, 100 to 8000 Hz (log), default 800.
        feedback: -0.9 to 0.9, default 0.3.
        mix: 0 dry, 0.5 deepest notches, 1 all-pass only; default 0.5.
        stages: 2, 4 (default), 6, 8 or 12.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Differentiable: every parameter. CUDA: yes.

    >>> Phaser(44100, stages=8)(torch.randn(1, 2, 4410)).shape
    torch.Size([1, 2, 4410])
    """

    specs = (
        ParamSpec("rate_hz", 0.025, 10.0, 0.5, scale="log"),
        ParamSpec("depth", 0.0, 1.0, 0.8),
        ParamSpec("centre_hz", 100.0, 8000.0, 800.0, scale="log"),
        ParamSpec("feedback", -0.9, 0.9, 0.3),
        ParamSpec("mix", 0.0, 1.0, 0.5),
    )

    def __init__(
        self,
        sample_rate: int,
        rate_hz: ParamValue | None = None,
        depth: ParamValue | None = None,
        centre_hz: ParamValue | None = None,
        feedback: ParamValue | None = None,
        mix: ParamValue | None = None,
        stages: int = 4,
    ) -> None:
        if isinstance(stages, bool) or stages not in F.PHASER_STAGES:
            raise ValueError(f"Phaser: stages must be one of {list(F.PHASER_STAGES)}, got {stages!r}")
        self._set_options(stages=stages)
        super().__init__(
            sample_rate, rate_hz=rate_hz, depth=depth, centre_hz=centre_hz, feedback=feedback, mix=mix
        )
        self.stages = stages

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.phaser(
            x, self.sample_rate, **{n: self.p(n) for n in self.params}, stages=self.stages
        )
