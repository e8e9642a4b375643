"""A hostile company (or a hostile local process) attacks the trust boundary: its own tree.

Each test is an attack that worked before its defence; a swap "at the right moment" is made
deterministic by the pipeline's ``before_open`` seam, called between the moment a file was
found and the moment it is opened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestor.kinds import CUSTOM_OBJECTS
from ingestor.klaviyo import KlaviyoClient
from ingestor.layout import ImportFolder
from ingestor.ledger import LEDGER_NAME, FileState, SqliteLedger
from ingestor.pipeline import FolderResult, Pipeline
from ingestor.ratelimit import AccountLimiter
from ingestor.simulator import Simulator
from tests.conftest import api_key, make_folder, settings_for

SECRET_ROWS = b"id,secret\n1,beta-private-row-one\n2,beta-private-row-two\n"


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    """acme's folder with one good file, and beta's private file next door."""
    root = tmp_path / "drop"
    folder = make_folder(root)
    (folder / "pets.csv").write_bytes(b"id,name\n1,Rex\n2,Tom\n")
    beta = make_folder(root, "private", company="beta")
    (beta / "secret.csv").write_bytes(SECRET_ROWS)
    return root


def ingest(
    sim: Simulator,
    tmp_path: Path,
    folder: Path,
    drop: Path,
    before_open: Callable[[Path], None] | None = None,
) -> FolderResult:
    settings = settings_for(sim, tmp_path / "state")
    settings.state_dir.mkdir(exist_ok=True)
    ledger = SqliteLedger(settings.state_dir / LEDGER_NAME)
    try:
        with KlaviyoClient(settings.api, api_key()) as client:
            limiter = AccountLimiter(settings.api.rate_limit)
            pipeline = Pipeline(
                settings, ledger, client, limiter, emails=False, before_open=before_open
            )
            target = ImportFolder(folder, "acme", CUSTOM_OBJECTS, folder.name, drop)
            return pipeline.ingest_folder(target)
    finally:
        ledger.close()


def swap_in_symlink(target: Path) -> Callable[[Path], None]:
    def swap(path: Path) -> None:
        link = path.with_name(".swap")
        link.symlink_to(target)
        os.replace(link, path)  # atomically, as a rename over the data file

    return swap


def everything_written(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file())


@pytest.mark.parametrize("target", ["beta", "/etc/passwd"])
def test_a_symlink_swapped_over_a_data_file_is_refused_not_read(
    sim: Simulator, tmp_path: Path, drop: Path, target: str
) -> None:
    """Before: the file was hashed and parsed by path, so the link was followed: beta's rows
    went into acme's account, and /etc/passwd came back to acme as rejected rows."""
    beta_file = drop / "beta/imports/custom_objects/private/secret.csv"
    pointed = beta_file if target == "beta" else Path(target)
    folder = drop / "acme/imports/custom_objects/pets"
    result = ingest(sim, tmp_path, folder, drop, swap_in_symlink(pointed))
    (file,) = result.files
    assert file.run.state is FileState.REJECTED
    assert "symbolic link" in file.run.reason
    assert sim.records("acme") == []
    written = everything_written(tmp_path / "state")
    assert b"beta-private-row" not in written and b"root:x:0:0" not in written


def test_a_fifo_swapped_in_is_refused_without_blocking(
    sim: Simulator, tmp_path: Path, drop: Path
) -> None:
    """Before: opening the FIFO for reading blocked the lane forever."""

    def swap(path: Path) -> None:
        fifo = path.with_name(".fifo")
        os.mkfifo(fifo)
        os.replace(fifo, path)

    folder = drop / "acme/imports/custom_objects/pets"
    outcome: list[FolderResult] = []
    worker = threading.Thread(
        target=lambda: outcome.append(ingest(sim, tmp_path, folder, drop, swap)), daemon=True
    )
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the pipeline blocked on the FIFO"
    (file,) = outcome[0].files
    assert file.run.state is FileState.REJECTED and "FIFO" in file.run.reason


def test_a_symlinked_import_folder_is_not_entered(
    sim: Simulator, tmp_path: Path, drop: Path
) -> None:
    """The folder itself swapped for a link to another company's folder."""
    link = drop / "acme/imports/custom_objects/stolen"
    link.symlink_to(drop / "beta/imports/custom_objects/private")
    result = ingest(sim, tmp_path, link, drop)
    assert "symbolic link" in result.error
    assert result.files == [] and sim.records("acme") == []


def test_a_symlinked_config_json_is_not_read(sim: Simulator, tmp_path: Path, drop: Path) -> None:
    folder = drop / "acme/imports/custom_objects/pets"
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(drop / "beta/imports/custom_objects/private/config.json")
    result = ingest(sim, tmp_path, folder, drop)
    assert "config.json" in result.error and "symbolic link" in result.error
    assert sim.records("acme") == []


