"""Pushing an image to a registry, following the OCI distribution spec.

Spec: OCI Distribution Specification v1.1, "Push" (https://github.com/opencontainers/
distribution-spec/blob/main/spec.md#push). The steps, in the order this module performs them:

1. ``GET /v2/`` (spec "Determining support", end-1) to learn whether the registry answers and
   which authentication it wants (``WWW-Authenticate``: ``Basic`` or ``Bearer``; the bearer flow is
   the Docker "token authentication specification" that the OCI spec defers to).
2. For every blob (config and layers): ``HEAD /v2/<name>/blobs/<digest>`` (spec "Checking if
   content exists in the registry", end-2). 200 = already present, 404 = upload it.
3. A missing blob is first offered for a cross-repository mount
   (``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other>``, spec "Mounting a blob from
   another repository", end-11): 201 = mounted, 202 = the registry opened an upload session instead.
4. Otherwise an upload session (``POST /v2/<name>/blobs/uploads/``, end-4a) followed either by a
   monolithic ``PUT <location>?digest=<digest>`` (spec "Pushing a blob monolithically", end-6) or
   by chunked ``PATCH <location>`` requests with ``Content-Range`` and a closing empty
   ``PUT <location>?digest=<digest>`` (spec "Pushing a blob in chunks", end-5, end-6).
   ``Location`` headers may be relative: they are resolved against the request URL.
5. ``PUT /v2/<name>/manifests/<tag>`` with the manifest's ``Content-Type`` (spec "Pushing
   Manifests", end-7). The manifest goes after its blobs, so a push that fails earlier never
   creates or moves the tag.
6. Then the artifacts attached to the image (its SBOM; their blobs went with the image's), each
   manifest by its digest; its ``subject`` is the image manifest (for an image index, those
   of each image of it, after that image's manifest, before the index) (spec "Pushing Manifests with
   Subject"). A registry with the referrers API says so with an ``OCI-Subject`` header and lists
   it from then on; without one (distribution 2.8, Debian's ``docker-registry``) the client
   keeps the list itself, as the spec's "Referrers Tag Schema": an image index tagged
   ``sha256-<hex of the image manifest digest>``, read, the artifact's descriptor added unless
   there, and put back. :func:`find_referrers` reads either.

Faults: a 5xx or 429 answer or a dropped connection is retried with exponential backoff
(:class:`RetryPolicy`); a blob upload that fails mid-way restarts from a new upload session.
Credentials are read from the usual container auth files (:func:`load_credentials`) and never
appear in log lines, exception messages or returned values.

Nothing here knows about Luigi.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

import requests

from nixlayer.errors import NixlayerError
from nixlayer.image import damaged_blob
from nixlayer.reference import HOST, NAME_MAX, REPOSITORY, TAG, without_credentials
from nixlayer.mediatypes import MANIFEST_MEDIA_TYPES, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST

_T = TypeVar("_T")

# --- Media types (OCI image-spec "Media Types"; Docker Image Manifest V2, Schema 2) -------------

# --- References (distribution/reference grammar) -----------------------------------------------

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TARGET_FORMS = (
    "expected [docker://]HOST[:PORT]/REPOSITORY[:TAG] with lowercase repository path components "
    "([a-z0-9] separated by '.', '_', '__' or '-', joined by '/') and a tag of up to 128 characters "
    "from [A-Za-z0-9_.-] not starting with '.' or '-'"
)

DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class PushTarget:
    """Where an image goes: registry ``host`` (``name[:port]``), ``repository`` path and ``tag``."""

    host: str
    repository: str
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


def _split_host_port(host: str) -> tuple[str, int | None]:
    if host.startswith("["):
        inner, _, rest = host[1:].partition("]")
        return inner, int(rest[1:]) if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, int(port)
    return host, None


def check_repository(repository: str) -> str:
    """Return ``repository`` if it follows the distribution reference path grammar.

    Grammar (distribution/reference ``path-component``): ``[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*``,
    components joined by ``/``. Raises NixlayerError otherwise.
    """
    if not REPOSITORY.match(repository):
        raise NixlayerError(
            f"repository name {repository!r} is not allowed: use lowercase path components "
            "of [a-z0-9] separated by '.', '_', '__' or '-', joined by '/'"
        )
    return repository


def parse_push_target(text: str) -> PushTarget:
    """Parse ``docker://HOST[:PORT]/REPO[:TAG]`` (the ``docker://`` prefix is optional).

    HOST is a DNS name, IPv4 address or bracketed IPv6 address with an optional port; it must be
    given explicitly (a first component without ``.`` or ``:`` that is not ``localhost`` is not
    taken for a host). REPO follows the distribution reference grammar, TAG is
    ``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`` and defaults to ``latest``. Digest references
    (``@sha256:...``) are refused: a push needs a tag.

    Returns a :class:`PushTarget`. Raises NixlayerError with a one-line message saying what is
    allowed; a target with credentials in it (``user:password@HOST``) is refused, shown
    without them (``nixlayer.reference.without_credentials``).
    """
    return _parse_reference(text, "push target", digest=False)[0]


def push_reference(text: str, tag: str = "", *, tag_yields: bool = False) -> PushTarget:
    """Where a push of an image tagged ``tag`` ("": none) to the push target ``text`` goes: the
    target's own tag, else ``tag``, else ``latest`` (``docker push`` pushes an image's tag,
    ``skopeo copy`` takes ``latest``). ``tag_yields``: ``tag`` only names the image (a spec's
    tag, as an archive's own tag for ``skopeo copy``), so the target's own tag wins over it.
    BuildImage, PushImage and the plan command ask this, so they push to and find the same
    reference. Raises NixlayerError as :func:`parse_push_target`, and for a ``tag`` beside a
    target naming another (one tag named twice) unless ``tag_yields``."""
    target = _parse_reference(text, "push target", digest=False, default_tag="")[0]
    if not target.tag:  # the target names none
        return dataclasses.replace(target, tag=tag or DEFAULT_TAG)
    if tag and tag != target.tag and not tag_yields:
        raise NixlayerError(f"--tag {tag} and push target {text} name two tags: give the tag once, in --tag"
                            " or in the target (a target without a tag takes --tag)")
    return target


def parse_pull_reference(text: str) -> tuple[PushTarget, str | None]:
    """Parse an image to read from a registry: ``docker://HOST[:PORT]/REPO[:TAG]`` or
    ``docker://HOST[:PORT]/REPO@sha256:<64 hex>`` (skopeo's ``docker://`` transport; the prefix
    is optional here). Returns the registry, repository and tag (``latest`` if none), and the
    digest or None. Raises NixlayerError with a one-line message, as :func:`parse_push_target`.
    """
    return _parse_reference(text, "base image", digest=True)


def _parse_reference(text: str, what: str, digest: bool,
                     default_tag: str = DEFAULT_TAG) -> tuple[PushTarget, str | None]:
    forms = _TARGET_FORMS + (", or @sha256:<64 hex digits> instead of the tag" if digest else "")
    if not isinstance(text, str) or not text.strip():
        raise NixlayerError(f"{what} {text!r} is empty: {forms}")
    shown, credentials = without_credentials(text.strip())
    if credentials:  # refused before anything shows it (no message below can)
        raise NixlayerError(f"{what} {shown} has a user name or password in it: nixlayer takes credentials"
                            " only from an auth file (`podman login HOST` writes one), never from an image reference")
    rest = text.strip()
    if rest.startswith("docker://"):
        rest = rest[len("docker://") :]
    elif "://" in rest:
        raise NixlayerError(f"{what} {text!r} has an unsupported transport: {forms}")
    pinned = None
    if "@" in rest:
        if not digest:
            raise NixlayerError(f"{what} {text!r} names a digest; a push needs a tag: {forms}")
        rest, _, pinned = rest.partition("@")
        if not _DIGEST.match(pinned):
            raise NixlayerError(f"{what} {text!r} has an invalid digest {pinned!r}: expected sha256:<64 lowercase hex digits>")
    host, slash, path = rest.partition("/")
    if not slash or not path:
        raise NixlayerError(f"{what} {text!r} has no repository: {forms}")
    looks_like_host = "." in host or ":" in host or host == "localhost" or host.startswith("[")
    if not looks_like_host or not HOST.match(host):
        raise NixlayerError(f"{what} {text!r} does not start with a registry host: {forms}")
    _, port = _split_host_port(host)
    if port is not None and not 0 < port < 65536:
        raise NixlayerError(f"{what} {text!r} has an invalid port: {forms}")
    repository, tag = path, default_tag  # the tag when the reference names none
    named = ":" in path.rsplit("/", 1)[-1]
    if named:
        repository, _, tag = path.rpartition(":")
    if not REPOSITORY.match(repository):
        raise NixlayerError(f"{what} {text!r} has an invalid repository {repository!r}: {forms}")
    if len(host) + 1 + len(repository) > NAME_MAX:
        raise NixlayerError(f"{what} {text!r} is longer than {NAME_MAX} characters")
    if named and not TAG.match(tag):
        raise NixlayerError(f"{what} {text!r} has an invalid tag {tag!r}: {forms}")
    return PushTarget(host=host, repository=repository, tag=tag), pinned


# --- Values --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob to push: read from ``path`` in a stream, never whole.

    ``digest`` is ``sha256:<64 hex>`` of the exact bytes in ``path``; ``size`` is their length in
    bytes; ``media_type`` is the descriptor's media type (informative here: the registry stores
    bytes only). ``fetch``, if given, writes ``path`` when it is absent: called only when the
    blob must be uploaded (neither in the repository nor mounted), as for a base image's layer
    left in its registry (``nixlayer.image.ImageLayer.fetch``).
    """

    digest: str
    size: int
    media_type: str
    path: Path
    fetch: Callable[[], object] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not _DIGEST.match(self.digest):
            raise NixlayerError(f"blob digest {self.digest!r} is not sha256:<64 lowercase hex digits>")
        if self.size < 0:
            raise NixlayerError(f"blob {self.digest} has a negative size {self.size}")
        object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class Referrer:
    """An artifact manifest to push after an image, naming it as its ``subject``: the exact
    ``manifest`` bytes (an OCI image manifest), its ``descriptor`` as a referrers list holds it
    (``artifactType``, annotations), and the ``blobs`` it references."""

    manifest: bytes
    descriptor: Mapping[str, object]
    blobs: Sequence[Blob]


