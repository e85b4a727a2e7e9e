"""Quality-control findings in words: what needs a person's attention in a file, and why.

Pure bookkeeping on measurements already made (LUFS, dBTP, linear DC, counts); the
``analyze`` job and every listening report use the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DEFAULT_CEILING_DBTP = -1.0  # EBU R 128 and every streaming service's recommendation
DC_LIMIT_DBFS = -40.0  # a steady offset above this eats headroom and clicks at edits
LOUDNESS_TOLERANCE_LU = 1.0  # further than this from a named target is "far off"
CLICKS_PER_MINUTE_LIMIT = 1.0


def _db(v: float) -> float:
    return 20.0 * math.log10(abs(v)) if v else -math.inf


def findings(
    *,
    lufs: float | None = None,
    true_peak_dbtp: float | None = None,
    dc_offset: Sequence[float] = (),
    clipped_samples: int | None = None,
    clipped_runs: int | None = None,
    clicks_per_minute: float | None = None,
    side_mid_db: float | None = None,
    target_lufs: float | None = None,
    target_name: str | None = None,
    ceiling_dbtp: float | None = None,
) -> list[str]:
    """Each problem found, as one sentence that says what and why; ``[]`` when all is well.

    Args:
        lufs: integrated loudness (LUFS); ``-inf`` where every block is under the gate
            (digital silence where ``true_peak_dbtp`` is ``-inf`` or not given).
        true_peak_dbtp: the highest true peak (dBTP).
        dc_offset: per channel, the mean sample value (linear, full scale 1).
        clipped_samples: samples at full scale; ``clipped_runs``: runs of them.
        clicks_per_minute: from the click detector, when it ran.
        side_mid_db: side power over mid power (dB), for stereo: over 0 dB, more of the
            sound is out of phase than in (the correlation is negative), and a mono
            fold-down, which keeps the mid alone, loses more than 3 dB of it.
        target_lufs, target_name: the loudness a delivery should meet (name for the text).
        ceiling_dbtp: the spec's ceiling; default -1 dBTP.

    >>> findings(true_peak_dbtp=0.2)[0].split(":")[0]
    'True peak +0.20 dBTP is over the -1.0 dBTP ceiling'
    >>> findings(lufs=-14.0, true_peak_dbtp=-1.5, dc_offset=[0.0, 0.0])
    []
    """
    out: list[str] = []
    if lufs is not None and math.isinf(lufs) and lufs < 0:
        if true_peak_dbtp is not None and math.isfinite(true_peak_dbtp):  # sound, all of it under the gate
            out.append(
                "Every 400 ms block is under BS.1770's -70 LUFS gate "
                f"(true peak {true_peak_dbtp:+.1f} dBTP): the audio is too quiet to have a loudness; "
                "turn it up before mastering."
            )
        else:
            out.append("The audio is digital silence: there is nothing to hear or measure.")
        return out
    ceiling = DEFAULT_CEILING_DBTP if ceiling_dbtp is None else float(ceiling_dbtp)
    if true_peak_dbtp is not None and math.isfinite(true_peak_dbtp) and true_peak_dbtp > ceiling + 1e-6:
        out.append(
            f"True peak {true_peak_dbtp:+.2f} dBTP is over the {ceiling:.1f} dBTP ceiling: "
            "lossy encoders (AAC, Ogg, MP3) and sample-rate converters will clip it."
        )
    names = ["L", "R"] if len(dc_offset) == 2 else [f"ch{i + 1}" for i in range(len(dc_offset))]
    for name, value in zip(names, dc_offset, strict=True):
        level = _db(value)
        if level > DC_LIMIT_DBFS:
            out.append(
                f"DC offset on {name} is {level:.1f} dBFS (over {DC_LIMIT_DBFS:.0f} dBFS): it wastes "
                "headroom and clicks at edits; a high-pass or `diffmix repair dc=true` removes it."
            )
    if clipped_runs:
        out.append(
            f"{clipped_runs} clipped run(s) of consecutive full-scale samples: the waveform was cut "
            "flat somewhere upstream; `diffmix repair clipping=true` rebuilds the peaks."
        )
    elif clipped_samples:
        out.append(f"{clipped_samples} sample(s) at full scale: the audio may have been clipped upstream.")
    if clicks_per_minute is not None and clicks_per_minute > CLICKS_PER_MINUTE_LIMIT:
        out.append(
            f"{clicks_per_minute:.1f} clicks per minute were detected: `diffmix repair clicks=true` "
            "removes them."
        )
    if side_mid_db is not None and side_mid_db > 0.0:
        if math.isinf(side_mid_db):
            out.append(
                "The channels cancel: the side carries everything and the mid nothing (one channel's "
                "polarity is inverted?), so a mono fold-down (phones, many speakers) is silent."
            )
        else:
            loss = 10.0 * math.log10(1.0 + 10.0 ** (side_mid_db / 10.0))
            out.append(
                f"The side is {side_mid_db:+.1f} dB over the mid: more of the sound is out of phase than "
                f"in, so a mono fold-down (phones, many speakers) loses {loss:.1f} dB and the out-of-phase "
                "parts cancel; check for a channel with inverted polarity or an over-widened part."
            )
    if target_lufs is not None and lufs is not None and math.isfinite(lufs):
        off = lufs - float(target_lufs)
        if abs(off) > LOUDNESS_TOLERANCE_LU:
            who = f"{target_name}'s " if target_name else "the target's "
            out.append(
                f"Integrated loudness {lufs:.1f} LUFS is {abs(off):.1f} LU {'over' if off > 0 else 'under'} "
                f"{who}{float(target_lufs):.1f} LUFS: the service will turn it "
                f"{'down' if off > 0 else 'up (or leave it quiet)'}."
            )
    return out