def test_a_file_replaced_after_opening_is_still_read_from_what_was_opened(
    sim: Simulator, tmp_path: Path, drop: Path
) -> None:
    """What is hashed is what is parsed: a swap after the open changes nothing that is sent,
    and the file is then reported as replaced (its new version goes through on its own)."""
    folder = drop / "acme/imports/custom_objects/pets"
    original = folder / "pets.csv"
    big = b"id,name\n" + b"".join(b"%d,pet %d\n" % (i, i) for i in range(2000))
    original.write_bytes(big)
    state = tmp_path / "state"
    sent_batches: list[int] = []

    def swap_after_first_batch(_run: object, offset: int, _counts: object) -> None:
        sent_batches.append(offset)
        if len(sent_batches) == 1:
            (folder / ".other").write_bytes(SECRET_ROWS)
            os.replace(folder / ".other", original)

    settings = settings_for(sim, state)
    state.mkdir()
    ledger = SqliteLedger(state / LEDGER_NAME)
    try:
        with KlaviyoClient(settings.api, api_key()) as client:
            pipeline = Pipeline(
                settings,
                ledger,
                client,
                AccountLimiter(settings.api.rate_limit),
                progress=swap_after_first_batch,
                emails=False,
            )
            result = pipeline.ingest_folder(
                ImportFolder(folder, "acme", CUSTOM_OBJECTS, "pets", drop)
            )
    finally:
        ledger.close()
    (file,) = result.files
    assert file.run.state is FileState.FAILED
    assert "replaced by another file while being processed" in file.run.reason
    assert all("secret" not in record for record in sim.records("acme"))
    assert [r["id"] for r in sim.records("acme")] == [str(i) for i in range(500)]


# -- a file the service may not read ---------------------------------------------------------

NOBODY = 65534


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ingestor-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _as_service_user(work: Callable[[], FolderResult]) -> tuple[str, bool, str]:
    """Run ``work`` as an unprivileged user (a forked child that drops root, as a service
    user would be); return the state, whether it was unchanged, and the reason of its one
    file."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, so the interpreter under /root need not be readable
        code = 1
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            (file,) = work().files
            answer = f"{file.run.state.value}\n{int(file.unchanged)}\n{file.run.reason}"
            os.write(writer, answer.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        answer = pipe.read().decode()
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged run failed"
    state, unchanged, reason = answer.split("\n", 2)
    return state, unchanged == "1", reason


def test_a_file_the_service_cannot_read_is_reported_once_with_the_fix(
    sim: Simulator, open_dir: Path
) -> None:
    """Before: a traceback at every scan, and no report, e-mail or status line."""
    drop = open_dir / "drop"
    folder = make_folder(drop)
    data = folder / "pets.csv"
    data.write_bytes(b"id,name\n1,Rex\n")
    state = open_dir / "state"
    state.mkdir()
    if os.geteuid() == 0:
        data.chmod(0o600)  # root's, unreadable to the service user
        for path in (state, drop):
            os.chown(path, NOBODY, NOBODY)

        def run() -> tuple[str, bool, str]:
            return _as_service_user(lambda: ingest(sim, open_dir, folder, drop))

    else:  # pragma: no cover - where the suite runs unprivileged already
        data.chmod(0)

        def run() -> tuple[str, bool, str]:
            (file,) = ingest(sim, open_dir, folder, drop).files
            return file.run.state.value, file.unchanged, file.run.reason

    first_state, first_unchanged, first_reason = run()
    assert first_state == "failed" and not first_unchanged
    assert "may not read pets.csv (permission denied)" in first_reason
    assert "operator" in first_reason and "chmod" in first_reason
    ledger = SqliteLedger(state / LEDGER_NAME)
    try:
        (recorded,) = ledger.runs()
        assert recorded.report_path and Path(recorded.report_path).exists()
    finally:
        ledger.close()
    _state, second_unchanged, second_reason = run()  # the next rescan: not news again
    assert second_unchanged and second_reason == first_reason
    ledger = SqliteLedger(state / LEDGER_NAME)
    try:
        assert len(ledger.runs()) == 1  # one version, not one per scan
    finally:
        ledger.close()


# -- a tree deeper than any recursion limit ---------------------------------------------------


def deep_tree(top: Path, levels: int) -> None:
    """``levels`` nested folders under ``top``, made one at a time relative to a descriptor
    (os.makedirs would itself recurse once a level)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def remove_deep_tree(top: Path) -> None:
    """Undo ``deep_tree`` without recursion (shutil.rmtree recurses on Python 3.11): lift the
    second level up and remove the first, once a level."""
    while (top / "d").exists():
        if (top / "d" / "d").exists():
            os.rename(top / "d" / "d", top / "lifted")
            os.rmdir(top / "d")
            os.rename(top / "lifted", top / "d")
        else:
            os.rmdir(top / "d")


