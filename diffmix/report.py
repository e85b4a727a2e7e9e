"""Job reports: the headline measurements of a signal (:class:`ChunkMeter`, fed chunk by
chunk, and :func:`summary`, its one-chunk case), JSON that represents every number
unambiguously (:func:`plain`, :func:`write_json`: the one JSON encoder), and the PNG plot."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from diffmix.errors import UserError
from diffmix.functional.analysis import CLIP_LEVEL
from diffmix.functional.loudness import GatedMeter
from diffmix.functional.peaks import oversample, oversampling_factor, peak_ratio_db, strict_envelope
from diffmix.io import atomic_path, atomic_write_text

SHORT_TERM_S = 3.0  # the short-term meter's window: its first value is at the window's end
# True-peak context either side of a chunk: more than half the interpolation filter.
PEAK_CONTEXT = 256
# The strict meter's reach (peaks.strict_envelope: its ideal interpolation's FFT blocks and
# every FIR upsampler), so a chunk read with this much context meters as the whole file does.
STRICT_CONTEXT = 4096
_STATS_BLOCK = 1 << 16  # samples per block of a chunk's sample statistics on CPU

if TYPE_CHECKING:
    from diffmix.features import FeatureExtractor


def plain(value: Any) -> Any:
    """Tensors, numpy values and non-finite floats -> JSON-safe values.

    Non-finite numbers (the loudness of silence is -inf) become the strings ``"-inf"``,
    ``"inf"`` or ``"nan"``: JSON has no such numbers, and ``null`` would hide which it was.
    """
    if isinstance(value, Tensor):
        value = value.detach().cpu().tolist()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(Path(path), json.dumps(plain(data), indent=2, allow_nan=False) + "\n")
    return Path(path)


def _middle_true_peak(y: Tensor, left: int, n: int, sample_rate: int) -> float:
    """True peak (linear, channels linked) of ``y[..., left : left + n]``, with
    :data:`PEAK_CONTEXT` samples of ``y`` either side as the interpolator's support."""
    from diffmix.functional import _peak_kernels

    p = PEAK_CONTEXT
    seg = y[..., left - p : left + n + p]
    f = oversampling_factor(sample_rate)
    if f > 1 and _peak_kernels.available(seg):
        # The limiter's per-sample true-peak level (numba: no oversampled copy is made),
        # a channel at a time: each channel's slice is contiguous, so nothing is copied.
        return max(float(_peak_kernels.envelope(seg[:, c : c + 1], sample_rate)[..., p : p + n].amax())
                   for c in range(seg.shape[1]))
    over = oversample(seg, sample_rate)
    return float(over[..., p * f : (p + n) * f].abs().amax())


_PUSH_FRAMES = 1 << 20  # SequentialMeter's pieces, frames (~24 s at 44.1 kHz)


class SequentialMeter:
    """A :class:`ChunkMeter` fed consecutive ``(C, n)`` pieces of a signal with no context
    (as they are written, say): it keeps the context each piece needs and meters a stretch
    once the samples after it have arrived. :meth:`summary` ends the signal (silence after
    it, as before its start) and returns :meth:`ChunkMeter.summary`."""

    def __init__(self, sample_rate: int, channels: int, *, strict: bool = False,
                 true_peak: bool = True) -> None:
        from diffmix.functional.loudness import block_samples

        self.meter = ChunkMeter(sample_rate, channels, strict=strict, true_peak=true_peak)
        self.left = max(ChunkMeter.warmup(sample_rate), STRICT_CONTEXT if strict else 0)
        self.right = STRICT_CONTEXT if strict else PEAK_CONTEXT
        self.hop = block_samples(sample_rate)[0]
        self.buf: Tensor | None = None  # self.left samples of context, then the unmetered ones

    def push(self, x: Tensor) -> None:
        x = x.detach()
        # A piece at a time: each joins the kept context by a copy, never the whole signal
        # (an in-memory master is one chunk); the readings agree to float rounding.
        for a in range(0, x.shape[-1], _PUSH_FRAMES):
            self._push(x[:, a : a + _PUSH_FRAMES])

    def _push(self, x: Tensor) -> None:
        if self.buf is None:
            self.buf = x.new_zeros((x.shape[0], self.left))
        self.buf = torch.cat([self.buf, x], -1)
        ready = (self.buf.shape[-1] - self.left - self.right) // self.hop * self.hop
        if ready > 0:
            self.meter.add(self.buf[None], self.left, ready)
            self.buf = self.buf[:, ready:]

    def summary(self) -> dict[str, float]:
        if self.buf is not None and self.buf.shape[-1] > self.left:
            rest = self.buf.shape[-1] - self.left
            tail = torch.nn.functional.pad(self.buf, (0, self.right))
            self.meter.add(tail[None], self.left, rest)
        self.buf = None
        return self.meter.summary()


