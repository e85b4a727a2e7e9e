"""The predictor's input: what :mod:`diffmix.features` measures, as one vector per song.

Per signal (the input as the chain will see it, and the reference): the level-free
third-octave shape of mid, the side-to-mid ratio per third-octave band, the side/mid ratio
in the four coarse width bands, the inter-channel correlation, the short-term loudness
distribution around the integrated loudness (10/50/90/95 %), the crest factor, the
integrated loudness, the peak-to-loudness ratio (sample peak) and the loudness range.
Then whether there is a reference (without one its block is zeros), the target loudness
and the target true peak. Not differentiable (features are inputs, not outputs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffmix.features import FeatureExtractor, correlation, crest_factor_db
from diffmix.functional.loudness import integrated_loudness
from diffmix.inputs import resample
from diffmix.objective import _finite_lufs, dynamics_profile

FEATURE_VERSION = 2
LUFS = -3  # where the integrated loudness sits in a signal_features row
N_FFT = 8192
_SCALAR_NAMES = (
    "width_0",
    "width_1",
    "width_2",
    "width_3",
    "correlation",
    "st_q10",
    "st_q50",
    "st_q90",
    "st_q95",
    "crest_db",
    "lufs",
    "plr_db",
    "lra_lu",
)


def band_count(sample_rate: int) -> int:
    """Third-octave bands the features have at ``sample_rate``."""
    return int(FeatureExtractor(sample_rate, N_FFT).third.shape[0])


def names(sample_rate: int) -> list[str]:
    """The feature vector's entries by name, in order."""
    nb = band_count(sample_rate)
    one = [f"tone_mid_{i}" for i in range(nb)] + [f"side_mid_{i}" for i in range(nb)] + list(_SCALAR_NAMES)
    blocks = [f"{who}.{n}" for who in ("input", "reference", "difference") for n in one]
    return blocks + ["has_reference", "target_lufs", "target_true_peak_db"]


@torch.no_grad()
def signal_features(x: Tensor, sample_rate: int, extractor: FeatureExtractor | None = None) -> Tensor:
    """``(B, 2, T)`` audio -> ``(B, 2 * bands + 13)`` float64 features (see the module doc).

    Measured in float32 (a feature needs no more, and training measures thousands).
    """
    x = x.float()
    fx = extractor if extractor is not None else _extractor(sample_rate, x.device)
    f = fx(x)
    side_mid = (f.side_db - f.mid_db).clamp(-60.0, 20.0)
    width = f.width_db.clamp(-60.0, 20.0)
    lufs = _finite_lufs(integrated_loudness(x, sample_rate))
    prof = dynamics_profile(x, sample_rate).clamp(-40.0, 20.0)
    peak_db = 20.0 * torch.log10(x.abs().flatten(1).amax(-1).clamp_min(1e-6))
    scalars = torch.stack(
        [
            *width.unbind(-1),
            correlation(x),
            *prof.unbind(-1),
            crest_factor_db(x).clamp(0.0, 60.0),
            lufs,
            (peak_db - lufs).clamp(0.0, 60.0),
            prof[:, 3] - prof[:, 0],
        ],
        -1,
    )
    return torch.cat([f.tone_mid.clamp(-60.0, 30.0), side_mid, scalars], -1).double()


_EXTRACTORS: dict[tuple[int, str], FeatureExtractor] = {}


def _extractor(sample_rate: int, device: torch.device) -> FeatureExtractor:
    key = (sample_rate, str(device))
    if key not in _EXTRACTORS:  # its band matrices cost more to build than to apply
        _EXTRACTORS[key] = FeatureExtractor(sample_rate, N_FFT).to(device)
    return _EXTRACTORS[key]


@torch.no_grad()
def feature_vector(
    inputs: Tensor,
    references: Tensor | None,
    target_lufs: Tensor,
    target_true_peak_db: Tensor,
    sample_rate: int,
) -> Tensor:
    """The predictor's input ``(B, F)`` from per-signal features.

    Blocks: the input's, the reference's, their difference (reference minus input: what
    the chain has to do, which a small model learns from far fewer songs than the two
    blocks apart), the reference flag, the target loudness and ceiling.

    Args:
        inputs: ``(B, S)`` :func:`signal_features` of the inputs.
        references: ``(B, S)`` of the references, or None (spec only: zeros and a 0 flag).
        target_lufs: ``(B,)`` the loudness the master is solved to, LUFS.
        target_true_peak_db: ``(B,)`` the ceiling, dBTP.
    """
    b = inputs.shape[0]
    flag = 1.0 if references is not None else 0.0
    has = torch.full((b, 1), flag, dtype=inputs.dtype)
    ref = references if references is not None else torch.zeros_like(inputs)
    diff = (ref - inputs) * flag
    extra = [target_lufs.reshape(b, 1).to(inputs.dtype), target_true_peak_db.reshape(b, 1).to(inputs.dtype)]
    return torch.cat([inputs, ref, diff, has, *extra], -1)


_MELS: dict[tuple[int, int, int, str], torch.nn.Module] = {}


@torch.no_grad()
def mel_input(
    inputs: Tensor, references: Tensor | None, sample_rate: int, *, bands: int, frames: int, n_fft: int
) -> Tensor:
    """Log-mel spectrograms for :class:`~diffmix.learned.model.MelCNN`, ``(B, 4 * bands * frames)``
    float64: mid and side of the input, then of the reference (zeros without one).

    Each signal's powers are in dB relative to the mean of its mid's (level-free; the side
    keeps its balance to the mid), floored at -80 dB, and averaged into ``frames`` equal
    spans of time (hop ``n_fft / 4``). Not differentiable.
    """
    import torchaudio

    key = (sample_rate, bands, n_fft, str(inputs.device))
    if key not in _MELS:
        _MELS[key] = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=bands, power=2.0
        ).to(inputs.device)
    mel = _MELS[key]

    def one(x: Tensor) -> Tensor:
        ms = torch.stack([x[:, 0] + x[:, 1], x[:, 0] - x[:, 1]], 1).float() * 0.5
        db = 10.0 * torch.log10(mel(ms).clamp_min(1e-12))  # (B, 2, bands, time)
        db = (db - db[:, :1].mean((-2, -1), keepdim=True)).clamp(-80.0, 40.0)
        return torch.nn.functional.adaptive_avg_pool2d(db, (bands, frames))

    a = one(inputs)
    b = one(references) if references is not None else torch.zeros_like(a)
    return torch.cat([a, b], 1).flatten(1).double().cpu()


def window(x, seconds: float, sample_rate: int):  # noqa: ANN001, ANN201 - tensors or DiskAudio
    """At most ``seconds`` of ``x`` (``(1, 2, T)`` or anything sliced like it) around its middle."""
    n = int(x.shape[-1])
    want = int(math.ceil(seconds * sample_rate))
    if n <= want:
        return x[..., :]
    start = (n - want) // 2
    return x[..., start : start + want]


def at_rate(x: Tensor, sample_rate: int, feature_rate: int) -> Tensor:
    """``x`` resampled to the rate the features were trained at (nothing when equal)."""
    return x if sample_rate == feature_rate else resample(x, sample_rate, feature_rate)
