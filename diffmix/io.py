"""Audio and text I/O with clear errors and atomic writes.

Reading names the file and the problem (missing, unreadable, empty, NaN/Inf). Writing
goes to a temporary file beside the target and is renamed into place, so a failure
never leaves a half-written output, and an input is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from diffmix.checks import all_finite


class AudioFileError(ValueError):
    """An audio file that cannot be used: missing, unreadable, empty or non-finite."""


def read_audio(path: str | Path, *, allow_silence: bool = True) -> tuple[Tensor, int]:
    """Read any file soundfile can read.

    Returns:
        ``(audio, sample_rate)`` with audio float32 ``(channels, time)``.

    Raises:
        AudioFileError: one line naming the file and the problem.
    """
    p = Path(path)
    if not p.exists():
        raise AudioFileError(f"{p}: file not found")
    if p.is_dir():
        raise AudioFileError(f"{p}: is a directory, not an audio file")
    _check_not_truncated(p)
    try:
        data, sr = _read_planar(p)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioFileError(f"{p}: cannot read audio ({_reason(exc)})") from exc
    if data.shape[-1] == 0:
        raise AudioFileError(f"{p}: file is empty (0 samples)")
    if not all_finite(data):
        raise AudioFileError(f"{p}: audio contains NaN or Inf")
    if not allow_silence and not bool(data.any()):
        raise AudioFileError(f"{p}: audio is digital silence")
    return data, int(sr)


_READ_FRAMES = 1 << 16  # frames decoded at a time by read_audio


def _read_planar(p: Path) -> tuple[Tensor, int]:
    """The file's samples as float32 ``(channels, time)``, decoded a block at a time into
    one small interleaved buffer and copied into place: no full-length interleaved copy
    (and no fresh pages for it; numpy asks for huge pages on large arrays, a fault on the
    host each on some VMs)."""
    with sf.SoundFile(str(p)) as f:
        frames, channels = int(f.frames), int(f.channels)
        out = torch.empty(channels, frames, dtype=torch.float32)
        buf = np.empty((max(1, min(_READ_FRAMES, frames)), channels), dtype=np.float32)
        pos = 0
        while pos < frames:
            got = f.read(min(len(buf), frames - pos), dtype="float32", always_2d=True, out=buf)
            if len(got) == 0:
                break
            out[:, pos : pos + len(got)] = torch.from_numpy(got.T)
            pos += len(got)
        return (out if pos == frames else out[:, :pos].contiguous()), int(f.samplerate)


def _check_not_truncated(p: Path) -> None:
    """Refuse a WAV whose data chunk declares more bytes than the file holds.

    libsndfile reads what is there and says nothing, so a copy cut short (a failed
    download, a full disk) would be mastered as half a song.
    """
    try:
        with p.open("rb") as fh:
            head = fh.read(1 << 16)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return  # soundfile reports unreadable files with its own message
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(head):
        cid, n = head[pos: pos + 4], int.from_bytes(head[pos + 4: pos + 8], "little")
        if cid == b"data":
            have = size - (pos + 8)
            if n != 0xFFFFFFFF and n > have:
                raise AudioFileError(
                    f"{p}: truncated: its header declares {n} bytes of audio but the file "
                    f"holds {max(have, 0)} ({100 * max(have, 0) / n:.0f}%)"
                )
            return
        pos += 8 + n + (n & 1)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".partial{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file 0600 and os.replace keeps that: give it the mode a plain
    # open() would have (0666 less the umask), so other users and services can read it.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (threads write too)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_outputs(outputs: tuple[str | Path, ...], inputs: tuple[str | Path, ...]) -> None:
    """Refuse, before any work, outputs that would overwrite an input (audio, preset,
    manifest, anything read): AudioFileError naming both."""
    for out in outputs:
        o = Path(out)
        for inp in inputs:
            i = Path(inp)
            if o.exists() and i.exists() and o.samefile(i) or o.resolve() == i.resolve():
                raise AudioFileError(
                    f"{o}: refusing to overwrite an input ({i}); pick another output_name or out="
                )


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_audio(
    path: str | Path,
    audio: Tensor,
    sample_rate: int,
    *,
    subtype: str | None = None,
    protect: tuple[str | Path, ...] = (),
) -> Path:
    """Write ``(channels, time)`` audio atomically. Format follows the extension.

    Args:
        subtype: soundfile subtype such as ``PCM_16``, ``PCM_24`` or ``FLOAT``;
            default is the format's default.
        protect: input paths that must never be overwritten.
    """
    target = Path(path)
    for other in protect:
        if Path(other).exists() and target.exists() and target.samefile(other):
            raise AudioFileError(f"{target}: refusing to overwrite an input file")
    if audio.ndim != 2:
        raise ValueError(f"write_audio: audio must be (channels, time), got {tuple(audio.shape)}")
    data = audio.detach().to("cpu", torch.float32).numpy().T
    if not all_finite(data):
        raise ValueError(f"{target}: refusing to write audio that contains NaN or Inf")
    try:
        with atomic_path(target) as tmp:
            sf.write(str(tmp), data, int(sample_rate), subtype=subtype)
    except (sf.LibsndfileError, RuntimeError) as exc:  # libsndfile hides the errno
        raise AudioFileError(
            f"{target}: cannot write audio ({_reason(exc)}); is the disk full or a file-size "
            "limit (ulimit -f) reached?"
        ) from exc
    return target