def summary(x: torch.Tensor, sample_rate: int, chunk_s: float = 30.0) -> dict:
    """The headline measurements of ``(1, C, T)`` audio for a job report: a
    :class:`ChunkMeter` fed the signal in float64 on the CPU, ``chunk_s`` at a time (no
    full-length copy), as :func:`~diffmix.mastering.source.measure_file` meters a file.

    Loudness in LUFS, LRA in LU, peaks in dBTP/dBFS (max over channels), ratios in dB.
    Silence reads ``-inf`` (written to JSON as the string ``"-inf"``). The full analysis
    (series, spectra, per-band stereo) is the ``analyze`` job's.
    """
    t = x.shape[-1]
    x = x.detach()

    def read(a: int, z: int) -> Tensor:  # samples a .. z, zeros outside the signal
        out = x.new_zeros((*x.shape[:-1], z - a), dtype=torch.float64, device="cpu")
        lo, hi = max(a, 0), min(z, t)
        if hi > lo:  # one float64 copy of the chunk, written in place (no padded second copy)
            out[..., lo - a : hi - a].copy_(x[..., lo:hi])
        return out

    with torch.no_grad():
        return meter_chunks(read, t, sample_rate, x.shape[1], chunk_s=chunk_s)


def meter_chunks(read: Callable[[int, int], Tensor], frames: int, sample_rate: int, channels: int, *,
                 chunk_s: float = 30.0, strict: bool = False,
                 after_chunk: Callable[[], None] | None = None) -> dict[str, float]:
    """:meth:`ChunkMeter.summary` of a signal of ``frames`` samples read chunk by chunk:
    ``read(a, z)`` gives samples ``a .. z`` as ``(1, C, z - a)``, silence outside the
    signal; ``after_chunk`` runs after each chunk is metered."""
    from diffmix.mastering.source import chunk_bounds

    meter = ChunkMeter(sample_rate, channels, strict=strict)
    w, right = ChunkMeter.warmup(sample_rate), PEAK_CONTEXT
    if strict:
        w, right = max(w, STRICT_CONTEXT), STRICT_CONTEXT
    for start, stop in list(chunk_bounds(frames, sample_rate, chunk_s)) or [(0, 0)]:
        meter.add(read(start - w, stop + right), w, stop - start)
        if after_chunk is not None:
            after_chunk()
    return meter.summary()


