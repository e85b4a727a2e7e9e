"""Training data for the predictor: a corpus of mastered songs, split by song, and
examples drawn from it by the half-A / half-B trick.

Each example takes one song's two halves: an excerpt of half B is the *input*; an excerpt
of half A, rendered through the chain at settings drawn from the training prior, is the
*reference*; the drawn settings are what the model learns to predict. Both excerpts get
the same random level first (a mix arrives quieter than its master, and the compressor's
threshold is absolute). A fraction of examples is "spec only": the reference's features
are withheld, and the targets are the chain's start settings with the drawn limiter drive
(a loudness spec alone says nothing about tone, so the neutral start is the right guess).
"""

from __future__ import annotations

import csv
import glob as globmod
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffmix.console import Bus
from diffmix.errors import UserError
from diffmix.fit import draw
from diffmix.functional.loudness import integrated_loudness
from diffmix.inputs import load_mix
from diffmix.io import AudioFileError
from diffmix.learned import dist
from diffmix.learned.checkpoint import file_sha256
from diffmix.learned.features import LUFS, feature_vector, mel_input, names, signal_features
from diffmix.learned.model import MEL_CHANNELS, Head
from diffmix.mastering import set_exact

DRIVE = "limiter.gain_db"  # the one setting a spec-only example keeps: the target loudness sets it
AUDIO = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff")


@dataclass
class SongFile:
    """One corpus file and where it came from."""

    path: Path
    sha256: str
    source: str | None = None
    licence: str | None = None

    def as_dict(self, root: Path | None = None) -> dict[str, Any]:
        shown = (
            self.path.name
            if root is None
            else str(self.path.relative_to(root))
            if self.path.is_relative_to(root)
            else self.path.name
        )
        return {"file": shown, "sha256": self.sha256, "source": self.source, "licence": self.licence}


def list_corpus(spec: str, source: str | None = None, licence: str | None = None) -> list[SongFile]:
    """The corpus named by ``spec``: a folder (searched recursively), a glob, or a manifest
    (``.txt``: one path a line; ``.csv``/``.jsonl`` with a ``path`` column and optional
    ``source``/``licence`` columns). Paths in a manifest are relative to it. Sorted by path.
    """
    p = Path(spec)
    rows: list[dict[str, Any]] = []
    if p.is_dir():
        rows = [{"path": f} for f in sorted(p.rglob("*")) if f.suffix.lower() in AUDIO and f.is_file()]
    elif p.is_file() and p.suffix.lower() in (".txt", ".csv", ".jsonl"):
        text = p.read_text()
        if p.suffix.lower() == ".txt":
            rows = [
                {"path": line.strip()}
                for line in text.splitlines()
                if line.strip() and not line.startswith("#")
            ]
        elif p.suffix.lower() == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        for r in rows:
            if "path" not in r:
                raise UserError(f"{p}: every manifest row needs a path, got {r}")
            r["path"] = (
                (p.parent / str(r["path"]))
                if not Path(str(r["path"])).is_absolute()
                else Path(str(r["path"]))
            )
    else:
        rows = [
            {"path": Path(f)}
            for f in sorted(globmod.glob(spec, recursive=True))
            if Path(f).suffix.lower() in AUDIO
        ]
    if not rows:
        raise UserError(f"corpus={spec}: no audio files found (a folder, glob, or .txt/.csv/.jsonl manifest)")
    files = []
    for r in sorted(rows, key=lambda r: str(r["path"])):
        path = Path(r["path"])
        if not path.is_file():
            raise UserError(f"corpus: {path}: file not found")
        files.append(
            SongFile(path, file_sha256(path), r.get("source") or source, r.get("licence") or licence)
        )
    return files


def split(files: Sequence[SongFile], val_fraction: float, seed: int) -> tuple[list[SongFile], list[SongFile]]:
    """Split by song (by content hash, so a file's side doesn't depend on its neighbours)."""
    if len(files) < 2:
        raise UserError(f"corpus: need at least 2 songs to split into train and validation, got {len(files)}")
    order = sorted(files, key=lambda f: hashlib.sha256(f"{seed}|{f.sha256}".encode()).hexdigest())
    n_val = min(len(files) - 1, max(1, round(val_fraction * len(files))))
    return sorted(order[n_val:], key=lambda f: str(f.path)), sorted(order[:n_val], key=lambda f: str(f.path))


