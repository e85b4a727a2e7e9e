"""Master files of any length in bounded memory: read, render, meter and write in chunks.

The in-memory master (:func:`diffmix.jobs._mastering.master_group`) holds the whole song
several times over; an hour of 48 kHz stereo is 1.4 GB per float32 copy. This path keeps
only one chunk (default 30 s) plus its context in memory and gives the same master:

1. **Fit** on excerpts read from disk: :class:`DiskAudio` looks like a ``(1, 2, T)`` tensor
   to :func:`diffmix.mastering.song_excerpts`, so the excerpts (and the fit) are exactly
   those of the in-memory run.
2. **Pre-limiter render**, chunk by chunk, into a float32 cache file on disk. Each chunk
   is rendered with *left context* (the EQ's impulse tail, and twelve time constants of
   the slowest attack/release in the chain, so the recursive state has converged to
   ~1e-5 of its level) and *right context* for lookahead, and only its middle is kept.
   Before sample 0 and after the end, context is digital silence, which is exactly what
   the in-memory render sees (every effect starts from rest; lookahead pads with zeros).
3. **Loudness solve**: the secant iteration of :func:`diffmix.mastering.solve_loudness`,
   each step one chunked pass of the limiter alone over the cache. Integrated loudness
   is gated globally over the whole file from per-chunk K-weighted 10 ms energies (the
   K-filter warmed up on the samples before the chunk), true peak is the max over chunks.
4. **Delivery**: each chunk is dithered with its own seeded generator, quantised and
   appended to a temporary file renamed into place at the end; the written file is then
   metered (in chunks) and re-limited if it crosses the ceiling, as in
   :func:`diffmix.delivery.deliver`.

Agreement with the in-memory master (float output, no dither, 5 s chunks): max abs
difference 5e-7 of full scale (float32 rounding) and the same loudness; the test holds it
to 2e-6 with 24-bit dither and 0.01 LU (``tests/test_streaming.py``). One exception: the
limiter's last-resort whole-item scaling (pathological input, after four metered passes)
acts per chunk here.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from omegaconf import DictConfig
from torch import Tensor

from diffmix.config import save_preset
from diffmix.delivery import SUBTYPES, check_format, prepare
from diffmix.errors import UserError
from diffmix.functional.loudness import (
    ABSOLUTE_GATE_LUFS,
    RELATIVE_GATE_LU,
    _gated_loudness,
    _unit_energies,
    _warmup,
    block_samples,
    channel_weights,
    meter_unit,
)
from diffmix.functional.peaks import oversample, oversampling_factor, strict_envelope
from diffmix.io import AudioFileError, atomic_path
from diffmix.mastering import loudness_goals, set_exact

log = logging.getLogger(__name__)

# True-peak context either side of a chunk: more than half the interpolation filter.
_PEAK_CONTEXT = 256
# The strict meter's reach (peaks.strict_envelope: its ideal interpolation's FFT blocks and
# every FIR upsampler), so a chunk read with this much context meters as the whole file does.
_STRICT_CONTEXT = 4096
# Left context in time constants of the slowest attack/release: exp(-12) ~ 6e-6.
_TIME_CONSTANTS = 12.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), once per chunk.

    Chunk buffers (tens of MB, sizes varying with the context and the last chunk) raise
    glibc's dynamic mmap threshold, after which they come from the heap and fragment it:
    measured, the resident set then grew by ~100 MB per 10 minutes of audio per pass.
    Trimming after each chunk keeps it flat (a fraction of a millisecond per chunk).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# --------------------------------------------------------------------------- reading
class DiskAudio:
    """A mix on disk that reads like a ``(1, 2, T)`` float32 tensor, one slice at a time.

    Mono is duplicated to both channels (as :func:`diffmix.inputs.load_mix` does). Reads
    outside ``[0, T)`` are digital silence. Every read is checked for NaN/Inf.

    Args:
        path: any file soundfile can read.
        device: where slices are returned.

    >>> import tempfile, soundfile as sf, numpy as np
    >>> p = tempfile.mkdtemp() + "/a.wav"; sf.write(p, np.zeros((100, 2), "float32"), 48000)
    >>> DiskAudio(p).read(-10, 20).shape
    torch.Size([1, 2, 30])
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise AudioFileError(f"{self.path}: file not found")
        try:
            info = sf.info(str(self.path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioFileError(f"{self.path}: cannot read audio ({exc})") from exc
        if info.channels > 2:
            raise AudioFileError(f"{self.path}: {info.channels} channels; input must be mono or stereo")
        if info.frames == 0:
            raise AudioFileError(f"{self.path}: file is empty (0 samples)")
        self.sample_rate = int(info.samplerate)
        self.frames = int(info.frames)
        self.channels = int(info.channels)
        self.device = torch.device(device)
        self.shape = (1, 2, self.frames)

    def read(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, stop)`` as ``(1, 2, stop - start)``, silence outside the file."""
        n = stop - start
        lo, hi = max(start, 0), min(stop, self.frames)
        out = np.zeros((2, max(n, 0)), dtype=np.float32)
        if hi > lo:
            try:
                with sf.SoundFile(str(self.path)) as f:
                    f.seek(lo)
                    data = f.read(hi - lo, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioFileError(
                    f"{self.path}: cannot read samples {lo}..{hi} of the {self.frames} its header "
                    f"declares ({' '.join(str(exc).split())}); is the file cut short?"
                ) from exc
            if data.shape[0] < hi - lo:
                raise AudioFileError(
                    f"{self.path}: truncated: its header declares {self.frames} samples but "
                    f"reading stopped at {lo + data.shape[0]}"
                )
            if not np.isfinite(data).all():
                raise AudioFileError(f"{self.path}: audio contains NaN or Inf (near sample {lo})")
            out[:, lo - start : lo - start + data.shape[0]] = data.T  # mono broadcasts
        return torch.from_numpy(out).unsqueeze(0).to(self.device)

    def __getitem__(self, key: Any) -> Tensor:
        # song_excerpts slices x[..., a:b]; nothing else is supported.
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] is Ellipsis
                and isinstance(key[1], slice) and key[1].step in (None, 1)):
            raise TypeError(f"DiskAudio supports only x[..., a:b], got {key!r}")
        start, stop, _ = key[1].indices(self.frames)
        return self.read(start, max(start, stop))


class CacheFile:
    """A float32 ``(C, T)`` signal in a temporary file, written in order, read anywhere."""

    def __init__(self, folder: Path, channels: int, frames: int) -> None:
        fd, name = tempfile.mkstemp(prefix=".stream.", suffix=".partial.f32", dir=folder)
        self.path = Path(name)
        self.fh = os.fdopen(fd, "w+b")
        self.channels, self.frames = channels, frames

    def append(self, x: Tensor) -> None:
        self.fh.write(x.detach().to("cpu", torch.float32).numpy().T.tobytes())

    def read(self, start: int, stop: int, device: torch.device) -> Tensor:
        """``(1, C, stop - start)``, silence outside ``[0, frames)``."""
        lo, hi = max(start, 0), min(stop, self.frames)
        out = np.zeros((self.channels, stop - start), dtype=np.float32)
        if hi > lo:
            self.fh.flush()
            self.fh.seek(lo * self.channels * 4)
            data = np.fromfile(self.fh, dtype=np.float32, count=(hi - lo) * self.channels)
            out[:, lo - start : hi - start] = data.reshape(hi - lo, self.channels).T
        return torch.from_numpy(out).unsqueeze(0).to(device)

    def close(self) -> None:
        self.fh.close()
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- metering
class ChunkMeter:
    """Integrated loudness and true peak of a long signal fed chunk by chunk.

    Feed each chunk with ``left`` samples of the signal before it (at least
    :meth:`warmup` of them, zeros before the start) and ``_PEAK_CONTEXT`` after it
    (``_STRICT_CONTEXT`` each side with ``strict``). Chunks must start on multiples of the
    100 ms gating hop. ``strict`` meters the true peak on
    :func:`~diffmix.functional.peaks.strict_envelope` (every usual meter): the delivery
    ceiling's check.
    """

    def __init__(self, sample_rate: int, channels: int, *, strict: bool = False) -> None:
        self.sr, self.channels, self.strict = sample_rate, channels, strict
        self.unit = meter_unit(sample_rate)
        self.energies: list[Tensor] = []
        self.peak = 0.0
        self.sample_peak = 0.0

    @staticmethod
    def warmup(sample_rate: int) -> int:
        """Left context the K-filter needs, in samples (a whole number of meter units)."""
        unit = meter_unit(sample_rate)
        return max(_PEAK_CONTEXT, math.ceil(_warmup(sample_rate) / unit) * unit)

    def add(self, y: Tensor, left: int, n: int) -> None:
        """Meter ``y[..., left : left + n]`` of ``y`` ``(1, C, left + n + right)``."""
        w = self.warmup(self.sr)
        if left < w or y.shape[-1] < left + n + _PEAK_CONTEXT:
            raise ValueError(f"ChunkMeter: need {w} samples before and {_PEAK_CONTEXT} after a chunk")
        y = y.detach()
        e = _unit_energies(y[..., left - w : left + n], self.sr)
        self.energies.append(e[..., w // self.unit :].cpu())
        if self.strict:
            q = _STRICT_CONTEXT
            if left < q or y.shape[-1] < left + n + q:
                raise ValueError(f"ChunkMeter: the strict meter needs {q} samples each side of a chunk")
            level = strict_envelope(y[..., left - q : left + n + q], self.sr)
            self.peak = max(self.peak, float(level[..., q : q + n].amax()))
        else:
            f = oversampling_factor(self.sr)
            p = _PEAK_CONTEXT
            over = oversample(y[..., left - p : left + n + p], self.sr)
            self.peak = max(self.peak, float(over[..., p * f : (p + n) * f].abs().amax()))
        self.sample_peak = max(self.sample_peak, float(y[..., left : left + n].abs().amax()))

    def integrated_lufs(self) -> float:
        """BS.1770 gated loudness over every block of every chunk (global gating)."""
        energy = torch.cat(self.energies, -1)
        hop, block, _ = block_samples(self.sr)
        per, step = block // self.unit, hop // self.unit
        if energy.shape[-1] < per:
            raise UserError("streaming: audio shorter than one 400 ms gating block")
        w = torch.tensor(channel_weights(self.channels), dtype=torch.float64)
        csum = torch.nn.functional.pad(energy, (1, 0)).cumsum(-1)
        idx = torch.arange(0, energy.shape[-1] - per + 1, step)
        power = ((csum[..., idx + per] - csum[..., idx]) / block * w[:, None]).sum(1)
        return float(_gated_loudness(power, ABSOLUTE_GATE_LUFS, RELATIVE_GATE_LU)[0])

    def true_peak_dbtp(self) -> float:
        return 20.0 * math.log10(max(self.peak, 1e-12))


def chunk_bounds(frames: int, sample_rate: int, chunk_s: float) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks, each a whole number of 100 ms hops."""
    hop = block_samples(sample_rate)[0]
    size = max(1, round(chunk_s * sample_rate / hop)) * hop
    for start in range(0, frames, size):
        yield start, min(start + size, frames)


def measure_file(path: str | Path, *, chunk_s: float = 30.0, strict: bool = False) -> dict[str, float]:
    """Integrated loudness (LUFS), true peak (dBTP) and sample peak (dBFS) of a file, in chunks.

    Memory stays at one chunk however long the file is. Same figures as
    :func:`~diffmix.functional.loudness.integrated_loudness` and
    :func:`~diffmix.functional.peaks.true_peak` on the whole file (to ~1e-9 LU); with
    ``strict``, the true peak is :func:`~diffmix.functional.peaks.strict_true_peak`'s.
    """
    src = DiskAudio(path)
    meter = ChunkMeter(src.sample_rate, 2, strict=strict)
    w = ChunkMeter.warmup(src.sample_rate)
    right = _PEAK_CONTEXT
    if strict:
        w, right = max(w, _STRICT_CONTEXT), _STRICT_CONTEXT
    for start, stop in chunk_bounds(src.frames, src.sample_rate, chunk_s):
        meter.add(src.read(start - w, stop + right), w, stop - start)
        release_memory()
    return {
        "integrated_lufs": meter.integrated_lufs(),
        "true_peak_dbtp": meter.true_peak_dbtp(),
        "sample_peak_dbfs": 20.0 * math.log10(max(meter.sample_peak, 1e-12)),
        "seconds": src.frames / src.sample_rate,
    }


# --------------------------------------------------------------------------- rendering
def context_samples(chain: torch.nn.Module, sample_rate: int, context_s: float) -> int:
    """Left context: ``context_s`` plus twelve of the slowest attack/release time constants."""
    slowest_ms = 0.0
    for key, p in chain.named_values().items():  # type: ignore[operator]
        if key.endswith(("attack_ms", "release_ms")):
            slowest_ms = max(slowest_ms, float(p.exact().detach().max()))
    seconds = context_s + _TIME_CONSTANTS * slowest_ms / 1000.0
    return max(ChunkMeter.warmup(sample_rate), int(math.ceil(seconds * sample_rate)))


class StreamRenderer:
    """Chunked render of a mastering chain over a file, pre-limiter stage cached on disk.

    Args:
        chain: the fitted :class:`~diffmix.console.Bus` for one song; its last effects
            from ``limiter`` on are re-run for each drive.
        source: the input.
        folder: where the cache file lives (beside the output: never a RAM-backed /tmp).
        chunk_s: chunk length in seconds.
        context_s: base left context in seconds (see :func:`context_samples`).
        right_s: right context for lookahead, seconds.
    """

    def __init__(self, chain: Any, source: DiskAudio, folder: Path, *, chunk_s: float,
                 context_s: float, right_s: float = 0.1, limiter: str = "limiter") -> None:
        names = list(chain.effects)
        if limiter not in names:
            raise ValueError(f"master chain needs an effect named {limiter!r}; it has {names}")
        idx = names.index(limiter)
        set_exact(chain, True)
        self.pre = [chain.effects[n] for n in names[:idx]]
        self.lim = chain.effects[limiter]
        self.post = [chain.effects[n] for n in names[idx + 1 :]]
        self.src, self.sr = source, source.sample_rate
        self.chunk_s = chunk_s
        self.left = context_samples(chain, self.sr, context_s)
        self.right = max(_PEAK_CONTEXT, int(math.ceil(right_s * self.sr)))
        self.device = source.device
        self.passes = 0
        self.cache = CacheFile(folder, 2, source.frames)
        try:
            with torch.no_grad():
                for start, stop in self.chunks():
                    y = source.read(start - self.left, stop + self.right)
                    for effect in self.pre:
                        y = effect(y)
                    self.cache.append(y[..., self.left : self.left + stop - start])
                    del y
                    release_memory()
        except BaseException:
            self.cache.close()
            raise

    def chunks(self) -> Iterator[tuple[int, int]]:
        return chunk_bounds(self.src.frames, self.sr, self.chunk_s)

    def limited(self, drive_db: float) -> Iterator[tuple[int, int, Tensor]]:
        """``(start, stop, y)`` per chunk: the limiter (and what follows) at ``drive_db``,
        ``y`` holding ``self.left`` samples of context before the chunk and
        ``self.right`` after it."""
        self.lim.load_values({"gain_db": torch.tensor([float(drive_db)], dtype=torch.float64)})
        self.passes += 1
        with torch.no_grad():
            for start, stop in self.chunks():
                y = self.cache.read(start - self.left, stop + self.right, self.device)
                y = self.lim(y)
                for effect in self.post:
                    y = effect(y)
                yield start, stop, y
                del y
                release_memory()

    def measure(self, drive_db: float) -> tuple[float, float]:
        """``(integrated LUFS, true peak dBTP)`` of the master at ``drive_db``."""
        meter = ChunkMeter(self.sr, 2)
        for start, stop, y in self.limited(drive_db):
            meter.add(y, self.left, stop - start)
        return meter.integrated_lufs(), meter.true_peak_dbtp()

    def close(self) -> None:
        self.cache.close()


def solve_drive(measure: Callable[[float], float], target: float, *, tolerance_lu: float = 0.02,
                max_iter: int = 12, drive_range: tuple[float, float] = (-40.0, 30.0)
                ) -> tuple[float, float, int]:
    """The secant iteration of :func:`diffmix.mastering.solve_loudness` for one song.

    Same start (0 dB), slope clamp and stopping rule, so the drives match the in-memory
    solve step for step. Returns ``(drive_db, achieved_lufs, renders)``.
    """
    lo, hi = drive_range
    drive, lufs = 0.0, measure(0.0)
    if not math.isfinite(lufs):
        raise UserError("input is silent: no gain can reach a loudness target")
    prev: tuple[float, float] | None = None
    iters = 1
    for _ in range(max_iter):
        err = target - lufs
        if abs(err) <= tolerance_lu:
            break
        slope = 1.0
        if prev is not None and abs(drive - prev[0]) > 1e-9:
            slope = min(max((lufs - prev[1]) / (drive - prev[0]), 0.05), 1.0)
        prev = (drive, lufs)
        drive = min(max(drive + err / slope, lo), hi)
        iters += 1
        lufs = measure(drive)
    if abs(target - lufs) > tolerance_lu:
        raise UserError(
            f"cannot reach {target:g} LUFS under the ceiling: the closest was {lufs:.2f} LUFS "
            f"at {drive:+.1f} dB drive"
        )
    return drive, lufs, iters


def write_master(renderer: StreamRenderer, drive_db: float, path: Path, *, bit_depth: str,
                 dither: bool, seed: int, gain_db: float = 0.0) -> None:
    """Render at ``drive_db``, dither/quantise per chunk, write atomically to ``path``."""
    sr = renderer.sr
    gain = 10.0 ** (gain_db / 20.0)
    with atomic_path(path) as tmp, sf.SoundFile(
        str(tmp), "w", samplerate=sr, channels=2, subtype=SUBTYPES[bit_depth]
    ) as fh:
        for k, (start, stop, y) in enumerate(renderer.limited(drive_db)):
            mid = y[0, :, renderer.left : renderer.left + stop - start].cpu() * gain
            # One generator per chunk, seeded by (seed, chunk): reproducible, independent.
            chunk_seed = int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0])
            q, _, _ = prepare(mid, sr, bit_depth=bit_depth, dither=dither, seed=chunk_seed)
            fh.write(q.numpy().T)


