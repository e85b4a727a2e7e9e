"""A small reader and writer of the safetensors file format (no pickle, no code).

Layout (https://github.com/huggingface/safetensors, "Format"): an unsigned 64-bit
little-endian header length ``N``; ``N`` bytes of UTF-8 JSON mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the byte buffer that
follows) plus an optional ``"__metadata__"`` map of strings to strings; then the buffer of
raw little-endian, C-ordered tensor bytes. The header is padded with spaces to a multiple
of 8 bytes, as the reference writer does, so every tensor starts aligned.

Reading parses JSON and copies bytes: it never executes anything from the file. Files
written here load with the ``safetensors`` package and the other way round.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffmix.io import atomic_path

DTYPES: dict[str, tuple[torch.dtype, str]] = {  # safetensors name -> (torch, numpy "<" dtype)
    "F64": (torch.float64, "<f8"),
    "F32": (torch.float32, "<f4"),
    "F16": (torch.float16, "<f2"),
    "I64": (torch.int64, "<i8"),
    "I32": (torch.int32, "<i4"),
    "I16": (torch.int16, "<i2"),
    "I8": (torch.int8, "<i1"),
    "U8": (torch.uint8, "<u1"),
    "BOOL": (torch.bool, "|b1"),
}
_NAMES = {torch_dtype: name for name, (torch_dtype, _) in DTYPES.items()}
MAX_HEADER = 100_000_000  # the reference reader's limit


class TensorFileError(ValueError):
    """A file that is not a well-formed safetensors file (one line: what is wrong)."""


def save(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> tensor) and string ``metadata`` to ``path`` atomically."""
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata must map str to str; bad keys {bad}")
        header["__metadata__"] = dict(metadata)
    blobs, offset = [], 0
    for name in sorted(tensors):  # a fixed order: the same tensors give the same bytes
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _NAMES:
            raise TypeError(f"safetensors: {name} has unsupported dtype {t.dtype}")
        data = t.numpy().astype(DTYPES[_NAMES[t.dtype]][1], copy=False).tobytes()
        header[name] = {
            "dtype": _NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in blobs:
            f.write(data)


def load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read ``(tensors, metadata)`` from a safetensors file; TensorFileError if malformed."""
    p = Path(path)
    buf = p.read_bytes()
    if len(buf) < 8:
        raise TensorFileError(f"{p}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > MAX_HEADER or 8 + n > len(buf):
        raise TensorFileError(f"{p}: not a safetensors file (header length {n} out of bounds)")
    try:
        header = json.loads(buf[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorFileError(f"{p}: not a safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise TensorFileError(f"{p}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise TensorFileError(f"{p}: __metadata__ must map strings to strings")
    body = memoryview(buf)[8 + n :]
    tensors = {}
    for name, info in header.items():
        try:
            torch_dtype, np_dtype = DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TensorFileError(f"{p}: tensor {name!r} has a bad header entry ({exc})") from exc
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= begin <= end <= len(body) or end - begin != count * np.dtype(np_dtype).itemsize:
            raise TensorFileError(
                f"{p}: tensor {name!r} has data offsets {begin}..{end} that don't fit its shape"
            )
        arr = np.frombuffer(body[begin:end], dtype=np_dtype).reshape(shape)
        tensors[name] = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True)).to(torch_dtype)
    return tensors, {str(k): v for k, v in metadata.items()}
