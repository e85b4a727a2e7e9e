"""Modules for the compressor, expander/gate, limiter and multiband compressor.

The maths: :mod:`diffmix.functional.dynamics`, :mod:`~diffmix.functional.limiter`,
:mod:`~diffmix.functional.multiband` and :mod:`~diffmix.functional.loudness_ride`.
"""

from __future__ import annotations

import torch  # noqa: F401  (doctest namespace)
from torch import Tensor

from diffmix.checks import check_audio, check_choice
from diffmix.effects.base import Effect
from diffmix.functional import dynamics as F
from diffmix.functional import limiter as L
from diffmix.functional import loudness_ride as R
from diffmix.functional import multiband as M
from diffmix.params import ParamSpec, ParamValue

_ATTACK = ParamSpec("attack_ms", 0.05, 500.0, 10.0, scale="log")
_RELEASE = ParamSpec("release_ms", 1.0, 5000.0, 100.0, scale="log")


def _check_lookahead(lookahead_ms: float, effect: str, upper: float = 100.0) -> float:
    if isinstance(lookahead_ms, bool) or not isinstance(lookahead_ms, (int, float)):
        raise ValueError(f"{effect}: lookahead_ms must be a number, got {lookahead_ms!r}")
    if not 0.0 <= lookahead_ms <= upper:
        raise ValueError(f"{effect}: lookahead_ms={lookahead_ms:g} is outside [0, {upper:g}]")
    return float(lookahead_ms)


def _check_rms_ms(rms_ms: float, effect: str) -> float:
    if isinstance(rms_ms, bool) or not isinstance(rms_ms, (int, float)) or not 0.01 <= rms_ms <= 1000:
        raise ValueError(f"{effect}: rms_ms must be a number in [0.01, 1000], got {rms_ms!r}")
    return float(rms_ms)


def _check_sidechain(x: Tensor, sidechain: Tensor | None, effect: str) -> None:
    if sidechain is None:
        return
    check_audio(sidechain, effect, name="sidechain")
    if sidechain.shape != x.shape:
        raise ValueError(
            f"{effect}: sidechain must have the input's shape {tuple(x.shape)}, "
            f"got {tuple(sidechain.shape)}"
        )


class Compressor(Effect):
    """Feed-forward compressor: soft knee, attack/release, makeup, lookahead, side-chain, mix.

    Args:
        sample_rate: Hz.
        threshold_db: -80 to 0 dB, default -20.
        ratio: 1 to 100 (log scale), default 4.
        knee_db: soft-knee width, 0 to 24 dB, default 6 (0 = hard knee, finite gradients).
        attack_ms: 0.05 to 500 ms (log), default 10; time constant (63.2 % of a step).
        release_ms: 1 to 5000 ms (log), default 100.
        makeup_db: -24 to 24 dB, default 0.
        mix: 0 (dry) to 1 (compressed), default 1; in between is parallel compression.
        detector: ``"peak"`` or ``"rms"`` (option).
        rms_ms: RMS detector time constant, ms (option, default 10).
        link: stereo link ``"max"``, ``"mean"`` or ``"none"`` (option).
        lookahead_ms: 0 to 100 ms, default 0 (option; whole samples, latency-free).

    ``forward(x, sidechain=None)``: pass ``sidechain`` (same shape as ``x``) to key the
    detector from another signal, e.g. to duck music under a voice.

    Differentiable: every parameter. CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    >>> comp = Compressor(44100, threshold_db=-24.0, ratio=4.0, knee_db=6.0, makeup_db=3.0)
    >>> comp(torch.randn(2, 2, 4410)).shape
    torch.Size([2, 2, 4410])
    """

    specs = (
        ParamSpec("threshold_db", -80.0, 0.0, -20.0),
        ParamSpec("ratio", 1.0, 100.0, 4.0, scale="log"),
        ParamSpec("knee_db", 0.0, 24.0, 6.0),
        _ATTACK,
        _RELEASE,
        ParamSpec("makeup_db", -24.0, 24.0, 0.0),
        ParamSpec("mix", 0.0, 1.0, 1.0),
    )

    def __init__(
        self,
        sample_rate: int,
        threshold_db: ParamValue | None = None,
        ratio: ParamValue | None = None,
        knee_db: ParamValue | None = None,
        attack_ms: ParamValue | None = None,
        release_ms: ParamValue | None = None,
        makeup_db: ParamValue | None = None,
        mix: ParamValue | None = None,
        detector: str = "peak",
        rms_ms: float = 10.0,
        link: str = "max",
        lookahead_ms: float = 0.0,
    ) -> None:
        name = type(self).__name__
        self._set_options(
            detector=check_choice(detector, F.DETECTORS, name, "detector"),
            rms_ms=_check_rms_ms(rms_ms, name),
            link=check_choice(link, F.LINKS, name, "link"),
            lookahead_ms=_check_lookahead(lookahead_ms, name),
        )
        super().__init__(
            sample_rate, threshold_db=threshold_db, ratio=ratio, knee_db=knee_db,
            attack_ms=attack_ms, release_ms=release_ms, makeup_db=makeup_db, mix=mix,
        )

    def forward(self, x: Tensor, sidechain: Tensor | None = None) -> Tensor:
        self.check(x)
        _check_sidechain(x, sidechain, self.name)
        values = self.values()
        return F.compressor(x, self.sample_rate, **values, **self._options, sidechain=sidechain)


