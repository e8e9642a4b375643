"""One import folder end to end: config → data source check → parse → batch → send →
checkpoint → report. The only module that knows all the stages; each stage knows none."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import structlog

from ingestor import crashpoints
from ingestor.batcher import batches, within_limits
from ingestor.config import PUBLISHED_KIND_LIMITS, Budget, Settings
from ingestor.dropfile import Directory, DropFile, Unreadable, UnsafeEntry, open_directory
from ingestor.errors import (
    OVER_BUDGET,
    READ_FAILED,
    STRAY_FILE,
    ApiError,
    AuthError,
    FileChanged,
    Interrupted,
    LayoutError,
    ManifestMismatch,
    NotFound,
    ParseError,
    SystemicRejection,
)
from ingestor.identity import KnownHashes, identify, unopened_identity
from ingestor.kinds import Envelope, ImportKind
from ingestor.klaviyo import KlaviyoClient
from ingestor.layout import (
    APPROVE_SUFFIX,
    FolderConfig,
    FolderListing,
    ImportFolder,
    Manifest,
    data_format,
    is_compressed,
    list_folder,
    load_folder_config,
    load_manifest,
)
from ingestor.ledger import FileRun, FileState, Ledger
from ingestor.mapping import map_rows, row_mapper
from ingestor.parsers import GzipLimits, ParseLimits, assumptions, parse_file, read_head
from ingestor.ratelimit import AccountLimiter
from ingestor.records import FileCounts, LineRun, Record, Reject
from ingestor.reports import RejectsFile, Report, report_dir, run_stem, write_report
from ingestor.sender import Sender, others_sending
from ingestor.turns import Turns

log = structlog.get_logger("ingestor.pipeline")

ProgressFn = Callable[[FileRun, int, FileCounts], None]
# A test seam: called with a file's path just before it is opened (tests swap files there).
BeforeOpenFn = Callable[[Path], None]

# How long a data source found by GET stays trusted before a folder's next file checks again.
DATA_SOURCE_TTL = 300.0


@dataclass(frozen=True, slots=True)
class FileResult:
    run: FileRun
    report: Report | None
    unchanged: bool = False  # already done earlier: nothing was sent
    changed: bool = False  # stopped because the file changed while it was being sent


@dataclass(frozen=True, slots=True)
class _Registered:
    """A data file registered in the ledger, and how it looked when it was identified."""

    run: FileRun
    path: Path
    seen: tuple[int, int, int, int] | None  # (device, inode, size, mtime) when identified
    refusal: LayoutError | None


def _same_file_key(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class FolderResult:
    folder: ImportFolder
    files: list[FileResult] = field(default_factory=list)
    error: str = ""  # why the folder was not processed, if it was not
    ignored: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.error and all(f.run.state is FileState.DONE for f in self.files)


class Pipeline:
    """Ingests import folders for one account."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        client: KlaviyoClient,
        limiter: AccountLimiter,
        stop: threading.Event | None = None,
        progress: ProgressFn | None = None,
        known_hashes: KnownHashes | None = None,
        emails: bool = True,
        before_open: BeforeOpenFn | None = None,
    ) -> None:
        """``emails``: finished files wait in the ledger until their e-mail is queued (the
        service); False when the caller shows the outcome itself (``ingestor ingest``)."""
        self._before_open = before_open
        self._known_hashes = known_hashes
        self._emails = emails
        self._settings = settings
        self._ledger = ledger
        self._client = client
        self._limiter = limiter
        self._kind_limiters: dict[str, AccountLimiter] = {}  # other kinds' endpoints
        self._stop = stop or threading.Event()
        self._progress = progress
        self._verified: dict[str, float] = {}  # data source id → when a GET last found it
        self._listings: dict[Path, tuple[tuple[int, int, int], FolderListing]] = {}

    def ingest_folder(self, folder: ImportFolder) -> FolderResult:
        """Process every data file of ``folder`` that is not already done."""
        return self.ingest_files(folder, None)

    def ingest_files(self, folder: ImportFolder, only: Collection[Path] | None) -> FolderResult:
        """Process the data files of ``folder`` (those in ``only``, if given) not already done."""
        bound = log.bind(company=folder.company, folder=folder.name)
        try:
            directory = folder.open()
        except LayoutError as exc:  # the folder itself is a link now, or gone
            bound.warning("folder_not_processed", reason=str(exc))
            return FolderResult(folder, [], str(exc))
        with directory:
            return self._ingest_directory(folder, directory, only)

    def _listing(self, directory: Directory) -> FolderListing:
        """The folder's listing, read again only when the folder changed (its mtime moves
        with every entry added, removed or renamed): a folder of 10,000 files is listed
        once, not once a file."""
        info = os.fstat(directory.fd)
        key = (info.st_dev, info.st_ino, info.st_mtime_ns)
        cached = self._listings.get(directory.path)
        if cached is not None and cached[0] == key:
            return cached[1]
        listing = list_folder(directory)
        if len(self._listings) > 256:
            self._listings.clear()
        self._listings[directory.path] = (key, listing)
        return listing

    def _ingest_directory(
        self, folder: ImportFolder, directory: Directory, only: Collection[Path] | None
    ) -> FolderResult:
        listing = self._listing(directory)
        if only is not None:
            wanted = {p.name for p in only}
            listing = replace(
                listing, data_files=tuple(p for p in listing.data_files if p.name in wanted)
            )
        # Every file is registered first (a bad config.json rejects them all), each open only
        # while it is identified: a folder of thousands of files never holds thousands of
        # descriptors. Each is opened again to be sent, and must still be the same file.
        registered: list[_Registered] = []
        for path in listing.data_files:
            run, file, refusal = self._open(folder, directory, path)
            seen = _same_file_key(file.info) if file is not None else None
            if file is not None:
                file.close()
            registered.append(_Registered(run, path, seen, refusal))
        return self._ingest_registered(folder, directory, registered, listing.ignored)

    def _ingest_registered(
        self,
        folder: ImportFolder,
        directory: Directory,
        registered: list[_Registered],
        ignored: tuple[str, ...],
    ) -> FolderResult:
        try:
            config = load_folder_config(directory, folder.kind)
        except LayoutError as exc:
            files = [
                self._close(r.run, FileState.REJECTED, str(exc), ignored, code=exc.code)
                for r in registered
            ]
            return FolderResult(folder, files, str(exc), ignored)

        results: list[FileResult] = []
        todo: list[_Registered] = []
        for entry in registered:
            if entry.refusal is not None:
                results.append(self._refused(entry.run, entry.refusal, ignored))
            elif entry.run.state is FileState.DONE or (
                entry.run.state is FileState.QUARANTINED and not self._released(directory, entry)
            ):
                results.append(FileResult(entry.run, None, unchanged=True))
            else:
                todo.append(entry)
        if not todo:
            return FolderResult(folder, results, "", ignored)

        kind = folder.kind
        sender = Sender(
            self._client,
            self._limiter_for(kind),
            kind.endpoint,
            kind.envelope(config.target_id),
            self._settings.api.retry,
            self._stop,
            probe=(lambda: self._client.get_data_source(config.target_id))
            if kind.has_data_source
            else None,
        )
        bound = log.bind(company=folder.company, folder=folder.name)
        try:
            if kind.has_data_source:
                self._check_data_source(sender, config.target_id)
        except NotFound:
            reason = (
                f"data source {config.target_id} (from config.json) does not exist in this "
                "account; create it or correct data_source_id"
            )
            bound.warning("folder_not_processed", reason=reason)
            results += [
                self._close(r.run, FileState.REJECTED, reason, ignored, code=NotFound.code)
                for r in todo
            ]
            return FolderResult(folder, results, reason, ignored)
        except AuthError as exc:
            for entry in todo:
                self._close(entry.run, FileState.FAILED, str(exc), ignored, code=exc.code)
            raise

        for entry in todo:
            run, file, refusal = self._reopen(folder, directory, entry)
            if refusal is not None:
                results.append(self._refused(run, refusal, ignored))
                continue
            assert file is not None
            with file:
                if run.state is FileState.DONE:  # became a version already done meanwhile
                    results.append(FileResult(run, None, unchanged=True))
                    continue
                try:
                    manifest = load_manifest(directory, entry.path.name)
                except LayoutError as exc:
                    code = ManifestMismatch.code
                    results.append(
                        self._close(run, FileState.REJECTED, str(exc), ignored, code=code)
                    )
                    continue
                if manifest is None and config.manifest_required:
                    # Nothing to tell yet: its manifest's arrival brings it back.
                    bound.info("waiting_for_manifest", file=entry.path.name)
                    results.append(FileResult(run, None, unchanged=True))
                    continue
                results.append(
                    self._ingest_file(folder, config, sender, run, file, ignored, manifest)
                )
        return FolderResult(folder, results, "", ignored)

    def _reopen(
        self, folder: ImportFolder, directory: Directory, entry: _Registered
    ) -> tuple[FileRun, DropFile | None, LayoutError | None]:
        """Open a registered file again to send it: the same file (device, inode, size,
        mtime) keeps its run; anything else is identified afresh, as a new version."""
        try:
            file = directory.open_file(entry.path.name)
        except LayoutError:
            return self._open(folder, directory, entry.path)  # registers the refusal
        if _same_file_key(file.info) == entry.seen:
            return entry.run, file, None
        file.close()
        return self._open(folder, directory, entry.path)

    def _open(
        self, folder: ImportFolder, directory: Directory, path: Path
    ) -> tuple[FileRun, DropFile | None, LayoutError | None]:
        """Open a data file once and register the version found through that descriptor;
        a file that cannot be opened safely is registered as such, with the refusal."""
        if self._before_open is not None:
            self._before_open(path)
        kind, name = folder.kind.folder, folder.name
        try:
            file = directory.open_file(path.name)
        except LayoutError as exc:
            log.warning(
                "file_refused", company=folder.company, folder=name, file=path.name, reason=str(exc)
            )
            identity = unopened_identity(path, folder.company, kind, name)
            return self._ledger.register(identity), None, exc
        try:
            found = identify(file, folder.company, kind, name, self._ledger, self._known_hashes)
            run = self._ledger.register(found.identity)
            if found.appends_to is not None and not is_compressed(path.name):
                # (a compressed file's offsets are not the file's: it starts afresh)
                run = self._continue(run, found.appends_to, file)
            return run, file, None
        except BaseException:
            file.close()
            raise

    def _continue(self, run: FileRun, earlier: FileRun, file: DropFile) -> FileRun:
        """A new version that is a pure append of ``earlier`` starts where ``earlier``
        stopped (its last checkpoint, at a line boundary): what was sent is not sent again."""
        fresh = run.id != earlier.id and run.offset == 0 and run.counts.read == 0
        if not fresh or earlier.offset <= 0 or not file.ends_a_line_at(earlier.offset):
            return run
        self._ledger.checkpoint(run.id, earlier.offset, earlier.line, 0, FileCounts())
        log.info(
            "file_continued",
            company=run.identity.company,
            folder=run.identity.folder,
            file=run.identity.name,
            version=run.version,
            from_version=earlier.version,
            offset=earlier.offset,
            line=earlier.line,
        )
        return replace(run, offset=earlier.offset, line=earlier.line)

    def _refused(self, run: FileRun, refusal: LayoutError, ignored: tuple[str, ...]) -> FileResult:
        """A file that could not be opened: unsafe entries are rejected for good (until they
        change), unreadable ones failed (retried: the operator can fix the mode)."""
        if run.state in (FileState.REJECTED, FileState.FAILED) and run.reason == str(refusal):
            return FileResult(run, None, unchanged=True)
        state = FileState.FAILED if isinstance(refusal, Unreadable) else FileState.REJECTED
        return self._close(run, state, str(refusal), ignored, code=refusal.code)

    def reject_stray(
        self, company: str, kind: str, path: Path, base: Path | None = None
    ) -> FileResult:
        """A data file directly under ``imports/<kind>/``: recorded and reported, never parsed
        (it is opened safely to hash it, so a changed stray is a new version)."""
        reason = (
            f"{path.name} is directly under imports/{kind}/; move it into a named folder that "
            f"has a config.json (imports/{kind}/<folder>/{path.name})"
        )
        base = base or path.parent
        parts = path.parent.relative_to(base).parts
        try:
            with open_directory(base, parts) as directory, directory.open_file(path.name) as file:
                found = identify(file, company, kind, "", self._ledger, self._known_hashes)
                identity = found.identity
        except (UnsafeEntry, Unreadable) as exc:
            reason = f"{reason}; besides, {exc}"
            identity = unopened_identity(path, company, kind, "")
        run = self._ledger.register(identity)
        if run.state is FileState.REJECTED:
            return FileResult(run, None, unchanged=True)
        log.warning("stray_file_rejected", company=company, file=path.name, reason=reason)
        return self._close(run, FileState.REJECTED, reason, (), code=STRAY_FILE)

    def _released(self, directory: Directory, entry: _Registered) -> bool:
        """Whether a quarantined file is approved: by the operator (``ingestor approve``,
        in the ledger), or by the uploader putting ``<name>.approve`` beside it."""
        if entry.run.approved:
            return True
        try:
            directory.lstat(entry.path.name + APPROVE_SUFFIX)
        except OSError:
            return False
        log.info("file_approved", company=entry.run.identity.company, file=entry.path.name)
        return self._ledger.approve(entry.run.id)

    @staticmethod
    def _items(
        file: DropFile,
        fmt: str,
        limits: ParseLimits,
        start: tuple[int, int, str, str, bool],
        kind: ImportKind,
        config: FolderConfig,
        run: FileRun,
    ) -> Iterable[LineRun | Record | Reject]:
        """The file's rows from ``start``, each made its endpoint's item where the kind
        wants (``mapping``)."""
        items: Iterable[LineRun | Record | Reject] = parse_file(file.reader(), fmt, limits, *start)
        if kind.maps_rows:
            mapper = row_mapper(kind, config.target_id, config.backfill, run.identity.sha256)
            items = map_rows(items, mapper)
        return items

    def _limiter_for(self, kind: ImportKind, jobs: bool = False) -> AccountLimiter:
        """The account's limiter for the kind's endpoint (Klaviyo limits each endpoint on its
        own): custom objects' is the setting; another kind's has its published limits, as
        have the reads of its ``jobs``."""
        if kind.has_data_source:
            return self._limiter
        key = f"{kind.folder}/jobs" if jobs else kind.folder
        limiter = self._kind_limiters.get(key)
        if limiter is None:
            limits = self._settings.api.kind_rate_limits.get(
                kind.folder, PUBLISHED_KIND_LIMITS[kind.folder]
            )
            limiter = self._kind_limiters[key] = AccountLimiter(limits)
        return limiter

    def _read_jobs(
        self,
        run: FileRun,
        kind: ImportKind,
        rejects: RejectsFile,
        counts: FileCounts,
        at: tuple[int, int],
    ) -> None:
        """Wait for each import job the file's requests created (the ledger keeps them across
        restarts) and bring its errors back to their lines: each refused record becomes a
        skipped row, with Klaviyo's detail, moved from sent to skipped. Each job's errors
        are checkpointed before it is marked done; a crash in between is recognised by the
        rejects file having grown past where they began, so nothing is counted twice."""
        reader = Sender(
            self._client,
            self._limiter_for(kind, jobs=True),
            kind.endpoint,
            kind.envelope(""),
            self._settings.api.retry,
            self._stop,
        )
        offset, line = at
        errors_page = partial(self._client.get_import_errors, kind.endpoint)
        for job in self._ledger.jobs(run.id):
            if job.done:
                continue
            if job.rejects_at is not None and rejects.sync() > job.rejects_at:
                self._ledger.job_done(job.id, 0)  # its errors were checkpointed: a crash
                continue
            status, failed = self._wait_for_job(reader, kind, job.job_id)
            self._ledger.job_reading(job.id, rejects.sync())
            refused = 0
            cursor = ""
            while failed != 0:  # unknown (None) or some: read them
                page = reader.call(partial(errors_page, job.job_id, cursor))
                for error in page.get("data") or []:
                    rejects.write(_import_error(error, job.lines))
                    refused += 1
                cursor = _next_cursor(page)
                if not cursor:
                    break
            if status == "cancelled":
                log.warning("import_job_cancelled", company=run.identity.company, job=job.job_id)
            refused = min(refused, counts.sent)
            counts.sent -= refused
            counts.skipped += refused
            self._ledger.checkpoint(run.id, offset, line, rejects.sync(), counts)
            self._ledger.job_done(job.id, refused)

    def _wait_for_job(
        self, reader: Sender, kind: ImportKind, job_id: str
    ) -> tuple[str, int | None]:
        """Look at the job until it is complete or cancelled: its final status, and how many
        records it says failed (None if it does not say)."""
        while True:
            document = reader.call(lambda: self._client.get_import_job(kind.endpoint, job_id))
            attributes = (document.get("data") or {}).get("attributes") or {}
            status, failed = str(attributes.get("status")), attributes.get("failed_count")
            if status in ("complete", "cancelled"):
                return status, failed if isinstance(failed, int) else None
            if self._stop.wait(self._settings.api.job_poll_interval):
                raise Interrupted("stop requested while an import job ran; it is read on resume")

    def _check_data_source(self, sender: Sender, target_id: str) -> None:
        checked = self._verified.get(target_id)
        if checked is not None and time.monotonic() - checked < DATA_SOURCE_TTL:
            return
        sender.call(lambda: self._client.get_data_source(target_id))
        self._verified[target_id] = time.monotonic()

    def _ingest_file(
        self,
        folder: ImportFolder,
        config: FolderConfig,
        sender: Sender,
        run: FileRun,
        file: DropFile,
        ignored: tuple[str, ...],
        manifest: Manifest | None = None,
    ) -> FileResult:
        path = file.path
        bound = log.bind(company=folder.company, folder=folder.name, file=path.name)
        rejects_path = report_dir(self._settings.state_dir, folder.company) / (
            f"{run_stem(run)}.rejected.jsonl"
        )
        # A run a process had started and left unfinished (killed, or stopped) may have had a
        # batch in flight: the API may have stored it, and it is sent again now.
        repeats_first_batch = run.state is FileState.PROCESSING and bool(run.rejects_path)
        released = run.state is FileState.QUARANTINED  # approved: sent as if within budget
        run = self._ledger.start(run.id, config.target_id, str(rejects_path))
        if folder.kind.makes_jobs:  # the batch after the checkpoint is sent again
            self._ledger.forget_unsent_jobs(run.id, run.line)
        resumed = run.offset > 0
        bound.info("file_started", resume_offset=run.offset, resumed=resumed, version=run.version)
        fmt = data_format(path.name)
        assert fmt is not None
        kind = folder.kind
        limits = ParseLimits(
            max_record_bytes=kind.limits.max_record_bytes,
            max_excerpt=self._settings.max_raw_excerpt,
            gzip=GzipLimits(
                self._settings.max_uncompressed_bytes, self._settings.max_compression_ratio
            ),
        )
        compressed = is_compressed(path.name)
        read_as: dict[str, str] = {}  # how it is read, for its report: filled once it is
        close = partial(self._close, read_as=read_as)
        counts = FileCounts() if released else replace(run.counts)
        pending = FileCounts()
        rejects = RejectsFile(rejects_path, run.rejects_bytes)
        checkpoint = run.offset  # the byte offset after the last acknowledged batch
        last_line = run.line
        try:
            # The head (64 KiB) is not kept: this frame lives as long as the file is sent.
            head = read_head(file.reader(), compressed, limits)
            read_as.update(assumptions(head, fmt, config.delimiter, config.encoding, compressed))
            del head
            start = (run.offset, run.line, config.delimiter, config.encoding, compressed)
            budget = None if run.approved else _budget(config, self._settings)
            if run.offset == 0 and (manifest is not None or budget is not None):
                # Looked at whole before the first batch: its manifest, its error budget.
                rows, skipped = _look_ahead(
                    self._items(file, fmt, limits, start, kind, config, run),
                    sender.envelope,
                    kind,
                    rejects if budget is not None else None,  # a manifest needs no rows
                    self._stop,
                )
                if budget is not None and budget.exceeded(skipped, rows):
                    rejects.sync()
                    seen = FileCounts(read=rows, skipped=skipped)
                    reason = _over_budget(run, rows, skipped, budget)
                    bound.warning("file_quarantined", reason=reason)
                    return close(run, FileState.QUARANTINED, reason, ignored, seen, OVER_BUDGET)
                if budget is not None:  # its rows are skipped again as they are met
                    rejects.close()
                    rejects = RejectsFile(rejects_path, 0)
                if manifest is not None:
                    _check_manifest(manifest, run, rows)
            items = self._items(file, fmt, limits, start, kind, config, run)
            for item in batches(items, sender.envelope, kind.limits):
                if type(item) is Reject:
                    rejects.write(item)
                    pending.read += 1
                    pending.skipped += 1
                    continue
                assert not isinstance(item, Reject)
                if item.records:
                    crashpoints.reached("batch.parsed")
                    outcome = sender.send(item.records)
                    for body, part in outcome.answers if kind.makes_jobs else ():
                        lines = [record.line for record in part]
                        self._ledger.add_job(run.id, _job_id(body), lines)
                    crashpoints.reached("batch.acknowledged")
                    for refused in outcome.refused:
                        rejects.write(refused)
                    pending.read += len(item.records)
                    pending.sent += outcome.accepted
                    pending.skipped += len(outcome.refused)
                    pending.batches += 1
                    pending.retries += outcome.retries
                    pending.throttled_seconds += outcome.throttled_seconds
                    pending.maybe_resent += outcome.maybe_resent
                    if repeats_first_batch:
                        pending.maybe_resent += outcome.accepted
                        repeats_first_batch = False
                counts.add(pending)
                pending = FileCounts()
                self._ledger.checkpoint(
                    run.id, item.end_offset, item.end_line, rejects.sync(), counts
                )
                checkpoint, last_line = item.end_offset, item.end_line
                if self._progress:
                    self._progress(run, item.end_offset, counts)
                _check_unchanged(file)
            _check_unchanged(file)
            if kind.makes_jobs:
                counts.add(pending)
                pending = FileCounts()
                self._read_jobs(run, kind, rejects, counts, (checkpoint, last_line))
        except ParseError as exc:
            return close(run, FileState.REJECTED, str(exc), ignored, counts, exc.code)
        except FileChanged as exc:
            bound.warning("file_changed", reason=str(exc))
            closed = close(run, FileState.FAILED, str(exc), ignored, counts, exc.code)
            return replace(closed, changed=True)
        except SystemicRejection as exc:
            bound.error("file_paused", reason=str(exc))
            return close(run, FileState.FAILED, str(exc), ignored, counts, exc.code)
        except AuthError as exc:
            close(run, FileState.FAILED, str(exc), ignored, counts, exc.code)
            raise
        except OSError as exc:
            reason = f"cannot read {path.name}: {exc.strerror or exc}"
            return close(run, FileState.FAILED, reason, ignored, counts, READ_FAILED)
        except Interrupted:
            bound.info("file_interrupted", offset=checkpoint)
            raise
        finally:
            rejects.close()
        counts.add(pending)
        result = close(run, FileState.DONE, "", ignored, counts)
        bound.info(
            "file_done",
            read=counts.read,
            sent=counts.sent,
            skipped=counts.skipped,
            batches=counts.batches,
            retries=counts.retries,
        )
        return result

    def _close(
        self,
        run: FileRun,
        state: FileState,
        reason: str,
        ignored: tuple[str, ...],
        counts: FileCounts | None = None,
        code: str = "",
        read_as: dict[str, str] | None = None,
    ) -> FileResult:
        """Write the report first, then the final state: a crash between the two only
        repeats the (idempotent) report. ``read_as``: how the file was read, if it was."""
        final = replace(
            run,
            state=state,
            reason=reason,
            reason_code=code,
            counts=counts or run.counts,
            finished_at=time.time(),
        )
        report = write_report(
            final,
            self._settings.state_dir,
            ignored=ignored,
            samples=self._settings.report_skip_samples,
            read_as=read_as,
        )
        final = replace(final, report_path=str(report.path))
        crashpoints.reached("report.unrecorded")
        self._ledger.finish(run.id, state, final.counts, reason, str(report.path), code)
        if not self._emails:
            self._ledger.mark_announced([run.id])
        return FileResult(final, report)


