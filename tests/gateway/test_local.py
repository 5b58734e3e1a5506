"""How `llama-gateway local` starts its llama-servers, with a stand-in for the binary."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

import gateway.local
from gateway.local import CHAT_MODEL, EMBED_MODEL, llama_servers

# Dies of SIGILL (chat) or SIGSEGV (embeddings) as llama.cpp's AMX kernels do where the
# machine hides AMX, unless repacking is off; otherwise answers /health like a llama-server
# that has loaded its model.
STAND_IN = f"""#!{sys.executable}
import http.server, os, signal, sys
if "--no-repack" not in sys.argv:
    os.kill(os.getpid(), signal.SIGSEGV if "--embeddings" in sys.argv else signal.SIGILL)
port = int(sys.argv[sys.argv.index("--port") + 1])

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{{"status":"ok"}}')

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def test_llama_server_killed_by_an_illegal_instruction_restarts_without_repacking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text(STAND_IN)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(gateway.local, "llama_server_binary", lambda: binary)
    monkeypatch.setattr(gateway.local, "model_file", lambda: tmp_path / "model.gguf")
    with llama_servers(tmp_path / "logs") as urls:
        assert sorted(urls) == sorted([CHAT_MODEL, EMBED_MODEL])
    said = capsys.readouterr().err
    assert said.count("starting it again without weight repacking (--no-repack)") == 2
