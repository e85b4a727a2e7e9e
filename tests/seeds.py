"""Seeds for the tests that draw their cases at random.

Each call site gets its own seed, drawn from a digest of the code under test (``diffmix/``,
``tests/``, ``configs/``): every change to the code draws new cases, and a run is
reproducible from the tree alone, so CI's run of a commit draws what the developer's run of
that commit drew. ``DIFFMIX_TEST_SEED=fresh`` draws from the OS instead (for sweeps);
``DIFFMIX_TEST_SEED=<int>`` mixes that integer into the digest. The seed in use is printed by
each test and its salt in pytest's header.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SOURCES = ("diffmix", "tests", "configs")
_SUFFIXES = (".py", ".yaml", ".yml")
_CALLS: collections.Counter[str] = collections.Counter()


@functools.lru_cache(maxsize=1)
def salt() -> str:
    """The salt every seed is drawn from: ``fresh``, or a hex digest of the code (and of
    ``DIFFMIX_TEST_SEED`` when it is an integer)."""
    env = os.environ.get("DIFFMIX_TEST_SEED", "").strip()
    if env == "fresh":
        return "fresh"
    h = hashlib.sha256(env.encode())
    for top in _SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT)
            if path.suffix in _SUFFIXES and path.is_file() and not any(
                    p.startswith((".", "__pycache__")) for p in rel.parts):
                h.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def drawn_seed(below: int) -> int:
    """A seed in ``[0, below)`` for the calling line, the running test (if any) and how
    many times that pair has drawn before: each call draws its own."""
    if salt() == "fresh":
        return secrets.randbelow(below)
    caller = sys._getframe(1)
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    site = f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}|{test}"
    _CALLS[site] += 1
    digest = hashlib.sha256(f"{salt()}:{site}:{_CALLS[site]}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % below
