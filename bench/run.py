"""Benchmark llama-gateway against a fake llama-server: direct vs through the gateway.

Starts `tests/support/fake_llama.py`, a bare aiohttp relay for reference and the gateway (default
configuration with access logs, and a quiet variant without), drives load with wrk, then
measures the latency each adds at a fixed low rate with a paced client. Run it on an idle
machine: `python bench/run.py` (`--quick` for a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %%d %%d %%.1f %%.1f %%d %%d %%d %%d %%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str = ""
    case: str = ""
    target: str = ""
    cpu_us: dict[str, float] = field(default_factory=dict)  # process -> CPU µs per request
    other: float = 0.0  # CPU cores used by processes outside the benchmark meanwhile


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str


def body(stream: bool, chunks: int, deterministic: bool = False) -> bytes:
    extra = f', "stream": true, "fake": {{"chunks": {chunks}}}' if stream else ""
    if deterministic:  # what a response cache stores: every request after the first hits
        extra += ', "temperature": 0'
    messages = '[{"role": "user", "content": "Say hello"}]'
    return f'{{"model": "fake", "messages": {messages}, "max_tokens": 32{extra}}}'.encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(targets: dict[str, Server]) -> dict[str, float]:
    """CPU seconds used so far: per server, by this script and wrk, by the whole machine."""
    snap = {name: cpu_seconds(server.proc.pid) for name, server in targets.items()}
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):  # this script, wrk
        usage = resource.getrusage(who)
        snap["bench"] = snap.get("bench", 0.0) + usage.ru_utime + usage.ru_stime
    with contextlib.suppress(OSError):  # Linux: all CPUs' busy time, idle and iowait excluded
        ticks = [int(x) for x in Path("/proc/stat").read_text().split(maxsplit=8)[1:8]]
        snap["machine"] = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return {**snap, "wall": time.monotonic()}


def delta(before: dict[str, float], after: dict[str, float], into: dict[str, float]) -> None:
    for key in before.keys() & after.keys():
        into[key] = into.get(key, 0.0) + after[key] - before[key]


def attribute(
    result: Result, used: dict[str, float], targets: dict[str, Server], target: str, case: str
) -> Result:
    """Add CPU per request of upstream and gateway, and others' CPU use, to `result`."""
    requests = max(1.0, result.rps * used["wall"])
    result.cpu_us = {k: used[k] / requests * 1e6 for k in ("direct", target)}
    ours = sum(used[name] for name in [*targets, "bench"])
    result.other = max(0.0, used.get("machine", ours) - ours) / used["wall"]
    result.case, result.target = case, target
    return result


def start(name: str, cmd: list[str], url: str, probe: str, logdir: Path) -> Server:
    log = logdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_GATEWAY_CONFIG"}
    with log.open("wb") as out:  # logs go to a file: a full pipe would stall the server
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=out, env=env, cwd=ROOT, start_new_session=True
        )
    server = Server(proc, url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(url + probe, timeout=1) as r:
            if r.status == 200:
                return server
        time.sleep(0.1)
    stop(server)
    tail = log.read_text(errors="replace")[-2000:]
    raise SystemExit(f"error: {name} did not become ready at {url}{probe}:\n{tail}")


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@contextlib.contextmanager
def servers(args: argparse.Namespace, logdir: Path) -> Iterator[dict[str, Server]]:
    """The upstream (target "direct"), a bare aiohttp relay (the floor for any aiohttp
    gateway) and the gateway variants, stopped on the way out."""
    started: dict[str, Server] = {}
    try:
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        # Run as a module from the top of the repository, as the tests import it.
        fake = [sys.executable, "-m", "tests.support.fake_llama", "--port", str(port)]
        started["direct"] = start("direct", fake, upstream, "/health", logdir)
        bport = free_port()
        bare = [sys.executable, str(ROOT / "bench" / "bare_relay.py"), upstream, str(bport)]
        started["bare-relay"] = start(
            "bare-relay", bare, f"http://127.0.0.1:{bport}", "/ready", logdir
        )
        variants: dict[str, list[str]] = {"gateway": []}
        if not args.no_quiet:
            (logdir / "quiet.yaml").write_text("logging: {level: WARNING, access_log: false}\n")
            variants["gateway-quiet"] = ["--config", str(logdir / "quiet.yaml")]
        for item in args.variant:
            name, _, config = item.partition("=")
            variants[name] = ["--config", str(Path(config).resolve())]
        for name, extra in variants.items():
            gport = free_port()
            cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(gport)]
            cmd += ["--upstream", f"fake={upstream}", *extra]
            started[name] = start(name, cmd, f"http://127.0.0.1:{gport}", "/ready", logdir)
        yield started
    finally:
        for server in reversed(started.values()):
            stop(server)


