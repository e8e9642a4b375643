"""The service's commands: ``run``, ``check-config`` and ``status --config``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ingestor.errors import ConfigError
from ingestor.ledger import LEDGER_NAME, FileRun, SqliteLedger
from ingestor.logs import configure_logging
from ingestor.service_config import check_service_settings, load_service_settings
from ingestor.worker.service import Service
from ingestor.worker.status import records_per_second, service_status

EXIT_OK, EXIT_USAGE = 0, 2


def cmd_check_config(args: argparse.Namespace, out: Console, err: Console) -> int:
    path = Path(args.file)
    settings, problems = check_service_settings(path)
    if problems:
        err.print(f"[red]{path}: {len(problems)} problem(s)[/]", soft_wrap=True)
        for problem in problems:
            err.print(
                f"  [bold]{problem.key}[/]: {problem.message}", highlight=False, soft_wrap=True
            )
        return EXIT_USAGE
    assert settings is not None
    out.print(
        f"{path}: OK — drop root {settings.drop_root}, state {settings.state_dir}, "
        f"{len(settings.companies)} companies: {', '.join(sorted(settings.companies))}",
        highlight=False,
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    path = Path(args.config)
    settings = load_service_settings(path)
    secrets: list[str] = []
    for company in settings.companies.values():
        with contextlib.suppress(ConfigError):  # the lane reports it when it needs the key
            secrets.append(company.key_source.load(os.environ).value)
    configure_logging(
        args.log_format or settings.log_format,
        args.log_level or settings.log_level,
        secrets=secrets,
        stream=sys.stdout,
    )
    return Service(path, polling=args.polling).run()


def _rate(run: FileRun, now: float) -> str:
    return f"{records_per_second(run, now):,.0f}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def cmd_service_status(args: argparse.Namespace, out: Console) -> int:
    settings = load_service_settings(Path(args.config))
    ledger = SqliteLedger(settings.state_dir / LEDGER_NAME)
    now = time.time()
    try:
        view = service_status(ledger, now)
    finally:
        ledger.close()

    def table(title: str, *columns: str) -> Table:
        t = Table(title=title, title_justify="left")
        for column in columns:
            t.add_column(column, overflow="fold")
        return t

    flight = table(
        f"in flight ({len(view.in_flight)})",
        "company",
        "folder",
        "file",
        "read",
        "sent",
        "skipped",
        "rec/s",
        "progress",
    )
    for run in view.in_flight:
        i, c = run.identity, run.counts
        share = f"{run.offset / i.size:.0%}" if i.size else "-"
        flight.add_row(
            i.company,
            i.folder,
            i.name,
            f"{c.read:,}",
            f"{c.sent:,}",
            f"{c.skipped:,}",
            _rate(run, now),
            share,
        )
    queued = table(f"queued ({len(view.queued)})", "company", "file", "waiting")
    for q in view.queued:
        queued.add_row(q.company, q.path, _age(now - q.queued_at))
    done = table(
        f"done, last 24 h ({len(view.done)})",
        "company",
        "folder",
        "file",
        "sent",
        "skipped",
        "rec/s",
        "finished",
    )
    for run in view.done:
        i, c = run.identity, run.counts
        done.add_row(
            i.company,
            i.folder,
            i.name,
            f"{c.sent:,}",
            f"{c.skipped:,}",
            _rate(run, now),
            _age(now - (run.finished_at or now)) + " ago",
        )
    failed = table(
        f"failed or rejected ({len(view.failed)})",
        "company",
        "folder",
        "file",
        "state",
        "sent",
        "reason",
    )
    for run in view.failed:
        i = run.identity
        failed.add_row(
            i.company,
            i.folder or "-",
            i.name,
            run.state.value,
            f"{run.counts.sent:,}",
            run.reason,
        )
    for t in (flight, queued, done, failed):
        out.print(t)
    return EXIT_OK


def add_service_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    out: Console,
    err: Console,
) -> None:
    run = commands.add_parser("run", help="run the service: watch the drop tree, ingest")
    run.add_argument("--config", required=True, help="the settings file (TOML)")
    run.add_argument(
        "--polling",
        action="store_true",
        help="poll instead of inotify (network file systems); readiness by quiet period",
    )
    run.add_argument("--log-format", choices=("auto", "json", "console"), default=None)
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None)
    run.set_defaults(handler=cmd_run)
    check = commands.add_parser("check-config", help="validate a settings file; list problems")
    check.add_argument("file")
    check.set_defaults(handler=lambda args: cmd_check_config(args, out, err))
