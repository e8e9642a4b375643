"""Who may log in: authorized_keys per company, optional scrypt password hashes, a per-address
ban that makes spraying pointless, and a per-name delay that slows guessing at one company
without ever locking the real company out.

A failed login must teach nothing: a name that is no company gets the same methods, the same
work (a password is checked against a dummy hash) and the same delays as a real one."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

import paramiko

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)


def authorized_blobs(path: Path) -> set[bytes]:
    """The public-key blobs in an OpenSSH authorized_keys file (options before the type are
    allowed and ignored; unknown types are skipped)."""
    try:
        return _blobs(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return set()


def authorized_keys_problem(path: Path) -> str:
    """What stops ``path`` from letting anyone log in ('' if nothing), for check-config;
    no key material is shown."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return f"{path} is not text; it must be in OpenSSH's authorized_keys format"
    if not _blobs(text):
        return (
            f"{path} holds no usable public key (one per line, e.g. 'ssh-ed25519 AAAA… name'; "
            f"types: {', '.join(KEY_TYPES)})"
        )
    return ""


def _blobs(text: str) -> set[bytes]:
    blobs: set[bytes] = set()
    for line in text.splitlines():
        fields = line.strip().split()
        for index, token in enumerate(fields[:-1]):
            if token in KEY_TYPES:
                with contextlib.suppress(binascii.Error, ValueError):
                    blobs.add(base64.b64decode(fields[index + 1], validate=True))
                break
    return blobs


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), for ``sftp_password_hash``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    parts = [str(_SCRYPT[k]) for k in ("n", "r", "p")]
    parts += [base64.b64encode(salt).decode(), base64.b64encode(digest).decode()]
    return "$".join(["scrypt", *parts])


@functools.cache
def dummy_hash() -> str:
    """A hash no password matches, checked for names without one (same work, same time)."""
    return hash_password(secrets.token_urlsafe(24))


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(base64.b64decode(digest)),
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


class AuthThrottle:
    """After ``limit`` failed logins from one address within ``window`` seconds, that address
    is refused (before any key or password is checked) until the window has passed."""

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def banned(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address, time.monotonic())) >= self._limit

    def failed(self, address: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._recent(address, now).append(now)

    def _recent(self, address: str, now: float) -> deque[float]:
        stamps = self._failures.setdefault(address, deque())
        while stamps and stamps[0] <= now - self._window:
            stamps.popleft()
        if not stamps:
            self._failures.pop(address, None)
            stamps = self._failures.setdefault(address, deque())
        return stamps


class KeyBook:
    """Each company's authorized public keys, read from its file at most every ``ttl``
    seconds (an edited file is used within that time, no reload needed)."""

    def __init__(self, ttl: float = 10.0) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[float, frozenset[bytes]]] = {}

    def blobs(self, path: Path | None) -> frozenset[bytes]:
        if path is None:
            return frozenset()
        now = time.monotonic()
        with self._lock:
            known = self._cache.get(path)
            if known is not None and now - known[0] < self._ttl:
                return known[1]
        fresh = frozenset(authorized_blobs(path))
        with self._lock:
            self._cache[path] = (now, fresh)
        return fresh


class GuessDelay:
    """Per login name: after ``free`` failures within ``window`` seconds, each further
    failure is answered only after a delay that doubles up to ``max_delay``. Guessing at one
    company from many addresses slows to a crawl; the company's own successful logins are
    never delayed. Names that are no company are tracked the same way (a bounded number)."""

    def __init__(
        self, free: int = 5, window: float = 300.0, max_delay: float = 4.0, names: int = 10_000
    ) -> None:
        self._free, self._window, self._max = free, window, max_delay
        self._names = names
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def failed(self, name: str) -> float:
        """Record a failure for ``name``; return how long to wait before answering it."""
        now = time.monotonic()
        with self._lock:
            stamps = self._failures.pop(name, None) or deque()
            while stamps and stamps[0] <= now - self._window:
                stamps.popleft()
            stamps.append(now)
            self._failures[name] = stamps
            while len(self._failures) > self._names:
                self._failures.popitem(last=False)
            over = len(stamps) - self._free
        if over <= 0:
            return 0.0
        return float(min(self._max, 0.25 * 2 ** (over - 1)))
