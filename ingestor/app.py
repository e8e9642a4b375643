"""What the CLI commands do, as library functions the tests call directly."""

from __future__ import annotations

import contextlib
import shutil
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ingestor.config import ApiKey, ApiSettings, Settings
from ingestor.dropfile import walk
from ingestor.errors import ConfigError, LayoutError
from ingestor.kinds import KINDS
from ingestor.klaviyo import KlaviyoClient
from ingestor.layout import (
    FOLDER_DEPTH,
    ImportFolder,
    Placement,
    locate_import_folder,
    place,
    read_folder_config,
)
from ingestor.ledger import FileRun, Ledger, open_existing_ledger, open_ledger
from ingestor.notify.message import compose
from ingestor.notify.notifier import Notifier, NotifySettings
from ingestor.notify.outbox import Outbox
from ingestor.notify.smtp import DeliveryError, send
from ingestor.pipeline import FolderResult, Pipeline, ProgressFn
from ingestor.ratelimit import AccountLimiter
from ingestor.reports import FileReport
from ingestor.service_config import ServiceSettings


def ingest_folder_once(
    path: Path,
    key: ApiKey,
    settings: Settings,
    *,
    company: str | None = None,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    limiter: AccountLimiter | None = None,
) -> FolderResult:
    """``ingestor ingest``: process one import folder once, resuming any interrupted file.

    Pass the account's ``limiter`` when ingesting several folders of one account in turn.
    """
    folder = locate_import_folder(path, company)
    ledger = open_ledger(settings.state_dir)
    try:
        with KlaviyoClient(settings.api, key) as client:
            limiter = limiter or AccountLimiter(settings.api.rate_limit)
            # The caller shows the outcome; a service on this state dir must not e-mail it.
            pipeline = Pipeline(settings, ledger, client, limiter, stop, progress, emails=False)
            return pipeline.ingest_folder(folder)
    finally:
        ledger.close()


@dataclass(frozen=True, slots=True)
class DropScan:
    folders: list[ImportFolder]
    strays: list[Path]


STRAY = Placement.STRAY


def scan_drop(drop_root: Path) -> DropScan:
    """Every import folder and every stray file under a drop root (walked iteratively, down to
    the import folders only; links are not followed)."""
    folders: list[ImportFolder] = []
    strays: list[Path] = []
    for path, info, _depth in sorted(walk(drop_root, FOLDER_DEPTH), key=lambda e: e[0]):
        parts = path.relative_to(drop_root).parts
        if stat.S_ISDIR(info.st_mode) and len(parts) == FOLDER_DEPTH:
            if parts[1] == "imports" and parts[2] in KINDS:
                kind = KINDS[parts[2]]
                folders.append(ImportFolder(path, parts[0], kind, path.name, drop_root))
        elif stat.S_ISREG(info.st_mode) and place(PurePosixPath(*parts)).placement is STRAY:
            strays.append(path)
    return DropScan(folders, strays)


def write_emails(
    results: list[FolderResult], state_dir: Path, recipients: tuple[str, ...]
) -> list[Path]:
    """One completion message per finished file, as .eml files in ``<state_dir>/outbox/``."""
    notifier = Notifier(state_dir, NotifySettings(), environ={})
    written: list[Path] = []
    for result in results:
        for file in result.files:
            report = file.report.report if file.report else None
            if report is not None:
                path = notifier.send([report], recipients)
                if path is not None:
                    written.append(path)
    return written


DEMO_MARKER = ".ingestor-demo"
# Everything a demo run writes in its state directory; nothing else is ever removed.
_DEMO_ENTRIES = {DEMO_MARKER, "ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"}
_DEMO_FOLDERS = {"reports", "outbox"}


def sample_drop() -> Path:
    """The sample drop tree: shipped inside the wheel (``ingestor/sample_drop``), or the
    checkout's own ``sample_drop/`` beside the package."""
    packaged = Path(__file__).with_name("sample_drop")
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "sample_drop"


def reset_demo_state(state_dir: Path) -> None:
    """Give the demo an empty state directory: a new or empty one is marked as the demo's;
    one the demo made before is emptied of what the demo wrote. Any other directory is
    refused (ConfigError): it may be a real service's state, and nothing here deletes data
    it did not create."""
    if not state_dir.exists() or (state_dir.is_dir() and not any(state_dir.iterdir())):
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / DEMO_MARKER).touch()
        return
    if not state_dir.is_dir():
        raise ConfigError(f"{state_dir} is not a directory; give --state-dir a new directory")
    names = {p.name for p in state_dir.iterdir()}
    foreign = sorted(names - _DEMO_ENTRIES - _DEMO_FOLDERS)
    if DEMO_MARKER not in names or foreign:
        shown = ", ".join(foreign[:3]) or "no demo marker"
        raise ConfigError(
            f"{state_dir} holds files the demo did not make ({shown}); it may be a real "
            "service's state, so it is left alone: give --state-dir a new or empty directory"
        )
    for name in names & _DEMO_ENTRIES - {DEMO_MARKER}:
        (state_dir / name).unlink()
    for name in names & _DEMO_FOLDERS:
        shutil.rmtree(state_dir / name)


def find_run(ledger: Ledger, which: str) -> FileRun:
    """A run by ledger id, or the newest run of a file given by path or name."""
    if which.isdigit():
        run = ledger.get(int(which))
        if run is None:
            raise ConfigError(f"the ledger has no run {which}")
        return run
    path = str(Path(which).resolve())
    for run in ledger.runs():
        if run.identity.path == path or run.identity.name == which:
            return run
    raise ConfigError(f"the ledger knows no file {which!r}; give a run id from `ingestor status`")


