"""``diffmix <job> [key=value ...]``: the one console command, driven by Hydra.

Jobs are discovered from :mod:`diffmix.jobs`; each takes Hydra overrides and ``-m``
(multirun). Bad input ends with one line on stderr and a non-zero exit:
``diffmix <job>: error: <what is wrong>``.
"""

from __future__ import annotations

import gc
import importlib
import os
import pkgutil
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from diffmix.io import AudioFileError

if TYPE_CHECKING:
    from omegaconf import DictConfig

EXIT_USER_ERROR = 2


def config_dir() -> Path:
    """The Hydra config directory: ``$DIFFMIX_CONFIG_DIR`` or the checkout's ``configs/``."""
    env = os.environ.get("DIFFMIX_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "configs"


def job_names() -> list[str]:
    """The jobs: every public module of :mod:`diffmix.jobs`, sorted."""
    import diffmix.jobs as pkg

    return sorted(info.name for info in pkgutil.iter_modules(pkg.__path__) if not info.name.startswith("_"))


def jobs() -> dict[str, str]:
    """Job name -> one-line help, for every module in :mod:`diffmix.jobs` (each module's
    source parsed for its docstring: for the usage text, not for a run)."""
    found = {}
    for name in job_names():
        spec = importlib.util.find_spec(f"diffmix.jobs.{name}")
        doc = ""
        if spec is not None and spec.origin:
            doc = _first_docstring_line(Path(spec.origin))
        found[name] = doc
    return found


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


def _quote_non_ascii(args: list[str]) -> list[str]:
    """``input=ünï/sóng.wav`` -> ``input='ünï/sóng.wav'``: Hydra's override grammar takes
    non-ASCII characters only inside quotes, so unquoted paths would otherwise fail."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        plain = eq and value and not value.isascii() and value[0] not in "'\"[{"
        if plain and not any(c in value for c in "'\\,"):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _compose(name: str, args: list[str]) -> tuple[DictConfig | None, str | None]:
    """The job's config composed with ``args`` (Hydra's own node included), or the problem:
    an unknown key, a missing group option or a required value left out becomes one line
    here instead of Hydra's traceback."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf

    overrides = [a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as exc:
        group = next((a.split("=", 1) for a in overrides if "=" in a
                      and f"'{a.split('=', 1)[0].lstrip('+~')}/" in str(exc)), None)
        options = sorted(getattr(exc, "options", None) or [])
        if group is not None:
            choose = f"; choose one of {options}" if options else ""
            return None, f"{group[0]}={group[1]}: no such option{choose}"
        return None, _one_line(str(exc))
    except Exception as exc:  # noqa: BLE001 - Hydra raises several kinds, all user errors here
        text = str(exc)
        if "is not in struct" in text or "Could not override" in text:
            key = next((a.split("=", 1)[0].lstrip("+~") for a in overrides
                        if f"'{a.split('=', 1)[0].lstrip('+~')}'" in text), None)
            if key is not None:
                return None, f"unknown option {key} (see `diffmix {name} --help`; +{key}=... adds a new key)"
        return None, _one_line(text)
    missing = [str(k) for k in cfg if k != "hydra" and OmegaConf.is_missing(cfg, str(k))]
    if missing:
        return None, f"missing required option(s) {missing}: pass " + " ".join(f"{k}=..." for k in missing)
    return cfg, None


def _job_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` without Hydra's node, as Hydra hands a job its config; its job logging (to
    the console: the log file lives in a run directory) set up as Hydra would."""
    import logging.config

    from omegaconf import OmegaConf, open_dict

    logging_cfg = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
    if isinstance(logging_cfg, dict) and logging_cfg:
        handlers = logging_cfg.get("handlers") or {}
        handlers.pop("file", None)
        root = logging_cfg.get("root") or {}
        root["handlers"] = [h for h in root.get("handlers", []) if h in handlers]
        logging.config.dictConfig({str(k): v for k, v in logging_cfg.items()})
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _out_arg(args: list[str]) -> Path | None:
    for arg in args:
        if arg.startswith("out="):
            value = arg[4:].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return Path(value) if value and value != "null" else None
    return None


def _check_out(out: Path) -> str | None:
    """``out=`` must be a folder we can write, or creatable: checked before any work."""
    if out.exists() and not out.is_dir():
        return f"out={out} is a file, not a folder"
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"out={out}: {probe} is a file, not a folder"
    import tempfile

    try:  # a real write: permissions, read-only mounts and root all answer truthfully
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return f"out={out}: {probe} is not writable ({exc.strerror or exc})"
    return None


def _files(folder: Path | None) -> set[Path]:
    if folder is None or not folder.is_dir():
        return set()
    return {p for p in folder.rglob("*")}


def _undo(out: Path | None, before: set[Path], existed: bool) -> None:
    """After a failed job, remove what it wrote under ``out`` (never what was there)."""
    if out is None or not out.is_dir():
        return
    import shutil

    for p in sorted(_files(out) - before, key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if not existed and not any(out.iterdir()):
        out.rmdir()


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
    """Run ``diffmix <job> ...`` (``argv``, default the command line); the exit code.

    As the process's own command (no ``argv``), what is already imported is set aside from
    the cyclic garbage collector (:func:`gc.freeze`) here, again once the job's config is
    composed and before returning: its full passes, as the imports grow the heap, during the
    job and at interpreter shutdown, would otherwise walk every object of torch, Hydra and
    the other imports again. Only objects created after a freeze are collected: the job's
    own garbage as before; a command's process loses nothing it would free.

    The command's process then ends at once (:func:`_end_process`): the interpreter's
    teardown would only free, object by object, what the operating system takes back.
    """
    if argv is None:
        gc.freeze()
        try:
            code = _main(sys.argv[1:], freeze=True)
        finally:
            gc.freeze()
        _end_process(code)
        return code
    return _main(list(argv))


# Jobs that touch each full-length buffer once (a master renders, solves, meters and
# delivers the whole song a few times): transparent huge pages cost them time where free
# memory goes back to a VM's host (each fresh huge page a fault there; BENCHMARKS.md,
# profile notes, session 20).
ONE_PASS_JOBS = frozenset({"master", "batch", "album"})


def _allocator_for(job: str) -> None:
    """Turn torch's huge-page backing off for a :data:`ONE_PASS_JOBS` job, unless the user
    set ``THP_MEM_ALLOC_ENABLE``; call before torch's first CPU tensor (read once, then)."""
    import diffmix

    if job in ONE_PASS_JOBS and not diffmix._HUGE_PAGES_FROM_USER:  # noqa: SLF001
        os.environ["THP_MEM_ALLOC_ENABLE"] = "0"


def _end_process(code: int) -> None:
    """End the process with ``code`` now, as the interpreter would but without its
    teardown: exit handlers run (logging's, temporary files' finalizers) and the standard
    streams are flushed; the modules and their objects are left to the operating system.
    Returns instead (the interpreter then ends it as usual) while another Python thread runs
    and in a distributed run (``WORLD_SIZE`` > 1: its process group's teardown is left as is)."""
    import atexit
    import threading

    if threading.active_count() > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more to write
            pass
    os._exit(code)


def _main(argv: list[str], *, freeze: bool = False) -> int:
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else EXIT_USER_ERROR
    name, rest = args[0], args[1:]
    known = job_names()  # not jobs(), which parses every job module's source for its help
    if name not in known:
        return _fail(name, f"unknown job; choose one of {sorted(known)}")
    if freeze:  # the process's own command: before the job's imports make torch's first tensor
        _allocator_for(name)
    module = importlib.import_module(f"diffmix.jobs.{name}")
    if "--help" in rest or "-h" in rest:
        print(job_help(name, module))
        return 0

    import signal
    import tempfile

    import hydra
    import soundfile as sf
    from omegaconf.errors import OmegaConfBaseException

    if hasattr(signal, "SIGXFSZ"):  # a file-size limit: an OSError to report, not a kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    rest = _quote_non_ascii(rest)
    multirun = "-m" in rest or "--multirun" in rest
    out = _out_arg(rest)
    run_dir = None
    cfg = None
    # A single run into out= with no hydra.* option: Hydra's run directory would only be a
    # temporary, so the config composed for the checks is the job's (Hydra's runner would
    # compose it twice more: ~0.4 s of start-up).
    direct = not multirun and out is not None and not any(
        a.lstrip("+~").startswith(("hydra.", "hydra/")) for a in rest)
    if not multirun:
        cfg, problem = _compose(name, rest)
        problem = problem or (_check_out(out) if out else None)
        if problem:
            return _fail(name, problem)
        if not direct and out is not None and not any(a.startswith("hydra.run.dir=") for a in rest):
            # Outputs go to out=; Hydra's bookkeeping goes to a temporary run dir, removed
            # after, instead of an outputs/<job>/<time>/ folder in the working directory.
            run_dir = tempfile.mkdtemp(prefix="diffmix-hydra-")
            rest = [*rest, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    status = {"code": 0}

    def _task_body(cfg: DictConfig) -> None:
        existed = out is not None and out.exists()
        before = _files(out)
        if freeze:
            gc.freeze()
        try:
            status["code"] = max(status["code"], int(module.run(cfg) or 0))
        except (ValueError, AudioFileError, FileNotFoundError, OSError, sf.LibsndfileError,
                OmegaConfBaseException) as exc:
            status["code"] = _fail(name, _message(exc))
            if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # other ranks may be writing
                _undo(out, before, existed)
            _remove_bookkeeping_only_run_dir()

    if direct and cfg is not None:
        from hydra import initialize_config_dir

        with initialize_config_dir(str(config_dir()), version_base="1.3"):  # a job may compose
            _task_body(_job_config(cfg))
        return status["code"]
    _task = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=name)(_task_body)
    saved = sys.argv
    sys.argv = [f"diffmix-{name}", *rest]
    try:
        _task()
    finally:
        sys.argv = saved
        if run_dir is not None:
            _close_logs(run_dir)
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    return status["code"]


def _message(exc: BaseException) -> str:
    """One line for the user: the exception's first line, with the file for OS errors."""
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", None) or str(exc).split(":")[-1].strip()
        return f"missing required option {key}: pass {key}=..."
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"cannot write or read {where}{exc.strerror}".replace("read : ", "read: ")
    text = str(exc).strip()
    return _one_line(text.splitlines()[0]) if text else repr(exc)


def _close_logs(run_dir: str) -> None:
    import logging

    for logger in (logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)):
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(run_dir):
                handler.close()
                logger.removeHandler(handler)


if __name__ == "__main__":
    raise SystemExit(main())