class Expander(Effect):
    """Downward expander and noise gate with hold and range.

    Below ``threshold_db`` the gain falls ``ratio - 1`` dB per dB (ratio >= 20 acts as a
    gate), never by more than ``range_db``. The gate opens with ``attack_ms``, stays open
    ``hold_ms`` after the signal drops, then closes with ``release_ms``.

    Args:
        sample_rate: Hz.
        threshold_db: -100 to 0 dB, default -50.
        ratio: 1 to 100 (log), default 4.
        knee_db: 0 to 24 dB, default 0.
        attack_ms: 0.05 to 500 ms (log), default 1.
        release_ms: 1 to 5000 ms (log), default 100.
        hold_ms: 0 to 1000 ms, default 10 (not differentiable: counts whole samples).
        range_db: 0 to 120 dB, default 60.
        detector, rms_ms, link, lookahead_ms: options, as in :class:`Compressor`.

    ``forward(x, sidechain=None)`` as in :class:`Compressor`.

    Differentiable: every parameter but ``hold_ms``. CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    >>> Expander(48000, threshold_db=-40.0, ratio=20.0)(torch.randn(1, 2, 4800)).shape
    torch.Size([1, 2, 4800])
    """

    specs = (
        ParamSpec("threshold_db", -100.0, 0.0, -50.0),
        ParamSpec("ratio", 1.0, 100.0, 4.0, scale="log"),
        ParamSpec("knee_db", 0.0, 24.0, 0.0),
        ParamSpec("attack_ms", 0.05, 500.0, 1.0, scale="log"),
        _RELEASE,
        ParamSpec("hold_ms", 0.0, 1000.0, 10.0, differentiable=False),
        ParamSpec("range_db", 0.0, 120.0, 60.0),
    )

    def __init__(
        self,
        sample_rate: int,
        threshold_db: ParamValue | None = None,
        ratio: ParamValue | None = None,
        knee_db: ParamValue | None = None,
        attack_ms: ParamValue | None = None,
        release_ms: ParamValue | None = None,
        hold_ms: ParamValue | None = None,
        range_db: ParamValue | None = None,
        detector: str = "peak",
        rms_ms: float = 10.0,
        link: str = "max",
        lookahead_ms: float = 0.0,
    ) -> None:
        name = type(self).__name__
        self._set_options(
            detector=check_choice(detector, F.DETECTORS, name, "detector"),
            rms_ms=_check_rms_ms(rms_ms, name),
            link=check_choice(link, F.LINKS, name, "link"),
            lookahead_ms=_check_lookahead(lookahead_ms, name),
        )
        super().__init__(
            sample_rate, threshold_db=threshold_db, ratio=ratio, knee_db=knee_db,
            attack_ms=attack_ms, release_ms=release_ms, hold_ms=hold_ms, range_db=range_db,
        )

    def forward(self, x: Tensor, sidechain: Tensor | None = None) -> Tensor:
        self.check(x)
        _check_sidechain(x, sidechain, self.name)
        values = self.values()
        return F.expander(x, self.sample_rate, **values, **self._options, sidechain=sidechain)


