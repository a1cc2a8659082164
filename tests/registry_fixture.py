"""A real registry (Debian's ``docker-registry``, CNCF distribution 2.8) on loopback for tests.

``start_registry`` runs ``docker-registry serve CONFIG.yml`` on 127.0.0.1 on a free port with its
own storage directory and log file, waits until ``GET /v2/`` answers, and ``stop`` ends it by PID.
``RegistryServer.requests()`` parses the registry's access log, so tests count uploads and mounts
from the registry's side rather than from the client's own counters.

Also here: a small loopback HTTP proxy (``FaultProxy``) that can answer 500 to chosen requests
before forwarding the rest to the registry.

Fixtures: ``registry`` (anonymous, one per test module) and ``auth_registry`` (htpasswd basic
auth, user ``alice``). A missing ``docker-registry`` binary makes them fail, never skip.
"""

from __future__ import annotations

import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

REGISTRY_BINARY = "docker-registry"
AUTH_USER = "alice"
AUTH_PASSWORD = "s3cr3t-Pa55word"

_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) ')


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for an htpasswd file: the ``bcrypt`` module, else libcrypt, else ``htpasswd -B``."""
    try:
        import bcrypt  # type: ignore[import-not-found]

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # removed in Python 3.13; glibc/libxcrypt does bcrypt ($2b$)

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if hashed and hashed.startswith("$2"):
            return hashed
    except (ImportError, AttributeError, OSError):
        pass
    tool = shutil.which("htpasswd")
    if tool is None:
        raise RuntimeError("no bcrypt available: pip install bcrypt, or apt-get install apache2-utils")
    out = subprocess.run([tool, "-nbB", "-C", "4", "u", password], check=True, capture_output=True, text=True)
    return out.stdout.strip().split(":", 1)[1]


@dataclass(frozen=True)
class LoggedRequest:
    """One request from the registry's access log."""

    method: str
    uri: str
    status: int

    @property
    def path(self) -> str:
        return self.uri.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        from urllib.parse import parse_qsl, urlsplit

        return dict(parse_qsl(urlsplit(self.uri).query))


