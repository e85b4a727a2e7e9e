"""The fitting objective: named, weighted terms chosen by the config.

Terms (weight 0 or absent = off):

==================  =========================================================  ==========
term                what it compares                                           needs
==================  =========================================================  ==========
``mrstft``          multi-resolution STFT distance, L/R and M/S                aligned ref
``tone_mid``        third-octave spectral shape of mid (dB², level-free)       reference
``tone_side``       third-octave spectral shape of side (dB², level-free)      reference
``width``           side/mid ratio in 4 bands (dB²)                            reference
``correlation``     inter-channel correlation (squared difference)             reference
``loudness``        integrated loudness (LU²)                                  reference
``dynamics``        short-term loudness distribution around the integrated
                    loudness, and crest factor (LU², dB²)                      reference
``spec_lufs``       integrated loudness against the target (LU²)               target
``spec_true_peak``  smooth true peak above the ceiling (one-sided, dB²)        target
``spec_lra``        loudness range outside [min, max] (one-sided, LU²)         target
``spec_plr``        peak-to-loudness ratio below the minimum (one-sided, LU²)  target
``gain_staging``    sample peak above 0 dBFS (one-sided, dB²)                  nothing
==================  =========================================================  ==========

"Match only the tone" is ``weights: {tone_mid: 1, tone_side: 1}``; "only loudness and
dynamics" is ``{loudness: 1, dynamics: 1}``; "only the width" is ``{width: 1}``.
Each term is ``(B,)``; the loss is their weighted sum. Differentiable in the audio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffmix.features import FeatureExtractor, crest_factor_db
from diffmix.functional.loudness import integrated_loudness, loudness_profile
from diffmix.functional.peaks import true_peak_soft
from diffmix.functional.spectrum import mid_side_psd
from diffmix.losses import MRSTFTLoss, hinge

TERMS = (
    "mrstft", "tone_mid", "tone_side", "width", "correlation", "loudness", "dynamics",
    "spec_lufs", "spec_true_peak", "spec_lra", "spec_plr", "gain_staging",
)
REFERENCE_TERMS = ("tone_mid", "tone_side", "width", "correlation", "loudness", "dynamics")
TARGET_TERMS = ("spec_lufs", "spec_true_peak", "spec_lra", "spec_plr")
QUANTILES = (0.1, 0.5, 0.9, 0.95)


def _finite_lufs(lufs: Tensor, floor: float = -70.0) -> Tensor:
    """Silence measures -inf; a loss needs a finite value with a gradient."""
    return torch.where(torch.isfinite(lufs), lufs, torch.full_like(lufs, floor))


def dynamics_profile(x: Tensor, sample_rate: int, measured: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Short-term loudness quantiles relative to the integrated loudness, ``(B, 4)`` LU.

    Windows below -70 LUFS are ignored (their loudness is replaced by the integrated one).
    ``measured``: ``x``'s :func:`~diffmix.functional.loudness.loudness_profile`, where taken.
    """
    il, st = measured if measured is not None else loudness_profile(x, sample_rate)
    return profile_about(il, st)