def _budget(config: FolderConfig, settings: Settings) -> Budget | None:
    """The folder's error budget, else the settings' default; None for no limit ("none")."""
    budget = config.budget if config.budget is not None else Budget.parse(settings.max_skipped)
    return budget if isinstance(budget, Budget) and budget.limited else None


# One file of a process is read whole at a time, first come first served, 200,000 rows a
# turn (a tenth to a fifth of a second of CPU; see ``ingestor.turns``). While other lanes
# are sending it rests as long as it worked, every few thousand rows, so they keep the GIL
# at least half the time: reading ahead must not cost the lanes already sending their pace.
READ_AHEAD = Turns(1)
ROWS_A_TURN = 200_000
ROWS_A_REST = 4_000


def _look_ahead(
    items: Iterable[LineRun | Record | Reject],
    envelope: Envelope,
    kind: ImportKind,
    rejects: RejectsFile | None,
    stop: threading.Event,
) -> tuple[int, int]:
    """Read the whole file as sending would, sending nothing: its rows, and how many would be
    skipped (each written to ``rejects``, if given). Packing into batches skips nothing, so
    it is left out: the records' sizes are checked as the batcher checks them. Files take
    turns at it, and yield to the lanes sending (``READ_AHEAD``)."""
    seen = skipped = 0
    turn_ends, rest_at = ROWS_A_TURN, ROWS_A_REST
    with READ_AHEAD.turn(stop) as turn:
        worked_since = time.perf_counter()
        for item in within_limits(items, envelope, kind.limits):
            if type(item) is Reject:
                if rejects is not None:
                    rejects.write(item)
                skipped += 1
                seen += 1
            else:
                seen += len(item) if type(item) is LineRun else 1
            if seen >= rest_at:
                if others_sending():
                    _rest(stop, time.perf_counter() - worked_since)
                worked_since, rest_at = time.perf_counter(), seen + ROWS_A_REST
            if seen >= turn_ends:
                turn.pass_on()
                turn_ends = seen + ROWS_A_TURN
    return seen, skipped


