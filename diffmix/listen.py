"""The listening report: one static HTML page per job output, to hear and see the result.

A/B players for the input, the result and the reference (loudness-matched by default, a
toggle plays them at their real levels), the plots (third-octave spectra, short-term
loudness, limiter gain reduction, stereo correlation over time and width per band), the
numbers (target against achieved, before and after, the fitted settings in physical units)
and the QC findings in words. The page is one self-contained file: inline SVG and a few
lines of inline script, no server, no network, nothing fetched. The players read the
job's own audio files by relative path, so the output folder can be moved as a whole.

Nothing here is differentiable: it runs once, on the finished audio, under ``no_grad``.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from torch import Tensor

from diffmix.functional.analysis import CLIP_LEVEL
from diffmix.io import atomic_path, atomic_write_text
from diffmix.qc import findings as qc_findings

# Formats a browser's <audio> element plays (Chromium, Firefox, Safari all take these).
PLAYABLE = {".wav", ".flac", ".mp3", ".ogg"}
COLOURS = {
    "input": "#7a7a7a",
    "result": "#d1495b",
    "reference": "#00798c",
    "mix": "#d1495b",
    "master": "#d1495b",
    "output": "#d1495b",
}
_FALLBACK = ["#edae49", "#30638e", "#66a182", "#8d5a97", "#003d5b"]
MAX_POINTS = 600  # per drawn series: a page stays small for any song length


@dataclass
class Take:
    """One source on the page.

    Args:
        label: ``input``, ``result``, ``reference`` or any short name.
        audio: ``(C, T)`` or ``(1, C, T)`` at the page's sample rate, what is measured and
            drawn; ``None`` reads ``file`` in chunks instead (a streamed master: memory
            stays at one chunk).
        file: an audio file to play. One inside the output folder is played where it is;
            with ``audio`` given and the file elsewhere (or absent, or not playable), a
            16-bit FLAC preview of ``audio`` is written beside the page, so the folder
            moves as one. A file read in chunks that lies outside the folder is played from
            where it is, by relative path (no hour-long copy).
    """

    label: str
    audio: Tensor | None
    file: Path | None = None


# --------------------------------------------------------------------------- measurements
def _decimate(values: Tensor, points: int = MAX_POINTS, reduce: str = "mean") -> tuple[Tensor, int]:
    """``(N,)`` -> at most ``points`` values (bin means, or minima), and the bin size."""
    n = values.numel()
    step = max(1, math.ceil(n / points))
    m = (n // step) * step
    if m == 0:
        return values, 1
    binned = values[:m].reshape(-1, step)
    return (binned.amin(-1) if reduce == "min" else binned.mean(-1)), step


@dataclass
class Drawn:
    """What the page shows of one source: series in seconds, spectra and width in dB."""

    lufs: float
    seconds: float
    short_term: tuple[list[float], list[float]]
    correlation: tuple[list[float], list[float]]
    centres_hz: list[float]
    mid_db: list[float]
    side_db: list[float]
    band_names: list[str]
    side_mid_db: list[float]
    dc_offset: list[float]
    clipped_samples: int


class PageMeter:
    """Measures one source for the page over consecutive chunks; in memory is one chunk.

    :meth:`add` takes each chunk with up to 3 s of left context (for the short-term
    meter's window): ``(1, C, T)`` float audio whose first ``left`` samples repeat the end
    of the previous chunk. Chunks must be whole numbers of 100 ms, as
    :func:`diffmix.mastering.source.chunk_bounds` makes them. Not differentiable.
    """

    CORRELATION_S = 0.4  # the correlation plot's window: four 100 ms hops

    def __init__(self, sample_rate: int, n_fft: int = 8192) -> None:
        from diffmix.features import FeatureExtractor
        from diffmix.functional.loudness import block_samples, meter_unit

        self.sr = sample_rate
        self.n_fft = n_fft
        self.fx = FeatureExtractor(sample_rate, n_fft)
        self.hop = block_samples(sample_rate)[0]
        self.unit = meter_unit(sample_rate)
        self.window = block_samples(sample_rate)[2]
        self.psd = torch.zeros(2, n_fft // 2 + 1, dtype=torch.float64)
        self.psd_frames = 0
        self.short_term: list[Tensor] = []
        self.hops: list[Tensor] = []  # per 100 ms: sum LR, LL, RR
        self.frames = 0
        self.sum = torch.zeros(2, dtype=torch.float64)
        self.clipped = 0

    def add(self, chunk: Tensor, left: int = 0) -> None:
        from diffmix.functional.gain import mid_side
        from diffmix.functional.loudness import short_term_loudness
        from diffmix.functional.spectrum import welch_psd

        x = chunk.detach().to("cpu", torch.float64)
        x = x if x.shape[1] == 2 else x[:, :1].expand(-1, 2, -1)
        new = x[..., left:]
        n = new.shape[-1]
        if n == 0:
            return
        frames = max(1, (max(n, self.n_fft) - self.n_fft) // (self.n_fft // 2) + 1)
        # float32 spectra: a drawn curve needs no more, at half the time and memory
        self.psd += welch_psd(mid_side(new).float(), self.n_fft)[0].double() * frames
        self.psd_frames += frames
        st = short_term_loudness(x, self.sr)[0]
        # With a full window of context, the first value's window ends where the previous
        # chunk's last one did.
        self.short_term.append(st[1:] if self.frames > 0 and left >= self.window else st)
        m = (n // self.hop) * self.hop
        if m:
            h = new[0, :, :m].reshape(2, -1, self.hop)
            self.hops.append(
                torch.stack([(h[0] * h[1]).sum(-1), h[0].square().sum(-1), h[1].square().sum(-1)])
            )
        self.sum += new[0].sum(-1)
        self.clipped += int((new.abs() >= CLIP_LEVEL).sum())
        self.frames += n

    def result(self, lufs: float) -> Drawn:
        """The drawn series; ``lufs`` is the source's integrated loudness (metered elsewhere)."""
        from diffmix.functional.analysis import STEREO_BANDS
        from diffmix.functional.spectrum import band_powers, power_db

        sr, seconds = self.sr, self.frames / self.sr
        st = torch.cat(self.short_term).clamp_min(-70.0) if self.short_term else torch.zeros(0)
        values, k = _decimate(st)
        step = self.unit / sr
        first = min(self.window, self.frames) / sr
        st_times = [first + (i * k + (k - 1) / 2) * step for i in range(values.numel())]
        per = round(self.CORRELATION_S * sr / self.hop)
        sums = torch.cat(self.hops, -1) if self.hops else torch.zeros(3, 0, dtype=torch.float64)
        w = sums.shape[-1] // per
        win = sums[:, : w * per].reshape(3, w, per).sum(-1)
        den = (win[1] * win[2]).sqrt()
        corr = torch.where(den > 1e-20, win[0] / den.clamp_min(1e-300), torch.zeros_like(den))
        cv, ck = _decimate(corr)
        c_times = [(i * ck + ck / 2) * self.CORRELATION_S for i in range(cv.numel())]
        psd = self.psd / max(self.psd_frames, 1)
        db = power_db(band_powers(psd, self.fx.third.cpu())).clamp_min(-150.0)
        freqs = torch.arange(psd.shape[-1], dtype=torch.float64) * sr / self.n_fft
        ratio = []
        for _, lo, hi in STEREO_BANDS:
            band = (freqs >= lo) & (freqs < hi)
            mid, side = float(psd[0, band].sum()), float(psd[1, band].sum())
            ratio.append(max(10.0 * math.log10(side / mid), -60.0) if mid > 0 and side > 0 else -60.0)
        return Drawn(
            lufs=lufs,
            seconds=seconds,
            short_term=(st_times, values.tolist()),
            correlation=(c_times, cv.tolist()),
            centres_hz=self.fx.centres.tolist(),
            mid_db=db[0].tolist(),
            side_db=db[1].tolist(),
            band_names=[name for name, _, _ in STEREO_BANDS],
            side_mid_db=ratio,
            dc_offset=(self.sum / max(self.frames, 1)).tolist(),
            clipped_samples=self.clipped,
        )


def draw_tensor(x: Tensor, sample_rate: int, lufs: float | None = None, chunk_s: float = 30.0) -> Drawn:
    """:class:`Drawn` of in-memory ``(C, T)`` or ``(1, C, T)`` audio, metered in chunks as a
    file is (no full-length float64 copies); ``lufs``, its integrated loudness where
    already measured."""
    from diffmix.functional.loudness import integrated_loudness

    x = (x if x.dim() == 3 else x.unsqueeze(0)).detach()
    drawn = _draw_chunks(lambda a, z: x[..., a:z].cpu(), x.shape[-1], sample_rate, chunk_s)
    return drawn.result(float(integrated_loudness(x, sample_rate)[0]) if lufs is None else lufs)


def draw_file(path: str | Path, chunk_s: float = 30.0, lufs: float | None = None) -> tuple[Drawn, int]:
    """:class:`Drawn` of an audio file read in chunks (memory: one chunk), and its rate;
    ``lufs``, its integrated loudness where already measured."""
    from diffmix.mastering.source import DiskAudio, measure_file

    src = DiskAudio(path)
    meter = _draw_chunks(src.read, src.frames, src.sample_rate, chunk_s)
    if lufs is None:
        lufs = measure_file(path, chunk_s=chunk_s)["integrated_lufs"]
    return meter.result(lufs), src.sample_rate


def _draw_chunks(read: Callable[[int, int], Tensor], frames: int, sample_rate: int,
                 chunk_s: float) -> PageMeter:
    """A :class:`PageMeter` fed ``read(a, z)`` (samples ``a .. z``, ``(1, C, z - a)``) chunk by chunk."""
    from diffmix.mastering.source import chunk_bounds

    meter = PageMeter(sample_rate)
    for start, stop in chunk_bounds(frames, sample_rate, chunk_s):
        left = min(meter.window, start)
        meter.add(read(start - left, stop), left)
    return meter


def gain_reduction_series(before: Tensor, after: Tensor, sample_rate: int) -> tuple[list[float], list[float]]:
    """The limiter's gain reduction (dB, <= 0) against time in seconds, 50 ms windows."""
    from diffmix.report import gain_reduction_db

    gr = gain_reduction_db(before.detach().cpu(), after.detach().cpu(), sample_rate)
    values, k = _decimate(gr, reduce="min")
    times = [(i * k + k / 2) * 0.05 for i in range(values.numel())]
    return times, values.tolist()


# --------------------------------------------------------------------------- SVG charts
def _fmt_tick(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step + 1e-9) + 1)]


