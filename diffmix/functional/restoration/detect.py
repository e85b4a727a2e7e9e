"""Click detection (:func:`detect_clicks`)."""

from __future__ import annotations

import torch
import torch.nn.functional as tnf
from torch import Tensor

from diffmix.checks import check_sample_rate
from diffmix.functional.restoration._common import _DENSE, _NOISE_MAX, _SUB, _hop, _rows
from diffmix.functional.restoration.ar import _ar_fit, _frames_near, _residuals, _unique_pairs
from diffmix.functional.restoration.arx_detect import _arx_candidates
from diffmix.functional.restoration.guards import (
    _block_rms,
    _bracketed,
    _grown,
    _guards,
    _keep_inside,
    _local_scale,
    _near,
    _near_and_alone,
    _near_both,
    _partner_peak,
    _periodicity,
    _scales_of,
    _shared_guards,
    _stereo_guards,
    _trim_quiet_ends,
)
from diffmix.functional.restoration.lsar import _lsar
from diffmix.functional.restoration.masks import (
    _apart,
    _mask_from_runs,
    _segments,
    _split_long,
    runs,
)
from diffmix.functional.restoration.pairs import _coincident, _in_both, _partners


def detect_clicks(
    x: Tensor,
    sample_rate: int,
    *,
    order: int = 32,
    hop_ms: float = 20.0,
    threshold: float = 5.0,
    z_threshold: float = 8.0,
    max_click_ms: float = 3.0,
    merge: int = 24,
    floor_db: float = -90.0,
    pad: int = 6,
    clamp: float = 3.0,
    periodic: float = 0.6,
    passes: int = 2,
    above_db: float | None = 3.0,
    explain_db: float | None = 10.0,
    loud_db: float | None = 12.0,
    onset_db: float | None = 20.0,
    stereo_taps: int | None = 4,
    z_strong: float | None = 16.0,
    threshold_strong: float = 4.0,
    z_reach: int | None = 8,
    arx_taps: int | None = 48,
    pair_sigma: float | None = 3.0,
    pair_db: float = 0.0,
    pair_explain_db: float = 6.0,
    split_db: float | None = 16.0,
    joint_reach: int | None = 2,
    joint_sigma: float = 3.0,
) -> tuple[Tensor, Tensor, int]:
    """Flag clicks: short bursts that the AR model of their surroundings cannot predict,
    forwards or backwards, and that do not recur period after period.

    A sample is a candidate when ``min(|forward error|, |backward error|)`` exceeds
    ``threshold`` times the larger of two robust local scales of the prediction error
    (the median sub-block RMS over about 16 ms before it and over 16 ms after it) *and*
    its interpolation error (:func:`ar_residuals`, the matched filter for a click
    in an AR process, ``sqrt(sum a_k^2)`` times more sensitive than either one-sided
    error) exceeds ``z_threshold`` times its own robust local scale, taken the same way.
    The second test finds quiet clicks in tonal music that the first misses at a high
    threshold; the first localises the click and spares attacks. The two trade evidence:
    a sample whose interpolation error exceeds ``z_strong`` scales (twice the test) is a
    candidate at ``threshold_strong`` (a fifth less) on the first: a loud click in dense,
    nearly white music (the model predicts a few dB only) stands far out of the matched
    filter while its one-sided errors, spread over the burst, barely reach the threshold.
    In stereo (``C == 2``, ``z_reach`` not ``None``) a third rule lets the two tests meet
    on different samples: a sample is also a candidate when the first test holds on it
    and the second holds within ``z_reach`` samples of it, where the other channel's
    interpolation error stays under 4 of its robust scales (noise alone, see the stereo
    look below) within ``_PARTNER_REACH`` samples. The matched filter is matched to an
    impulse: over a noise burst its peak falls where the burst's samples add up in its
    kernel, not on the sample whose one-sided errors peak, and a burst whose own model
    is whitened by it (the model of its frame is fitted with the burst in it) may pass
    each test on some sample but both on none. An attack heard in both channels keeps
    the strict rule. Why this leaves percussion alone:

    * the *minimum* of the forward and backward errors is large only on the damaged
      samples themselves (a click spoils the forward prediction of the ``p`` samples
      after it and the backward prediction of the ``p`` before, never both);
    * the *larger* of the scales before and after means an onset is judged against the
      error level of the sound it starts: a hi-hat's noise or a snare's rattle is as
      unpredictable after its first sample as on it;
    * candidates closer than ``merge`` samples join into bursts, and a burst longer than
      ``max_click_ms`` is not a click, unless merged again at half ``merge`` it breaks
      into pieces no longer than that, exactly two of them with a candidate ``split_db``
      or more over the programme's robust local level (two loud clicks a few dozen
      samples apart, bridged by the error each spreads: :func:`_split_long`);
    * a burst whose prediction error repeats one period earlier *and* one period later
      (1.5-20 ms, normalised correlation above ``periodic``) is the cusp of a buzzy or
      pulse-like waveform, not a click;
    * what the repair would remove (the burst minus its LSAR interpolation) must peak at
      least ``above_db`` over the programme's robust local level (the median RMS of
      0.7 ms sub-blocks over 8 ms before or after, the larger): a kick's or a slapped
      string's attack is unpredictable, but no louder than the note it starts;
    * the repair must explain the burst: the forward prediction error over every term
      the burst enters (the padded burst and the ``p`` samples after it) must fall by at
      least ``explain_db`` once the burst is interpolated. A click is added to music
      that goes on, so without it the error drops to the music's own; an attack starts a
      sound the model of the samples before it cannot predict, so interpolating the
      attack leaves most of the error. A burst whose removed part peaks ``loud_db`` or
      more over the programme's level is kept without this test (it is no attack: far
      louder than the music around it), so a loud click among others is not lost.
    * a burst after which the programme is ``onset_db`` louder than before it (10 ms each
      side, the burst repaired) starts a sound: a kick out of silence, whose body the
      model of the samples after it predicts well backwards, is no click (unless it is
      ``loud_db`` over the programme, as above: a loud click where the music starts).

    * stereo (``C == 2``, ``stereo_taps`` not ``None``): a burst vetoed by the last three
      tests gets a second look when the other channel shows nothing at the same place
      (its interpolation error under 4 robust scales, where noise over a 3 ms span
      reaches about 3.5): an attack sounds in both channels of a mix, a click in one.
      The burst is judged again by the same tests on the channel minus what the other
      channel predicts of it (the FIR of :func:`repair_clicks`), with AR models and the
      robust level of that residual, fitted with every burst interpolated; in a mix
      whose channels share most of their content a quiet click stands out there. Not
      where a sound starts in both channels (the ``onset_db`` test on each channel's
      own programme) and the burst's samples follow the other channel's (normalised
      correlation 0.9 or more): a kick out of silence, a little different in each
      channel, leaves a burst in the residual, whose level before it is the silence.
    * stereo (``C == 2``, ``stereo_taps`` not ``None``): a vetoed burst the other
      channel shares (a click in both channels, or a sound in both) gets a second look
      too (:func:`_shared_guards`): a click's amplitude and sign in each channel have
      nothing to do with how the music is spread over the two, so in near-mono music the
      channel minus the other times their relation (a total-least-squares gain per frame,
      fitted on the whole signal and on its AR prediction error) keeps the click and
      cancels the music, and a sound spread as the music is. The burst, stretched over
      the joint rule's candidates beside it (see below; no longer than ``max_click_ms``,
      alone or joined with its neighbours), passes when it stands out ``above_db`` of its
      own channel, passes the guards on both residuals (all but ``loud_db``: the
      residual's level says how well the channels cancel, not how loud the music is) and
      stands out of each residual ``above_db`` more than out of its channel; it stands in
      both channels or in neither.
    * stereo (``C == 2``, ``arx_taps`` not ``None``), in the last pass, before all
      this: where the matched filter marks a sample and the other channel shows
      nothing, its 40 ms frame is
      judged with the joint (ARX) model of :func:`repair_clicks` (own past and the other
      channel at lags ``-arx_taps .. arx_taps``) where that predicts the frame better
      than the mono model by more than BIC's price of its extra coefficients: the
      candidate tests are made on its errors, and its candidates replace the mono
      rules' there (:func:`_arx_candidates`; where they join into a burst too long to
      be a click, the mono rules' stand). A click whitens the model of its own frame;
      the other channel, which predicts the music and not the click, does not. On
      independent channels the gate stays shut and the mono rules decide.

    * stereo (``C == 2``, ``joint_reach`` not ``None``): one click at the same samples of
      both channels (a scratch, a glitch) is one event, and the two channels' evidence
      is read together. A sample is also a candidate when the first test's two halves
      and the second test hold on nearby samples (a forward error over the threshold at
      most ``z_reach`` samples before it, a backward one at most ``z_reach`` after, the
      matched filter within ``z_reach``: :func:`_bracketed`) *and* the same holds in the
      other channel within ``joint_reach`` samples: the third rule asks the other channel
      to show nothing, which a click in both never does, while each channel's model,
      whitened by the click, may put the tests' peaks some samples apart in both. Inside
      a burst each direction predicts the click partly from itself: the forward error
      breaks the threshold early in it (its past is clean), the backward one late, and
      a burst of several samples in dense music may pass both on no one sample. An
      attack breaks them the other way round (backwards before its onset, forwards from
      it on). These candidates make bursts only where no other rule has a
      candidate within ``merge`` samples (every other burst is as the other rules make
      it), which then pass the guards as any burst (repaired and judged apart from the
      other rules' bursts, whose verdicts a shared repair would change) and stand only
      where the removed part has the same shape at the same samples in the other channel
      (:func:`_coincident`, significant at ``joint_sigma``): an onset that reaches two
      microphones at different times does not; and, one event, in both channels or in
      neither (:func:`_in_both`).

    * in the last pass a kept burst is trimmed to its pieces (candidates at most ``pad``
      samples apart) that hold a sample the repair removes ``above_db`` over the
      programme's level: the music beside a loud click may have unpredictable edges of
      its own, candidates no louder than the music, which ``merge`` joins to the click's
      burst; interpolated, they lengthen the gap its repair must bridge
      (:func:`_trim_quiet_ends`).

    * stereo (``C == 2``, ``pair_sigma`` not ``None``), after all this: a burst kept in
      one channel brings the same span of the other channel when the removed part there
      has the same shape at the same samples (a scratch or a glitch in both channels;
      the second, quieter against its music, may fail the guards): :func:`_partners`,
      with the correlation's significance ``pair_sigma``, its peak ``pair_db`` over the
      programme's level and the repair explaining ``pair_explain_db``.

    The models are fitted on the signal clamped to ``clamp`` times its robust local level;
    with ``passes=2`` they are refitted on the signal with the first pass's clicks
    interpolated, and the detection is run again on the original; the bursts the first
    pass kept are judged again by the guards there whatever their candidate statistic
    (the refit moves a click near the threshold to either side of it by chance).

    Args:
        order: AR order. hop_ms: AR frame length (ms; the model is fitted on 2 hops).
        threshold, z_threshold: detection thresholds in local-scale units. floor_db: errors below this
            level (dBFS) never count. pad: samples added to each side of a burst (the
            edges of a burst are often below the threshold). above_db, explain_db,
            loud_db, onset_db: the last guards (``None`` turns one off).
        stereo_taps: half-length of the cross-channel FIR of the stereo look (``None``:
            channels judged apart).
        z_strong, threshold_strong: the second candidate rule (``None``: off).
        z_reach: the third (stereo) candidate rule's reach in samples (``None``: off).
        arx_taps: the joint model's lags of the other channel either side (``None``:
            the mono rules alone).
        pair_sigma, pair_db, pair_explain_db: the pair rule (``None``: off).
        split_db: a loud core of a too-long burst (``None``: never split).
        joint_reach, joint_sigma: the joint stereo rule's tolerance in samples between
            the channels and the significance of its shape test (``None``: off).

    Returns:
        ``(mask, coeffs, hop)``: ``mask (B, C, T)`` bool (detached), the AR filters
        ``(B, C, F, order + 1)`` used, and the frame length in samples.
    """
    rows, (b, c, t) = _rows(x, "detect_clicks")
    sr = check_sample_rate(sample_rate, "detect_clicks")
    hop = _hop(sr, hop_ms)
    width = max(4, int(round(0.016 * sr / _SUB)))
    max_len = max(1, int(round(max_click_ms * 1e-3 * sr)))
    guards = {"above_db": above_db, "explain_db": explain_db, "loud_db": loud_db,
              "onset_db": onset_db}
    with torch.no_grad():
        xd = x.detach()
        s_before, s_after = _local_scale(rows.detach(), width // 2)
        by_block = torch.maximum(s_before, s_after)
        level = by_block.repeat_interleave(_SUB, -1)[:, :t]
        fit_on, near, coeffs = xd, None, None
        kept = torch.zeros(b * c, t, dtype=torch.bool, device=x.device)
        limit = (clamp * by_block + 1e-9).repeat_interleave(_SUB, -1).reshape(b, c, -1)[..., :t]
        # At dense clicks (the mono rules' bursts more than `_DENSE` a second a channel
        # in the first pass) the joint-model look, which then costs more than the rest
        # of a pass, runs in the last pass only, on models refitted with the earlier
        # passes' clicks interpolated; a first pass that keeps nothing hands on to it
        # unchanged. Elsewhere it runs in every pass.
        arx_on = arx_taps is not None and c == 2
        dense = False
        arx_memo: dict = {}  # the joint-model tests of frames a later pass does not change
        for step in range(passes):
            if near is None or len(near):
                # Later passes refit only the frames whose windows the repairs changed.
                coeffs = _ar_fit(fit_on, order, hop, limit=limit, frames=near,
                                 into=None if near is None else coeffs)
                # (`ar_residuals`' errors, kept in frame buffers: a later pass writes the
                # refitted frames in place, no copy of the rest)
                if near is None:
                    bufs = _residuals(xd, coeffs, hop, None, (0, 1, 2), buffers=True)
                else:  # the errors of the refitted frames only; the rest are as they were
                    _residuals(xd, coeffs, hop, None, (0, 1, 2), near, bufs, inplace=True)
                fwd, bwd, z = (v.reshape(b * c, -1)[:, :t] for v in bufs)
                # (the magnitudes kept: the joint rule reads them again)
                # (in one buffer, each row padded to whole sub-blocks with zeros: the
                # tests below read them by sub-block, with no padded copies)
                mags = fwd.new_empty(4, b * c, -(-t // _SUB) * _SUB)
                mags[..., t:] = 0.0
                f_abs, b_abs, z_abs, stat = mags[..., :t]
                torch.abs(fwd, out=f_abs)
                torch.abs(bwd, out=b_abs)
                torch.abs(z, out=z_abs)
                torch.minimum(f_abs, b_abs, out=stat)
                # The local scales of the two-sided error and of the interpolation error,
                # in one go, from their sub-block RMS (rows: the two-sided error's, then
                # the interpolation error's).
                if near is None:
                    # (built in one buffer: fresh memory costs more than the arithmetic)
                    two = torch.empty(2 * b * c, t, dtype=fwd.dtype, device=x.device)
                    torch.mul(fwd, fwd, out=two[: b * c]).add_(bwd.square()).mul_(0.5).sqrt_()
                    two[b * c :].copy_(z)
                    rms, scale_memo = _block_rms(two), None
                else:  # only the sub-blocks of the refitted frames changed
                    blocks = _blocks_of(near, hop, t)
                    rms = rms.clone()
                    rms[torch.cat([blocks[:, 0], blocks[:, 0] + b * c]), blocks[:, 1].repeat(2)] = (
                        _two_rms_at(fwd, bwd, z, blocks))
                e_before, e_after, scale_memo = _scales_of(rms, width, scale_memo)
            scales = torch.maximum(e_before, e_after)[..., None]  # (2N, nsb, 1)
            scale, z_scale = scales[: b * c], scales[b * c :]
            # Candidates: samples that neither direction predicts (the minimum error, which
            # localises a click and spares an attack) *and* that the interpolation error,
            # the matched filter for a click, marks. Compared sub-block by sub-block.
            nsb = scales.shape[1]
            grid = (b * c, nsb, _SUB)
            floor = 10.0 ** (floor_db / 20.0)
            f_grid, b_grid, zg, sg = mags.reshape((4,) + grid)
            one_sided = sg > torch.clamp(threshold * scale, min=floor)
            z_ratio = (zg / z_scale.clamp(min=1e-30)).reshape(b * c, nsb * _SUB)
            flags = one_sided & (zg > z_threshold * z_scale)
            if c == 2 and (z_reach is not None or arx_taps is not None):
                alone_peak = _partner_peak(z_ratio)
            if z_reach is not None and c == 2:
                # The two tests on nearby samples, where the other channel shows nothing.
                near_at = _near(one_sided.reshape(b * c, -1), z_ratio, z_reach, z_threshold)
                flags |= _near_and_alone(near_at, alone_peak).reshape(grid)
            if z_strong is not None:
                # Stronger evidence from the matched filter buys a laxer localisation test.
                flags |= (sg > torch.clamp(threshold_strong * scale, min=floor)) & (
                    zg > z_strong * z_scale)
            if arx_on and step == 0 and passes > 1:
                count = len(_segments(runs(flags.reshape(b * c, -1)[:, :t]), merge + 1))
                dense = count > _DENSE * b * c * t / sr
            defer = dense and step < passes - 1
            if arx_on and not defer:
                # Where the other channel predicts the music, a click in one channel
                # stands out of the joint model's innovation (see `_arx_candidates`).
                extra, domain = (tnf.pad(v, (0, nsb * _SUB - t)).reshape(grid) for v in _arx_candidates(
                    xd, fit_on, fit_on, z_ratio[:, :t], sr, arx_taps, threshold, z_threshold,
                    z_reach if z_reach is not None else 0, floor, width, alone_peak, arx_memo,
                    limit=limit))
                joint = torch.where(domain, extra, flags).reshape(b * c, -1)
                # Where its candidates join into a burst too long to be a click (a loud
                # click in the other channel, spread by the cross filter), the mono
                # rules' candidates stand.
                long = _segments(runs(joint), merge + 1)
                long = long[(long[:, 2] - long[:, 1]) > max_len]
                back = _mask_from_runs(long, joint.shape, merge + 1, x.device).reshape(grid)
                flags = torch.where(back, flags, joint.reshape(grid))
            # A later pass judges again the bursts an earlier one kept, whatever their
            # candidate statistic now: its models are fitted with them interpolated, which
            # moves a click near the threshold by chance to either side of it; the guards,
            # not the threshold, decide what is a click.
            flags = flags.reshape(b * c, nsb * _SUB)[:, :t] | kept
            both = None
            if joint_reach is not None and c == 2:
                # One click at the same samples of both channels: in each channel the
                # one-sided test's two halves and the matched filter on nearby samples (a
                # forward break, a backward break no earlier, see `_bracketed`), at the
                # same place in both (see `_near_both`).
                floor_at = torch.clamp(threshold * scale, min=floor)
                breaks = [(e > floor_at).reshape(b * c, -1) for e in (f_grid, b_grid)]
                reach = z_reach if z_reach is not None else 0
                both = _near_both(_near(_bracketed(*breaks, reach), z_ratio, reach, z_threshold),
                                  (b * c, nsb * _SUB), joint_reach)
                both = both[both[:, 1] < t]
                both = both[~flags[both[:, 0], both[:, 1]]]
            # Join candidates with at most `merge` samples between them into one burst.
            cand_runs = runs(flags)
            bursts = _segments(cand_runs, merge + 1)
            short = (bursts[:, 2] - bursts[:, 1]) <= max_len
            if split_db is not None and not bool(short.all()):
                # Two loud clicks a few dozen samples apart, bridged into one burst too
                # long to be a click by the error each spreads: judged apart.
                loud = (rows.detach().abs() > 10.0 ** (split_db / 20.0) * level) & flags
                pieces, split = _split_long(bursts[~short], cand_runs, merge // 2 + 1, max_len,
                                            loud)
                if len(pieces):
                    bursts = torch.cat([bursts[short], pieces, bursts[~short][~split]])
                    bursts = bursts[torch.argsort(bursts[:, 0] * (t + 1) + bursts[:, 1])]
                    short = (bursts[:, 2] - bursts[:, 1]) <= max_len
            if step and not bool(short.all()):
                # Dense clicks: the candidates between two kept bursts can join them into
                # one burst too long to be a click. The kept bursts inside stay bursts
                # (where there are two or more, see `_keep_inside`).
                bursts = _keep_inside(bursts[short], bursts[~short], runs(kept), t)
            else:
                bursts = bursts[short]
            fresh = torch.zeros(len(bursts), dtype=torch.bool, device=x.device)
            if both is not None and len(both):
                # Its bursts stand apart: only where no other rule has a candidate within
                # `merge` samples, so every other burst is as the other rules make it.
                extra = _segments(torch.cat([both, both[:, 1:] + 1], -1), merge + 1)
                extra = _apart(extra[(extra[:, 2] - extra[:, 1]) <= max_len], flags, merge)
                if len(extra):
                    bursts = torch.cat([bursts, extra])
                    fresh = torch.cat([fresh, torch.ones(len(extra), dtype=torch.bool, device=x.device)])
                    by = torch.argsort(bursts[:, 0] * (t + 1) + bursts[:, 1])
                    bursts, fresh = bursts[by], fresh[by]
            if len(bursts) and periodic < 1.0:
                periodic_ok = _periodicity(fwd, bursts, sr) < periodic
                bursts, fresh = bursts[periodic_ok], fresh[periodic_ok]
            mask = _mask_from_runs(bursts, (b * c, t), pad, x.device).reshape(b, c, t)
            if len(bursts) == 0:
                if defer:  # nothing to refit: the joint look on the same models
                    near = bursts[:, :2]
                    continue
                break
            def judge(rep: Tensor, which: Tensor, models: Tensor = coeffs) -> Tensor:
                return _guards(xd.reshape(b * c, t), rep.reshape(b * c, t), which, level,
                               models.reshape(b * c, -1, order + 1), hop, pad, max_len, sr,
                               **guards)

            if bool(fresh.any()):
                # The joint rule's bursts are repaired and judged apart from the others':
                # interpolated together, a gap within the AR order of another is one
                # segment with it, and the guards would read the other rules' burst through
                # a repair its neighbour changed (every other burst is as the other rules
                # make it).
                own = _mask_from_runs(bursts[fresh], (b * c, t), pad, x.device).reshape(b, c, t)
                rest = _mask_from_runs(bursts[~fresh], (b * c, t), pad, x.device).reshape(b, c, t)
                rep_own = _lsar(xd, own, coeffs, hop)
                rep_rest = _lsar(xd, rest, coeffs, hop)
                keep = torch.zeros(len(bursts), dtype=torch.bool, device=x.device)
                keep[fresh] = judge(rep_own, bursts[fresh])
                keep[~fresh] = judge(rep_rest, bursts[~fresh])
                repaired = torch.where(own, rep_own, rep_rest)
            else:
                repaired = _lsar(xd, mask, coeffs, hop)
                keep = judge(repaired, bursts)
            last = step == passes - 1 or not bool(keep.any())
            if stereo_taps is not None and c == 2 and last and not bool(keep.all()):
                # Vetoed bursts the other channel does not share (no candidate-level
                # interpolation error there): judged again on the cross-channel residual.
                # (the other channel's interpolation error over its scale, read at the
                # bursts only)
                span = max_len + 2 * pad
                idx = (bursts[:, 1:2] - pad + torch.arange(span, device=x.device)).clamp(0, t - 1)
                inside = idx < (bursts[:, 2:3] + pad)
                partner = bursts[:, 0:1] + 1 - 2 * (bursts[:, 0:1] % 2)
                there = z_abs[partner, idx] / z_scale[partner, idx // _SUB, 0]
                alone = torch.where(inside, there, 0.0).amax(-1) < _NOISE_MAX
                keep |= _stereo_guards(xd, repaired, bursts, ~keep & alone, sr, order, hop, pad,
                                       max_len, width // 2, stereo_taps, **guards)
                shared = ~keep & ~alone
                if bool(shared.any()):
                    # Vetoed bursts the other channel shares: one click in both channels,
                    # judged again on the channel minus the other times the music's
                    # relation between them (see `_shared_guards`), over the span the
                    # joint rule's candidates beside it give (the mono rules may flag a
                    # click's first sample only, and a span too short to hold it repairs
                    # it in part), and kept in both channels or in neither.
                    assert coeffs is not None  # (fitted in the first pass)
                    spans = _grown(bursts, shared, both, merge + 1, max_len, t)
                    # Spans that join (at most `merge` samples apart) into a run too long
                    # to be a click are none: the onset of a sound, in pieces.
                    joined = _segments(runs(_mask_from_runs(spans[shared], (b * c, t), 0,
                                                            x.device)), merge + 1)
                    joined = joined[(joined[:, 2] - joined[:, 1]) > max_len]
                    if len(joined):
                        within = _mask_from_runs(joined, (b * c, t), 0, x.device)
                        shared &= ~within[spans[:, 0], spans[:, 1]]
                    ok = _shared_guards(xd, repaired, spans, shared, level, coeffs, sr, order,
                                        hop, pad, max_len, width // 2, stereo_taps, **guards)
                    ok[shared] = _in_both(spans[shared], ok[shared], t,
                                          joint_reach if joint_reach is not None else 0)
                    grown = ok & (spans != bursts).any(-1)
                    if bool(grown.any()):
                        at = _mask_from_runs(spans[grown], (b * c, t), pad, x.device).reshape(b, c, t)
                        repaired = torch.where(at, _lsar(xd, at, coeffs, hop), repaired)
                        flags = flags | _mask_from_runs(spans[grown], (b * c, t), 0, x.device)
                        bursts = torch.where(grown[:, None], spans, bursts)
                    keep |= ok
            if bool((keep & fresh).any()):
                # ...and stand only where the two channels' removed parts have the same
                # shape at the same samples (an onset heard in both channels may reach
                # them at different times).
                judge = (keep & fresh).nonzero()[:, 0]
                keep[judge] = _coincident(xd.reshape(b * c, t), repaired.reshape(b * c, t),
                                          bursts[judge], fwd, pad, joint_sigma)
                # One event in both channels: it stands in both or in neither.
                keep[fresh] = _in_both(bursts[fresh], keep[fresh], t, joint_reach)
            bursts = bursts[keep]
            if above_db is not None and step == passes - 1:
                # Candidates from the music beside a click, merged into its burst, leave
                # the mask that is repaired (`_trim_quiet_ends`). Earlier passes keep the
                # whole burst: it is interpolated only to refit the models, and judged
                # again here.
                bursts = _trim_quiet_ends(xd.reshape(b * c, t), repaired.reshape(b * c, t),
                                          bursts, flags, level, above_db, pad)
            if pair_sigma is not None and c == 2:
                # The same burst at the same samples in the other channel (a scratch, a
                # glitch in both), which its guards may veto: see `_partners`.
                zr = z_ratio[:, :t]  # |z| over its scale (clamped), as above
                more, rep = _partners(xd, bursts, coeffs, hop, level, zr, fwd, pad, max_len,
                                      pair_sigma, pair_db, pair_explain_db)
                if len(more):
                    bursts = torch.cat([bursts, more])
                    bursts = bursts[torch.argsort(bursts[:, 0] * (t + 1) + bursts[:, 1])]
                    repaired = torch.where(_mask_from_runs(more, (b * c, t), pad, x.device)
                                           .reshape(b, c, t), rep.reshape(b, c, t), repaired)
            kept = _mask_from_runs(bursts, (b * c, t), 0, x.device)
            mask = _mask_from_runs(bursts, (b * c, t), pad, x.device).reshape(b, c, t)
            if len(bursts) == 0 and defer:
                near = bursts[:, :2]
                continue
            if len(bursts) == 0 or step == passes - 1:
                break
            # A loud click whitens the model of its frame (the clamp only limits it), which
            # hides quieter clicks nearby: refit on the signal with them interpolated.
            fit_on = torch.where(mask, repaired, xd)  # the bursts kept, not those vetoed
            near = _frames_near(bursts, hop, coeffs.shape[-2], pad)
    return mask, coeffs, hop


def _blocks_of(frames: Tensor, hop: int, t: int) -> Tensor:
    """The ``_SUB``-sample sub-blocks that the ``frames`` (``(K, 2)`` rows ``(row,
    frame)``, ``hop`` samples each, signals ``t`` long) overlap: ``(J, 2)`` rows ``(row,
    sub-block)``, unique, sorted."""
    first = frames[:, 1] * hop // _SUB
    last = (((frames[:, 1] + 1) * hop).clamp(max=t) - 1) // _SUB
    sb = first[:, None] + torch.arange(hop // _SUB + 2, device=frames.device)
    ok = sb <= last[:, None]
    return _unique_pairs(frames[:, :1].expand_as(sb)[ok], sb[ok], -(-t // _SUB))


def _two_rms_at(fwd: Tensor, bwd: Tensor, z: Tensor, blocks: Tensor) -> Tensor:
    """The sub-block RMS of :func:`detect_clicks`' two-sided error ``sqrt((fwd^2 +
    bwd^2) / 2)`` and of its interpolation error ``z`` (``(N, T)`` each) at the
    ``blocks`` (``(K, 2)`` rows ``(row, sub-block)``) only: ``(2K,)``, the two-sided
    error's first, the same values as the whole signal's (the last sub-block
    zero-padded)."""
    t = fwd.shape[-1]
    idx = blocks[:, 1:2] * _SUB + torch.arange(_SUB, device=fwd.device)
    at = (blocks[:, :1], idx.clamp(max=t - 1))
    e = torch.mul(fwd[at], fwd[at]).add_(bwd[at].square()).mul_(0.5).sqrt_()
    v = torch.where((idx < t).repeat(2, 1), torch.cat([e, z[at]]), e.new_zeros(()))
    return v.square().mean(-1).sqrt()
