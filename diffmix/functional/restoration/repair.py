"""Click repair (:func:`repair_clicks`) and :func:`declick`, detection and repair in one call."""

from __future__ import annotations

import torch
import torch.nn.functional as tnf
from torch import Tensor

from diffmix.checks import check_sample_rate
from diffmix.functional.restoration._common import (
    _ARX_ORDER,
    _GROW,
    _GROW_GAP,
    _NOISE_MAX,
    _TIGHTEN,
    _frame_windows,
    _hop,
)
from diffmix.functional.restoration.ar import _ar_fit, _errors_cache, _frames_near, ar_coefficients
from diffmix.functional.restoration.arx import _arx_filters, _fir_frames
from diffmix.functional.restoration.coincident import coincident_interpolate
from diffmix.functional.restoration.detect import detect_clicks
from diffmix.functional.restoration.lsar import _lsar, _lsar_update, lsar_interpolate
from diffmix.functional.restoration.masks import _mask_from_runs, _positions, _union, runs


def declick(
    x: Tensor,
    sample_rate: int,
    *,
    order: int = 32,
    hop_ms: float = 20.0,
    threshold: float = 5.0,
    z_threshold: float = 8.0,
    max_click_ms: float = 3.0,
    merge: int = 24,
    pad: int = 6,
    passes: int = 2,
    above_db: float | None = 3.0,
    explain_db: float | None = 10.0,
    loud_db: float | None = 12.0,
    onset_db: float | None = 20.0,
    repair_order: int = 64,
    repair_hop_ms: float = 40.0,
    edge_sigma: float | None = 3.0,
    noisy: bool = True,
    stereo_taps: int | None = 4,
    repair_stereo_taps: int | None = 48,
    grow: int = 24,
) -> tuple[Tensor, Tensor]:
    """Find clicks (:func:`detect_clicks`) and repair them by LSAR interpolation.

    Each flagged span (the click widened by ``pad`` samples a side) is solved jointly by
    LSAR from the samples on both sides (:func:`lsar_interpolate`). The AR models used
    for the repair (order ``repair_order``, fitted on ``2 repair_hop_ms`` around each
    frame: at least 50 samples per coefficient keeps the fit's own error small) are fitted
    on the signal with the clicks already interpolated once, so a loud click does not bias
    the model that fills it in. The padding covers a click's quiet edges, but every
    sample interpolated that needed not be costs accuracy: padded end samples that the
    first repair leaves within ``edge_sigma`` innovation standard deviations are kept as
    observed (``None``: keep the whole padded span). With ``noisy`` the span's samples
    are read as signal plus a click of fitted variance rather than as missing, and a
    stereo click is repaired with a joint model of both channels where that predicts
    better (``repair_stereo_taps``: the other channel's lags either side; ``stereo_taps``
    is the detection's, see :func:`detect_clicks`), and spans grow over click edges the
    detection missed (``grow``): see :func:`repair_clicks`.

    Differentiable with respect to ``x`` (mask, AR models, filters and click variances
    fixed: the repair is linear). CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(repaired (B, C, T), mask (B, C, T) bool)``.

    >>> x = torch.sin(torch.arange(4410.0) * 0.05).reshape(1, 1, -1) * 0.5
    >>> x[..., 2000] += 2.0
    >>> y, mask = declick(x, 44100)
    >>> bool(mask[0, 0, 2000]), float((y - torch.sin(torch.arange(4410.0) * 0.05) * 0.5).abs().max()) < 1e-3
    (True, True)
    """
    sr = check_sample_rate(sample_rate, "declick")
    mask, coeffs, hop = detect_clicks(
        x, sr, order=order, hop_ms=hop_ms, threshold=threshold, z_threshold=z_threshold,
        max_click_ms=max_click_ms,
        merge=merge, pad=pad, passes=passes, above_db=above_db, explain_db=explain_db,
        loud_db=loud_db, onset_db=onset_db, stereo_taps=stereo_taps,
    )
    return repair_clicks(x, mask, sr, coeffs=coeffs, hop=hop, order=repair_order,
                         hop_ms=repair_hop_ms, edge_sigma=edge_sigma, noisy=noisy,
                         stereo_taps=repair_stereo_taps, grow=grow)