# --------------------------------------------------------------------------- the job
def wants_streaming(cfg: DictConfig) -> bool:
    """``cfg.stream``: ``true``/``false``, or ``auto`` (stream above ``streaming.auto_above_s``)."""
    mode = cfg.get("stream", "auto")
    if isinstance(mode, bool):
        return mode
    if str(mode).lower() in ("true", "false"):
        return str(mode).lower() == "true"
    if str(mode) != "auto":
        raise ValueError(f"stream must be auto, true or false, got {mode!r}")
    try:
        seconds = sf.info(str(cfg.input)).duration
    except (sf.LibsndfileError, RuntimeError):
        return False  # let the in-memory path report the unreadable file
    return seconds > float((cfg.get("streaming") or {}).get("auto_above_s", 600.0))


def master_file(cfg: DictConfig, *, input: str, out: Path, stem: str,  # noqa: A002
                reference: Tensor | None, target: dict, protect: tuple[str, ...],
                device: torch.device) -> dict[str, Any]:
    """Master one file in bounded memory; writes the master, preset and report.

    The same fit, loudness solve and delivery as the in-memory master job, chunked.
    Options from ``cfg.streaming``: ``chunk_s`` (30), ``context_s`` (2).
    """
    from diffmix.jobs._mastering import MIN_SECONDS, chain_for, fit_stage
    from diffmix.listen import Take, job_warnings, write_listening_report
    from diffmix.report import write_json

    t0 = time.perf_counter()
    opts = cfg.get("streaming") or {}
    chunk_s, context_s = float(opts.get("chunk_s", 30.0)), float(opts.get("context_s", 2.0))
    fmt, depth = check_format(cfg.delivery.format, cfg.delivery.bit_depth)
    src = DiskAudio(input, device)
    sr = src.sample_rate
    if cfg.delivery.get("sample_rate") and int(cfg.delivery.sample_rate) != sr:
        raise UserError("streaming: delivery.sample_rate conversion is not supported; use stream=false")
    if src.frames < MIN_SECONDS * sr:
        raise UserError(f"{stem}: input is too short to master ({src.frames / sr:.2f} s)")
    if cfg.get("plot"):
        log.info("streaming: no plot for a streamed master (it would need the whole signal)")
    chain = chain_for(cfg, sr, 1).to(device)
    fit_report = fit_stage(
        cfg, chain, [src], [stem], [reference] if reference is not None else None, target  # type: ignore[list-item]
    )
    (goal,) = loudness_goals([target], [reference], sr)
    ceiling = target.get("true_peak_db")
    path = out / f"{stem}.{fmt}"
    for other in protect:
        if Path(other).exists() and path.exists() and path.samefile(other):
            raise AudioFileError(f"{path}: refusing to overwrite an input file")
    renderer = StreamRenderer(chain, src, out, chunk_s=chunk_s, context_s=context_s)
    try:
        solve = None
        drive = 0.0
        if goal is not None:
            drive, lufs, iters = solve_drive(
                lambda d: renderer.measure(d)[0], goal, tolerance_lu=float(cfg.tolerance_lu)
            )
            solve = {"drive_db": drive, "achieved_lufs": lufs, "target_lufs": goal, "iterations": iters}
        relimit_db = 0.0
        for _ in range(8):
            write_master(renderer, drive, path, bit_depth=depth, dither=bool(cfg.delivery.dither),
                         seed=int(cfg.seed), gain_db=relimit_db)
            after = measure_file(path, chunk_s=chunk_s, strict=True)  # the ceiling on every meter
            if ceiling is None or after["true_peak_dbtp"] <= ceiling:
                break
            relimit_db -= (after["true_peak_dbtp"] - ceiling) + 0.01
        else:  # pragma: no cover - as in delivery.deliver
            raise RuntimeError(f"delivery: could not bring the true peak under {ceiling} dBTP")
        passes = renderer.passes
        left = renderer.left
    finally:
        renderer.close()
    preset_path = out / f"{stem}_preset.yaml"
    save_preset(chain, preset_path)
    report: dict[str, Any] = {
        "job": "master",
        "id": stem,
        "outputs": {"audio": str(path), "preset": str(preset_path)},
        "target": target,
        "achieved": {
            "lufs": after["integrated_lufs"],
            "true_peak_dbtp": after["true_peak_dbtp"],
            "lufs_error_lu": None if goal is None else after["integrated_lufs"] - goal,
            "under_ceiling": ceiling is None or after["true_peak_dbtp"] <= ceiling,
        },
        "before": measure_file(input, chunk_s=chunk_s),
        "after": after,
        "loudness_solve": solve,
        "delivery": {
            "path": str(path), "format": fmt, "bit_depth": depth, "sample_rate": sr,
            "dithered": bool(cfg.delivery.dither) and depth != "float",
            "true_peak_dbtp": after["true_peak_dbtp"], "ceiling_dbtp": ceiling,
            "relimited": relimit_db < 0, "relimit_gain_db": relimit_db,
        },
        "fit": fit_report,
        "params": chain.preset(),
        "streaming": {"chunk_s": chunk_s, "left_context_s": left / sr, "limiter_passes": passes},
    }
    report["qc"] = job_warnings(after, path, sr, target, target.get("name"))
    if bool(cfg.get("report", True)):
        # Read back in chunks like everything here; the input is played where it lies.
        takes = [Take("input", None, Path(input)), Take("result", None, path)]
        if reference is not None:
            takes.append(Take("reference", reference.cpu()))
        page = write_listening_report(
            out / f"{stem}_report.html", title=stem, sample_rate=sr, takes=takes, job="master (streamed)",
            target=target, achieved=report["achieved"],
            measures={"input": report["before"], "result": after}, params=report["params"],
            warnings=report["qc"],
            notes=["Streamed in chunks: the limiter's gain reduction is not drawn, and the input plays "
                   "from its own location."],
        )
        report["outputs"]["listening_report"] = str(page)
    report["runtime_s"] = round(time.perf_counter() - t0, 3)
    write_json(out / f"{stem}_report.json", report)
    report["outputs"]["report"] = str(out / f"{stem}_report.json")
    return report
