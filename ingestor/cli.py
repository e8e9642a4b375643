"""``ingestor`` on the command line: thin wrappers over library functions in ``app``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ingestor import __version__, crashpoints
from ingestor.cli_common import (
    EXIT_AUTH,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    LazyConsole,
    add_knob_flags,
    add_log_options,
    from_flags,
)
from ingestor.config import ApiKey, ApiSettings, RateLimitSettings, Settings
from ingestor.errors import (
    AuthError,
    ConfigError,
    IngestorError,
    Interrupted,
    LayoutError,
    StateUnwritable,
)
from ingestor.logs import configure_logging
from ingestor.service_cli import add_service_commands, cmd_service_status

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ingestor.ledger import FileRun
    from ingestor.pipeline import FolderResult
    from ingestor.records import FileCounts
    from ingestor.validation import Validation

# A command imports what it uses when it runs: `validate` never loads the HTTP client, the
# ledger, e-mail, SFTP or rich (tests/test_cli.py::test_validate_loads_only_the_parsers).
# Tables stay readable when piped (rich would otherwise assume 80 columns).
_out = LazyConsole(width=None if sys.stdout.isatty() else 200)
_err = LazyConsole(stderr=True, soft_wrap=True)  # one line per message, however long
out, err = cast("Console", _out), cast("Console", _err)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ingestor"


def _api_settings(args: argparse.Namespace) -> ApiSettings:
    limits = from_flags(args, RateLimitSettings())
    return from_flags(args, ApiSettings(rate_limit=limits))


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        err.print(
            f"[yellow]{signal.Signals(signum).name}: finishing the request in flight, "
            "then stopping; progress is kept[/]"
        )
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


class _ConsoleStream:
    """A text stream that prints through a rich console: log lines written while a progress
    bar is live appear above the bar instead of tearing through it."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def write(self, text: str) -> int:
        self._console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        self._console.file.flush()

    def isatty(self) -> bool:
        return self._console.is_terminal


RATE_AFTER = 1.0  # seconds of sending before a rate is shown (one batch is not a rate)


