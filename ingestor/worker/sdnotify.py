"""sd_notify(3): tell systemd we are ready, alive, reloading or stopping.

Twenty lines of socket code instead of a dependency: the protocol is one datagram of
``KEY=value`` lines to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class SystemdNotifier:
    """Sends notifications when run under systemd (``Type=notify``); a no-op otherwise."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        env = environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the deadline, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if wanted else None

    def notify(self, **fields: str) -> None:
        """``notify(READY="1", STATUS="…")``; errors are swallowed: systemd is advisory here.

        Never blocks: if the receiver's queue is full the message is dropped, rather than
        the service stalling (a stalled main loop would not even see SIGTERM).
        """
        if not self._address:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError:
            pass
