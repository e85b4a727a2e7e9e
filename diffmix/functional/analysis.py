"""Programme analysis: stereo image, long-term 1/3-octave spectrum, defects, and
:func:`analyze`, which gathers every loudness, peak and analysis measurement.

All functions take ``(batch, channels, time)`` audio. CPU and CUDA. These are reports,
not losses: nothing here is meant to be differentiated.

Conventions (each is tested):

* Stereo measurements need exactly two channels (L, R) and raise ``ValueError`` otherwise;
  :func:`analyze` reports them as ``None`` for other layouts.
* Correlation of a pair where either channel is silent is ``0.0``.
* Side/mid ratio is ``-inf`` dB with no side energy (mono, or silence) and ``+inf`` dB
  with no mid energy (exact polarity inversion).
* In :func:`analysis_report` (the JSON), non-finite values are the strings ``"-inf"`` and
  ``"inf"``: strict JSON has no infinities, and ``null`` would read as "not measured".

References:
    IEC 61260-1:2014 (fractional-octave bands, base-10 centres). AES17-2020 (dBFS: a
    full-scale sine reads 0 dB). ITU-R BS.1770-5, EBU Tech 3341/3342 (see loudness.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffmix.checks import check_sample_rate
from diffmix.functional.gain import amp_to_db
from diffmix.functional.loudness import (
    check_meter_input,
    integrated_loudness,
    loudness_range,
    meter_unit,
    momentary_loudness,
    short_term_loudness,
)
from diffmix.functional.peaks import peak_ratio_db, sample_peak, true_peak
from diffmix.functional.spectrum import (
    NOMINAL_20_HZ,
    band_centres,
    band_membership,
    band_powers,
    top_centre_hz,
    welch_psd,
)

# Band edges in Hz for the per-band stereo image: low, low-mid, mid, high-mid, high.
STEREO_BANDS = (
    ("low", 0.0, 150.0),
    ("low_mid", 150.0, 600.0),
    ("mid", 600.0, 2500.0),
    ("high_mid", 2500.0, 8000.0),
    ("high", 8000.0, math.inf),
)
CLIP_LEVEL = 1.0 - 2.0**-15  # within one 16-bit step of full scale


def _check_stereo(x: Tensor, what: str) -> None:
    check_meter_input(x, what)
    if x.shape[1] != 2:
        raise ValueError(f"{what}: needs 2 channels (L, R), got {x.shape[1]}")


def correlation_from_sums(cross: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """Correlation from the sums of ``L R``, ``L^2`` and ``R^2`` (0 where a channel is silent)."""
    denom = (left * right).sqrt()
    return torch.where(denom > 0, cross / torch.where(denom > 0, denom, 1.0), 0.0)


def side_mid_db_from_sums(mid: Tensor, side: Tensor) -> Tensor:
    """Side over mid energy in dB from their sums (``-inf`` without side, ``+inf`` without mid)."""
    out = 10.0 * torch.log10(side / torch.where(mid > 0, mid, 1.0))
    out = torch.where(mid > 0, out, torch.full_like(out, math.inf))
    return torch.where(side > 0, out, torch.full_like(out, -math.inf))


def stereo_correlation(x: Tensor, sample_rate: int) -> Tensor:
    """Inter-channel correlation ``sum(L R) / sqrt(sum(L^2) sum(R^2))``, as a phase meter.

    +1 mono-compatible (identical), 0 uncorrelated, -1 inverted polarity.

    Shape:
        ``(B, 2, T)`` -> ``(B,)``.

    >>> x = torch.randn(1, 1, 1000)
    >>> float(stereo_correlation(torch.cat([x, -x], 1), 48000))
    -1.0
    """
    _check_stereo(x, "stereo_correlation")
    xd = x.detach().to(torch.float64)
    left, right = xd[:, 0], xd[:, 1]
    cross = (left * right).sum(-1)
    return correlation_from_sums(cross, left.square().sum(-1), right.square().sum(-1)).to(x.dtype)


def side_mid_ratio_db(x: Tensor, sample_rate: int) -> Tensor:
    """Energy of side ``(L-R)/2`` over mid ``(L+R)/2``, in dB.

    ``-inf`` for mono content, 0 dB for uncorrelated channels of equal level, ``+inf``
    for inverted polarity.

    Shape:
        ``(B, 2, T)`` -> ``(B,)`` dB.
    """
    _check_stereo(x, "side_mid_ratio")
    xd = x.detach().to(torch.float64)
    mid = ((xd[:, 0] + xd[:, 1]) * 0.5).square().sum(-1)
    side = ((xd[:, 0] - xd[:, 1]) * 0.5).square().sum(-1)
    return side_mid_db_from_sums(mid, side).to(x.dtype)


def band_stereo(x: Tensor, sample_rate: int) -> dict[str, Tensor]:
    """Correlation and side/mid ratio in each of :data:`STEREO_BANDS`.

    Computed from the spectrum of the whole signal: by Parseval, ``sum(L R)`` within a band
    is the band's sum of ``Re(L_f conj(R_f))``, which equals what an ideal band-pass pair
    would measure. A band with less than -120 dB of the signal's energy counts as empty
    (correlation 0, side/mid ``-inf``).

    Shape:
        ``(B, 2, T)`` -> ``{"correlation": (B, K), "side_mid_db": (B, K)}`` with K bands.
    """
    _check_stereo(x, "band_stereo")
    sr = check_sample_rate(sample_rate, "band_stereo")
    xd = x.detach().to(torch.float64)
    t = xd.shape[-1]
    spec = torch.fft.rfft(xd, dim=-1)
    freqs = torch.fft.rfftfreq(t, 1.0 / sr).to(xd.device)
    # One-sided spectrum: interior bins stand for two (positive and negative) frequencies.
    weight = torch.full_like(freqs, 2.0)
    weight[0] = 1.0
    if t % 2 == 0:
        weight[-1] = 1.0
    left, right = spec[:, 0], spec[:, 1]
    mid, side = (left + right) * 0.5, (left - right) * 0.5
    cols = []
    for _, lo, hi in STEREO_BANDS:
        w = weight * ((freqs >= lo) & (freqs < hi))
        cols.append((
            ((left * right.conj()).real * w).sum(-1),
            (left.abs().square() * w).sum(-1),
            (right.abs().square() * w).sum(-1),
            (mid.abs().square() * w).sum(-1),
            (side.abs().square() * w).sum(-1),
        ))
    cross, el, er, em, es = (torch.stack(c, -1) for c in zip(*cols, strict=True))
    # A band holding less than 1e-12 (-120 dB) of the signal's energy is empty: what is
    # there is rounding leakage from other bands, whose "image" would be noise.
    empty = (el + er) <= 1e-12 * (el + er).sum(-1, keepdim=True)
    cross, el, er, em, es = (torch.where(empty, 0.0, v) for v in (cross, el, er, em, es))
    return {
        "correlation": correlation_from_sums(cross, el, er).to(x.dtype),
        "side_mid_db": side_mid_db_from_sums(em, es).to(x.dtype),
    }


def third_octave_centres(sample_rate: int) -> Tensor:
    """IEC 61260 base-10 third-octave mid-band frequencies from 20 Hz to 20 kHz, keeping
    bands whose upper edge is below Nyquist.

    >>> [round(f) for f in third_octave_centres(48000)[[0, 17, -1]].tolist()]
    [20, 1000, 19953]
    """
    sr = check_sample_rate(sample_rate, "third_octave_spectrum")
    return band_centres(3, NOMINAL_20_HZ, min(20000.0, top_centre_hz(sr, 3)))


def third_octave_spectrum(x: Tensor, sample_rate: int) -> tuple[Tensor, Tensor]:
    """Long-term average 1/3-octave spectrum per channel, in dBFS (AES17: a full-scale
    sine reads 0 dB in its band).

    Welch average of Hann-windowed periodograms (50 % overlap, frames of ~0.37 s, so even
    the 20 Hz band holds several bins); each band sums the power of the bins between its
    edges ``f_c 10^(+-1/20)``.

    Shape:
        ``(B, C, T)`` -> ``(centres (K,), level_db (B, C, K))``; ``-inf`` for an empty band.

    >>> sr = 48000
    >>> t = torch.arange(sr) / sr
    >>> x = (0.5 * torch.sin(2 * math.pi * 1000 * t)).reshape(1, 1, -1)
    >>> centres, level = third_octave_spectrum(x, sr)
    >>> round(float(level[0, 0, 17]), 1)  # the 1 kHz band of a -6 dBFS sine
    -6.0
    """
    check_meter_input(x, "third_octave_spectrum")
    sr = check_sample_rate(sample_rate, "third_octave_spectrum")
    centres = third_octave_centres(sr)
    b, c, t = x.shape
    n_fft = 1 << max(8, math.ceil(math.log2(sr * 0.37)))
    # welch_psd's bins sum to the mean square; a short signal is zero-padded to one frame,
    # so scale back to the mean square over its own length.
    power = welch_psd(x.detach().to(torch.float64).reshape(b * c, t), n_fft) * (max(t, n_fft) / t)
    band_ms = band_powers(power, band_membership(centres, sr, n_fft).to(x.device))
    level = 10.0 * torch.log10(2.0 * band_ms)  # AES17: mean square of a sine is peak^2 / 2
    return centres, level.reshape(b, c, -1).to(x.dtype)


def dc_offset(x: Tensor, sample_rate: int) -> Tensor:
    """Mean value per channel (linear; 1.0 = full scale).

    Shape:
        ``(B, C, T)`` -> ``(B, C)``.
    """
    check_meter_input(x, "dc_offset")
    return x.detach().to(torch.float64).mean(-1).to(x.dtype)


def clipped_samples(x: Tensor, sample_rate: int, *, level: float = CLIP_LEVEL) -> Tensor:
    """Number of samples per channel at or beyond ``level`` in magnitude.

    Args:
        level: linear threshold; default within one 16-bit step of full scale.

    Shape:
        ``(B, C, T)`` -> ``(B, C)`` int64.

    >>> clipped_samples(torch.tensor([[[0.5, 1.0, -1.0, 0.99]]]), 48000).tolist()
    [[2]]
    """
    check_meter_input(x, "clipped_samples")
    if not (isinstance(level, (int, float)) and 0 < level and math.isfinite(level)):
        raise ValueError(f"clipped_samples: level must be a positive number, got {level!r}")
    return (x.detach().abs() >= level).sum(-1)


def analyze(x: Tensor, sample_rate: int) -> dict[str, Any]:
    """Every measurement of this package, batched.

    Returns:
        A dict of tensors with a leading batch dimension: ``integrated_lufs`` (B,),
        ``loudness_range_lu`` (B,), ``momentary_lufs`` (B, N), ``short_term_lufs``
        (B, N'), ``series_step_s`` (float), ``true_peak_dbtp`` (B, C),
        ``sample_peak_dbfs`` (B, C), ``plr_db`` (B,), ``psr_db`` (B,),
        ``crest_factor_db`` (B, C), ``dc_offset`` (B, C), ``clipped_samples`` (B, C),
        ``third_octave_hz`` (K,), ``third_octave_db`` (B, C, K), and for stereo
        ``correlation`` (B,), ``side_mid_db`` (B,), ``band_correlation`` (B, 5),
        ``band_side_mid_db`` (B, 5) (``None`` otherwise).

    >>> r = analyze(torch.zeros(1, 2, 4800), 48000)
    >>> float(r["integrated_lufs"][0]), float(r["plr_db"][0])
    (-inf, 0.0)
    """
    check_meter_input(x, "analyze")
    sr = check_sample_rate(sample_rate, "analyze")
    with torch.no_grad():
        x = x.detach()
        integrated = integrated_loudness(x, sr)
        momentary = momentary_loudness(x, sr)
        short = short_term_loudness(x, sr)
        tp = amp_to_db(true_peak(x, sr))
        sp = amp_to_db(sample_peak(x, sr))
        rms = x.to(torch.float64).square().mean(-1).sqrt()
        tp_max = tp.amax(-1)
        out: dict[str, Any] = {
            "integrated_lufs": integrated,
            "loudness_range_lu": loudness_range(x, sr),
            "momentary_lufs": momentary,
            "short_term_lufs": short,
            "series_step_s": meter_unit(sr) / sr,
            "true_peak_dbtp": tp,
            "sample_peak_dbfs": sp,
            "plr_db": peak_ratio_db(tp_max, integrated),
            "psr_db": peak_ratio_db(tp_max, short.amax(-1)),
            "crest_factor_db": torch.where(
                rms > 0, sp.to(torch.float64) - amp_to_db(rms), 0.0
            ).to(x.dtype),
            "dc_offset": dc_offset(x, sr),
            "clipped_samples": clipped_samples(x, sr),
        }
        out["third_octave_hz"], out["third_octave_db"] = third_octave_spectrum(x, sr)
        if x.shape[1] == 2:
            bands = band_stereo(x, sr)
            out.update(
                correlation=stereo_correlation(x, sr),
                side_mid_db=side_mid_ratio_db(x, sr),
                band_correlation=bands["correlation"],
                band_side_mid_db=bands["side_mid_db"],
            )
        else:
            out.update(correlation=None, side_mid_db=None, band_correlation=None,
                       band_side_mid_db=None)
    return out


def json_number(value: float, digits: int = 4) -> float | str:
    """A float for JSON: rounded, with ``-inf``/``inf`` as strings (never NaN).

    >>> json_number(-float("inf")), json_number(-23.00004)
    ('-inf', -23.0)
    """
    v = float(value)
    if math.isnan(v):  # pragma: no cover - the meters never produce NaN
        raise ValueError("analysis: a measurement came out NaN")
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return round(v, digits)


def _json_list(t: Tensor, digits: int = 4) -> list:
    if t.ndim == 0:
        return json_number(float(t), digits)  # type: ignore[return-value]
    return [_json_list(v, digits) for v in t]


def analysis_report(x: Tensor, sample_rate: int, *, series_step_s: float = 0.1) -> list[dict]:
    """JSON-ready report per batch item: every measurement of :func:`analyze`.

    Non-finite values are the strings ``"-inf"``/``"inf"``; loudness series are given
    every ``series_step_s`` seconds (a multiple of the meter step). ``defects`` lists the
    clicks and clipped runs found (:func:`diffmix.functional.restoration.defects`).

    >>> r = analysis_report(torch.zeros(1, 2, 4800), 48000)[0]
    >>> r["integrated_lufs"], r["silent"], r["stereo"]["correlation"]
    ('-inf', True, 0.0)
    """
    sr = check_sample_rate(sample_rate, "analyze")
    res = analyze(x, sr)
    step = max(1, round(series_step_s / res["series_step_s"]))
    from diffmix.functional.restoration import defects

    found = defects(x.detach(), sr)
    reports = []
    for i in range(x.shape[0]):
        stereo = None
        if res["correlation"] is not None:
            stereo = {
                "correlation": json_number(res["correlation"][i]),
                "side_mid_db": json_number(res["side_mid_db"][i]),
                "bands": [
                    {
                        "name": name,
                        "low_hz": lo,
                        "high_hz": json_number(hi),
                        "correlation": json_number(res["band_correlation"][i, k]),
                        "side_mid_db": json_number(res["band_side_mid_db"][i, k]),
                    }
                    for k, (name, lo, hi) in enumerate(STEREO_BANDS)
                ],
            }
        tp = res["true_peak_dbtp"][i]
        sp = res["sample_peak_dbfs"][i]
        reports.append({
            "sample_rate": sr,
            "channels": int(x.shape[1]),
            "duration_s": round(x.shape[-1] / sr, 6),
            "silent": bool(torch.isneginf(sp).all()),
            "integrated_lufs": json_number(res["integrated_lufs"][i]),
            "loudness_range_lu": json_number(res["loudness_range_lu"][i]),
            "momentary_max_lufs": json_number(res["momentary_lufs"][i].amax()),
            "short_term_max_lufs": json_number(res["short_term_lufs"][i].amax()),
            "true_peak_dbtp": json_number(tp.amax()),
            "true_peak_dbtp_per_channel": _json_list(tp),
            "sample_peak_dbfs": json_number(sp.amax()),
            "sample_peak_dbfs_per_channel": _json_list(sp),
            "plr_db": json_number(res["plr_db"][i]),
            "psr_db": json_number(res["psr_db"][i]),
            "crest_factor_db_per_channel": _json_list(res["crest_factor_db"][i]),
            "dc_offset_per_channel": _json_list(res["dc_offset"][i], 7),
            "clipped_samples_per_channel": [int(v) for v in res["clipped_samples"][i]],
            "clipped_samples": int(res["clipped_samples"][i].sum()),
            "defects": found[i],
            "stereo": stereo,
            "third_octave": {
                "centre_hz": [round(float(f), 2) for f in res["third_octave_hz"]],
                "level_db_per_channel": _json_list(res["third_octave_db"][i], 2),
            },
            "series": {
                "step_s": round(step * res["series_step_s"], 6),
                "momentary_lufs": _json_list(res["momentary_lufs"][i, ::step], 2),
                "short_term_lufs": _json_list(res["short_term_lufs"][i, ::step], 2),
            },
        })
    return reports