class _ProgressView:
    """A rich progress bar per file: bytes for the bar and ETA, records and rate as text.
    The rate is measured from the first acknowledged batch, and shown once a second of
    sending lies behind it."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[int, tuple[Any, float, int]] = {}

    def __call__(self, run: FileRun, offset: int, counts: FileCounts) -> None:
        if run.id not in self._tasks:
            task = self._progress.add_task(
                run.identity.name, total=run.identity.size or 1, sent=0, rate="…"
            )
            self._tasks[run.id] = (task, time.monotonic(), counts.sent)
        task, began, sent_before = self._tasks[run.id]
        elapsed = time.monotonic() - began
        rate = f"{(counts.sent - sent_before) / elapsed:,.0f}" if elapsed >= RATE_AFTER else "…"
        self._progress.update(task, completed=offset, sent=counts.sent, rate=rate)


def _summary_table(results: Sequence[FolderResult], title: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for column in (
        "company",
        "folder",
        "file",
        "state",
        "read",
        "sent",
        "skipped",
        "report / reason",
    ):
        table.add_column(
            column,
            justify="right" if column in ("read", "sent", "skipped") else "left",
            overflow="fold",
        )
    for folder in results:
        rows = folder.files
        if not rows and folder.error:
            table.add_row(
                folder.folder.company,
                folder.folder.name,
                "—",
                "[red]rejected[/]",
                "",
                "",
                "",
                folder.error,
            )
        for result in rows:
            run = result.run
            state = "unchanged" if result.unchanged else run.state.value
            colour = {"done": "green", "unchanged": "cyan"}.get(state, "red")
            c = run.counts
            report = Path(result.report.path if result.report else run.report_path).name
            table.add_row(
                folder.folder.company,
                folder.folder.name,
                run.identity.name,
                f"[{colour}]{state}[/]",
                f"{c.read:,}",
                f"{c.sent:,}",
                f"{c.skipped:,}",
                f"{report}\n[dim]{run.reason}[/]" if run.reason else report,
            )
    return table


def cmd_ingest(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ingestor.app import ingest_folder_once

    key = ApiKey.from_env(args.api_key_env, os.environ)
    configure_logging(
        args.log_format, args.log_level, secrets=[key.value], stream=_ConsoleStream(_err.real)
    )
    settings = Settings(state_dir=Path(args.state_dir), api=_api_settings(args))
    stop = _stop_on_signals()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[sent]:,} sent · {task.fields[rate]} rec/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_err.real, disable=not err.is_terminal) as progress:
        result = ingest_folder_once(
            Path(args.folder),
            key,
            settings,
            company=args.company,
            progress=_ProgressView(progress),
            stop=stop,
        )
    out.print(_summary_table([result], f"ingest {args.folder}"))
    if result.error:
        err.print(f"[red]not processed:[/] {result.error}")
        return EXIT_INCOMPLETE
    failed = [f.run for f in result.files if f.run.state.value != "done"]
    if failed:
        err.print(f"[red]{failed[0].identity.name}: {failed[0].state.value}:[/] {failed[0].reason}")
        return EXIT_INCOMPLETE
    return EXIT_OK


def _print_validation(result: Validation) -> None:
    """Plain lines (red for what would not be processed, on a terminal): printing them
    through rich would cost ``validate`` more start-up time than parsing a small file."""
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    red, bold, plain = ("\033[31m", "\033[1m", "\033[0m") if colour else ("", "", "")
    lines: list[str] = []
    if result.data_source_id:
        lines.append(f"config.json: data source {bold}{result.data_source_id}{plain}")
    if result.metric:
        lines.append(f"config.json: events of the metric {bold}{result.metric}{plain}")
    if result.folder_error:
        lines.append(f"{red}folder would not be processed:{plain} {result.folder_error}")
    for file in result.files:
        if file.error:
            lines.append(f"{red}{file.path.name}: rejected:{plain} {file.error}")
            continue
        lines.append(
            f"{bold}{file.path.name}{plain}: {file.records:,} records would be sent in "
            f"{file.batches:,} requests ({file.body_bytes:,} bytes); "
            f"{len(file.rejects):,} rows would be skipped"
        )
        lines += ["  e.g. " + sample.decode("utf-8", "replace")[:200] for sample in file.preview]
        lines += [f"  line {reject.line}: {reject.reason}" for reject in file.rejects]
    lines += [f"ignored: {name}" for name in result.ignored]
    sys.stdout.write("".join(line + "\n" for line in lines))


def _validation_json(result: Validation) -> dict[str, Any]:
    return {
        "target": str(result.target),
        "ok": result.ok,
        "folder_error": result.folder_error,
        "data_source_id": result.data_source_id,
        "metric": result.metric,
        "ignored": list(result.ignored),
        "files": [
            {
                "file": str(f.path),
                "error": f.error,
                "records": f.records,
                "requests": f.batches,
                "body_bytes": f.body_bytes,
                "skipped": [{"line": r.line, "reason": r.reason, "raw": r.raw} for r in f.rejects],
            }
            for f in result.files
        ],
    }


def cmd_validate(args: argparse.Namespace) -> int:
    from ingestor.validation import validate_path

    target = Path(args.path)
    if not target.exists():
        raise ConfigError(f"{target} does not exist")
    result = validate_path(target)
    if args.json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(_validation_json(result), option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
    else:
        _print_validation(result)
    return EXIT_OK if result.ok else EXIT_INCOMPLETE


def cmd_simulate(args: argparse.Namespace) -> int:
    from ingestor.app import start_simulator

    keys = dict(pair.split("=", 1) for pair in args.key) or {"sim-key": "default"}
    setup = start_simulator(
        keys,
        args.host,
        args.port,
        clock_factor=args.clock_factor,
        spec_limits=args.spec_limits,
        data_sources=[(a, ds) for a, _, ds in (p.partition("=") for p in args.data_source)],
        drop=Path(args.drop) if args.drop else None,
    )
    sim, sources = setup.simulator, setup.sources
    limits = "15/min (the published spec)" if args.spec_limits else "60/min (the guide)"
    out.print(f"Klaviyo simulator on {sim.url}, bulk endpoint limited to {limits}", highlight=False)
    for key, account in keys.items():
        out.print(f"  API key {key!r} → account {account}", highlight=False)
    for account, ds_id in sources:
        out.print(f"  data source {ds_id} in account {account}", highlight=False)
    first_key = next(iter(keys))
    out.print(
        f"Try: K={first_key} ingestor ingest <import-folder> --api-key-env K "
        f"--base-url {sim.url} --state-dir /tmp/ingestor-try   (Ctrl-C stops the simulator)",
        highlight=False,
        soft_wrap=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        sim.serve_forever()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ingestor.app import run_demo, sample_drop

    configure_logging("console" if args.log_format == "auto" else args.log_format, "warning")
    drop = Path(args.drop) if args.drop else sample_drop()
    if not drop.is_dir():
        raise ConfigError(f"{drop} is not a directory; give --drop a drop tree (or leave it out)")

    def starting(url: str, folders: int) -> None:
        out.print(
            f"Klaviyo simulator on {url}; ingesting {drop}/ ({folders} import folders) at the "
            "guide's limits (3/s, 60/min)"
        )

    state_dir = Path(args.state_dir)
    demo = run_demo(drop, state_dir, starting)
    out.print(_summary_table(demo.results, f"demo: {drop}/ in {demo.seconds:.1f} s"))
    for stray in demo.strays:
        out.print(
            f"[red]rejected[/] {stray.relative_to(drop)}: files directly under "
            f"{stray.parent.name}/ are not processed; move it into a named subfolder"
        )
    stats = demo.stats
    out.print(
        f"simulator received {stats['records']:,} records, {stats['events']:,} events and "
        f"{stats['profiles']:,} profiles in {stats['requests']} requests "
        f"(statuses {stats['statuses']}); every body validated against Klaviyo's OpenAPI "
        f"({stats['schema_failures']} failures)"
    )
    out.print(
        f"reports (*.report.json) and rejected rows (*.rejected.jsonl) are in "
        f"{state_dir / 'reports'}/<company>/"
    )
    out.print(
        f"{len(demo.emails)} completion e-mails (no SMTP server configured, so as .eml files) "
        f"are in {state_dir / 'outbox'}/"
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    return cmd_service_status(args, out)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Each option's default shown after its help (when it has one worth showing);
    descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, [], argparse.SUPPRESS)
        if shown and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


DESCRIPTION = """\
Import CSV and JSONL files dropped into folders into Klaviyo, as Klaviyo's own SFTP import
does: <drop_root>/<company>/imports/<kind>/<folder>/config.json + *.csv / *.jsonl, where
<kind> is custom_objects (records of a data source), events or profiles.

