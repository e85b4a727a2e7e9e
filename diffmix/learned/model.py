"""The predictor: normalised features -> an MLP -> one unconstrained value per chain setting,
mapped onto each parameter's :class:`~diffmix.params.ParamSpec` range.

Every head's output goes through ``spec.from_raw`` (a sigmoid onto ``[min, max]``, in the
log domain for log-scaled parameters), so no prediction can leave its range. An untrained
model predicts the chain's configured start (the heads' offsets are its raw values).
"""

from __future__ import annotations

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
        return cls(
            str(d["key"]), tuple(int(s) for s in d["shape"]), spec, tuple(float(v) for v in d["start"])
        )

    def warp(self, value: Tensor) -> Tensor:
        """Physical value -> the domain its range is linear in (log for log scales)."""
        return torch.log(value) if self.spec.scale == "log" else value


class Predictor(nn.Module):
    """Features ``(B, F)`` -> raw head outputs ``(B, sum of head sizes)``.

    Args:
        n_features: length of the feature vector.
        heads: the predicted parameters, in order.
        hidden: widths of the hidden layers (GELU between them).
        dropout: dropout after each hidden layer while training.
        mean, std: feature normalisation statistics, ``(F,)`` (identity when None).

    :meth:`values` maps raw outputs to physical values per head, inside each range.
    Differentiable in the weights. CUDA: yes.
    """

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
    ) -> None:
        super().__init__()
        self.heads = list(heads)
        self.hidden = [int(h) for h in hidden]
        self.n_features = int(n_features)
        self.dropout = float(dropout)
        n_out = sum(h.size for h in self.heads)
        layers: list[nn.Module] = []
        width = self.n_features
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.GELU()]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width = h
        last = nn.Linear(width, n_out)
        nn.init.zeros_(last.weight)  # an untrained model predicts the start exactly
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.register_buffer("mean", torch.zeros(n_features) if mean is None else mean.float().clone())
        self.register_buffer("std", torch.ones(n_features) if std is None else std.float().clone())
        offset = [
            h.spec.to_raw(torch.tensor(h.start, dtype=torch.float64).reshape(h.shape)).reshape(-1)
            for h in self.heads
        ]
        self.register_buffer("offset", torch.cat(offset).float())

    def forward(self, features: Tensor) -> Tensor:
        z = (features.to(self.mean.dtype) - self.mean) / self.std
        return self.net(z) + self.offset

    def values(self, raw: Tensor) -> dict[str, Tensor]:
        """Raw outputs ``(B, n_out)`` -> ``{key: (B, *shape)}`` physical values in range."""
        out, i = {}, 0
        for h in self.heads:
            part = raw[:, i : i + h.size].reshape(raw.shape[0], *h.shape)
            # float64, then clamped: exp(log(max)) may round a hair past the bound otherwise.
            out[h.key] = h.spec.from_raw(part.double()).clamp(h.spec.min, h.spec.max)
            i += h.size
        return out

    def weight_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
