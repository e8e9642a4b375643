"""The service's commands: ``run``, ``check-config`` and ``status --config``."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import getpass
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ingestor.cli_common import EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, add_log_options
from ingestor.errors import ConfigError
from ingestor.logs import configure_logging

if TYPE_CHECKING:
    from rich.console import Console

    from ingestor.ledger import FileRun

# Each command imports what it uses when it runs (the service, SFTP and e-mail are heavy).


def cmd_check_config(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ingestor.service_config import check_service_settings, example_settings

    if args.example:
        out.file.write(example_settings())
        return EXIT_OK
    if not args.file:
        err.print("[red]error:[/] name the settings file to check (or --example)")
        return EXIT_USAGE
    path = Path(args.file)
    settings, problems = check_service_settings(path, os.environ)
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
    from ingestor.service_config import load_service_settings
    from ingestor.worker.service import Service

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
    # `kill -USR1 <pid>` writes every thread's stack to stderr (the journal): for a service
    # that seems stuck, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return Service(path, environ=os.environ, polling=args.polling).run()


def cmd_sftp(args: argparse.Namespace, out: Console) -> int:
    from ingestor.service_config import load_service_settings
    from ingestor.sftp.auth import fingerprint
    from ingestor.sftp.server import SftpEndpoint

    """The SFTP endpoint alone (uploads land in the drop tree; nothing is ingested)."""
    settings = load_service_settings(Path(args.config))
    if settings.sftp is None:
        raise ConfigError(f"{args.config} has no [sftp] table")
    configure_logging(
        args.log_format or settings.log_format,
        args.log_level or settings.log_level,
        stream=sys.stdout,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with SftpEndpoint(settings.sftp, settings.drop_root, settings.state_dir) as endpoint:
        out.print(
            f"SFTP on {settings.sftp.host}:{endpoint.port}, host key "
            f"{fingerprint(endpoint.host_key)}; Ctrl-C stops it",
            highlight=False,
        )
        stop.wait()
    return EXIT_OK


def cmd_sftp_password(args: argparse.Namespace, out: Console) -> int:
    from ingestor.sftp.auth import hash_password

    """Hash a password for ``sftp_password_hash`` (read from stdin, never from argv)."""
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline()
    password = password.rstrip("\n")
    if len(password) < 12:
        raise ConfigError("use at least 12 characters")
    out.print(hash_password(password), highlight=False)
    return EXIT_OK


def _rate(run: FileRun, now: float) -> str:
    from ingestor.worker.status import records_per_second

    return f"{records_per_second(run, now):,.0f}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def cmd_service_status(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from ingestor.ledger import open_existing_ledger
    from ingestor.service_config import load_service_settings
    from ingestor.worker.lock import LOCK_NAME, lock_holder
    from ingestor.worker.status import LIVE_NAME, read_live, service_status

    """``status``: with ``--config`` its state dir, else ``--state-dir``; one renderer."""
    state_dir = (
        load_service_settings(Path(args.config)).state_dir if args.config else Path(args.state_dir)
    )
    pid = lock_holder(state_dir / LOCK_NAME)
    live = read_live(state_dir / LIVE_NAME) if pid is not None else None
    now = time.time()
    with open_existing_ledger(state_dir) as ledger:
        view = service_status(ledger, now, live)
    if pid is None:
        out.print("service: not running; files in flight resume from their checkpoints at start")
    else:
        out.print(f"service: running (pid {pid})" + (f"; {live.summary()}" if live else ""))

    def table(title: str, *columns: str) -> Table:
        t = Table(title=title, title_justify="left")
        for column in columns:
            t.add_column(column, overflow="fold")
        return t

    if live is not None:
        lanes = table(
            "companies",
            "company",
            "sending",
            "queued",
            "files done",
            "failed or rejected",
            "records sent",
            "blocked",
            "throttled",
        )
        for lane in live.lanes:
            lanes.add_row(
                lane.company,
                lane.current or "-",
                str(lane.queued),
                f"{lane.files_done:,}",
                f"{lane.files_failed:,}",
                f"{lane.records_sent:,}",
                lane.blocked or "-",
                f"{lane.throttled_for:.0f} s more" if lane.throttled_for >= 1 else "-",
            )
        out.print(lanes)

    flight = table(
        f"in flight ({len(view.in_flight)})",
        "run",
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
            str(run.id),
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
        "run",
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
            str(run.id),
            i.company,
            i.folder,
            i.name,
            f"{c.sent:,}",
            f"{c.skipped:,}",
            _rate(run, now),
            _age(now - (run.finished_at or now)) + " ago",
        )
    failed = table(
        f"failed, rejected or quarantined ({len(view.failed)})",
        "run",
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
            str(run.id),
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
    default_state_dir: Path,
    formatter: type[argparse.HelpFormatter] = argparse.HelpFormatter,
) -> None:
    def command(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=text, description=text, formatter_class=formatter
        )
        return parser

    run = command("run", "run the service: watch the drop tree, ingest, serve SFTP, e-mail")
    run.add_argument("--config", required=True, help="the settings file (TOML)")
    run.add_argument(
        "--polling",
        action="store_true",
        help="find files by scanning every second instead of inotify (network file systems)",
    )
    add_log_options(run, settings_file=True)
    run.set_defaults(handler=cmd_run)
    check = command("check-config", "check a settings file and list every problem at once")
    check.add_argument("file", nargs="?", help="the settings file (TOML)")
    check.add_argument(
        "--example",
        action="store_true",
        help="print an example settings file: every key, its default and what it does",
    )
    check.set_defaults(handler=lambda args: cmd_check_config(args, out, err))
    report = command("report", "print a file's report (by run id, file path or file name)")
    report.add_argument("which", help="a run id (see `status`), or the file's path or name")
    where = report.add_mutually_exclusive_group()
    where.add_argument("--config", help="the service's settings file (for its state dir)")
    where.add_argument(
        "--state-dir", default=str(default_state_dir), help="the state directory to read"
    )
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(handler=lambda args: cmd_report(args, out))
    approve = command(
        "approve", "send a quarantined file (over its error budget) as if it were within it"
    )
    approve.add_argument("which", help="a run id (see `status`), or the file's path or name")
    where = approve.add_mutually_exclusive_group()
    where.add_argument("--config", help="the service's settings file (for its state dir)")
    where.add_argument(
        "--state-dir", default=str(default_state_dir), help="the state directory to write"
    )
    approve.set_defaults(handler=lambda args: cmd_approve(args, out))
    notify = command("notify", "e-mail a file's report again")
    notify.add_argument("--resend", required=True, metavar="RUN", help="a run id or file")
    notify.add_argument("--config", required=True, help="the service's settings file")
    notify.add_argument(
        "--to",
        action="append",
        default=[],
        help="send to this address instead of the company's recipients (repeatable)",
    )
    notify.set_defaults(handler=lambda args: cmd_notify(args, out, err))
    sftp = command("sftp", "run the SFTP endpoint alone (uploads land; nothing is ingested)")
    sftp.add_argument("--config", required=True, help="the settings file, with an [sftp] table")
    add_log_options(sftp, settings_file=True)
    sftp.set_defaults(handler=lambda args: cmd_sftp(args, out))
    hasher = command(
        "sftp-password", "hash a password read from standard input, for sftp_password_hash"
    )
    hasher.set_defaults(handler=lambda args: cmd_sftp_password(args, out))


def _state_dir(args: argparse.Namespace) -> Path:
    from ingestor.service_config import load_service_settings

    if args.config:
        return load_service_settings(Path(args.config)).state_dir
    return Path(args.state_dir)


def cmd_report(args: argparse.Namespace, out: Console) -> int:
    from ingestor.app import find_run
    from ingestor.ledger import open_existing_ledger
    from ingestor.notify.message import render
    from ingestor.reports import FileReport

    ledger = open_existing_ledger(_state_dir(args))
    try:
        run = find_run(ledger, args.which)
    finally:
        ledger.close()
    report = FileReport.load(run.report_path)
    if report is None:
        raise ConfigError(f"run {run.id} has no report yet (state {run.state.value})")
    if args.json:
        out.print_json(data=report.as_dict())
    else:
        text, _html = render([report])
        out.print(text, highlight=False, markup=False, soft_wrap=True)
    return EXIT_OK


def cmd_approve(args: argparse.Namespace, out: Console) -> int:
    """Approve a quarantined run in the ledger; the running service sends it within a
    second (it looks for approvals as it publishes its status)."""
    from ingestor.app import find_run
    from ingestor.ledger import FileState, open_ledger

    state_dir = _state_dir(args)
    open_existing_ledger_check(state_dir)
    ledger = open_ledger(state_dir)
    try:
        run = find_run(ledger, args.which)
        if run.state is not FileState.QUARANTINED:
            raise ConfigError(
                f"run {run.id} ({run.identity.name}) is {run.state.value}, not quarantined: "
                "only a file held for its skipped rows waits for an approval"
            )
        ledger.approve(run.id)
    finally:
        ledger.close()
    good = run.counts.read - run.counts.skipped
    out.print(
        f"approved run {run.id} ({run.identity.company} / {run.identity.folder} / "
        f"{run.identity.name}): the running service sends its {good:,} good rows now",
        highlight=False,
    )
    return EXIT_OK


def open_existing_ledger_check(state_dir: Path) -> None:
    """ConfigError unless ``state_dir`` holds a ledger (approving never creates one)."""
    from ingestor.ledger import open_existing_ledger

    open_existing_ledger(state_dir).close()


def cmd_notify(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ingestor.app import resend_report
    from ingestor.service_config import load_service_settings

    settings = load_service_settings(Path(args.config))
    resent = resend_report(settings, args.resend, tuple(args.to), os.environ)
    if settings.notify.smtp is None:
        out.print(f"written to {resent.path}", highlight=False)
    elif not resent.delivered:
        err.print(f"[yellow]not delivered now ({resent.problem}); queued for the service: "
                  f"{resent.path}[/]")  # fmt: skip
        return EXIT_INCOMPLETE
    else:
        out.print(f"sent to {', '.join(resent.recipients)}", highlight=False)
    return EXIT_OK
