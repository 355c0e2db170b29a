"""Fixtures: a small store with hostile texts, accounts, and a real server in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import workbench
from workbench import assign, auth

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "annotation_ui"
HOSTILE = (
    "Here is some HTML:\n\n<script>window.__pwned = 'script'</script>\n\n"
    "<img src=x onerror=\"window.__pwned = 'onerror'\">\n\n"
    "[click me](javascript:window.__pwned='link') and <a href=\"javascript:window.__pwned='a'\">this</a>\n\n"
    "![remote](http://198.51.100.7/tracker.png)\n\n"
    "```python\nprint('<b>not bold</b>')\n```"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(path: Path, n_prompts: int = 12, hostile: bool = False) -> tuple[object, dict[str, str]]:
    store = workbench.open(path)
    for i in range(n_prompts):
        if i == 0:
            pid = store.add_prompt([{"role": "user", "content": "Write **bold** code"}, {"role": "assistant", "content": "Which language?"}, {"role": "user", "content": "Python, please."}], category="code")
        else:
            pid = store.add_prompt(f"Question {i}: explain topic {i}.", category="code" if i % 2 else "chat")
        texts = [f"Answer {j} to question {i}.\n\n```python\nx = {j}\n```" for j in range(3)]
        if hostile and i == 0:
            texts[0] = HOSTILE
        for j, t in enumerate(texts):
            store.add_response(pid, t, model=f"model-{j}")
    assign.build_pairs(store)
    logins = {
        "admin1": auth.create_account(store, "admin1", "admin"),
        **{f"ann{i}": auth.create_account(store, f"ann{i}", "annotator") for i in range(1, 10)},
    }
    return store, logins


class Server:
    def __init__(self, db: Path, port: int):
        self.db, self.port = db, port
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = open(db.with_suffix(".server.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.cli", "--db", str(db), "serve", "--port", str(port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=str(db.parent),
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {db.with_suffix('.server.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/progress", timeout=1).status_code == 401:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not start in 60 s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def server_factory(tmp_path):
    servers = []

    def start(db: Path) -> Server:
        s = Server(db, free_port())
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.kill()


@pytest.fixture
def make_ui_store():
    return make_store


class Shared:
    """One running server for the tests that don't kill it (each test uses its own annotators)."""

    def __init__(self, server: Server, logins: dict[str, str]):
        self.server, self.logins, self.url, self.db = server, logins, server.url, server.db


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory):
    db = tmp_path_factory.mktemp("shared") / "wb.db"
    store, logins = make_store(db, n_prompts=12, hostile=True)
    store.close()
    server = Server(db, free_port())
    yield Shared(server, logins)
    server.kill()