@dataclass(frozen=True)
class ImagePush:
    """One image of an image index to push (:func:`push_index`): its exact ``manifest`` bytes
    (an OCI image manifest), the ``config`` and ``layers`` blobs it references, and the
    artifacts (``referrers``) whose subject it is."""

    manifest: bytes
    config: Blob
    layers: Sequence[Blob]
    referrers: Sequence[Referrer] = ()


@dataclass(frozen=True)
class RetryPolicy:
    """How transient faults (5xx, 429, dropped connection) are retried.

    ``tries`` attempts in all (at least 1); before attempt n+1 the client sleeps
    ``min(base_delay * 2**(n-1), max_delay)`` seconds. ``timeout`` is the socket timeout in
    seconds for connecting and for each read.
    """

    tries: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    timeout: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.base_delay * (2 ** (attempt - 1)), self.max_delay)


@dataclass(frozen=True)
class PushResult:
    """What a push did. Sizes are bytes, counts are distinct blobs. ``referrers_api``: whether
    the registry keeps the referrers of the artifacts pushed itself (True), or the client kept
    them in the referrers tag schema (False); None when no artifact was pushed."""

    target: PushTarget
    manifest_digest: str
    uploaded: int = 0
    uploaded_bytes: int = 0
    mounted: int = 0
    mounted_bytes: int = 0
    present: int = 0
    present_bytes: int = 0
    mounted_from: Mapping[str, str] = field(default_factory=dict)
    referrers_api: bool | None = None