def load_songs(files: Sequence[SongFile], sample_rate: int, max_s: float) -> list[Tensor | str]:
    """Each file as ``(2, T)`` float32 at ``sample_rate``, at most ``max_s`` from its middle;
    for a file that can't be used as audio (undecodable, truncated, more than two channels),
    the one-line reason instead, so one bad file in a catalogue leaves out that file alone."""
    out: list[Tensor | str] = []
    for f in files:
        try:
            x, _ = load_mix(f.path, sample_rate, what="corpus file")
        except AudioFileError as exc:
            out.append(str(exc).removeprefix(f"{f.path}: "))
            continue
        n, want = x.shape[-1], int(max_s * sample_rate)
        if n > want:
            x = x[..., (n - want) // 2 : (n - want) // 2 + want]
        out.append(x[0].contiguous())
    return out


def usable(files: Sequence[SongFile], songs: Sequence[Tensor | str], sample_rate: int,
           min_s: float) -> tuple[list[SongFile], list[Tensor], list[dict[str, str]]]:
    """The songs examples can be drawn from, and why each other one can't.

    A song must be readable, at least ``min_s`` seconds long (two halves of an excerpt: a
    shorter one would cut every excerpt of its batch to its own length) and each half must
    have a measurable loudness (not silence, nor every 400 ms block under BS.1770's -70 LUFS
    gate: a silent reference has no setting to learn). ``songs``: ``(2, T)`` each or why the
    file can't be read, as :func:`load_songs` gives them. Returns the kept files and songs,
    and one ``{"file", "sha256", "reason"}`` per song left out, in corpus order.
    """
    kept: list[SongFile] = []
    kept_songs: list[Tensor] = []
    skipped: list[dict[str, str]] = []
    for f, s in zip(files, songs, strict=True):
        if isinstance(s, str):
            skipped.append({"file": f.path.name, "sha256": f.sha256, "reason": f"unreadable: {s}"})
            continue
        seconds = s.shape[-1] / sample_rate
        reason = None
        if seconds < min_s:
            reason = (f"{seconds:.2f} s long; an example needs {min_s:g} s (two halves of an excerpt: "
                      "data.excerpt_s)")
        else:
            half = s.shape[-1] // 2
            for which, part in (("first", s[:, :half]), ("second", s[:, half:])):
                if not bool(torch.isfinite(integrated_loudness(part[None].double(), sample_rate)).all()):
                    reason = f"its {which} half is silent or under BS.1770's -70 LUFS gate"
                    break
        if reason is None:
            kept.append(f)
            kept_songs.append(s)
        else:
            skipped.append({"file": f.path.name, "sha256": f.sha256, "reason": reason})
    return kept, kept_songs, skipped


def draw_values(
    heads: Sequence[Head], prior: Mapping[str, Sequence[float]], n: int, gen: torch.Generator
) -> dict[str, Tensor]:
    """``{key: (n, *shape)}`` physical values: uniform in each head's warped domain over its
    ``prior`` range (clipped to the spec), or its start value when it has no prior."""
    out = {}
    for h in heads:
        start = torch.tensor(h.start, dtype=torch.float64).reshape(h.shape)
        if h.key not in prior:
            out[h.key] = start.expand(n, *h.shape).clone()
            continue
        lo, hi = (float(v) for v in prior[h.key])
        lo, hi = max(lo, h.spec.min), min(hi, h.spec.max)
        u = torch.rand((n, *h.shape), generator=gen, dtype=torch.float64)
        if h.spec.scale == "log":
            out[h.key] = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        else:
            out[h.key] = lo + u * (hi - lo)
    return out


def flat(heads: Sequence[Head], values: Mapping[str, Tensor]) -> Tensor:
    """``{key: (n, *shape)}`` -> ``(n, sum of sizes)`` in head order."""
    return torch.cat([values[h.key].reshape(values[h.key].shape[0], -1) for h in heads], -1)


def make_examples(
    songs: Sequence[Tensor],
    chain_for: Callable[[int], Bus],
    heads: Sequence[Head],
    prior: Mapping[str, Sequence[float]],
    *,
    count: int,
    per_excerpt: int,
    excerpt_s: float,
    input_gain_db: Sequence[float],
    spec_only: float,
    ceiling_db: float,
    seed: int,
    tag: str,
    batch: int = 16,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    mel: Mapping[str, Any] | None = None,
    until: str | None = None,
) -> tuple[Tensor, Tensor]:
    """``count`` examples: features ``(count, F)`` float64 and targets ``(count, n_out)``
    (physical values in head order). Deterministic in ``(seed, tag)``.

    Every ``per_excerpt`` examples share one (song, A, B, level) draw and differ in their
    settings, so the input's features are measured once for them. With ``mel``
    (``{"bands", "frames", "n_fft"}``), each row goes on with the excerpts' log-mel
    spectrograms (:func:`~diffmix.learned.features.mel_input`), for the CNN.

    ``until``: the effect the reference's render stops before (``"limiter"``: as the fit's
    objective renders, so the drawn compressor alone makes the reference's dynamics, and
    the drawn settings are where the fit would converge; the drawn drive is then a plain
    gain, so the reference is as loud as a master). None: the whole chain, the limiter at
    the drawn drive. Under ``torchrun`` each
    rank draws every ``W``-th batch and the ranks exchange them: every rank returns the
    whole set, equal to one process's.
    """
    sr = chain_for(1).sample_rate
    n_batches = math.ceil(count / batch)
    n_mel = 0 if mel is None else MEL_CHANNELS * int(mel["bands"]) * int(mel["frames"])
    feats = torch.zeros(n_batches, batch, len(names(sr)) + n_mel, dtype=torch.float64)
    targets = torch.zeros(n_batches, batch, sum(h.size for h in heads), dtype=torch.float64)
    chain = chain_for(batch).to(device)
    set_exact(chain, False)
    for k in dist.mine(range(n_batches)):
        gen = draw(seed, k, tag)
        bases = math.ceil(batch / per_excerpt)
        a_list, b_list = [], []
        for _ in range(bases):
            s = songs[int(torch.randint(len(songs), (1,), generator=gen))]
            half = s.shape[-1] // 2
            n = min(int(excerpt_s * sr), half)
            a0 = int(torch.randint(half - n + 1, (1,), generator=gen))
            b0 = half + int(torch.randint(s.shape[-1] - half - n + 1, (1,), generator=gen))
            lo, hi = (float(v) for v in input_gain_db)
            g = 10 ** ((lo + (hi - lo) * float(torch.rand((), generator=gen))) / 20)
            a_list.append(s[:, a0 : a0 + n] * g)
            b_list.append(s[:, b0 : b0 + n] * g)
        n = min(x.shape[-1] for x in a_list + b_list)
        a = torch.stack([x[:, :n] for x in a_list]).repeat_interleave(per_excerpt, 0)[:batch]
        b = torch.stack([x[:, :n] for x in b_list])
        values = draw_values(heads, prior, batch, gen)
        chain.load_values(values)
        with torch.no_grad():
            ref = chain(a.to(device), until=until)
            if until is not None and DRIVE in values:  # the drive as a gain: a limiter that never limits
                ref = ref * (10.0 ** (values[DRIVE].reshape(batch, -1)[:, :1] / 20.0)).to(ref)[..., None]
        ins = signal_features(b.to(device), sr).cpu().repeat_interleave(per_excerpt, 0)[:batch]
        refs = signal_features(ref, sr).cpu()
        goal = refs[:, LUFS]
        ceiling = torch.full((batch,), ceiling_db, dtype=torch.float64)
        f = feature_vector(ins, refs, goal, ceiling, sr)
        y = flat(heads, values)
        if mel is not None:
            opts = {k: int(mel[k]) for k in ("bands", "frames", "n_fft")}
            m = mel_input(b.to(device), None, sr, **opts)[:, : n_mel // 2]
            m = m.repeat_interleave(per_excerpt, 0)[:batch]
            f = torch.cat([f, m, mel_input(ref, None, sr, **opts)[:, : n_mel // 2]], -1)
        drop = torch.rand(batch, generator=gen) < spec_only
        if drop.any():
            f_spec = feature_vector(ins, None, goal, ceiling, sr)
            if mel is not None:  # the reference's spectrograms are withheld too
                f_spec = torch.cat([f_spec, f[:, f_spec.shape[1] : f_spec.shape[1] + n_mel // 2],
                                    torch.zeros(batch, n_mel // 2, dtype=f.dtype)], -1)
            f = torch.where(drop[:, None], f_spec, f)
            neutral = flat(
                heads,
                {
                    h.key: torch.tensor(h.start, dtype=torch.float64).reshape(h.shape).expand(batch, *h.shape)
                    for h in heads
                },
            )
            drive = torch.zeros(y.shape[-1], dtype=torch.bool)
            i = 0
            for h in heads:
                if h.key == DRIVE:
                    drive[i : i + h.size] = True
                i += h.size
            y = torch.where(drop[:, None] & ~drive, neutral, y)
        feats[k] = f
        targets[k] = y
        if progress is not None:
            progress(batch)
    feats, targets = dist.assemble(feats), dist.assemble(targets)
    return feats.reshape(-1, feats.shape[-1])[:count], targets.reshape(-1, targets.shape[-1])[:count]
