"""Batch runs over a manifest: resumable, failure-isolating, sharded across processes.

A manifest lists items (CSV or JSONL with an ``input`` column, or a folder/glob of audio
files). Each finished item appends one JSON line to a per-rank results file *after* its
outputs are renamed into place, so a run killed at any instant resumes cleanly: items with
an ``ok`` line whose outputs exist are skipped, everything else is redone. A failing item
is recorded with its error and the others go on.

Scale-out uses ``torch.distributed`` (launched by torchrun): rank ``r`` of ``w`` takes items
``r, r + w, ...``; rank 0 waits at a barrier and merges every rank's results into
``results.jsonl`` in manifest order. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffmix.inputs import AUDIO_SUFFIXES, expand_paths


@dataclass
class Item:
    """One unit of work: an ``id``, an ``input`` path and any other manifest columns."""

    id: str
    input: str
    extra: dict[str, Any] = field(default_factory=dict)


def read_manifest(spec: str | Path) -> list[Item]:
    """Items from a CSV/JSONL manifest, or from a folder or glob of audio files.

    CSV and JSONL rows need an ``input``; ``id`` defaults to the input's stem and must be
    unique. Relative paths are resolved against the manifest's folder. A manifest is data
    from anyone: an id names one folder under ``out=`` (:func:`check_id`), nothing else.
    """
    path = Path(str(spec))
    if path.suffix.lower() in (".csv", ".jsonl"):
        if not path.is_file():
            raise ValueError(f"manifest {path}: file not found")
        rows = _read_rows(path)
        base = path.parent
    else:
        files = [p for p in expand_paths(str(spec), "manifest") if p.suffix.lower() in AUDIO_SUFFIXES]
        rows = [{"input": str(p)} for p in files]
        base = Path.cwd()
    items, seen = [], set()
    for i, row in enumerate(rows, 1):
        if not row.get("input"):
            raise ValueError(f"manifest {path}: row {i} has no 'input'")
        inp = Path(str(row["input"]))
        inp = inp if inp.is_absolute() else base / inp
        item_id = check_id(str(row.get("id") or inp.stem), f"manifest {path}: row {i}")
        if item_id in seen:
            raise ValueError(f"manifest {path}: duplicate id {item_id!r} (row {i})")
        seen.add(item_id)
        extra = {k: v for k, v in row.items() if k not in ("id", "input") and v not in (None, "")}
        items.append(Item(item_id, str(inp), extra))
    if not items:
        raise ValueError(f"manifest {path}: no items")
    return items


_MAX_ID = 200


def check_id(item_id: str, where: str) -> str:
    """``item_id`` if it names exactly one folder (no separator, not ``.``/``..``, no
    leading dot, printable, at most 200 characters); else ValueError naming it.

    >>> check_id("song 1", "m")
    'song 1'
    >>> check_id("../../x", "m")
    Traceback (most recent call last):
    ...
    ValueError: m: id '../../x' must name one folder (no '/', '\\', leading '.' or control characters)
    """
    bad = (
        not item_id or len(item_id) > _MAX_ID or item_id.startswith(".")
        or any(c in item_id for c in "/\\") or not item_id.isprintable()
    )
    if bad:
        raise ValueError(
            f"{where}: id {item_id[:_MAX_ID]!r} must name one folder "
            "(no '/', '\\', leading '.' or control characters)"
        )
    return item_id


def _read_rows(path: Path) -> list[dict[str, Any]]:
    from diffmix.safe_yaml import read_text

    text = read_text(path, "manifest", max_bytes=1 << 30)
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        if rows and None in rows[0]:
            raise ValueError(f"manifest {path}: row 1 has more fields than the header")
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"manifest {path}: line {n} is not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"manifest {path}: line {n} is not a JSON object")
            rows.append(row)
    return rows


def shard(items: Sequence[Item], rank: int, world: int) -> list[Item]:
    """Rank ``rank``'s disjoint share: every ``world``-th item from ``rank``."""
    if not 0 <= rank < world:
        raise ValueError(f"shard: rank {rank} outside world of {world}")
    return list(items[rank::world])


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """Last record per item id from a results JSONL; a torn final line is ignored."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        out[rec["id"]] = rec
    return out


def done(record: dict[str, Any] | None) -> bool:
    """An item is done when its record says ok and every output it names exists."""
    if not record or record.get("status") != "ok":
        return False
    return all(Path(p).exists() for p in record.get("outputs", {}).values())


def append_result(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk before returning.

    A line torn by a kill has no trailing newline; the new record starts on a fresh line
    so it is not glued onto the torn one (which :func:`load_results` then skips).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if path.exists() and path.stat().st_size:
        with path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    with path.open("a") as fh:
        fh.write(("\n" if torn else "") + json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# --- stale temporaries -------------------------------------------------------------
# diffmix.io.atomic_path writes ``.<stem>.<random>.partial<suffix>`` beside its target and
# removes it on any exception, but a SIGKILL (or power loss) leaves it behind. An item
# that is redone, and a results file that is re-merged, first sweep their own folder.
PARTIAL_GLOB = ".*.partial*"


def clean_partials(
    folder: str | Path, *, recursive: bool = False, within: str | Path | None = None
) -> list[Path]:
    """Remove temporaries left in ``folder`` by writes a kill interrupted; returns them.

    Only files matching atomic_path's naming (``.NAME.XXXX.partial.EXT``) are touched.
    Call it only where no other process is writing (an item about to be redone). With
    ``within``, ``folder`` must resolve inside it (ValueError otherwise); symbolic links
    to folders are never followed.
    """
    root = Path(folder)
    if within is not None:
        base = Path(within).resolve()
        if not root.resolve().is_relative_to(base):
            raise ValueError(f"clean_partials: {root} is outside {base}")
    if not root.is_dir() or root.is_symlink():
        return []
    if recursive:
        found = [Path(d) / f for d, _, names in os.walk(root) for f in names]
    else:
        found = list(root.iterdir())
    removed = []
    for p in found:
        if fnmatch.fnmatch(p.name, PARTIAL_GLOB) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


Processor = Callable[[list[Item]], Iterable[dict[str, Any]]]


def run_items(
    items: Sequence[Item],
    process: Processor,
    results: Path,
    *,
    group_size: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Process the items not yet done, ``group_size`` at a time, isolating failures.

    ``process(group)`` yields one record per item (``id``, ``status``, ``outputs``,
    metrics...). If a whole group raises, each item is retried alone so one bad item
    cannot fail the others.
    """
    previous = load_results(results)
    todo = [it for it in items if not done(previous.get(it.id))]
    if on_progress:
        on_progress(len(items) - len(todo))
    for start in range(0, len(todo), max(1, group_size)):
        group = todo[start : start + max(1, group_size)]
        try:
            records = list(process(group))
        except Exception:  # noqa: BLE001 - isolate: retry each item alone
            if len(group) == 1:
                records = [_failure(group[0])]
            else:
                records = []
                for it in group:
                    try:
                        records += list(process([it]))
                    except Exception:  # noqa: BLE001
                        records.append(_failure(it))
        for rec in records:
            append_result(results, rec)
            previous[rec["id"]] = rec
        if on_progress:
            on_progress(len(group))
    return {it.id: previous[it.id] for it in items if it.id in previous}


def _failure(item: Item) -> dict[str, Any]:
    import sys

    exc = sys.exc_info()[1]
    return {"id": item.id, "input": item.input, "status": "failed", "error": _one_line(exc)}


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def merge_results(parts: Sequence[Path], items: Sequence[Item], out: Path) -> list[dict[str, Any]]:
    """Merge per-rank results into ``out`` (JSONL, manifest order), atomically."""
    from diffmix.io import atomic_write_text

    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        merged.update(load_results(part))
    rows = [merged[it.id] for it in items if it.id in merged]
    atomic_write_text(out, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return rows


def dist_context() -> tuple[int, int]:
    """``(rank, world)``, initialising torch.distributed when launched by torchrun.

    gloo on CPU, nccl when CUDA is present. A plain run is rank 0 of 1.
    """
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