# --- Credentials ---------------------------------------------------------------------------------


class Credentials:
    """A user name and password. ``repr`` and ``str`` never show the password."""

    __slots__ = ("username", "_password")

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password

    @property
    def password(self) -> str:
        return self._password

    def as_tuple(self) -> tuple[str, str]:
        return (self.username, self._password)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__


def auth_file_candidates(auth_file: str | os.PathLike[str] | None = None) -> list[Path]:
    """The credential files looked at, in order: ``auth_file``, ``$REGISTRY_AUTH_FILE``,
    ``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.docker/config.json``.
    """
    out: list[Path] = []
    if auth_file is not None:
        out.append(Path(auth_file))
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        out.append(Path(env))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        out.append(Path(runtime) / "containers" / "auth.json")
    out.append(Path.home() / ".docker" / "config.json")
    return out


def _normalize_auth_key(key: str) -> str:
    key = key.strip()
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.split("/", 1)[0].lower()


def load_credentials(host: str, auth_file: str | os.PathLike[str] | None = None) -> Credentials | None:
    """Credentials for registry ``host`` (``name[:port]``) from the first auth file that exists.

    Files are tried in :func:`auth_file_candidates` order; an explicit ``auth_file`` that does not
    exist is an error. The file is ``{"auths": {"host:port": {"auth": base64("user:pass")}}}``
    (containers-auth.json(5), Docker config.json); keys may carry an ``https://`` or ``http://``
    prefix and a path. Entries with ``username`` and ``password`` fields are accepted too.

    Returns None when the file has no entry for ``host``. Raises NixlayerError, naming the file but
    never its contents, when the file cannot be read or parsed.
    """
    if auth_file is not None and not Path(auth_file).is_file():
        raise NixlayerError(f"auth file {auth_file} does not exist")
    for path in auth_file_candidates(auth_file):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NixlayerError(f"auth file {path} cannot be read as JSON ({type(exc).__name__})") from None
        auths = data.get("auths") if isinstance(data, dict) else None
        if not isinstance(auths, dict):
            return None
        wanted = host.lower()
        for key, entry in auths.items():
            if not isinstance(key, str) or _normalize_auth_key(key) != wanted or not isinstance(entry, dict):
                continue
            if isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    decoded = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    raise NixlayerError(f"auth file {path}: the entry for {host} is not base64 of user:password") from None
                user, sep, password = decoded.partition(":")
                if not sep:
                    raise NixlayerError(f"auth file {path}: the entry for {host} is not base64 of user:password")
                return Credentials(user, password)
            if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
                return Credentials(entry["username"], entry["password"])
        return None
    return None