def dynamics_features(x: Tensor, sample_rate: int,
                      measured: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """What the ``dynamics`` term compares: ``(`` :func:`dynamics_profile` ``(B, 4)``,
    crest factor ``(B,)`` dB ``)``."""
    return dynamics_profile(x, sample_rate, measured), crest_factor_db(x)


def dynamics_distance(profile: Tensor, crest: Tensor, reference: tuple[Tensor, Tensor]) -> Tensor:
    """The ``dynamics`` term, ``(B,)``: mean squared profile difference (LU²) plus a quarter
    of the squared crest factor difference (dB²), against ``reference`` ``(profile, crest)``."""
    return (profile - reference[0]).square().mean(-1) + 0.25 * (crest - reference[1]).square()


def profile_about(lufs: Tensor, short: Tensor) -> Tensor:
    """Quantiles :data:`QUANTILES` of short-term loudness ``(B, N)`` relative to the
    integrated ``lufs`` ``(B,)``, ``(B, 4)`` LU; windows below -70 LUFS read as the
    integrated. Differentiable."""
    il = _finite_lufs(lufs).unsqueeze(-1)
    rel = torch.where(short > -70.0, short - il, torch.zeros_like(short))
    q = torch.tensor(QUANTILES, dtype=short.dtype, device=short.device)
    return torch.quantile(rel, q, dim=-1).T


def _heard_mean(errors: Tensor, heard: Tensor) -> Tensor:
    """The mean of ``errors`` ``(B, bands)`` over each item's ``heard`` bands (0 with none);
    no host sync (with every band heard, the plain mean's value)."""
    kept = torch.where(heard, errors, torch.zeros_like(errors))
    return kept.sum(-1) / heard.sum(-1).clamp_min(1).to(errors.dtype)


class Objective(nn.Module):
    """Weighted sum of the terms above.

    Args:
        sample_rate: Hz.
        weights: term -> weight.
        reference: ``(1 or B, 2, T)`` reference audio whose features are matched, a list of
            ``(1, 2, T_i)`` references (one per batch item, any lengths), or None.
        target: loudness spec with keys ``lufs``, ``true_peak_db``, ``lra`` ([min, max] or
            None) and ``plr`` (minimum, or None).
        mrstft: keyword arguments for :class:`~diffmix.losses.MRSTFTLoss`.
        n_fft: Welch segment length for the spectral features.
        mono: compare the MR-STFT on the channels' mean (a mono reference).

    Shape:
        ``y``: ``(B, 2, T)``; ``aligned``: the time-aligned reference excerpt, or
        ``aligned_mags``: its :meth:`mrstft_reference` (computed once for many calls);
        returns ``((B,), {term: (B,)})``.
    """

    def __init__(
        self,
        sample_rate: int,
        weights: Mapping[str, float],
        *,
        reference: Tensor | Sequence[Tensor] | None = None,
        target: Mapping[str, Any] | None = None,
        mrstft: Mapping[str, Any] | None = None,
        n_fft: int = 8192,
        mono: bool = False,
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"objective: unknown term(s) {unknown}; choose from {list(TERMS)}")
        bad = {k: v for k, v in weights.items() if not (float(v) >= 0)}
        if bad:
            raise ValueError(f"objective: weights must be >= 0, got {bad}")
        self.sample_rate = sample_rate
        self.mono = mono
        self.weights = {k: float(v) for k, v in weights.items() if float(v) > 0}
        if not self.weights:
            raise ValueError("objective: every term has weight 0; nothing to fit")
        need_ref = sorted(set(self.weights) & set(REFERENCE_TERMS))
        if need_ref and reference is None:
            raise ValueError(f"objective: term(s) {need_ref} need a reference")
        self.target = dict(target or {})
        for term, key in (("spec_lufs", "lufs"), ("spec_true_peak", "true_peak_db"),
                          ("spec_lra", "lra"), ("spec_plr", "plr")):
            if term in self.weights and self.target.get(key) is None:
                raise ValueError(f"objective: term {term} needs target.{key}")
        self.features = FeatureExtractor(sample_rate, n_fft)
        self.mrstft = MRSTFTLoss(sample_rate, **dict(mrstft or {})) if "mrstft" in self.weights else None
        self.ref: dict[str, Tensor] = {}
        if reference is not None:
            refs = [reference] if isinstance(reference, Tensor) else list(reference)
            with torch.no_grad():
                parts = [self._reference_features(r) for r in refs]
            self.ref = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _reference_features(self, ref: Tensor) -> dict[str, Tensor]:
        # The reference's mid/side spectrum in float64, measured once per signal (a master
        # job's match EQ has analysed it already), and one K-weighting for its loudness terms.
        psd = mid_side_psd(ref, self.features.n_fft) if ref.shape[1] == 2 else self.features.psd(ref)
        f = self.features.from_psd(psd.to(ref.dtype), ref)
        out = {
            "tone_mid": f.tone_mid, "tone_side": f.tone_side, "width": f.width_db,
            "correlation": f.correlation,
        }
        if {"loudness", "dynamics"} & set(self.weights):
            measured = loudness_profile(ref, self.sample_rate)
            out["loudness"] = _finite_lufs(measured[0])
            if "dynamics" in self.weights:
                out["dynamics"], out["crest"] = dynamics_features(ref, self.sample_rate, measured)
        return out

    def _mrstft_view(self, x: Tensor) -> Tensor:
        return x.mean(1, keepdim=True) if self.mono else x

    def mrstft_reference(self, aligned: Tensor) -> list[Tensor]:
        """The aligned reference excerpt's MR-STFT magnitudes, for ``forward(aligned_mags=)``."""
        assert self.mrstft is not None, "objective: no mrstft term"
        return self.mrstft.reference(self._mrstft_view(aligned))

    def forward(self, y: Tensor, aligned: Tensor | None = None, *,
                aligned_mags: Sequence[Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        terms: dict[str, Tensor] = {}
        w = self.weights
        if "mrstft" in w and aligned_mags is None and aligned is None:
            raise ValueError("objective: mrstft needs the time-aligned reference excerpt")
        if set(w) & {"tone_mid", "tone_side", "width", "correlation"}:
            # the L/R correlation (three passes over the excerpt) only where it is a term
            f = self.features.from_psd(self.features.psd(y), y if "correlation" in w else None)
            # Each term over the bands where the output has what it compares: a mono output's
            # side reads the dB floor, which its level-normalised shape would have the fit
            # chase by turning the mid down (an antiphase output's mid likewise the side),
            # and no stage of a chain makes a side, or a mid, from none.
            if "tone_mid" in w:
                terms["tone_mid"] = _heard_mean((f.tone_mid - self.ref["tone_mid"]).square(), f.mid_heard)
            if "tone_side" in w:
                terms["tone_side"] = _heard_mean((f.tone_side - self.ref["tone_side"]).square(), f.side_heard)
            if "width" in w:
                terms["width"] = _heard_mean((f.width_db - self.ref["width"]).square(), f.width_heard)
            if "correlation" in w:
                terms["correlation"] = (f.correlation - self.ref["correlation"]).square()
        lufs: Tensor | None = None
        measured: tuple[Tensor, Tensor] | None = None  # integrated and short-term, one K-weighting
        if set(w) & {"dynamics", "spec_lra"}:
            measured = loudness_profile(y, self.sample_rate)
        if set(w) & {"loudness", "dynamics", "spec_lufs", "spec_plr"}:
            lufs = _finite_lufs(integrated_loudness(y, self.sample_rate) if measured is None else measured[0])
        if "loudness" in w:
            assert lufs is not None  # set above for these terms
            terms["loudness"] = (lufs - self.ref["loudness"]).square()
        if "dynamics" in w:
            terms["dynamics"] = dynamics_distance(*dynamics_features(y, self.sample_rate, measured),
                                                  (self.ref["dynamics"], self.ref["crest"]))
        if "spec_lufs" in w:
            assert lufs is not None
            terms["spec_lufs"] = (lufs - float(self.target["lufs"])).square()
        tp: Tensor | None = None
        if set(w) & {"spec_true_peak", "spec_plr"}:
            tp = true_peak_soft(y, self.sample_rate)
        if "spec_true_peak" in w:
            assert tp is not None  # set above for these terms
            terms["spec_true_peak"] = hinge(tp - float(self.target["true_peak_db"]))
        if "spec_plr" in w:
            assert tp is not None and lufs is not None
            terms["spec_plr"] = hinge(float(self.target["plr"]) - (tp - lufs))
        if "spec_lra" in w:
            lo, hi = (float(v) for v in self.target["lra"])
            prof = dynamics_profile(y, self.sample_rate, measured)
            lra = prof[:, 3] - prof[:, 0]  # 95th minus 10th percentile, as Tech 3342
            terms["spec_lra"] = hinge(lo - lra) + hinge(lra - hi)
        if "mrstft" in w:
            mags = aligned_mags if aligned_mags is not None else self.mrstft_reference(aligned)  # type: ignore[arg-type]
            terms["mrstft"] = self.mrstft.distance(self._mrstft_view(y), mags)  # type: ignore[union-attr]
        if "gain_staging" in w:
            peak_db = 20 * torch.log10(y.abs().amax((-2, -1)).clamp_min(1e-9))
            terms["gain_staging"] = hinge(peak_db)
        # The feature terms, then the waveform and clip terms (their order in the sum).
        late = ("mrstft", "gain_staging")
        loss = sum(w[k] * v for k, v in terms.items() if k not in late)
        for k in late:
            if k in terms:
                loss = loss + w[k] * terms[k]
        return loss, terms  # type: ignore[return-value]
