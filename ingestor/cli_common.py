"""What every command shares: its exit statuses and its logging options, defined once."""

from __future__ import annotations

import argparse

from ingestor.logs import LOG_FORMATS, LOG_LEVELS

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