def test_a_company_tree_deeper_than_the_recursion_limit_stops_nobody(tmp_path: Path) -> None:
    """Before: 1,101 nested folders made every rescan, reload and restart die with
    RecursionError (os.walk and watchdog's recursive watch both recurse on Python 3.11)."""
    from tests.service_helpers import jsonl, running_service, two_companies, write_settings

    drop, state = tmp_path / "drop", tmp_path / "state"
    acme = make_folder(drop)
    deep_tree(acme, 1101)  # inside an import folder
    deep_tree(drop / "acme" / "imports", 1101)  # beside the kinds
    beta = make_folder(drop, company="beta")
    with contextlib.ExitStack() as cleanup, two_companies() as sim:
        cleanup.callback(remove_deep_tree, drop / "acme" / "imports")
        cleanup.callback(remove_deep_tree, acme)
        settings = write_settings(
            tmp_path / "s.toml",
            drop,
            state,
            sim,
            companies={"acme": "ACME_KEY", "beta": "BETA_KEY"},
        )
        with running_service(settings) as svc:  # the start-up scan and watches survive it
            (beta / "b.jsonl").write_bytes(jsonl(0, 5))
            assert svc.run_for("b.jsonl").counts.sent == 5
            (acme / "a.jsonl").write_bytes(jsonl(0, 7))
            assert svc.run_for("a.jsonl").counts.sent == 7
            svc.service.request_rescan()  # a rescan walks past it too
            svc.service.request_reload()
            (beta / "c.jsonl").write_bytes(jsonl(10, 3))
            assert svc.run_for("c.jsonl").counts.sent == 3
        assert len(sim.records("beta")) == 8 and len(sim.records("acme")) == 7


# -- over SFTP ---------------------------------------------------------------------------------


@pytest.fixture
def sftp_service(tmp_path: Path, sim: Simulator, keys: dict[str, Path]) -> Iterator[object]:
    from tests.service_helpers import running_service
    from tests.test_sftp import sftp_settings

    settings = sftp_settings(tmp_path, sim, keys)
    settings.write_text(
        settings.read_text().replace(
            "[companies.acme]\n", "[companies.acme]\nsftp_quota_bytes = 3000\n"
        )
    )
    with running_service(settings) as svc:
        yield svc


def acme_client(svc: object, keys: dict[str, Path]) -> object:
    from tests.test_sftp import Client

    client = Client(svc, "acme", keys["acme"])  # type: ignore[arg-type]
    client.sftp.mkdir("/imports/custom_objects/pets")
    return client


