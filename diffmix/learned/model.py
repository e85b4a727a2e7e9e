"""The predictor: normalised features -> an MLP -> one unconstrained value per chain setting,
mapped onto its range.

Each head's output goes through a sigmoid onto its *training* range (the prior its
settings were drawn from, in the log domain for log-scaled parameters), which lies inside
the parameter's :class:`~diffmix.params.ParamSpec` range: no prediction can leave the
spec, and none goes where training never went (a song unlike the corpus can't push a
compressor to 100:1). A head without a training range stays at its start. An untrained
model predicts the chain's configured start (the heads' offsets are its raw values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffmix.params import ParamSpec


@dataclass(frozen=True)
class Head:
    """One predicted chain parameter: ``key`` (``"<effect>.<param>"``), its per-song
    ``shape`` (``()`` or ``(bands,)``), its spec and its start value (physical)."""

    key: str
    shape: tuple[int, ...]
    spec: ParamSpec
    start: tuple[float, ...]
    range: tuple[float, float] | None = None  # training range (physical); None: fixed at start

    def bounds(self) -> tuple[float, float] | None:
        """The training range clipped to the spec, warped (log for log scales); None: fixed."""
        if self.range is None:
            return None
        lo, hi = max(float(self.range[0]), self.spec.min), min(float(self.range[1]), self.spec.max)
        if not lo < hi:
            return None
        return (math.log(lo), math.log(hi)) if self.spec.scale == "log" else (lo, hi)

    def output_range(self) -> tuple[float, float]:
        """The lowest and highest value the head can output (physical)."""
        if self.bounds() is None:
            return min(self.start), max(self.start)
        lo, hi = float(self.range[0]), float(self.range[1])  # type: ignore[index]
        return max(lo, self.spec.min), min(hi, self.spec.max)

    def to_raw(self, value: Tensor) -> Tensor:
        """Physical value -> raw (the inverse of :meth:`from_raw`, clamped inside the range)."""
        b = self.bounds()
        if b is None:
            return torch.zeros_like(value)
        unit = ((self.warp(value) - b[0]) / (b[1] - b[0])).clamp(1e-6, 1 - 1e-6)
        return torch.logit(unit)

    def from_raw(self, raw: Tensor) -> Tensor:
        """Raw ``(B, *shape)`` -> physical values, float64, inside the training range and
        the spec. Differentiable in ``raw``."""
        b = self.bounds()
        raw = raw.double()
        if b is None:
            start = torch.tensor(self.start, dtype=torch.float64, device=raw.device).reshape(self.shape)
            return start + 0.0 * raw  # keeps the graph (a zero gradient) and the batch shape
        v = b[0] + (b[1] - b[0]) * torch.sigmoid(raw)
        v = torch.exp(v) if self.spec.scale == "log" else v
        # exp(log(max)) may round a hair past the bound: clamp onto the spec.
        return v.clamp(self.spec.min, self.spec.max)

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def as_dict(self) -> dict[str, Any]:
        s = self.spec
        return {
            "key": self.key,
            "shape": list(self.shape),
            "min": s.min,
            "max": s.max,
            "default": s.default,
            "scale": s.scale,
            "start": list(self.start),
            "range": None if self.range is None else [float(v) for v in self.range],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Head:
        spec = ParamSpec(
            str(d["key"]).split(".")[-1],
            float(d["min"]),
            float(d["max"]),
            float(d["default"]),
            scale=str(d["scale"]),
        )
        rng = d.get("range")
        return cls(
            str(d["key"]),
            tuple(int(s) for s in d["shape"]),
            spec,
            tuple(float(v) for v in d["start"]),
            None if rng is None else (float(rng[0]), float(rng[1])),
        )

    def warp(self, value: Tensor) -> Tensor:
        """Physical value -> the domain its range is linear in (log for log scales)."""
        return torch.log(value) if self.spec.scale == "log" else value


class Predictor(nn.Module):
    """Features ``(B, F)`` -> raw head outputs ``(B, sum of head sizes)``: an MLP.

    Args:
        n_features: length of the feature vector.
        heads: the predicted parameters, in order.
        hidden: widths of the hidden layers (GELU between them).
        dropout: dropout after each hidden layer while training.
        mean, std: input normalisation statistics, ``(F + extra_inputs,)`` (identity when None).
        encoder: a module run on the normalised extra inputs (subclasses: :meth:`encode`),
            whose ``encoded`` outputs join the features before the MLP.
        extra_inputs, encoded: input entries after the features, and the encoder's width.

    :meth:`values` maps raw outputs to physical values per head, inside each range.
    Differentiable in the weights. CUDA: yes.
    """

    kind = "mlp"
    mean: Tensor
    std: Tensor
    offset: Tensor

    def __init__(
        self,
        n_features: int,
        heads: Sequence[Head],
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        *,
        encoder: nn.Module | None = None,
        extra_inputs: int = 0,
        encoded: int = 0,
    ) -> None:
        super().__init__()
        self.heads = list(heads)
        self.hidden = [int(h) for h in hidden]
        self.n_features = int(n_features)
        self.dropout = float(dropout)
        n_in = self.n_features + int(extra_inputs)
        if encoder is not None:
            self.encoder = encoder
        n_out = sum(h.size for h in self.heads)
        layers: list[nn.Module] = []
        width = self.n_features + int(encoded)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.GELU()]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width = h
        last = nn.Linear(width, n_out)
        nn.init.zeros_(last.weight)  # an untrained model predicts the start exactly
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.register_buffer("mean", torch.zeros(n_in) if mean is None else mean.float().clone())
        self.register_buffer("std", torch.ones(n_in) if std is None else std.float().clone())
        starts = [torch.tensor(h.start, dtype=torch.float64).reshape(h.shape) for h in self.heads]
        offset = [h.to_raw(v).reshape(-1) for h, v in zip(self.heads, starts, strict=True)]
        self.register_buffer("offset", torch.cat(offset).float())

    def forward(self, features: Tensor) -> Tensor:
        z = (features.to(self.mean.dtype) - self.mean) / self.std
        return self.net(self.encode(z)) + self.offset

    def encode(self, z: Tensor) -> Tensor:
        """Normalised inputs -> what the MLP takes (the MLP: the features themselves)."""
        return z

    def dims(self) -> dict[str, Any]:
        """What rebuilds this model (the checkpoint's ``model`` entry)."""
        return {"kind": self.kind, "hidden": self.hidden, "dropout": self.dropout,
                "n_features": self.n_features, "weights": self.weight_count()}

    def values(self, raw: Tensor) -> dict[str, Tensor]:
        """Raw outputs ``(B, n_out)`` -> ``{key: (B, *shape)}`` physical values in range."""
        out, i = {}, 0
        for h in self.heads:
            part = raw[:, i : i + h.size].reshape(raw.shape[0], *h.shape)
            out[h.key] = h.from_raw(part)
            i += h.size
        return out

    def weight_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


class MelCNN(Predictor):
    """Features plus log-mel spectrograms -> raw head outputs: a small CNN encodes the
    spectrograms (mid and side of the input and of the reference,
    :func:`~diffmix.learned.features.mel_input`), its pooled output joins the features,
    and the MLP and heads are :class:`Predictor`'s (the same ranges, the same start).

    Args:
        n_features, heads, hidden, dropout: as :class:`Predictor`.
        mean, std: ``(F + 4 * bands * frames,)``.
        mel: ``{"bands", "frames", "n_fft", "seconds"}`` of the spectrogram input.
        channels: output channels of the conv blocks (3x3 conv, GELU, 2x2 max-pool each;
            then a global average).

    Shape:
        ``(B, F + 4 * bands * frames)`` -> ``(B, sum of head sizes)``.

    Differentiable in the weights. CUDA: yes (meant for GPU training).
    """

    kind = "cnn"

    def __init__(
        self,
        n_features: int,
        heads: Sequence[Head],
        hidden: Sequence[int] = (256,),
        dropout: float = 0.0,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        *,
        mel: Mapping[str, Any],
        channels: Sequence[int] = (16, 32, 64),
    ) -> None:
        blocks: list[nn.Module] = []
        c_in = MEL_CHANNELS
        for c in channels:
            blocks += [nn.Conv2d(c_in, int(c), 3, padding=1), nn.GELU(), nn.MaxPool2d(2, ceil_mode=True)]
            c_in = int(c)
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        spec: dict[str, Any] = {"bands": int(mel["bands"]), "frames": int(mel["frames"]),
                                "n_fft": int(mel["n_fft"]), "seconds": float(mel["seconds"])}
        extra = MEL_CHANNELS * int(mel["bands"]) * int(mel["frames"])
        super().__init__(n_features, heads, hidden, dropout, mean, std,
                         encoder=nn.Sequential(*blocks), extra_inputs=extra, encoded=c_in)
        self.mel = spec
        self.channels = [int(c) for c in channels]

    def encode(self, z: Tensor) -> Tensor:
        f = z[:, : self.n_features]
        m = z[:, self.n_features :].reshape(z.shape[0], MEL_CHANNELS, self.mel["bands"], self.mel["frames"])
        return torch.cat([f, self.encoder(m)], -1)

    def dims(self) -> dict[str, Any]:
        return {**super().dims(), "mel": dict(self.mel), "channels": self.channels}


MEL_CHANNELS = 4  # mid and side of the input, mid and side of the reference
KINDS: dict[str, type[Predictor]] = {"mlp": Predictor, "cnn": MelCNN}


def build(dims: Mapping[str, Any], heads: Sequence[Head], mean: Tensor | None = None,
          std: Tensor | None = None) -> Predictor:
    """The model ``dims`` describe (a checkpoint's ``model`` entry, or the job's ``model``
    node with ``n_features``); ValueError for an unknown kind."""
    kind = str(dims.get("kind", "mlp"))
    if kind not in KINDS:
        raise ValueError(f"model kind {kind!r} is not one of {sorted(KINDS)}")
    n, hidden, dropout = int(dims["n_features"]), list(dims["hidden"]), float(dims.get("dropout", 0.0))
    common = (n, heads, hidden, dropout, mean, std)
    if kind == "cnn":
        return MelCNN(*common, mel=dims["mel"], channels=list(dims.get("channels", (16, 32, 64))))
    return Predictor(*common)