@dataclass(frozen=True, slots=True)
class Resent:
    recipients: tuple[str, ...]
    path: Path  # where the message is: the outbox queue, or among the sent ones
    delivered: bool  # accepted by the SMTP server now (False: written or queued)
    problem: str = ""  # why it was not delivered now, if SMTP was tried


def resend_report(
    settings: ServiceSettings, which: str, to: tuple[str, ...], environ: Mapping[str, str]
) -> Resent:
    """``ingestor notify --resend``: e-mail a file's report again, to ``to`` or to its
    company's recipients; without [smtp], written to the outbox."""
    with open_existing_ledger(settings.state_dir) as ledger:
        run = find_run(ledger, which)
    report = FileReport.load(run.report_path)
    company = settings.companies.get(run.identity.company)
    recipients = to or (company.recipients if company else ())
    if report is None or not recipients:
        raise ConfigError(
            f"run {run.id}: " + ("no report yet" if report is None else "no recipients configured")
        )
    notify = settings.notify
    message = compose(
        [report], sender=notify.sender, recipients=recipients,
        attach_max_bytes=notify.attach_max_bytes,
    )  # fmt: skip
    outbox = Outbox(settings.state_dir / "outbox", queued=notify.smtp is not None)
    label = f"{run.identity.company}-{run.identity.folder}-{run.identity.name}-resend"
    if notify.smtp is None:
        return Resent(recipients, outbox.put(message, label), delivered=False)
    try:
        send(message.as_bytes(), notify.smtp, environ)
    except DeliveryError as exc:
        return Resent(recipients, outbox.put(message, label), False, str(exc))
    return Resent(recipients, outbox.put(message, label, sent=True), delivered=True)


@dataclass(frozen=True, slots=True)
class DemoRun:
    drop: Path
    folders: int
    results: list[FolderResult]
    strays: list[Path]
    stats: dict[str, Any]
    emails: list[Path]
    seconds: float


def run_demo(
    drop: Path, state_dir: Path, on_start: Callable[[str, int], None] = lambda _u, _n: None
) -> DemoRun:
    """``ingestor demo``: the drop tree ingested into a built-in simulator at the guide's
    limits, its e-mails written as .eml files. ``on_start`` hears the simulator's URL and
    the number of import folders before ingestion begins."""
    from ingestor.simulator import Simulator

    reset_demo_state(state_dir)
    scan = scan_drop(drop)
    keys = {f"demo-key-{company}": company for company in {f.company for f in scan.folders}}
    results: list[FolderResult] = []
    began = time.monotonic()
    with Simulator(keys) as sim:
        for folder in scan.folders:
            with contextlib.suppress(LayoutError):  # the demo shows how it is reported
                if folder.kind.has_data_source:
                    target = read_folder_config(folder.path, folder.kind).target_id
                    sim.add_data_source(folder.company, target)
        on_start(sim.url, len(scan.folders))
        # Profile import jobs complete in 0.2 s here; no need to wait 2 s between looks.
        api = ApiSettings(base_url=sim.url, job_poll_interval=0.25)
        settings = Settings(state_dir=state_dir, api=api)
        limiters: dict[str, AccountLimiter] = {}
        for folder in scan.folders:
            key = ApiKey(f"demo-key-{folder.company}")
            limiter = limiters.setdefault(folder.company, AccountLimiter(settings.api.rate_limit))
            results.append(ingest_folder_once(folder.path, key, settings, limiter=limiter))
        stats = sim.stats()
    emails = write_emails(results, state_dir, ("data-team@example.com",))
    seconds = time.monotonic() - began
    return DemoRun(drop, len(scan.folders), results, scan.strays, stats, emails, seconds)


@dataclass(frozen=True, slots=True)
class SimulatorSetUp:
    """What ``ingestor simulate`` serves: the simulator, and each data source it created."""

    simulator: Any  # ingestor.simulator.Simulator (imported only when one is started)
    sources: list[tuple[str, str]]  # (account, data source id)


def start_simulator(
    keys: Mapping[str, str],
    host: str,
    port: int,
    *,
    clock_factor: float = 1.0,
    spec_limits: bool = False,
    data_sources: list[tuple[str, str]] | None = None,
    drop: Path | None = None,
) -> SimulatorSetUp:
    """``ingestor simulate``: a simulator answering ``keys`` (key → account), with the given
    data sources, plus, with ``drop``, the data source of every config.json in that tree in
    every account (a bad config.json is left for ingest to report)."""
    from ingestor.simulator import GUIDE_BULK_LIMITS, SPEC_BULK_LIMITS, Simulator

    sim = Simulator(
        dict(keys),
        host=host,
        port=port,
        clock_factor=clock_factor,
        bulk_limits=SPEC_BULK_LIMITS if spec_limits else GUIDE_BULK_LIMITS,
    )
    sources = list(data_sources or [])
    if drop is not None:
        for folder in scan_drop(drop).folders:
            if not folder.kind.has_data_source:
                continue
            with contextlib.suppress(LayoutError):
                target = read_folder_config(folder.path, folder.kind).target_id
                sources += [(account, target) for account in sorted(set(keys.values()))]
    for account, ds_id in sources:
        sim.add_data_source(account, ds_id)
    return SimulatorSetUp(sim, sources)