def test_hidden_upload_names_cannot_hide_bytes_from_the_quota(
    sftp_service: object, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Before: a finished upload renamed to '.x.upload' left the count (11.7 MB stored
    against a 3 MB quota)."""
    client: Any = acme_client(sftp_service, keys)
    try:
        client.put(b"x" * 2000, "/imports/custom_objects/pets/a.txt")
        with pytest.raises(OSError, match="reserved for uploads"):
            client.sftp.posix_rename(
                "/imports/custom_objects/pets/a.txt", "/imports/custom_objects/pets/.a.1.upload"
            )
        # Even a file that got such a name some other way counts.
        folder = tmp_path / "drop/acme/imports/custom_objects/pets"
        os.replace(folder / "a.txt", folder / ".a.1234abcd.upload")
        with pytest.raises(OSError, match="quota exceeded: acme may store at most 3,000"):
            client.put(b"y" * 2000, "/imports/custom_objects/pets/b.txt")
    finally:
        client.close()


def test_an_upload_onto_a_folders_name_leaves_nothing_behind(
    sftp_service: object, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Before: the upload was written to a hidden temporary, failed to take the folder's name
    and stayed there, uncounted."""
    client: Any = acme_client(sftp_service, keys)
    folder = tmp_path / "drop/acme/imports/custom_objects/pets"
    try:
        client.sftp.mkdir("/imports/custom_objects/other")
        with pytest.raises(OSError, match="exists and is not a file"):
            client.put(b"z" * 1000, "/imports/custom_objects/other")
        assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []
        client.put(b"z" * 2500, "/imports/custom_objects/pets/fits.txt")  # the quota is whole
    finally:
        client.close()
    assert sorted(p.name for p in folder.iterdir()) == ["fits.txt"]


def test_folders_cannot_be_nested_inside_an_import_folder_over_sftp(
    sftp_service: object, keys: dict[str, Path]
) -> None:
    client: Any = acme_client(sftp_service, keys)
    try:
        with pytest.raises(OSError, match="import folders hold files, not folders"):
            client.sftp.mkdir("/imports/custom_objects/pets/deeper")
    finally:
        client.close()


def test_reading_a_fifo_over_sftp_is_refused_without_hanging(
    sftp_service: object, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Before: the session's server thread blocked opening the FIFO for reading."""
    client: Any = acme_client(sftp_service, keys)
    os.mkfifo(tmp_path / "drop/acme/imports/custom_objects/pets/pipe.csv")
    try:
        began = time.monotonic()
        with pytest.raises(OSError, match="FIFO"):
            client.sftp.open("/imports/custom_objects/pets/pipe.csv", "rb").read()
        assert time.monotonic() - began < 5
        assert client.sftp.listdir("/imports/custom_objects")  # the session still answers
    finally:
        client.close()


def test_chmod_and_chown_are_refused_honestly_and_times_are_applied(
    sftp_service: object, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Before: chmod, chown and utime all answered OK and changed nothing."""
    client: Any = acme_client(sftp_service, keys)
    path = "/imports/custom_objects/pets/a.txt"
    try:
        client.put(b"hello", path)
        with pytest.raises(OSError, match="owners and permissions are set by the service"):
            client.sftp.chmod(path, 0o777)
        with pytest.raises(OSError, match="owners and permissions are set by the service"):
            client.sftp.chown(path, 0, 0)
        client.sftp.utime(path, (1_700_000_000, 1_700_000_000))
        assert client.sftp.stat(path).st_mtime == 1_700_000_000
    finally:
        client.close()
    local = tmp_path / "drop/acme/imports/custom_objects/pets/a.txt"
    assert local.stat().st_mode & 0o777 != 0o777


def test_a_name_as_long_as_the_file_system_allows_can_be_uploaded(
    sftp_service: object, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Before: names of 240-254 characters were refused (the upload's temporary name, the
    name plus 17 characters, did not fit in 255)."""
    client: Any = acme_client(sftp_service, keys)
    name = "n" * 248 + ".jsonl"  # 254 characters
    try:
        client.put(b"{}\n", f"/imports/custom_objects/pets/{name}")
        assert name in client.sftp.listdir("/imports/custom_objects/pets")
    finally:
        client.close()
    assert (tmp_path / "drop/acme/imports/custom_objects/pets" / name).read_bytes() == b"{}\n"


# -- costs a careless uploader can impose ------------------------------------------------------


def test_a_file_that_keeps_growing_is_sent_once_and_emailed_once(tmp_path: Path) -> None:
    """Before: appended and closed every 100 ms for 10 s, one file became 88 versions: 57,000
    duplicate records and 88 e-mails. Now a file that changes while being sent waits until it
    holds still, and a version that is a pure append continues where the last one stopped."""
    import email
    from collections import Counter
    from email.policy import default

    from tests.service_helpers import jsonl, running_service, two_companies, write_settings

    drop = tmp_path / "drop"
    folder = make_folder(drop)
    with two_companies() as sim:
        sim.faults.latency = 0.02  # a batch takes a while: appends land mid-file
        settings = write_settings(
            tmp_path / "s.toml",
            drop,
            tmp_path / "state",
            sim,
            company_lines='recipients = ["ops@acme.example"]',
        )
        settings.write_text(
            settings.read_text().replace("quiet_period_seconds = 0.3", "quiet_period_seconds = 0.6")
        )
        with running_service(settings) as svc:
            path = folder / "growing.jsonl"
            for step in range(30):  # 3 s of appends, a close after each
                with path.open("ab") as handle:
                    handle.write(jsonl(step * 200, 200))
                time.sleep(0.1)  # the uploader's pace, not a synchronisation
            final_size = path.stat().st_size
            while True:  # until the whole, final file is done
                run = svc.run_for("growing.jsonl", timeout=30)
                if run.state is FileState.DONE and run.identity.size == final_size:
                    break
        received = Counter(int(r["id"]) for r in sim.records("acme"))
    assert set(received) == set(range(6000))
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= 500, duplicates  # at most one batch in flight when a change landed
    mails = [
        email.message_from_bytes(p.read_bytes(), policy=default)["Subject"]
        for p in (tmp_path / "state" / "outbox").glob("*.eml")
    ]
    # The first close looked like a finished upload; from the second append on, the file
    # waits until it holds still. So at most two versions, and two e-mails (was 88).
    assert 1 <= len(mails) <= 2, mails
    assert all(m.startswith("[ingestor] acme / pets / growing.jsonl: ") for m in mails)