async def post(
    session: aiohttp.ClientSession, url: str, payload: bytes
) -> tuple[int, bytes, float]:
    began = time.perf_counter()
    async with session.post(url + CHAT, data=payload, headers=JSON) as resp:
        data = await resp.read()
    return resp.status, data, time.perf_counter() - began


def summary(latencies: list[float], seconds: float, failed: int) -> Result:
    p50, p99 = pct(latencies, 50) * 1e3, pct(latencies, 99) * 1e3
    return Result(len(latencies) / seconds, p50, p99, f"{failed} non-2xx" if failed else "")


async def check(session: aiohttp.ClientSession, url: str, payload: bytes) -> None:
    """A request must succeed (and a stream end with [DONE]) before load starts."""
    status, data, _ = await post(session, url, payload)
    if status != 200 or (b'"stream": true' in payload and b"data: [DONE]" not in data):
        raise SystemExit(f"error: {url}{CHAT} answered {status}: {data[:300]!r}")


async def wrk(args: argparse.Namespace, url: str, payload: bytes, seconds: float) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA % payload.decode())
    cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections)]
    cmd += ["-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", script.name, url + CHAT]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out = (await proc.communicate())[0].decode(errors="replace")
    finally:  # also on Ctrl-C
        if proc.returncode is None:
            proc.kill()
        os.unlink(script.name)
    line = next((x for x in out.splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"error: wrk failed (exit {proc.returncode}):\n{out}")
    n, us, p50, p99, *errs = (float(x) for x in line.split()[1:])
    names = ("connect", "read", "write", "non-2xx", "timeout")
    errors = [f"{int(v)} {k}" for k, v in zip(names, errs, strict=True) if v]
    if "Non-2xx" in out and not errs[3]:
        errors.append("non-2xx")
    return Result(n / (us / 1e6), p50 / 1000, p99 / 1000, ", ".join(errors))


async def paced(
    args: argparse.Namespace, targets: dict[str, Server], payload: bytes, case: str
) -> list[Result]:
    """One request every 1/rate s per target on a keep-alive connection; the targets take
    turns in 1 s blocks, so that a passing disturbance hits them all alike."""
    latencies: dict[str, list[float]] = {target: [] for target in targets}
    failed = dict.fromkeys(targets, 0)
    used: dict[str, dict[str, float]] = {target: {} for target in targets}
    async with contextlib.AsyncExitStack() as stack:
        sessions: dict[str, aiohttp.ClientSession] = {}
        for target, server in targets.items():
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            sessions[target] = await stack.enter_async_context(session)
            for _ in range(20):  # warm-up
                await check(session, server.url, payload)
        for _ in range(max(1, round(args.paced_seconds))):
            for target, session in sessions.items():
                before, began = snapshot(targets), time.monotonic()
                for i in range(max(1, round(args.rate))):
                    await asyncio.sleep(max(0.0, began + i / args.rate - time.monotonic()))
                    status, _, latency = await post(session, targets[target].url, payload)
                    failed[target] += status != 200
                    latencies[target].append(latency)
                delta(before, snapshot(targets), used[target])
    return [
        attribute(summary(latencies[t], used[t]["wall"], failed[t]), used[t], targets, t, case)
        for t in targets
    ]


def progress(what: str) -> None:
    print(f"  {what:<38} load avg {os.getloadavg()[0]:5.2f}", file=sys.stderr, flush=True)


async def bench(args: argparse.Namespace, targets: dict[str, Server]) -> list[Result]:
    fixed = args.deterministic
    cases = {
        "chat": body(False, 0, fixed),
        f"stream {args.chunks}": body(True, args.chunks, fixed),
    }
    async with aiohttp.ClientSession() as session:
        for server in targets.values():
            for payload in cases.values():
                await check(session, server.url, payload)
    results: list[Result] = []
    for case, payload in cases.items():
        for target, server in targets.items():
            progress(f"load {case} {target}")
            if args.warmup:
                await wrk(args, server.url, payload, args.warmup)
            before, used = snapshot(targets), dict[str, float]()
            result = await wrk(args, server.url, payload, args.duration)
            delta(before, snapshot(targets), used)
            results.append(attribute(result, used, targets, target, case))
    for case, payload in cases.items():
        progress(f"paced {case} (targets take turns)")
        results += await paced(args, targets, payload, f"{case} @{args.rate:g}/s")
    return results


def report(results: list[Result], args: argparse.Namespace, loads: tuple[float, float]) -> None:
    print(
        f"\nllama-gateway benchmark on {os.cpu_count()} CPUs shared by upstream, gateway and load"
        f" generator\n(nothing pinned); load avg {loads[0]:.2f} before, {loads[1]:.2f} after."
        f" wrk: {args.threads} threads,\n{args.connections} connections, {args.duration:g} s per"
        f" case; paced: {args.rate:g} req/s per target for {args.paced_seconds:g} s.\n"
        "upstream, gateway: CPU µs per request; other: CPU cores used meanwhile by processes\n"
        "outside the benchmark (~0 on an idle machine).\n"
    )
    head = f"{'case':<16} {'target':<14} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"{head} {'upstream':>9} {'gateway':>8} {'other':>6}  errors")
    for r in results:
        gw = f"{r.cpu_us[r.target]:.0f}" if r.target != "direct" else ""
        row = f"{r.case:<16} {r.target:<14} {r.rps:7.0f} {r.p50_ms:8.3f} {r.p99_ms:8.3f}"
        print(f"{row} {r.cpu_us['direct']:9.0f} {gw:>8} {r.other:6.2f}  {r.errors}")
    print()
    by = {(r.case, r.target): r for r in results}
    for (case, target), r in by.items():
        direct = by[(case, "direct")]
        if target == "direct" or not direct.rps:
            continue
        if "@" in case:
            added = f"added p50 latency {r.p50_ms - direct.p50_ms:.3f} ms"
            goal = "" if target == "bare-relay" else " (goal < 1 ms)"
            print(f"{case:<16} {target:<14} {added}{goal}")
        else:
            ratio = f"{r.rps / direct.rps:.1%}"
            bare = by.get((case, "bare-relay"))
            if target == "bare-relay" or not bare or not bare.rps:
                print(f"{case:<16} {target:<14} throughput {ratio} of direct")
                continue
            floor = f"{r.rps / bare.rps:.1%} of the bare relay"
            print(f"{case:<16} {target:<14} throughput {ratio} of direct, {floor} (goal >= 45%)")
    if loads[0] >= 2 or max(r.other for r in results) > 0.25:
        print("\nwarning: the machine was busy (load avg >= 2 or other CPU use > 0.25 cores);")
        print("these figures are not reliable: run again on an idle machine.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk case")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds per case")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections")
    parser.add_argument("--chunks", type=int, default=20, help="content events per stream")
    parser.add_argument("--rate", type=float, default=50, help="paced requests per second")
    parser.add_argument("--paced-seconds", type=float, default=10, help="paced run length")
    parser.add_argument("--no-quiet", action="store_true", help="skip the no-access-log variant")
    parser.add_argument("--quick", action="store_true", help="3 s runs, for a smoke test")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="send temperature 0: a variant with the cache policy answers from its store",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=CONFIG",
        help="also measure a gateway started with this configuration file (repeatable); "
        "its upstream is the fake model 'fake', given on the command line",
    )
    args = parser.parse_args()
    for item in args.variant:
        if "=" not in item:
            parser.error(f"--variant {item!r}: expected NAME=CONFIG.yaml")
    if args.quick:
        args.duration, args.paced_seconds, args.warmup = 3, 3, 1
    if shutil.which("wrk") is None:
        print(
            "error: wrk is needed: apt-get install -y wrk (macOS: brew install wrk)",
            file=sys.stderr,
        )
        return 2
    try:
        from uvloop import new_event_loop as factory
    except ImportError:
        factory = None  # type: ignore[assignment]
    first = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp,
        servers(args, Path(tmp)) as targets,
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        results = runner.run(bench(args, targets))
    report(results, args, (first, os.getloadavg()[0]))
    for r in results:
        if r.errors:
            print(f"error: {r.case} via {r.target}: {r.errors}", file=sys.stderr)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
