"""The mixing console: channel strips, subgroup buses, FX sends and a master bus.

Tracks fold into the batch axis. A channel strip is one :class:`Bus` whose every
parameter holds one value per track (and per song when several songs are mixed at once),
so each effect type runs once for all tracks; there is no per-track Python loop.

Routing, for stems ``(songs, tracks, channels, time)``::

    track -> strip ----------------------------------------+--> master bus -> mix
                   \\-> subgroup bus strip (if grouped) ----/
                   \\-> send_db -> FX bus (reverb, delay) -> return_db
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffmix.checks import check_audio, check_multitrack, check_sample_rate
from diffmix.effects.base import _plain, run_effects
from diffmix.functional.gain import apply_matrix, db_to_amp
from diffmix.params import BoundedParam, ParamSpec

SEND_SPEC = ParamSpec("send_db", -80.0, 0.0, -80.0)
RETURN_SPEC = ParamSpec("return_db", -40.0, 12.0, 0.0)


def bounded_params(module: nn.Module) -> dict[str, BoundedParam]:
    """Every :class:`BoundedParam` under ``module`` by dotted path."""
    return {n: m for n, m in module.named_modules() if isinstance(m, BoundedParam)}


def matching(params: Mapping[str, BoundedParam], patterns: Sequence[str]) -> list[str]:
    """The keys of the differentiable parameters matching any glob pattern, in order."""
    return [key for key, param in params.items()
            if param.spec.differentiable and any(fnmatch.fnmatch(key, p) for p in patterns)]


def select(params: Mapping[str, BoundedParam], patterns: Sequence[str]) -> list[nn.Parameter]:
    """Turn gradients on for parameters whose key matches any glob pattern, off for the
    rest; returns the raw tensors to hand to an optimiser."""
    on = set(matching(params, patterns))
    chosen = []
    for key, param in params.items():
        param.raw.requires_grad_(key in on)
        if key in on:
            chosen.append(param.raw)
    return chosen


def range_change(spec: ParamSpec, now: Tensor, start: Tensor) -> Tensor:
    """The change ``now - start`` as a fraction of the parameter's range (log-scaled
    parameters in the log domain): what :func:`prior` squares. Differentiable in ``now``."""
    if spec.scale == "log":
        return (torch.log(now) - torch.log(start)) / (math.log(spec.max) - math.log(spec.min))
    return (now - start) / (spec.max - spec.min)


def prior(params: Mapping[str, BoundedParam], initial: Mapping[str, Tensor]) -> Tensor:
    """Pull toward neutral: the mean squared change of the fitted parameters since
    ``initial`` (values by key), each scaled by its range (log-scaled parameters in the log
    domain). Only parameters with gradients on count. Differentiable; 0 at the start.
    """
    terms = []
    for key, param in params.items():
        if not param.raw.requires_grad or key not in initial:
            continue
        now = param()
        delta = range_change(param.spec, now, initial[key].to(now.dtype).to(now.device))
        terms.append(delta.square().mean())
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


class Bus(nn.Module):
    """Named effects in series whose parameters hold one value per item (track, bus or song).

    Args:
        sample_rate: Hz.
        effects: name -> effect, in processing order, built with single-item values.
        items: how many items (tracks, buses or songs) run through the bus at once; every
            parameter value gets a leading axis of this size.
        values: optional ``{"<effect>.<param>": per-item physical values}`` overriding the
            expanded defaults (as written by :meth:`preset`).

    Shape:
        ``(items, channels, time)`` -> ``(items, channels', time)``.

    Differentiable in every parameter of every effect. CUDA: yes.
    """

    def __init__(
        self,
        sample_rate: int,
        effects: Mapping[str, nn.Module],
        items: int = 1,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.sample_rate = check_sample_rate(sample_rate, "Bus")
        if int(items) < 1:
            raise ValueError(f"Bus: items must be >= 1, got {items}")
        self.items = int(items)
        # A diffmix.bus_memo.PrefixMemo while a fit keeps this bus's renders, else None.
        self._memo: Any = None
        self.effects = nn.ModuleDict(dict(effects))
        self._templates = {
            name: effect.preset() for name, effect in self.effects.items()  # type: ignore[operator]
        }
        for param in bounded_params(self.effects).values():
            single = param.anchor
            param.set(single.expand(self.items, *single.shape).clone())
        self._initial = {k: p.exact() for k, p in self.named_values().items()}
        if values:
            self.load_values(values)

    def named_values(self) -> dict[str, BoundedParam]:
        """``"<effect>.<param>"`` -> its :class:`BoundedParam`."""
        return {
            path.replace(".params.", "."): p for path, p in bounded_params(self.effects).items()
        }

    def load_values(self, values: Mapping[str, Any]) -> None:
        params = self.named_values()
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise ValueError(f"Bus: unknown parameter(s) {unknown}; known: {sorted(params)}")
        for key, value in values.items():
            v = torch.as_tensor(value, dtype=torch.float64)
            want = params[key].anchor.shape
            if tuple(v.shape) != tuple(want):
                raise ValueError(f"Bus: {key} needs shape {tuple(want)}, got {tuple(v.shape)}")
            params[key].set(v)

    def set_amount(self, effect: str, amount: float) -> None:
        """Scale the change of ``effect``'s parameters since construction by ``amount`` (0..1).

        Log-scaled parameters are interpolated geometrically.
        """
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"Bus: amount for {effect!r} must be in [0, 1], got {amount}")
        if effect not in self.effects:
            raise ValueError(f"Bus: no effect named {effect!r}; have {list(self.effects)}")
        for key, param in self.named_values().items():
            if not key.startswith(effect + "."):
                continue
            start, now = self._initial[key], param.exact()
            if param.spec.scale == "log":
                target = start * (now / start) ** amount
            else:
                target = start + amount * (now - start)
            param.set(target.clamp(param.spec.min, param.spec.max))

    def forward(self, x: Tensor, until: str | None = None, start: str | None = None, *,
                fuse: bool = False) -> Tensor:
        """Run the effects in order; with ``start``, from the effect of that name on (``x``
        has been through the ones before it); with ``until``, stop before the effect of
        that name (``start == until``: none). ``fuse``: each run of adjacent linear effects
        as one filter (:func:`~diffmix.effects.base.run_effects`; the mastering chain's
        fit and renders), not while the bus keeps its renders (:mod:`diffmix.bus_memo`)."""
        if start is not None and start not in self.effects:
            raise ValueError(f"Bus: no effect named {start!r}; have {list(self.effects)}")
        running = start is None
        chosen = []
        for name, effect in self.effects.items():
            if name == until:
                break
            running = running or name == start
            if running:
                chosen.append(effect)
        memo = self._memo
        if fuse:
            if memo is not None:
                raise ValueError("Bus: fuse=True while the bus keeps its renders (each effect's output)")
            return run_effects(chosen, x)
        if memo is not None and start is None and not torch.is_grad_enabled():
            return memo.run(chosen, x)  # diffmix.bus_memo: the same values, kept renders
        for effect in chosen:
            x = effect(x)
        return x

    def preset(self) -> dict[str, Any]:
        return {
            "_target_": "diffmix.console.Bus",
            "sample_rate": self.sample_rate,
            "effects": self._templates,
            "items": self.items,
            "values": {k: _plain(p.exact()) for k, p in self.named_values().items()},
        }


class Console(nn.Module):
    """A mixing console for ``songs`` multitracks of ``tracks`` stems each.

    Args:
        sample_rate: Hz.
        tracks: stems per song.
        strip: the channel strip: name -> effect (single-track values), e.g. input gain,
            high-pass, EQ, compressor, pan, width, fader. Must turn its input stereo (a
            ``Pan``) if stems can be mono.
        master: the master bus: name -> effect.
        groups: optional subgroup buses: bus name -> track indices or names.
        group_strip: the strip of each subgroup bus (default: none, a plain sum).
        sends: optional FX buses: name -> effect (run fully wet), fed post-fader by a
            per-track ``send_db`` and returned at ``return_db``.
        track_names: names of the tracks (for groups by name and for reports).
        mono: which tracks are mono sources carried as two equal channels.
        songs: multitracks processed at once; every parameter is per song.
        offset_samples: moves the mix on its timeline (positive: later, negative:
            earlier; the vacated start or end is silence), e.g. to line it up with a
            reference rendered with some latency. An option, not fitted; default 0.
        values: fitted values as written by :meth:`preset`.

    Shape:
        ``(songs, tracks, 1 or 2, time)`` -> ``(songs, 2, time)``.

    Differentiable in every effect parameter, send and return level. CUDA: yes.
    """

    # Buffers registered in __init__ (declared for the type checker).
    routing: Tensor
    direct: Tensor

    def __init__(
        self,
        sample_rate: int,
        tracks: int,
        strip: Mapping[str, nn.Module],
        master: Mapping[str, nn.Module] | None = None,
        groups: Mapping[str, Sequence[int | str]] | None = None,
        group_strip: Mapping[str, nn.Module] | None = None,
        sends: Mapping[str, nn.Module] | None = None,
        track_names: Sequence[str] | None = None,
        mono: Sequence[bool] | None = None,
        songs: int = 1,
        offset_samples: int = 0,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.sample_rate = check_sample_rate(sample_rate, "Console")
        if int(offset_samples) != offset_samples:
            raise ValueError(f"Console: offset_samples must be a whole number, got {offset_samples}")
        self.offset_samples = int(offset_samples)
        if int(tracks) < 1 or int(songs) < 1:
            raise ValueError(f"Console: tracks and songs must be >= 1, got {tracks}, {songs}")
        self.tracks, self.songs = int(tracks), int(songs)
        self.track_names = list(track_names) if track_names else [f"track{i}" for i in range(tracks)]
        if len(self.track_names) != self.tracks:
            raise ValueError(
                f"Console: {len(self.track_names)} track names for {self.tracks} tracks"
            )
        n_items = self.songs * self.tracks
        self.strip = Bus(sample_rate, strip, items=n_items)
        self.master = Bus(sample_rate, master or {}, items=self.songs)
        self.groups = {k: self._indices(k, v) for k, v in (groups or {}).items()}
        routing = torch.zeros(len(self.groups), self.tracks)
        for g, members in enumerate(self.groups.values()):
            routing[g, members] = 1.0
        if (routing.sum(0) > 1).any():
            raise ValueError("Console: a track is routed to more than one group")
        self.register_buffer("routing", routing)
        self.register_buffer("direct", (routing.sum(0) == 0).to(torch.float32))
        self.group_strip = Bus(
            sample_rate, group_strip or {}, items=max(1, self.songs * len(self.groups))
        )
        self.sends = nn.ModuleDict(dict(sends or {}))
        self.send_levels = nn.ModuleDict(
            {k: BoundedParam(SEND_SPEC, torch.full((n_items,), SEND_SPEC.default), k) for k in self.sends}
        )
        self.return_levels = nn.ModuleDict(
            {k: BoundedParam(RETURN_SPEC, torch.zeros(self.songs), k) for k in self.sends}
        )
        mono_flags = list(mono) if mono is not None else [False] * self.tracks
        if len(mono_flags) != self.tracks:
            raise ValueError(f"Console: {len(mono_flags)} mono flags for {self.tracks} tracks")
        self.mono = list(mono_flags)  # which tracks are mono sources carried as two channels
        mono_items = torch.tensor(mono_flags, dtype=torch.bool).repeat(self.songs)
        for effect in self.strip.effects.values():
            if hasattr(effect, "mono_items"):
                effect.mono_items = mono_items
        self._config = {
            "groups": {k: list(v) for k, v in self.groups.items()},
            "mono": mono_flags,
            "track_names": self.track_names,
            "offset_samples": self.offset_samples,
        }
        if values:
            self.load_values(values)

    def _indices(self, group: str, members: Sequence[int | str]) -> list[int]:
        out = []
        for m in members:
            if isinstance(m, str):
                if m not in self.track_names:
                    raise ValueError(f"Console: group {group!r} names unknown track {m!r}")
                out.append(self.track_names.index(m))
            elif 0 <= int(m) < self.tracks:
                out.append(int(m))
            else:
                raise ValueError(f"Console: group {group!r} has track index {m} out of range")
        return out

    def named_values(self) -> dict[str, BoundedParam]:
        """Every parameter by a readable path: ``strip.eq.gain_db``, ``sends.reverb.send_db``."""
        out: dict[str, BoundedParam] = {}
        for prefix, bus in (("strip", self.strip), ("group", self.group_strip), ("master", self.master)):
            out.update({f"{prefix}.{k}": v for k, v in bus.named_values().items()})
        for k, p in self.send_levels.items():
            out[f"sends.{k}.send_db"] = p  # type: ignore[assignment]
        for k, p in self.return_levels.items():
            out[f"sends.{k}.return_db"] = p  # type: ignore[assignment]
        for name, fx in self.sends.items():
            for path, p in bounded_params(fx).items():
                out[f"sends.{name}.{path.replace('params.', '')}"] = p
        return out

    def snapshot(self) -> dict[str, Tensor]:
        """A detached copy of every value (physical units), for :meth:`load_values` to put back."""
        return {k: p.exact().detach().clone() for k, p in self.named_values().items()}

    def load_values(self, values: Mapping[str, Any]) -> None:
        params = self.named_values()
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise ValueError(f"Console: unknown parameter(s) {unknown}")
        for key, value in values.items():
            params[key].set(torch.as_tensor(value, dtype=torch.float64))

    def select(self, patterns: Sequence[str]) -> list[nn.Parameter]:
        """:func:`select` over the console's parameters."""
        return select(self.named_values(), patterns)

    def prior(self, initial: Mapping[str, Tensor]) -> Tensor:
        """:func:`prior` over the console's fitted parameters."""
        return prior(self.named_values(), initial)

    def _matrix_tail(self) -> list[str]:
        """The strip's trailing effects that are channel matrices (pan, width, balance,
        fader gain): they fold into one matrix per track, applied in the track sum."""
        names = list(self.strip.effects)
        tail: list[str] = []
        for name in reversed(names):
            if not hasattr(self.strip.effects[name], "channel_matrix"):
                break
            tail.insert(0, name)
        return tail

    def forward(self, stems: Tensor) -> Tensor:
        check_multitrack(stems, "Console")
        s, n, c, t = stems.shape
        if (s, n) != (self.songs, self.tracks):
            raise ValueError(
                f"Console: built for {self.songs} song(s) x {self.tracks} tracks, "
                f"got stems of shape {tuple(stems.shape)}"
            )
        tail = self._matrix_tail()
        tracks = self.strip(stems.reshape(s * n, c, t), until=tail[0] if tail else None)
        matrix = None
        for name in tail:
            # Pan, width and fader are linear and time-invariant: their product is one
            # (tracks, 2, C) matrix, so the strip's last passes cost nothing on their own.
            # The first sees (and checks) the audio; the rest only need its shape.
            probe = tracks if matrix is None else tracks.new_zeros(s * n, matrix.shape[1], 1)
            step = self.strip.effects[name].channel_matrix(probe)  # type: ignore[operator]
            step = step.expand(s * n, *step.shape[1:])
            matrix = step if matrix is None else torch.bmm(step, matrix)
        if matrix is not None and matrix.shape[1] != 2 or matrix is None and tracks.shape[1] != 2:
            raise ValueError("Console: the channel strip must output stereo (add a Pan)")
        if matrix is not None and not self.groups and not self.sends:
            # Every track goes straight to the master, so the routing is one product
            # (s, 2, n C) @ (s, n C, T): each track is read once and only the mix is
            # written; its backward is two products as well.
            ch = tracks.shape[1]
            m = matrix.to(tracks.dtype).view(s, n, 2, ch).permute(0, 2, 1, 3).reshape(s, 2, n * ch)
            return self._place(self.master(torch.bmm(m, tracks.reshape(s, n * ch, t))))
        if matrix is not None:
            tracks = apply_matrix(tracks, matrix)
        tracks = tracks.view(s, n, 2, t)
        master_in = (tracks * self.direct.view(1, n, 1, 1)).sum(1)
        if self.groups:
            g = len(self.groups)
            bus_in = torch.einsum("gn,snct->sgct", self.routing.to(tracks.dtype), tracks)
            master_in = master_in + self.group_strip(bus_in.reshape(s * g, 2, t)).view(s, g, 2, t).sum(1)
        for name, fx in self.sends.items():
            level = db_to_amp(self.send_levels[name]()).to(tracks.dtype).view(s, n, 1, 1)
            ret = db_to_amp(self.return_levels[name]()).to(tracks.dtype).view(s, 1, 1)
            master_in = master_in + ret * fx((tracks * level).sum(1))
        return self._place(self.master(master_in))

    def solo(self, stems: Tensor) -> Tensor:
        """Each track alone through the console, master bus included: ``(1, N, C, T)`` ->
        ``(N, 2, T)``, what track ``k`` adds to the mix on its own (one song).

        The strips already run track by track, so one strip pass serves every track; each
        track's send returns are added and the ``N`` solo signals go through the master bus
        as a batch (its parameters are per song and broadcast), instead of ``N`` renders of
        the whole console. Sends fed at most -60 dB are left out (they add under 0.001 % of
        the track's energy). With subgroups the tracks are rendered one at a time.
        """
        if self.songs != 1 or stems.ndim != 4 or stems.shape[:2] != (1, self.tracks):
            raise ValueError(
                f"Console.solo: needs a one-song console and stems (1, {self.tracks}, C, T), "
                f"got {tuple(stems.shape)}"
            )
        n = stems.shape[1]
        if self.groups:
            out = []
            for k in range(n):
                alone = torch.zeros_like(stems)
                alone[:, k] = stems[:, k]
                out.append(self(alone)[0])
            return torch.stack(out)
        tracks = self.strip(stems[0])
        pre = tracks
        for name, fx in self.sends.items():
            level_db = self.send_levels[name]().detach()
            if float(level_db.max()) <= -60.0:
                continue
            level = db_to_amp(level_db).to(tracks.dtype).view(n, 1, 1)
            ret = db_to_amp(self.return_levels[name]().detach()).to(tracks.dtype).view(-1, 1, 1)
            pre = pre + ret * fx(tracks * level)
        return self._place(self.master(pre))

    def _place(self, mix: Tensor) -> Tensor:
        """The mix moved by ``offset_samples``, same length (differentiable)."""
        k = self.offset_samples
        if k == 0:
            return mix
        if abs(k) >= mix.shape[-1]:
            return torch.zeros_like(mix)
        if k > 0:
            return torch.nn.functional.pad(mix[..., :-k], (k, 0))
        return torch.nn.functional.pad(mix[..., -k:], (0, -k))

    def preset(self) -> dict[str, Any]:
        return {
            "_target_": "diffmix.console.Console",
            "sample_rate": self.sample_rate,
            "tracks": self.tracks,
            "songs": self.songs,
            "strip": self.strip._templates,
            "master": self.master._templates,
            "group_strip": self.group_strip._templates,
            "sends": {k: fx.preset() for k, fx in self.sends.items()},  # type: ignore[operator]
            **self._config,
            "values": {k: _plain(p.exact()) for k, p in self.named_values().items()},
        }


def as_stereo_stems(stems: Sequence[Tensor], effect: str = "Console") -> tuple[Tensor, list[bool]]:
    """Stack ``(channels, time)`` stems of equal length into ``(1, N, 2, T)``.

    Mono stems become two equal channels and are flagged, so the console pans them with
    the mono law.
    """
    out, mono = [], []
    for i, stem in enumerate(stems):
        check_audio(stem.unsqueeze(0), effect, channels=(1, 2), name=f"stem {i}")
        mono.append(stem.shape[0] == 1)
        out.append(stem.expand(2, -1) if stem.shape[0] == 1 else stem)
    return torch.stack(out).unsqueeze(0), mono
