"""SFTP uploads into a running service: throughput, and last byte → first API request.

    python bench/sftp_bench.py [--files 20] [--mb 50]

``ingestor run`` serves SFTP as its own process; this process runs the Klaviyo simulator and
``--files`` paramiko clients (one company each), which upload a ``--mb`` MB JSONL file at the
same moment. Reported: aggregate and per-client MB/s, and for each file the time from its
close (the last byte written and the handle closed) to the simulator receiving that company's
first request.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paramiko

from ingestor.simulator import Simulator

DS_ID = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"
CHUNK = 256 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def payload(megabytes: int) -> bytes:
    line = b'{"id": %d, "name": "pet", "species": "cat", "tags": ["a", "b"]}\n'
    out = bytearray()
    i = 0
    while len(out) < megabytes * 1024 * 1024:
        out += line % i
        i += 1
    return bytes(out)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    n = args.files
    data = payload(args.mb)
    companies = [f"c{i:02d}" for i in range(n)]
    keys = {f"pk_sftp_bench_{c}_0123456789": c for c in companies}
    with tempfile.TemporaryDirectory() as tmp, Simulator(keys, clock_factor=10.0) as sim:
        root = Path(tmp)
        drop, state = root / "drop", root / "state"
        drop.mkdir()
        client_key = paramiko.Ed25519Key.from_private_key_file(_keygen(root / "id"))
        port = free_port()
        lines = [
            f'drop_root = "{drop}"',
            f'state_dir = "{state}"',
            "[service]",
            'log_level = "warning"',
            "[api]",
            f'base_url = "{sim.url}"',
            "[sftp]",
            f'listen = "127.0.0.1:{port}"',
        ]
        for company in companies:
            sim.add_data_source(company, DS_ID)
            folder = drop / company / "imports" / "custom_objects" / "bench"
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(f'{{"data_source_id": "{DS_ID}"}}')
            lines += [
                f"[companies.{company}]",
                f'api_key_env = "KEY_{company}"',
                f'sftp_authorized_keys = "{root / "id.pub"}"',
            ]
        (root / "s.toml").write_text("\n".join(lines) + "\n")
        env = {**os.environ, **{f"KEY_{c}": k for k, c in keys.items()}}
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(root / "notify.sock"))
        env["NOTIFY_SOCKET"] = str(root / "notify.sock")
        service = subprocess.Popen(
            [sys.executable, "-m", "ingestor.cli", "run", "--config", str(root / "s.toml")],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            notify.settimeout(60)
            while b"READY=1" not in notify.recv(4096).split(b"\n"):
                pass
            host_key = paramiko.ECDSAKey.from_private_key_file(str(state / "sftp_host_key"))
            clients = []
            for company in companies:
                transport = paramiko.Transport(("127.0.0.1", port))
                transport.connect(host_key, company, pkey=client_key)
                clients.append((company, transport))
            closed: dict[str, float] = {}
            spans: dict[str, float] = {}
            start = threading.Barrier(n + 1)

            def upload(company: str, transport: paramiko.Transport) -> None:
                sftp = paramiko.SFTPClient.from_transport(transport)
                assert sftp is not None
                start.wait()
                began = time.perf_counter()
                with sftp.open("/imports/custom_objects/bench/big.jsonl", "wb") as handle:
                    handle.set_pipelined(True)
                    for offset in range(0, len(data), CHUNK):
                        handle.write(data[offset : offset + CHUNK])
                closed[company] = time.time()
                spans[company] = time.perf_counter() - began

            threads = [threading.Thread(target=upload, args=c) for c in clients]
            for thread in threads:
                thread.start()
            start.wait()
            began = time.perf_counter()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - began
            latencies = []
            for company in companies:
                with sim.state.stored:
                    sim.state.stored.wait_for(
                        lambda c=company: any(
                            r.account == c and r.at >= closed[c] for r in sim.state.requests
                        ),
                        60,
                    )
                    first = min(
                        r.at
                        for r in sim.state.requests
                        if r.account == company and r.at >= closed[company]
                    )
                latencies.append(first - closed[company])
            for _, transport in clients:
                transport.close()
        finally:
            service.terminate()
            service.wait(timeout=60)
    total_mb = n * len(data) / 1024 / 1024
    per_client = [len(data) / 1024 / 1024 / s for s in spans.values()]
    print(f"{n} concurrent uploads of {len(data) / 1024 / 1024:.0f} MB over loopback SFTP")
    print(
        f"aggregate {total_mb / wall:,.1f} MB/s ({total_mb:,.0f} MB in {wall:.1f} s); per client "
        f"median {statistics.median(per_client):.1f} MB/s, min {min(per_client):.1f} MB/s"
    )
    print(
        f"last byte -> first API request: p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p95 {statistics.quantiles(latencies, n=20, method='inclusive')[-1] * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms"
    )


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)


if __name__ == "__main__":
    main()
