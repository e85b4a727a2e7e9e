"""Master every item of a manifest, many songs per optimiser step, resumable and sharded.

Options: ``manifest`` (CSV/JSONL with ``input`` and optional ``id``, ``reference``,
``target``, ``lufs``, ``true_peak_db`` columns; or a folder/glob of mixes; required),
``target`` (the default spec; ``targets`` holds every named spec a row may choose),
``group_size`` (songs per optimiser step; ``auto`` sizes it to the free memory),
``device``, and the master job's ``fit``/``loss``/``chain``/``delivery`` options. Under
torchrun each rank takes a disjoint shard and rank 0 merges ``results.jsonl``. Exit code
0 when every item succeeded, 3 when some failed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from diffmix.batch import (
    Item,
    barrier,
    clean_partials,
    dist_context,
    merge_results,
    read_manifest,
    run_items,
    shard,
)
from diffmix.inputs import load_mix
from diffmix.jobs._common import output_dir, pick_device
from diffmix.jobs._mastering import chain_spec, fit_options, fit_start, master_options
from diffmix.mastering import Song, master_group

EXIT_SOME_FAILED = 3
# Working memory of one song in the fit and the full-length render, per stereo sample:
# the float32 audio, its pre-limiter copy, the oversampled true-peak path and the
# autograd state of an excerpt, measured on the default chain (see BENCHMARKS.md).
BYTES_PER_SAMPLE = 64


def free_memory(device: torch.device) -> int:
    """Bytes free for work on ``device`` (CUDA: the allocator's view; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def auto_group_size(device: torch.device, seconds: float, sample_rate: int, cap: int = 64) -> int:
    """Songs per group so that half the free memory holds their working set."""
    per_song = max(1.0, seconds * sample_rate * BYTES_PER_SAMPLE)
    return int(max(1, min(cap, math.floor(0.5 * free_memory(device) / per_song))))


def item_target(cfg: DictConfig, item: Item) -> dict:
    """The item's delivery spec: ``cfg.target``, or the named spec of ``cfg.targets`` its
    manifest row chooses (a name, never a path), with its own ``lufs``/``true_peak_db``."""
    target = dict(OmegaConf.to_container(cfg.target, resolve=True))  # type: ignore[arg-type]
    name = item.extra.get("target")
    if name:
        names = sorted(cfg.get("targets") or {})
        if name not in names:
            raise ValueError(f"{item.id}: unknown target {name!r}; choose one of {names}")
        spec = OmegaConf.to_container(cfg.targets[name], resolve=True)
        if not isinstance(spec, dict):
            raise ValueError(f"{item.id}: target {name!r} is not a mapping")
        target.update(spec)
    for key in ("lufs", "true_peak_db"):
        if item.extra.get(key) not in (None, ""):
            target[key] = float(item.extra[key])
    return target


def run(cfg: DictConfig) -> int:
    rank, world = dist_context()
    device = pick_device(str(cfg.device))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    items = read_manifest(str(cfg.manifest))
    mine = shard(items, rank, world)
    out = output_dir(cfg)
    if world > 1:  # every rank must write under the same folder
        out = Path(str(cfg.out)) if cfg.get("out") else out
    results = out / f"results.rank{rank}.jsonl"

    def process(group: list[Item]):  # noqa: ANN202
        # An item's outputs appear together or not at all: what a failed attempt created
        # under its folder (a master whose report then failed to write, say) is removed.
        folders = [out / "items" / item.id for item in group]
        before = {p for d in folders if d.exists() for p in d.rglob("*")}
        try:
            yield from master_items(group)
        except BaseException:
            remove_new(folders, before)
            raise

    def master_items(group: list[Item]):  # noqa: ANN202
        # Master at the delivery rate (see the master job), else each item at its own: the
        # group is mastered in parts of one rate, so an item's rate never depends on its group.
        songs, rates = [], []
        rate = int(cfg.delivery.sample_rate) if cfg.delivery.get("sample_rate") else None
        for item in group:
            # Redoing an item: drop what a killed earlier attempt left half-written.
            clean_partials(out / "items" / item.id, recursive=True, within=out)
            x, sr = load_mix(item.input, rate, what=item.id)
            rates.append(sr)
            ref = None
            if item.extra.get("reference"):
                ref, _ = load_mix(item.extra["reference"], sr, what=f"{item.id} reference")
                ref = ref.to(device)
            songs.append(
                Song(
                    key=item.id,
                    audio=x.to(device),
                    out=out / "items" / item.id,
                    stem=f"{item.id}_master",
                    reference=ref,
                    target=item_target(cfg, item),
                    protect=tuple(str(p) for p in (item.input, item.extra.get("reference")) if p),
                )
            )
        kinds = [(r, s.reference is not None) for r, s in zip(rates, songs, strict=True)]
        for sr, with_ref in sorted(set(kinds)):
            part = [s for s, kind in zip(songs, kinds, strict=True) if kind == (sr, with_ref)]
            reports = master_group(part, sr, chain_spec(cfg, sr), fit_options(cfg),
                                   master_options(cfg), start=fit_start(cfg))
            for song, report in zip(part, reports, strict=True):
                yield {
                    "id": song.key,
                    "status": "ok",
                    "input": str(group[[g.id for g in group].index(song.key)].input),
                    "outputs": report["outputs"],
                    "achieved": report["achieved"],
                    "runtime_s": report["runtime_s"],
                }

    size = cfg.group_size
    if str(size) == "auto":
        size = auto_group_size(device, 240.0, 48000)
    bar = tqdm(total=len(mine), desc=f"batch rank {rank}", disable=not cfg.progress, leave=False)
    try:
        run_items(mine, process, results, group_size=int(size), on_progress=bar.update)
    finally:
        bar.close()
    barrier()
    failed = 0
    if rank == 0:
        clean_partials(out)  # a merge killed mid-write; rank 0 is the only writer here
        parts = [out / f"results.rank{r}.jsonl" for r in range(world)]
        rows = merge_results(parts, items, out / "results.jsonl")
        failed = sum(1 for r in rows if r["status"] != "ok")
        print(f"batch: {len(rows) - failed} ok, {failed} failed -> {out / 'results.jsonl'}")
    barrier()
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([failed], dtype=torch.int64)
        dist.broadcast(flag, 0)
        failed = int(flag)
        dist.destroy_process_group()
    return EXIT_SOME_FAILED if failed else 0


def remove_new(folders: list[Path], before: set[Path]) -> None:
    """Delete what appeared under ``folders`` since ``before`` was listed (files, then the
    folders left empty), never following links and never touching what was there."""
    for folder in folders:
        if not folder.exists():
            continue
        new = [p for p in folder.rglob("*") if p not in before]
        for p in sorted(new, key=lambda q: len(q.parts), reverse=True):
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        if folder not in before and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
