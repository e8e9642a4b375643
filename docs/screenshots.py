"""Render completion e-mails' HTML parts to PNG with headless Chromium, for people to look at.

    python docs/screenshots.py [OUTBOX_DIR] [--out docs/]

By default it takes the demo's outbox (`make demo` first) and writes docs/sample-email.png
from the message about orders_messy/orders.csv (skipped rows, attachment, next steps).
"""

from __future__ import annotations

import argparse
import email
import shutil
import subprocess
import sys
import tempfile
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


def html_of(eml: Path) -> str:
    message = email.message_from_bytes(eml.read_bytes(), policy=default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(("html",))
    if part is None:
        raise ValueError(f"{eml} has no HTML part")
    return str(part.get_content())


def render_png(html: str, png: Path, browser: str, width: int = 900, height: int = 950) -> None:
    """Screenshot ``html`` as Chromium lays it out (no network: the page is self-contained)."""
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "message.html"
        page.write_text(html, encoding="utf-8")
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={tmp}/profile",
                f"--window-size={width},{height}",
                f"--screenshot={png.resolve()}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("outbox", nargs="?", default=".demo-state/outbox")
    parser.add_argument("--match", default="orders.csv", help="which message (file name part)")
    parser.add_argument("--out", default="docs/sample-email.png")
    args = parser.parse_args()
    browser = find_browser()
    if browser is None:
        print("no Chromium found: apt-get install chromium", file=sys.stderr)
        return 2
    matches = sorted(Path(args.outbox).glob(f"*{args.match}*.eml"))
    if not matches:
        print(
            f"no message matching {args.match!r} in {args.outbox}; run make demo", file=sys.stderr
        )
        return 2
    render_png(html_of(matches[0]), Path(args.out), browser)
    print(f"{matches[0].name} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
