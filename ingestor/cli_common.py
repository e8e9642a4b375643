"""What every command shares: its exit statuses and its logging options, defined once."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ingestor.logs import LOG_FORMATS, LOG_LEVELS
from ingestor.toml_reader import Declared, knobs

if TYPE_CHECKING:
    from rich.console import Console

D = TypeVar("D")


class LazyConsole:
    """A rich Console made on first use: rich costs tens of milliseconds to import, and a
    command like ``validate`` that prints plain lines need not pay them."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    @property
    def real(self) -> Console:
        """The console itself (for what keeps it, like a progress bar)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


EXIT_OK = 0  # done
EXIT_INCOMPLETE = 1  # a file or folder was not processed (the reason is printed)
EXIT_USAGE = 2  # a usage, settings or state-directory problem: the operator must act
EXIT_AUTH = 3  # the API key was refused
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM; progress is kept


def add_log_options(parser: argparse.ArgumentParser, *, settings_file: bool = False) -> None:
    """``--log-format`` and ``--log-level``. With ``settings_file`` they default to the
    settings' [service] values (None here), else to auto and info."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None if settings_file else "auto",
        help="overrides [service] log_format"
        if settings_file
        else "log lines as JSON or readable text (auto: readable on a terminal)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None if settings_file else "info",
        help="overrides [service] log_level"
        if settings_file
        else "the least important log lines shown",
    )


def add_knob_flags(parser: argparse.ArgumentParser, *classes: type) -> None:
    """An option for each knob of ``classes`` declared with ``flag=True``: ``--burst-window``
    for ``burst_window``, with the knob's type, default, help and validation."""
    for cls in classes:
        for d in knobs(cls):
            if d.knob.flag:
                parser.add_argument(
                    "--" + d.name.replace("_", "-"),
                    dest=d.name,
                    type=_converter(d),
                    default=d.default,
                    help=d.knob.help,
                )


def from_flags(args: argparse.Namespace, base: D) -> D:
    """``base`` with each of its flag knobs set from ``args``."""
    cls: Any = type(base)
    values = {d.name: getattr(args, d.name) for d in knobs(cls) if d.knob.flag}
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


def _converter(d: Declared) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = d.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {d.kind.__name__}") from None
        problem = d.knob.check(value) if d.knob.check else None
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = d.kind.__name__  # argparse names the type in its errors
    return convert
