"""The live gateway as a real `llama-gateway serve` process.

Protocol errors are answered by aiohttp's server before the application sees the
request, and logged by its parser: only the process `serve` starts (its runner, its
logging set-up) shows what a client and the log really get. The fake upstream and the
key store are set up as for `LiveGateway`; every line the process writes to stderr (its
JSON logs and access log) is kept in a file and read back by the checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.hardening.live import LiveGateway, raw_config


class FileLines:
    """The log lines a process wrote to its stderr file (the `Lines` interface)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _all(self) -> list[str]:
        return self.path.read_bytes().decode("utf-8", "replace").splitlines()

    def mark(self) -> int:
        return len(self._all())

    def since(self, mark: int = 0) -> list[str]:
        return self._all()[mark:]


class ServedGateway(LiveGateway):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.log_path = workdir / "gateway-stderr.jsonl"
        self.lines = FileLines(self.log_path)  # type: ignore[assignment]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.thread.start()
        data = self.run(self._start_upstream_and_keys())
        config = self.workdir / "gateway.yaml"
        raw = raw_config(self.fake_url, data, self.prefix)
        config.write_text(json.dumps({**raw, "server": {"host": "127.0.0.1", "port": 0}}))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.port = self._listening()
        self.run(self._ready())

    def _listening(self) -> int:
        """The port from the process's `listening on` line."""
        assert self.proc is not None
        for _ in range(3000):  # bounded only so a gateway that cannot start fails
            for line in self.lines.since():
                if '"listening on' in line:
                    return int(json.loads(line)["port"])
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.02)
        raise AssertionError("serve never said where it listens")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        super().stop()