def svg_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    xrange: tuple[float, float] | None = None,
    yrange: tuple[float, float] | None = None,
    width: int = 760,
    height: int = 250,
    kind: str = "chart",
    xticks: Sequence[tuple[float, str]] | None = None,
) -> str:
    """A line chart as inline SVG: ``series`` is ``(label, xs, ys)``; NaN/inf ys break the line.

    A label ending in `` side`` is drawn dashed in its take's colour. ``xticks`` names
    categorical ticks. The axis ranges are written as ``data-x0``/``data-x1`` on the
    ``<svg>`` so a test can check them against the audio's length.
    """
    left, right, top, bottom = 58, 130, 26, 40
    pw, ph = width - left - right, height - top - bottom
    xs_all = [x for _, xs, _ in series for x in xs]
    ys_all = [y for _, _, ys in series for y in ys if math.isfinite(y)]
    x0, x1 = xrange or ((min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0))
    y0, y1 = yrange or ((min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0))
    if x1 <= x0:
        x1 = x0 + 1.0
    if y1 <= y0:
        y0, y1 = y0 - 1.0, y1 + 1.0
    pad = 0.05 * (y1 - y0)
    if yrange is None:
        y0, y1 = y0 - pad, y1 + pad
    fx = (lambda v: math.log10(max(v, 1e-9))) if logx else (lambda v: v)
    lx0, lx1 = fx(x0), fx(x1)

    def px(v: float) -> float:
        return left + (fx(v) - lx0) / (lx1 - lx0) * pw

    def py(v: float) -> float:
        return top + (1.0 - (min(max(v, y0), y1) - y0) / (y1 - y0)) * ph

    parts = [
        f'<svg class="chart" data-kind="{kind}" data-x0="{x0:.6g}" data-x1="{x1:.6g}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{html.escape(title)}</title>',
        f'<text x="{left}" y="16" class="ttl">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>',
    ]
    if xticks is not None:
        xt = list(xticks)
    elif logx:
        xt = [
            (v, _fmt_tick(v))
            for v in (20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
            if x0 <= v <= x1
        ]
    else:
        xt = [(v, _fmt_tick(v)) for v in _nice_ticks(x0, x1)]
    for v, name in xt:
        x = px(v)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" class="grid"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">'
            f"{html.escape(name)}</text>"
        )
    for v in _nice_ticks(y0, y1, 5):
        y = py(v)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_fmt_tick(v)}</text>'
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" class="lbl" text-anchor="middle">'
        f"{html.escape(xlabel)}</text>"
    )
    parts.append(
        f'<text x="14" y="{top + ph / 2}" class="lbl" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2})">{html.escape(ylabel)}</text>'
    )
    colours: dict[str, str] = {}
    for k, (label, xs, ys) in enumerate(series):
        take = label.removesuffix(" side")
        colour = colours.setdefault(take, COLOURS.get(take, _FALLBACK[len(colours) % len(_FALLBACK)]))
        dash = ' stroke-dasharray="5 3"' if label.endswith(" side") else ""
        runs: list[list[str]] = [[]]
        for x, y in zip(xs, ys, strict=True):
            if math.isfinite(y) and x0 <= x <= x1:
                runs[-1].append(f"{px(x):.1f},{py(y):.1f}")
            elif runs[-1]:
                runs.append([])
        for run in runs:
            if len(run) == 1:
                run.append(run[0])
            if run:
                parts.append(f'<polyline points="{" ".join(run)}" stroke="{colour}"{dash} class="line"/>')
        lx = left + pw + 10
        ly = top + 10 + 15 * k
        parts.append(
            f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 16}" y2="{ly - 4}" stroke="{colour}"{dash} '
            'stroke-width="2.5"/>'
        )
        parts.append(f'<text x="{lx + 22}" y="{ly}" class="tick">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- the page
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:820px;
color:#222;background:#fafafa}
h1{font-size:21px;margin:0 0 4px}h2{font-size:16px;margin:26px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666;margin:0 0 14px}
.players{display:flex;gap:10px;flex-wrap:wrap;align-items:center;margin:8px 0}
.players button.take{padding:8px 14px;border:1px solid #bbb;border-radius:6px;background:#fff;cursor:pointer}
.players button.take.on{background:#222;color:#fff;border-color:#222}
.transport{display:flex;gap:10px;align-items:center;margin:6px 0}
.transport input[type=range]{flex:1}
table{border-collapse:collapse;width:100%;margin:6px 0}
td,th{padding:3px 8px;border-bottom:1px solid #e6e6e6;text-align:left;font-variant-numeric:tabular-nums}
th{background:#f0f0f0}td.num{text-align:right}
.ok{color:#1b7f3b}.warn{color:#b00020;font-weight:600}
ul.qc li{margin:3px 0}
svg.chart{background:#fff;border:1px solid #e2e2e2;margin:6px 0;max-width:100%;height:auto}
svg .frame{fill:none;stroke:#999}svg .grid{stroke:#eee}svg .line{fill:none;stroke-width:1.6}
svg .tick{font-size:11px;fill:#555}svg .lbl{font-size:12px;fill:#333}svg .ttl{font-size:13px;font-weight:600}
code{background:#eee;padding:1px 4px;border-radius:3px}
"""

# Plays one take at a time on one shared position, so switching is an instant A/B.
_JS = """
(function(){
  var takes=[].slice.call(document.querySelectorAll('audio.take'));
  var buttons=[].slice.call(document.querySelectorAll('button.take'));
  var matched=document.getElementById('matched');
  var play=document.getElementById('play');
  var pos=document.getElementById('pos');
  var clock=document.getElementById('clock');
  var status=document.getElementById('audio-status');
  var current=0, loaded=0, failed=0;
  function lufs(a){return parseFloat(a.dataset.lufs);}
  function quietest(){var m=Infinity;
    takes.forEach(function(a){var v=lufs(a);if(isFinite(v)&&v<m)m=v;});return m;}
  function levels(){var q=quietest();takes.forEach(function(a){var v=lufs(a);
    a.volume=(matched.checked&&isFinite(v)&&isFinite(q))?Math.min(1,Math.pow(10,(q-v)/20)):1;});}
  function select(i){var was=takes[current],t=was.currentTime,playing=!was.paused;
    takes.forEach(function(a){a.pause();});current=i;var a=takes[i];
    try{a.currentTime=Math.min(t,a.duration||t);}catch(e){}
    buttons.forEach(function(b,j){b.classList.toggle('on',j===i);});if(playing)a.play();}
  buttons.forEach(function(b,i){b.addEventListener('click',function(){select(i);});});
  matched.addEventListener('change',levels);
  play.addEventListener('click',function(){var a=takes[current];
    if(a.paused){a.play();play.textContent='Pause';}else{a.pause();play.textContent='Play';}});
  pos.addEventListener('input',function(){var a=takes[current];
    if(a.duration)a.currentTime=pos.value*a.duration/1000;});
  function fmt(s){s=Math.max(0,s||0);var m=Math.floor(s/60);return m+':'+('0'+(s-60*m).toFixed(1)).slice(-4);}
  function report(){status.dataset.loaded=loaded;status.dataset.failed=failed;
    status.textContent=loaded+' of '+takes.length+' players ready'+(failed?(', '+failed+' failed'):'');}
  takes.forEach(function(a){
    a.addEventListener('loadedmetadata',function(){loaded++;a.dataset.ready='1';report();});
    a.addEventListener('error',function(){failed++;a.dataset.ready='0';report();});
    a.addEventListener('timeupdate',function(){if(a!==takes[current])return;
      if(a.duration)pos.value=1000*a.currentTime/a.duration;
      clock.textContent=fmt(a.currentTime)+' / '+fmt(a.duration);});
    a.addEventListener('ended',function(){play.textContent='Play';});
    a.load();});
  levels();report();
  document.addEventListener('keydown',function(e){var n=parseInt(e.key,10);
    if(n>=1&&n<=takes.length)select(n-1);if(e.key===' '){e.preventDefault();play.click();}});
})();
"""


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _cell(value: Any, unit: str = "") -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "−inf" if value < 0 else ("inf" if value > 0 else "nan")
        text = f"{value:.2f}"
    elif value is None:
        return "–"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


MEASURE_ROWS = [
    ("integrated_lufs", "Integrated loudness", "LUFS"),
    ("lra_lu", "Loudness range", "LU"),
    ("true_peak_dbtp", "True peak", "dBTP"),
    ("sample_peak_dbfs", "Sample peak", "dBFS"),
    ("plr_db", "PLR", "dB"),
    ("max_short_term_lufs", "Max short-term", "LUFS"),
    ("correlation", "Correlation", ""),
    ("side_mid_db", "Side/mid", "dB"),
]


def _measure_table(columns: Mapping[str, Mapping[str, Any]]) -> str:
    if not columns:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in columns)
    rows = []
    for key, name, unit in MEASURE_ROWS:
        if not any(key in c for c in columns.values()):
            continue
        cells = "".join(
            f'<td class="num">{html.escape(_cell(_number(c.get(key)), unit))}</td>' for c in columns.values()
        )
        rows.append(f"<tr><td>{name}</td>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _number(v: Any) -> Any:
    if v == "-inf":
        return -math.inf
    if v == "inf":
        return math.inf
    return v


def _target_table(target: Mapping[str, Any] | None, achieved: Mapping[str, Any] | None) -> str:
    if not target and not achieved:
        return ""
    target = target or {}
    achieved = achieved or {}
    rows = []
    for key, name, unit, tkey in (
        ("lufs", "Integrated loudness", "LUFS", "lufs"),
        ("true_peak_dbtp", "True peak", "dBTP", "true_peak_db"),
        ("lra_lu", "Loudness range", "LU", "lra"),
    ):
        want = target.get(tkey)
        got = _number(achieved.get(key))
        if want is None and got is None:
            continue
        if key == "true_peak_dbtp" and want is not None:
            ok = got is not None and got <= float(want) + 1e-9
            want_text = f"≤ {float(want):.2f} {unit}"
        elif key == "lufs" and want is not None:
            ok = got is not None and abs(got - float(want)) <= 0.1
            want_text = f"{float(want):.2f} {unit}"
        elif want is not None and isinstance(want, Sequence) and len(want) == 2:
            ok = got is not None and float(want[0]) <= got <= float(want[1])
            want_text = f"{float(want[0]):g}–{float(want[1]):g} {unit}"
        else:
            ok, want_text = None, "–"
        mark = "" if ok is None else ('<span class="ok">✓</span>' if ok else '<span class="warn">✗</span>')
        rows.append(
            f"<tr><td>{name}</td><td class='num'>{html.escape(want_text)}</td>"
            f"<td class='num'>{html.escape(_cell(got, unit))}</td><td>{mark}</td></tr>"
        )
    if not rows:
        return ""
    return "<table><tr><th></th><th>target</th><th>achieved</th><th></th></tr>" + "".join(rows) + "</table>"


def _params_table(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    flat: list[tuple[str, Any]] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if str(k) in ("_target_", "sample_rate"):
                    continue
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat.append((prefix, node))

    walk("", params)
    rows = []
    for name, value in flat:
        if isinstance(value, (list, tuple)):
            text = ", ".join(
                _cell(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
                for v in _flatten(value)
            )
        elif isinstance(value, float):
            text = _cell(value)
        else:
            text = str(value)
        rows.append(f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(text)}</td></tr>")
    return "<table><tr><th>parameter</th><th>value (physical units)</th></tr>" + "".join(rows) + "</table>"


def _flatten(values: Any) -> list[Any]:
    out: list[Any] = []
    for v in values:
        out.extend(_flatten(v) if isinstance(v, (list, tuple)) else [v])
    return out


def _encode_preview(audio: Tensor, sample_rate: int) -> bytes:
    """``audio`` ``(C, T)`` or ``(1, C, T)`` as a 16-bit FLAC file's bytes."""
    x = audio.detach().reshape(-1, audio.shape[-1]).cpu()
    step = 1 << 16  # frames per write: no full-length clipped or interleaved copy
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=sample_rate, channels=x.shape[0], format="FLAC",
                      subtype="PCM_16") as fh:
        for a in range(0, x.shape[-1], step):
            fh.write(x[:, a : a + step].clamp(-1.0, 1.0).T.float().numpy())
    return buf.getvalue()


@dataclass
class PreparedTake:
    """A take ready for the page (:func:`prepare_take`): its drawn series, and the 16-bit
    FLAC preview the page plays (encoded in memory, written with the page) or ``None``
    where it plays ``file``."""

    drawn: Drawn
    file: Path | None
    preview: bytes | None = None


def prepare_take(take: Take, page: str | Path, sample_rate: int, lufs: float | None = None) -> PreparedTake:
    """What the listening report ``page`` needs of ``take``, with no file written: a job
    prepares its takes while it works and writes the page (:func:`write_listening_report`)
    once it has delivered. ``lufs``: the take's integrated loudness where already measured."""
    page = Path(page)
    file = Path(take.file) if take.file is not None else None
    with torch.no_grad():
        if take.audio is None:
            assert file is not None, f"take {take.label!r} has neither audio nor a file"
            return PreparedTake(draw_file(file, lufs=lufs)[0], file)
        drawn = draw_tensor(take.audio, sample_rate, lufs)
    inside = file is not None and page.parent.resolve() in file.resolve().parents
    if file is None or not inside or file.suffix.lower() not in PLAYABLE:
        return PreparedTake(drawn, None, _encode_preview(take.audio, sample_rate))
    return PreparedTake(drawn, file)


def write_listening_report(
    path: str | Path,
    *,
    title: str,
    sample_rate: int,
    takes: Sequence[Take],
    job: str,
    target: Mapping[str, Any] | None = None,
    achieved: Mapping[str, Any] | None = None,
    measures: Mapping[str, Mapping[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    gain_reduction: tuple[Sequence[float], Sequence[float]] | None = None,
    warnings: Sequence[str] = (),
    notes: Sequence[str] = (),
    ready: Mapping[str, PreparedTake] | None = None,
) -> Path:
    """Write the listening report ``path`` (HTML) and any audio previews beside it.

    Args:
        title: the page heading (the song or output name).
        sample_rate: Hz of every take's ``audio`` (takes read from files keep their own).
        takes: the sources to hear and draw; the first with a ``file`` is the result.
        job: the job's name, for the sub-heading.
        target, achieved: the loudness spec and what the output measured (``lufs``,
            ``true_peak_dbtp``, ``lra_lu``), as in the JSON report.
        measures: column name -> :func:`diffmix.jobs._common.summary`-style measurements.
        params: the fitted settings in physical units (a preset's ``params``).
        gain_reduction: the limiter's gain-reduction plot, ``(seconds, dB)``: what
            :func:`gain_reduction_series` draws from the pre-limiter and the output audio.
        warnings: findings in words (the QC findings are added here).
        notes: extra lines shown under the heading.
        ready: takes already prepared (:func:`prepare_take`), by label: a job prepares
            them while it works.

    Returns:
        The page's path. Previews go to ``<page stem>_audio/<label>.flac``.
    """
    page = Path(path)
    base = page.parent
    with torch.no_grad():
        drawn: dict[str, Drawn] = {}
        sources = []
        for take in takes:
            prepared = (ready or {}).get(take.label)
            if prepared is None:
                # The take's loudness where the job measured it already (one meter pass fewer).
                lufs = (measures or {}).get(take.label, {}).get("integrated_lufs")
                prepared = prepare_take(take, page, sample_rate,
                                        float(lufs) if isinstance(lufs, (int, float)) else None)
            drawn[take.label], file = prepared.drawn, prepared.file
            if prepared.preview is not None:
                file = base / f"{page.stem}_audio" / f"{take.label}.flac"
                file.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(file) as tmp:
                    tmp.write_bytes(prepared.preview)
            assert file is not None
            sources.append((take.label, _rel(file, base), drawn[take.label].lufs))
        duration = max(d.seconds for d in drawn.values())
        charts = [_spectrum_chart(drawn, sample_rate), _loudness_chart(drawn, duration)]
        if gain_reduction is not None:
            t, gr = list(gain_reduction[0]), list(gain_reduction[1])
            charts.append(
                svg_chart(
                    [("gain reduction", t, gr)],
                    xlabel="time (s)",
                    ylabel="dB",
                    title="Limiter gain reduction",
                    xrange=(0.0, duration),
                    yrange=(min(min(gr, default=0.0), -1.0) - 0.5, 0.5),
                    kind="gain_reduction",
                )
            )
        charts.append(_correlation_chart(drawn, duration))
        charts.append(_width_chart(drawn))
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">diffmix {html.escape(job)} · {sample_rate} Hz · {duration:.1f} s</p>',
        *(f'<p class="sub">{html.escape(n)}</p>' for n in notes),
        "<h2>Listen</h2>",
        '<div class="players">'
        + "".join(
            f'<button class="take{" on" if i == 0 else ""}" type="button" title="key {i + 1}">'
            f"{i + 1}. {html.escape(label)}<br><small>{html.escape(_cell(v, 'LUFS'))}</small></button>"
            for i, (label, _, v) in enumerate(sources)
        )
        + "</div>",
        '<div class="transport"><button id="play" type="button">Play</button>'
        '<input id="pos" type="range" min="0" max="1000" value="0"><span id="clock">0:00.0</span></div>',
        '<label><input id="matched" type="checkbox" checked> loudness-matched '
        "(louder sources are turned down to the quietest; untick to hear real levels)</label>",
        '<p class="sub" id="audio-status" data-loaded="0" data-failed="0"></p>',
        "".join(
            f'<audio class="take" preload="auto" src="{html.escape(src)}" data-label="{html.escape(label)}" '
            f'data-lufs="{v if math.isfinite(v) else "-Infinity"}"></audio>'
            for label, src, v in sources
        ),
    ]
    all_warnings = list(warnings)
    body.append("<h2>QC</h2>")
    body.append(
        '<ul class="qc">' + "".join(f'<li class="warn">{html.escape(w)}</li>' for w in all_warnings) + "</ul>"
        if all_warnings
        else '<p class="ok">Nothing needs attention: true peak, DC, clipping and loudness are in bounds.</p>'
    )
    tt = _target_table(target, achieved)
    if tt:
        body += ["<h2>Target</h2>", tt]
    if measures:
        body += ["<h2>Measurements</h2>", _measure_table(measures)]
    body += ["<h2>Plots</h2>", *charts]
    # A preset holds its effects' configuration and the fitted values: show the values.
    pt = _params_table(params.get("values", params) if isinstance(params, Mapping) else params)
    if pt:
        body += ["<h2>Settings</h2>", pt]
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; media-src 'self'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{html.escape(title)} · diffmix {html.escape(job)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}<script>{_JS}</script>"
        f'<script type="application/json" id="data">{_json_blob(sources, duration)}</script>'
        "</body></html>\n"
    )
    atomic_write_text(page, doc)
    return page


def _json_blob(sources: list[tuple[str, str, float]], duration: float) -> str:
    data = {
        "duration_s": duration,
        "takes": [
            {"label": lab, "src": src, "lufs": v if math.isfinite(v) else None} for lab, src, v in sources
        ],
    }
    return json.dumps(data).replace("</", "<\\/")


def _spectrum_chart(drawn: Mapping[str, Drawn], sr: int) -> str:
    series = []
    for label, d in drawn.items():
        series.append((label, d.centres_hz, d.mid_db))
        series.append((f"{label} side", d.centres_hz, d.side_db))
    top = max((max(y for y in ys if math.isfinite(y)) for _, _, ys in series), default=0.0)
    return svg_chart(
        series,
        xlabel="frequency (Hz)",
        ylabel="dB (third octave)",
        title="Spectrum (mid, and side)",
        logx=True,
        xrange=(20.0, min(20000.0, sr / 2)),
        yrange=(top - 80.0, top + 5.0),
        kind="spectrum",
    )


def _loudness_chart(drawn: Mapping[str, Drawn], duration: float) -> str:
    series = [(label, *d.short_term) for label, d in drawn.items()]
    return svg_chart(
        series,
        xlabel="time (s)",
        ylabel="LUFS (short-term, 3 s)",
        title="Short-term loudness",
        xrange=(0.0, duration),
        kind="loudness",
    )


def _correlation_chart(drawn: Mapping[str, Drawn], duration: float) -> str:
    series = [(label, *d.correlation) for label, d in drawn.items()]
    return svg_chart(
        series,
        xlabel="time (s)",
        ylabel="correlation",
        title="Stereo correlation (400 ms windows)",
        xrange=(0.0, duration),
        yrange=(-1.0, 1.0),
        kind="correlation",
    )


def _width_chart(drawn: Mapping[str, Drawn]) -> str:
    series = [
        (label, [float(i) for i in range(len(d.band_names))], d.side_mid_db) for label, d in drawn.items()
    ]
    names = next(iter(drawn.values())).band_names
    ticks = [(float(i), n.replace("_", " ")) for i, n in enumerate(names)]
    return svg_chart(
        series,
        xlabel="band",
        ylabel="side/mid (dB)",
        title="Width per band (side/mid)",
        xrange=(-0.3, len(names) - 0.7),
        xticks=ticks,
        kind="width",
    )


def job_warnings(
    measures: Mapping[str, Any],
    audio: Tensor | str | Path | None,
    sample_rate: int,
    target: Mapping[str, Any] | None = None,
    target_name: str | None = None,
) -> list[str]:
    """QC findings in words for a job's output.

    ``measures`` from the job summary (``integrated_lufs``, ``true_peak_dbtp``, and
    ``dc_offset`` and ``clipped_samples`` where :func:`diffmix.report.summary` measured
    them); otherwise DC and clipping are read from ``audio``: ``(C, T)``/``(1, C, T)`` in
    memory, or a file path read in chunks.
    """
    from diffmix.functional.analysis import clipped_samples, dc_offset

    if "dc_offset" in measures and "clipped_samples" in measures:
        dc, clipped = list(measures["dc_offset"]), int(measures["clipped_samples"])
    elif isinstance(audio, (str, Path)):
        drawn, _ = draw_file(audio)
        dc, clipped = drawn.dc_offset, drawn.clipped_samples
    elif audio is None:
        raise ValueError("job_warnings: measures without dc_offset/clipped_samples need the audio")
    else:
        x = audio.detach()
        x = (x if x.dim() == 3 else x.unsqueeze(0)).cpu()
        with torch.no_grad():
            dc = dc_offset(x, sample_rate)[0].tolist()
            clipped = int(clipped_samples(x, sample_rate)[0].sum())
    return qc_findings(
        lufs=_number(measures.get("integrated_lufs")),
        true_peak_dbtp=_number(measures.get("true_peak_dbtp")),
        dc_offset=dc,
        clipped_samples=clipped,
        side_mid_db=_number(measures.get("side_mid_db")),
        target_lufs=None if not target else target.get("lufs"),
        target_name=target_name,
        ceiling_dbtp=None if not target else target.get("true_peak_db"),
    )
