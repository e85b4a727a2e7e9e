"""Every third-party module diffmix imports is a declared base dependency.

CI installs the test extras, so a missing base dependency would pass every other test
(scipy did: ``./scripts/run`` died on a fresh machine). This reads the imports of every
module under ``diffmix/`` and checks them against ``pyproject.toml``'s
``[project].dependencies``, resolving import names to distributions as installed.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Import names whose distribution ships inside another base dependency.
BUNDLED = {
    "omegaconf": "hydra-core",  # hydra-core's own requirement, the config objects it hands us
    "yaml": "hydra-core",  # PyYAML, required by omegaconf
    "triton": "torch",  # shipped with torch's Linux wheels; imported lazily
}


def base_dependencies() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_norm(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in project["dependencies"]}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports() -> dict[str, list[str]]:
    """Top-level import name -> the modules that import it (anywhere, lazily too)."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "diffmix").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("diffmix", "__future__"):
                    continue
                found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


# Modules an extra provides, imported only inside a function that turns ImportError into a
# one-line message naming the extra.
EXTRA_ONLY = {"matplotlib": "plot"}


def test_every_import_is_a_base_dependency():
    deps = base_dependencies()
    packages = metadata.packages_distributions()
    missing = {}
    for top, where in third_party_imports().items():
        if top in EXTRA_ONLY:
            continue
        dists = {_norm(d) for d in packages.get(top, [])} | ({BUNDLED[top]} if top in BUNDLED else set())
        if not dists & deps:
            missing[top] = sorted(set(where))
    assert not missing, f"imported but not a base dependency in pyproject.toml: {missing}"


def test_extra_only_imports_name_their_extra():
    for top, extra in EXTRA_ONLY.items():
        for rel in sorted(set(third_party_imports().get(top, []))):
            text = (ROOT / rel).read_text()
            tree = ast.parse(text)
            top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not any(top in ast.dump(n) for n in top_level), f"{rel} imports {top} at module level"
            assert f"diffmix[{extra}]" in text, f"{rel} imports {top} without naming the '{extra}' extra"


def test_the_check_sees_a_missing_dependency():
    # The check must be able to fail: scipy is a test extra, not a base dependency.
    deps = base_dependencies()
    assert "scipy" not in deps and "numpy" in deps and "torch" in deps
    assert not {_norm(d) for d in metadata.packages_distributions().get("scipy", [])} & deps
