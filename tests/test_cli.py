"""The commands as a user types them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ingestor.simulator import Simulator
from tests.conftest import KEY, make_folder

SAMPLE = Path(__file__).resolve().parent.parent / "sample_drop"


def ingestor(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingestor.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def ingest_cli(
    sim: Simulator, folder: Path, state: Path, key: str
) -> subprocess.CompletedProcess[str]:
    """`ingestor ingest` against the simulator, with the key in the variable K."""
    return ingestor(
        "ingest",
        str(folder),
        "--api-key-env",
        "K",
        "--base-url",
        sim.url,
        "--state-dir",
        str(state),
        env={"K": key},
    )


def test_validate_lists_what_would_be_sent_and_skipped() -> None:
    folder = SAMPLE / "acme/imports/custom_objects/orders_messy"
    result = ingestor("validate", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    by_name = {Path(f["file"]).name: f for f in report["files"]}
    assert by_name["orders.csv"]["records"] == 197
    assert [(s["line"], s["reason"]) for s in by_name["orders.csv"]["skipped"]] == [
        (18, "row has 5 cells but the header has 4 columns"),
        (
            59,
            'row is not valid UTF-8 (it is valid Windows-1252: if the file is, declare "encoding"'
            ': "windows-1252" in the folder\'s config.json)',
        ),
        (121, "row has no values (every cell empty)"),
    ]
    assert report["ignored"] == [
        "README.txt (only .csv, .jsonl, .csv.gz and .jsonl.gz are processed)"
    ]
    text = ingestor("validate", str(folder))
    assert "line 18: row has 5 cells" in text.stdout


def test_validate_reads_a_csv_with_its_folders_declared_delimiter(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop")
    (folder / "config.json").write_text(
        json.dumps({"data_source_id": "01KTMWCZ8ZMNZS0HG5HQNX0H6E", "delimiter": "|"})
    )
    (folder / "pets.csv").write_text("id|name\n1|Rex\n2|Ann|x\n")
    for target in (folder, folder / "pets.csv"):
        result = ingestor("validate", str(target), "--json")
        assert result.returncode == 0, result.stderr
        (file,) = json.loads(result.stdout)["files"]
        assert file["records"] == 1
        assert [s["line"] for s in file["skipped"]] == [3]


def test_validate_loads_only_the_parsers() -> None:
    """``validate`` starts in a fraction of the time it took when it imported the HTTP
    client, SFTP, e-mail and logging it never uses (bench/startup_bench.py has the times)."""
    folder = SAMPLE / "acme/imports/custom_objects/orders_messy"
    code = (
        "import sys, contextlib, io\n"
        "import ingestor.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    ingestor.cli.main(['validate', {str(folder)!r}])\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    heavy = {"httpx", "paramiko", "jinja2", "rich", "structlog", "sqlite3", "watchdog", "ssl"}
    assert loaded & heavy == set()
    assert "ingestor.parsers" in result.stdout.split()


def test_validate_reports_a_bad_config_and_fails() -> None:
    result = ingestor("validate", str(SAMPLE / "acme/imports/custom_objects/coupons_bad_config"))
    assert result.returncode == 1
    assert 'no "data_source_id" key' in result.stdout


def test_ingest_exits_zero_and_never_prints_the_key(sim: Simulator, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop")
    (folder / "a.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    result = ingest_cli(sim, folder, tmp_path / "state", KEY)
    assert result.returncode == 0, result.stderr
    assert len(sim.records("acme")) == 2
    assert "done" in result.stdout
    logs = result.stdout + result.stderr
    reports = "".join(p.read_text() for p in (tmp_path / "state").rglob("*.json*"))
    assert KEY not in logs and KEY not in reports


def test_ingest_with_a_wrong_key_exits_3_with_one_line(sim: Simulator, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop")
    (folder / "a.jsonl").write_text('{"id": 1}\n')
    result = ingest_cli(sim, folder, tmp_path / "state", "pk_nope_123")
    assert result.returncode == 3
    assert "authentication failed" in result.stderr and "pk_nope_123" not in result.stderr


def test_ingest_without_the_key_variable_says_so(tmp_path: Path) -> None:
    result = ingestor("ingest", str(tmp_path), "--api-key-env", "UNSET_VAR_X")
    assert result.returncode == 2 and "UNSET_VAR_X is empty or not set" in result.stderr


def test_demo_ingests_the_sample_drop(tmp_path: Path) -> None:
    result = ingestor("demo", "--drop", str(SAMPLE), "--state-dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "simulator received 2,267 records, 6 events and 4 profiles" in result.stdout
    assert "(0 failures)" in result.stdout and "stray.csv" in result.stdout
    assert len(list((tmp_path / "demo" / "reports" / "acme").glob("*.report.json"))) == 12


def test_demo_twice_in_its_own_directory_starts_afresh(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    for _ in range(2):
        result = ingestor("demo", "--state-dir", str(state), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "simulator received 2,267 records, 6 events and 4 profiles" in result.stdout
    assert len(list((state / "reports" / "acme").glob("*.report.json"))) == 12


def test_demo_refuses_a_state_dir_it_did_not_make_and_deletes_nothing(tmp_path: Path) -> None:
    """Before: the second `ingestor demo --state-dir DIR` wiped DIR, even a real service's
    state dir (ledger, reports, e-mails, the SFTP host key)."""
    state = tmp_path / "service-state"
    (state / "reports" / "acme").mkdir(parents=True)
    kept = {
        "ledger.sqlite3": b"a real ledger",
        "sftp_host_key": b"a real host key",
        "reports/acme/000001-pets-pets.csv-v1.report.json": b"{}",
    }
    for name, data in kept.items():
        (state / name).write_bytes(data)
    for _ in range(2):  # the first run used to mark it; the second then wiped it
        result = ingestor("demo", "--state-dir", str(state), cwd=tmp_path)
        assert result.returncode == 2
        assert "holds files the demo did not make (sftp_host_key)" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert {name: (state / name).read_bytes() for name in kept} == kept
    assert not (state / ".ingestor-demo").exists()


def test_read_only_commands_refuse_a_missing_state_dir_and_create_nothing(
    tmp_path: Path,
) -> None:
    """Before: `status --state-dir /typo` and `report 1 --state-dir /typo` created the
    directory and an empty ledger, and said all was well."""
    typo = tmp_path / "typo"
    for command in (
        ("status", "--state-dir", str(typo)),
        ("report", "1", "--state-dir", str(typo)),
    ):
        result = ingestor(*command)
        assert result.returncode == 2, result.stdout
        assert f"{typo} does not exist" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not typo.exists()
    home = tmp_path / "home"
    home.mkdir()
    plain = ingestor("status", env={"HOME": str(home), "XDG_STATE_HOME": ""})
    assert plain.returncode == 2 and "does not exist" in plain.stderr
    assert not (home / ".local").exists()


def test_on_a_terminal_log_lines_print_above_the_progress_bar_and_the_rate_starts_honest(
    sim: Simulator, tmp_path: Path
) -> None:
    """Before: log lines were written straight to the terminal, through the bar, and the
    first rate shown was one batch over a few milliseconds (275,024 rec/s)."""
    import pty
    import select

    sim.faults.fail_next = 2  # two retries: two warnings while the bar is live
    folder = make_folder(tmp_path / "drop")
    (folder / "a.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in range(3000)))
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ingestor.cli", "ingest", str(folder), "--api-key-env", "K",
         "--base-url", sim.url, "--state-dir", str(tmp_path / "state"), "--burst", "50",
         "--steady", "3000"],
        stdin=secondary, stdout=secondary, stderr=secondary,
        env={**os.environ, "K": KEY, "COLUMNS": "200", "TERM": "xterm"},
    )  # fmt: skip
    os.close(secondary)
    output = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=30) == 0
    os.close(primary)
    text = output.decode("utf-8", "replace")
    warnings = [line for line in text.splitlines() if "transient_error_retrying" in line]
    assert len(warnings) == 2
    for line in warnings:  # each warning whole on its own line, no bar drawn into it
        assert "━" not in line and "rec/s" not in line
    rates = re.findall(r"sent · (\S+) rec/s", text)
    assert rates and rates[0] == "…"


def test_every_command_and_option_has_help_in_a_users_words() -> None:
    """Before: the top-level description was a developer docstring and most options had no
    help at all."""
    import argparse

    from ingestor.cli import build_parser

    parser = build_parser()
    assert "Import CSV and JSONL files" in (parser.description or "")
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helped = {choice.dest: choice.help for choice in commands._choices_actions}
    assert set(helped) == set(commands.choices) and all(helped.values())
    missing = [
        f"{name} {' '.join(action.option_strings) or action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert missing == []
    text = ingestor("ingest", "--help").stdout
    assert "(default: 3)" in text and "(default: None)" not in text


def test_simulate_says_its_key_and_url_and_a_first_ingest_just_works(tmp_path: Path) -> None:
    """Before: it did not say its key (sim-key) and started with no data source, so a
    newcomer's first `ingestor ingest` failed twice."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ingestor.cli", "simulate", "--port", "0", "--drop", str(SAMPLE)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        said = []
        for line in process.stdout:
            said.append(line)
            if line.startswith("Try:"):
                break
        text = "".join(said)
        url = re.search(r"Klaviyo simulator on (http://\S+),", text)
        assert url is not None and "API key 'sim-key' → account default" in text
        assert "data source 01KTMWCZ8ZMNZS0HG5HQNX0H6E in account default" in text
        pets = SAMPLE / "acme" / "imports" / "custom_objects" / "pets"
        result = ingestor(
            "ingest", str(pets), "--api-key-env", "K", "--base-url", url.group(1),
            "--state-dir", str(tmp_path / "state"), "--burst", "50", "--steady", "3000",
            env={"K": "sim-key"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_ingest_of_a_folder_with_more_files_than_open_descriptors_allowed(
    tmp_path: Path,
) -> None:
    """Each file is open only while it is identified or sent: a folder of 300 files goes
    through with at most 200 descriptors (holding every file open at once would not)."""
    import resource

    from ingestor.config import RateLimitSettings

    folder = make_folder(tmp_path / "drop")
    for n in range(300):
        (folder / f"part-{n:03d}.jsonl").write_text(f'{{"id": {n}}}\n')
    off = RateLimitSettings(enabled=False)
    with Simulator({KEY: "acme"}, bulk_limits=off, read_limits=off) as sim:
        sim.add_data_source("acme", "01KTMWCZ8ZMNZS0HG5HQNX0H6E")
        result = subprocess.run(
            [sys.executable, "-m", "ingestor.cli", "ingest", str(folder), "--api-key-env", "K",
             "--base-url", sim.url, "--state-dir", str(tmp_path / "state"),
             "--burst", "100000", "--steady", "1000000"],
            capture_output=True, text=True, env={**os.environ, "K": KEY}, timeout=120,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200)),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert sorted(r["id"] for r in sim.records("acme")) == list(range(300))
