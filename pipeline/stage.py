"""What every stage module shares: one-line errors, logging, thread and device selection."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pipeline.config import DataConfig, ParamsError, load_section
from pipeline.io import DataError

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


def stage_main(fn: F) -> F:
    """Wrap a stage body: configure logging and turn ParamsError/DataError, and training's NaN/inf-loss
    FloatingPointError, into a one-line click error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        # faiss logs its CPU-feature probing (ModuleNotFoundError for the AVX512 build, ...) at INFO: noise, not news
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        try:
            return fn(*args, **kwargs)
        except (ParamsError, DataError, FloatingPointError) as e:
            raise click.ClickException(str(e)) from None

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