def repair_clicks(
    x: Tensor,
    mask: Tensor,
    sample_rate: int,
    *,
    coeffs: Tensor | None = None,
    hop: int | None = None,
    order: int = 64,
    hop_ms: float = 40.0,
    edge_sigma: float | None = 3.0,
    noisy: bool = True,
    stereo_taps: int | None = 48,
    grow: int = 24,
    coincident: bool = True,
) -> tuple[Tensor, Tensor]:
    """The repair step of :func:`declick` for a given mask.

    1. A first LSAR interpolation with ``coeffs`` (frame length ``hop``; by default
       order-32 models fitted on ``x`` itself, 20 ms frames).
    2. Models of order ``order`` refitted on it (frames of ``hop_ms``), the mask's ends
       tightened (``edge_sigma``, see :func:`declick`; repaired and tightened again until
       the mask holds, at most 4 rounds), then grown over the click edges the mask missed
       (up to ``grow`` samples a side per round, across short quiet stretches of the
       burst, :func:`_grow`: an edge sample left in the data pulls the whole
       interpolation after it, and a long noise burst is often flagged only around its
       peaks), and the repair proper: with ``noisy`` the
       flagged samples are read as the signal plus a click of unknown variance, fitted
       by EM per segment (:func:`lsar_interpolate` with ``innovation``), so a quiet
       click or a clean sample inside the span keeps what it tells; otherwise plain LSAR.
    3. Stereo (``C == 2``, ``stereo_taps`` not ``None``): a click is rarely in both
       channels at once, and the two channels of a mix share most of their content,
       often a few samples apart (a spaced pair, a delay, a widener). Per frame, a
       joint (ARX) model predicts each channel from its own past (order 32) and from
       the other channel's repair (step 2) at lags ``-stereo_taps .. stereo_taps``
       (:func:`_arx_filters`, fitted on step 2's repair over ``4 hop_ms``), and step 2
       is run again with it: the flagged samples minimise the joint model's errors
       (:func:`lsar_interpolate` with the other channel's part as ``drive``), the mask
       tightened and grown under it. It replaces step 2 where its innovation is the
       smaller (the conditional model predicts better); independent channels keep
       step 2. 48 taps (1.1 ms at 44.1 kHz) reach the inter-channel delays of common
       stereo set-ups, which a short filter misses.

       With ``coincident`` (and ``noisy``), step 2's spans masked in both channels at
       once are solved jointly, the two channels' clicks modelled as correlated
       (:func:`coincident_interpolate`): a scratch or a glitch puts the same burst in
       both, and then one mix of the channels is (nearly) click-free.

    Differentiable w.r.t. ``x`` (linear once mask, models, filters and click variances
    are fixed).

    Shape:
        ``x (B, C, T)``, ``mask (B, C, T)`` -> ``(repaired (B, C, T), mask used)``.

    References:
        Godsill and Rayner (1998), ch. 5 (LSAR) and the Bayesian click model of their
        later chapters (corrupted samples as signal plus Gaussian noise); Dempster,
        Laird and Rubin, "Maximum likelihood from incomplete data via the EM
        algorithm", J. R. Stat. Soc. B, 1977; L. Ljung, *System Identification:
        Theory for the User*, 2nd ed., 1999, ch. 4 (ARX models and their least-squares
        fit).
    """
    sr = check_sample_rate(sample_rate, "repair_clicks")
    if mask.shape != x.shape:
        raise ValueError(f"repair_clicks: mask shape {tuple(mask.shape)} != audio {tuple(x.shape)}")
    if not bool(mask.any()):
        return x, mask
    with torch.no_grad():
        if coeffs is None or hop is None:
            hop = _hop(sr, 20.0)
            coeffs = ar_coefficients(x, sr, order=32, hop=hop)
        first = lsar_interpolate(x.detach(), mask, coeffs, hop)
        # Only the frames around the clicks are used by the repair: fit just those.
        rhop = _hop(sr, hop_ms)
        near = _frames_near(runs(mask), rhop, -(-x.shape[-1] // rhop), order)
    y, used, sigma = _repair(x, mask, first, sr, order, rhop, near, edge_sigma, noisy, grow,
                             coincident=coincident)
    if stereo_taps is None or x.shape[1] != 2:
        return y, used
    with torch.no_grad():
        yd = y.detach()
        coeffs_s, taps = _arx_filters(yd, None, rhop, _ARX_ORDER, stereo_taps, near)  # (None: yd.flip(1))
    drive = _fir_frames(y.flip(1), taps, rhop, near)  # from the other channel's repair (linear in x)
    ys, used_s, sigma_s = _repair(x, mask, first, sr, order, rhop, near, edge_sigma, noisy,
                                  grow, model=(coeffs_s, drive), coincident=coincident)
    use = (sigma_s < sigma).repeat_interleave(rhop, -1)[..., : x.shape[-1]]
    # Outside its mask each repair returns x exactly.
    return torch.where(use, ys, y), torch.where(use, used_s, used)


def _repair(
    x: Tensor, mask: Tensor, first: Tensor, sr: int, order: int, hop: int, near: Tensor,
    edge_sigma: float | None, noisy: bool, grow: int,
    model: tuple[Tensor, Tensor] | None = None, coincident: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Step 2 of :func:`repair_clicks`: ``(repaired, mask used, innovation (B, C, F))``,
    the last the RMS prediction error of each frame (zero outside ``near``). With
    ``model`` (``(coeffs, drive)``: an ARX model and its known input, step 3) that model
    is used instead of AR models of order ``order`` fitted on ``first``, and ``first`` is
    recomputed with it."""
    drive = None if model is None else model[1]
    with torch.no_grad():
        xd = x.detach()
        dd = None if drive is None else drive.detach()
        # The masks below change a few spans at a time: each repair after the first
        # solves again only the segments a change reaches (`_lsar_update`, exact). They
        # are carried as runs (`r`), each mask built from its runs once: the changes
        # between two masks, and between two repairs (each equals `xd` outside its
        # mask), are found from the runs, not by a pass over the whole signal.
        b, c, t = x.shape
        solved: list[Tensor] = []
        errors = None

        def solve(m: Tensor, r: Tensor) -> Tensor:
            y = (_lsar(xd, m, coeffs, hop, drive=dd) if not solved
                 else _lsar_update(xd, m, coeffs, hop, solved[0], solved[2], dd, (r, solved[1])))
            solved[:] = [m, r, y]
            if errors is not None:
                errors.note(y, _positions(r))
            return y

        def mask_of(r: Tensor) -> Tensor:
            return _mask_from_runs(r, (b * c, t), 0, x.device).reshape(b, c, t)

        r = runs(mask)
        if model is None:
            coeffs = _ar_fit(first, order, hop, frames=near)
        else:
            coeffs = model[0]
            first = solve(mask, r)
        last = first
        # The models are fitted on the frames `near` only (zeros elsewhere).
        errors = _errors_cache(coeffs, hop, dd, near)
        errors.note(first, _positions(r))  # `first` is `xd` outside the mask
        if edge_sigma is not None:
            # A shorter span is repaired better, which shows more of its ends to agree
            # with the model: tighten, repair, tighten again, until the mask holds
            # (at most `_TIGHTEN` rounds).
            r = _tighten(xd, first, r, coeffs, hop, edge_sigma, dd, errors)
            mask = mask_of(r)
            for _ in range(_TIGHTEN):
                last = solve(mask, r)
                tighter = _tighten(xd, last, r, coeffs, hop, edge_sigma, dd, errors)
                if torch.equal(tighter, r):
                    break
                r, mask = tighter, mask_of(tighter)
        last = solve(mask, r)
        innovation = _innovation(last, mask, coeffs, hop, dd, errors, near)
        # Click edges the detection missed: grow, repair, grow again while the mask
        # changes (at most `_GROW` rounds).
        for _ in range(_GROW if grow else 0):
            grown = _grow(last, r, coeffs, hop, innovation, _NOISE_MAX, grow, dd, errors)
            if torch.equal(grown, r):
                break
            r, mask = grown, mask_of(grown)
            last = solve(mask, r)
            innovation = _innovation(last, mask, coeffs, hop, dd, errors, near)
    y = _lsar(x, mask, coeffs, hop, innovation=innovation if noisy else None, drive=drive)
    if noisy and coincident and x.shape[1] == 2:
        y = coincident_interpolate(x, mask, coeffs, hop, innovation, out=y, drive=drive)
    return y, mask, innovation


def _innovation(x: Tensor, mask: Tensor, coeffs: Tensor, hop: int,
                drive: Tensor | None = None, errors=None, fitted: Tensor | None = None) -> Tensor:
    """RMS forward prediction error per frame of ``x`` under its frame's model (minus
    ``drive``, as :func:`lsar_interpolate`), over the samples whose error terms no masked
    sample enters: ``(B, C, F)``. ``errors``: :func:`_errors_cache` of the same models;
    ``fitted``: as there (the frames with a model; zero elsewhere, as their errors are)."""
    b, c, t = x.shape
    p = coeffs.shape[-1] - 1
    frames = coeffs.shape[-2]
    errors = errors or _errors_cache(coeffs, hop, drive)
    fwd = errors(x, 0).reshape(b * c, t)
    pad = frames * hop - t
    # error terms n .. n + p see sample n: a masked sample spoils the p terms after it
    if fitted is None:
        m = tnf.pad(mask.reshape(b * c, t).to(x.dtype), (p, pad)).unfold(-1, hop + p, hop)
        e = tnf.pad(fwd, (0, pad)).reshape(b * c, frames, hop)
        inside = (torch.arange(frames * hop, device=x.device) < t).reshape(frames, hop)
    else:  # the fitted frames' samples only, read in place
        m = _frame_windows(mask.reshape(b * c, t), fitted, hop, p, hop + p).to(x.dtype)
        e = _frame_windows(fwd, fitted, hop, 0, hop)
        inside = (fitted[:, 1:2] * hop + torch.arange(hop, device=x.device)) < t
    # Any masked sample among the p + 1 a term reads: a running count of the 0/1 mask
    # (exact), where a sliding max over p + 1 samples cost p + 1 reads a term.
    count = tnf.pad(m.reshape(-1, hop + p).cumsum(-1), (1, 0))
    touched = (count[:, p + 1 :] - count[:, :hop]) > 0
    w = ((~touched).reshape(e.shape) & inside).to(fwd.dtype)
    rms = ((e.square() * w).sum(-1) / w.sum(-1).clamp(min=1)).sqrt()
    if fitted is None:
        return rms.reshape(b, c, frames)
    out = rms.new_zeros(b * c, frames)
    out[fitted[:, 0], fitted[:, 1]] = rms
    return out.reshape(b, c, frames)


def _grow(x: Tensor, r: Tensor, coeffs: Tensor, hop: int, innovation: Tensor,
          kappa: float, reach: int, drive: Tensor | None = None, errors=None) -> Tensor:
    """Extend each masked run (``r``: :func:`runs` of the mask) outwards (at most
    ``reach`` samples a side) over the samples whose interpolation error
    (:func:`ar_residuals`, the matched filter for an impulse, standard deviation
    ``sigma_e`` on a clean AR signal) in the repaired ``x`` exceeds ``kappa``
    innovation standard deviations of their frame, up to the farthest such
    sample reached without crossing ``_GROW_GAP`` quiet samples in a row (a noise burst
    crosses zero): the parts of a click detection missed. ``errors``: as
    :func:`_innovation`. Returns the runs of the grown mask (as :func:`runs`)."""
    b, c, t = x.shape
    errors = errors or _errors_cache(coeffs, hop, drive)
    z = errors(x, 2).reshape(b * c, t)
    sig_f = innovation.reshape(b * c, -1).to(z.dtype)
    ar = torch.arange(1, reach + 1, device=x.device)
    before = (r[:, 1:2] - ar).clamp(0, t - 1)
    after = (r[:, 2:3] - 1 + ar).clamp(0, t - 1)

    def big(idx: Tensor) -> Tensor:  # read at the runs' edges only
        sig = sig_f[r[:, 0:1], idx // hop]
        return (z[r[:, 0:1], idx].abs() > kappa * sig) & (sig > 0)

    ok_b = big(before) & (r[:, 1:2] - ar >= 0)
    ok_a = big(after) & (r[:, 2:3] - 1 + ar < t)
    n_b, n_a = (_reach_with_gaps(ok, _GROW_GAP) for ok in (ok_b, ok_a))
    new = torch.stack([r[:, 0], r[:, 1] - n_b, r[:, 2] + n_a], -1)
    return _union(new, t)  # each grown run holds its run: the union is the grown mask


def _reach_with_gaps(ok: Tensor, gap: int) -> Tensor:
    """Per row of ``ok`` (``(K, R)``, samples outwards from a run's edge), how far the run
    extends: to just past the farthest ``True`` reached from the edge without crossing
    ``gap`` or more ``False`` in a row. ``(K,)`` int64."""
    k, r = ok.shape
    pos = torch.arange(r, device=ok.device)
    last = torch.where(ok, pos, -1).cummax(-1).values  # the last True at or before each
    broken = (pos - last) >= gap  # a gap of `gap` Falses ends at this sample
    first = torch.where(broken.any(-1), broken.to(torch.int8).argmax(-1), r)
    upto = last.gather(-1, (first - 1).clamp(min=0)[:, None])[:, 0]
    return torch.where(first > 0, upto + 1, 0).clamp(min=0)


def _tighten(
    x: Tensor, first: Tensor, r: Tensor, coeffs: Tensor, hop: int, kappa: float,
    drive: Tensor | None = None, errors=None,
) -> Tensor:
    """Drop the samples at either end of each masked run that a first repair ``first``
    leaves within ``kappa`` innovation standard deviations of ``x`` (the RMS forward error
    of ``first`` over 256 samples either side of the run): they agree with the model, so
    they are kept as observed rather than interpolated. Interior samples stay masked.
    ``r``: :func:`runs` of the mask; returns those of the tightened one (a run's ends
    move in: the runs stay apart). ``errors``: as :func:`_innovation`."""
    b, c, t = x.shape
    errors = errors or _errors_cache(coeffs, hop, drive)
    fwd = errors(first, 0).reshape(b * c, t)
    ctx = 256
    ar = torch.arange(ctx, device=x.device)
    pre = (r[:, 1:2] - ctx + ar).clamp(0, t - 1)
    post = (r[:, 2:3] + ar).clamp(0, t - 1)
    sigma = torch.cat([fwd[r[:, 0:1], pre], fwd[r[:, 0:1], post]], -1).square().mean(-1).sqrt()
    width = int((r[:, 2] - r[:, 1]).max())
    idx = (r[:, 1:2] + torch.arange(width, device=x.device)).clamp(max=t - 1)
    valid = idx < r[:, 2:3]
    at = (r[:, 0:1], idx)
    resid = (x.reshape(b * c, t)[at] - first.reshape(b * c, t)[at]).abs()
    above = valid & (resid > kappa * sigma[:, None])  # (K, width)
    has = above.any(-1)
    first_i = above.to(torch.int8).argmax(-1)
    last_i = width - 1 - above.flip(-1).to(torch.int8).argmax(-1)
    # (`idx` repeats the last sample past the signal's end: the end is clipped there)
    new = torch.stack([r[:, 0], r[:, 1] + first_i, (r[:, 1] + last_i + 1).clamp(max=t)], -1)
    return torch.where(has[:, None], new, r)