class Limiter(Effect):
    """Lookahead brickwall limiter with a guaranteed ceiling; channels linked.

    Args:
        sample_rate: Hz.
        ceiling_db: -24 to 0 dBFS (dBTP in true-peak mode), default -1.
        release_ms: 1 to 5000 ms (log), default 100.
        gain_db: input drive, -24 to 48 dB, default 0.
        lookahead_ms: 0 to 50 ms, default 5 (option; latency-free).
        true_peak: limit 4x-oversampled true peaks (option, default True).
        exact: apply the final metered correction that makes the true-peak ceiling exact
            (option, default True; set False for the purely smooth version when fitting).
        strict: with ``exact``, hold the ceiling on every usual true-peak meter, not only
            this project's (option, default False; the mastering chain turns it on: see
            :func:`~diffmix.functional.limiter.limiter`).

    Differentiable: ``ceiling_db``, ``release_ms``, ``gain_db``. CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    >>> lim = Limiter(48000, ceiling_db=-1.0, gain_db=12.0)
    >>> y = lim(0.5 * torch.randn(1, 2, 4800))
    >>> bool(L.true_peak(y, 48000).max() <= 10 ** (-1.0 / 20))
    True
    """

    specs = (
        ParamSpec("ceiling_db", -24.0, 0.0, -1.0),
        _RELEASE,
        ParamSpec("gain_db", -24.0, 48.0, 0.0),
    )

    def __init__(
        self,
        sample_rate: int,
        ceiling_db: ParamValue | None = None,
        release_ms: ParamValue | None = None,
        gain_db: ParamValue | None = None,
        lookahead_ms: float = 5.0,
        true_peak: bool = True,
        exact: bool = True,
        strict: bool = False,
    ) -> None:
        name = type(self).__name__
        for flag, value in (("true_peak", true_peak), ("exact", exact), ("strict", strict)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}: {flag} must be True or False, got {value!r}")
        self._set_options(
            lookahead_ms=_check_lookahead(lookahead_ms, name, 50.0), true_peak=true_peak, exact=exact,
            strict=strict,
        )
        super().__init__(sample_rate, ceiling_db=ceiling_db, release_ms=release_ms, gain_db=gain_db)

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        values = self.values()
        return L.limiter(x, self.sample_rate, **values, **self._options)

    @property
    def exact(self) -> bool:
        """Whether renders apply the final metered correction (the ceiling holds exactly);
        fitting switches it off for the purely smooth limiter."""
        return bool(self._options["exact"])

    @exact.setter
    def exact(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"Limiter: exact must be True or False, got {value!r}")
        self._options["exact"] = value

    def drive_renders(self, x: Tensor):  # noqa: ANN201 - a pair of callables
        """Cheap ``drives (B,) dB -> output`` renders of this limiter over the fixed input
        ``x`` ``(B, C, T)``, its ``gain_db`` replaced by the drive: ``(smooth, exact)``.

        The envelope of ``x`` is metered once; each drive then costs one gain ramp (and,
        for ``exact``, one metered correction). ``exact`` equals :meth:`forward` at that
        drive to float rounding; ``smooth`` leaves out the final correction. What the
        loudness solve iterates on. See :func:`~diffmix.functional.limiter.drive_renders`.
        """
        opts = self._options
        return L.drive_renders(
            x, self.sample_rate, ceiling_db=self.p("ceiling_db"), release_ms=self.p("release_ms"),
            lookahead_ms=float(opts["lookahead_ms"]), true_peak=bool(opts["true_peak"]),
            exact=bool(opts["exact"]), strict=bool(opts.get("strict")),
        )


class LoudnessRide(Effect):
    """A slow gain on the K-weighted short-term loudness (3 s windows every 100 ms, the
    meter's for EBU Tech 3342's LRA) that scales its range about the median: a leveller
    below ``range_scale`` 1, a spreader above. Non-causal (reads the whole signal).

    Args:
        sample_rate: Hz.
        range_scale: -1 to 4, default 1 (no change); each window's loudness is moved to
            ``median + range_scale * (L - median)``, ``L`` clipped to the 10th-95th
            percentiles, less a constant so the gain never exceeds 0 dB; below 0 it
            over-corrects, for a loudness that moves within the 3 s windows (see
            :func:`~diffmix.functional.loudness_ride.loudness_ride`).

    Differentiable: ``range_scale`` (and the input). CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``; under 3.1 s the output is the input.

    >>> LoudnessRide(8000, range_scale=0.5)(0.1 * torch.randn(1, 2, 8000 * 5)).shape
    torch.Size([1, 2, 40000])
    """

    specs = (ParamSpec("range_scale", -1.0, 4.0, 1.0),)

    def __init__(self, sample_rate: int, range_scale: ParamValue | None = None) -> None:
        super().__init__(sample_rate, range_scale=range_scale)

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return R.loudness_ride(x, self.sample_rate, range_scale=self.p("range_scale"))