def _rest(stop: threading.Event, seconds: float) -> None:
    """Let the lanes that are sending have the GIL for ``seconds`` (a stop ends it)."""
    stop.wait(seconds)


def _over_budget(run: FileRun, rows: int, skipped: int, budget: Budget) -> str:
    name = run.identity.name
    share = f"{skipped * 100 / rows:.1f}%" if rows else "all"
    return (
        f"{skipped:,} of its {rows:,} rows would be skipped ({share}), over the folder's error "
        f"budget of {budget}; nothing was sent. To send its {rows - skipped:,} good rows "
        f"anyway, put a file named {name}.approve beside it (or the operator runs `ingestor "
        f"approve {run.id}`); or correct it and upload it again"
    )


def _check_manifest(manifest: Manifest, run: FileRun, rows: int) -> None:
    """ManifestMismatch unless the file is the one its manifest describes: its SHA-256 (of
    the file as uploaded) and its data rows (every row read, sent or skipped)."""
    name = f"{run.identity.name}.manifest.json"
    if manifest.sha256 is not None and manifest.sha256 != run.identity.sha256:
        raise ManifestMismatch(
            f"{name} says sha256 {manifest.sha256[:16]}…, the file's is "
            f"{run.identity.sha256[:16]}…: it is not the file the manifest describes (an "
            "incomplete upload, or another version); nothing was sent"
        )
    if manifest.rows is not None and rows != manifest.rows:
        raise ManifestMismatch(
            f"{name} says {manifest.rows:,} data rows, the file has {rows:,} (an incomplete "
            "upload, or the manifest of another version); nothing was sent"
        )


