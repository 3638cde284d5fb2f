"""The serving benchmark's load instrument (``benchmarks._load``): open loop, every request counted.

Against a small HTTP/1.1 server in this process: each request carries the key, every request sent
is answered or counted as an error (a non-200 by its status), the warm-up second is left out, and
a request the server holds back shows its whole wait (latency from its scheduled time)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.integration

RATE, SECONDS, STALL_S = 200, 1.0, 0.3


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    keys: list[str]
    lock: threading.Lock
    #: Which request (counted from 1, in arrival order) ``/slow`` holds back for STALL_S.
    stall_at: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API's server answers

    def do_GET(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        with server.lock:
            server.keys.append(self.headers.get("X-API-Key", ""))
            arrived = len(server.keys)
        if self.path == "/slow" and arrived == server.stall_at:
            time.sleep(STALL_S)
        body = b"[]"
        self.send_response(503 if self.path == "/bad" else 200)
        self.send_header("Content-Type", "application/json")
        if self.path == "/close":
            self.send_header("Connection", "close")  # http.server then closes the connection
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.keys, srv.lock, srv.stall_at = [], threading.Lock(), 1
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _load(server: _Server, path: str) -> dict[str, object]:
    url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._load", url, "k1", str(RATE), str(SECONDS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_every_request_is_sent_on_time_with_the_key_and_timed_after_the_warm_up(server: _Server) -> None:
    out = _load(server, "/slow")
    sent = int(RATE * (SECONDS + 1.0))  # the warm-up second, then the measured ones
    assert out["sent"] == sent == len(server.keys)
    assert set(server.keys) == {"k1"}
    assert out["error_count"] == 0
    latencies = out["latencies_s"]
    assert isinstance(latencies, list)
    assert len(latencies) == int(RATE * SECONDS)
    # The stalled request came in the warm-up second (it is the first): left out. Every request
    # after it is timed, none of them negative.
    assert min(latencies) > 0


def test_a_held_back_request_shows_its_whole_wait(server: _Server) -> None:
    # Counted, not timed from here: the instrument's own start may take a second on a busy machine.
    server.stall_at = RATE + RATE // 2  # in the middle of the measured second
    out = _load(server, "/slow")
    latencies = out["latencies_s"]
    assert isinstance(latencies, list)
    assert max(latencies) >= STALL_S


def test_non_200_answers_are_errors_named_by_status(server: _Server) -> None:
    out = _load(server, "/bad")
    assert out["error_count"] == out["sent"]
    assert out["errors"] == ["HTTP 503"] * 5
    assert out["latencies_s"] == []


def test_an_answer_that_closes_its_connection_is_not_an_error_of_the_next_request(server: _Server) -> None:
    out = _load(server, "/close")
    assert out["error_count"] == 0, out["errors"]
    assert len(out["latencies_s"]) == int(RATE * SECONDS)  # type: ignore[arg-type]
