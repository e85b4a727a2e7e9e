"""Import-time guard for the torch/torchaudio pair.

torchaudio's compiled library loads only against the exact torch release it was
built for; a mismatch surfaces as an opaque ``OSError`` about undefined symbols.
We compare the two installed versions first and fail with a message that names
both and the fix.
"""

from __future__ import annotations

from importlib import metadata

PINNED_TORCH = "2.11.0"
PINNED_TORCHAUDIO = "2.11.0"


def _release(version: str) -> str:
    """'2.11.0+cu130' -> '2.11.0'."""
    return version.split("+", 1)[0]


def check_torch_pair() -> None:
    """Raise ImportError if torch and torchaudio are not built for each other."""
    try:
        torch_v = metadata.version("torch")
        audio_v = metadata.version("torchaudio")
    except metadata.PackageNotFoundError as exc:  # pragma: no cover - install error
        raise ImportError(
            f"diffmix needs torch and torchaudio installed ({exc.name} is missing). "
            f"Install the matching pair: pip install torch=={PINNED_TORCH} "
            f"torchaudio=={PINNED_TORCHAUDIO}"
        ) from exc
    if _release(torch_v) != _release(audio_v):
        raise ImportError(
            f"torch {torch_v} and torchaudio {audio_v} do not match: torchaudio loads only "
            f"against the torch release it was built for. Fix: pip install "
            f"torch=={PINNED_TORCH} torchaudio=={PINNED_TORCHAUDIO} "
            f"(or run scripts/setup-env, which uses constraints.txt)"
        )


def import_torchaudio():  # noqa: ANN201 - returns the module
    """Import torchaudio, turning a loader failure into a clear ImportError."""
    check_torch_pair()
    try:
        import torchaudio
    except OSError as exc:  # pragma: no cover - depends on a broken install
        import torch

        raise ImportError(
            f"torchaudio failed to load against torch {torch.__version__}: {exc}. Fix: pip "
            f"install torch=={PINNED_TORCH} torchaudio=={PINNED_TORCHAUDIO}"
        ) from exc
    return torchaudio
