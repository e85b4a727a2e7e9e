"""Job reports: the headline measurements of a signal, JSON that represents every number
unambiguously (:func:`plain`, :func:`write_json`: the one JSON encoder), and the PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from diffmix.errors import UserError
from diffmix.io import atomic_path, atomic_write_text

SHORT_TERM_S = 3.0  # the short-term meter's window: its first value is at the window's end

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


def summary(x: torch.Tensor, sample_rate: int) -> dict:
    """The headline measurements of ``(1, C, T)`` audio for a job report.

    Loudness in LUFS, LRA in LU, peaks in dBTP/dBFS (max over channels), ratios in dB.
    Silence reads ``-inf`` (written to JSON as the string ``"-inf"``). The full analysis
    (series, spectra, per-band stereo) is the ``analyze`` job's.
    """
    from diffmix.functional.analysis import side_mid_ratio_db, stereo_correlation
    from diffmix.functional.loudness import integrated_loudness, loudness_range, short_term_loudness
    from diffmix.functional.peaks import peak_ratio_db, true_peak

    def rel(peak: float, level: float) -> float:  # PLR and PSR, as the meters define them
        return float(peak_ratio_db(torch.tensor(peak, dtype=torch.float64),
                                   torch.tensor(level, dtype=torch.float64)))

    with torch.no_grad():
        lufs = float(integrated_loudness(x, sample_rate)[0])
        tp = 20.0 * math.log10(max(float(true_peak(x, sample_rate).amax()), 1e-300))
        sp = 20.0 * math.log10(max(float(x.abs().amax()), 1e-300))
        st_max = float(short_term_loudness(x, sample_rate).amax())
        out = {
            "integrated_lufs": lufs,
            "lra_lu": float(loudness_range(x, sample_rate)[0]),
            "true_peak_dbtp": tp if tp > -300 else -math.inf,
            "sample_peak_dbfs": sp if sp > -300 else -math.inf,
            "plr_db": rel(tp, lufs),
            "psr_db": rel(tp, st_max),
            "max_short_term_lufs": st_max,
        }
        if x.shape[1] == 2:
            out["correlation"] = float(stereo_correlation(x, sample_rate)[0])
            out["side_mid_db"] = float(side_mid_ratio_db(x, sample_rate)[0])
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
    pk = lambda x: x[..., :n].abs().amax(1).reshape(-1, hop).amax(-1)  # noqa: E731
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