@dataclass
class RegistryServer:
    """A running registry: ``host`` is ``127.0.0.1:PORT``."""

    port: int
    root: Path
    storage: Path
    log_path: Path
    process: subprocess.Popen
    htpasswd: Path | None = None
    _log_file: object = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests(self) -> list[LoggedRequest]:
        """All requests the registry has logged so far (its access log lines)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = _ACCESS_LINE.search(line)
            if m and "msg=" not in line:
                out.append(LoggedRequest(m["method"], m["uri"], int(m["status"])))
        return out

    def mark(self) -> int:
        """A position in the access log; pass it to ``blob_activity`` to see only later requests."""
        return len(self.requests())

    def blob_activity(self, repository: str, since: int = 0) -> dict[str, list]:
        """Blob uploads, chunk PATCHes and mounts the registry completed for ``repository``.

        ``uploaded``: digests of blob upload sessions closed with ``PUT ?digest=`` and 201;
        ``patches``: count of successful PATCHes; ``mounted``: digests mounted with 201.
        """
        prefix = f"/v2/{repository}/blobs/uploads/"
        uploaded, mounted, patches = [], [], 0
        for req in self.requests()[since:]:
            if not req.path.startswith(prefix):
                continue
            if req.method == "PUT" and req.status == 201:
                uploaded.append(req.query.get("digest"))
            elif req.method == "PATCH" and req.status == 202:
                patches += 1
            elif req.method == "POST" and req.status == 201 and "mount" in req.query:
                mounted.append(req.query["mount"])
        return {"uploaded": uploaded, "mounted": mounted, "patches": [patches]}

    def stored_blob_size(self, digest: str) -> int:
        """Size in bytes of a blob as stored in the registry's filesystem storage."""
        hexd = digest.split(":", 1)[1]
        return (self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data").stat().st_size

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()


def start_registry(
    root: Path, *, with_auth: bool = False, token: "TokenServer | None" = None, timeout: float = 15.0
) -> RegistryServer:
    """Start ``docker-registry serve`` under ``root`` (storage, config, log) on a free port.

    ``with_auth`` turns on htpasswd basic auth; ``token`` turns on bearer token auth against that
    :class:`TokenServer`.

    Raises RuntimeError (so tests fail, not skip) if the binary is missing or it does not answer
    ``GET /v2/`` within ``timeout`` seconds.
    """
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise RuntimeError(
            f"{REGISTRY_BINARY} is not installed (Debian package docker-registry); registry tests need it"
        )
    root.mkdir(parents=True, exist_ok=True)
    storage = root / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    auth = ""
    htpasswd = None
    if with_auth:
        htpasswd = root / "htpasswd"
        htpasswd.write_text(f"{AUTH_USER}:{bcrypt_hash(AUTH_PASSWORD)}\n")
        auth = f"auth:\n  htpasswd:\n    realm: nixlayer-test\n    path: {htpasswd}\n"
    if token is not None:
        auth = (
            f"auth:\n  token:\n    realm: {token.realm}\n    service: {TOKEN_SERVICE}\n"
            f"    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {token.cert_path}\n"
        )
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: nixlayer-test-secret\n"
        + auth
    )
    log_path = root / "registry.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    server = RegistryServer(port, root, storage, log_path, process, htpasswd, log_file)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            server.stop()
            raise RuntimeError(f"{REGISTRY_BINARY} exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/v2/")
            status = conn.getresponse().status
            conn.close()
            if status in (200, 401):
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{REGISTRY_BINARY} did not answer on port {port} in {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An anonymous registry on loopback, shared by one test module."""
    server = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with htpasswd basic auth (user ``AUTH_USER``, password ``AUTH_PASSWORD``)."""
    server = start_registry(tmp_path_factory.mktemp("auth-registry"), with_auth=True)
    try:
        yield server
    finally:
        server.stop()


# --- A fault-injecting proxy ---------------------------------------------------------------------


class FaultProxy:
    """A loopback HTTP proxy in front of ``upstream_port`` that can fail chosen requests.

    ``should_fail(method, path)`` is asked for each request: a falsy answer forwards it, an int
    answers that HTTP status (after reading the body), ``"drop"`` closes the connection without an
    answer. Every request seen is recorded in ``seen`` as (method, path, status; 0 for a drop).
    The Host header is forwarded as is, so the registry's Location headers point back at the
    proxy; ``relative_locations`` turns them into relative references (``/v2/...``).
    """

    def __init__(
        self,
        upstream_port: int,
        should_fail: Callable[[str, str], object] = lambda method, path: None,
        *,
        relative_locations: bool = False,
    ) -> None:
        self.upstream_port = upstream_port
        self.should_fail = should_fail
        self.relative_locations = relative_locations
        self.seen: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    fail = proxy.should_fail(self.command, self.path)
                if fail == "drop":
                    proxy.seen.append((self.command, self.path, 0))
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fail:
                    status = 500 if fail is True else int(fail)
                    payload = b'{"errors":[{"code":"UNKNOWN","message":"injected fault"}]}'
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    proxy.seen.append((self.command, self.path, status))
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "transfer-encoding")}
                conn.request(self.command, self.path, body=body if length else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() == "location" and proxy.relative_locations and "://" in v:
                        v = "/" + v.split("://", 1)[1].split("/", 1)[1]
                    if k.lower() not in ("connection", "transfer-encoding", "content-length", "date", "server"):
                        self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                proxy.seen.append((self.command, self.path, resp.status))

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- Small OCI images built by hand (no other nixlayer module) ----------------------------------


@dataclass(frozen=True)
class HandMadeImage:
    """An OCI image on disk: manifest bytes plus the config and layer blobs (nixlayer Blob values)."""

    manifest: bytes
    config: object
    layers: list

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def total_bytes(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)


def _write_blob(directory: Path, data: bytes, media_type: str):
    import hashlib

    from nixlayer.registry import Blob

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = directory / digest.replace(":", "-")
    path.write_bytes(data)
    return Blob(digest=digest, size=len(data), media_type=media_type, path=path)


def make_layer_tar(files: dict[str, bytes]) -> bytes:
    """A deterministic uncompressed tar of ``files`` (name -> content), mtime 0, root-owned."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def make_image(directory: Path, layers: list[dict[str, bytes]], *, compress_level: int = 6) -> HandMadeImage:
    """Write an OCI image (gzip layers, config, manifest) of ``layers`` into ``directory``."""
    import gzip
    import hashlib
    import json

    from nixlayer.compression import Compression
    from nixlayer.mediatypes import MEDIA_TYPE_OCI_CONFIG

    directory.mkdir(parents=True, exist_ok=True)
    blobs, diff_ids = [], []
    for files in layers:
        tar = make_layer_tar(files)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = gzip.compress(tar, compresslevel=compress_level, mtime=0)
        blobs.append(_write_blob(directory, gz, Compression("gzip").media_type))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "nixlayer test"} for _ in diff_ids],
    }
    config_blob = _write_blob(directory, json.dumps(config, sort_keys=True).encode(), MEDIA_TYPE_OCI_CONFIG)

    def descriptor(blob) -> dict:
        return {"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor(config_blob),
        "layers": [descriptor(b) for b in blobs],
    }
    return HandMadeImage(json.dumps(manifest, sort_keys=True).encode(), config_blob, blobs)


# --- Bearer token authentication (Docker token authentication specification) --------------------

TOKEN_SERVICE = "nixlayer-test-registry"
TOKEN_ISSUER = "nixlayer-test-issuer"


class TokenServer:
    """A loopback token server for ``auth: token`` registries.

    ``GET /token?service=...&scope=...`` with HTTP basic ``AUTH_USER``/``AUTH_PASSWORD`` answers a
    JWT (RS256, ``x5c`` holding a self-signed certificate that the registry trusts) granting every
    requested scope except on repositories under ``forbidden/``; wrong or missing credentials
    answer 401. Each request's scopes and whether
    credentials came with it are recorded in ``seen``. ``field`` is the JSON key of the token
    (``token`` or ``access_token``).
    """

    def __init__(self, directory: Path, field_name: str = "token") -> None:
        import base64
        import datetime
        import json
        from urllib.parse import parse_qs, urlsplit

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nixlayer test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        self.cert_path = directory / "token-signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.seen: list[dict] = []
        self.field_name = field_name
        server_self = self

        def b64url(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        def make_token(scopes: list[str]) -> str:
            access = []
            for scope in scopes:
                kind, _, rest = scope.partition(":")
                repo, _, actions = rest.rpartition(":")
                if repo.startswith("forbidden/"):
                    continue  # this user may not touch repositories under forbidden/
                access.append({"type": kind, "name": repo, "actions": actions.split(",")})
            t = int(time.time())
            claims = {
                "iss": TOKEN_ISSUER, "sub": AUTH_USER, "aud": TOKEN_SERVICE, "exp": t + 600,
                "nbf": t - 60, "iat": t, "jti": os.urandom(8).hex(), "access": access,
            }
            header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
            signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
            signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
            return f"{signing_input}.{b64url(signature)}"

        expected = "Basic " + base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                given = self.headers.get("Authorization")
                server_self.seen.append({"scopes": query.get("scope", []), "credentials": given is not None})
                if given != expected:
                    status, payload = 401, b'{"details":"invalid credentials"}'
                else:
                    status = 200
                    payload = json.dumps({server_self.field_name: make_token(query.get("scope", []))}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryServer, TokenServer]]:
    """A registry with bearer token auth (``auth: token``) and its loopback token server."""
    root = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(root, field_name="access_token")
    try:
        server = start_registry(root, token=tokens)
    except BaseException:
        tokens.stop()
        raise
    try:
        yield server, tokens
    finally:
        server.stop()
        tokens.stop()
