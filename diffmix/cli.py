"""``diffmix <job> [key=value ...]``: the one console command, driven by Hydra.

Jobs are discovered from :mod:`diffmix.jobs`; each takes Hydra overrides and ``-m``
(multirun). Bad input ends with one line on stderr and a non-zero exit:
``diffmix <job>: error: <what is wrong>``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

from diffmix.io import AudioFileError

EXIT_USER_ERROR = 2


def config_dir() -> Path:
    """The Hydra config directory: ``$DIFFMIX_CONFIG_DIR`` or the checkout's ``configs/``."""
    env = os.environ.get("DIFFMIX_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "configs"


def jobs() -> dict[str, str]:
    """Job name -> one-line help, for every module in :mod:`diffmix.jobs`."""
    import diffmix.jobs as pkg

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        spec = importlib.util.find_spec(f"diffmix.jobs.{info.name}")
        doc = ""
        if spec is not None and spec.origin:
            doc = _first_docstring_line(Path(spec.origin))
        found[info.name] = doc
    return dict(sorted(found.items()))


def _first_docstring_line(path: Path) -> str:
    import ast

    try:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except SyntaxError:
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage() -> str:
    lines = [
        "usage: diffmix <job> [key=value ...] [-m] [--help]",
        "",
        "jobs:",
        *(f"  {name:<10} {doc}" for name, doc in jobs().items()),
        "",
        "`diffmix <job> --help` shows a job's options and defaults.",
        "Options are Hydra overrides (key=value); -m sweeps comma-separated values.",
    ]
    return "\n".join(lines)


def job_help(name: str, module: ModuleType) -> str:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(config_name=name)
    doc = (module.__doc__ or "").strip()
    return f"usage: diffmix {name} [key=value ...]\n\n{doc}\n\ndefaults:\n{OmegaConf.to_yaml(cfg)}"


def _fail(job: str, message: str) -> int:
    print(f"diffmix {job}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _remove_bookkeeping_only_run_dir() -> None:
    """After a failed job, remove Hydra's run dir if it holds only Hydra's own files."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    try:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return
    if not run_dir.is_dir():
        return
    entries = [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if not entries:
        import logging

        logging.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else EXIT_USER_ERROR
    name, rest = args[0], args[1:]
    known = jobs()
    if name not in known:
        return _fail(name, f"unknown job; choose one of {sorted(known)}")
    module = importlib.import_module(f"diffmix.jobs.{name}")
    if "--help" in rest or "-h" in rest:
        print(job_help(name, module))
        return 0

    import hydra
    from omegaconf import DictConfig

    status = {"code": 0}

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=name)
    def _task(cfg: DictConfig) -> None:
        try:
            status["code"] = max(status["code"], int(module.run(cfg) or 0))
        except (ValueError, AudioFileError, FileNotFoundError) as exc:
            status["code"] = _fail(name, str(exc).splitlines()[0] if str(exc) else repr(exc))
            _remove_bookkeeping_only_run_dir()

    saved = sys.argv
    sys.argv = [f"diffmix-{name}", *rest]
    try:
        _task()
    finally:
        sys.argv = saved
    return status["code"]


if __name__ == "__main__":
    raise SystemExit(main())
