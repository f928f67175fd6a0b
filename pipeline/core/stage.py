"""What every stage module shares: one-line errors, logging, thread and device selection."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import click

from pipeline.core.config import PARAMS_FILE, DataConfig, ParamsError, load_section
from pipeline.core.io import DataError, error_errno, first_line

F = TypeVar("F", bound=Callable[..., Any])


class PathArg(click.Path):
    """click.Path that refuses an empty value: `--item-info=` would otherwise be the path "" (the current folder,
    ".", to pathlib), and fail later naming "." instead of the option."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path", param, ctx)
        return super().convert(value, param, ctx)


params_option = click.option(
    "--params", "params_path", default=PARAMS_FILE, show_default=True,
    type=PathArg(dir_okay=False), help="params file holding this stage's section",
)

# dvc.yaml never passes --raw-dir: a params value interpolated into a stage's `cmd` is run by a shell, so a folder
# named `x;touch PWNED` would run code. The stage reads data.raw_dir from its params file instead.
raw_dir_option = click.option(
    "--raw-dir", default=None, type=PathArg(file_okay=False),
    help="raw folder of data.source  [default: data.raw_dir of --params]",
)


def summary(doc: str) -> str:
    """The first line of a stage module's docstring: its `--help` description."""
    return doc.strip().splitlines()[0]


def file_options(*names: str) -> Callable[[F], F]:
    """Required file-path options, in the order given (--help shows them so): "--item-info" reaches the stage as
    `item_info`, "--model:model_path" as `model_path` (a name that shadows no import)."""

    def apply(fn: F) -> F:
        for spec in reversed(names):
            flag, _, dest = spec.partition(":")
            fn = click.option(flag, *([dest] if dest else []), required=True, type=PathArg(dir_okay=False))(fn)
        return fn

    return apply


def data_section(params_path: str, raw_dir: str | None) -> tuple[DataConfig, str]:
    """The params file's checked `data` section, and the raw folder: `raw_dir` when given, else data.raw_dir. A
    folder that is not there is a DataError naming where it came from (the params key, or --raw-dir)."""
    data = load_section(params_path, "data", DataConfig)
    where, folder = ("data.raw_dir", data.raw_dir) if raw_dir is None else ("--raw-dir", raw_dir)
    if not Path(folder).is_dir():
        what = "no such folder" if not Path(folder).exists() else "not a folder"
        raise DataError(f"{where}: {folder}: {what} (the raw data of data.source {data.source!r}; set data.raw_dir "
                        f"in {params_path} to it)")
    return data, folder


def error_line(e: BaseException) -> str | None:
    """The one-line message of an error the user can act on: a ParamsError or DataError, training's NaN/inf-loss
    FloatingPointError, and an OS-level fault (unreadable file, full or read-only disk: OSError, or a polars error
    that wraps one), named by its file when it has one. None for anything else: a bug keeps its traceback."""
    if isinstance(e, ParamsError | DataError | FloatingPointError):
        return str(e)
    code = error_errno(e)
    if code is None:
        return None
    filename = getattr(e, "filename", None)
    detail = first_line(e)
    reason = os.strerror(code) if code else detail
    if filename:
        return f"{filename}: {reason}"
    # The detail adds nothing when it is the reason itself (str() of a bare OSError(errno, strerror)).
    return reason if detail in (reason, f"[Errno {code}] {reason}") else f"{reason} ({detail})"


@contextmanager
def one_line_errors(*also: type[Exception]) -> Iterator[None]:
    """Turn an error `error_line` recognises, or one of the types `also` (a command's own one-line errors), into a
    one-line click error (exit status 1)."""
    try:
        yield
    except Exception as e:
        line = str(e) if isinstance(e, also) else error_line(e)
        if line is None:
            raise
        raise click.ClickException(line) from None


def lock_path(stage: str, workdir: Path) -> Path:
    """The lock file of `stage` run in `workdir`: in a per-user folder of the temp dir (no litter in the repo),
    named by a hash of the resolved folder, so runs in other checkouts never wait on each other."""
    folder = Path(tempfile.gettempdir()) / f"mmctr-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:16]}-{stage}.lock"


@contextmanager
def stage_lock(stage: str, workdir: Path) -> Iterator[None]:
    """Hold `stage`'s lock for `workdir` for the block: a second run of the same stage on the same outputs (a
    trainer left running by a killed `dvc`, a second `dvc repro`) fails at once with a one-line DataError naming
    the pid that holds it, instead of writing the same files beside it. The OS drops the lock when its holder
    dies, however it dies."""
    fd = os.open(lock_path(stage, workdir), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 20, 0).decode(errors="replace").strip() or "?"
            raise DataError(f"{stage}: another run of this stage (pid {holder}) is writing its outputs in {workdir}; "
                            "wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM (torchrun stopping the other ranks, `stop_with_parent`, `kill`) raises
    SystemExit(143), so context managers clean up (train's streamed split copies, temp files) as on an error; by
    default SIGTERM ends the process at once and leaves them on disk for good. The old handler is put back after
    (signal handlers belong to the main thread: elsewhere this changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


_watching_parent = False


def stop_with_parent(poll_s: float = 1.0) -> None:
    """Stop this process (SIGTERM) once its parent has died: a stage whose `dvc` was killed must not keep writing
    outputs nobody will record. A daemon thread compares os.getppid() with the parent at the start (a dead parent's
    children are re-parented); started once per process."""
    global _watching_parent
    if _watching_parent:
        return
    _watching_parent = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        logging.getLogger("stage").error("the parent process %d has exited: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def readable(value: Any) -> str:
    """A metrics dict (or any value) for a log line: floats at 4 significant digits (0.61, not
    0.6099999999999999), nested dicts and lists kept."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {readable(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(readable(v) for v in value) + "]"
    return str(value)


def configure_logging(stage: str) -> None:
    """INFO lines from this project's loggers (the stage's own, pipeline.*, model.*), WARNING and above from
    libraries (open_clip, faiss, transformers log their set-up at INFO: noise, not news)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in (stage, "stage", "pipeline", "model"):
        logging.getLogger(name).setLevel(logging.INFO)


def stage_main(fn: F, stage: str | None = None) -> F:
    """Wrap a stage body: configure logging, stop with the parent process (`stop_with_parent`), hold the stage's
    lock (`stage_lock`; rank 0 only under torchrun, whose ranks share the outputs) and report user-facing errors
    in one line (`one_line_errors`). `stage` names the stage (logger, lock); default: the module `fn` is in."""
    if stage is None:
        spec = fn.__globals__.get("__spec__")  # `python -m stages.train` runs as __main__; its spec keeps the name
        stage = (spec.name if spec is not None else fn.__module__).rsplit(".", 1)[-1]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        configure_logging(stage)
        stop_with_parent()
        with sigterm_exits(), one_line_errors():
            lock = stage_lock(stage, Path.cwd()) if os.environ.get("RANK", "0") == "0" else nullcontext()
            with lock:
                return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def set_threads(num_threads: int) -> None:
    """Set torch's intra-op threads when `num_threads` > 0; 0 keeps torch's default (one per core)."""
    import torch

    if num_threads > 0:
        torch.set_num_threads(num_threads)


def pick_device(choice: str, key: str) -> "torch.device":  # noqa: F821 - torch imported lazily
    """`auto` -> cuda when available else cpu; `cuda` without a GPU is a ParamsError naming `key`."""
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"{key}: 'cuda' requested but torch sees no CUDA device")
    return torch.device(choice)