def set_exact(module: torch.nn.Module, exact: bool) -> None:
    """Switch every :class:`Limiter` in ``module`` to its exact (``True``: the ceiling holds)
    or smooth (``False``: for fitting) render."""
    for m in module.modules():
        if isinstance(m, Limiter):
            m.exact = exact


class MultibandCompressor(Effect):
    """3- or 4-band compressor on phase-aligned Linkwitz-Riley (LR4) crossovers.

    Args:
        sample_rate: Hz.
        crossover_hz: 2 or 3 ascending crossover frequencies, 20 Hz to 20 kHz (log); their
            count sets 3 or 4 bands. Default ``(200, 2000)``.
        threshold_db, ratio, knee_db, attack_ms, release_ms, makeup_db, mix: one value per
            band (a float sets every band), ranges as in :class:`Compressor`.
        detector, rms_ms, link, lookahead_ms: options, as in :class:`Compressor`.

    With every band's ratio at 1 the bands sum back to an allpass of the input (flat).

    Differentiable: every parameter, crossovers included. CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    >>> mb = MultibandCompressor(44100, crossover_hz=[120.0, 1000.0, 6000.0], ratio=[2.0, 3.0, 3.0, 2.0])
    >>> mb(torch.randn(1, 2, 4410)).shape
    torch.Size([1, 2, 4410])
    """

    _band_specs = tuple(s for s in Compressor.specs)
    _crossover = ParamSpec("crossover_hz", 20.0, 20000.0, 1000.0, scale="log")

    def __init__(
        self,
        sample_rate: int,
        crossover_hz: ParamValue = (200.0, 2000.0),
        threshold_db: ParamValue | None = None,
        ratio: ParamValue | None = None,
        knee_db: ParamValue | None = None,
        attack_ms: ParamValue | None = None,
        release_ms: ParamValue | None = None,
        makeup_db: ParamValue | None = None,
        mix: ParamValue | None = None,
        detector: str = "peak",
        rms_ms: float = 10.0,
        link: str = "max",
        lookahead_ms: float = 0.0,
    ) -> None:
        name = type(self).__name__
        freqs = torch.as_tensor(
            crossover_hz.detach() if isinstance(crossover_hz, Tensor) else crossover_hz,
            dtype=torch.float64,
        )
        if freqs.ndim == 0 or freqs.shape[-1] + 1 not in M.BAND_COUNTS:
            raise ValueError(
                f"{name}: crossover_hz needs 2 or 3 frequencies (3 or 4 bands), got {crossover_hz!r}"
            )
        if bool((torch.diff(freqs, dim=-1) <= 0).any()):
            raise ValueError(f"{name}: crossover_hz must be strictly ascending, got {freqs.tolist()}")
        self.n_bands = freqs.shape[-1] + 1
        self._set_options(
            detector=check_choice(detector, F.DETECTORS, name, "detector"),
            rms_ms=_check_rms_ms(rms_ms, name),
            link=check_choice(link, F.LINKS, name, "link"),
            lookahead_ms=_check_lookahead(lookahead_ms, name),
        )
        given = dict(threshold_db=threshold_db, ratio=ratio, knee_db=knee_db, attack_ms=attack_ms,
                     release_ms=release_ms, makeup_db=makeup_db, mix=mix)
        values: dict[str, ParamValue] = {"crossover_hz": freqs}
        for spec in self._band_specs:
            v = given[spec.name]
            if v is None:
                v = spec.default
            t = torch.as_tensor(v.detach() if isinstance(v, Tensor) else v, dtype=torch.float64)
            if t.ndim == 0:
                t = t.expand(self.n_bands).clone()
            if t.shape[-1] != self.n_bands:
                raise ValueError(
                    f"{name}: {spec.name} needs one value per band ({self.n_bands}), got {v!r}"
                )
            values[spec.name] = t
        super().__init__(sample_rate, **values)

    def param_specs(self) -> tuple[ParamSpec, ...]:
        return (self._crossover, *self._band_specs)

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        values = self.values()
        return M.multiband_compressor(x, self.sample_rate, **values, **self._options)
