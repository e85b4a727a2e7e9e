"""Mixing toward another song's mix (``aligned=false``): its tone, width, loudness and
dynamics, measured as features.

No waveform is shared between the stems and such a reference, so only what a listener
compares between two songs is matched: the mid and side third-octave shapes, the
side/mid ratio per band, the integrated loudness, the loudness range and the crest
factor. :func:`style_distances` reports each; :mod:`diffmix.mixing.style_master` sets
the master bus toward them.
"""

from __future__ import annotations

from torch import Tensor

from diffmix.features import FeatureExtractor, crest_factor_db
from diffmix.functional.loudness import integrated_loudness, loudness_range

STYLE_TERMS = ("tone_mid", "tone_side", "width", "loudness", "lra", "crest")
# Third-octave bands more than this far under the mid's level in either mix are not
# compared for tone (dB): a band one song leaves empty has no shape to match.
LIVE_DB = -50.0


def style_features(x: Tensor, sample_rate: int) -> dict[str, Tensor]:
    """What :func:`style_distances` compares, for ``(B, 2, T)`` audio.

    Returns:
        ``tone_mid``, ``tone_side`` ``(B, bands)`` (dB, third-octave, relative to the mid's
        level), ``width`` ``(B, 4)`` (side/mid, dB), ``loudness``, ``lra`` (LU) and
        ``crest`` (dB) ``(B,)``.
    """
    x = x.double()
    f = FeatureExtractor(sample_rate).to(x.device)(x)
    return {
        "tone_mid": f.tone_mid,
        "tone_side": f.tone_side,
        "width": f.width_db,
        "loudness": integrated_loudness(x, sample_rate),
        "lra": loudness_range(x, sample_rate),
        "crest": crest_factor_db(x),
    }


def _live(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    return (a["tone_mid"] > LIVE_DB) & (b["tone_mid"] > LIVE_DB)


def style_distances(x: Tensor, reference: Tensor, sample_rate: int) -> dict[str, float]:
    """Feature distances of a ``(1, 2, T)`` mix from a ``(1, 2, T')`` reference.

    ``tone_mid``, ``tone_side``: RMS dB difference of the shapes over the third-octave
    bands live in both (mid within 50 dB of its level); ``width``: RMS dB difference of the
    side/mid ratio over 4 bands; ``loudness``, ``lra``: LU; ``crest``: dB (absolute
    differences).
    """
    a, b = style_features(x, sample_rate), style_features(reference, sample_rate)
    live = _live(a, b)[0]

    def rms(key: str, mask: Tensor | None = None) -> float:
        d = (a[key] - b[key])[0]
        d = d[mask] if mask is not None else d
        return float(d.square().mean().sqrt()) if d.numel() else 0.0

    return {
        "tone_mid": rms("tone_mid", live),
        "tone_side": rms("tone_side", live),
        "width": rms("width"),
        "loudness": abs(float(a["loudness"][0] - b["loudness"][0])),
        "lra": abs(float(a["lra"][0] - b["lra"][0])),
        "crest": abs(float(a["crest"][0] - b["crest"][0])),
    }
