"""The README's layout table names every module and package under diffmix/, and nothing
that isn't there."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout_paths() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "README.md has no layout table under '## Layout'"
    return {p for row in rows for p in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def _modules() -> set[str]:
    """Every top-level module and every package (a folder with ``__init__.py``) under
    diffmix/; a package's own modules are described by its row."""
    pkg = ROOT / "diffmix"
    found = {f"diffmix/{f.name}" for f in pkg.glob("*.py")}
    found |= {f"diffmix/{d.name}/" for d in pkg.iterdir() if (d / "__init__.py").is_file()}
    return found


def test_every_module_under_diffmix_is_in_the_readme_layout_table():
    missing = _modules() - _layout_paths()
    assert not missing, f"README.md's layout table omits {sorted(missing)}: add a row"


def test_every_path_in_the_readme_layout_table_exists():
    stale = sorted(p for p in _layout_paths() if not (ROOT / p).exists())
    assert not stale, f"README.md's layout table names paths that don't exist: {stale}"


def test_the_check_sees_a_module_missing_from_the_table(tmp_path, monkeypatch):
    (tmp_path / "diffmix").mkdir()
    (tmp_path / "diffmix" / "newthing.py").write_text("")
    table = "| path | what |\n|---|---|\n| `diffmix/old.py` | x |\n"
    (tmp_path / "README.md").write_text(f"# x\n\n## Layout\n\n{table}")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _modules() == {"diffmix/newthing.py"}
    assert _modules() - _layout_paths() == {"diffmix/newthing.py"}
    assert not (tmp_path / "diffmix/old.py").exists()  # and the stale row is seen by the other test
