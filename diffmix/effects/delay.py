"""Delay module (see :mod:`diffmix.functional.delay`)."""

from __future__ import annotations

import torch  # noqa: F401  (doctest namespace)
from torch import Tensor

from diffmix.effects.base import Effect
from diffmix.functional import delay as F
from diffmix.params import ParamSpec, ParamValue


class Delay(Effect):
    """Feedback delay with fractional time, loop damping, mix and a ping-pong mode.

    Args:
        sample_rate: Hz.
        time_ms: 1 to 4000 ms (log), default 250; fractional samples by a band-limited
            (64-tap windowed-sinc) delay.
        feedback: 0 to 0.95, default 0.35.
        damping_hz: loop low-pass cut-off, 200 to 20000 Hz (log), default 6000.
        mix: 0 dry to 1 wet, default 0.5.
        ping_pong: echoes alternate left/right (stereo input only). Default False.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``; the tail past ``T`` is cut (pad to keep it).

    Differentiable: ``time_ms``, ``feedback``, ``damping_hz``, ``mix``. CUDA: yes.

    >>> Delay(44100, time_ms=120.0, feedback=0.4)(torch.randn(2, 2, 4410)).shape
    torch.Size([2, 2, 4410])
    >>> round(Delay.synced(44100, bpm=100.0, note="1/8").p("time_ms").detach().item(), 3)
    300.0
    """

    specs = (
        ParamSpec("time_ms", 1.0, 4000.0, 250.0, scale="log"),
        ParamSpec("feedback", 0.0, 0.95, 0.35),
        ParamSpec("damping_hz", 200.0, 20000.0, 6000.0, scale="log"),
        ParamSpec("mix", 0.0, 1.0, 0.5),
    )

    def __init__(
        self,
        sample_rate: int,
        time_ms: ParamValue | None = None,
        feedback: ParamValue | None = None,
        damping_hz: ParamValue | None = None,
        mix: ParamValue | None = None,
        ping_pong: bool = False,
    ) -> None:
        if not isinstance(ping_pong, bool):
            raise ValueError(f"Delay: ping_pong must be True or False, got {ping_pong!r}")
        self._set_options(ping_pong=ping_pong)
        super().__init__(
            sample_rate, time_ms=time_ms, feedback=feedback, damping_hz=damping_hz, mix=mix
        )
        self.ping_pong = ping_pong
        self.channels = (2,) if ping_pong else None

    @classmethod
    def synced(cls, sample_rate: int, *, bpm: float, note: str = "1/4", **kwargs) -> Delay:  # noqa: ANN003
        """A delay whose time is a note value at ``bpm`` (see
        :func:`~diffmix.functional.delay.note_to_ms`)."""
        return cls(sample_rate, time_ms=F.note_to_ms(bpm, note), **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.delay(
            x,
            self.sample_rate,
            time_ms=self.p("time_ms"),
            feedback=self.p("feedback"),
            damping_hz=self.p("damping_hz"),
            mix=self.p("mix"),
            ping_pong=self.ping_pong,
        )
