#!/usr/bin/env python
"""Run diffmix's benchmarks against its peers and rewrite BENCHMARKS.md.

Usage:
    python scripts/bench.py                 # every workload
    python scripts/bench.py eq dynamics     # chosen workloads; other sections are kept
    python scripts/bench.py --quick eq      # short signals, for a smoke run (not recorded)

Each workload is a module ``scripts/benchmarks/<name>.py`` with ``TITLE`` and
``run(quick: bool) -> str | None``, returning a markdown body whose ratios were measured in
the same run as the peers (``None``: it cannot run on this machine, e.g. ``gpu`` without a
GPU, and its section is kept). The runner stamps the machine and the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import re
import sys
import time
from pathlib import Path

# diffmix's allocator and OpenMP defaults (its __init__: huge pages, passive OpenMP waits),
# set before any workload imports torch, so every peer in the process runs under them; the
# CLI's mastering jobs, run as children, turn huge pages off as they do for a user.
import diffmix  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
OUT = ROOT / "BENCHMARKS.md"
HEADER = """# Benchmarks

Written by `python scripts/bench.py`; each section records its machine and command. Ratios
compare diffmix with its peers measured in the same run, on the same signals. Times are
medians of repeated runs after a warm-up (compilation excluded).
"""


def available() -> list[str]:
    return sorted(
        p.stem for p in (ROOT / "scripts" / "benchmarks").glob("*.py") if not p.stem.startswith("_")
    )


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores ({threads} torch threads), {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}"
    )


def replace_section(text: str, name: str, body: str) -> str:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("workloads", nargs="*", help=f"any of {available()}")
    parser.add_argument("--quick", action="store_true", help="short smoke run; BENCHMARKS.md untouched")
    args = parser.parse_args()
    names = args.workloads or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {available()}")
    text = OUT.read_text() if OUT.exists() else HEADER
    command = "python scripts/bench.py " + " ".join(names if args.workloads else [])
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        body = module.run(quick=args.quick)
        took = time.perf_counter() - t0
        if body is None:  # the workload cannot run here (e.g. no GPU): keep its section
            print(f"{name}: skipped on this machine; BENCHMARKS.md keeps its section")
            continue
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        section = (
            f"## {module.TITLE}\n\n_Machine: {machine()}._  \n"
            f"_Command: `{command.strip()}` ({stamp}, {took:.0f} s)._\n\n{body.strip()}\n"
        )
        print(section)
        text = replace_section(text, name, section)
    if not args.quick:
        OUT.write_text(text)
        print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