# --- Transport -----------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (with or without a port)."""
    name = _split_host_port(host)[0].lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class _Transient(Exception):
    """A fault worth retrying: 5xx, 429, dropped connection. ``what`` is a short description."""

    def __init__(self, what: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.status = status
        self.retry_after = retry_after


class _FileSlice:
    """``length`` bytes of a file from ``offset``, read in blocks (a streaming request body)."""

    def __init__(self, path: Path, offset: int, length: int, block: int = 1 << 20) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed when exhausted or by close()
        self._file.seek(offset)
        self._left = length
        self._length = length
        self._block = block

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            self.close()
            return b""
        n = self._left if size is None or size < 0 else min(size, self._left)
        data = self._file.read(n)
        if not data:
            self.close()
            raise OSError(f"{self._file.name} is shorter than expected")
        self._left -= len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.read(self._block)
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        self._file.close()


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """Split a ``WWW-Authenticate`` challenge (RFC 7235) into (scheme lowercased, parameters)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for m in _CHALLENGE_PARAM.finditer(rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


def _registry_error(response: requests.Response) -> str:
    """A short, single-line summary of a registry error body (spec "Error Codes")."""
    try:
        errors = response.json().get("errors")
        codes = [str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code")]
    except Exception:  # noqa: BLE001 - any body that is not the spec's JSON
        codes = []
    text = f"HTTP {response.status_code}"
    if codes:
        text += " " + ",".join(codes)[:100]
    return text


class _Client:
    """One registry and one repository: scheme choice, authentication and retries."""

    def __init__(
        self,
        target: PushTarget,
        *,
        insecure: bool,
        credentials: Credentials | None,
        scopes: list[str],
        retry: RetryPolicy,
        log: Callable[[str], None],
        session: requests.Session | None = None,
        role: str = "push target",
    ) -> None:
        self.target = target
        self.role = role  # what the user corrects if the registry cannot be reached
        self.credentials = credentials
        self.scopes = scopes
        self.retry = retry
        self.log = log
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = "nixlayer"
        self.session.verify = True
        self.scheme = "http" if insecure or is_loopback_host(target.host) else "https"
        self.base = f"{self.scheme}://{target.host}"
        self._authorization: str | None = None
        self._challenge: tuple[str, dict[str, str]] | None = None

    # -- helpers

    @property
    def where(self) -> str:
        return f"registry {self.target.host} (repository {self.target.repository})"

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.target.repository}/{path}"

    def _auth_failed(self) -> NixlayerError:
        source = "given credentials" if self.credentials else "no credentials found"
        return NixlayerError(
            f"authentication failed for {self.target.host} (repository {self.target.repository}): {source}"
        )

    def with_retries(self, action: Callable[[], _T], what: str) -> _T:
        """Run ``action`` until it does not raise _Transient, at most ``retry.tries`` times.

        Raises NixlayerError naming ``what`` (the registry, repository and object) and the last
        status when all tries fail.
        """
        last: _Transient | None = None
        for attempt in range(1, self.retry.tries + 1):
            try:
                return action()
            except _Transient as exc:
                last = exc
                if attempt == self.retry.tries:
                    break
                delay = self.retry.delay(attempt)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self.retry.max_delay))
                self.log(f"{what}: {exc.what}; retrying in {delay:.2f}s ({attempt}/{self.retry.tries})")
                time.sleep(delay)
        assert last is not None
        if last.status is None and last.what.startswith("cannot connect"):
            raise NixlayerError(
                f"cannot reach registry {self.target.host} (repository {self.target.repository}), {what}:"
                f" {last.what[len('cannot connect ('):-1]} after {self.retry.tries} tries; is a registry"
                f" listening there? Start it, or correct the {self.role}"
            )
        raise NixlayerError(f"{what} on {self.where} failed: {last.what} after {self.retry.tries} tries")

    def send(
        self,
        method: str,
        url: str,
        *,
        body: Callable[[], object] | None = None,
        headers: Mapping[str, str] | None = None,
        allow_redirects: bool = True,
        stream: bool = False,
    ) -> requests.Response:
        """One request (re-sent once after refreshing authentication on 401).

        ``body`` makes a fresh request body for each send; ``stream`` leaves the response's body
        to be read (``iter_content``). Raises _Transient for 5xx, 429 and
        connection faults; returns any other response (including a 401 that survived
        re-authentication, which callers turn into an error via :meth:`check_auth`).
        """
        for auth_round in range(2):
            hdrs = dict(headers or {})
            if self._authorization:
                hdrs["Authorization"] = self._authorization
            data = body() if body is not None else None
            try:
                resp = self.session.request(
                    method, url, data=data, headers=hdrs, timeout=self.retry.timeout, allow_redirects=allow_redirects,
                    stream=stream,
                )
            except requests.exceptions.SSLError as exc:
                raise NixlayerError(
                    f"TLS verification failed for registry {self.target.host} ({type(exc).__name__}); "
                    "allow that (--insecure-registry, insecure_registry in a batch file) only for a registry you trust"
                ) from None
            except requests.exceptions.ConnectionError as exc:
                reason = "connection refused" if "refused" in str(exc).lower() else "connection failed"
                raise _Transient(f"cannot connect ({reason})") from None
            except (requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                raise _Transient(f"connection dropped ({type(exc).__name__})") from None
            finally:
                if isinstance(data, _FileSlice):
                    data.close()
            if resp.status_code == 429 or resp.status_code >= 500:
                retry_after = None
                ra = resp.headers.get("Retry-After", "")
                if ra.isdigit():
                    retry_after = float(ra)
                raise _Transient(_registry_error(resp), status=resp.status_code, retry_after=retry_after)
            if resp.status_code == 401 and auth_round == 0:
                challenge = resp.headers.get("WWW-Authenticate")
                if challenge and self._authenticate(challenge):
                    continue
            return resp
        return resp

    def check_auth(self, resp: requests.Response) -> None:
        if resp.status_code == 401:
            raise self._auth_failed()
        if resp.status_code == 403:
            raise NixlayerError(
                f"access denied by {self.target.host} for repository {self.target.repository} (HTTP 403)"
            )

    # -- authentication (Docker token authentication specification)

    def _authenticate(self, challenge: str) -> bool:
        """Set the Authorization header from a challenge. True if there is something new to try."""
        scheme, params = parse_www_authenticate(challenge)
        if scheme == "basic":
            if self.credentials is None:
                return False
            token = base64.b64encode(f"{self.credentials.username}:{self.credentials.password}".encode()).decode()
            new = f"Basic {token}"
        elif scheme == "bearer":
            new = f"Bearer {self._fetch_token(params)}"
        else:
            raise NixlayerError(f"registry {self.target.host} asks for unsupported authentication {scheme!r}")
        if new == self._authorization:
            return False
        self._authorization = new
        return True

    def _fetch_token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise NixlayerError(f"registry {self.target.host} sent a bearer challenge without a usable realm")
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        for scope in self.scopes:
            query.append(("scope", scope))
        auth = self.credentials.as_tuple() if self.credentials else None
        realm_host = urllib.parse.urlsplit(realm).netloc

        def action() -> requests.Response:
            try:
                resp = self.session.get(realm, params=query, auth=auth, timeout=self.retry.timeout)
            except requests.exceptions.SSLError:
                raise NixlayerError(f"TLS verification failed for token server {realm_host}") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                raise _Transient(f"token server {realm_host}: {type(exc).__name__}") from None
            if resp.status_code == 429 or resp.status_code >= 500:
                raise _Transient(f"token server {realm_host}: HTTP {resp.status_code}", status=resp.status_code)
            return resp

        resp = self.with_retries(action, "token request")
        if resp.status_code in (401, 403):
            raise self._auth_failed()
        if resp.status_code != 200:
            raise NixlayerError(
                f"token server {realm_host} for {self.target.host} answered HTTP {resp.status_code}"
            )
        try:
            data = resp.json()
        except ValueError:
            data = None
        token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise NixlayerError(f"token server {realm_host} for {self.target.host} sent no token")
        return token

    def ping(self) -> None:
        """``GET /v2/``: check the registry answers and learn its authentication (spec end-1)."""

        def action() -> requests.Response:
            return self.send("GET", f"{self.base}/v2/")

        resp = self.with_retries(action, "asking for its API version")
        self.check_auth(resp)
        if resp.status_code != 200:
            raise NixlayerError(
                f"registry {self.target.host} does not answer GET /v2/ like an OCI registry (HTTP {resp.status_code})"
            )


# --- Push ----------------------------------------------------------------------------------------


def _with_query(url: str, **params: str) -> str:
    """Add query parameters to ``url``, keeping the ones it has (such as ``_state``)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query += list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _location(resp: requests.Response) -> str:
    loc = resp.headers.get("Location")
    if not loc:
        raise _Transient(f"HTTP {resp.status_code} without a Location header")
    return urllib.parse.urljoin(resp.url, loc)


def _blob_exists(client: _Client, blob: Blob) -> bool:
    """``HEAD /v2/<name>/blobs/<digest>`` (spec end-2): True on 200, False on 404."""
    what = f"checking blob {blob.digest}"
    resp = client.with_retries(lambda: client.send("HEAD", client.url(f"blobs/{blob.digest}")), what)
    client.check_auth(resp)
    if resp.status_code == 200:
        return True
    if resp.status_code == 404:
        return False
    raise NixlayerError(f"{what} on {client.where} failed: HTTP {resp.status_code}")


def _try_mount(client: _Client, blob: Blob, sources: Sequence[str]) -> tuple[str | None, str | None]:
    """Offer ``blob`` for mounting from each repository in ``sources`` (spec end-11).

    Returns (source repository, None) when mounted; (None, upload location) when the last
    candidate opened an upload session instead; (None, None) when nothing usable came back.
    """
    for i, source in enumerate(sources):
        url = client.url("blobs/uploads/") + "?" + urllib.parse.urlencode({"mount": blob.digest, "from": source})
        what = f"mounting blob {blob.digest} from {source}"
        resp = client.with_retries(lambda: client.send("POST", url), what)
        if resp.status_code in (401, 403):
            # Distribution checks pull access to the source repository too: without it the
            # mount is refused as a whole. Fall back to the next candidate or an upload.
            client.log(f"{what}: not allowed (HTTP {resp.status_code}); not mounting from there")
            continue
        if resp.status_code == 201:
            return source, None
        if resp.status_code == 202:
            try:
                location = _location(resp)
            except _Transient:
                continue
            if i == len(sources) - 1:
                return None, location
            _cancel(client, location)  # the next candidate may mount
            continue
        # Any other answer: the registry does not do mounts from here; upload instead.
    return None, None


def _cancel(client: _Client, location: str | None) -> None:
    """Cancel the upload session at ``location``, if any, with a ``DELETE`` of it (Docker's
    registry API; the OCI spec leaves abandoned sessions to expire): a registry that does not
    take it keeps the session until then."""
    if location is not None:
        with contextlib.suppress(_Transient, NixlayerError):
            client.send("DELETE", location)


def _upload_once(client: _Client, blob: Blob, chunk_size: int | None, location: str | None) -> None:
    """One complete upload session for ``blob``; raises _Transient on a retryable fault.

    Spec end-4a (``POST`` to open a session), end-5 (``PATCH`` chunks with ``Content-Range``
    ``start-end`` inclusive), end-6 (closing ``PUT ?digest=``).
    """
    if location is None:
        resp = client.send("POST", client.url("blobs/uploads/"), headers={"Content-Length": "0"})
        client.check_auth(resp)
        if resp.status_code != 202:
            raise NixlayerError(f"starting upload of blob {blob.digest} on {client.where} failed: {_registry_error(resp)}")
        location = _location(resp)
    octet = "application/octet-stream"
    if chunk_size is None or blob.size == 0:
        resp = client.send(
            "PUT",
            _with_query(location, digest=blob.digest),
            body=lambda: _FileSlice(blob.path, 0, blob.size),
            headers={"Content-Type": octet, "Content-Length": str(blob.size)},
        )
    else:
        offset = 0
        while offset < blob.size:
            n = min(chunk_size, blob.size - offset)
            start = offset
            resp = client.send(
                "PATCH",
                location,
                body=lambda: _FileSlice(blob.path, start, n),
                headers={"Content-Type": octet, "Content-Length": str(n), "Content-Range": f"{start}-{start + n - 1}"},
            )
            client.check_auth(resp)
            if resp.status_code == 416:
                raise _Transient(f"chunk {start}-{start + n - 1} refused (HTTP 416)", status=416)
            if resp.status_code != 202:
                raise NixlayerError(
                    f"uploading a chunk of blob {blob.digest} to {client.where} failed: {_registry_error(resp)}"
                )
            location = _location(resp)
            offset += n
        resp = client.send("PUT", _with_query(location, digest=blob.digest), headers={"Content-Length": "0"})
    client.check_auth(resp)
    if resp.status_code not in (201, 204):
        raise NixlayerError(f"uploading blob {blob.digest} to {client.where} failed: {_registry_error(resp)}")
    echoed = resp.headers.get("Docker-Content-Digest")
    if echoed and echoed != blob.digest:
        raise NixlayerError(f"{client.where} stored blob {blob.digest} under digest {echoed}")


def _upload(client: _Client, blob: Blob, chunk_size: int | None, location: str | None) -> None:
    """Upload ``blob``, restarting the whole session after a transient fault. Raises
    NixlayerError naming its file, before anything is sent, if its bytes do not match its digest.
    A blob with a ``fetch`` whose file is absent is fetched first."""
    if blob.fetch is not None and not blob.path.exists():
        try:
            blob.fetch()
        except BaseException:
            _cancel(client, location)  # the session a mount opened instead of mounting
            raise
    try:
        actual = blob.path.stat().st_size
    except OSError as exc:
        raise NixlayerError(f"blob {blob.digest}: cannot read {blob.path} ({exc.strerror})") from None
    if actual != blob.size:
        raise NixlayerError(f"blob {blob.digest}: {blob.path} has {actual} bytes, expected {blob.size}")
    try:  # read once before it is sent: a damaged blob never reaches the registry
        with open(blob.path, "rb") as f:
            matches = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest() == blob.digest
    except OSError as exc:
        raise NixlayerError(f"blob {blob.digest}: cannot read {blob.path} ({exc.strerror})") from None
    if not matches:
        raise NixlayerError(damaged_blob(str(blob.path)))
    first = [location]

    def action() -> None:
        session = first.pop() if first else None
        _upload_once(client, blob, chunk_size, session)

    client.with_retries(action, f"uploading blob {blob.digest}")


def tagged_manifest_digest(
    target: PushTarget | str,
    manifest_media_type: str,
    *,
    insecure: bool = False,
    auth_file: str | os.PathLike[str] | None = None,
    retry: RetryPolicy | None = None,
) -> str | None:
    """The digest of the manifest the registry holds under ``target.tag``, or None if it holds
    none there (``HEAD /v2/<name>/manifests/<tag>``, OCI distribution spec end-3).

    ``manifest_media_type`` goes in ``Accept``. Same transport, credentials and retries as
    :func:`push_image`. Raises NixlayerError for an unreachable registry or refused credentials.
    """
    if isinstance(target, str):
        target = parse_push_target(target)
    client = _Client(
        target, insecure=insecure, credentials=load_credentials(target.host, auth_file),
        scopes=[f"repository:{target.repository}:pull"], retry=retry or RetryPolicy(),
        log=lambda message: None,
    )
    what = f"checking tag {target.tag}"
    resp = client.with_retries(
        lambda: client.send("HEAD", client.url(f"manifests/{target.tag}"), headers={"Accept": manifest_media_type}),
        what,
    )
    client.check_auth(resp)
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise NixlayerError(f"{what} on {client.where} failed: HTTP {resp.status_code}")
    return resp.headers.get("Docker-Content-Digest")


@dataclass(frozen=True)
class PushOptions:
    """How a push goes (:func:`push_image`, :func:`push_index`): ``insecure`` allows plain HTTP
    to a non-loopback host (loopback hosts always use plain HTTP, everything else HTTPS with
    verified TLS); ``auth_file``, an explicit credentials file (see :func:`load_credentials`);
    ``mount_from``, repositories on the same registry to mount missing blobs from;
    ``chunk_size`` in bytes, to upload in ``PATCH`` chunks instead of one monolithic ``PUT``;
    ``log``, called with one-line progress messages (never credentials); ``retry``, the fault
    policy (default :class:`RetryPolicy`); ``session``, the HTTP session to use."""

    insecure: bool = False
    auth_file: str | os.PathLike[str] | None = None
    mount_from: Sequence[str] = ()
    chunk_size: int | None = None
    log: Callable[[str], None] = lambda message: None
    retry: RetryPolicy | None = None
    session: requests.Session | None = None


def push_image(
    target: PushTarget | str,
    manifest: bytes,
    manifest_media_type: str,
    config: Blob,
    layers: Sequence[Blob],
    options: PushOptions = PushOptions(),
    referrers: Sequence[Referrer] = (),
) -> PushResult:
    """Push an image (config, layers, then the manifest under ``target.tag``) to a registry,
    then the artifacts ``referrers`` whose subject it is.

    Inputs: ``target`` (a :class:`PushTarget` or text for :func:`parse_push_target`); ``manifest``,
    the exact manifest bytes, and ``manifest_media_type`` (its ``Content-Type``, one of the
    manifest media types); ``config`` and ``layers``, the blobs the manifest references (each
    uploaded once even if listed twice); ``options`` (:class:`PushOptions`); ``referrers``,
    artifact manifests naming this image as their ``subject`` (their blobs are pushed with the
    image's).

    Follows the OCI distribution spec "Push" section: end-1, end-2, end-11, end-4a, end-5, end-6,
    then end-7 for the manifest, pushed after its blobs so a failed push leaves the tag
    untouched; then each referrer by digest, listed in the referrers tag schema where the
    registry does not answer with ``OCI-Subject`` (see the module docstring).

    Returns a :class:`PushResult` with the manifest digest (``sha256:`` of ``manifest``, checked
    against ``Docker-Content-Digest`` when the registry sends it) and per-kind blob counts and
    bytes. Raises NixlayerError with one line naming the registry, the repository and, for blob
    faults, the blob digest and the HTTP status.
    """
    if manifest_media_type not in MANIFEST_MEDIA_TYPES:
        raise NixlayerError(
            f"manifest media type {manifest_media_type!r} is not one of {', '.join(sorted(MANIFEST_MEDIA_TYPES))}"
        )
    return _push(target, [config, *layers], [(None, manifest, manifest_media_type, referrers)], options)


def push_index(
    target: PushTarget | str,
    images: Sequence[ImagePush],
    index: bytes,
    options: PushOptions = PushOptions(),
) -> PushResult:
    """Push a multi-platform image: each image's blobs, manifest and referrers, then the image
    ``index`` (OCI image-spec ``image-index.md``) under ``target.tag``.

    A blob the images share is uploaded once; each manifest goes by its digest (distribution
    spec end-7 with a digest reference), followed by its referrers, the index last, so a failed
    push leaves the tag untouched. ``options`` as :func:`push_image`. Returns the
    :class:`PushResult` of the whole push (its ``manifest_digest`` is the index digest).
    Raises NixlayerError as :func:`push_image`.
    """
    blobs = [blob for image in images for blob in (image.config, *image.layers)]
    manifests = [("sha256:" + hashlib.sha256(image.manifest).hexdigest(), image.manifest, MEDIA_TYPE_OCI_MANIFEST,
                  image.referrers) for image in images]
    return _push(target, blobs, [*manifests, (None, index, MEDIA_TYPE_OCI_INDEX, ())], options)


def _push(
    target: PushTarget | str,
    blobs_given: Sequence[Blob],
    manifests: Sequence[tuple[str | None, bytes, str, Sequence[Referrer]]],
    options: PushOptions,
) -> PushResult:
    """Push ``blobs_given`` and the referrers' blobs (each missing one once), then ``manifests``,
    each (reference: a digest, or None for ``target.tag``; bytes; media type; the referrers
    whose subject it is) in order, each followed by its referrers."""
    if isinstance(target, str):
        target = parse_push_target(target)
    chunk_size, log = options.chunk_size, options.log
    if chunk_size is not None and chunk_size <= 0:
        raise NixlayerError(f"chunk size {chunk_size} must be a positive number of bytes")
    sources = []
    for source in options.mount_from:
        check_repository(source)
        if source != target.repository and source not in sources:
            sources.append(source)
    retry = options.retry or RetryPolicy()
    scopes = [f"repository:{target.repository}:pull,push"] + [f"repository:{s}:pull" for s in sources]
    client = _Client(
        target,
        insecure=options.insecure,
        credentials=load_credentials(target.host, options.auth_file),
        scopes=scopes,
        retry=retry,
        log=log,
        session=options.session,
    )
    blobs: dict[str, Blob] = {}
    for blob in [*blobs_given, *(blob for *_, referrers in manifests for referrer in referrers for blob in referrer.blobs)]:
        blobs.setdefault(blob.digest, blob)

    counts = {"uploaded": [0, 0], "mounted": [0, 0], "present": [0, 0]}
    mounted_from: dict[str, str] = {}
    client.ping()
    for blob in blobs.values():
        if _blob_exists(client, blob):
            kind = "present"
            log(f"blob {blob.digest} ({blob.size} bytes) already in {target.repository}")
        else:
            source, location = _try_mount(client, blob, sources) if sources else (None, None)
            if source is not None:
                kind = "mounted"
                mounted_from[blob.digest] = source
                log(f"blob {blob.digest} ({blob.size} bytes) mounted from {source}")
            else:
                _upload(client, blob, chunk_size, location)
                kind = "uploaded"
                log(f"blob {blob.digest} ({blob.size} bytes) uploaded")
        counts[kind][0] += 1
        counts[kind][1] += blob.size

    referrers_api = None
    for reference, manifest, media_type, referrers in manifests:
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        _put_manifest(client, reference or target.tag, manifest, media_type)
        log(f"manifest {manifest_digest} pushed as "
            + (str(target) if reference is None else f"{target.host}/{target.repository}@{reference}"))
        for referrer in referrers:
            digest = "sha256:" + hashlib.sha256(referrer.manifest).hexdigest()
            resp = _put_manifest(client, digest, referrer.manifest, MEDIA_TYPE_OCI_MANIFEST)
            referrers_api = resp.headers.get("OCI-Subject") == manifest_digest
            if not referrers_api:
                _add_to_referrers_tag(client, manifest_digest, dict(referrer.descriptor))
            log(f"{referrer.descriptor.get('artifactType')} {digest} pushed, its subject {manifest_digest}"
                + ("" if referrers_api else f" (listed in tag {_referrers_tag(manifest_digest)})"))
    return PushResult(
        target=target,
        manifest_digest=manifest_digest,
        uploaded=counts["uploaded"][0],
        uploaded_bytes=counts["uploaded"][1],
        mounted=counts["mounted"][0],
        mounted_bytes=counts["mounted"][1],
        present=counts["present"][0],
        present_bytes=counts["present"][1],
        mounted_from=mounted_from,
        referrers_api=referrers_api,
    )


# --- Pull ----------------------------------------------------------------------------------------

MANIFEST_ACCEPT = ", ".join(sorted(MANIFEST_MEDIA_TYPES))


class RegistrySource:
    """An image to read from a registry: its manifests by tag or digest and its blobs by digest
    (OCI distribution spec "Pull": end-3 ``HEAD``/``GET /v2/<name>/manifests/<reference>``,
    end-2 ``GET /v2/<name>/blobs/<digest>``), with the transport, credentials (pull scope) and
    retries of a push. ``where`` names the image in messages, ``role`` what the user corrects
    when its registry cannot be reached.
    """

    def __init__(
        self,
        target: PushTarget,
        where: str,
        *,
        insecure: bool = False,
        auth_file: str | os.PathLike[str] | None = None,
        retry: RetryPolicy | None = None,
        role: str = "base image (--from-image)",
    ) -> None:
        self.where = where
        self.client = _Client(
            target, insecure=insecure, credentials=load_credentials(target.host, auth_file),
            scopes=[f"repository:{target.repository}:pull"], retry=retry or RetryPolicy(), log=lambda message: None,
            role=role,
        )

    def _request(self, method: str, path: str, what: str, **kwargs) -> requests.Response:
        resp = self.client.with_retries(lambda: self.client.send(method, self.client.url(path), **kwargs), what)
        self.client.check_auth(resp)
        return resp

    def manifest_digest(self, reference: str) -> str | None:
        """The digest of the manifest ``reference`` (a tag or digest) names, by a ``HEAD``
        (nothing downloaded); None if the registry does not say it. Raises NixlayerError for a
        missing tag or manifest."""
        resp = self._request("HEAD", f"manifests/{reference}", f"{self.where}: checking {reference}",
                             headers={"Accept": MANIFEST_ACCEPT})
        self._check_found(resp, reference)
        digest = resp.headers.get("Docker-Content-Digest")
        return digest if digest and _DIGEST.match(digest) else None

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest (or index) ``reference`` names: its bytes and media type
        (``Content-Type``). Raises NixlayerError for a missing tag or manifest."""
        resp = self._request("GET", f"manifests/{reference}", f"{self.where}: reading {reference}",
                             headers={"Accept": MANIFEST_ACCEPT})
        self._check_found(resp, reference)
        return resp.content, resp.headers.get("Content-Type", "").split(";")[0].strip()

    def _check_found(self, resp: requests.Response, reference: str) -> None:
        if resp.status_code == 404:
            kind = "manifest" if _DIGEST.match(reference) else "tag"
            raise NixlayerError(f"{self.where}: {self.client.where} has no {kind} {reference}")
        if resp.status_code != 200:
            raise NixlayerError(f"{self.where}: reading {reference} from {self.client.where} failed: {_registry_error(resp)}")

    def read_blob(self, digest: str, consume: Callable[[bytes], None]) -> None:
        """Stream the blob ``digest`` to ``consume``, chunk by chunk, in one download (a
        redirect to other storage is followed). Raises NixlayerError if it is missing or the
        connection drops midway (what was consumed cannot be taken back)."""
        resp = self._request("GET", f"blobs/{digest}", f"{self.where}: downloading blob {digest}", stream=True)
        with resp:
            if resp.status_code == 404:
                raise NixlayerError(f"{self.where}: {self.client.where} has no blob {digest}")
            if resp.status_code != 200:
                raise NixlayerError(f"{self.where}: downloading blob {digest} failed: {_registry_error(resp)}")
            try:
                for chunk in resp.iter_content(1 << 20):
                    consume(chunk)
            except requests.exceptions.RequestException as exc:
                raise NixlayerError(f"{self.where}: downloading blob {digest} failed midway"
                                    f" ({type(exc).__name__}); run again") from None


def _put_manifest(client: _Client, reference: str, manifest: bytes, media_type: str) -> requests.Response:
    """``PUT /v2/<name>/manifests/<reference>`` (a tag or the manifest's digest, spec end-7);
    the registry's answer. Raises NixlayerError if it refuses the manifest or stores it under
    another digest."""
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    what = f"pushing manifest {digest}" + ("" if reference == digest else f" as tag {reference}")
    resp = client.with_retries(
        lambda: client.send("PUT", client.url(f"manifests/{reference}"), body=lambda: manifest,
                            headers={"Content-Type": media_type}),
        what,
    )
    client.check_auth(resp)
    if resp.status_code not in (200, 201, 202):
        raise NixlayerError(f"{what} on {client.where} failed: {_registry_error(resp)}")
    echoed = resp.headers.get("Docker-Content-Digest")
    if echoed and echoed != digest:
        raise NixlayerError(f"{client.where} stored manifest {digest} under digest {echoed}")
    return resp


def _referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag for the manifest ``digest``: ``<alg>-<hex>``, truncated
    to the 128 characters a tag may have (distribution-spec 1.1 "Referrers Tag Schema")."""
    return digest.replace(":", "-", 1)[:128]


def _get_manifest(client: _Client, reference: str, accept: str) -> dict | None:
    """The JSON manifest (or index) tagged ``reference``, or None if there is none (404)."""
    what = f"reading manifest {reference}"
    resp = client.with_retries(
        lambda: client.send("GET", client.url(f"manifests/{reference}"), headers={"Accept": accept}), what)
    client.check_auth(resp)
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise NixlayerError(f"{what} on {client.where} failed: {_registry_error(resp)}")
    try:
        value = resp.json()
    except ValueError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("manifests", []), list):
        raise NixlayerError(f"{what} on {client.where}: not an OCI image index")
    return value


def _add_to_referrers_tag(client: _Client, subject: str, descriptor: dict) -> None:
    """Add ``descriptor`` to the referrers index tagged for ``subject`` (made if absent), as
    the spec's "Pushing Manifests with Subject" tells a client to where the registry has no
    referrers API. Another client updating the same list at the same moment may lose its entry
    (this registry has no conditional PUT); the next push of that artifact adds it again."""
    tag = _referrers_tag(subject)
    index = _get_manifest(client, tag, MEDIA_TYPE_OCI_INDEX) or {
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": []}
    if any(isinstance(m, dict) and m.get("digest") == descriptor["digest"] for m in index["manifests"]):
        return
    index["manifests"].append(descriptor)
    data = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    _put_manifest(client, tag, data, MEDIA_TYPE_OCI_INDEX)


def find_referrers(
    target: PushTarget | str,
    digest: str,
    *,
    artifact_type: str | None = None,
    insecure: bool = False,
    auth_file: str | os.PathLike[str] | None = None,
    retry: RetryPolicy | None = None,
) -> list[dict]:
    """The descriptors of the artifacts whose subject is the manifest ``digest`` in the
    repository of ``target`` (its tag is not used), those of ``artifact_type`` only if given.

    Asks the referrers API (``GET /v2/<name>/referrers/<digest>``, distribution-spec 1.1
    end-12a); a registry without it answers 404, and then the referrers tag schema's index is
    read (none: no referrers). Raises NixlayerError for an unreachable registry, refused
    credentials or an answer that is not an image index.
    """
    if isinstance(target, str):
        target = parse_push_target(target)
    if not _DIGEST.match(digest):
        raise NixlayerError(f"digest {digest!r} is not sha256:<64 lowercase hex digits>")
    client = _Client(
        target, insecure=insecure, credentials=load_credentials(target.host, auth_file),
        scopes=[f"repository:{target.repository}:pull"], retry=retry or RetryPolicy(), log=lambda message: None,
    )
    url = client.url(f"referrers/{digest}")
    if artifact_type:
        url += "?" + urllib.parse.urlencode({"artifactType": artifact_type})
    what = f"listing the referrers of {digest}"
    resp = client.with_retries(lambda: client.send("GET", url, headers={"Accept": MEDIA_TYPE_OCI_INDEX}), what)
    client.check_auth(resp)
    if resp.status_code == 200:
        try:
            index = resp.json()
        except ValueError:
            index = None
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise NixlayerError(f"{what} on {client.where}: the answer is not an OCI image index")
    elif resp.status_code == 404:
        index = _get_manifest(client, _referrers_tag(digest), MEDIA_TYPE_OCI_INDEX) or {"manifests": []}
    else:
        raise NixlayerError(f"{what} on {client.where} failed: {_registry_error(resp)}")
    return [m for m in index["manifests"]
            if isinstance(m, dict) and (artifact_type is None or m.get("artifactType") == artifact_type)]
