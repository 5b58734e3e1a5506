"""`serve --workers N`: N gateway processes on one port, with metrics added up across them.

The parent reserves the port, starts the workers (fresh interpreters, so that every one
loads prometheus_client in multi-process mode), passes SIGTERM, SIGINT and SIGHUP on,
and restarts a worker that dies. Each worker listens with SO_REUSEPORT, so the kernel
spreads new connections over them; `/metrics` on any of them reports the sum of all.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from gateway.clierrors import Unavailable, explained
from gateway.config import GatewayConfig
from gateway.eventloop import run
from gateway.exposition import write_worker_pid
from gateway.logs import setup_logging
from gateway.metrics import MULTIPROC_ENV
from gateway.server import serve

log = logging.getLogger("gateway.workers")

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies

RESTART_DELAY_SECONDS = 1.0
START_TIMEOUT_SECONDS = 60.0


def user_metrics_dir() -> None:
    """Create the directory named by `PROMETHEUS_MULTIPROC_DIR`, if that is set."""
    chosen = os.environ.get(MULTIPROC_ENV)
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)


def metrics_dir() -> tuple[Path, bool]:
    """The directory the workers share their samples through, and whether it was made here.

    `PROMETHEUS_MULTIPROC_DIR` when set, otherwise a new temporary directory (removed at
    exit); set in this process's environment, which the workers inherit.
    """
    chosen = os.environ.get(MULTIPROC_ENV)
    if chosen:
        directory = Path(chosen)
        directory.mkdir(parents=True, exist_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix="llama-gateway-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory, not chosen


def clear_samples(directory: Path) -> None:
    """Remove a previous run's samples (and those of checks made in this process)."""
    for stale in [*directory.glob("*.db"), *directory.glob("worker_*.pid")]:
        stale.unlink()


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) to learn the port when it is 0 and to hold it for the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_main(config: GatewayConfig, path: Path | None, index: int, ready: Connection) -> None:
    """A worker process: serve on the shared port until told to stop."""
    _stop_with_supervisor()
    setup_logging(config.logging.level)
    write_worker_pid(index)
    try:
        with explained(config):
            run(serve(config, path, reuse_port=True, on_listening=lambda port: ready.send(port)))
    except Unavailable as exc:  # one clear line, as a single process gives
        log.error("%s", exc)
        sys.exit(1)


def _stop_with_supervisor() -> None:
    """Linux: have the kernel send this worker SIGTERM (a graceful drain) when the supervisor
    dies, even by SIGKILL, so no orphan keeps serving on the shared port."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("cannot ask to stop with the supervisor: errno %d", ctypes.get_errno())
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl took hold
        os.kill(os.getpid(), signal.SIGTERM)


class WorkerFailed(Exception):
    pass


class Supervisor:
    def __init__(self, config: GatewayConfig, path: Path | None, count: int) -> None:
        self.config, self.path, self.count = config, path, count
        self.spawn = multiprocessing.get_context("spawn")
        self.workers: dict[int, SpawnProcess] = {}
        self.stopping = False

    def run(self) -> int:
        # The port first: a port in use must leave no metrics directory behind.
        holder = reserve_port(self.config.server.host, self.config.server.port)
        directory, owned = metrics_dir()
        clear_samples(directory)
        port = holder.getsockname()[1]
        self.config = self.config.model_copy(
            update={"server": self.config.server.model_copy(update={"port": port})}
        )
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._forward)
        try:
            # Started together, then awaited: each takes about a second to import and start.
            starting = [self._launch(index) for index in range(self.count)]
            for index, ready in enumerate(starting):
                self._await_ready(index, ready)
            log.info(
                "listening on %s:%s",
                self.config.server.host,
                port,
                extra={"port": port, "workers": self.count, "metrics_dir": str(directory)},
            )
            self._watch()
        except WorkerFailed as exc:
            log.error("%s", exc)
            return 1
        finally:
            holder.close()
            self._stop(signal.SIGTERM, None)
            for process in self.workers.values():
                process.join()
            if owned:
                try:
                    shutil.rmtree(directory)
                except OSError as exc:
                    log.warning("could not remove the metrics directory: %s", exc)
            log.info("stopped")
        return 0

    def _start(self, index: int) -> None:
        self._await_ready(index, self._launch(index))

    def _launch(self, index: int) -> Connection:
        receive, send = self.spawn.Pipe(duplex=False)
        process = self.spawn.Process(
            target=worker_main,
            args=(self.config, self.path, index, send),
            name=f"llama-gateway-worker-{index}",
        )
        process.start()
        send.close()
        self.workers[index] = process
        if self.stopping:  # stopped while this one was being started: _stop() missed it
            self._stop(signal.SIGTERM, None)
        return receive

    def _await_ready(self, index: int, receive: Connection) -> None:
        process = self.workers[index]
        try:
            if not receive.poll(START_TIMEOUT_SECONDS):
                raise EOFError
            receive.recv()
        except EOFError:
            if self.stopping:
                return  # stopped before it was listening: not a failure
            raise WorkerFailed(
                f"worker {index} did not start listening (exit code {process.exitcode}); "
                "its log lines above say why"
            ) from None
        finally:
            receive.close()

    def _watch(self) -> None:
        """Wait for workers to exit; restart those that die while not stopping."""
        while self.workers:
            sentinels = {p.sentinel: i for i, p in self.workers.items()}
            for sentinel in wait(list(sentinels), timeout=1.0):
                assert isinstance(sentinel, int)
                index = sentinels[sentinel]
                process = self.workers.pop(index)
                process.join()
                self._forget(process)
                if not self.stopping:
                    log.error(
                        "worker %d exited with %s; restarting it",
                        index,
                        process.exitcode,
                        extra={"worker": index, "exitcode": process.exitcode},
                    )
                    time.sleep(RESTART_DELAY_SECONDS)
                    if not self.stopping:  # a SIGTERM may have come during the pause
                        self._start(index)

    def _forget(self, process: SpawnProcess) -> None:
        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for process in self.workers.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        for process in self.workers.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)
