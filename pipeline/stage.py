"""What every stage module shares: one-line errors, logging, thread and device selection."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from pipeline.config import DataConfig, ParamsError, load_section
from pipeline.io import DataError, error_errno

F = TypeVar("F", bound=Callable[..., Any])

params_option = click.option(
    "--params", "params_path", default="params.yaml", show_default=True,
    type=click.Path(dir_okay=False), help="params file holding this stage's section",
)

# dvc.yaml never passes --raw-dir: a params value interpolated into a stage's `cmd` is run by a shell, so a folder
# named `x;touch PWNED` would run code. The stage reads data.raw_dir from its params file instead.
raw_dir_option = click.option(
    "--raw-dir", default=None, type=click.Path(file_okay=False),
    help="raw folder of data.source  [default: data.raw_dir of --params]",
)


def data_section(params_path: str, raw_dir: str | None) -> tuple[DataConfig, str]:
    """The params file's checked `data` section, and the raw folder: `raw_dir` when given, else data.raw_dir."""
    data = load_section(params_path, "data", DataConfig)
    return data, data.raw_dir if raw_dir is None else raw_dir


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
    reason = os.strerror(code) if code else str(e).splitlines()[0]
    return f"{filename}: {reason}" if filename else f"{reason} ({str(e).splitlines()[0][:200]})"


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


def stage_main(fn: F) -> F:
    """Wrap a stage body: configure logging and report user-facing errors in one line (`one_line_errors`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        # faiss logs its CPU-feature probing (ModuleNotFoundError for the AVX512 build, ...) at INFO: noise, not news
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        with one_line_errors():
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