class ChunkMeter:
    """The headline measurements of a signal fed chunk by chunk (:meth:`summary`): loudness,
    loudness range, true and sample peaks, and for stereo the correlation and side/mid.

    Feed each chunk with ``left`` samples of the signal before it (at least
    :meth:`warmup` of them, zeros before the start) and ``PEAK_CONTEXT`` after it
    (``STRICT_CONTEXT`` each side with ``strict``). Chunks must start on multiples of the
    100 ms gating hop. Loudness is :class:`~diffmix.functional.loudness.GatedMeter`'s;
    ``strict`` meters the true peak on :func:`~diffmix.functional.peaks.strict_envelope`
    (every usual meter): the delivery ceiling's check. ``true_peak=False`` meters no true
    peak: the caller knows it and sets ``peak`` (linear) before :meth:`summary`.
    """

    def __init__(self, sample_rate: int, channels: int, *, strict: bool = False,
                 true_peak: bool = True) -> None:
        self.sr, self.channels, self.strict, self.true_peak = sample_rate, channels, strict, true_peak
        self.gated = GatedMeter(sample_rate, channels)
        self.peak = 0.0
        self.sample_peak = 0.0
        self.square_sum = 0.0  # for the ungated estimate (rough_lufs)
        self.samples = 0
        self.stereo = torch.zeros(5, dtype=torch.float64)  # sums of LR, LL, RR, MM, SS
        self.dc_sum = torch.zeros(channels, dtype=torch.float64)
        self.clipped = 0

    @staticmethod
    def warmup(sample_rate: int) -> int:
        """Left context the meter needs, in samples (a whole number of meter units)."""
        return max(PEAK_CONTEXT, GatedMeter.warmup(sample_rate))

    def add(self, y: Tensor, left: int, n: int) -> None:
        """Meter ``y[..., left : left + n]`` of ``y`` ``(1, C, left + n + right)``."""
        w = self.warmup(self.sr)
        if left < w or y.shape[-1] < left + n + PEAK_CONTEXT:
            raise ValueError(f"ChunkMeter: need {w} samples before and {PEAK_CONTEXT} after a chunk")
        y = y.detach()
        self.gated.add(y, left, n)
        if self.true_peak and self.strict:
            q = STRICT_CONTEXT
            if left < q or y.shape[-1] < left + n + q:
                raise ValueError(f"ChunkMeter: the strict meter needs {q} samples each side of a chunk")
            # The first chunk starts at the signal's start (the meter pads the silence
            # before it itself), so its FFT blocks fall where a whole-signal meter's do: a
            # signal fed as one chunk reads exactly as strict_true_peak reads it whole.
            a = 0 if self.samples == 0 else q
            level = strict_envelope(y[..., left - a : left + n + q], self.sr)
            self.peak = max(self.peak, float(level[..., a : a + n].amax()))
        elif self.true_peak:
            self.peak = max(self.peak, _middle_true_peak(y, left, n, self.sr))
        mid = y[0, :, left : left + n]
        # A block at a time on CPU: no full-length copies (the magnitude, float64 rows).
        step = _STATS_BLOCK if mid.device.type == "cpu" else max(n, 1)
        peak, clipped = mid.new_zeros(()), torch.zeros((), dtype=torch.int64, device=mid.device)
        gram = torch.zeros(mid.shape[0], mid.shape[0], dtype=torch.float64, device=mid.device)
        dc = torch.zeros(mid.shape[0], dtype=torch.float64, device=mid.device)
        for a in range(0, n, step):
            part = mid[:, a : a + step]
            magnitude = part.abs()
            peak = torch.maximum(peak, magnitude.amax())
            clipped += (magnitude >= CLIP_LEVEL).sum()
            rows = part.double()
            dc += rows.sum(-1)
            gram += rows @ rows.T  # sums of every channel product
        self.sample_peak = max(self.sample_peak, float(peak))
        self.clipped += int(clipped)
        self.dc_sum += dc.cpu()
        gram = gram.cpu()
        self.square_sum += float(gram.diagonal().sum())
        self.samples += mid.numel()
        if self.channels == 2:
            ll, lr, rr = gram[0, 0], gram[0, 1], gram[1, 1]
            # mid (L+R)/2 and side (L-R)/2 energies from the same sums
            self.stereo += torch.stack([lr, ll, rr, (ll + 2 * lr + rr) / 4, (ll - 2 * lr + rr) / 4])

    def integrated_lufs(self) -> float:
        """BS.1770 gated loudness over every block of every chunk (global gating)."""
        return self.gated.integrated_lufs()

    def loudness_range(self) -> float:
        """EBU Tech 3342 loudness range (LU) over every chunk."""
        return self.gated.loudness_range()

    def rough_lufs(self) -> float:
        """The ungated estimate of :func:`~diffmix.mastering.loudness.rough_lufs`:
        the mean square over every channel and sample, ``-inf`` for digital silence."""
        power = self.square_sum / max(self.samples, 1)
        return 10 * math.log10(power) - 0.691 + 3.0 if power > 0 else -math.inf

    def true_peak_dbtp(self) -> float:
        return 20.0 * math.log10(max(self.peak, 1e-12))

    def summary(self) -> dict[str, Any]:
        """The report's measurements: ``integrated_lufs``, ``lra_lu``, ``true_peak_dbtp``,
        ``sample_peak_dbfs``, ``plr_db``, ``psr_db``, ``max_short_term_lufs``,
        ``dc_offset`` (per channel, linear), ``clipped_samples`` (at or beyond
        :data:`~diffmix.functional.analysis.CLIP_LEVEL`) and, for stereo, ``correlation`` and
        ``side_mid_db``. Silence reads ``-inf``."""
        from diffmix.functional.analysis import correlation_from_sums, side_mid_db_from_sums

        def db(amp: float) -> float:
            level = 20.0 * math.log10(max(amp, 1e-300))
            return level if level > -300 else -math.inf

        def rel(peak: float, level: float) -> float:  # PLR and PSR, as the meters define them
            return float(peak_ratio_db(torch.tensor(peak, dtype=torch.float64),
                                       torch.tensor(level, dtype=torch.float64)))

        lufs, tp, st_max = self.integrated_lufs(), db(self.peak), self.gated.max_short_term_lufs()
        out = {
            "integrated_lufs": lufs,
            "lra_lu": self.loudness_range(),
            "true_peak_dbtp": tp,
            "sample_peak_dbfs": db(self.sample_peak),
            "plr_db": rel(tp, lufs),
            "psr_db": rel(tp, st_max),
            "max_short_term_lufs": st_max,
            "dc_offset": (self.dc_sum / max(self.samples // self.channels, 1)).tolist(),
            "clipped_samples": self.clipped,
        }
        if self.channels == 2:
            lr, ll, rr, mm, ss = self.stereo.unbind()
            out["correlation"] = float(correlation_from_sums(lr, ll, rr))
            out["side_mid_db"] = float(side_mid_db_from_sums(mm, ss))
        return out



def peak_dbtp(x: torch.Tensor, sample_rate: int) -> float:
    """The highest true peak over items and channels, dBTP, on the strict meter (BS.1770
    Annex 2, the common 4x/8x upsamplers and ideal 8x interpolation): the delivery check's."""
    from diffmix.functional.peaks import strict_true_peak

    return 20.0 * math.log10(max(float(strict_true_peak(x, sample_rate).amax()), 1e-12))


def gain_reduction_db(before: Tensor, after: Tensor, sample_rate: int, window_ms: float = 50.0) -> Tensor:
    """Windowed peak level change from ``before`` to ``after`` (the limiter's work), dB.

    ``(1, C, T)`` each -> ``(frames,)``, one value per ``window_ms``.
    """
    hop = max(1, int(sample_rate * window_ms / 1000))
    n = (before.shape[-1] // hop) * hop

    def pk(x: Tensor) -> Tensor:  # each window's peak |x| over channels, without an |x| copy
        w = x[0, :, :n].reshape(x.shape[1], -1, hop)
        return torch.maximum(w.amax(-1), -w.amin(-1)).amax(0).double()

    return 20 * torch.log10(pk(after).clamp_min(1e-9) / pk(before).clamp_min(1e-9)).clamp(max=0)


def plot_spectrum_db(audio: Tensor, fx: FeatureExtractor, max_frames: int = 256) -> Tensor:
    """Third-octave mid spectrum (dB) of ``(1, 2, T)`` audio for a plot, ``(bands,)``.

    A drawn long-term spectrum needs no more than a few hundred Welch frames: they are
    spread evenly over the whole song (hop grows with the length, never under half a
    frame), so a 3-minute song costs ~8x less than the metric's 50 %-overlap estimate
    and reads the same to a fraction of a dB.
    """
    from diffmix.functional.gain import mid_side
    from diffmix.functional.spectrum import band_powers, power_db, welch_psd

    x = audio.detach().float().cpu()
    hop = max(fx.n_fft // 2, (x.shape[-1] - fx.n_fft) // max(1, max_frames - 1))
    psd = welch_psd(mid_side(x), fx.n_fft, hop=hop)
    return power_db(band_powers(psd.double(), fx.third.cpu()))[0, 0]


def figure(
    sample_rate: int,
    *,
    curves: dict[str, Tensor],
    short_term: dict[str, Tensor],
    gain_reduction: Tensor | None = None,
    title: str = "",
):  # noqa: ANN201 - a matplotlib Figure
    """The plot's matplotlib figure: spectra, short-term loudness and gain reduction, time in seconds.

    Args:
        curves: label -> ``(1, 2, T)`` audio whose spectra are drawn (input, output, reference).
        short_term: label -> short-term loudness series (LUFS) from
            :func:`~diffmix.functional.loudness.short_term_loudness`: one value per meter
            unit (10 ms), drawn at the end of its 3 s window, in seconds.
        gain_reduction: the limiter's gain reduction in dB, or None.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffmix.features import FeatureExtractor

    rows = 3 if gain_reduction is not None else 2
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3.2 * rows))
    fx = FeatureExtractor(sample_rate)
    for label, audio in curves.items():
        axes[0].semilogx(fx.centres.numpy(), plot_spectrum_db(audio, fx).numpy(), label=label)
    axes[0].set(xlabel="Hz", ylabel="dB (third octave, mid)", title=title or "Spectrum")
    axes[0].legend()
    axes[0].grid(True, which="both", alpha=0.3)
    from diffmix.functional.loudness import meter_unit

    for label, series in short_term.items():
        s = series.detach().double().cpu().flatten()
        step_s = meter_unit(sample_rate) / sample_rate
        t = SHORT_TERM_S + torch.arange(s.numel(), dtype=torch.float64) * step_s
        axes[1].plot(t.numpy(), s.clamp_min(-70).numpy(), label=label)
    axes[1].set(xlabel="time (s, end of the 3 s window)", ylabel="LUFS (short-term)")
    axes[1].legend()
    axes[1].grid(True, alpha=0.3)
    if gain_reduction is not None:
        gr = gain_reduction.detach().cpu()
        axes[2].plot((torch.arange(gr.numel()) * 0.05).numpy(), gr.numpy(), color="tab:red")
        axes[2].set(xlabel="time (s)", ylabel="dB", title="Limiter gain reduction")
        axes[2].grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def plot(
    path: str | Path,
    sample_rate: int,
    *,
    curves: dict[str, Tensor],
    short_term: dict[str, Tensor],
    gain_reduction: Tensor | None = None,
    title: str = "",
) -> Path:
    """Write :func:`figure` as a PNG (needs the ``plot`` extra: matplotlib)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UserError(
            "plot=true needs matplotlib: pip install 'diffmix[plot]' (or plot=false; report.html has plots)"
        ) from exc
    fig = figure(sample_rate, curves=curves, short_term=short_term, gain_reduction=gain_reduction,
                 title=title)
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return target