Start here:
  ingestor demo                      see it work end to end on a built-in simulator
  ingestor validate FOLDER           what a folder would send, and every row it would skip
  ingestor run --config FILE         the service (watch the drop tree, serve SFTP, e-mail)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingestor", description=DESCRIPTION, formatter_class=_Help
    )
    parser.add_argument("--version", action="version", version=f"ingestor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=text, formatter_class=_Help)

    ingest = command("ingest", "ingest one import folder now, resuming where a run stopped")
    ingest.add_argument("folder", help="an import folder holding config.json and data files")
    ingest.add_argument(
        "--api-key-env",
        required=True,
        metavar="VAR",
        help="the environment variable that holds the company's private API key",
    )
    ingest.add_argument(
        "--company", help="the company's name (default: taken from the drop-tree path)"
    )
    ingest.add_argument(
        "--state-dir",
        default=str(default_state_dir()),
        help="where the ledger, reports and rejected rows are kept",
    )
    add_knob_flags(ingest, ApiSettings, RateLimitSettings)
    add_log_options(ingest)
    ingest.set_defaults(handler=cmd_ingest)

    validate = command("validate", "parse without sending: what would be sent, what skipped")
    validate.add_argument("path", help="an import folder, or one data file (.csv, .jsonl, .gz)")
    validate.add_argument("--json", action="store_true", help="print the result as JSON")
    add_log_options(validate)
    validate.set_defaults(handler=cmd_validate)

    simulate = command("simulate", "run the Klaviyo API simulator (for trying things out)")
    simulate.add_argument("--port", type=int, default=8080, help="the port to listen on")
    simulate.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    simulate.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY=ACCOUNT",
        help="an API key and the account it opens (repeatable; default: sim-key=default)",
    )
    simulate.add_argument(
        "--data-source",
        action="append",
        default=[],
        metavar="ACCOUNT=ULID",
        help="a data source to create in an account (repeatable)",
    )
    simulate.add_argument(
        "--drop",
        metavar="DIR",
        help="create the data source of every config.json found under this drop tree",
    )
    simulate.add_argument(
        "--spec-limits",
        action="store_true",
        help="limit the bulk endpoint to the published spec's 15/min (else the guide's 60/min)",
    )
    simulate.add_argument(
        "--clock-factor",
        type=float,
        default=1.0,
        help="run the rate-limit windows this many times faster",
    )
    simulate.set_defaults(handler=cmd_simulate)

    demo = command("demo", "ingest the sample drop into a built-in simulator, e-mails included")
    demo.add_argument(
        "--drop",
        default=None,
        metavar="DIR",
        help="a drop tree to ingest (default: the sample drop shipped with ingestor)",
    )
    demo.add_argument(
        "--state-dir",
        default=".demo-state",
        help="the demo's own directory (made if new; one holding anything else is refused)",
    )
    add_log_options(demo)
    demo.set_defaults(handler=cmd_demo)

    status = command("status", "files in flight, queued, done and failed, from the ledger")
    status.add_argument(
        "--state-dir",
        default=str(default_state_dir()),
        help="the state directory to read (it must exist)",
    )
    status.add_argument(
        "--config", help="the service's settings file (its state dir and companies are shown)"
    )
    status.set_defaults(handler=cmd_status)
    add_service_commands(commands, out, err, default_state_dir(), _Help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The edge: the environment is read here and handed down; nothing below reads it.
    crashpoints.arm(os.environ.get(crashpoints.ENV, ""))
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except AuthError as exc:
        err.print(f"[red]authentication failed:[/] {exc}")
        return EXIT_AUTH
    except Interrupted as exc:
        err.print(f"[yellow]interrupted:[/] {exc}")
        return EXIT_INTERRUPTED
    except (ConfigError, LayoutError, StateUnwritable) as exc:  # the operator must act
        err.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    except IngestorError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