def _job_id(body: bytes) -> str:
    """The id of the import job an accepted request's answer names."""
    try:
        job = orjson.loads(body)["data"]["id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ApiError(f"the API accepted an import but named no job: {body[:200]!r}") from None
    return str(job)


# "/data/attributes/profiles/data/12/attributes/email" → 12: the record's place in the request
_ITEM_POINTER = re.compile(r"/data/attributes/[a-z-]+/data/(\d+)")


def _import_error(error: dict[str, Any], lines: list[int]) -> Reject:
    """An import job's error as the skipped row it is about (line 0 if it names none)."""
    attributes = error.get("attributes") or {}
    pointer = str((attributes.get("source") or {}).get("pointer") or "")
    match = _ITEM_POINTER.match(pointer)
    index = int(match.group(1)) if match else -1
    line = lines[index] if 0 <= index < len(lines) else 0
    field = pointer[match.end() :].removeprefix("/attributes/") if match else ""
    detail = str(attributes.get("detail") or attributes.get("title") or "no detail")
    where = f" ({field})" if field else ""
    payload = attributes.get("original_payload")
    raw = orjson.dumps(payload).decode()[:2048] if payload is not None else ""
    return Reject(line, line, 0, f"Klaviyo refused the record after import{where}: {detail}", raw)


def _next_cursor(page: dict[str, Any]) -> str:
    """The page[cursor] of ``links.next``, "" on the last page."""
    link = str((page.get("links") or {}).get("next") or "")
    if not link:
        return ""
    values = parse_qs(urlsplit(link).query).get("page[cursor]") or [""]
    return values[0]


def _check_unchanged(file: DropFile) -> None:
    """Raise FileChanged if the file being sent was written to, replaced or removed."""
    what = file.replaced_or_written()
    if what:
        raise FileChanged(
            f"{what}; records up to the last checkpoint were sent, and the new version will "
            "be processed from its start"
        )
