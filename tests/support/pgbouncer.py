"""Debian's PgBouncer in transaction pooling mode in front of the machine's PostgreSQL, on a
free port, with a database of the test's own (PgBouncer passes no `search_path`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateways import PG_URL

PGBOUNCER = "/usr/sbin/pgbouncer"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(directory: Path, port: int) -> Path:
    (directory / "users.txt").write_text('"postgres" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n* = host=127.0.0.1 port=5432\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        # Fewer server connections than a gateway's pool has clients: each client's
        # transactions land on either, whatever it left on the other.
        "pool_mode = transaction\ndefault_pool_size = 2\nmax_client_conn = 100\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
    return config


@pytest.fixture
def pgbouncer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a fresh database through PgBouncer (transaction pooling)."""
    if shutil.which(PGBOUNCER) is None:
        pytest.fail("PgBouncer is missing: apt-get install pgbouncer (tests/run.sh does)")
    directory = tmp_path_factory.mktemp("pgbouncer")
    port = _free_port()
    database = f"pgb_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {database}")
    # PgBouncer refuses to run as root: as the database's own system user.
    log = directory / "pgbouncer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PGBOUNCER, "-u", "postgres", str(_config(directory, port))],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(port, proc, log)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        proc.terminate()
        proc.wait(10)
        _admin(f"DROP DATABASE {database} WITH (FORCE)")


def _wait_for(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"PgBouncer exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail("PgBouncer did not listen within 30 s")


def _admin(sql: str) -> None:
    subprocess.run(["psql", PG_URL, "-qXc", sql], check=True, capture_output=True)
